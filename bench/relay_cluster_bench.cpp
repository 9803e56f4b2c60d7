// Two relay instances on one PostgreSQL database (--cluster-url): request
// round trips and a shell's output stream, with the agent on the daemon's
// own instance and with the agent on the other one (through the link between
// them), side by side in one run with the paths taking turns.
//
//   relay_cluster_bench POSTGRES_URL [EXECS] [MIB] [ROUNDS]
//
// POSTGRES_URL: a server where the bench may create a database
// (scripts/postgres-server.sh start DIR prints one). EXECS (default 300)
// round trips of `exec true`, and as many of `file.stat` (which starts no
// process: the path's own cost), per round, p50 and p99; MIB (default 100)
// of `base64` output through a shell per round, MB/s; ROUNDS (default 3):
// medians. Everything on 127.0.0.1, real TLS on every hop.
#include "harness.hpp"

#include "sql.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double percentile(std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

double median(std::vector<double> v) { return percentile(std::move(v), 0.5); }

/// Round trips of `exec true`, in microseconds.
std::vector<double> execRoundTrips(agent::AgentClient& agent, int count) {
    agent::ExecSpec spec;
    spec.argv = {"true"};
    std::vector<double> out;
    out.reserve(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) {
        auto t0 = Clock::now();
        agent.exec("d1", spec, 60s);
        out.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    return out;
}

/// Round trips of `file.stat` (no process started: the path's own cost), in microseconds.
std::vector<double> statRoundTrips(agent::AgentClient& agent, const std::string& path, int count) {
    std::vector<double> out;
    out.reserve(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) {
        auto t0 = Clock::now();
        agent.request("d1", "file.stat", {{"path", path}}, 60s);
        out.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    return out;
}

/// MB/s of `head -c MIB base64` through a shell, to the end marker.
double shellStream(agent::AgentClient& agent, int mib) {
    agent::PtySpec spec;
    spec.shell = "/bin/sh";
    spec.credit = 4 << 20;
    auto pty = agent.openPty("d1", spec);
    agent.ptyInput(pty.channel,
                   "stty -echo; head -c " + std::to_string(mib) + "M /dev/zero | base64; echo END-$((6*7))\r");
    std::string tail;
    std::uint64_t bytes = 0, unacked = 0;
    auto t0 = Clock::now();
    while (tail.find("END-42") == std::string::npos) {
        auto e = agent.nextPtyEvent(60s);
        if (!e) throw std::runtime_error("the shell's output stopped");
        if (e->channel != pty.channel || e->kind != agent::PtyEvent::Kind::Output) continue;
        bytes += e->data.size();
        unacked += e->data.size();
        tail = (tail + e->data).substr(tail.size() + e->data.size() > 64 ? tail.size() + e->data.size() - 64 : 0);
        if (unacked >= (1u << 20)) {
            agent.ptyAck("d1", pty.channel, unacked);
            unacked = 0;
        }
    }
    double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    agent.ptyClose("d1", pty.channel);
    return static_cast<double>(bytes) / 1e6 / seconds;
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc < 2) {
        std::fprintf(stderr, "usage: relay_cluster_bench POSTGRES_URL [EXECS] [MIB] [ROUNDS]\n");
        return 2;
    }
    std::string server = argv[1];
    int execs = argc > 2 ? std::stoi(argv[2]) : 300;
    int mib = argc > 3 ? std::stoi(argv[3]) : 100;
    int rounds = argc > 4 ? std::stoi(argv[4]) : 3;
    std::string name = "hpc_cluster_bench" + std::to_string(::getpid());
    relay::sql::openPostgres(server)->exec("CREATE DATABASE " + name);
    std::string database = server.substr(0, server.rfind('/') + 1) + name;

    Harness a, b;
    // Each agent sits unread while the other path runs its round: not the tests' 10 s idle limit.
    configureRelayCluster(a, b, database, {"--ws-idle-seconds", "60"});
    a.startRelay();
    b.startRelay();
    fs::path work = a.dir() / "work";
    fs::create_directories(work);
    if (a.setupDaemon("d1", "bench@example.org", {work.string()}).status != 0) throw std::runtime_error("setup failed");
    a.startDaemon("d1", {}, {"LOCAL_MODE=1"});
    Secret token = a.login("bench@example.org");
    if (!a.waitConnected(token, "d1", 60s)) throw std::runtime_error("the daemon did not connect");
    auto same = a.agent(token);
    auto across = b.agent(token);

    std::printf("relay_cluster_bench: daemon on instance A; agent on A (same) or on B (across, B -> A link)\n");
    std::printf("%d x `exec true` and %d MiB of base64 through a shell per round, %d rounds, paths taking turns\n\n",
                execs, mib, rounds);
    // Warm both paths (B opens its link to A on its first request).
    execRoundTrips(*same, 20);
    execRoundTrips(*across, 20);
    std::vector<double> p50[2], p99[2], stat50[2], stat99[2], mbs[2];
    for (int r = 0; r < rounds; ++r)
        for (int path = 0; path < 2; ++path) {
            auto& agent = path == 0 ? *same : *across;
            auto rtt = execRoundTrips(agent, execs);
            p50[path].push_back(percentile(rtt, 0.5));
            p99[path].push_back(percentile(rtt, 0.99));
            auto stat = statRoundTrips(agent, work.string(), execs);
            stat50[path].push_back(percentile(stat, 0.5));
            stat99[path].push_back(percentile(stat, 0.99));
            mbs[path].push_back(shellStream(agent, mib));
            std::printf(
                "round %d %-7s exec p50 %7.1f p99 %7.1f us  file.stat p50 %6.1f p99 %6.1f us  shell %6.1f MB/s\n",
                r + 1, path == 0 ? "same" : "across", p50[path].back(), p99[path].back(), stat50[path].back(),
                stat99[path].back(), mbs[path].back());
        }
    std::printf("\n%-30s %9s %9s %9s %9s %9s\n", "median of rounds (us, MB/s)", "exec p50", "exec p99", "stat p50",
                "stat p99", "shell");
    const char* names[2] = {"agent on A (same instance)", "agent on B (across, via A)"};
    for (int path = 0; path < 2; ++path)
        std::printf("%-30s %9.1f %9.1f %9.1f %9.1f %9.1f\n", names[path], median(p50[path]), median(p99[path]),
                    median(stat50[path]), median(stat99[path]), median(mbs[path]));
    std::printf(
        "\nratios: exec_p50_across_over_same=%.2f stat_p50_across_over_same=%.2f stream_across_over_same=%.2f\n",
        median(p50[1]) / median(p50[0]), median(stat50[1]) / median(stat50[0]), median(mbs[1]) / median(mbs[0]));
    same.reset();
    across.reset();
    a.stopDaemon("d1");
    b.stopRelay();
    a.stopRelay();
    relay::sql::openPostgres(server)->exec("DROP DATABASE " + name);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "relay_cluster_bench: %s\n", e.what());
    return 1;
}
