// SLURM: sbatch --parsable to submit; a monitor that makes ONE squeue call per
// cycle for every job this daemon follows, at an interval that is short after
// a change and grows while nothing changes; a job that has left the queue (or
// shows a final state) is settled from sacct when accounting exists, else
// scontrol, else the exit-status file. A failing or hanging Slurm command
// changes nothing: jobs keep their last known state and the poll backs off.

#include "scheduler.hpp"

#include "job_files.hpp"

#include "log.hpp"
#include "util.hpp"

#include <sys/wait.h>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <sstream>

namespace asio = boost::asio;

namespace hpc::daemon {
namespace {

std::string trim(std::string_view s) {
    auto b = s.find_first_not_of(" \t\r\n");
    if (b == std::string_view::npos) return {};
    auto e = s.find_last_not_of(" \t\r\n");
    return std::string(s.substr(b, e - b + 1));
}

std::vector<std::string> splitOn(std::string_view s, char sep) {
    std::vector<std::string> out;
    std::size_t start = 0;
    for (;;) {
        auto pos = s.find(sep, start);
        out.emplace_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
        if (pos == std::string_view::npos) return out;
        start = pos + 1;
    }
}

/// "3:0" → exit 3, signal 0.
void applyExitCode(JobRecord& job, std::string_view text) {
    auto parts = splitOn(trim(text), ':');
    if (parts.size() != 2) return;
    try {
        int code = std::stoi(parts[0]), sig = std::stoi(parts[1]);
        job.exitCode = code;
        job.signal = sig ? std::optional<int>(sig) : std::nullopt;
        if (sig) job.exitCode.reset();
    } catch (const std::exception&) {
    }
}

/// Slurm's "2026-11-29T23:58:09" (local time) → epoch seconds; 0 for
/// "Unknown", "None" and the like.
double parseSlurmTime(std::string_view text) {
    std::tm tm{};
    std::string s = trim(text);
    if (s.size() < 19 || ::strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm) == nullptr) return 0;
    tm.tm_isdst = -1;
    return static_cast<double>(std::mktime(&tm));
}

/// An ended job's times: no start time when it never ran; an end time the
/// scheduler does not know is now.
void applyTimes(JobRecord& job, std::string_view start, std::string_view end) {
    if (double t = parseSlurmTime(start); t > 0) job.startedAt = t;
    job.endedAt = parseSlurmTime(end);
    if (job.endedAt == 0) job.endedAt = nowEpochSeconds();
}

/// `scontrol show job -o` prints one line of Key=Value words.
std::map<std::string, std::string> parseScontrol(std::string_view line) {
    std::map<std::string, std::string> out;
    std::istringstream words{std::string(line)};
    std::string word;
    while (words >> word) {
        auto eq = word.find('=');
        if (eq != std::string::npos) out.emplace(word.substr(0, eq), word.substr(eq + 1));
    }
    return out;
}

bool isValueOption(std::string_view shortOpt) {
    // sbatch's short options that take a value as the next word.
    static const std::string withValue = "AbcCdFGJLMmnNpqStwx";
    return shortOpt.size() == 2 && shortOpt[0] == '-' && withValue.find(shortOpt[1]) != std::string::npos;
}

std::string commentFor(const std::string& jobId) { return "hpc-daemon:" + jobId; }

/// squeue's columns: each ends with "|" (the field's suffix).
constexpr const char* kSqueueFormat = "JobID:|,State:|,Reason:|,exit_code:|,StartTime:|,EndTime:|";

/// How many jobs that left the queue are looked up at once.
constexpr std::size_t kMaxSettling = 8;

/// squeue's exit_code is the raw wait status of the batch script.
void applyWaitStatus(JobRecord& job, std::string_view text) {
    try {
        int status = std::stoi(trim(text));
        if (WIFSIGNALED(status)) {
            job.signal = WTERMSIG(status);
            job.exitCode.reset();
        } else {
            job.exitCode = WEXITSTATUS(status);
            job.signal.reset();
        }
    } catch (const std::exception&) {
    }
}

}  // namespace

