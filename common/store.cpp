#include "store.hpp"

#include "errors.hpp"
#include "log.hpp"
#include "util.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <boost/json.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace fs = std::filesystem;
namespace json = boost::json;

namespace hpc {
namespace {

// Index i brings the schema from version i to i+1. Never edit a shipped entry.
const std::vector<sqlite::Migration> kMigrations = {
    R"sql(
    CREATE TABLE profiles (
        daemon_id     TEXT PRIMARY KEY,
        platform_url  TEXT NOT NULL,
        api_key       TEXT NOT NULL,
        cluster_name  TEXT NOT NULL DEFAULT '',
        skill         TEXT NOT NULL DEFAULT '',
        allowed_dirs  TEXT NOT NULL DEFAULT '[]',
        job_workdir   TEXT NOT NULL DEFAULT '',
        instructions  TEXT NOT NULL DEFAULT '',
        ca_file       TEXT NOT NULL DEFAULT '',
        created_at    REAL NOT NULL,
        updated_at    REAL NOT NULL
    );
    )sql",
    R"sql(
    ALTER TABLE profiles ADD COLUMN max_sessions INTEGER NOT NULL DEFAULT 16;
    ALTER TABLE profiles ADD COLUMN idle_timeout_s INTEGER NOT NULL DEFAULT 43200;
    CREATE TABLE audit (
        id        INTEGER PRIMARY KEY,
        time      REAL NOT NULL,
        daemon_id TEXT NOT NULL,
        agent     TEXT NOT NULL,
        session   TEXT NOT NULL,
        cwd       TEXT NOT NULL,
        command   TEXT NOT NULL,
        exit_code INTEGER
    );
    CREATE INDEX audit_by_daemon ON audit(daemon_id, time);
    )sql",
    // Jobs and the outbox of their callbacks (see daemon/jobs/job_store.hpp).
    R"sql(
    CREATE TABLE jobs (
        job_id           TEXT PRIMARY KEY,
        daemon_id        TEXT NOT NULL,
        agent_id         TEXT NOT NULL,
        backend          TEXT NOT NULL,
        scheduler_id     TEXT NOT NULL DEFAULT '',
        name             TEXT NOT NULL DEFAULT '',
        state            TEXT NOT NULL,
        reason           TEXT NOT NULL DEFAULT '',
        exit_code        INTEGER,
        signal           INTEGER,
        dir              TEXT NOT NULL,
        cwd              TEXT NOT NULL,
        context          TEXT NOT NULL DEFAULT 'null',
        time_limit_s     INTEGER NOT NULL DEFAULT 0,
        pid              INTEGER NOT NULL DEFAULT 0,
        pid_start        INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        submitted_at     REAL NOT NULL,
        started_at       REAL NOT NULL DEFAULT 0,
        ended_at         REAL NOT NULL DEFAULT 0,
        updated_at       REAL NOT NULL
    );
    CREATE INDEX jobs_by_daemon ON jobs(daemon_id, submitted_at);
    CREATE TABLE outbox (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        callback_id  TEXT NOT NULL UNIQUE,
        daemon_id    TEXT NOT NULL,
        job_id       TEXT NOT NULL,
        payload      TEXT NOT NULL,
        created_at   REAL NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_by_daemon ON outbox(daemon_id, seq);
    )sql",
    // Settings users change with `hpc-daemonctl config` (common/settings.hpp);
    // the index lets retention find the oldest ended jobs without a scan.
    R"sql(
    CREATE TABLE settings (
        daemon_id  TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (daemon_id, key)
    );
    CREATE INDEX jobs_by_end ON jobs(daemon_id, ended_at);
    )sql",
    // Pruned pages go back to the file system (PRAGMA incremental_vacuum,
    // run by the pruner) instead of staying in the file forever. Changing
    // auto_vacuum on a database that has tables takes a VACUUM, which SQLite
    // refuses inside a transaction.
    {"PRAGMA auto_vacuum=INCREMENTAL; VACUUM;", true},
    // The profile's explicit proxy (hpc-daemonctl setup --proxy).
    "ALTER TABLE profiles ADD COLUMN proxy TEXT NOT NULL DEFAULT '';",
};

void tighten(const fs::path& file) {
    if (::chmod(file.c_str(), 0600) != 0 && errno != ENOENT)
        throw std::runtime_error("cannot set mode 0600 on " + file.string() + ": " + std::strerror(errno));
}

