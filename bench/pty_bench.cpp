// PTY stream throughput and keystroke echo latency, three ways in one run:
// (a) a local program reading the PTY master directly (the kernel's limit),
// (b) ssh -tt through a ControlMaster to a local sshd,
// (c) hpc-agent -> hpc-relay -> hpc-daemond over TLS.
// Then many shells open at once, one streaming. Prints figures; asserts
// nothing about time.
#include "harness.hpp"
#include "local_sshd.hpp"
#include "proc_stats.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>

using namespace hpc;
using namespace hpc::test;
using Clock = std::chrono::steady_clock;

namespace {

const std::string kEcho = "stty raw -echo; cat";

/// A program that writes a stream to its terminal.
struct Producer {
    std::string name;
    std::string command;
};

/// One stream's figures, and the CPU of each process on its path.
struct Stream {
    double mbPerSecond = 0;
    double megabytes = 0;
    /// (a): the reader; (b): sshd, the ssh client side (master and mux
    /// client); (c): hpc-daemond, hpc-relay, the agent.
    double cpu[3] = {0, 0, 0};
    std::size_t frames = 0;  ///< (c): output frames the agent received
};

struct Echo {
    double p50 = 0, p90 = 0, p99 = 0, p999 = 0;
};

double percentile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

Echo summarize(const std::vector<double>& us) {
    return {percentile(us, 0.5), percentile(us, 0.9), percentile(us, 0.99), percentile(us, 0.999)};
}

double seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

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

void openPty(UniqueFd& master, UniqueFd& slave) {
    master.reset(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
    ::grantpt(master.get());
    ::unlockpt(master.get());
    slave.reset(::open(::ptsname(master.get()), O_RDWR | O_NOCTTY | O_CLOEXEC));
}

/// (a) a PTY read directly by this process.
Stream localStream(const Producer& producer) {
    Stream s;
    UniqueFd master, slave;
    openPty(master, slave);
    SpawnOptions o;
    o.argv = {"sh", "-c", producer.command};
    o.controllingTerminal = slave.get();
    double cpu0 = procStats(::getpid()).cpuSeconds;
    auto t0 = Clock::now();
    ChildGuard child(spawn(o).pid);
    slave.reset();
    s.megabytes = static_cast<double>(drain(master.get())) / 1e6;
    s.mbPerSecond = s.megabytes / seconds(t0);
    s.cpu[0] = procStats(::getpid()).cpuSeconds - cpu0;
    return s;
}

std::vector<double> localEcho(int iterations) {
    UniqueFd master, slave;
    openPty(master, slave);
    SpawnOptions o;
    o.argv = {"sh", "-c", kEcho};
    o.controllingTerminal = slave.get();
    ChildGuard child(spawn(o).pid);
    slave.reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    return echoLoop(master.get(), master.get(), iterations);
}

/// (b) ssh -tt: stdout and stdin are pipes, the remote side a PTY.
SpawnedProcess sshRun(LocalSshd& sshd, const std::string& command) {
    SpawnOptions o;
    o.argv = sshd.command(command, true);
    o.in = Stdio::Pipe;
    o.out = Stdio::Pipe;
    o.err = Stdio::Null;
    return spawn(o);
}

Stream sshStream(LocalSshd& sshd, const Producer& producer) {
    Stream s;
    auto servers = [&] { return cpuSecondsOf(descendantsNamed(sshd.serverPid(), "sshd")); };
    pid_t master = sshd.masterPid();
    double server0 = servers(), master0 = procStats(master).cpuSeconds;
    auto t0 = Clock::now();
    SpawnedProcess p = sshRun(sshd, producer.command);
    ChildGuard guard(p.pid);
    s.megabytes = static_cast<double>(drain(p.stdoutFd.get())) / 1e6;
    s.mbPerSecond = s.megabytes / seconds(t0);
    // Read before the mux client is reaped: a zombie's times are still there.
    s.cpu[0] = servers() - server0;
    s.cpu[1] = procStats(master).cpuSeconds - master0 + procStats(p.pid).cpuSeconds;
    return s;
}

std::vector<double> sshEcho(LocalSshd& sshd, int iterations) {
    SpawnedProcess p = sshRun(sshd, kEcho);
    ChildGuard guard(p.pid);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    char junk[4096];
    while (::read(p.stdoutFd.get(), junk, sizeof junk) > 0) {
    }
    int in = p.stdinFd.get();
    int flags = ::fcntl(in, F_GETFL);
    ::fcntl(in, F_SETFL, flags & ~O_NONBLOCK);
    return echoLoop(in, p.stdoutFd.get(), iterations);
}

/// (c) through the relay and the daemon.
constexpr std::uint64_t kWindow = 4 << 20;

agent::PtyHandle openShell(agent::AgentClient& client) {
    agent::PtySpec spec;
    spec.shell = "/bin/sh";
    spec.credit = kWindow;
    return client.openPty("bench", spec);
}

/// Reads channel's output until it exits, granting credit back in quarters
/// of the window (not per frame); returns bytes and frames.
std::pair<std::size_t, std::size_t> readUntilExit(agent::AgentClient& client, std::uint32_t channel) {
    std::size_t bytes = 0, frames = 0, unacked = 0;
    while (true) {
        auto e = client.nextPtyEvent(std::chrono::seconds(30));
        if (!e) throw std::runtime_error("the stream stalled");
        if (e->channel != channel) continue;
        if (e->kind == agent::PtyEvent::Kind::Exit) return {bytes, frames};
        bytes += e->data.size();
        ++frames;
        unacked += e->data.size();
        if (unacked >= kWindow / 4) {
            client.ptyAck("bench", channel, unacked);
            unacked = 0;
        }
    }
}

Stream hpcStream(Harness& h, agent::AgentClient& client, const Producer& producer) {
    Stream s;
    auto pty = openShell(client);
    double d0 = procStats(h.daemonPid("bench")).cpuSeconds, r0 = procStats(h.relayPid()).cpuSeconds,
           a0 = procStats(::getpid()).cpuSeconds;
    auto t0 = Clock::now();
    client.ptyInput(pty.channel, "exec sh -c '" + producer.command + "'\r");
    auto [bytes, frames] = readUntilExit(client, pty.channel);
    s.megabytes = static_cast<double>(bytes) / 1e6;
    s.mbPerSecond = s.megabytes / seconds(t0);
    s.frames = frames;
    s.cpu[0] = procStats(h.daemonPid("bench")).cpuSeconds - d0;
    s.cpu[1] = procStats(h.relayPid()).cpuSeconds - r0;
    s.cpu[2] = procStats(::getpid()).cpuSeconds - a0;
    return s;
}

std::vector<double> hpcEcho(agent::AgentClient& client, int iterations) {
    auto pty = openShell(client);
    client.ptyInput(pty.channel, "exec sh -c '" + kEcho + "'\r");
    // Let the command start and its output settle.
    auto settle = Clock::now() + std::chrono::milliseconds(800);
    while (Clock::now() < settle) client.nextPtyEvent(std::chrono::milliseconds(50));
    std::vector<double> us;
    for (int i = 0; i < iterations; ++i) {
        // 10k one-byte echoes use 10 kB of the 4 MiB window: no acks needed.
        auto t0 = Clock::now();
        client.ptyInput(pty.channel, "x");
        bool got = false;
        while (!got) {
            auto e = client.nextPtyEvent(std::chrono::seconds(5));
            if (!e) throw std::runtime_error("no echo");
            if (e->kind == agent::PtyEvent::Kind::Output && e->channel == pty.channel) got = true;
        }
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    client.ptyClose("bench", pty.channel);
    return us;
}

/// Processes that keep both cores busy while they live.
class CpuHog {
public:
    CpuHog() {
        unsigned n = std::max(1U, std::thread::hardware_concurrency());
        for (unsigned i = 0; i < n; ++i) {
            SpawnOptions o;
            o.argv = {"sh", "-c", "while :; do :; done"};
            m_children.emplace_back(spawn(o).pid);
        }
    }
    std::size_t size() const { return m_children.size(); }

private:
    std::vector<ChildGuard> m_children;
};

std::string joined(const std::vector<double>& v) {
    std::string out;
    for (double x : v) {
        char b[16];
        std::snprintf(b, sizeof b, "%s%.1f", out.empty() ? "" : " ", x);
        out += b;
    }
    return out;
}

double loadAverage() {
    std::ifstream f("/proc/loadavg");
    double one = 0;
    f >> one;
    return one;
}

}  // namespace

static int run(int argc, char** argv) {
    int echoIterations = argc > 1 ? std::stoi(argv[1]) : 10000;
    // Which paths to run (default all): "c" alone is handy under a profiler.
    std::string paths = argc > 2 ? argv[2] : "abc";
    // Streams run this many rounds, the paths taking turns, and the median
    // is printed: this machine's throughput drifts by ±20% over a minute,
    // which one run of each path in a row would count as a difference.
    int rounds = argc > 3 ? std::max(1, std::stoi(argv[3])) : 3;
    // Shells open at once for the last figure (0: skip it).
    int shells = argc > 4 ? std::max(0, std::stoi(argv[4])) : 500;
    bool runA = paths.find('a') != std::string::npos, runB = paths.find('b') != std::string::npos,
         runC = paths.find('c') != std::string::npos;
    Harness h;
    h.startRelay();
    if (h.setupDaemon("bench", "bench@example.org", {(h.dir() / "w").string()}).status != 0) return 1;
    h.editProfile("bench", [&](Profile& p) { p.maxSessions = std::max(p.maxSessions, shells + 4); });
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

    // 200 MB of base64 text in a file, for `cat`.
    auto file = h.dir() / "w" / "stream.txt";
    if (runCommand({"sh", "-c", "head -c 150000000 /dev/zero | base64 > " + file.string()}).status != 0) return 1;
    const std::vector<Producer> producers = {{"base64", "head -c 200M /dev/zero | base64"},
                                             {"cat", "cat " + file.string()}};

    std::printf("load average before: %.2f on %u CPUs\n", loadAverage(), std::thread::hardware_concurrency());
    std::printf("streams: each producer through a PTY, %d rounds with the paths taking turns (median)\n", rounds);
    std::printf("echo: 1 byte in, its echo back (`%s` on the PTY), %d times; idle, then with %u CPU hogs\n\n",
                kEcho.c_str(), echoIterations, std::thread::hardware_concurrency());

    const char* names[3] = {"(a) local program reading the PTY", "(b) ssh -tt via ControlMaster",
                            "(c) hpc-agent -> hpc-relay -> hpc-daemond"};
    bool run[3] = {runA, sshd.has_value(), runC};
    double streamMedian[2][3] = {};
    for (std::size_t pi = 0; pi < producers.size(); ++pi) {
        const auto& producer = producers[pi];
        std::vector<Stream> all[3];
        for (int r = 0; r < rounds; ++r) {
            if (run[0]) all[0].push_back(localStream(producer));
            if (run[1]) all[1].push_back(sshStream(*sshd, producer));
            if (run[2]) all[2].push_back(hpcStream(h, *h.agent(token), producer));
        }
        std::printf("stream `%s`:\n", producer.command.c_str());
        std::printf("  %-42s %7s  %-17s %s\n", "path", "MB/s", "each round", "CPU ms per MB");
        for (int p = 0; p < 3; ++p) {
            if (!run[p]) {
                if (p == 1 && runB) std::printf("  %-42s not measured: %s\n", names[p], sshProblem.c_str());
                continue;
            }
            std::vector<double> rates;
            double mb = 0, cpu[3] = {0, 0, 0};
            std::size_t frames = 0;
            for (const auto& s : all[p]) {
                rates.push_back(s.mbPerSecond);
                mb += s.megabytes;
                frames += s.frames;
                for (int k = 0; k < 3; ++k) cpu[k] += s.cpu[k];
            }
            streamMedian[pi][p] = percentile(rates, 0.5);
            char cpuText[160];
            if (p == 0)
                std::snprintf(cpuText, sizeof cpuText, "reader %.2f", 1000 * cpu[0] / mb);
            else if (p == 1)
                std::snprintf(cpuText, sizeof cpuText, "sshd %.2f, ssh client side %.2f", 1000 * cpu[0] / mb,
                              1000 * cpu[1] / mb);
            else
                std::snprintf(cpuText, sizeof cpuText,
                              "hpc-daemond %.2f, hpc-relay %.2f, agent %.2f; %.1f KiB per frame", 1000 * cpu[0] / mb,
                              1000 * cpu[1] / mb, 1000 * cpu[2] / mb,
                              frames ? mb * 1e6 / 1024 / static_cast<double>(frames) : 0.0);
            std::printf("  %-42s %7.1f  %-17s %s\n", names[p], streamMedian[pi][p], joined(rates).c_str(), cpuText);
        }
        std::printf("\n");
    }

    Echo echo[2][3];  // [idle, busy][path]
    for (int busy = 0; busy < 2 && echoIterations > 0; ++busy) {
        std::optional<CpuHog> hog;
        if (busy) hog.emplace();
        if (run[0]) echo[busy][0] = summarize(localEcho(echoIterations));
        if (run[1]) echo[busy][1] = summarize(sshEcho(*sshd, echoIterations));
        if (run[2]) echo[busy][2] = summarize(hpcEcho(*h.agent(token), echoIterations));
        std::printf("echo, %s (load average %.2f):\n", busy ? "both CPUs busy with hogs" : "idle", loadAverage());
        std::printf("  %-42s %9s %9s %9s %9s\n", "path", "p50 us", "p90 us", "p99 us", "p99.9 us");
        for (int p = 0; p < 3; ++p)
            if (run[p])
                std::printf("  %-42s %9.1f %9.1f %9.1f %9.1f\n", names[p], echo[busy][p].p50, echo[busy][p].p90,
                            echo[busy][p].p99, echo[busy][p].p999);
        std::printf("\n");
    }

    if (runC && shells > 0) {
        // Many shells open at once, all idle but one, which streams.
        auto client = h.agent(token);
        long rss0 = procStats(h.daemonPid("bench")).rssKiB;
        std::vector<agent::PtyHandle> idle;
        auto t0 = Clock::now();
        for (int i = 1; i < shells; ++i) idle.push_back(openShell(*client));
        double openSeconds = seconds(t0);
        long rss1 = procStats(h.daemonPid("bench")).rssKiB;
        auto open = static_cast<int>(h.daemonStatus("bench").at("active_sessions").to_number<double>());
        if (open != shells - 1) throw std::runtime_error("the daemon has " + std::to_string(open) + " shells open");
        Stream s = hpcStream(h, *client, producers[0]);
        std::printf(
            "%d shells open (%d idle, opened in %.1f s), one streaming `%s`: %.1f MB/s; hpc-daemond RSS "
            "%.1f MiB -> %.1f MiB, %.1f KiB per shell\n\n",
            shells, shells - 1, openSeconds, producers[0].command.c_str(), s.mbPerSecond,
            static_cast<double>(rss0) / 1024, static_cast<double>(rss1) / 1024,
            static_cast<double>(rss1 - rss0) / (shells - 1));
        for (const auto& pty : idle) client->ptyClose("bench", pty.channel);
    }

    auto ratio = [](double x, double y) { return y > 0 ? x / y : 0.0; };
    std::printf("targets: stream (c) >= 0.95 x (a); echo p50 (c) <= 1.2 x (b), p99 (c) <= 1.5 x (b)\n");
    std::printf(
        "ratios: stream_c_over_a=%.2f echo_p50_c_over_b=%.2f echo_p99_c_over_b=%.2f "
        "stream_cat_c_over_a=%.2f busy_echo_p50_c_over_b=%.2f busy_echo_p99_c_over_b=%.2f\n",
        ratio(streamMedian[0][2], streamMedian[0][0]), ratio(echo[0][2].p50, echo[0][1].p50),
        ratio(echo[0][2].p99, echo[0][1].p99), ratio(streamMedian[1][2], streamMedian[1][0]),
        ratio(echo[1][2].p50, echo[1][1].p50), ratio(echo[1][2].p99, echo[1][1].p99));
    return 0;
}

int main(int argc, char** argv) {
    // Caught here so that the relay, the daemon and sshd are stopped on the
    // way out (an exception out of main would skip their destructors).
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pty_bench: %s\n", e.what());
        return 1;
    }
}
