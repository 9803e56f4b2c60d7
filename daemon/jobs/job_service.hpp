#pragma once
/// The job requests (`job.submit`, `job.status`, `job.cancel`, `job.list`,
/// `job.logs`, `job.logs.close`), the store rows behind them, and the
/// hand-off of final states to the outbox. Only the submitting agent may
/// see, follow or cancel a job (NOT_OWNER).

#include "allowed_dirs.hpp"
#include "job_dir_io.hpp"
#include "job_logs.hpp"
#include "job_store.hpp"
#include "outbox.hpp"
#include "protocol.hpp"
#include "retention.hpp"
#include "scheduler.hpp"

#include <boost/asio/io_context.hpp>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace hpc::daemon {

/// Where jobs may go: the profile's allowed directories and job directory,
/// and the kernel confinement for local jobs.
struct JobPolicy {
    AllowedDirs dirs{{}};
    std::filesystem::path jobWorkdir;                ///< resolved; jobs' directories go below it
    std::shared_ptr<const Confinement> confinement;  ///< for local jobs
};

class JobService {
public:
    using Reply = std::function<void(std::string text)>;

    /// `ioTimeout`: how long a read or write in a job directory may take
    /// before the request that needs it is answered with an error.
    JobService(boost::asio::io_context& ioc, Store& store, std::string daemonId, std::unique_ptr<Scheduler> scheduler,
               Outbox::Send send, std::chrono::milliseconds ioTimeout = std::chrono::seconds(30));

    /// Makes a scheduler for another backend ("local", "slurm"), or nullptr
    /// when it cannot run here: jobs submitted before a restart that changed
    /// the scheduler (LOCAL_MODE set or unset, SLURM installed or gone) are
    /// still followed to their end and callback.
    using SchedulerFactory = std::function<std::unique_ptr<Scheduler>(const std::string& backend)>;
    void setSchedulerFactory(SchedulerFactory factory) { m_factory = std::move(factory); }

    /// Follows the jobs the store says are live (after a restart).
    void adoptLive();
    void setPolicy(JobPolicy policy) { m_policy = std::move(policy); }
    /// Receives an audit entry for every submitted job (its script).
    void setAudit(std::function<void(const Store::AuditEntry&)> audit) { m_audit = std::move(audit); }
    /// Told of every submitted job and every change of state.
    void setOnJobChange(std::function<void(const JobRecord&)> listener) { m_listener = std::move(listener); }

    /// Handles a job.* request; false when `env.type` is not one. Answers
    /// through `reply` (at once, or when the scheduler has answered).
    /// Throws hpc::Error for bad requests.
    bool handle(const protocol::Envelope& env, const std::string& agentId, const Reply& reply);

    Outbox& outbox() { return m_outbox; }
    /// The streams of jobs' output (`job.logs`), channels of their own.
    JobLogs& logs() { return m_logs; }
    /// Writes the final states (and callbacks) that a full disk or quota
    /// refused, once the store is writable again; they were kept meanwhile,
    /// the cancel and the output's tails with them.
    void recordUnrecorded();
    /// Removes the directories of jobs whose rows a prune pass deleted, off
    /// the loop (JobDirIo), a batch at a time, each through removeJobDir (a
    /// recorded path that is not a job directory is refused); a directory
    /// whose job still has a row is left alone. One that cannot be removed
    /// (gone already, refused, the file system not answering) is logged at
    /// debug and forgotten; after a batch that did not answer the rest are
    /// forgotten too. `done(directories removed, bytes)` runs on the loop,
    /// exactly once.
    void removeJobDirs(std::vector<PrunedJobDir> dirs, std::function<void(std::int64_t, std::int64_t)> done);
    static constexpr std::size_t kRemoveBatch = 200;
    std::string_view backend() const { return m_scheduler->name(); }
    std::size_t active() const;
    /// Callbacks written and not yet acknowledged by the platform.
    std::size_t pendingCallbacks() { return m_jobs.pendingCallbackCount(m_daemonId); }
    /// For hpc-daemonctl jobs: every agent's, newest first.
    std::vector<JobRecord> recent(int limit) { return m_jobs.list(m_daemonId, "", limit); }

    static constexpr std::size_t kTailBytes = 4096;

    /// The ends of a job's output; `error` says why they are empty when the
    /// job directory did not answer in time.
    struct Tails {
        std::string out, err, error;
    };

private:
    void submit(const protocol::Envelope& env, const std::string& agentId, const Reply& reply);
    JobRecord owned(const boost::json::object& payload, const std::string& agentId);
    /// Starts a job whose files are written and whose row is stored.
    void start(const JobRecord& job, const SubmitOptions& options, const std::string& id, const Reply& reply);
    void onChange(const JobRecord& job);
    void recordFinal(const JobRecord& job, const Tails& tails);
    struct DirRemoval;
    void removeNextDirs(const std::shared_ptr<DirRemoval>& r);
    /// Reads the ends of the job's stdout and stderr off the loop.
    void readTails(const JobRecord& job, std::size_t bytes, std::function<void(Tails)> done);
    /// The scheduler that follows jobs of `backend`; nullptr when none can.
    Scheduler* schedulerFor(const std::string& backend);

    JobDirIo m_io;  ///< first: outlives the schedulers that use it
    Store& m_store;
    JobStore m_jobs;
    std::string m_daemonId;
    std::unique_ptr<Scheduler> m_scheduler;                      ///< takes new submissions
    std::map<std::string, std::unique_ptr<Scheduler>> m_others;  ///< follow jobs of other backends
    SchedulerFactory m_factory;
    Outbox m_outbox;
    JobLogs m_logs;
    JobPolicy m_policy;
    std::size_t m_submitting = 0;
    std::map<std::string, std::pair<JobRecord, Tails>> m_unrecorded;  ///< by job id: ends a full disk refused
    std::function<void(const JobRecord&)> m_listener;
    std::function<void(const Store::AuditEntry&)> m_audit;
};

/// The scheduler to use: LOCAL_MODE=1 forces local; else SLURM when sbatch
/// is on PATH.
std::string detectBackend();

}  // namespace hpc::daemon
