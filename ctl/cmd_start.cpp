// hpc-daemonctl start: systemd user unit where possible, else nohup mode.
#include "commands.hpp"
#include "daemon_client.hpp"
#include "exit_codes.hpp"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <ctime>
#include <iostream>
#include <thread>

namespace hpc::ctl {

std::string utcTime(double epoch) {
    if (epoch <= 0) return "-";
    time_t secs = static_cast<time_t>(epoch);
    tm utc{};
    ::gmtime_r(&secs, &utc);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &utc);
    return buf;
}

Target resolveTarget(const std::string& daemonId) {
    Store store = Store::open();
    Profile profile = selectProfile(store, daemonId);
    return Target{profile, Paths{store.dir(), profile.daemonId}};
}

int startDaemon(const Target& t) {
    const auto& id = t.profile.daemonId;
    if (auto client = DaemonClient::find(t.paths.home, id)) {
        auto s = client->status();
        std::cout << "daemon " << id << " is already running (pid " << s["pid"].as_uint64() << ", "
                  << s["mode"].as_string().c_str() << " mode)\n";
        return kExitOk;
    }
    ModeDecision mode = decideMode();
    pid_t pid = -1;
    if (mode.systemd) {
        // The unit gets the caller's PATH, SLURM_CONF, LOCAL_MODE and
        // HPC_DAEMON_HOME through its environment file.
        auto envFile = writeEnvironmentFile(t.paths);
        if (auto installed = ensureUnitInstalled(id); !installed.empty()) std::cout << installed << "\n";
        std::string out;
        if (systemctlUser({"enable", "--now", unitName(id)}, &out) != 0)
            throw Error(ErrorCode::Internal, "systemctl --user enable --now " + unitName(id) + " failed: " + out);
        std::cout << "environment for the unit: " << envFile.string() << "\n";
    } else {
        pid = startDetached(t.paths, mode.reason);
    }
    // Ready means: the daemon owns its bus name (store open, bus up).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (std::chrono::steady_clock::now() < deadline) {
        if (auto client = DaemonClient::find(t.paths.home, id)) {
            auto s = client->status();
            std::cout << "started daemon " << id << " (pid " << s["pid"].as_uint64() << ") in "
                      << s["mode"].as_string().c_str() << " mode: " << mode.reason << "\n";
            if (!mode.systemd) std::cout << "log: " << t.paths.logFile().string() << "\n";
            return kExitOk;
        }
        if (pid > 0 && ::kill(pid, 0) != 0) break;  // it died
        if (mode.systemd && unitState(id).active == "failed") break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::cerr << "daemon " << id << " did not come up. Last lines of its log:\n"
              << (mode.systemd ? std::string("(see journalctl --user -u " + unitName(id) + ")\n")
                               : tailOf(t.paths.logFile(), 15));
    return kExitFailure;
}

/// Runs the daemon in this terminal (logging to stderr) until it stops:
/// this process becomes hpc-daemond, so Ctrl-C and SIGTERM reach it.
int runInForeground(const Target& t) {
    const auto& id = t.profile.daemonId;
    if (auto client = DaemonClient::find(t.paths.home, id)) {
        std::cerr << "daemon " << id << " is already running (pid " << client->status()["pid"].as_uint64()
                  << "); stop it first to run it in the foreground\n";
        return kExitFailure;
    }
    std::string program = daemonBinary();
    std::vector<std::string> args = {"hpc-daemond", "--daemon-id", id, "--mode-reason",
                                     "in the foreground of a terminal (start --foreground)"};
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::cout.flush();
    if (program.find('/') != std::string::npos)
        ::execv(program.c_str(), argv.data());
    else
        ::execvp(program.c_str(), argv.data());
    throw Error(ErrorCode::NotFound, "cannot run " + program + ": " + std::strerror(errno));
}

Command addStartCommand(CLI::App& parent) {
    auto id = std::make_shared<std::string>();
    auto foreground = std::make_shared<bool>(false);
    auto* app = parent.add_subcommand("start", "Start the daemon (systemd user unit, or detached in nohup mode)");
    app->footer(
        "Uses `systemctl --user enable --now hpc-daemon@ID` when a systemd user manager is reachable and\n"
        "lingering is on (turning it on when allowed), after writing the unit's environment file\n"
        "(~/.config/hpc-daemon/ID.env: PATH, SLURM_CONF, LOCAL_MODE, HPC_DAEMON_HOME from this shell) and\n"
        "installing the unit to ~/.config/systemd/user when the user manager does not know it.\n"
        "Otherwise starts hpc-daemond detached (nohup mode)\n"
        "with its pid file and log in $HPC_DAEMON_HOME (default ~/.hpc_daemon). Waits until the daemon\n"
        "answers on D-Bus. Starting a running daemon is not an error.\n"
        "With --foreground, runs the daemon in this terminal instead, logging to it, until Ctrl-C\n"
        "(as tasc-hpc-daemon's start does); it is then neither a unit nor detached.\n\n" +
        std::string(kExitCodeHelp));
    app->add_option("--daemon-id", *id, "profile to start (default: the only one)");
    app->add_flag("--foreground", *foreground, "run the daemon in this terminal until Ctrl-C, logging to it");
    return Command{app, [id, foreground] {
                       return *foreground ? runInForeground(resolveTarget(*id)) : startDaemon(resolveTarget(*id));
                   }};
}

}  // namespace hpc::ctl
