// Exec round trip through hpc-agent -> hpc-relay -> hpc-daemond over TLS on
// 127.0.0.1, beside ssh with a ControlMaster to a local sshd, in one run; then
// the throughput of a streamed exec's output beside ssh's.
// Prints figures; asserts nothing about time.
#include "harness.hpp"
#include "local_sshd.hpp"
#include "proc_stats.hpp"

#include "protocol.hpp"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

using namespace hpc;
using namespace hpc::test;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

struct Figures {
    std::string path;
    std::size_t n = 0;
    double p50Ms = 0, p99Ms = 0, perSecond = 0;
    bool ok = false;
    std::string note;
};

Figures summarize(std::string path, std::vector<double> ms, double wallSeconds) {
    Figures f;
    f.path = std::move(path);
    f.n = ms.size();
    if (ms.empty()) return f;
    std::sort(ms.begin(), ms.end());
    f.p50Ms = ms[ms.size() / 2];
    f.p99Ms = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
    f.perSecond = static_cast<double>(ms.size()) / wallSeconds;
    f.ok = true;
    return f;
}

template <class F>
Figures timeSequential(const std::string& path, std::size_t n, F&& once) {
    std::vector<double> ms;
    ms.reserve(n);
    auto start = Clock::now();
    for (std::size_t i = 0; i < n; ++i) {
        auto t0 = Clock::now();
        once();
        ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    return summarize(path, std::move(ms), std::chrono::duration<double>(Clock::now() - start).count());
}

/// Keeps `window` exec requests in flight on one connection.
Figures timePipelined(agent::AgentClient& client, std::size_t n, std::size_t window) {
    std::map<std::string, Clock::time_point> inFlight;
    std::vector<double> ms;
    std::size_t sent = 0;
    auto send = [&] {
        protocol::Envelope e;
        e.type = "exec";
        e.id = "p" + std::to_string(sent++);
        e.daemonId = "bench";
        e.payload = {{"argv", boost::json::array{"true"}}};
        inFlight[e.id] = Clock::now();
        client.ws().sendText(protocol::serialize(e));
    };
    auto start = Clock::now();
    while (sent < std::min(n, window)) send();
    while (!inFlight.empty()) {
        auto f = client.ws().read(std::chrono::seconds(30));
        if (!f) throw std::runtime_error("pipelined exec stalled");
        auto env = std::get<protocol::Envelope>(protocol::parse(f->data, protocol::kMaxResponseBytes));
        if (!env.ok) throw std::runtime_error("exec failed: " + env.errorMessage);
        ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - inFlight.at(env.replyTo)).count());
        inFlight.erase(env.replyTo);
        if (sent < n) send();
    }
    return summarize("hpc-agent library, " + std::to_string(window) + " in flight", std::move(ms),
                     std::chrono::duration<double>(Clock::now() - start).count());
}

