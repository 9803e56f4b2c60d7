#pragma once
/// Jobs and their callbacks in the store (design: "jobs", "outbox").
///
/// A job row is written before anything is submitted and follows the job to
/// its final state. Reaching a final state and queueing its callback happen
/// in one SQLite transaction, so a crash can lose neither: the callback row
/// stays in the outbox until the platform acknowledges it.

#include "job_state.hpp"
#include "store.hpp"

#include <boost/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace hpc::daemon {

struct JobRecord {
    std::string jobId;
    std::string daemonId;
    std::string agentId;  ///< the submitter (the platform's agent.id)
    std::string backend;  ///< "slurm" or "local"
    std::string schedulerId;
    std::string name;
    JobState state = JobState::Submitting;
    std::string reason;
    std::optional<int> exitCode;
    std::optional<int> signal;
    std::string dir;  ///< <job_workdir>/.hpc-daemon/jobs/<job_id>
    std::string cwd;
    std::string context = "null";    ///< JSON: the submit's callback.context
    long long timeLimitSeconds = 0;  ///< 0: none
    long long pid = 0;               ///< local jobs
    long long pidStart = 0;          ///< its start time in clock ticks after boot
    bool cancelRequested = false;
    double submittedAt = 0;
    double startedAt = 0;
    double endedAt = 0;

    std::string stdoutPath() const { return dir + "/stdout"; }
    std::string stderrPath() const { return dir + "/stderr"; }
    std::string exitStatusPath() const { return dir + "/exit_status"; }
    /// Local jobs: the wrapper's pid, written by the wrapper itself first thing.
    std::string pidPath() const { return dir + "/pid"; }
    bool final() const { return isFinal(state); }
    /// For job.status, job.list and job.completed (no output tails).
    boost::json::object toJson() const;
};

struct Callback {
    std::int64_t seq = 0;
    std::string callbackId;
    std::string jobId;
    boost::json::object payload;
    int attempts = 0;
};

class JobStore {
public:
    explicit JobStore(Store& store) : m_store(store) {}

    void insert(const JobRecord& job);
    /// Writes every field of a job that has not reached a final state.
    void update(const JobRecord& job);
    /// Writes the job's final state and queues `callback` in one transaction.
    /// False (and nothing written) when the row was already final.
    bool finish(const JobRecord& job, const boost::json::object& callback, const std::string& callbackId);
    std::optional<JobRecord> get(const std::string& daemonId, const std::string& jobId);
    /// Jobs that have not reached a final state, oldest first.
    std::vector<JobRecord> live(const std::string& daemonId);
    /// The newest `limit` jobs, newest first; only `agentId`'s when not empty.
    std::vector<JobRecord> list(const std::string& daemonId, const std::string& agentId, int limit);

    /// Callbacks not yet acknowledged, oldest first.
    std::vector<Callback> pendingCallbacks(const std::string& daemonId);
    std::size_t pendingCallbackCount(const std::string& daemonId);
    void noteAttempt(const std::string& callbackId);
    /// The platform acknowledged it: gone for good.
    void acknowledge(const std::string& callbackId);

private:
    Store& m_store;
};

/// Logs a write the store refused: an error, or only a debug line when the
/// disk or quota is full (the store says that once; one line per job or
/// callback would flood the log while it lasts).
void logStoreFailure(const std::string& what, const std::exception& e);

}  // namespace hpc::daemon
