#pragma once
/// Where jobs run (design: "jobs"): a Scheduler starts a job whose directory
/// already holds its script and wrapper, follows it, and reports every change
/// until the final one. Two implementations: SLURM (sbatch, one squeue per
/// monitor cycle) and local background processes (a process group each,
/// completion from ExitWatch).

#include "errors.hpp"
#include "exec.hpp"
#include "job_dir_io.hpp"
#include "job_store.hpp"
#include "process.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace hpc::daemon {

class ChildProcess;

struct SubmitOptions {
    std::vector<std::string> schedulerArgs;          ///< validated sbatch options
    std::vector<std::string> env;                    ///< "NAME=value"
    std::shared_ptr<const Confinement> confinement;  ///< local jobs: applied at spawn
};

class Scheduler {
public:
    /// A tracked job changed (state, times, exit); final states end tracking.
    using OnChange = std::function<void(const JobRecord& job)>;
    using Submitted = std::function<void(JobRecord job, std::optional<Error> error)>;

    virtual ~Scheduler() = default;
    virtual std::string_view name() const = 0;
    /// Starts `job` (state SUBMITTING, files written). `done` gets the record
    /// with its scheduler id and state, or the error; on success the job is
    /// tracked from then on.
    virtual void submit(JobRecord job, const SubmitOptions& options, Submitted done) = 0;
    /// Follows a live job found in the store after a restart.
    virtual void adopt(const JobRecord& job) = 0;
    /// Asks the job to end; the change to CANCELLED comes through OnChange.
    virtual void cancel(const JobRecord& job) = 0;
    virtual std::size_t tracked() const = 0;
    /// Where changes go, and the worker that reads job directories (exit
    /// status, pid) off the loop. Set once, before the first call.
    void attach(OnChange onChange, JobDirIo& io) {
        m_onChange = std::move(onChange);
        m_io = &io;
    }

protected:
    OnChange m_onChange;
    JobDirIo* m_io = nullptr;
};

/// Maps a SLURM state word ("CANCELLED by 1001", "OUT_OF_MEMORY",
/// "REQUEUED", …) to ours; nullopt for a word we do not know.
std::optional<JobState> mapSlurmState(std::string_view slurm);

/// Applies `sacct --noheader --parsable2 --allocations
/// --format=JobIDRaw,State,ExitCode,Start,End,Reason` output to `job` (by its
/// scheduler id): true when its row shows a final state.
bool applySacct(JobRecord& job, std::string_view output);
/// Applies `scontrol show job --oneliner` output to `job` when it shows a
/// final state; returns the mapped state (nullopt when unknown).
std::optional<JobState> applyScontrol(JobRecord& job, std::string_view output);

struct LocalConfig {
    std::chrono::milliseconds killGrace{std::chrono::seconds(10)};
    /// Under systemd: start each job through `systemd-run --user --scope`
    /// (this program), so the user manager accounts for, limits and can kill
    /// the whole tree as the unit hpc-job-<job id>.scope. Empty: no scope.
    std::string systemdRun;
};

class LocalScheduler final : public Scheduler {
public:
    LocalScheduler(boost::asio::io_context& ioc, LocalConfig config = {});
    ~LocalScheduler() override;
    std::string_view name() const override { return "local"; }
    void submit(JobRecord job, const SubmitOptions& options, Submitted done) override;
    void adopt(const JobRecord& job) override;
    void cancel(const JobRecord& job) override;
    std::size_t tracked() const override { return m_running.size() + m_adopting; }

    struct Running;

private:
    /// Follows a started or adopted job until it ends.
    void watch(JobRecord job, std::shared_ptr<ChildProcess> process);
    void ended(const std::string& jobId, std::optional<ExitStatus> status);
    /// Reads the exit status of an ended job (off the loop) and reports it.
    void settleEnded(JobRecord job, bool timedOut, std::optional<ExitStatus> status, int attempt);

    boost::asio::io_context& m_ioc;
    LocalConfig m_config;
    std::map<std::string, std::shared_ptr<Running>> m_running;
    std::size_t m_adopting = 0;  ///< jobs whose directory is being read
};

struct SlurmConfig {
    std::chrono::milliseconds minInterval{std::chrono::seconds(3)};
    std::chrono::milliseconds maxInterval{std::chrono::seconds(60)};
    std::chrono::milliseconds commandTimeout{std::chrono::seconds(30)};
};

class SlurmScheduler final : public Scheduler {
public:
    SlurmScheduler(boost::asio::io_context& ioc, SlurmConfig config = {});
    std::string_view name() const override { return "slurm"; }
    void submit(JobRecord job, const SubmitOptions& options, Submitted done) override;
    void adopt(const JobRecord& job) override;
    void cancel(const JobRecord& job) override;
    std::size_t tracked() const override { return m_jobs.size(); }

    /// Checks options meant for sbatch: only options (no script path or other
    /// positional word that sbatch would take as the script), none that the
    /// daemon sets itself or that would block. Throws Error(BadRequest).
    static void validateArgs(const std::vector<std::string>& args);

private:
    void runCommand(std::vector<std::string> argv, std::vector<std::string> env,
                    std::function<void(const ExecResult&)> done);
    /// Polls again after `delay` (the earlier of this and any poll already due).
    void schedulePoll(std::chrono::milliseconds delay);
    void poll();
    void pollDone(const ExecResult& r);
    void settle(const std::string& jobId);
    void settleFromScontrol(const std::string& jobId);
    void finishSettle(JobRecord job);

    boost::asio::io_context& m_ioc;
    SlurmConfig m_config;
    ExecService m_commands;
    boost::asio::steady_timer m_timer;
    std::chrono::steady_clock::time_point m_due{};
    std::chrono::milliseconds m_interval;
    bool m_polling = false;
    bool m_failing = false;
    std::optional<bool> m_accounting;         ///< does sacct work here (unknown until tried)
    std::map<std::string, JobRecord> m_jobs;  ///< by our job id
    std::set<std::string> m_settling;
    /// The jobs known when the squeue in flight started: a job submitted
    /// meanwhile is not in its answer and must not be taken for one that left.
    std::set<std::string> m_polled;
};

}  // namespace hpc::daemon
