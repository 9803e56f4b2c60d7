// Job mode through hpc-agent -> hpc-relay -> hpc-daemond over TLS on
// 127.0.0.1 against a real single-node SLURM cluster, in one run:
//   1. N submissions through the agent beside N bare `sbatch` calls;
//   2. scheduler calls per monitor cycle and the daemon's CPU per cycle with
//      M held jobs tracked (`--hold`, so the queue stays full);
//   3. time from a job's end to its callback at the agent, SLURM and local.
// Needs SLURM_CONF for a running cluster (bench/run.sh starts one). Prints
// figures; asserts nothing about time.
#include "harness.hpp"
#include "proc_stats.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

using namespace hpc;
using namespace hpc::test;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

double since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

double wallNow() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

struct Stats {
    double p50 = 0, p99 = 0, max = 0, total = 0;
};

Stats stats(std::vector<double> v) {
    Stats s;
    if (v.empty()) return s;
    std::sort(v.begin(), v.end());
    s.p50 = v[v.size() / 2];
    s.p99 = v[std::min(v.size() - 1, v.size() * 99 / 100)];
    s.max = v.back();
    for (double x : v) s.total += x;
    return s;
}

std::size_t countLines(const fs::path& file, const std::string& needle) {
    std::ifstream in(file);
    std::size_t n = 0;
    for (std::string line; std::getline(in, line);)
        if (line.find(needle) != std::string::npos) ++n;
    return n;
}

}  // namespace

