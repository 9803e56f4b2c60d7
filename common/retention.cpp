#include "retention.hpp"

#include "job_state.hpp"
#include "util.hpp"

#include <sys/stat.h>

#include <cstdio>
#include <iterator>

namespace hpc {
namespace {

std::int64_t statSize(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? static_cast<std::int64_t>(st.st_size) : 0;
}

/// The prunable jobs of a daemon: ended, with no callback waiting for the platform.
std::string prunableJobs(const std::string& extra, const std::string& order, const std::string& columns = "job_id") {
    return "SELECT " + columns + " FROM jobs WHERE daemon_id = ?1 AND state IN " + finalStatesSqlList() +
           " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = jobs.job_id AND o.daemon_id = jobs.daemon_id)" +
           extra + " ORDER BY " + order + " LIMIT ?3";
}

constexpr const char* kEnd = "(CASE WHEN ended_at > 0 THEN ended_at ELSE updated_at END)";

}  // namespace

std::string PruneReport::summary() const {
    std::string s = std::to_string(auditRows) + " audit rows and " + std::to_string(jobs) + " ended jobs removed";
    if (capForced())
        s += " (" + std::to_string(capAuditRows) + " audit rows and " + std::to_string(capJobs) +
             " jobs inside their retention, to keep under state_max_bytes)";
    if (jobDirs > 0) {
        char dirs[96];
        std::snprintf(dirs, sizeof dirs, "; %lld job directories removed (%.1f KiB)", static_cast<long long>(jobDirs),
                      static_cast<double>(jobDirBytes) / 1024);
        s += dirs;
    }
    char sizes[96];
    std::snprintf(sizes, sizeof sizes, "; state %.1f KiB -> %.1f KiB", static_cast<double>(bytesBefore) / 1024,
                  static_cast<double>(bytesAfter) / 1024);
    return s + sizes;
}

std::int64_t StatePruner::fileBytes() const {
    std::string file = (m_store.dir() / Store::kFileName).string();
    return statSize(file) + statSize(file + "-wal");
}

void StatePruner::begin(const Settings& settings, double now) {
    m_settings = settings;
    m_now = now;
    m_report = PruneReport{};
    m_report.startedAt = nowEpochSeconds();
    m_report.bytesBefore = fileBytes();
    m_phase = Phase::AuditAge;
    m_lastFree = -1;
    // m_jobDirs stays: those of a pass that failed after some batches go with the next.
}

std::int64_t StatePruner::deleteAudit(double before) {
    auto st = m_store.db().prepare(
        "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE daemon_id = ?1 AND time < ?2 ORDER BY id LIMIT ?3)");
    st.bind(1, m_daemonId).bind(2, before).bind(3, kBatchRows);
    st.run();
    return m_store.db().changes();
}

std::vector<PrunedJobDir> StatePruner::deleteJobs(double before) {
    // The rows are read, then deleted one by one, in the caller's
    // transaction: the directories handed on are exactly the rows deleted.
    auto select = m_store.db().prepare(prunableJobs(std::string(" AND ") + kEnd + " < ?2", kEnd, "job_id, dir"));
    select.bind(1, m_daemonId).bind(2, before).bind(3, kBatchRows);
    std::vector<PrunedJobDir> batch;
    while (select.step()) batch.push_back(PrunedJobDir{select.text(0), select.text(1)});
    auto del = m_store.db().prepare("DELETE FROM jobs WHERE daemon_id = ?1 AND job_id = ?2");
    for (const auto& job : batch) {
        del.bind(1, m_daemonId).bind(2, job.jobId);
        del.run();
        del.reset();
    }
    return batch;
}

bool StatePruner::step() {
    auto& db = m_store.db();
    try {
        switch (m_phase) {
            case Phase::AuditAge: {
                sqlite::Transaction tx(db);
                auto n = deleteAudit(m_now - static_cast<double>(m_settings.auditRetention.count()));
                tx.commit();
                m_report.auditRows += n;
                if (n < kBatchRows) m_phase = Phase::JobAge;
                return true;
            }
            case Phase::JobAge: {
                sqlite::Transaction tx(db);
                auto batch = deleteJobs(m_now - static_cast<double>(m_settings.jobRetention.count()));
                tx.commit();
                auto n = static_cast<std::int64_t>(batch.size());
                m_report.jobs += n;
                std::move(batch.begin(), batch.end(), std::back_inserter(m_jobDirs));
                if (n < kBatchRows) m_phase = Phase::Cap;
                return true;
            }
            case Phase::Cap: {
                // Down to 90% of the cap, so a busy daemon does not prune a
                // few rows on every pass once it has reached it.
                auto cap = static_cast<std::int64_t>(m_settings.stateMaxBytes);
                auto used = sqlite::usedBytes(db);
                if (used <= cap * 9 / 10 || (m_report.capAuditRows + m_report.capJobs == 0 && used <= cap)) {
                    m_phase = Phase::Vacuum;
                    return true;
                }
                sqlite::Transaction tx(db);
                // Oldest first across both tables: compare the oldest audit
                // row with the job that ended first.
                auto oldestAudit = db.prepare("SELECT MIN(time) FROM audit WHERE daemon_id = ?1");
                oldestAudit.bind(1, m_daemonId);
                oldestAudit.step();
                bool haveAudit = !oldestAudit.isNull(0);
                double auditTime = oldestAudit.real(0);
                auto oldestJob = db.prepare(std::string("SELECT MIN(") + kEnd + ") FROM jobs WHERE job_id IN (" +
                                            prunableJobs("", kEnd) + ")");
                oldestJob.bind(1, m_daemonId).bind(3, kBatchRows);
                oldestJob.step();
                bool haveJob = !oldestJob.isNull(0);
                double jobTime = oldestJob.real(0);
                if (!haveAudit && !haveJob) {
                    m_report.overCapWithNothingPrunable = true;
                    m_phase = Phase::Vacuum;
                    return true;
                }
                if (haveAudit && (!haveJob || auditTime <= jobTime)) {
                    // The batch's rows up to a little after the oldest job, so the
                    // two tables stay in step.
                    double until = haveJob ? jobTime + 1 : m_now + 1;
                    auto n = deleteAudit(until);
                    m_report.auditRows += n;
                    m_report.capAuditRows += n;
                } else {
                    double until = haveAudit ? auditTime + 1 : m_now + 1;
                    auto batch = deleteJobs(until);
                    tx.commit();
                    auto n = static_cast<std::int64_t>(batch.size());
                    m_report.jobs += n;
                    m_report.capJobs += n;
                    std::move(batch.begin(), batch.end(), std::back_inserter(m_jobDirs));
                    return true;
                }
                tx.commit();
                return true;
            }
            case Phase::Vacuum: {
                auto free = sqlite::freePages(db);
                // Without auto_vacuum=INCREMENTAL (a migration that could not
                // run) the pragma does nothing: do not loop on it.
                if (free == 0 || free == m_lastFree || db.queryInt("PRAGMA auto_vacuum") != 2) {
                    m_phase = Phase::Checkpoint;
                    return true;
                }
                m_lastFree = free;
                db.exec("PRAGMA incremental_vacuum(" + std::to_string(kVacuumPages) + ")");
                return true;
            }
            case Phase::Checkpoint: {
                // In WAL mode the file is truncated when the pages reach it:
                // checkpoint now rather than at the next 1000 pages of writes.
                db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
                m_phase = Phase::Done;
                m_report.bytesAfter = fileBytes();
                m_report.finishedAt = nowEpochSeconds();
                return false;
            }
            case Phase::Done:
                return false;
        }
    } catch (...) {
        m_phase = Phase::Done;
        m_report.bytesAfter = fileBytes();
        m_report.finishedAt = nowEpochSeconds();
        throw;
    }
    return false;
}

PruneReport pruneNow(Store& store, const std::string& daemonId, const Settings& settings, double now) {
    StatePruner pruner(store, daemonId);
    pruner.begin(settings, now);
    while (pruner.step()) {
    }
    return pruner.report();
}

}  // namespace hpc
