// hpc-daemonctl stop.
#include "commands.hpp"
#include "daemon_client.hpp"
#include "exit_codes.hpp"
#include "settings.hpp"

#include <signal.h>

#include <fstream>
#include <iostream>
#include <thread>

namespace hpc::ctl {

namespace {

/// Whether `pid` still runs (a zombie has ended: it only waits to be reaped).
bool running(pid_t pid) {
    if (::kill(pid, 0) != 0) return false;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    auto close = line.rfind(')');
    return close == std::string::npos || close + 2 >= line.size() || line[close + 2] != 'Z';
}

/// Gone: no pid file naming a live process, no bus name, and the process
/// that ran when stop began has ended (its pid file goes before its exit).
bool gone(const Target& t, std::optional<pid_t> pid) {
    return !livePid(t.paths) && !DaemonClient::find(t.paths.home, t.profile.daemonId) && !(pid && running(*pid));
}

bool waitGone(const Target& t, std::optional<pid_t> pid, std::chrono::seconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
        if (gone(t, pid)) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return gone(t, pid);
}

/// nohup mode: Stop over D-Bus; a daemon that does not answer (frozen,
/// stopped with SIGSTOP, wedged) gets SIGTERM and SIGCONT, then SIGKILL.
int stopDetached(const Target& t, std::ostream& report) {
    const auto& id = t.profile.daemonId;
    std::string why;
    const auto initialPid = livePid(t.paths);
    if (auto client = DaemonClient::find(t.paths.home, id)) {
        client->setTimeout(std::chrono::seconds(5));
        try {
            client->stop();
            if (waitGone(t, initialPid, std::chrono::seconds(15))) {
                report << "stopped daemon " << id << "\n";
                return kExitOk;
            }
            why = "it accepted Stop but is still running after 15 s";
        } catch (const Error& e) {
            why = std::string("it did not answer on D-Bus (") + e.what() + ")";
        }
    } else {
        why = "it is not on any bus";
    }
    auto pid = livePid(t.paths);
    if (!pid) {
        if (waitGone(t, initialPid, std::chrono::seconds(5))) {
            report << "stopped daemon " << id << "\n";
            return kExitOk;
        }
        std::cerr << "daemon " << id << ": " << why << ", and its pid file " << t.paths.pidFile().string()
                  << " names no live process; find it with: pgrep -a hpc-daemond\n";
        return kExitFailure;
    }
    std::cerr << "daemon " << id << ": " << why << "; sending SIGTERM to pid " << *pid << "\n";
    ::kill(*pid, SIGTERM);
    ::kill(*pid, SIGCONT);  // a stopped process handles SIGTERM only once continued
    if (waitGone(t, pid, std::chrono::seconds(10))) {
        report << "stopped daemon " << id << " (pid " << *pid << ", by SIGTERM)\n";
        return kExitOk;
    }
    std::cerr << "daemon " << id << " (pid " << *pid << ") ignored SIGTERM for 10 s; sending SIGKILL\n";
    ::kill(*pid, SIGKILL);
    if (waitGone(t, pid, std::chrono::seconds(5))) {
        report << "stopped daemon " << id << " (pid " << *pid << ", by SIGKILL)\n";
        return kExitOk;
    }
    std::cerr << "daemon " << id << " (pid " << *pid << ") is still there after SIGKILL\n";
    return kExitFailure;
}

/// Drain over D-Bus and wait for the exit: the daemon itself kills what
/// still runs at the limit, so it is gone soon after. False (said on
/// stderr) when it could not drain or did not end: the caller stops it.
bool drainAndWait(const Target& t, std::chrono::seconds limit, std::ostream& report) {
    const auto& id = t.profile.daemonId;
    const auto pid = livePid(t.paths);
    try {
        auto client = DaemonClient::find(t.paths.home, id);
        if (!client) throw Error(ErrorCode::Unavailable, "it is not on any bus");
        client->setTimeout(std::chrono::seconds(5));
        client->drain(limit);
    } catch (const Error& e) {
        std::cerr << "daemon " << id << ": cannot drain (" << e.what() << "); stopping it at once\n";
        return false;
    }
    report << "draining daemon " << id << ": new work is refused; running commands get up to " << limit.count()
           << " s\n"
           << std::flush;
    constexpr auto kExitGrace = std::chrono::seconds(15);
    if (waitGone(t, pid, limit + kExitGrace)) return true;
    std::cerr << "daemon " << id << " is still running " << (limit + kExitGrace).count()
              << " s after the drain began; stopping it at once\n";
    return false;
}

}  // namespace

int stopDaemon(const Target& t, std::ostream& report, std::optional<std::chrono::seconds> drainLimit) {
    const auto& id = t.profile.daemonId;
    if (drainLimit && !gone(t, std::nullopt)) {
        const bool underSystemd = unitState(id).running();
        if (drainAndWait(t, *drainLimit, report)) {
            std::string out;
            // It exited cleanly, so systemd does not restart it; disabled, it stays stopped across reboots.
            if (underSystemd && systemctlUser({"disable", unitName(id)}, &out) != 0)
                std::cerr << "systemctl --user disable " << unitName(id) << " failed: " << out << "\n";
            report << "stopped daemon " << id << " after draining\n";
            return kExitOk;
        }
    }
    // The mode comes from systemd, not from asking the daemon: a frozen
    // daemon does not answer.
    if (unitState(id).running()) {
        std::string out;
        // systemd sends SIGTERM then SIGCONT, and SIGKILL after TimeoutStopSec,
        // so a frozen daemon ends too. disable: a stopped daemon stays stopped
        // across reboots.
        if (systemctlUser({"disable", "--now", unitName(id)}, &out) != 0)
            throw Error(ErrorCode::Internal, "systemctl --user disable --now " + unitName(id) + " failed: " + out);
        if (waitGone(t, std::nullopt, std::chrono::seconds(30))) {
            report << "stopped daemon " << id << " (systemctl --user disable --now " << unitName(id) << ")\n";
            return kExitOk;
        }
        std::cerr << "daemon " << id << " did not stop within 30 s (see systemctl --user status " << unitName(id)
                  << ")\n";
        return kExitFailure;
    }
    if (gone(t, std::nullopt)) {
        report << "daemon " << id << " was not running\n";
        return kExitOk;
    }
    return stopDetached(t, report);
}

Command addStopCommand(CLI::App& parent) {
    struct Options {
        std::string id;
        bool drain = false;
        std::string drainTimeout = "60s";
    };
    auto o = std::make_shared<Options>();
    auto* app = parent.add_subcommand("stop", "Stop the daemon");
    app->footer(
        "In systemd mode: systemctl --user disable --now hpc-daemon@ID (systemd ends a frozen daemon\n"
        "after TimeoutStopSec). In nohup mode: Stop over D-Bus; a daemon that does not answer within 5 s\n"
        "gets SIGTERM (and SIGCONT), then SIGKILL after 10 s. Waits until it is gone.\n"
        "Running commands and shells are killed; jobs keep running and are followed after the next start.\n\n"
        "With --drain: the daemon refuses new commands, shells, jobs and file transfers (agents get\n"
        "UNAVAILABLE, \"draining\"), lets running commands finish for up to --drain-timeout (then kills\n"
        "them), sends the job callbacks it still owes while the link is up, and exits; status shows\n"
        "\"draining\" meanwhile. A daemon that cannot drain is stopped as without --drain.\n"
        "Stopping a daemon that is not running is not an error.\n\n" +
        std::string(kExitCodeHelp));
    app->add_option("--daemon-id", o->id, "profile to stop (default: the only one)");
    app->add_flag("--drain", o->drain, "finish running commands first (see below)");
    app->add_option("--drain-timeout", o->drainTimeout,
                    "with --drain: how long running commands may take (\"90s\", \"5m\", seconds; at most 24h)")
        ->capture_default_str();
    return Command{app, [o, app] {
                       std::optional<std::chrono::seconds> drain;
                       if (o->drain) {
                           drain = parseDuration(o->drainTimeout);
                           if (!drain || *drain > std::chrono::hours(24))
                               throw Error(ErrorCode::BadRequest,
                                           "--drain-timeout \"" + o->drainTimeout +
                                               "\" is not a duration up to 24h (\"90s\", \"5m\")");
                       } else if (app->count("--drain-timeout") > 0) {
                           throw Error(ErrorCode::BadRequest, "--drain-timeout needs --drain");
                       }
                       return stopDaemon(resolveTarget(o->id), std::cout, drain);
                   }};
}

Command addRestartCommand(CLI::App& parent) {
    auto id = std::make_shared<std::string>();
    auto* app = parent.add_subcommand("restart", "Stop the daemon if it runs, then start it");
    app->footer(kExitCodeHelp);
    app->add_option("--daemon-id", *id, "profile to restart (default: the only one)");
    return Command{app, [id] {
                       auto target = resolveTarget(*id);
                       const auto& daemonId = target.profile.daemonId;
                       if (unitState(daemonId).running()) {
                           // Refresh the environment file first: a restart is
                           // how a changed PATH or LOCAL_MODE reaches the unit.
                           writeEnvironmentFile(target.paths);
                           std::string out;
                           if (systemctlUser({"restart", unitName(daemonId)}, &out) != 0)
                               throw Error(ErrorCode::Internal,
                                           "systemctl --user restart " + unitName(daemonId) + " failed: " + out);
                           std::cout << "restarted " << unitName(daemonId) << "\n";
                           return static_cast<int>(kExitOk);
                       }
                       int rc = stopDaemon(target);
                       return rc == kExitOk ? startDaemon(target) : rc;
                   }};
}

}  // namespace hpc::ctl
