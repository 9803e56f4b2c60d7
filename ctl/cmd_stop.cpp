// hpc-daemonctl stop.
#include "commands.hpp"
#include "daemon_client.hpp"
#include "exit_codes.hpp"

#include <signal.h>

#include <iostream>
#include <thread>

namespace hpc::ctl {

int stopDaemon(const Target& t) {
    const auto& id = t.profile.daemonId;
    auto client = DaemonClient::find(t.paths.home, id);
    auto pid = livePid(t.paths);
    if (!client && !pid) {
        std::cout << "daemon " << id << " was not running\n";
        return kExitOk;
    }
    std::string mode = client ? std::string(client->status()["mode"].as_string()) : "nohup";
    if (mode == "systemd") {
        std::string out;
        // disable too: a stopped daemon should stay stopped across reboots.
        if (systemctlUser({"disable", "--now", unitName(id)}, &out) != 0)
            throw Error(ErrorCode::Internal, "systemctl --user disable --now " + unitName(id) + " failed: " + out);
    } else if (client) {
        client->stop();
    } else {
        ::kill(*pid, SIGTERM);  // not on any bus: the pid file is all we have
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (std::chrono::steady_clock::now() < deadline) {
        if (!livePid(t.paths) && !DaemonClient::find(t.paths.home, id)) {
            std::cout << "stopped daemon " << id << "\n";
            return kExitOk;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::cerr << "daemon " << id << " did not stop within 15 s\n";
    return kExitFailure;
}

Command addStopCommand(CLI::App& parent) {
    auto id = std::make_shared<std::string>();
    auto* app = parent.add_subcommand("stop", "Stop the daemon");
    app->footer("Asks the daemon to stop over D-Bus (or systemd to stop its unit) and waits until it is gone.\n"
                "Stopping a daemon that is not running is not an error.\n\n" +
                std::string(kExitCodeHelp));
    app->add_option("--daemon-id", *id, "profile to stop (default: the only one)");
    return Command{app, [id] { return stopDaemon(resolveTarget(*id)); }};
}

Command addRestartCommand(CLI::App& parent) {
    auto id = std::make_shared<std::string>();
    auto* app = parent.add_subcommand("restart", "Stop the daemon if it runs, then start it");
    app->footer(kExitCodeHelp);
    app->add_option("--daemon-id", *id, "profile to restart (default: the only one)");
    return Command{app, [id] {
                       auto target = resolveTarget(*id);
                       int rc = stopDaemon(target);
                       return rc == kExitOk ? startDaemon(target) : rc;
                   }};
}

}  // namespace hpc::ctl
