// hpc-daemonctl logs: the journal in systemd mode, the log file in nohup mode.
#include "commands.hpp"
#include "daemon_client.hpp"
#include "exit_codes.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <iostream>

namespace hpc::ctl {
namespace {

[[noreturn]] void execOrThrow(std::vector<std::string> argv) {
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    throw Error(ErrorCode::Internal, "cannot run " + argv[0] + ": " + std::strerror(errno));
}

int runLogs(const std::string& daemonId, bool follow, int lines) {
    Target t = resolveTarget(daemonId);
    std::string mode;
    if (auto client = DaemonClient::find(t.paths.home, t.profile.daemonId))
        mode = std::string(client->status()["mode"].as_string());
    std::error_code ec;
    bool haveFile = std::filesystem::exists(t.paths.logFile(), ec);
    if (mode == "systemd" || (mode.empty() && !haveFile)) {
        std::vector<std::string> argv = {"journalctl", "--user", "-u", unitName(t.profile.daemonId), "-n",
                                         std::to_string(lines)};
        if (follow) argv.push_back("-f");
        execOrThrow(argv);
    }
    if (!haveFile) throw Error(ErrorCode::NotFound, "no log file at " + t.paths.logFile().string());
    if (follow) execOrThrow({"tail", "-n", std::to_string(lines), "-F", t.paths.logFile().string()});
    std::cout << tailOf(t.paths.logFile(), static_cast<std::size_t>(lines));
    return kExitOk;
}

}  // namespace

Command addLogsCommand(CLI::App& parent) {
    auto id = std::make_shared<std::string>();
    auto follow = std::make_shared<bool>(false);
    auto lines = std::make_shared<int>(100);
    auto* app = parent.add_subcommand("logs", "Show the daemon's log (journald in systemd mode, else its log file)");
    app->footer(kExitCodeHelp);
    app->add_option("--daemon-id", *id, "profile (default: the only one)");
    app->add_flag("-f,--follow", *follow, "keep printing new lines");
    app->add_option("-n,--lines", *lines, "how many of the last lines")->check(CLI::Range(1, 1000000))->capture_default_str();
    return Command{app, [id, follow, lines] { return runLogs(*id, *follow, *lines); }};
}

}  // namespace hpc::ctl
