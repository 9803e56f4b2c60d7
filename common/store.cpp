#include "store.hpp"

#include "errors.hpp"
#include "util.hpp"

#include <boost/json.hpp>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

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
    return p;
}

constexpr const char* kSelect =
    "SELECT daemon_id, platform_url, api_key, cluster_name, skill, allowed_dirs, job_workdir, instructions, "
    "ca_file, created_at, updated_at, max_sessions, idle_timeout_s FROM profiles";

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
    struct stat st{};
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
        struct stat st{};
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
        "instructions, ca_file, created_at, updated_at, max_sessions, idle_timeout_s) VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
        "?7, ?8, ?9, ?10, ?10, ?11, ?12) "
        "ON CONFLICT(daemon_id) DO UPDATE SET platform_url = ?2, api_key = ?3, cluster_name = ?4, skill = ?5, "
        "allowed_dirs = ?6, job_workdir = ?7, instructions = ?8, ca_file = ?9, updated_at = ?10, max_sessions = ?11, "
        "idle_timeout_s = ?12");
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
        .bind(12, p.idleTimeoutSeconds);
    st.run();
}

void Store::addAudit(const AuditEntry& e) {
    auto st = m_db.prepare(
        "INSERT INTO audit (time, daemon_id, agent, session, cwd, command, exit_code) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    st.bind(1, e.time).bind(2, e.daemonId).bind(3, e.agent).bind(4, e.session).bind(5, e.cwd).bind(6, e.command);
    if (e.exitCode)
        st.bind(7, *e.exitCode);
    else
        st.bindNull(7);
    st.run();
}

std::vector<Store::AuditEntry> Store::audit(const std::string& daemonId, int limit) {
    auto st = m_db.prepare(
        "SELECT time, daemon_id, agent, session, cwd, command, exit_code FROM (SELECT * FROM audit WHERE daemon_id = ?1 "
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

bool Store::removeProfile(const std::string& daemonId) {
    auto st = m_db.prepare("DELETE FROM profiles WHERE daemon_id = ?1");
    st.bind(1, daemonId);
    st.run();
    return m_db.changes() > 0;
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
