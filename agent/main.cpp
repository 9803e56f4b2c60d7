// hpc-agent: the agent-side command line. See `hpc-agent --help`; one file
// per command (cmd_*.cpp), this one only wires them up.
#include "commands.hpp"
#include "util.hpp"

#include <iostream>
#include <vector>

int main(int argc, char** argv) try {
    hpc::adoptProgramName(argc > 0 ? argv[0] : nullptr);
    CLI::App app{
        "hpc-agent: run commands on machines served by hpc-daemond, through the platform.\n"
        "The platform URL, token and CA come from --url/--token-file/--ca-file or HPC_AGENT_URL,\n"
        "HPC_AGENT_TOKEN, HPC_AGENT_CA. (There is no --token flag: a token on a command line is visible\n"
        "to every user of the machine.)"};
    app.set_version_flag("--version", "hpc-agent " HPC_VERSION);
    app.footer(
        "Exit status: exec returns the remote command's status (128+N for signal N), or 253 when its output was "
        "cut (see exec --allow-truncated); wait returns 0 for a COMPLETED job, 1 for any other final state, 254 on "
        "--timeout; logs -f returns as wait once the job has ended; cp returns 0 when everything arrived, 1 when "
        "anything did not; 255 means hpc-agent itself failed.");
    app.require_subcommand(1);
    using namespace hpc::agent;
    std::vector<Command> commands{addLoginCommand(app),  addDaemonsCommand(app), addExecCommand(app),
                                  addShellCommand(app),  addSubmitCommand(app),  addJobsCommand(app),
                                  addStatusCommand(app), addCancelCommand(app),  addWaitCommand(app),
                                  addEventsCommand(app), addLogsCommand(app)};
    commands.push_back(addLogoutCommand(app));
    commands.push_back(addCpCommand(app));
    commands.push_back(addMcpCommand(app));
    commands.push_back(addWhoamiCommand(app));
    CLI11_PARSE(app, argc, argv);
    for (const auto& c : commands)
        if (c.app->parsed()) return c.run();
    return kExitAgentError;
} catch (const std::exception& e) {
    // A command's failure (or a bug in the option table, or memory exhausted).
    std::cerr << "hpc-agent: " << e.what() << "\n";
    return hpc::agent::kExitAgentError;
}
