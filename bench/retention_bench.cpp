// state.db size per N operations: retention off (the behaviour before issue
// 21) beside retention on, in one run, on real SQLite files. Operations are
// what the daemon writes for an agent: an audit row per command, and every
// tenth a job that is submitted, ends and has its callback acknowledged.
// Time is simulated (50,000 operations a day) so a year's steady state is
// reached in seconds; the daemon's own pass (StatePruner) does the pruning
// every 10 simulated minutes. Prints figures; never asserts.
//
//   retention_bench [operations=300000] [audit_retention=1d] [job_retention=1d]
#include "jobs/job_store.hpp"
#include "retention.hpp"
#include "settings.hpp"
#include "store.hpp"

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <string>

namespace fs = std::filesystem;
using namespace hpc;
using hpc::daemon::JobRecord;
using hpc::daemon::JobStore;

namespace {

constexpr double kOpsPerDay = 50000;
constexpr double kSecondsPerOp = 86400 / kOpsPerDay;

struct Run {
    Store store;
    JobStore jobs;
    explicit Run(const fs::path& dir) : store(Store::open(dir)), jobs(store) {}

    void op(long i, double now) {
        store.addAudit(Store::AuditEntry{now, "bench", "agent-7f3c2a", "exec", "/home/user/scratch/agent-work/project",
                                         "python train.py --epochs 3 --lr 0.001 2>&1 | tail -n 20", 0});
        if (i % 10 != 0) return;
        JobRecord j;
        j.jobId = "job-" + std::to_string(i);
        j.daemonId = "bench";
        j.agentId = "agent-7f3c2a";
        j.backend = "local";
        j.dir = "/home/user/scratch/agent-work/.hpc-daemon/jobs/" + j.jobId;
        j.cwd = "/home/user/scratch/agent-work/project";
        j.context = R"({"step":3,"run":"exp-42"})";
        j.submittedAt = now;
        jobs.insert(j);
        j.state = JobState::Completed;
        j.exitCode = 0;
        j.endedAt = now + 1;
        jobs.finish(j, j.toJson(), "cb-" + j.jobId);
        jobs.acknowledge("cb-" + j.jobId);
    }
};

double mib(std::int64_t b) { return static_cast<double>(b) / (1 << 20); }

}  // namespace

int main(int argc, char** argv) {
    long ops = argc > 1 ? std::atol(argv[1]) : 300000;
    Settings pruned;
    pruned.auditRetention = *parseDuration(argc > 2 ? argv[2] : "1d");
    pruned.jobRetention = *parseDuration(argc > 3 ? argv[3] : "1d");
    char tmpl[] = "/tmp/hpc-retention-bench-XXXXXX";
    if (!::mkdtemp(tmpl)) return 1;
    fs::path root = tmpl;
    Run off(root / "off"), on(root / "on");
    StatePruner pruner(on.store, "bench");
    double t0 = 2'000'000'000, nextPrune = t0 + 600;
    long step = std::max(1L, ops / 15);
    std::printf(
        "# %ld operations at %.0f a day (%.1f simulated days); retention audit %s, jobs %s, pass every 10 min\n", ops,
        kOpsPerDay, static_cast<double>(ops) / kOpsPerDay, formatDuration(pruned.auditRetention).c_str(),
        formatDuration(pruned.jobRetention).c_str());
    std::printf("%10s %8s %16s %16s %12s\n", "ops", "day", "unpruned MiB", "pruned MiB", "audit rows");
    StatePruner offSize(off.store, "bench");
    double pruneMs = 0;
    long passes = 0;
    for (long i = 1; i <= ops; ++i) {
        double now = t0 + static_cast<double>(i) * kSecondsPerOp;
        off.op(i, now);
        on.op(i, now);
        if (now >= nextPrune) {
            auto start = std::chrono::steady_clock::now();
            pruner.begin(pruned, now);
            while (pruner.step()) {
            }
            pruneMs += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
            ++passes;
            nextPrune += 600;
        }
        if (i % step == 0 || i == ops) {
            off.store.db().exec("PRAGMA wal_checkpoint(TRUNCATE)");
            on.store.db().exec("PRAGMA wal_checkpoint(TRUNCATE)");
            std::printf("%10ld %8.2f %16.2f %16.2f %12lld\n", i, (now - t0) / 86400, mib(offSize.fileBytes()),
                        mib(pruner.fileBytes()),
                        static_cast<long long>(on.store.db().queryInt("SELECT COUNT(*) FROM audit")));
        }
    }
    double perOp = static_cast<double>(offSize.fileBytes()) / static_cast<double>(ops);
    // The defaults' steady state: what a window of each table holds.
    Settings d;
    double auditDays = static_cast<double>(d.auditRetention.count()) / 86400;
    double jobDays = static_cast<double>(d.jobRetention.count()) / 86400;
    double auditRowBytes = static_cast<double>(off.store.db().queryInt(
                               "SELECT SUM(pgsize) FROM dbstat WHERE name IN ('audit', 'audit_by_daemon')")) /
                           static_cast<double>(ops);
    double jobBytes =
        static_cast<double>(off.store.db().queryInt("SELECT SUM(pgsize) FROM dbstat WHERE name IN ('jobs', "
                                                    "'jobs_by_daemon', 'jobs_by_end', 'sqlite_autoindex_jobs_1')")) /
        (static_cast<double>(ops) / 10);
    std::printf(
        "\nunpruned: %.0f bytes per operation (%.0f per audit row, %.0f per job); a year at 50,000 a day: %.1f GiB\n",
        perOp, auditRowBytes, jobBytes, perOp * kOpsPerDay * 365 / (1 << 30));
    std::printf(
        "defaults (audit %s, jobs %s, cap %s): steady state %.1f MiB (audit %.1f + jobs %.1f), whatever the uptime\n",
        formatDuration(d.auditRetention).c_str(), formatDuration(d.jobRetention).c_str(),
        formatSize(d.stateMaxBytes).c_str(),
        (auditRowBytes * kOpsPerDay * auditDays + jobBytes * kOpsPerDay / 10 * jobDays) / (1 << 20),
        auditRowBytes * kOpsPerDay * auditDays / (1 << 20), jobBytes * kOpsPerDay / 10 * jobDays / (1 << 20));
    std::printf(
        "pruning: %ld passes, %.2f ms per pass on average (batches of %d rows, each its own loop turn in the daemon)\n",
        passes, passes ? pruneMs / static_cast<double>(passes) : 0.0, StatePruner::kBatchRows);
    fs::remove_all(root);
    return 0;
}
