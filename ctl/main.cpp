// hpc-daemonctl (also installed as hpc-daemon, the name the Python
// tasc-hpc-daemon's users type): the control client.
#include "commands.hpp"
#include "exit_codes.hpp"
#include "util.hpp"

#include <iostream>
#include <string>

int main(int argc, char** argv) try {
    hpc::adoptProgramName(argc > 0 ? argv[0] : nullptr);
    std::string self = argc > 0 ? argv[0] : "";
    self = self.substr(self.rfind('/') == std::string::npos ? 0 : self.rfind('/') + 1);
    const std::string name = self == "hpc-daemon" ? self : "hpc-daemonctl";
    CLI::App app{name + ": set up and control hpc-daemond, the daemon that lets agents work on this machine.", name};
    app.set_version_flag("--version", name + " " HPC_VERSION);
    app.footer(hpc::ctl::kExitCodeHelp);
    app.require_subcommand(1);
    using namespace hpc::ctl;
    std::vector<Command> commands{addSetupCommand(app),   addStartCommand(app),     addStopCommand(app),
                                  addRestartCommand(app), addStatusCommand(app),    addListCommand(app),
                                  addLogsCommand(app),    addAuditCommand(app),     addJobsCommand(app),
                                  addConfigCommand(app),  addRotateKeyCommand(app), addRemoveCommand(app),
                                  addSkillsCommand(app)};
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int rc = app.exit(e);
        return rc == 0 ? 0 : hpc::ctl::kExitUsage;
    }
    for (const auto& c : commands) {
        if (!c.app->parsed()) continue;
        try {
            return c.run();
        } catch (const hpc::Error& e) {
            std::cerr << name << " " << c.app->get_name() << ": " << e.what() << "\n";
            return hpc::ctl::exitCodeFor(e.code());
        } catch (const std::exception& e) {
            std::cerr << name << " " << c.app->get_name() << ": " << e.what() << "\n";
            return hpc::ctl::kExitFailure;
        }
    }
    return hpc::ctl::kExitUsage;
} catch (const std::exception& e) {
    // Only a bug in the option table, or memory exhausted, reaches here.
    std::cerr << "hpc-daemonctl: " << e.what() << "\n";
    return hpc::ctl::kExitFailure;
}