int run(int argc, char** argv) {
    int submissions = argc > 1 ? std::atoi(argv[1]) : 100;
    int held = argc > 2 ? std::atoi(argv[2]) : 1000;
    int latencyRuns = argc > 3 ? std::atoi(argv[3]) : 10;
    const char* conf = std::getenv("SLURM_CONF");
    if (!conf || !fs::exists(conf)) {
        std::fprintf(stderr, "job_bench: set SLURM_CONF to a running cluster's slurm.conf (bench/run.sh starts one)\n");
        return 2;
    }
    const double pollSeconds = 3;

    Harness h;
    h.startRelay();
    fs::path work = h.dir() / "work";
    fs::create_directories(work);
    fs::permissions(h.dir(), fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
    if (h.setupDaemon("jb", "jb@example.org", {work.string()}).status != 0) return 1;
    if (h.setupDaemon("jl", "jb@example.org", {work.string()}).status != 0) return 1;
    // squeue goes through a wrapper that logs each call with its duration.
    fs::path bin = h.dir() / "wrappers";
    writeExecutable(bin / "squeue",
                    "#!/bin/sh\nt0=$(date +%s.%N)\n/usr/bin/squeue \"$@\"\nrc=$?\necho \"$t0 $(date +%s.%N)\" >> " +
                        (h.dir() / "squeue.calls").string() + "\nexit $rc\n");
    std::string poll = std::to_string(pollSeconds);
    h.startDaemon("jb", {"--job-poll-min-seconds", poll, "--job-poll-max-seconds", poll},
                  {std::string("SLURM_CONF=") + conf, "PATH=" + bin.string() + ":" + std::getenv("PATH")});
    h.startDaemon("jl", {}, {"LOCAL_MODE=1"});
    auto token = h.login("jb@example.org");
    if (!h.waitConnected(token, "jb") || !h.waitConnected(token, "jl")) {
        std::fprintf(stderr, "daemons did not connect\n%s\n", h.daemonLog("jb").c_str());
        return 1;
    }
    auto agent = h.agent(token);
    std::printf("job_bench: SLURM (%s), hpc-daemond over TLS on 127.0.0.1, monitor interval %.0f s\n\n", conf,
                pollSeconds);

    // 1. Submissions: through the agent, and bare sbatch of the same script.
    std::string script = "#!/bin/bash\ntrue\n";
    std::vector<double> viaAgent, bare;
    for (int i = 0; i < submissions; ++i) {
        agent::JobSpec spec;
        spec.script = script;
        spec.sbatchArgs = {"--hold"};
        auto t0 = Clock::now();
        agent->submitJob("jb", spec);
        viaAgent.push_back(since(t0));
    }
    std::ofstream(work / "bare.sh") << script;
    for (int i = 0; i < submissions; ++i) {
        auto t0 = Clock::now();
        auto r = runCommand({"sbatch", "--parsable", "--hold", "--output=/dev/null", (work / "bare.sh").string()}, {},
                            {std::string("SLURM_CONF=") + conf});
        bare.push_back(since(t0));
        if (r.status != 0) std::fprintf(stderr, "sbatch failed: %s\n", r.err.c_str());
    }
    auto a = stats(viaAgent), b = stats(bare);
    std::printf("1. %d submissions, sequential\n", submissions);
    std::printf("   %-36s %9s %9s %11s\n", "path", "p50 ms", "p99 ms", "total s");
    std::printf("   %-36s %9.2f %9.2f %11.2f\n", "hpc-agent -> relay -> daemon -> sbatch", a.p50, a.p99,
                a.total / 1000);
    std::printf("   %-36s %9.2f %9.2f %11.2f\n", "bare sbatch", b.p50, b.p99, b.total / 1000);
    std::printf("   ratio (agent / bare, p50): %.2fx  (target <= 2x)\n\n", b.p50 > 0 ? a.p50 / b.p50 : 0);

    // 2. Many held jobs: scheduler calls and daemon CPU per cycle. (A new
    // connection: the old one sat unread past the relay's idle limit.)
    agent = h.agent(token);
    for (int i = submissions; i < held; ++i) {
        agent::JobSpec spec;
        spec.script = script;
        spec.sbatchArgs = {"--hold"};
        agent->submitJob("jb", spec);
    }
    // Let a few cycles pass so the interval is steady, then measure.
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<long long>(pollSeconds * 2000)));
    pid_t daemon = h.daemonPid("jb");
    std::size_t cycles0 = countLines(h.dir() / ("daemon-jb.log"), "monitor cycle");
    std::size_t calls0 = countLines(h.dir() / "squeue.calls", " ");
    double cpu0 = procStats(daemon).cpuSeconds;
    int measureCycles = 5;
    std::this_thread::sleep_for(
        std::chrono::milliseconds(static_cast<long long>(pollSeconds * 1000 * measureCycles + 500)));
    std::size_t cycles = countLines(h.dir() / ("daemon-jb.log"), "monitor cycle") - cycles0;
    std::size_t calls = countLines(h.dir() / "squeue.calls", " ") - calls0;
    double cpu = procStats(daemon).cpuSeconds - cpu0;
    std::vector<double> squeueMs;
    {
        std::ifstream in(h.dir() / "squeue.calls");
        double t0, t1;
        while (in >> t0 >> t1) squeueMs.push_back((t1 - t0) * 1000);
    }
    std::string tracked = "monitor cycle: " + std::to_string(held) + " jobs";
    bool sawAll = h.daemonLog("jb").find(tracked) != std::string::npos;
    std::printf("2. %d held SLURM jobs tracked (%s)\n", held, sawAll ? "all in every cycle" : "NOT all tracked");
    std::printf("   monitor cycles: %zu, squeue calls: %zu -> %.2f per cycle (target 1)\n", cycles, calls,
                cycles ? static_cast<double>(calls) / static_cast<double>(cycles) : 0.0);
    std::printf("   daemon CPU per cycle: %.2f ms (clock-tick resolution 10 ms; %.0f ms over %zu cycles)\n",
                cycles ? cpu * 1000 / static_cast<double>(cycles) : 0.0, cpu * 1000, cycles);
    std::printf("   squeue wall time per call (1000 jobs in the queue): p50 %.1f ms\n\n", stats(squeueMs).p50);
    runCommand({"scancel", "--me"}, {}, {std::string("SLURM_CONF=") + conf});

    // 3. From a job's end to its callback at the agent. First let the
    // cancelled jobs' callbacks drain, and sign in afresh (a new agent
    // identity) so their backlog is not in the way.
    waitUntil(
        [&] {
            return countLines(h.dir() / "daemon-jb.log", "acknowledged by the platform") >=
                   static_cast<std::size_t>(held);
        },
        std::chrono::minutes(5));
    agent = h.agent(h.login("jb@example.org"));
    auto latency = [&](const std::string& daemonId) {
        std::vector<double> ms;
        for (int i = 0; i < latencyRuns; ++i) {
            agent::JobSpec spec;
            spec.script = "#!/bin/bash\nsleep 1\ndate +%s.%N > \"$HPC_JOB_DIR/ended_at\"\n";
            auto r = agent->submitJob(daemonId, spec);
            std::string id(r.at("job_id").as_string());
            auto cb = agent->waitForJob(daemonId, id, std::chrono::seconds(120));
            double got = wallNow();
            if (!cb) {
                std::fprintf(stderr, "no callback for %s\n", id.c_str());
                continue;
            }
            agent->ackCallback(cb->callbackId);
            std::ifstream in(fs::path(std::string(r.at("stdout_path").as_string())).parent_path() / "ended_at");
            double ended = 0;
            if (in >> ended) ms.push_back((got - ended) * 1000);
        }
        return stats(ms);
    };
    auto slurm = latency("jb"), local = latency("jl");
    std::printf("3. job end -> callback at the agent, %d jobs each\n", latencyRuns);
    std::printf("   %-10s %9s %9s\n", "backend", "p50 ms", "max ms");
    std::printf("   %-10s %9.0f %9.0f   (target <= interval + 1 s = %.0f ms)\n", "slurm", slurm.p50, slurm.max,
                (pollSeconds + 1) * 1000);
    std::printf("   %-10s %9.0f %9.0f   (pidfd: no polling)\n", "local", local.p50, local.max);
    return 0;
}

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    try {
        return run(argc, argv);  // the harness stops what it started on the way out
    } catch (const std::exception& e) {
        std::fprintf(stderr, "job_bench: %s\n", e.what());
        return 1;
    }
}