std::optional<JobState> mapSlurmState(std::string_view slurm) {
    std::string s = trim(slurm);
    if (auto space = s.find(' '); space != std::string::npos) s.resize(space);  // "CANCELLED by 1001"
    if (auto plus = s.find('+'); plus != std::string::npos) s.resize(plus);     // "CANCELLED+"
    // Slurm's words that are not ours; every word of ours (but SUBMITTING) is also Slurm's.
    static const std::map<std::string_view, JobState> kSlurmOnly = {
        {"CONFIGURING", JobState::Pending}, {"REQUEUED", JobState::Pending},      {"REQUEUE_HOLD", JobState::Pending},
        {"REQUEUE_FED", JobState::Pending}, {"RESV_DEL_HOLD", JobState::Pending}, {"COMPLETING", JobState::Running},
        {"SIGNALING", JobState::Running},   {"STAGE_OUT", JobState::Running},     {"RESIZING", JobState::Running},
        {"STOPPED", JobState::Suspended},   {"BOOT_FAIL", JobState::NodeFail},    {"DEADLINE", JobState::Timeout},
        {"SPECIAL_EXIT", JobState::Failed}, {"REVOKED", JobState::Cancelled},
    };
    if (auto it = kSlurmOnly.find(s); it != kSlurmOnly.end()) return it->second;
    auto ours = jobStateFromWireName(s);
    if (ours == JobState::Submitting) return std::nullopt;
    return ours;
}

bool applySacct(JobRecord& job, std::string_view output) {
    std::istringstream lines{std::string(output)};
    for (std::string line; std::getline(lines, line);) {
        auto f = splitOn(line, '|');
        if (f.size() < 6 || trim(f[0]) != job.schedulerId) continue;
        auto state = mapSlurmState(f[1]);
        if (!state || !isFinal(*state)) return false;
        job.state = *state;
        applyExitCode(job, f[2]);
        applyTimes(job, f[3], f[4]);
        // "CANCELLED by 1001" says who; otherwise Slurm's reason.
        job.reason = trim(f[1]) != toWireName(*state) ? trim(f[1]) : (trim(f[5]) == "None" ? "" : trim(f[5]));
        return true;
    }
    return false;
}

std::optional<JobState> applyScontrol(JobRecord& job, std::string_view output) {
    auto fields = parseScontrol(output);
    auto state = mapSlurmState(fields["JobState"]);
    if (!state || !isFinal(*state)) return state;
    job.state = *state;
    applyExitCode(job, fields["ExitCode"]);
    applyTimes(job, fields["StartTime"], fields["EndTime"]);
    job.reason = fields["Reason"] == "None" ? "" : fields["Reason"];
    return state;
}

void SlurmScheduler::validateArgs(const std::vector<std::string>& args) {
    static const std::vector<std::string> refused = {"--output",  "--error", "--chdir",     "--parsable", "--wrap",
                                                     "--array",   "--wait",  "--test-only", "--usage",    "--help",
                                                     "--version", "--input", "--comment"};
    static const std::string refusedShort = "oeDaWihVu";
    if (args.size() > 64) throw Error(ErrorCode::BadRequest, "at most 64 sbatch arguments");
    bool valueNext = false;
    for (const auto& a : args) {
        if (a.size() > 4096 || a.find('\0') != std::string::npos || a.find('\n') != std::string::npos)
            throw Error(ErrorCode::BadRequest, "an sbatch argument is too long or contains a NUL or newline");
        if (valueNext) {
            valueNext = false;
            continue;
        }
        if (a.rfind("--", 0) == 0 && a.size() > 2) {
            std::string name = a.substr(0, a.find('='));
            if (std::find(refused.begin(), refused.end(), name) != refused.end())
                throw Error(ErrorCode::BadRequest,
                            "sbatch option " + name + " is set by the daemon and cannot be given");
            continue;
        }
        if (a.size() >= 2 && a[0] == '-' && a[1] != '-') {
            if (refusedShort.find(a[1]) != std::string::npos)
                throw Error(ErrorCode::BadRequest,
                            "sbatch option " + a.substr(0, 2) + " is set by the daemon and cannot be given");
            valueNext = isValueOption(a);
            continue;
        }
        throw Error(ErrorCode::BadRequest, "sbatch argument \"" + a +
                                               "\" is not an option (write long options as --name=value; a script "
                                               "path or other word would replace the job's script)");
    }
    if (valueNext) throw Error(ErrorCode::BadRequest, "sbatch option " + args.back() + " needs a value");
}

