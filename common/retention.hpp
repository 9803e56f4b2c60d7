#pragma once
/// Keeps state.db bounded (issue 21): ended jobs and audit rows past their
/// retention are deleted, oldest first, a small batch at a time; past
/// state_max_bytes the oldest go even inside their retention; freed pages
/// are handed back to the file system (incremental vacuum). Jobs that have
/// not ended, and jobs whose callback the platform has not acknowledged, are
/// never deleted. (An acknowledged callback is deleted by the outbox at once.)
///
/// No I/O other than SQLite and no event loop: the daemon calls step() from
/// its loop, one short batch per turn (daemon/state_keeper.hpp).

#include "settings.hpp"
#include "store.hpp"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace hpc {

/// The directory of a job whose row a pass deleted: the daemon removes it
/// (off its loop) once the row is gone, so job output does not outlive it.
struct PrunedJobDir {
    std::string jobId;
    std::string dir;  ///< as recorded: <job_workdir>/.hpc-daemon/jobs/<job_id>
};

/// What one pass (a run of step() until it returns false) did.
struct PruneReport {
    double startedAt = 0;
    double finishedAt = 0;
    std::int64_t auditRows = 0;
    std::int64_t jobs = 0;
    std::int64_t capAuditRows = 0;  ///< of auditRows: inside retention, taken by the size cap
    std::int64_t capJobs = 0;       ///< of jobs: inside retention, taken by the size cap
    std::int64_t bytesBefore = 0;   ///< state.db and its WAL on disk
    std::int64_t bytesAfter = 0;
    std::int64_t jobDirs = 0;      ///< directories of the deleted jobs removed (by the daemon, after the pass)
    std::int64_t jobDirBytes = 0;  ///< the size of the files in them
    bool capForced() const { return capAuditRows > 0 || capJobs > 0; }
    /// Above the cap with nothing left that may be deleted.
    bool overCapWithNothingPrunable = false;
    std::string summary() const;
};

class StatePruner {
public:
    static constexpr int kBatchRows = 200;
    static constexpr int kVacuumPages = 256;

    StatePruner(Store& store, std::string daemonId) : m_store(store), m_daemonId(std::move(daemonId)) {}

    /// Starts a pass with these settings at time `now` (epoch seconds).
    void begin(const Settings& settings, double now);
    /// Does one batch (at most kBatchRows rows or kVacuumPages pages, in one
    /// transaction). Returns true while the pass has more to do. Throws
    /// std::runtime_error from SQLite (the pass is then over).
    bool step();
    const PruneReport& report() const { return m_report; }
    bool active() const { return m_phase != Phase::Done; }
    /// The directories of the jobs deleted (committed deletions only) since
    /// the last call, handed over once: the pruner itself touches no job
    /// directory.
    std::vector<PrunedJobDir> takeJobDirs() { return std::exchange(m_jobDirs, {}); }

    /// state.db plus its -wal on disk.
    std::int64_t fileBytes() const;

private:
    enum class Phase { AuditAge, JobAge, Cap, Vacuum, Checkpoint, Done };
    std::int64_t deleteAudit(double before);
    /// Deletes a batch of prunable jobs; returns their directories.
    std::vector<PrunedJobDir> deleteJobs(double before);

    Store& m_store;
    std::string m_daemonId;
    Settings m_settings;
    double m_now = 0;
    Phase m_phase = Phase::Done;
    PruneReport m_report;
    std::int64_t m_lastFree = -1;
    std::vector<PrunedJobDir> m_jobDirs;
};

/// Runs a whole pass at once (ctl, tests, the relay-less tools).
PruneReport pruneNow(Store& store, const std::string& daemonId, const Settings& settings, double now);

}  // namespace hpc