Profile readProfile(sqlite::Statement& st) {
    Profile p;
    p.daemonId = st.text(0);
    p.platformUrl = st.text(1);
    p.apiKey = Secret(st.text(2));
    p.clusterName = st.text(3);
    p.skill = st.text(4);
    json::error_code ec;
    auto dirs = json::parse(st.text(5), ec);
    if (!ec && dirs.is_array())
        for (const auto& d : dirs.get_array())
            if (d.is_string()) p.allowedDirs.emplace_back(d.get_string());
    p.jobWorkdir = st.text(6);
    p.instructions = st.text(7);
    p.caFile = st.text(8);
    p.createdAt = st.real(9);
    p.updatedAt = st.real(10);
    p.maxSessions = static_cast<int>(st.int64(11));
    p.idleTimeoutSeconds = static_cast<int>(st.int64(12));
    p.proxy = st.text(13);
    return p;
}

constexpr const char* kSelect =
    "SELECT daemon_id, platform_url, api_key, cluster_name, skill, allowed_dirs, job_workdir, instructions, "
    "ca_file, created_at, updated_at, max_sessions, idle_timeout_s, proxy FROM profiles";

}  // namespace

fs::path homeDir() {
    if (const char* h = std::getenv("HPC_DAEMON_HOME"); h && *h) return fs::path(h);
    const char* home = std::getenv("HOME");
    if (!home || !*home) {
        if (const passwd* pw = ::getpwuid(::geteuid())) home = pw->pw_dir;
    }
    if (!home) throw std::runtime_error("cannot find the home directory: set HOME or HPC_DAEMON_HOME");
    return fs::path(home) / ".hpc_daemon";
}

void ensurePrivateDir(const fs::path& dir) {
    std::error_code ec;
    fs::create_directories(dir.parent_path(), ec);
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
        throw std::runtime_error("cannot create " + dir.string() + ": " + std::strerror(errno));
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0)
        throw std::runtime_error("cannot inspect " + dir.string() + ": " + std::strerror(errno));
    if (!S_ISDIR(st.st_mode))
        throw std::runtime_error(dir.string() + " is not a directory (a symlink or file is in the way)");
    if (st.st_uid != ::geteuid())
        throw std::runtime_error(dir.string() + " belongs to another user (uid " + std::to_string(st.st_uid) +
                                 "); refusing to keep secrets there");
    if ((st.st_mode & 07777) != 0700 && ::chmod(dir.c_str(), 0700) != 0)
        throw std::runtime_error("cannot set mode 0700 on " + dir.string() + ": " + std::strerror(errno));
}

std::vector<std::string> repairPrivateModes(const fs::path& dir) {
    std::vector<std::string> repaired;
    auto repair = [&](const fs::path& p, const std::string& name) {
        struct stat st {};
        if (::lstat(p.c_str(), &st) != 0 || S_ISLNK(st.st_mode) || (st.st_mode & 077) == 0) return;
        char was[8];
        std::snprintf(was, sizeof was, "%04o", st.st_mode & 07777);
        if (::chmod(p.c_str(), st.st_mode & 0700) == 0)
            repaired.push_back(name + " was " + was);
        else
            repaired.push_back(name + " is " + was + " and cannot be repaired: " + std::strerror(errno));
    };
    repair(dir, dir.string());
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) repair(e.path(), e.path().filename().string());
    return repaired;
}

Store Store::open(const fs::path& dir) {
    ensurePrivateDir(dir);
    fs::path file = dir / kFileName;
    // Create the file ourselves so it is 0600 from its first byte.
    int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) throw std::runtime_error("cannot open " + file.string() + ": " + std::strerror(errno));
    ::close(fd);
    tighten(file);
    auto db = sqlite::Db::open(file.string());
    for (const char* suffix : {"-wal", "-shm"}) tighten(fs::path(file.string() + suffix));
    sqlite::migrate(db, kMigrations, file.string());
    return Store(dir, std::move(db));
}

Store::Store(fs::path dir, sqlite::Db db)
    : m_dir(std::move(dir)), m_db(std::move(db)), m_health(std::make_unique<StorageHealth>(m_dir / kFileName)) {
    m_db.setOnDiskFull([health = m_health.get()](const std::string& error) { health->noteFull(error); });
}

int Store::latestSchemaVersion() { return static_cast<int>(kMigrations.size()); }
const std::vector<sqlite::Migration>& Store::migrations() { return kMigrations; }

std::optional<Profile> Store::profile(const std::string& daemonId) {
    auto st = m_db.prepare(std::string(kSelect) + " WHERE daemon_id = ?1");
    st.bind(1, daemonId);
    if (!st.step()) return std::nullopt;
    return readProfile(st);
}

std::vector<Profile> Store::profiles() {
    auto st = m_db.prepare(std::string(kSelect) + " ORDER BY daemon_id");
    std::vector<Profile> out;
    while (st.step()) out.push_back(readProfile(st));
    return out;
}

