// File transfer throughput (issue 22: the benchmark the issue calls
// transfer_bench): hpc-agent cp through hpc-relay to hpc-daemond over TLS on
// 127.0.0.1, beside scp to a private sshd on 127.0.0.1, in the same run,
// both ways, rounds interleaved and the median printed; and how much each of
// the agent, the relay and the daemon grew (peak RSS) while moving the file.
// Prints figures; asserts nothing about time.
//
// usage: cp_bench [MiB=256] [rounds=3]
#include "harness.hpp"
#include "local_sshd.hpp"
#include "proc_stats.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>

extern char** environ;

using namespace hpc;
using namespace hpc::test;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

/// A run of a program: its wall time and its own peak RSS (wait4).
struct Run {
    int status = -1;
    double seconds = 0;
    long peakKiB = 0;
};

Run runMeasured(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
    std::vector<std::string> envStore;
    for (char** e = environ; *e; ++e) envStore.emplace_back(*e);
    envStore.insert(envStore.end(), env.begin(), env.end());
    std::vector<char*> args, envp;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (const auto& e : envStore) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    Run r;
    auto t0 = Clock::now();
    pid_t pid = 0;
    if (posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), envp.data()) != 0) return r;
    posix_spawn_file_actions_destroy(&actions);
    int status = 0;
    rusage usage{};
    ::wait4(pid, &status, 0, &usage);
    r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.peakKiB = usage.ru_maxrss;
    return r;
}

long statusKiB(pid_t pid, const char* field) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(field, 0) == 0) return std::stol(line.substr(std::strlen(field)));
    return 0;
}

/// Starts a new peak (VmHWM) at the current RSS.
void resetPeak(pid_t pid) { std::ofstream("/proc/" + std::to_string(pid) + "/clear_refs") << "5"; }

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

std::string each(const std::vector<double>& v) {
    std::string out;
    for (double x : v) {
        char b[16];
        std::snprintf(b, sizeof b, "%s%.0f", out.empty() ? "" : " ", x);
        out += b;
    }
    return out;
}

/// The growth of a long-running process over a phase: peak minus the RSS it started with.
struct Growth {
    pid_t pid;
    long startKiB = 0;
    long maxGrowthKiB = 0;
    void start() {
        resetPeak(pid);
        startKiB = statusKiB(pid, "VmRSS:");
    }
    void stop() { maxGrowthKiB = std::max(maxGrowthKiB, statusKiB(pid, "VmHWM:") - startKiB); }
};

}  // namespace

