// Local background jobs: the wrapper in its own session (so a signal to the
// group reaches everything the script starts), a ChildProcess each (a pidfd,
// which also works for a job re-adopted after a daemon restart and no longer
// our child; SIGCHLD or a poll on kernels without pidfd_open). Jobs outlive
// the daemon on purpose: a restart must not kill them.

#include "scheduler.hpp"

#include "job_files.hpp"

#include "child_process.hpp"
#include "log.hpp"
#include "util.hpp"

#include <signal.h>
#include <sys/stat.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

namespace asio = boost::asio;

namespace hpc::daemon {
namespace {

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks
/// after boot. 0 when the process does not exist.
long long processStartTime(long long pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto close = stat.rfind(')');
    if (close == std::string::npos) return 0;
    std::istringstream fields(stat.substr(close + 2));
    std::string field;
    // After the name: state is field 3, so start time (22) is the 20th here.
    for (int i = 3; i <= 22 && fields >> field; ++i)
        if (i == 22) return std::stoll(field);
    return 0;
}

/// Whether process `pid` is running `wrapper` (its command line names it).
bool runsWrapper(long long pid, const std::string& wrapper) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return cmdline.find(wrapper + '\0') != std::string::npos;
}

/// A job whose pid never reached the store (the daemon was killed between
/// starting it and recording it): its wrapper wrote the pid. Fills in the
/// pid, and its start time when that process is still this job's wrapper.
/// False when the wrapper never ran.
bool recoverPid(JobRecord& job) {
    std::istringstream in(readJobFile(job.pidPath(), 64));
    long long pid = 0;
    struct stat st {};
    if (!(in >> pid) || pid <= 0 || ::stat(job.pidPath().c_str(), &st) != 0) return false;
    job.pid = pid;
    job.schedulerId = std::to_string(pid);
    job.state = JobState::Running;
    job.startedAt = static_cast<double>(st.st_mtim.tv_sec) + static_cast<double>(st.st_mtim.tv_nsec) / 1e9;
    if (runsWrapper(pid, job.dir + "/wrapper")) job.pidStart = processStartTime(pid);
    return true;
}

/// Under systemd: sends `sig` to every process in the job's scope, which
/// holds what left the job's process group (setsid, double forks). Through
/// `systemctl --user kill` (beside systemd-run), a child reaped from the loop.
void signalScope(asio::io_context& ioc, const std::string& systemdRun, const std::string& jobId, int sig) {
    std::filesystem::path systemctl = std::filesystem::path(systemdRun).parent_path() / "systemctl";
    SpawnOptions o;
    o.argv = {::access(systemctl.c_str(), X_OK) == 0 ? systemctl.string() : std::string("systemctl"),
              "--user",
              "kill",
              "--kill-whom=all",
              std::string("--signal=") + (sig == SIGKILL ? "SIGKILL" : "SIGTERM"),
              "hpc-job-" + jobId + ".scope"};
    o.out = Stdio::Null;
    o.err = Stdio::Null;
    try {
        ChildProcess::start(
            ioc, std::move(o), "systemctl for job " + jobId,
            [jobId](std::optional<ExitStatus> status) {
                if (status && status->code.value_or(1) != 0)
                    log::debug("systemctl --user kill of hpc-job-" + jobId + ".scope failed (the scope may be gone)");
            },
            ChildProcess::ProgramOf::Daemon);
    } catch (const Error& e) {
        log::warning("cannot signal the scope of job " + jobId + ": " + e.what());
    }
}

}  // namespace

struct LocalScheduler::Running {
    Running(asio::io_context& ioc) : deadline(ioc) {}
    JobRecord job;
    std::shared_ptr<ChildProcess> process;
    asio::steady_timer deadline;
    bool timedOut = false;
};

LocalScheduler::LocalScheduler(asio::io_context& ioc, LocalConfig config) : m_ioc(ioc), m_config(std::move(config)) {}

LocalScheduler::~LocalScheduler() {
    // Jobs keep running; the next daemon re-adopts them.
    for (auto& [id, r] : m_running) r->process->release();
}

void LocalScheduler::submit(JobRecord job, const SubmitOptions& options, Submitted done) {
    SpawnOptions o;
    o.argv = {defaultShell(), job.dir + "/wrapper"};
    o.envOverrides = options.env;
    // Inside the scope: systemd-run runs first, outside the confinement.
    // Without a scope, a subreaper ends what the job leaves behind.
    if (options.confinement)
        options.confinement->apply(
            o, {job.dir}, m_config.systemdRun.empty() ? Confinement::Reap::Descendants : Confinement::Reap::No);
    if (!m_config.systemdRun.empty()) {
        // The scope takes over this very process (same pid), then runs the wrapper.
        std::vector<std::string> run = {m_config.systemdRun, "--user",    "--scope",
                                        "--quiet",           "--collect", "--unit=hpc-job-" + job.jobId};
        // Per-job limits on the scope, from the unit's environment file
        // (hpc-daemonctl writes them from HPC_JOB_MEMORY_MAX/HPC_JOB_TASKS_MAX).
        for (auto [variable, property] :
             {std::pair{"HPC_JOB_MEMORY_MAX", "MemoryMax"}, std::pair{"HPC_JOB_TASKS_MAX", "TasksMax"}})
            if (const char* value = std::getenv(variable); value && *value)
                run.insert(run.end(), {"--property", std::string(property) + "=" + value});
        run.push_back("--");
        o.argv.insert(o.argv.begin(), run.begin(), run.end());
    }
    o.cwd = job.cwd;
    o.out = Stdio::Null;
    o.err = Stdio::Null;
    std::shared_ptr<ChildProcess> process;
    try {
        process = ChildProcess::start(
            m_ioc, std::move(o), "job " + job.jobId,
            [this, id = job.jobId](std::optional<ExitStatus> status) { ended(id, status); },
            ChildProcess::ProgramOf::Daemon);
    } catch (const Error& e) {
        done(std::move(job), e);
        return;
    }
    job.pid = process->pid();
    job.pidStart = processStartTime(process->pid());
    job.schedulerId = std::to_string(process->pid());
    job.state = JobState::Running;
    job.startedAt = nowEpochSeconds();
    watch(job, std::move(process));
    done(std::move(job), std::nullopt);
}

