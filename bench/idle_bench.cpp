// An idle, connected daemon: RSS, CPU and wake-ups per second over a window,
// beside an idle ssh ControlMaster connection (the persistent-connection peer)
// and the daemon's own private dbus-daemon; and `hpc-daemonctl status` wall
// time beside a bare D-Bus call from dbus-send. Also a bare OpenSSL TLS
// connection (`openssl s_client` to an `openssl s_server`, both idle): the
// floor any client built on the system's OpenSSL starts from. Prints figures
// only.
#include "harness.hpp"
#include "local_sshd.hpp"
#include "proc_stats.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
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

/// A loopback port free now (bound and released).
int freePort() {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
        throw std::runtime_error("no free port");
    return ntohs(a.sin_port);
}

/// `openssl s_server` and an `openssl s_client` connected to it, both idle
/// (their stdin pipes are kept open and never written).
struct BareTls {
    SpawnedProcess server, client;
    ChildGuard serverGuard, clientGuard;

    BareTls(const Harness& h) {
        auto tls = std::filesystem::path(h.caFile()).parent_path();
        std::string port = std::to_string(freePort());
        SpawnOptions s;
        s.argv = {"openssl",
                  "s_server",
                  "-quiet",
                  "-naccept",
                  "1",
                  "-accept",
                  "127.0.0.1:" + port,
                  "-cert",
                  (tls / "cert.pem").string(),
                  "-key",
                  (tls / "key.pem").string()};
        s.in = Stdio::Pipe;
        s.out = Stdio::Null;
        s.err = Stdio::Null;
        server = spawn(s);
        serverGuard = ChildGuard(server.pid);
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        SpawnOptions c;
        c.argv = {"openssl", "s_client", "-quiet", "-connect", "127.0.0.1:" + port, "-CAfile", h.caFile()};
        c.in = Stdio::Pipe;
        c.out = Stdio::Null;
        c.err = Stdio::Null;
        client = spawn(c);
        clientGuard = ChildGuard(client.pid);
    }
};

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

    std::unique_ptr<BareTls> bareTls;
    try {
        bareTls = std::make_unique<BareTls>(h);
        rows.push_back({"openssl s_client (bare TLS, idle)", {}, {}});
        pids.push_back(bareTls->client.pid);
    } catch (const std::exception& e) {
        std::cerr << "openssl peer not measured: " << e.what() << "\n";
    }

    std::this_thread::sleep_for(std::chrono::seconds(2));  // let start-up settle
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i].before = procStats(pids[i]);
    clearReferenced(daemon);
    std::this_thread::sleep_for(std::chrono::seconds(window));
    long touched = referencedKiB(daemon);
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i].after = procStats(pids[i]);
    if (bareTls && bareTls->clientGuard.poll())
        std::cerr << "openssl s_client exited during the window: its row is not an idle connection\n";

    std::printf("\nidle for %d s on 127.0.0.1\n\n%-42s %8s %8s %9s %8s %11s\n", window, "process", "RSS MiB", "PSS MiB",
                "priv MiB", "CPU ms", "wake-ups/s");
    for (const auto& r : rows)
        std::printf("%-42s %8.2f %8.2f %9.2f %8.1f %11.2f\n", r.what.c_str(), r.after.rssKiB / 1024.0,
                    r.after.pssKiB / 1024.0, r.after.privateKiB / 1024.0,
                    (r.after.cpuSeconds - r.before.cpuSeconds) * 1000,
                    static_cast<double>(r.after.contextSwitches - r.before.contextSwitches) / window);

    // What the daemon's RSS is made of, beside the bare TLS client's.
    auto mapping = [](pid_t pid) {
        std::map<std::string, long> m;
        if (pid > 0)
            for (auto& [name, kib] : rssByMapping(pid)) m[name] = kib;
        return m;
    };
    auto mine = rssByMapping(daemon);
    auto bare = mapping(bareTls ? bareTls->client.pid : -1);
    std::printf("\nhpc-daemond RSS by mapping (KiB), largest first, beside openssl s_client's:\n");
    for (std::size_t i = 0; i < mine.size() && i < 10; ++i) {
        auto b = bare.find(mine[i].first);
        std::printf("  %-32s %7ld %7s\n", mine[i].first.c_str(), mine[i].second,
                    b == bare.end() ? "-" : std::to_string(b->second).c_str());
    }
    std::printf("pages hpc-daemond touched during the %d s window (its idle working set): %.2f MiB\n", window,
                touched / 1024.0);

    // status wall time
    std::string home = "HPC_DAEMON_HOME=" + h.home("idle").string();
    std::string address = "unix:path=" + (h.home("idle") / "idle.bus").string();
    std::vector<double> ctl, raw;
    for (int i = 0; i < 50; ++i) {
        auto t0 = Clock::now();
        runCommand({Harness::binary("hpc-daemonctl"), "status"}, {},
                   {home, "DBUS_SESSION_BUS_ADDRESS=", "XDG_RUNTIME_DIR="});
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