void Store::saveProfile(const Profile& p) {
    if (!isValidDaemonId(p.daemonId)) throw Error(ErrorCode::BadRequest, "invalid daemon id \"" + p.daemonId + "\"");
    json::array dirs;
    for (const auto& d : p.allowedDirs) dirs.emplace_back(d);
    double now = nowEpochSeconds();
    auto st = m_db.prepare(
        "INSERT INTO profiles (daemon_id, platform_url, api_key, cluster_name, skill, allowed_dirs, job_workdir, "
        "instructions, ca_file, created_at, updated_at, max_sessions, idle_timeout_s, proxy) VALUES (?1, ?2, ?3, ?4, "
        "?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13) "
        "ON CONFLICT(daemon_id) DO UPDATE SET platform_url = ?2, api_key = ?3, cluster_name = ?4, skill = ?5, "
        "allowed_dirs = ?6, job_workdir = ?7, instructions = ?8, ca_file = ?9, updated_at = ?10, max_sessions = ?11, "
        "idle_timeout_s = ?12, proxy = ?13");
    st.bind(1, p.daemonId)
        .bind(2, p.platformUrl)
        .bind(3, p.apiKey.reveal())
        .bind(4, p.clusterName)
        .bind(5, p.skill)
        .bind(6, json::serialize(dirs))
        .bind(7, p.jobWorkdir)
        .bind(8, p.instructions)
        .bind(9, p.caFile)
        .bind(10, now)
        .bind(11, p.maxSessions)
        .bind(12, p.idleTimeoutSeconds)
        .bind(13, p.proxy);
    st.run();
}

void Store::addAudit(const AuditEntry& e) {
    if (m_health->full()) {
        keepAudit(e);
        return;
    }
    try {
        insertAudit(e);
    } catch (const sqlite::DiskFull&) {
        keepAudit(e);
    }
}

void Store::keepAudit(const AuditEntry& e) {
    constexpr std::size_t kMaxPendingAudit = 10000;
    if (m_pendingAudit.size() >= kMaxPendingAudit) {
        m_pendingAudit.pop_front();
        ++m_droppedAudit;
    }
    m_pendingAudit.push_back(e);
}

void Store::insertAudit(const AuditEntry& e) {
    auto st = m_db.prepare(
        "INSERT INTO audit (time, daemon_id, agent, session, cwd, command, exit_code) VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
        "?7)");
    st.bind(1, e.time).bind(2, e.daemonId).bind(3, e.agent).bind(4, e.session).bind(5, e.cwd).bind(6, e.command);
    if (e.exitCode)
        st.bind(7, *e.exitCode);
    else
        st.bindNull(7);
    st.run();
}

std::vector<Store::AuditEntry> Store::audit(const std::string& daemonId, int limit) {
    auto st = m_db.prepare(
        "SELECT time, daemon_id, agent, session, cwd, command, exit_code FROM (SELECT * FROM audit WHERE daemon_id = "
        "?1 "
        "ORDER BY id DESC LIMIT ?2) ORDER BY id");
    st.bind(1, daemonId).bind(2, limit);
    std::vector<AuditEntry> out;
    while (st.step()) {
        AuditEntry e{st.real(0), st.text(1), st.text(2), st.text(3), st.text(4), st.text(5), std::nullopt};
        if (!st.isNull(6)) e.exitCode = static_cast<int>(st.int64(6));
        out.push_back(std::move(e));
    }
    return out;
}

void Store::setApiKey(const std::string& daemonId, const Secret& apiKey) {
    sqlite::Durable durable(m_db);
    auto st = m_db.prepare("UPDATE profiles SET api_key = ?2, updated_at = ?3 WHERE daemon_id = ?1");
    st.bind(1, daemonId).bind(2, apiKey.reveal()).bind(3, nowEpochSeconds()).run();
    if (m_db.changes() == 0) throw Error(ErrorCode::NotFound, "no profile named \"" + daemonId + "\"");
}

bool Store::removeProfile(const std::string& daemonId) {
    sqlite::Transaction tx(m_db);
    bool existed = false;
    for (const char* table : {"profiles", "jobs", "outbox", "audit", "settings"}) {
        auto st = m_db.prepare(std::string("DELETE FROM ") + table + " WHERE daemon_id = ?1");
        st.bind(1, daemonId).run();
        if (std::string_view(table) == "profiles") existed = m_db.changes() > 0;
    }
    tx.commit();
    return existed;
}