SlurmScheduler::SlurmScheduler(asio::io_context& ioc, SlurmConfig config)
    : m_ioc(ioc), m_config(config), m_commands(ioc), m_timer(ioc), m_interval(config.minInterval) {}

void SlurmScheduler::runCommand(std::vector<std::string> argv, std::vector<std::string> env,
                                std::function<void(const ExecResult&)> done) {
    ExecRequest req;
    req.argv = std::move(argv);
    req.cwd = "/";
    req.env = std::move(env);
    req.timeout = m_config.commandTimeout;
    req.maxOutputBytes = std::size_t{16} * 1024 * 1024;
    auto callback = std::make_shared<std::function<void(const ExecResult&)>>(std::move(done));
    try {
        m_commands.start(std::move(req), [callback](const ExecResult& r) { (*callback)(r); });
    } catch (const Error& e) {
        // Not started (too many running, or the program is missing): a failure like any other.
        ExecResult r;
        r.exitCode = 127;
        r.err = e.what();
        asio::post(m_ioc, [callback, r] { (*callback)(r); });
    }
}

void SlurmScheduler::submit(JobRecord job, const SubmitOptions& options, Submitted done) {
    // The comment names our job id, so a daemon killed before sbatch answered
    // can find the job after a restart instead of submitting it again.
    std::vector<std::string> argv = {"sbatch",
                                     "--parsable",
                                     "--chdir=" + job.cwd,
                                     "--output=" + job.stdoutPath(),
                                     "--error=" + job.stderrPath(),
                                     "--comment=" + commentFor(job.jobId)};
    if (!job.name.empty()) argv.push_back("--job-name=" + job.name);
    if (job.timeLimitSeconds > 0) argv.push_back("--time=" + std::to_string((job.timeLimitSeconds + 59) / 60));
    // The agent's options go after ours; validateArgs refused any that
    // would override these.
    argv.insert(argv.end(), options.schedulerArgs.begin(), options.schedulerArgs.end());
    argv.push_back(job.dir + "/wrapper");
    runCommand(argv, options.env, [this, job = std::move(job), done = std::move(done)](const ExecResult& r) mutable {
        std::string out = trim(r.out);
        if (r.timedOut) {
            // It may have been submitted all the same: resolved by its
            // comment like a submission cut short by a restart, and the
            // callback tells how it ended either way.
            log::warning("sbatch did not answer in time for job " + job.jobId + ": looking for it in the queue");
            adopt(job);
            done(std::move(job), std::nullopt);
            return;
        }
        if (r.exitCode != 0 || out.empty()) {
            std::string message = trim(r.err);
            if (message.empty()) message = "sbatch failed";
            done(std::move(job), Error(ErrorCode::BadRequest, "the scheduler refused the job: " + message));
            return;
        }
        job.schedulerId = out.substr(0, out.find(';'));
        job.state = JobState::Pending;
        m_jobs[job.jobId] = job;
        m_interval = m_config.minInterval;
        schedulePoll(m_config.minInterval);
        done(std::move(job), std::nullopt);
    });
}

void SlurmScheduler::adopt(const JobRecord& job) {
    if (!job.schedulerId.empty()) {
        m_jobs[job.jobId] = job;
        schedulePoll(std::chrono::milliseconds(0));
        return;
    }
    // Killed between writing the row and sbatch answering: the job may have
    // been submitted. Look for it by its comment; never submit it again.
    runCommand({"squeue", "--me", "--noheader", "--states=all", "--format=%i|%k"}, {},
               [this, job](const ExecResult& r) {
                   if (r.exitCode != 0) {
                       log::warning("cannot ask squeue about job " + job.jobId +
                                    " (its submission was not "
                                    "confirmed): " +
                                    trim(r.err) + "; asking again later");
                       auto retry = std::make_shared<asio::steady_timer>(m_ioc, m_config.maxInterval);
                       retry->async_wait([this, job, retry](boost::system::error_code ec) {
                           if (!ec) adopt(job);
                       });
                       return;
                   }
                   std::istringstream lines(r.out);
                   for (std::string line; std::getline(lines, line);) {
                       auto f = splitOn(line, '|');
                       if (f.size() >= 2 && trim(f[1]) == commentFor(job.jobId)) {
                           JobRecord found = job;
                           found.schedulerId = trim(f[0]);
                           found.state = JobState::Pending;
                           log::info("job " + job.jobId +
                                     " whose submission was not confirmed is in the queue: "
                                     "SLURM job " +
                                     found.schedulerId);
                           m_jobs[found.jobId] = found;
                           if (m_onChange) m_onChange(found);
                           schedulePoll(std::chrono::milliseconds(0));
                           return;
                       }
                   }
                   JobRecord settled = job;
                   settled.endedAt = nowEpochSeconds();
                   settled.state = JobState::Failed;
                   settled.reason =
                       "its submission was cut short (daemon restart or sbatch timeout) and SLURM has no such job";
                   if (m_onChange) m_onChange(settled);
               });
}

