// hpc-daemonctl audit: the commands agents ran, from the local audit log.
#include "commands.hpp"
#include "exit_codes.hpp"

#include <boost/json.hpp>

#include <iostream>

namespace json = boost::json;

namespace hpc::ctl {
namespace {

int runAudit(const std::string& daemonId, int lines, bool asJson) {
    Target t = resolveTarget(daemonId);
    auto entries = Store::open(t.paths.home).audit(t.profile.daemonId, lines);
    if (asJson) {
        json::array out;
        for (const auto& e : entries)
            out.push_back(json::object{{"time", e.time},
                                       {"agent", e.agent},
                                       {"session", e.session},
                                       {"cwd", e.cwd},
                                       {"command", e.command},
                                       {"exit_code", e.exitCode ? json::value(*e.exitCode) : json::value(nullptr)}});
        std::cout << json::serialize(out) << "\n";
        return kExitOk;
    }
    for (const auto& e : entries) {
        // A job's entry is its submission: how it ended is in hpc-daemonctl jobs.
        std::string outcome = e.exitCode                        ? "exit " + std::to_string(*e.exitCode)
                              : e.session.rfind("job:", 0) == 0 ? std::string("submitted")
                                                                : std::string("running");
        std::cout << utcTime(e.time) << "  " << e.agent << "  " << e.session << "  " << outcome << "  " << e.cwd
                  << "\n    " << e.command << "\n";
    }
    if (entries.empty()) std::cout << "no commands recorded for daemon " << t.profile.daemonId << "\n";
    return kExitOk;
}

}  // namespace

Command addAuditCommand(CLI::App& parent) {
    auto id = std::make_shared<std::string>();
    auto lines = std::make_shared<int>(50);
    auto asJson = std::make_shared<bool>(false);
    auto* app = parent.add_subcommand("audit", "Show the commands agents ran through the daemon (newest last)");
    app->footer(
        "Every exec, shell command line and job script is recorded in $HPC_DAEMON_HOME/state.db with its\n"
        "time, the agent's identity, session (exec, pty:N or job:ID), working directory, command and exit\n"
        "status (128+N for signal N; none for jobs, see hpc-daemonctl jobs).\n\n" +
        std::string(kExitCodeHelp));
    app->add_option("--daemon-id", *id, "profile (default: the only one)");
    app->add_option("-n,--lines", *lines, "how many of the newest entries")
        ->check(CLI::Range(1, 1000000))
        ->capture_default_str();
    app->add_flag("--json", *asJson, "print JSON");
    return Command{app, [id, lines, asJson] { return runAudit(*id, *lines, *asJson); }};
}

}  // namespace hpc::ctl