namespace {

/// What a restarted daemon finds of a job it had started (read off the loop).
struct Found {
    JobRecord job;
    bool recovered = false;  ///< the pid came from the job's pid file
    bool running = false;    ///< else `job` is settled
};

Found findJob(JobRecord job) {
    Found f;
    f.recovered = job.pid <= 0 && recoverPid(job);
    f.running = job.pid > 0 && job.pidStart != 0 && processStartTime(job.pid) == job.pidStart;
    if (!f.running) {
        // It ended while no daemon was watching (or never started).
        job.endedAt = nowEpochSeconds();
        settleFromExitFile(job, job.pid > 0 ? "it ended while the daemon was down and left no exit status"
                                            : "the daemon stopped before the job started");
    }
    f.job = std::move(job);
    return f;
}

}  // namespace

void LocalScheduler::adopt(const JobRecord& recorded) {
    ++m_adopting;
    m_io->run<Found>(
        "reading the directory of job " + recorded.jobId, [recorded] { return findJob(recorded); },
        [this, recorded](std::optional<Found> found, const std::string& error) {
            --m_adopting;
            if (!found) {
                // Unknown for now: the job stays live in the store, and the next start looks again.
                log::warning("job " + recorded.jobId + " is not followed: " + error);
                return;
            }
            if (found->running) {
                log::info("job " + recorded.jobId + " (pid " + std::to_string(found->job.pid) +
                          ") is still running: following it again");
                auto process = ChildProcess::follow(
                    m_ioc, static_cast<pid_t>(found->job.pid), "job " + recorded.jobId,
                    [this, id = recorded.jobId](std::optional<ExitStatus> status) { ended(id, status); });
                watch(found->job, std::move(process));
                if (!found->recovered) return;  // else the store learns the pid it missed
            }
            if (m_onChange) m_onChange(found->job);
        });
}

void LocalScheduler::watch(JobRecord job, std::shared_ptr<ChildProcess> process) {
    auto r = std::make_shared<Running>(m_ioc);
    r->job = std::move(job);
    std::string id = r->job.jobId;
    if (!m_config.systemdRun.empty())
        process->alsoSignal(
            [&ioc = m_ioc, systemdRun = m_config.systemdRun, id](int sig) { signalScope(ioc, systemdRun, id, sig); });
    r->process = std::move(process);
    m_running[id] = r;
    if (r->job.timeLimitSeconds > 0) {
        double left = r->job.startedAt + static_cast<double>(r->job.timeLimitSeconds) - nowEpochSeconds();
        r->deadline.expires_after(std::chrono::milliseconds(static_cast<long long>(std::max(0.0, left) * 1000)));
        r->deadline.async_wait([this, id](boost::system::error_code ec) {
            auto it = m_running.find(id);
            if (ec || it == m_running.end()) return;
            log::info("job " + id + " reached its time limit: stopping it");
            it->second->timedOut = true;
            cancel(it->second->job);
        });
    }
}

void LocalScheduler::cancel(const JobRecord& job) {
    auto it = m_running.find(job.jobId);
    if (it == m_running.end()) return;
    auto r = it->second;
    if (job.cancelRequested) r->job.cancelRequested = true;
    r->process->terminate(m_config.killGrace);
}

void LocalScheduler::ended(const std::string& jobId, std::optional<ExitStatus> status) {
    auto it = m_running.find(jobId);
    if (it == m_running.end()) return;
    auto r = it->second;
    m_running.erase(it);
    r->deadline.cancel();
    // Processes the script left in its group (and, under systemd, in its
    // scope) go with it.
    r->process->kill();
    JobRecord job = r->job;
    job.endedAt = nowEpochSeconds();
    ++m_adopting;  // still ours until the exit status is read
    settleEnded(std::move(job), r->timedOut, status, 1);
}

void LocalScheduler::settleEnded(JobRecord job, bool timedOut, std::optional<ExitStatus> status, int attempt) {
    using Settled = std::pair<JobRecord, bool>;
    m_io->run<Settled>(
        "reading the exit status of job " + job.jobId,
        [job]() mutable {
            bool hadFile = settleFromExitFile(job, "it ended without writing its exit status");
            return Settled{std::move(job), hadFile};
        },
        [this, job, timedOut, status, attempt](std::optional<Settled> settled, const std::string& error) {
            // A job directory that does not answer is asked again (an NFS
            // server that comes back), up to a bound; then the job is FAILED.
            constexpr int kAttempts = 5;
            if (!settled && attempt < kAttempts) return settleEnded(job, timedOut, status, attempt + 1);
            --m_adopting;
            JobRecord final = job;
            bool hadFile = settled && settled->second;
            if (settled) {
                final = std::move(settled->first);
            } else {
                final.state = job.cancelRequested ? JobState::Cancelled : JobState::Failed;
                final.reason = error;
            }
            if (timedOut) {
                final.state = JobState::Timeout;
                final.reason = "time limit of " + std::to_string(final.timeLimitSeconds) + " s reached";
            } else if (!hadFile && status && status->signal && !final.cancelRequested) {
                final.signal = status->signal;
                final.reason = "killed by signal " + std::to_string(*status->signal);
            }
            if (m_onChange) m_onChange(final);
        });
}

}  // namespace hpc::daemon
