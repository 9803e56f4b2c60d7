// PTY stream throughput and keystroke echo latency, three ways in one run:
// (a) a local program reading the PTY master directly (the kernel's limit),
// (b) ssh -tt through a ControlMaster to a local sshd,
// (c) hpc-agent -> hpc-relay -> hpc-daemond over TLS.
// Prints figures; asserts nothing about time.
#include "harness.hpp"
#include "local_sshd.hpp"
#include "proc_stats.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <thread>

using namespace hpc;
using namespace hpc::test;
using Clock = std::chrono::steady_clock;

namespace {

const std::string kStream = "head -c 200M /dev/zero | base64";
const std::string kEcho = "stty raw -echo; cat";

struct Figures {
    double mbPerSecond = 0;
    double p50Us = 0, p99Us = 0;
};

double percentile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

/// Reads fd until EOF/EIO; returns bytes read.
std::size_t drain(int fd) {
    std::size_t total = 0;
    char buf[65536];
    while (true) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n > 0) {
            total += static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            pollfd p{fd, POLLIN, 0};
            ::poll(&p, 1, 1000);
            continue;
        }
        return total;
    }
}

/// Writes one byte and waits for it to come back on `in`.
std::vector<double> echoLoop(int out, int in, int iterations) {
    std::vector<double> us;
    char c = 'x', back;
    for (int i = 0; i < iterations; ++i) {
        auto t0 = Clock::now();
        if (::write(out, &c, 1) != 1) break;
        pollfd p{in, POLLIN, 0};
        if (::poll(&p, 1, 5000) <= 0 || ::read(in, &back, 1) != 1) break;
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    return us;
}

/// (a) a PTY read directly.
Figures local(int echoIterations) {
    Figures f;
    auto openPty = [](UniqueFd& master, UniqueFd& slave) {
        master.reset(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
        ::grantpt(master.get());
        ::unlockpt(master.get());
        slave.reset(::open(::ptsname(master.get()), O_RDWR | O_NOCTTY | O_CLOEXEC));
    };
    {
        UniqueFd master, slave;
        openPty(master, slave);
        SpawnOptions o;
        o.argv = {"sh", "-c", kStream};
        o.controllingTerminal = slave.get();
        auto t0 = Clock::now();
        ChildGuard child(spawn(o).pid);
        slave.reset();
        std::size_t bytes = drain(master.get());
        f.mbPerSecond = static_cast<double>(bytes) / 1e6 / std::chrono::duration<double>(Clock::now() - t0).count();
    }
    UniqueFd master, slave;
    openPty(master, slave);
    SpawnOptions o;
    o.argv = {"sh", "-c", kEcho};
    o.controllingTerminal = slave.get();
    ChildGuard child(spawn(o).pid);
    slave.reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto us = echoLoop(master.get(), master.get(), echoIterations);
    f.p50Us = percentile(us, 0.5);
    f.p99Us = percentile(us, 0.99);
    return f;
}

/// (b) ssh -tt: stdout and stdin are pipes, the remote side a PTY.
Figures viaSsh(LocalSshd& sshd, int echoIterations) {
    Figures f;
    auto run = [&](const std::string& command, SpawnedProcess& p) {
        auto argv = sshd.command(command, true);
        SpawnOptions o;
        o.argv = argv;
        o.in = Stdio::Pipe;
        o.out = Stdio::Pipe;
        o.err = Stdio::Null;
        p = spawn(o);
    };
    {
        SpawnedProcess p;
        auto t0 = Clock::now();
        run(kStream, p);
        ChildGuard guard(p.pid);
        std::size_t bytes = drain(p.stdoutFd.get());
        f.mbPerSecond = static_cast<double>(bytes) / 1e6 / std::chrono::duration<double>(Clock::now() - t0).count();
    }
    SpawnedProcess p;
    run(kEcho, p);
    ChildGuard guard(p.pid);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    char junk[4096];
    while (::read(p.stdoutFd.get(), junk, sizeof junk) > 0) {
    }
    int in = p.stdinFd.get();
    int flags = ::fcntl(in, F_GETFL);
    ::fcntl(in, F_SETFL, flags & ~O_NONBLOCK);
    auto us = echoLoop(in, p.stdoutFd.get(), echoIterations);
    f.p50Us = percentile(us, 0.5);
    f.p99Us = percentile(us, 0.99);
    return f;
}

/// (c) through the relay and the daemon.
Figures viaHpc(Harness& h, const Secret& token, int echoIterations, double& daemonCpu) {
    Figures f;
    auto client = h.agent(token);
    agent::PtySpec spec;
    spec.shell = "/bin/sh";
    spec.credit = 4 << 20;
    auto before = procStats(h.daemonPid("bench"));
    {
        auto pty = client->openPty("bench", spec);
        auto t0 = Clock::now();
        client->ptyInput(pty.channel, "exec sh -c '" + kStream + "'\r");
        std::size_t bytes = 0, unacked = 0;
        while (true) {
            auto e = client->nextPtyEvent(std::chrono::seconds(30));
            if (!e) throw std::runtime_error("the stream stalled");
            if (e->channel != pty.channel) continue;
            if (e->kind == agent::PtyEvent::Kind::Exit) break;
            bytes += e->data.size();
            // Grant credit back in quarters of the window, not per frame.
            unacked += e->data.size();
            if (unacked >= spec.credit / 4) {
                client->ptyAck("bench", pty.channel, unacked);
                unacked = 0;
            }
        }
        f.mbPerSecond = static_cast<double>(bytes) / 1e6 / std::chrono::duration<double>(Clock::now() - t0).count();
    }
    daemonCpu = procStats(h.daemonPid("bench")).cpuSeconds - before.cpuSeconds;
    auto pty = client->openPty("bench", spec);
    client->ptyInput(pty.channel, "exec sh -c '" + kEcho + "'\r");
    // Let the command start and its output settle.
    auto settle = Clock::now() + std::chrono::milliseconds(800);
    while (Clock::now() < settle) client->nextPtyEvent(std::chrono::milliseconds(50));
    std::vector<double> us;
    for (int i = 0; i < echoIterations; ++i) {
        // 10k one-byte echoes use 10 kB of the 4 MiB window: no acks needed.
        auto t0 = Clock::now();
        client->ptyInput(pty.channel, "x");
        bool got = false;
        while (!got) {
            auto e = client->nextPtyEvent(std::chrono::seconds(5));
            if (!e) throw std::runtime_error("no echo");
            if (e->kind == agent::PtyEvent::Kind::Output && e->channel == pty.channel) got = true;
        }
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    f.p50Us = percentile(us, 0.5);
    f.p99Us = percentile(us, 0.99);
    return f;
}

}  // namespace

int main(int argc, char** argv) {
    int echoIterations = argc > 1 ? std::stoi(argv[1]) : 10000;
    // Which paths to run (default all): "c" alone is handy under a profiler.
    std::string paths = argc > 2 ? argv[2] : "abc";
    Harness h;
    h.startRelay();
    if (h.setupDaemon("bench", "bench@example.org", {(h.dir() / "w").string()}).status != 0) return 1;
    h.startDaemon("bench");
    auto token = h.login("bench@example.org");
    if (!h.waitConnected(token, "bench")) return 1;

    std::printf("stream: `%s` through a PTY; echo: 1 byte in, its echo back, %d times\n\n", kStream.c_str(),
                echoIterations);
    std::printf("%-44s %12s %12s %12s\n", "path", "MB/s", "echo p50 us", "echo p99 us");
    auto print = [](const char* what, const Figures& f) {
        std::printf("%-44s %12.1f %12.1f %12.1f\n", what, f.mbPerSecond, f.p50Us, f.p99Us);
    };
    Figures a, b;
    if (paths.find('a') != std::string::npos) {
        a = local(echoIterations);
        print("(a) local program reading the PTY", a);
    }
    bool haveSsh = false;
    if (paths.find('b') != std::string::npos) try {
        LocalSshd sshd(h.dir() / "ssh");
        b = viaSsh(sshd, echoIterations);
        haveSsh = true;
        print("(b) ssh -tt via ControlMaster", b);
    } catch (const std::exception& e) {
        std::printf("%-44s not measured: %s\n", "(b) ssh -tt", e.what());
    }
    if (paths.find('c') == std::string::npos) return 0;
    double cpu = 0;
    auto c = viaHpc(h, token, echoIterations, cpu);
    print("(c) hpc-agent -> hpc-relay -> hpc-daemond", c);
    std::printf("\nhpc-daemond CPU for the (c) stream: %.2f s\n", cpu);
    if (a.mbPerSecond > 0)
        std::printf("(c)/(a) throughput: %.2f (target >= 0.95)\n", c.mbPerSecond / a.mbPerSecond);
    if (haveSsh) std::printf("(c)/(b) echo p50: %.2f (target <= 0.6)\n", c.p50Us / b.p50Us);
    return 0;
}
