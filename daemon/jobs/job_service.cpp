#include "job_service.hpp"

#include "job_files.hpp"
#include "log.hpp"
#include "scheduler_choice.hpp"
#include "sqlite.hpp"
#include "util.hpp"
#include "wire.hpp"

#include <cerrno>
#include <cstdlib>
#include <system_error>
#include <tuple>
#include <utility>

namespace json = boost::json;
namespace fs = std::filesystem;

namespace hpc::daemon {
namespace {

/// The output's tails in a reply or callback, and why they are missing when
/// the job directory did not answer.
void putTails(json::object& o, const JobService::Tails& tails) {
    protocol::putBytes(o, "stdout_tail", tails.out);
    protocol::putBytes(o, "stderr_tail", tails.err);
    if (!tails.error.empty()) o["tail_error"] = tails.error;
}

}  // namespace

std::string detectBackend() { return chooseScheduler().backend; }

JobService::JobService(boost::asio::io_context& ioc, Store& store, std::string daemonId,
                       std::unique_ptr<Scheduler> scheduler, Outbox::Send send, std::chrono::milliseconds ioTimeout)
    : m_io(ioc, ioTimeout),
      m_store(store),
      m_jobs(store),
      m_daemonId(std::move(daemonId)),
      m_scheduler(std::move(scheduler)),
      m_outbox(ioc, m_jobs, m_daemonId, send),
      m_logs(ioc, m_io, m_jobs, m_daemonId, std::move(send)) {
    m_scheduler->attach([this](const JobRecord& job) { onChange(job); }, m_io);
}

Scheduler* JobService::schedulerFor(const std::string& backend) {
    if (backend == m_scheduler->name()) return m_scheduler.get();
    if (auto it = m_others.find(backend); it != m_others.end()) return it->second.get();
    auto made = m_factory ? m_factory(backend) : nullptr;
    if (!made) return nullptr;
    made->attach([this](const JobRecord& job) { onChange(job); }, m_io);
    return m_others.emplace(backend, std::move(made)).first->second.get();
}

std::size_t JobService::active() const {
    std::size_t n = m_scheduler->tracked() + m_submitting;
    for (const auto& [name, s] : m_others) n += s->tracked();
    return n;
}

void JobService::adoptLive() {
    for (const auto& job : m_jobs.live(m_daemonId)) {
        Scheduler* s = schedulerFor(job.backend);
        if (!s) {
            log::warning("job " + job.jobId + " was submitted to " + job.backend + " but this daemon uses " +
                         std::string(m_scheduler->name()) + " and cannot follow " + job.backend +
                         " jobs here: it is left as it is");
            continue;
        }
        if (s != m_scheduler.get())
            log::info("job " + job.jobId + " was submitted to " + job.backend + ": followed to its end by " +
                      job.backend + " although new jobs go to " + std::string(m_scheduler->name()));
        s->adopt(job);
    }
}

bool JobService::handle(const protocol::Envelope& env, const std::string& agentId, const Reply& reply) {
    if (env.type == "job.submit") {
        submit(env, agentId, reply);
    } else if (env.type == "job.status") {
        JobRecord job = owned(env.payload, agentId);
        std::size_t tail = static_cast<std::size_t>(
            protocol::optInt(env.payload, "tail_bytes", 0, 1 << 20).value_or(static_cast<std::int64_t>(kTailBytes)));
        readTails(job, tail, [id = env.id, reply, job](const Tails& tails) {
            json::object o = job.toJson();
            putTails(o, tails);
            reply(protocol::makeOk(id, std::move(o)));
        });
    } else if (env.type == "job.cancel") {
        JobRecord job = owned(env.payload, agentId);
        if (!job.final() && !job.cancelRequested) {
            job.cancelRequested = true;
            try {
                m_jobs.update(job);
            } catch (const std::exception& e) {
                // A full disk does not keep running a job its agent stopped:
                // the scheduler still ends it, and its end is recorded once
                // there is room.
                if (!sqlite::isDiskFull(e)) throw;
                logStoreFailure("cannot record the cancel of job " + job.jobId, e);
            }
            log::info("job " + job.jobId + " cancelled by " + agentId);
            if (Scheduler* s = schedulerFor(job.backend)) s->cancel(job);
        }
        reply(protocol::makeOk(env.id,
                               {{"job_id", job.jobId}, {"state", toWireName(job.state)}, {"cancel_requested", true}}));
    } else if (env.type == "job.logs") {
        m_logs.open(owned(env.payload, agentId), env.payload, env.id, agentId, reply);
    } else if (env.type == "job.logs.close") {
        auto channel = protocol::optInt(env.payload, "channel", 1, UINT32_MAX);
        if (!channel) throw Error(ErrorCode::BadRequest, "\"channel\" is required");
        m_logs.close(static_cast<std::uint32_t>(*channel), agentId);
        reply(protocol::makeOk(env.id));
    } else if (env.type == "job.list") {
        int limit = static_cast<int>(protocol::optInt(env.payload, "limit", 1, 10000).value_or(100));
        json::array jobs;
        for (const auto& j : m_jobs.list(m_daemonId, agentId, limit)) jobs.push_back(j.toJson());
        reply(protocol::makeOk(env.id, {{"jobs", std::move(jobs)}, {"backend", m_scheduler->name()}}));
    } else {
        return false;
    }
    return true;
}

JobRecord JobService::owned(const json::object& payload, const std::string& agentId) {
    auto id = protocol::optString(payload, "job_id", 64);
    if (!id || id->empty()) throw Error(ErrorCode::BadRequest, "\"job_id\" is required");
    auto job = m_jobs.get(m_daemonId, *id);
    if (!job) throw Error(ErrorCode::NotFound, "no job " + *id + " on this daemon");
    if (job->agentId != agentId) throw Error(ErrorCode::NotOwner, "job " + *id + " was submitted by another agent");
    return *job;
}

void JobService::submit(const protocol::Envelope& env, const std::string& agentId, const Reply& reply) {
    JobSpec spec = JobSpec::fromPayload(env.payload);
    JobRecord job;
    job.name = spec.name.value_or("");
    job.cwd = m_policy.dirs.resolveCwd(spec.cwd, m_policy.jobWorkdir).string();
    SubmitOptions options;
    options.confinement = m_policy.confinement;
    options.env = protocol::envEntries(spec.env);
    options.schedulerArgs = std::move(spec.sbatchArgs);
    if (!options.schedulerArgs.empty() && m_scheduler->name() != "slurm")
        throw Error(ErrorCode::BadRequest, "\"sbatch_args\" need the SLURM backend; this daemon runs jobs locally");
    SlurmScheduler::validateArgs(options.schedulerArgs);
    if (spec.timeLimitSeconds) job.timeLimitSeconds = static_cast<long long>(*spec.timeLimitSeconds);
    if (spec.context) job.context = json::serialize(*spec.context);
    // The job's own directory must be writable for the job: inside the allowed dirs.
    fs::path root = m_policy.jobWorkdir / ".hpc-daemon" / "jobs";
    if (!m_policy.dirs.unrestricted() && !m_policy.dirs.allows(m_policy.jobWorkdir))
        throw Error(ErrorCode::PathNotAllowed, "the job directory " + m_policy.jobWorkdir.string() +
                                                   " is outside the allowed directories (" + m_policy.dirs.describe() +
                                                   "); run hpc-daemonctl setup --job-dir");

    job.jobId = "j" + randomHex(8);
    job.daemonId = m_daemonId;
    job.agentId = agentId;
    job.backend = std::string(m_scheduler->name());
    job.dir = (root / job.jobId).string();
    job.submittedAt = nowEpochSeconds();
    constexpr std::size_t kAuditScriptBytes = 4096;
    std::string auditCommand = spec.script.substr(0, kAuditScriptBytes);
    if (spec.script.size() > kAuditScriptBytes)
        auditCommand += "\n… (" + std::to_string(spec.script.size()) + " bytes in all)";
    ++m_submitting;
    // The job's directory is often on NFS or Lustre: written off the loop.
    m_io.run<std::optional<Error>>(
        "writing the files of job " + job.jobId + " in " + job.dir,
        [job, script = std::move(spec.script)]() -> std::optional<Error> {
            try {
                writeJobFiles(job, script, job.backend == "slurm");
                return std::nullopt;
            } catch (const std::system_error& e) {
                int err = e.code().value();
                return Error(err == ENOSPC || err == EDQUOT ? ErrorCode::StorageFull : ErrorCode::Internal,
                             std::string("cannot write the job's files: ") + e.what());
            }
        },
        [this, job, options, id = env.id, agentId, reply, auditCommand](std::optional<std::optional<Error>> written,
                                                                        const std::string& timeout) {
            std::optional<Error> error = written ? *written : Error(ErrorCode::Timeout, timeout);
            if (error) {
                --m_submitting;
                log::warning("job " + job.jobId + " was not accepted: " + error->what());
                reply(protocol::makeError(id, error->code(), error->what()));
                return;
            }
            try {
                m_jobs.insert(job);
            } catch (const std::exception& e) {
                --m_submitting;
                logStoreFailure("cannot record job " + job.jobId, e);
                reply(sqlite::isDiskFull(e)
                          ? protocol::makeError(id, ErrorCode::StorageFull, m_store.health().message())
                          : protocol::makeError(id, ErrorCode::Internal, "cannot record the job"));
                return;
            }
            if (m_audit)
                m_audit(Store::AuditEntry{job.submittedAt, m_daemonId, agentId, "job:" + job.jobId, job.cwd,
                                          auditCommand, std::nullopt});
            log::info("job " + job.jobId + " from " + agentId + " submitted to " + job.backend + " in " + job.cwd);
            start(job, options, id, reply);
        });
}

void JobService::start(const JobRecord& job, const SubmitOptions& options, const std::string& id, const Reply& reply) {
    m_scheduler->submit(job, options, [this, id, reply](JobRecord job, std::optional<Error> error) {
        --m_submitting;
        // The row was stored before the start; a write that fails now (a
        // full disk) leaves it SUBMITTING, and the job is found again by its
        // pid file or the queue, so the agent is answered either way.
        auto record = [&] {
            try {
                m_jobs.update(job);
            } catch (const std::exception& e) {
                logStoreFailure("cannot record the start of job " + job.jobId, e);
            }
        };
        if (error) {
            job.state = JobState::Failed;
            job.reason = error->what();
            job.endedAt = nowEpochSeconds();
            record();  // no callback: the agent gets the error now
            log::warning("job " + job.jobId + " was not accepted: " + error->what());
            reply(protocol::makeError(id, error->code(), error->what()));
            return;
        }
        // A cancel that arrived while the scheduler was still answering.
        if (auto stored = m_jobs.get(m_daemonId, job.jobId); stored && stored->cancelRequested) {
            job.cancelRequested = true;
            m_scheduler->cancel(job);
        }
        record();
        if (m_listener) m_listener(job);
        reply(protocol::makeOk(id, {{"job_id", job.jobId},
                                    {"backend", job.backend},
                                    {"scheduler_id", job.schedulerId},
                                    {"state", toWireName(job.state)},
                                    {"stdout_path", job.stdoutPath()},
                                    {"stderr_path", job.stderrPath()}}));
    });
}

void JobService::onChange(const JobRecord& job) {
    try {
        if (m_listener) m_listener(job);
        if (!job.final()) {
            m_jobs.update(job);
            return;
        }
    } catch (const std::exception& e) {
        logStoreFailure("cannot record the state of job " + job.jobId, e);
        return;
    }
    // The final state and its callback are written once the output's tails
    // are read (off the loop); until then the job is live in the store, so a
    // daemon that dies meanwhile settles it again when it starts.
    readTails(job, kTailBytes, [this, job](const Tails& tails) { recordFinal(job, tails); });
}

void JobService::recordFinal(const JobRecord& job, const Tails& tails) {
    try {
        json::object payload = job.toJson();
        std::string callbackId = randomHex(16);
        payload["callback_id"] = callbackId;
        payload["daemon_id"] = m_daemonId;
        payload["agent_id"] = job.agentId;
        putTails(payload, tails);
        if (m_jobs.finish(job, payload, callbackId)) {
            log::info("job " + job.jobId + " ended " + std::string(toWireName(job.state)) + ": callback " + callbackId +
                      " queued");
            m_outbox.kick();
            m_logs.jobEnded(job.jobId);
        }
    } catch (const std::exception& e) {
        // The job stays live in the store: a restart settles it again, and
        // after a full disk so does recordUnrecorded, with what is known now.
        logStoreFailure("cannot record the state of job " + job.jobId, e);
        if (sqlite::isDiskFull(e)) m_unrecorded.insert_or_assign(job.jobId, std::pair{job, tails});
    }
}

void JobService::recordUnrecorded() {
    auto pending = std::exchange(m_unrecorded, {});
    for (const auto& [id, ended] : pending) {
        log::info("job " + id + " ended while the disk was full: recording its end now");
        recordFinal(ended.first, ended.second);
    }
}

struct JobService::DirRemoval {
    std::vector<PrunedJobDir> dirs;
    std::size_t next = 0;
    std::int64_t removed = 0;
    std::int64_t bytes = 0;
    std::function<void(std::int64_t, std::int64_t)> done;
};

void JobService::removeJobDirs(std::vector<PrunedJobDir> dirs, std::function<void(std::int64_t, std::int64_t)> done) {
    removeNextDirs(std::make_shared<DirRemoval>(DirRemoval{std::move(dirs), 0, 0, 0, std::move(done)}));
}

void JobService::removeNextDirs(const std::shared_ptr<DirRemoval>& r) {
    std::vector<PrunedJobDir> batch;
    while (r->next < r->dirs.size() && batch.size() < kRemoveBatch) {
        auto& job = r->dirs[r->next++];
        // Only once its row is gone: never the directory of a job this daemon still has.
        bool hasRow = true;
        try {
            hasRow = m_jobs.get(m_daemonId, job.jobId).has_value();
        } catch (const std::exception& e) {
            log::debug("cannot look up pruned job " + job.jobId + ": " + e.what());
        }
        if (hasRow) {
            log::debug("job " + job.jobId + " still has a row: its directory " + job.dir + " is kept");
            continue;
        }
        batch.push_back(std::move(job));
    }
    if (batch.empty()) {
        if (r->done) std::exchange(r->done, nullptr)(r->removed, r->bytes);
        return;
    }
    // One batch in flight at a time: a hung file system holds one worker.
    using Results = std::vector<std::pair<std::string, JobDirRemoval>>;
    std::size_t count = batch.size();
    m_io.run<Results>(
        "removing the directories of " + std::to_string(count) + " pruned jobs",
        [batch = std::move(batch)] {
            Results out;
            for (const auto& job : batch) out.emplace_back(job.jobId, removeJobDir(job.dir, job.jobId));
            return out;
        },
        [this, r](std::optional<Results> results, const std::string& error) {
            if (!results) {
                log::debug(error + "; the directories of " + std::to_string(r->dirs.size() - r->next) +
                           " more pruned jobs are left as they are");
                r->next = r->dirs.size();
            } else {
                for (const auto& [jobId, result] : *results) {
                    if (result.removed) ++r->removed;
                    r->bytes += result.bytes;
                    if (!result.error.empty())
                        log::debug("the directory of pruned job " + jobId + " was not removed: " + result.error);
                }
            }
            removeNextDirs(r);
        },
        true);
}

void JobService::readTails(const JobRecord& job, std::size_t bytes, std::function<void(Tails)> done) {
    using Pair = std::pair<std::string, std::string>;
    m_io.run<Pair>(
        "reading the output of job " + job.jobId,
        [out = job.stdoutPath(), err = job.stderrPath(), bytes] {
            return Pair{readTail(out, bytes), readTail(err, bytes)};
        },
        [done = std::move(done)](std::optional<Pair> read, const std::string& error) {
            Tails t;
            if (read) std::tie(t.out, t.err) = std::move(*read);
            t.error = error;
            done(std::move(t));
        });
}

}  // namespace hpc::daemon