int main(int argc, char** argv) {
    const std::size_t mib = argc > 1 ? std::stoul(argv[1]) : 256;
    const int rounds = argc > 2 ? std::max(1, std::stoi(argv[2])) : 3;
    Harness h;
    h.startRelay();
    auto work = h.dir() / "w";
    if (h.setupDaemon("bench", "bench@example.org", {work.string()}).status != 0) return 1;
    h.startDaemon("bench");
    auto token = h.login("bench@example.org");
    if (!h.waitConnected(token, "bench")) return 1;
    std::optional<LocalSshd> sshd;
    std::string sshProblem;
    try {
        sshd.emplace(h.dir() / "ssh");
    } catch (const std::exception& e) {
        sshProblem = e.what();
    }

    // The file: random bytes (nothing compresses them), read from the page cache by both.
    auto local = h.dir() / "local";
    fs::create_directories(local);
    {
        std::ofstream out(local / "file", std::ios::binary);
        std::mt19937_64 rng(42);
        std::vector<std::uint64_t> block(1 << 17);
        for (std::size_t m = 0; m < mib; ++m) {
            for (auto& w : block) w = rng();
            out.write(reinterpret_cast<const char*>(block.data()), static_cast<std::streamsize>(block.size() * 8));
        }
    }
    // The ssh peer may be another account: a directory of its own.
    fs::path peerDir = fs::path("/tmp") / ("cp_bench-" + std::to_string(::getpid()));
    fs::create_directories(peerDir);
    if (sshd)
        if (const passwd* pw = ::getpwnam(sshd->user().c_str()))
            if (::chown(peerDir.c_str(), pw->pw_uid, pw->pw_gid) != 0) sshProblem = "cannot hand " + peerDir.string();
    {
        std::error_code ec;
        fs::copy_file(local / "file", peerDir / "file", ec);  // the download's source on the peer
        if (const passwd* pw = sshd ? ::getpwnam(sshd->user().c_str()) : nullptr)
            if (::chown((peerDir / "file").c_str(), pw->pw_uid, pw->pw_gid) != 0) sshProblem = "cannot hand the file";
    }
    fs::copy_file(local / "file", work / "file");  // the download's source on the daemon

    const std::vector<std::string> env = {"HPC_AGENT_URL=" + h.url(), "HPC_AGENT_TOKEN=" + token.reveal(),
                                          "HPC_AGENT_CA=" + h.caFile()};
    const std::string agent = Harness::binary("hpc-agent");
    const double mb = static_cast<double>(mib) * 1048576.0 / 1e6;
    std::vector<double> upHpc, downHpc, upScp, downScp;
    long agentPeakKiB = 0;
    Growth relay{h.relayPid()}, daemon{h.daemonPid("bench")};
    ProcStats relayCpu0 = procStats(h.relayPid()), daemonCpu0 = procStats(h.daemonPid("bench"));
    double agentSeconds = 0;
    bool failed = false;
    auto hpc = [&](const std::vector<std::string>& args, std::vector<double>& into) {
        relay.start();
        daemon.start();
        auto r = runMeasured(args, env);
        relay.stop();
        daemon.stop();
        if (r.status != 0) {
            std::fprintf(stderr, "hpc-agent cp failed (status %d)\n", r.status);
            failed = true;
        }
        agentPeakKiB = std::max(agentPeakKiB, r.peakKiB);
        agentSeconds += r.seconds;
        into.push_back(mb / r.seconds);
    };
    auto scp = [&](const std::vector<std::string>& args, std::vector<double>& into) {
        auto r = runMeasured(args, {});
        if (r.status != 0) {
            sshProblem = "scp exited " + std::to_string(r.status);
            return;
        }
        into.push_back(mb / r.seconds);
    };
    for (int round = 0; round < rounds; ++round) {
        hpc({agent, "cp", "-q", (local / "file").string(), "bench:up"}, upHpc);
        hpc({agent, "cp", "-q", "bench:file", (local / "down").string()}, downHpc);
        if (sshd && sshProblem.empty()) {
            scp(sshd->scp((local / "file").string(), sshd->remote((peerDir / "up").string())), upScp);
            scp(sshd->scp(sshd->remote((peerDir / "file").string()), (local / "down-scp").string()), downScp);
        }
    }
    ProcStats relayCpu1 = procStats(h.relayPid()), daemonCpu1 = procStats(h.daemonPid("bench"));
    std::error_code ec;
    fs::remove_all(peerDir, ec);

    std::printf(
        "cp_bench: a %zu MiB file of random bytes, each way, %d rounds (median MB/s; each round in brackets)\n\n", mib,
        rounds);
    std::printf("%-10s %22s %26s %7s\n", "direction", "hpc-agent cp", "scp (sshd on 127.0.0.1)", "ratio");
    auto row = [&](const char* what, const std::vector<double>& ours, const std::vector<double>& theirs) {
        std::string a = std::to_string(static_cast<int>(median(ours))) + " [" + each(ours) + "]";
        std::string b =
            theirs.empty() ? "-" : std::to_string(static_cast<int>(median(theirs))) + " [" + each(theirs) + "]";
        std::printf("%-10s %22s %26s %7s\n", what, a.c_str(), b.c_str(),
                    theirs.empty() ? "-" : (std::to_string(median(ours) / median(theirs))).substr(0, 4).c_str());
    };
    row("upload", upHpc, upScp);
    row("download", downHpc, downScp);
    if (!sshProblem.empty()) std::printf("scp not measured: %s\n", sshProblem.c_str());
    if (sshd) std::printf("scp peer: %s\n", sshd->note().c_str());
    double transfers = 2.0 * rounds;
    std::printf(
        "\nmemory while moving %zu MiB: hpc-agent peak RSS %.1f MiB; growth over the transfer's start "
        "(peak - start): hpc-relay %.1f MiB, hpc-daemond %.1f MiB\n",
        mib, static_cast<double>(agentPeakKiB) / 1024, static_cast<double>(relay.maxGrowthKiB) / 1024,
        static_cast<double>(daemon.maxGrowthKiB) / 1024);
    std::printf("CPU seconds per transfer: hpc-relay %.2f, hpc-daemond %.2f (the agent's wall time %.2f s)\n",
                (relayCpu1.cpuSeconds - relayCpu0.cpuSeconds) / transfers,
                (daemonCpu1.cpuSeconds - daemonCpu0.cpuSeconds) / transfers, agentSeconds / transfers);
    return failed ? 1 : 0;
}
