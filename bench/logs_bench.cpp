// A job's output read through hpc-agent -> hpc-relay -> hpc-daemond over TLS,
// three ways in one run, on the same 100 MB stdout of a finished local job:
// (a) the file read directly (the page cache's limit),
// (b) job.logs (hpc-agent logs), with the default 1 MiB window,
// (c) `cat` of the file in a shell through the same daemon (hpc-agent shell):
//     the nearest peer, since `exec` caps a command's output at 4 MiB.
// Rounds take turns; medians are printed. Asserts nothing about time.
#include "fd.hpp"
#include "harness.hpp"
#include "proc_stats.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

using namespace hpc;
using namespace hpc::test;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

double mbPerSecond(std::size_t bytes, Clock::time_point t0) {
    return static_cast<double>(bytes) / 1e6 / std::chrono::duration<double>(Clock::now() - t0).count();
}

/// (a) The file read straight from the page cache.
double direct(const fs::path& file) {
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    std::vector<char> buf(1 << 20);
    std::size_t bytes = 0;
    auto t0 = Clock::now();
    for (ssize_t n; (n = ::read(fd.get(), buf.data(), buf.size())) > 0;) bytes += static_cast<std::size_t>(n);
    return mbPerSecond(bytes, t0);
}

/// (b) job.logs, as `hpc-agent logs` reads it.
double viaLogs(agent::AgentClient& client, const std::string& jobId, std::size_t expected) {
    agent::JobLogsSpec spec;
    spec.jobId = jobId;
    std::size_t bytes = 0;
    auto t0 = Clock::now();
    client.streamJobLogs("bench", spec, [&bytes](std::string_view d) { bytes += d.size(); });
    if (bytes != expected) throw std::runtime_error("job.logs sent " + std::to_string(bytes) + " bytes");
    return mbPerSecond(bytes, t0);
}

/// (c) `cat` in a raw-mode shell through the daemon, credit as hpc-agent shell grants it.
double viaShell(agent::AgentClient& client, const fs::path& file) {
    agent::PtySpec spec;
    spec.shell = "/bin/sh";
    auto pty = client.openPty("bench", spec);
    auto t0 = Clock::now();
    client.ptyInput(pty.channel, "exec sh -c 'stty raw -echo; cat " + file.string() + "'\r");
    std::size_t bytes = 0, unacked = 0;
    while (true) {
        auto e = client.nextPtyEvent(std::chrono::seconds(30));
        if (!e) throw std::runtime_error("the shell's stream stalled");
        if (e->channel != pty.channel) continue;
        if (e->kind != agent::PtyEvent::Kind::Output) break;
        bytes += e->data.size();
        unacked += e->data.size();
        if (unacked >= 256 * 1024) {
            client.ptyAck("bench", pty.channel, unacked);
            unacked = 0;
        }
    }
    return mbPerSecond(bytes, t0);
}

}  // namespace

int main(int argc, char** argv) {
    int megabytes = argc > 1 ? std::max(1, std::stoi(argv[1])) : 100;
    int rounds = argc > 2 ? std::max(1, std::stoi(argv[2])) : 5;
    Harness h;
    h.startRelay();
    fs::path work = h.dir() / "w";
    if (h.setupDaemon("bench", "bench@example.org", {work.string()}).status != 0) return 1;
    h.startDaemon("bench", {}, {"LOCAL_MODE=1"});
    auto token = h.login("bench@example.org");
    if (!h.waitConnected(token, "bench")) return 1;
    auto client = h.agent(token);
    agent::JobSpec job;
    job.script = "head -c " + std::to_string(megabytes) + "000000 /dev/urandom\n";
    std::string jobId = boost::json::value_to<std::string>(client->submitJob("bench", job).at("job_id"));
    auto cb = client->waitForJob("bench", jobId, std::chrono::minutes(5));
    if (!cb || cb->state != "COMPLETED") return 1;
    fs::path file = work / ".hpc-daemon/jobs" / jobId / "stdout";
    std::size_t size = fs::file_size(file);

    std::printf("%d MB of job output (a finished local job's stdout), %d rounds, median\n\n", megabytes, rounds);
    std::vector<double> a, b, c;
    double daemonCpuB = 0, daemonCpuC = 0;
    for (int r = 0; r < rounds; ++r) {
        a.push_back(direct(file));
        auto before = procStats(h.daemonPid("bench"));
        b.push_back(viaLogs(*client, jobId, size));
        auto mid = procStats(h.daemonPid("bench"));
        c.push_back(viaShell(*client, file));
        auto after = procStats(h.daemonPid("bench"));
        daemonCpuB += mid.cpuSeconds - before.cpuSeconds;
        daemonCpuC += after.cpuSeconds - mid.cpuSeconds;
    }
    std::printf("%-52s %8s %22s\n", "path", "MB/s", "hpc-daemond CPU s/run");
    std::printf("%-52s %8.0f %22s\n", "(a) the file read directly", median(a), "-");
    std::printf("%-52s %8.1f %22.2f\n", "(b) hpc-agent logs (job.logs, 1 MiB window)", median(b), daemonCpuB / rounds);
    std::printf("%-52s %8.1f %22.2f\n", "(c) cat in hpc-agent shell (PTY, same path)", median(c), daemonCpuC / rounds);
    std::printf("\n(b)/(c) throughput: %.2f\n", median(b) / median(c));
    return 0;
}
