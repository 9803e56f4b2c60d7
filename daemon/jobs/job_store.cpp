#include "job_store.hpp"

#include "log.hpp"
#include "sqlite.hpp"
#include "util.hpp"

namespace json = boost::json;

namespace hpc::daemon {
namespace {

constexpr const char* kColumns =
    "job_id, daemon_id, agent_id, backend, scheduler_id, name, state, reason, exit_code, signal, dir, cwd, context, "
    "time_limit_s, pid, pid_start, cancel_requested, submitted_at, started_at, ended_at";

void bindJob(sqlite::Statement& st, const JobRecord& j) {
    st.bind(1, j.jobId).bind(2, j.daemonId).bind(3, j.agentId).bind(4, j.backend).bind(5, j.schedulerId);
    st.bind(6, j.name).bind(7, toWireName(j.state)).bind(8, j.reason);
    j.exitCode ? st.bind(9, *j.exitCode) : st.bindNull(9);
    j.signal ? st.bind(10, *j.signal) : st.bindNull(10);
    st.bind(11, j.dir).bind(12, j.cwd).bind(13, j.context);
    st.bind(14, static_cast<std::int64_t>(j.timeLimitSeconds)).bind(15, static_cast<std::int64_t>(j.pid));
    st.bind(16, static_cast<std::int64_t>(j.pidStart)).bind(17, j.cancelRequested ? 1 : 0);
    st.bind(18, j.submittedAt).bind(19, j.startedAt).bind(20, j.endedAt).bind(21, nowEpochSeconds());
}

JobRecord readJob(const sqlite::Statement& st) {
    JobRecord j;
    j.jobId = st.text(0);
    j.daemonId = st.text(1);
    j.agentId = st.text(2);
    j.backend = st.text(3);
    j.schedulerId = st.text(4);
    j.name = st.text(5);
    j.reason = st.text(7);
    if (auto state = jobStateFromWireName(st.text(6))) {
        j.state = *state;
    } else {
        // Only this program writes the column: a word it does not know is damage, not a live job.
        log::warning("job " + j.jobId + " has an unknown state \"" + st.text(6) + "\" in the store: taken as FAILED");
        j.state = JobState::Failed;
        if (j.reason.empty()) j.reason = "unknown state \"" + st.text(6) + "\" in the store";
    }
    if (!st.isNull(8)) j.exitCode = static_cast<int>(st.int64(8));
    if (!st.isNull(9)) j.signal = static_cast<int>(st.int64(9));
    j.dir = st.text(10);
    j.cwd = st.text(11);
    j.context = st.text(12);
    j.timeLimitSeconds = st.int64(13);
    j.pid = st.int64(14);
    j.pidStart = st.int64(15);
    j.cancelRequested = st.int64(16) != 0;
    j.submittedAt = st.real(17);
    j.startedAt = st.real(18);
    j.endedAt = st.real(19);
    return j;
}

std::string selectJobs(std::string_view where) {
    return std::string("SELECT ") + kColumns + " FROM jobs " + std::string(where);
}

}  // namespace

json::object JobRecord::toJson() const {
    json::error_code ec;
    json::value ctx = json::parse(context, ec);
    return {{"job_id", jobId},
            {"name", name},
            {"backend", backend},
            {"scheduler_id", schedulerId},
            {"state", toWireName(state)},
            {"reason", reason},
            {"exit_code", exitCode ? json::value(*exitCode) : json::value(nullptr)},
            {"signal", signal ? json::value(*signal) : json::value(nullptr)},
            {"cwd", cwd},
            {"stdout_path", stdoutPath()},
            {"stderr_path", stderrPath()},
            {"submitted_at", submittedAt},
            {"started_at", startedAt > 0 ? json::value(startedAt) : json::value(nullptr)},
            {"ended_at", endedAt > 0 ? json::value(endedAt) : json::value(nullptr)},
            {"context", ec ? json::value(nullptr) : ctx}};
}

void JobStore::insert(const JobRecord& job) {
    auto st = m_store.db().prepare(std::string("INSERT INTO jobs (") + kColumns +
                                   ", updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, "
                                   "?15, ?16, ?17, ?18, ?19, ?20, ?21)");
    bindJob(st, job);
    st.run();
}

namespace {
/// Writes a job unless its row is already final: an end is never overwritten.
const std::string& updateSql() {
    static const std::string sql =
        "UPDATE jobs SET daemon_id = ?2, agent_id = ?3, backend = ?4, scheduler_id = ?5, name = ?6, state = ?7, "
        "reason = ?8, exit_code = ?9, signal = ?10, dir = ?11, cwd = ?12, context = ?13, time_limit_s = ?14, "
        "pid = ?15, pid_start = ?16, cancel_requested = ?17, submitted_at = ?18, started_at = ?19, "
        "ended_at = ?20, updated_at = ?21 WHERE job_id = ?1 AND state NOT IN " +
        finalStatesSqlList();
    return sql;
}
}  // namespace

void JobStore::update(const JobRecord& job) {
    auto st = m_store.db().prepare(updateSql());
    bindJob(st, job);
    st.run();
}

bool JobStore::finish(const JobRecord& job, const json::object& callback, const std::string& callbackId) {
    sqlite::Durable durable(m_store.db());
    sqlite::Transaction tx(m_store.db());
    auto st = m_store.db().prepare(updateSql());
    bindJob(st, job);
    st.run();
    if (m_store.db().changes() == 0) return false;
    auto cb = m_store.db().prepare(
        "INSERT INTO outbox (callback_id, daemon_id, job_id, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5)");
    cb.bind(1, callbackId).bind(2, job.daemonId).bind(3, job.jobId).bind(4, json::serialize(callback));
    cb.bind(5, nowEpochSeconds());
    cb.run();
    tx.commit();
    return true;
}

std::optional<JobRecord> JobStore::get(const std::string& daemonId, const std::string& jobId) {
    auto st = m_store.db().prepare(selectJobs("WHERE daemon_id = ?1 AND job_id = ?2"));
    st.bind(1, daemonId).bind(2, jobId);
    if (!st.step()) return std::nullopt;
    return readJob(st);
}

std::vector<JobRecord> JobStore::live(const std::string& daemonId) {
    auto st = m_store.db().prepare(
        selectJobs("WHERE daemon_id = ?1 AND state NOT IN " + finalStatesSqlList() + " ORDER BY submitted_at"));
    st.bind(1, daemonId);
    std::vector<JobRecord> out;
    while (st.step()) out.push_back(readJob(st));
    return out;
}

std::vector<JobRecord> JobStore::list(const std::string& daemonId, const std::string& agentId, int limit) {
    auto st = m_store.db().prepare(
        selectJobs("WHERE daemon_id = ?1 AND (?2 = '' OR agent_id = ?2) ORDER BY submitted_at DESC LIMIT ?3"));
    st.bind(1, daemonId).bind(2, agentId).bind(3, limit);
    std::vector<JobRecord> out;
    while (st.step()) out.push_back(readJob(st));
    return out;
}

std::vector<Callback> JobStore::pendingCallbacks(const std::string& daemonId) {
    auto st = m_store.db().prepare(
        "SELECT seq, callback_id, job_id, payload, attempts FROM outbox WHERE daemon_id = ?1 ORDER BY seq");
    st.bind(1, daemonId);
    std::vector<Callback> out;
    while (st.step()) {
        Callback c;
        c.seq = st.int64(0);
        c.callbackId = st.text(1);
        c.jobId = st.text(2);
        json::error_code ec;
        auto v = json::parse(st.text(3), ec);
        if (!ec && v.is_object()) c.payload = v.get_object();
        c.attempts = static_cast<int>(st.int64(4));
        out.push_back(std::move(c));
    }
    return out;
}

std::size_t JobStore::pendingCallbackCount(const std::string& daemonId) {
    auto st = m_store.db().prepare("SELECT COUNT(*) FROM outbox WHERE daemon_id = ?1");
    st.bind(1, daemonId);
    return st.step() ? static_cast<std::size_t>(st.int64(0)) : 0;
}

void JobStore::noteAttempt(const std::string& callbackId) {
    auto st = m_store.db().prepare("UPDATE outbox SET attempts = attempts + 1 WHERE callback_id = ?1");
    st.bind(1, callbackId);
    st.run();
}

void JobStore::acknowledge(const std::string& callbackId) {
    auto st = m_store.db().prepare("DELETE FROM outbox WHERE callback_id = ?1");
    st.bind(1, callbackId);
    st.run();
}

void logStoreFailure(const std::string& what, const std::exception& e) {
    if (sqlite::isDiskFull(e))
        log::debug(what + ": " + e.what());
    else
        log::error(what + ": " + e.what());
}

}  // namespace hpc::daemon