void SlurmScheduler::cancel(const JobRecord& job) {
    auto it = m_jobs.find(job.jobId);
    if (it == m_jobs.end()) return;
    it->second.cancelRequested = true;
    runCommand({"scancel", it->second.schedulerId}, {}, [this, id = job.jobId](const ExecResult& r) {
        if (r.exitCode != 0) log::warning("scancel for job " + id + " failed: " + trim(r.err));
        m_interval = m_config.minInterval;
        schedulePoll(std::chrono::milliseconds(200));
    });
}

void SlurmScheduler::schedulePoll(std::chrono::milliseconds delay) {
    auto due = std::chrono::steady_clock::now() + delay;
    if (m_polling) return;  // pollDone schedules the next one
    if (m_due != std::chrono::steady_clock::time_point{} && m_due <= due) return;
    m_due = due;
    m_timer.expires_at(due);
    m_timer.async_wait([this](boost::system::error_code ec) {
        if (ec) return;
        m_due = {};
        poll();
    });
}

void SlurmScheduler::poll() {
    if (m_jobs.empty() || m_polling) return;
    m_polling = true;
    m_polled.clear();
    for (const auto& [id, job] : m_jobs) m_polled.insert(id);
    log::debug("monitor cycle: " + std::to_string(m_jobs.size()) + " jobs");
    // One call for all of this daemon's jobs: --states=all keeps jobs that
    // just ended (for MinJobAge) in the answer with their final state, exit
    // status and times, so most jobs are settled from this call alone.
    runCommand({"squeue", "--me", "--noheader", "--states=all", std::string("--Format=") + kSqueueFormat}, {},
               [this](const ExecResult& r) { pollDone(r); });
}

void SlurmScheduler::pollDone(const ExecResult& r) {
    m_polling = false;
    if (r.exitCode != 0) {
        if (!m_failing)
            log::warning("squeue failed (" + (r.timedOut ? std::string("no answer") : trim(r.err)) +
                         "): jobs keep their last known state; retrying");
        m_failing = true;
        m_interval = std::min(m_config.maxInterval, m_interval * 2);
        schedulePoll(m_interval);
        return;
    }
    if (m_failing) log::notice("squeue answers again");
    m_failing = false;
    struct Row {
        std::string state, reason, exitStatus, start, end;
    };
    std::map<std::string, Row> queue;  // by SLURM job id
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
        auto f = splitOn(line, '|');
        if (f.size() >= 6) queue[trim(f[0])] = Row{trim(f[1]), trim(f[2]), trim(f[3]), trim(f[4]), trim(f[5])};
    }
    bool changed = false;
    std::vector<std::string> ended, missing;
    for (auto& [id, job] : m_jobs) {
        if (m_settling.count(id)) continue;
        auto q = queue.find(job.schedulerId);
        if (q == queue.end()) {
            // Submitted while this squeue ran: the next one shows it.
            if (!m_polled.count(id)) {
                changed = true;
                continue;
            }
            missing.push_back(id);
            continue;
        }
        const Row& row = q->second;
        auto state = mapSlurmState(row.state);
        std::string reason = row.reason == "None" ? "" : row.reason;
        if (state && isFinal(*state)) {
            job.state = *state;
            job.reason = reason;
            applyWaitStatus(job, row.exitStatus);
            applyTimes(job, row.start, row.end);
            ended.push_back(id);
        } else if (state && (*state != job.state || reason != job.reason)) {
            log::info("job " + id + " (slurm " + job.schedulerId + "): " + std::string(toWireName(job.state)) + " → " +
                      std::string(toWireName(*state)) + (reason.empty() ? "" : " (" + reason + ")"));
            job.state = *state;
            job.reason = reason;
            if (*state == JobState::Running && job.startedAt == 0) job.startedAt = nowEpochSeconds();
            changed = true;
            if (m_onChange) m_onChange(job);
        }
    }
    for (const auto& id : ended) finishSettle(m_jobs.at(id));
    // Jobs the queue no longer shows: asked about one by one, a few at a time.
    for (const auto& id : missing) {
        if (m_settling.size() >= kMaxSettling) break;
        settle(id);
    }
    m_interval = changed || !ended.empty() || !missing.empty() ? m_config.minInterval
                                                               : std::min(m_config.maxInterval, m_interval * 3 / 2);
    schedulePoll(m_interval);
}

