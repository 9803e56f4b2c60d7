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
    args.reserve(argv.size() + 1);
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    throw Error(ErrorCode::Internal, "cannot run " + argv[0] + ": " + std::strerror(errno));
}

int runLogs(const std::string& daemonId, bool follow, int lines, const std::string& priority) {
    Target t = resolveTarget(daemonId);
    // systemd mode is known from systemd (the daemon may be frozen or down):
    // a unit that runs, or is enabled, logs to the journal.
    UnitState unit = unitState(t.profile.daemonId);
    std::error_code ec;
    bool haveFile = std::filesystem::exists(t.paths.logFile(), ec);
    bool journal = unit.running() || unit.fileState == "enabled" || (!unit.load.empty() && !haveFile);
    if (journal) {
        // Where the journal is volatile (no /var/log/journal), journald keeps
        // no per-user file, and a user may read nothing at all: say so rather
        // than print journalctl's hint.
        std::string probe;
        if (runCommand({"journalctl", "--user", "-u", unitName(t.profile.daemonId), "-n", "1", "-q", "--no-pager"},
                       &probe) != 0) {
            std::string why = probe.substr(0, probe.find('\n'));
            if (!why.empty() && why.back() == '.') why.pop_back();
            throw Error(ErrorCode::Internal,
                        "you cannot read the journal here (" + why +
                            "): the journal is probably kept in memory only (no /var/log/journal), which only "
                            "the groups adm and systemd-journal may read. Ask an administrator for a persistent "
                            "journal (mkdir /var/log/journal; systemctl restart systemd-journald) or to add you "
                            "to systemd-journal, or run the daemon in nohup mode, which logs to a file: "
                            "hpc-daemonctl stop && HPC_DAEMONCTL_MODE=nohup hpc-daemonctl start");
        }
        std::vector<std::string> argv = {"journalctl",          "--user",    "-u", unitName(t.profile.daemonId), "-n",
                                         std::to_string(lines), "--no-pager"};
        if (!priority.empty()) argv.insert(argv.end(), {"-p", priority});
        if (follow) argv.push_back("-f");
        execOrThrow(argv);
    }
    if (!haveFile) throw Error(ErrorCode::NotFound, "no log file at " + t.paths.logFile().string());
    if (!priority.empty())
        throw Error(ErrorCode::BadRequest, "--priority needs the journal (systemd mode); the log file at " +
                                               t.paths.logFile().string() + " has the level after the time");
    if (follow) execOrThrow({"tail", "-n", std::to_string(lines), "-F", t.paths.logFile().string()});
    std::cout << tailOf(t.paths.logFile(), static_cast<std::size_t>(lines));
    return kExitOk;
}

}  // namespace

Command addLogsCommand(CLI::App& parent) {
    auto id = std::make_shared<std::string>();
    auto follow = std::make_shared<bool>(false);
    auto lines = std::make_shared<int>(100);
    auto priority = std::make_shared<std::string>();
    auto* app = parent.add_subcommand("logs", "Show the daemon's log (journald in systemd mode, else its log file)");
    app->footer(
        "In systemd mode this runs journalctl --user -u hpc-daemon@ID (the daemon logs with journal\n"
        "priorities; every instance: journalctl --user -u hpc-daemon.slice); in nohup mode it reads\n"
        "$HPC_DAEMON_HOME/ID.log.\n\n" +
        std::string(kExitCodeHelp));
    app->add_option("--daemon-id", *id, "profile (default: the only one)");
    app->add_flag("-f,--follow", *follow, "keep printing new lines");
    app->add_option("-n,--lines", *lines, "how many of the last lines")
        ->check(CLI::Range(1, 1000000))
        ->capture_default_str();
    app->add_option("-p,--priority", *priority,
                    "journal only: lines of this priority or more urgent (err, warning, notice, info, debug)")
        ->check(CLI::IsMember({"emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"}));
    return Command{app, [id, follow, lines, priority] { return runLogs(*id, *follow, *lines, *priority); }};
}

}  // namespace hpc::ctl