/// Seconds for `argv` to run with its stdout to /dev/null.
double timeToNull(std::vector<std::string> argv, const std::vector<std::string>& env) {
    argv.insert(argv.begin(), {"sh", "-c", "\"$@\" > /dev/null", "sh"});
    auto t0 = Clock::now();
    auto r = runCommand(argv, {}, env, std::chrono::minutes(10));
    if (r.status != 0) throw std::runtime_error(argv[4] + " failed (" + std::to_string(r.status) + "): " + r.err);
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

/// Streamed output (issue 22 item 4): `head -c MIB /dev/zero` to /dev/null
/// through `hpc-agent exec` and through ssh, rounds interleaved; the peak RSS
/// of the daemon and the relay meanwhile.
void streamedThroughput(Harness& h, const std::vector<std::string>& env, std::size_t mib, int rounds) {
    std::string command = "head -c " + std::to_string(mib) + "M /dev/zero";
    std::vector<double> agentSeconds, sshSeconds;
    std::string sshNote;
    std::optional<LocalSshd> sshd;
    try {
        sshd.emplace(h.dir() / "ssh-stream");
    } catch (const std::exception& e) {
        sshNote = std::string("not measured: ") + e.what();
    }
    long daemonRss0 = procStats(h.daemonPid("bench")).rssKiB, relayRss0 = procStats(h.relayPid()).rssKiB;
    long daemonPeak = daemonRss0, relayPeak = relayRss0;
    for (int i = 0; i < rounds; ++i) {
        std::thread sampler;
        std::atomic<bool> done{false};
        sampler = std::thread([&] {
            while (!done) {
                daemonPeak = std::max(daemonPeak, procStats(h.daemonPid("bench")).rssKiB);
                relayPeak = std::max(relayPeak, procStats(h.relayPid()).rssKiB);
                std::this_thread::sleep_for(std::chrono::milliseconds(20));
            }
        });
        agentSeconds.push_back(timeToNull({Harness::binary("hpc-agent"), "exec", "bench", "-c", command}, env));
        done = true;
        sampler.join();
        if (sshd) sshSeconds.push_back(timeToNull(sshd->command(command, false), {}));
    }
    auto rate = [mib](double s) { return s > 0 ? static_cast<double>(mib) * 1.048576 / s : 0; };
    std::printf("\nstreamed output: `%s` to /dev/null, 127.0.0.1, median of %d rounds\n\n", command.c_str(), rounds);
    std::printf("%-44s %10s %10s\n", "path", "seconds", "MB/s");
    std::printf("%-44s %10.2f %10.1f\n", "hpc-agent exec (relay, two TLS hops)", median(agentSeconds),
                rate(median(agentSeconds)));
    if (sshd)
        std::printf("%-44s %10.2f %10.1f\n", "ssh -o ControlMaster", median(sshSeconds), rate(median(sshSeconds)));
    else
        std::printf("%-44s %s\n", "ssh -o ControlMaster", sshNote.c_str());
    std::printf("peak RSS growth while streaming: hpc-daemond %+ld KiB, hpc-relay %+ld KiB\n", daemonPeak - daemonRss0,
                relayPeak - relayRss0);
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t n = argc > 1 ? std::stoul(argv[1]) : 2000;
    std::size_t streamMib = argc > 2 ? std::stoul(argv[2]) : 256;
    std::vector<Figures> rows;
    Harness h;
    h.startRelay();
    auto work = h.dir() / "work";
    auto setup = h.setupDaemon("bench", "bench@example.org", {work.string()});
    if (setup.status != 0) {
        std::cerr << "setup failed: " << setup.err;
        return 1;
    }
    h.startDaemon("bench");
    auto token = h.login("bench@example.org");
    if (!h.waitConnected(token, "bench")) {
        std::cerr << "daemon did not connect\n" << h.daemonLog("bench");
        return 1;
    }
    auto client = h.agent(token);
    agent::ExecSpec spec;
    spec.argv = {"true"};
    for (int i = 0; i < 50; ++i) client->exec("bench", spec);  // warm up

    double cpu0 = procStats(h.daemonPid("bench")).cpuSeconds;
    rows.push_back(timeSequential("hpc-agent library, sequential", n, [&] { client->exec("bench", spec); }));
    double cpuSeq = procStats(h.daemonPid("bench")).cpuSeconds - cpu0;
    rows.push_back(timePipelined(*client, n, 16));

    std::vector<std::string> env = {"HPC_AGENT_URL=" + h.url(), "HPC_AGENT_TOKEN=" + token.reveal(),
                                    "HPC_AGENT_CA=" + h.caFile()};
    std::size_t cliN = std::min<std::size_t>(n, 300);
    rows.push_back(timeSequential("hpc-agent CLI (new process + TLS each)", cliN, [&] {
        if (runCommand({Harness::binary("hpc-agent"), "exec", "bench", "--", "true"}, {}, env).status != 0)
            throw std::runtime_error("hpc-agent exec failed");
    }));

    std::string sshNote;
    try {
        LocalSshd sshd(h.dir() / "ssh");
        rows.push_back(timeSequential("ssh -o ControlMaster (new process each)", cliN, [&] {
            if (sshd.run("true") != 0) throw std::runtime_error("ssh true failed");
        }));
        sshNote = sshd.note();
    } catch (const std::exception& e) {
        Figures f;
        f.path = "ssh -o ControlMaster";
        f.note = std::string("not measured: ") + e.what();
        rows.push_back(f);
    }

    std::printf("\nexec of `true`, 127.0.0.1, TLS; %zu runs (CLI rows: %zu)\n\n", n, cliN);
    std::printf("%-44s %8s %10s %10s %12s\n", "path", "runs", "p50 ms", "p99 ms", "execs/s");
    for (const auto& r : rows) {
        if (!r.ok) {
            std::printf("%-44s %s\n", r.path.c_str(), r.note.c_str());
            continue;
        }
        std::printf("%-44s %8zu %10.3f %10.3f %12.1f\n", r.path.c_str(), r.n, r.p50Ms, r.p99Ms, r.perSecond);
    }
    if (!sshNote.empty()) std::printf("ssh logs in %s\n", sshNote.c_str());
    std::printf("\nhpc-daemond CPU for the sequential run: %.2f s (%.1f us per exec)\n", cpuSeq,
                cpuSeq / static_cast<double>(n) * 1e6);
    std::printf("targets: through the relay, exec p50 <= 3 ms and >= 300 execs/s\n");
    if (streamMib > 0) streamedThroughput(h, env, streamMib, 5);
    return 0;
}
