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
#include <optional>
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
Figures local(int echoIterations, bool stream) {
    Figures f;
    auto openPty = [](UniqueFd& master, UniqueFd& slave) {
        master.reset(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
        ::grantpt(master.get());
        ::unlockpt(master.get());
        slave.reset(::open(::ptsname(master.get()), O_RDWR | O_NOCTTY | O_CLOEXEC));
    };
    if (stream) {
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
    if (echoIterations == 0) return f;
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
Figures viaSsh(LocalSshd& sshd, int echoIterations, bool stream) {
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
    if (stream) {
        SpawnedProcess p;
        auto t0 = Clock::now();
        run(kStream, p);
        ChildGuard guard(p.pid);
        std::size_t bytes = drain(p.stdoutFd.get());
        f.mbPerSecond = static_cast<double>(bytes) / 1e6 / std::chrono::duration<double>(Clock::now() - t0).count();
    }
    if (echoIterations == 0) return f;
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
/// CPU seconds of the three processes on the (c) path.
struct PathCpu {
    double daemon = 0, relay = 0, agent = 0;
};

Figures viaHpc(Harness& h, const Secret& token, int echoIterations, bool stream, PathCpu& cpu) {
    Figures f;
    auto client = h.agent(token);
    agent::PtySpec spec;
    spec.shell = "/bin/sh";
    spec.credit = 4 << 20;
    auto before = procStats(h.daemonPid("bench"));
    auto relayBefore = procStats(h.relayPid());
    auto agentBefore = procStats(::getpid());
    if (stream) {
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
    cpu.daemon += procStats(h.daemonPid("bench")).cpuSeconds - before.cpuSeconds;
    cpu.relay += procStats(h.relayPid()).cpuSeconds - relayBefore.cpuSeconds;
    cpu.agent += procStats(::getpid()).cpuSeconds - agentBefore.cpuSeconds;
    if (echoIterations == 0) return f;
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
    // Streams run this many rounds, the paths taking turns, and the median
    // is printed: this machine's throughput drifts by ±20% over a minute,
    // which one run of each path in a row would count as a difference.
    int rounds = argc > 3 ? std::max(1, std::stoi(argv[3])) : 3;
    bool runA = paths.find('a') != std::string::npos, runB = paths.find('b') != std::string::npos,
         runC = paths.find('c') != std::string::npos;
    Harness h;
    h.startRelay();
    if (h.setupDaemon("bench", "bench@example.org", {(h.dir() / "w").string()}).status != 0) return 1;
    h.startDaemon("bench");
    auto token = h.login("bench@example.org");
    if (!h.waitConnected(token, "bench")) return 1;
    std::optional<LocalSshd> sshd;
    std::string sshProblem;
    if (runB) try {
            sshd.emplace(h.dir() / "ssh");
        } catch (const std::exception& e) {
            sshProblem = e.what();
        }

    std::printf("stream: `%s` through a PTY, %d rounds (median); echo: 1 byte in, its echo back, %d times\n\n",
                kStream.c_str(), rounds, echoIterations);
    std::vector<double> streamA, streamB, streamC;
    PathCpu cpu;
    for (int r = 0; r < rounds; ++r) {
        if (runA) streamA.push_back(local(0, true).mbPerSecond);
        if (sshd) streamB.push_back(viaSsh(*sshd, 0, true).mbPerSecond);
        if (runC) streamC.push_back(viaHpc(h, token, 0, true, cpu).mbPerSecond);
    }
    auto rounded = [](const std::vector<double>& v) {
        std::string out;
        for (double x : v) {
            char b[16];
            std::snprintf(b, sizeof b, "%s%.1f", out.empty() ? "" : " ", x);
            out += b;
        }
        return out;
    };
    std::printf("%-44s %8s %12s %12s  %s\n", "path", "MB/s", "echo p50 us", "echo p99 us", "MB/s each round");
    auto print = [&](const char* what, Figures f, const std::vector<double>& stream) {
        f.mbPerSecond = percentile(stream, 0.5);
        std::printf("%-44s %8.1f %12.1f %12.1f  %s\n", what, f.mbPerSecond, f.p50Us, f.p99Us, rounded(stream).c_str());
        return f;
    };
    Figures a, b, c;
    if (runA) a = print("(a) local program reading the PTY", local(echoIterations, false), streamA);
    if (sshd)
        b = print("(b) ssh -tt via ControlMaster", viaSsh(*sshd, echoIterations, false), streamB);
    else if (runB)
        std::printf("%-44s not measured: %s\n", "(b) ssh -tt", sshProblem.c_str());
    if (!runC) return 0;
    c = print("(c) hpc-agent -> hpc-relay -> hpc-daemond", viaHpc(h, token, echoIterations, false, cpu), streamC);
    std::printf("\nCPU per (c) stream: hpc-daemond %.2f s, hpc-relay %.2f s, the agent %.2f s\n", cpu.daemon / rounds,
                cpu.relay / rounds, cpu.agent / rounds);
    if (runA) std::printf("(c)/(a) throughput: %.2f (target >= 0.95)\n", c.mbPerSecond / a.mbPerSecond);
    if (sshd) std::printf("(c)/(b) echo p50: %.2f (target <= 0.6)\n", c.p50Us / b.p50Us);
    return 0;
}