bool Store::probeSpace(bool force) {
    if (!m_health->full()) return true;
    auto now = std::chrono::steady_clock::now();
    if (!force && now - m_lastProbe < std::chrono::seconds(1)) return false;
    m_lastProbe = now;
    if (!m_health->spaceAvailable()) return false;
    try {
        // A real write too (page 1 rewritten as it is): the WAL must grow.
        sqlite::Transaction tx(m_db);
        m_db.setUserVersion(m_db.userVersion());
        for (const auto& e : m_pendingAudit) insertAudit(e);
        tx.commit();
    } catch (const sqlite::DiskFull&) {
        return false;  // not enough yet: the rows stay queued
    } catch (const std::exception& e) {
        log::error("cannot write " + std::to_string(m_pendingAudit.size()) +
                   " audit rows kept while the disk was full; they are dropped: " + e.what());
    }
    if (m_droppedAudit > 0)
        log::warning(std::to_string(m_droppedAudit) +
                     " audit rows were dropped while the disk was full (only the newest 10000 are kept)");
    m_pendingAudit.clear();
    m_droppedAudit = 0;
    m_health->noteWritable();
    return true;
}

void Store::requireWritable() {
    if (!m_health->full()) {
        auto free = m_health->freeBytes();
        if (!free || *free >= StorageHealth::kProbeBytes) return;
        m_health->noteFull("only " + std::to_string(*free) + " bytes are left on the file system");
    }
    if (probeSpace()) return;
    throw Error(ErrorCode::StorageFull, m_health->message());
}

std::string StorageHealth::message() const {
    return "the disk or quota holding " + m_file.string() + " is full (" + m_reason +
           "), so this daemon cannot record new work; jobs it already runs and their callbacks are kept and "
           "recorded once space is freed there, with no restart needed";
}

void StorageHealth::noteFull(const std::string& error) {
    if (full()) return;
    m_fullSince = nowEpochSeconds();
    // The system's own words when it gave them ("No space left on device",
    // "Disk quota exceeded"), else SQLite's.
    m_reason = error;
    if (auto open = error.rfind(" ("); open != std::string::npos && error.back() == ')')
        m_reason = error.substr(open + 2, error.size() - open - 3);
    else if (auto colon = error.find(": "); colon != std::string::npos)
        m_reason = error.substr(colon + 2);
    log::warning(m_file.string() + ": the disk or quota is full (" + m_reason +
                 "); new jobs, shells and commands are refused until space is freed, running jobs and "
                 "unacknowledged callbacks are kept");
    if (m_listener) m_listener(true);
}

void StorageHealth::noteWritable() {
    if (!full()) return;
    double lasted = nowEpochSeconds() - m_fullSince;
    m_fullSince = 0;
    m_reason.clear();
    log::notice(m_file.string() + " is writable again after " + std::to_string(static_cast<long long>(lasted)) +
                " s of a full disk or quota: new work is accepted");
    if (m_listener) m_listener(false);
}

std::optional<std::uint64_t> StorageHealth::freeBytes() const {
    struct statvfs st {};
    if (::statvfs(m_file.parent_path().c_str(), &st) != 0) return std::nullopt;
    return static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
}

bool StorageHealth::spaceAvailable() const {
    if (auto free = freeBytes(); free && *free < kProbeBytes) return false;
    // A quota shows in no statvfs: only a write tells.
    fs::path probe = m_file.parent_path() / ".space-probe";
    int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return false;
    static const std::string kZeros(std::size_t{64} * 1024, '\0');
    bool ok = true;
    for (std::uint64_t written = 0; ok && written < kProbeBytes; written += kZeros.size())
        ok = ::write(fd, kZeros.data(), kZeros.size()) == static_cast<ssize_t>(kZeros.size());
    ok = ok && ::fsync(fd) == 0;
    ::close(fd);
    ::unlink(probe.c_str());
    return ok;
}

Profile selectProfile(Store& store, const std::string& daemonId) {
    if (!daemonId.empty()) {
        if (auto p = store.profile(daemonId)) return *p;
        throw Error(ErrorCode::NotFound, "no profile named \"" + daemonId + "\" in " + store.dir().string() +
                                             "; run hpc-daemonctl setup --daemon-id " + daemonId);
    }
    auto all = store.profiles();
    if (all.size() == 1) return all.front();
    if (all.empty())
        throw Error(ErrorCode::NotFound, "no daemon profile in " + store.dir().string() + "; run hpc-daemonctl setup");
    std::string names;
    for (const auto& p : all) names += (names.empty() ? "" : ", ") + p.daemonId;
    throw Error(ErrorCode::NotFound, "several profiles exist (" + names + "); choose one with --daemon-id");
}

}  // namespace hpc
