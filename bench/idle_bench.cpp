// An idle, connected daemon: RSS, CPU and wake-ups per second over a window,
// beside an idle ssh ControlMaster connection (the persistent-connection peer)
// and the daemon's own private dbus-daemon; and `hpc-daemonctl status` wall
// time beside a bare D-Bus call from dbus-send. Prints figures only.
#include "harness.hpp"
#include "local_sshd.hpp"
#include "proc_stats.hpp"

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <thread>

using namespace hpc;
using namespace hpc::test;
using Clock = std::chrono::steady_clock;

namespace {

struct Row {
    std::string what;
    ProcStats before, after;
};

double medianMs(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

pid_t privateBusPid(pid_t daemon) {
    // The private dbus-daemon is the daemon's child.
    std::ifstream children("/proc/" + std::to_string(daemon) + "/task/" + std::to_string(daemon) + "/children");
    pid_t pid = -1;
    children >> pid;
    return pid;
}

}  // namespace

int main(int argc, char** argv) {
    int window = argc > 1 ? std::stoi(argv[1]) : 60;
    Harness h;
    h.startRelay();
    if (h.setupDaemon("idle", "idle@example.org", {(h.dir() / "w").string()}).status != 0) return 1;
    h.startDaemon("idle", {"--bus-address", ""});
    auto token = h.login("idle@example.org");
    if (!h.waitConnected(token, "idle")) {
        std::cerr << h.daemonLog("idle");
        return 1;
    }
    pid_t daemon = h.daemonPid("idle");
    pid_t bus = privateBusPid(daemon);

    std::vector<Row> rows = {{"hpc-daemond (connected, heartbeat 20 s)", {}, {}}};
    std::vector<pid_t> pids = {daemon};
    if (bus > 0) {
        rows.push_back({"its private dbus-daemon", {}, {}});
        pids.push_back(bus);
    }
    std::unique_ptr<LocalSshd> sshd;
    try {
        sshd = std::make_unique<LocalSshd>(h.dir() / "ssh");
        if (pid_t master = sshd->masterPid(); master > 0) {
            rows.push_back({"ssh ControlMaster (idle connection)", {}, {}});
            pids.push_back(master);
        }
    } catch (const std::exception& e) {
        std::cerr << "ssh peer not measured: " << e.what() << "\n";
    }

    std::this_thread::sleep_for(std::chrono::seconds(2));  // let start-up settle
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i].before = procStats(pids[i]);
    std::this_thread::sleep_for(std::chrono::seconds(window));
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i].after = procStats(pids[i]);

    std::printf("\nidle for %d s on 127.0.0.1\n\n%-42s %8s %8s %9s %8s %11s\n", window, "process", "RSS MiB",
                "PSS MiB", "priv MiB", "CPU ms", "wake-ups/s");
    for (const auto& r : rows)
        std::printf("%-42s %8.2f %8.2f %9.2f %8.1f %11.2f\n", r.what.c_str(), r.after.rssKiB / 1024.0,
                    r.after.pssKiB / 1024.0, r.after.privateKiB / 1024.0,
                    (r.after.cpuSeconds - r.before.cpuSeconds) * 1000,
                    static_cast<double>(r.after.contextSwitches - r.before.contextSwitches) / window);

    // status wall time
    std::string home = "HPC_DAEMON_HOME=" + h.home("idle").string();
    std::string address = "unix:path=" + (h.home("idle") / "idle.bus").string();
    std::vector<double> ctl, raw;
    for (int i = 0; i < 50; ++i) {
        auto t0 = Clock::now();
        runCommand({Harness::binary("hpc-daemonctl"), "status"}, {}, {home, "DBUS_SESSION_BUS_ADDRESS=", "XDG_RUNTIME_DIR="});
        ctl.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        t0 = Clock::now();
        runCommand({"dbus-send", "--bus=" + address, "--print-reply", "--dest=org.tiptree.HpcDaemon.idle",
                    "/org/tiptree/HpcDaemon", "org.tiptree.HpcDaemon.GetStatus"});
        raw.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    std::printf("\n%-42s %10s\n%-42s %10.2f\n%-42s %10.2f\n", "command (50 runs)", "p50 ms", "hpc-daemonctl status",
                medianMs(ctl), "dbus-send GetStatus (bare D-Bus call)", medianMs(raw));
    std::printf("\ntargets: daemon RSS <= 8 MiB, <= 1 wake-up/s idle; hpc-daemonctl status <= 20 ms\n");
    return 0;
}