void SlurmScheduler::settle(const std::string& jobId) {
    auto it = m_jobs.find(jobId);
    if (it == m_jobs.end()) return;
    m_settling.insert(jobId);
    if (m_accounting == false) {
        settleFromScontrol(jobId);
        return;
    }
    runCommand({"sacct", "--noheader", "--parsable2", "--allocations", "--jobs=" + it->second.schedulerId,
                "--format=JobIDRaw,State,ExitCode,Start,End,Reason"},
               {}, [this, jobId](const ExecResult& r) {
                   auto it = m_jobs.find(jobId);
                   if (it == m_jobs.end()) return;
                   if (r.exitCode != 0) {
                       if (r.err.find("accounting storage is disabled") != std::string::npos) {
                           if (!m_accounting) log::info("no Slurm accounting here: settling jobs from scontrol");
                           m_accounting = false;
                       }
                       settleFromScontrol(jobId);
                       return;
                   }
                   m_accounting = true;
                   JobRecord job = it->second;
                   if (applySacct(job, r.out))
                       finishSettle(std::move(job));
                   else
                       settleFromScontrol(jobId);  // not (yet) final in the database
               });
}

void SlurmScheduler::settleFromScontrol(const std::string& jobId) {
    auto it = m_jobs.find(jobId);
    if (it == m_jobs.end()) return;
    runCommand(
        {"scontrol", "show", "job", "--oneliner", it->second.schedulerId}, {}, [this, jobId](const ExecResult& r) {
            auto it = m_jobs.find(jobId);
            if (it == m_jobs.end()) return;
            JobRecord job = it->second;
            if (r.exitCode != 0) {
                if (r.err.find("Invalid job id") == std::string::npos) {
                    // The controller did not answer: nothing is known, try again later.
                    m_settling.erase(jobId);
                    return;
                }
                job.endedAt = nowEpochSeconds();
                m_io->run<JobRecord>(
                    "reading the exit status of job " + jobId,
                    [job]() mutable {
                        settleFromExitFile(job, "the scheduler no longer knows the job and it left no exit status");
                        return job;
                    },
                    [this, jobId](std::optional<JobRecord> settled, const std::string&) {
                        if (!settled || !m_jobs.contains(jobId)) {
                            m_settling.erase(jobId);  // the next cycle tries again
                            return;
                        }
                        log::info("job " + jobId + " (slurm " + settled->schedulerId +
                                  ") is forgotten by the scheduler: settled from its exit-status file as " +
                                  std::string(toWireName(settled->state)));
                        finishSettle(std::move(*settled));
                    });
                return;
            }
            auto state = applyScontrol(job, r.out);
            if (!state || !isFinal(*state)) {
                // Still live (requeued, or squeue raced with it): follow it.
                m_settling.erase(jobId);
                if (state && *state != it->second.state) {
                    it->second.state = *state;
                    if (m_onChange) m_onChange(it->second);
                }
                return;
            }
            finishSettle(std::move(job));
        });
}

void SlurmScheduler::finishSettle(JobRecord job) {
    m_settling.erase(job.jobId);
    m_jobs.erase(job.jobId);
    log::info("job " + job.jobId + " (slurm " + job.schedulerId + ") ended: " + std::string(toWireName(job.state)) +
              (job.exitCode ? " exit " + std::to_string(*job.exitCode) : "") +
              (job.signal ? " signal " + std::to_string(*job.signal) : ""));
    if (m_onChange) m_onChange(job);
}

}  // namespace hpc::daemon
