#pragma once
/// The daemon's local state: ~/.hpc_daemon/state.db (or $HPC_DAEMON_HOME).
///
/// Every open enforces the directory at 0700 and the database files at 0600,
/// refuses a directory owned by someone else, and brings the schema to the
/// newest version with fall-through migrations.

#include "secret.hpp"
#include "sqlite.hpp"

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hpc {

/// $HPC_DAEMON_HOME, else ~/.hpc_daemon.
std::filesystem::path homeDir();

/// Creates `dir` (0700) when missing, else checks its owner and tightens its
/// mode to 0700. Throws std::runtime_error with a sentence for the user.
void ensurePrivateDir(const std::filesystem::path& dir);

/// Takes group and other access off `dir` (0700) and everything directly in
/// it (files 0600, directories 0700): the state directory holds the API key.
/// Returns one line per entry it had to repair ("state.db was 0644"); throws
/// nothing (an entry it cannot repair is reported as such).
std::vector<std::string> repairPrivateModes(const std::filesystem::path& dir);

struct Profile {
    std::string daemonId;
    std::string platformUrl;
    Secret apiKey;
    std::string clusterName;
    std::string skill;
    std::vector<std::string> allowedDirs;  ///< absolute, resolved; empty: unrestricted
    std::string jobWorkdir;
    std::string instructions;
    std::string caFile;  ///< empty: the system CAs
    /// "" : the proxy the environment names; "direct": none; else an http://
    /// proxy URL, which may hold credentials (kept here like the API key).
    std::string proxy;
    int maxSessions = 16;                ///< PTY shells open at once
    int idleTimeoutSeconds = 12 * 3600;  ///< a silent shell is hung up after this
    double createdAt = 0;
    double updatedAt = 0;
};

/// Whether the state file can be written (issue 21, "a full disk or quota
/// loses nothing"). A write that SQLite refuses because the disk or the
/// quota is full marks it full, logged once; the owner probes for space
/// (spaceAvailable) and marks it writable again. One thread.
class StorageHealth {
public:
    explicit StorageHealth(std::filesystem::path file) : m_file(std::move(file)) {}

    bool full() const { return m_fullSince > 0; }
    /// When it became full (epoch seconds); 0 while writable.
    double fullSince() const { return m_fullSince; }
    /// What the system said when it became full.
    const std::string& reason() const { return m_reason; }
    const std::filesystem::path& file() const { return m_file; }
    /// For the user: which file, since when, what keeps working, what to do.
    std::string message() const;

    /// A write failed with `error` because the disk or quota is full. The
    /// first of an episode is logged (warning) and told to the listener.
    void noteFull(const std::string& error);
    /// Space is back: logs how long it lasted and tells the listener.
    void noteWritable();
    /// Writes (and syncs, then removes) kProbeBytes in a file beside the
    /// state file, and checks the free space the file system reports: true
    /// when both leave room. Never throws.
    bool spaceAvailable() const;
    /// Bytes the file system says this user may still write there
    /// (statvfs); nullopt when it cannot tell.
    std::optional<std::uint64_t> freeBytes() const;
    /// Told of every change of full(), on the thread that saw it, which may
    /// be inside a failing statement: it must not use the store (post).
    void setListener(std::function<void(bool full)> listener) { m_listener = std::move(listener); }

    /// Room a write of the daemon needs at most, besides what SQLite has.
    static constexpr std::uint64_t kProbeBytes = 256 * 1024;

private:
    std::filesystem::path m_file;
    double m_fullSince = 0;
    std::string m_reason;
    std::function<void(bool)> m_listener;
};

class Store {
public:
    static constexpr const char* kFileName = "state.db";

    /// Opens (creating) the store in `dir`. Throws std::runtime_error.
    static Store open(const std::filesystem::path& dir = homeDir());

    std::optional<Profile> profile(const std::string& daemonId);
    std::vector<Profile> profiles();
    /// Inserts or updates by daemon id (createdAt is kept on update).
    void saveProfile(const Profile& profile);
    /// Replaces a profile's API key, synced to disk before it returns (the
    /// platform revokes the old key once the daemon uses this one). Throws
    /// hpc::Error(NotFound) when there is no such profile.
    void setApiKey(const std::string& daemonId, const Secret& apiKey);
    /// Removes the profile and everything kept for it: jobs, callbacks not
    /// yet delivered, audit rows, settings. False when there was no profile.
    bool removeProfile(const std::string& daemonId);

    /// One line of the audit log: a command an agent ran.
    struct AuditEntry {
        double time = 0;
        std::string daemonId;
        std::string agent;
        std::string session;  ///< "exec" or "pty:<channel>"
        std::string cwd;
        std::string command;
        std::optional<int> exitCode;
    };
    /// Writes an audit row. While the disk or quota is full, the row is kept
    /// in memory (the newest 10,000) and written once space is back
    /// (probeSpace); other errors throw.
    void addAudit(const AuditEntry& entry);
    /// The newest `limit` entries of a daemon, oldest first.
    std::vector<AuditEntry> audit(const std::string& daemonId, int limit);

    int schemaVersion() { return m_db.userVersion(); }
    static int latestSchemaVersion();
    /// The schema's steps (for tests that make a state file of an older version).
    static const std::vector<sqlite::Migration>& migrations();
    const std::filesystem::path& dir() const { return m_dir; }
    sqlite::Db& db() { return m_db; }

    /// Full or writable: set by every write on db() that the disk refuses.
    StorageHealth& health() { return *m_health; }
    const StorageHealth& health() const { return *m_health; }
    /// While full: looks for space (at most once a second unless `force`)
    /// and, when there is some, writes what waited for it (audit rows) and
    /// marks the store writable. True when writable. Throws nothing.
    bool probeSpace(bool force = false);
    /// For requests that write new state (jobs, shells, execs): throws
    /// Error(StorageFull) with health().message() while the disk or quota is
    /// full (after a probe, see probeSpace) or the file system has less
    /// than StorageHealth::kProbeBytes left.
    void requireWritable();
    /// Audit rows waiting for space.
    std::size_t pendingAudit() const { return m_pendingAudit.size(); }

private:
    Store(std::filesystem::path dir, sqlite::Db db);
    void insertAudit(const AuditEntry& entry);
    void keepAudit(const AuditEntry& entry);

    std::filesystem::path m_dir;
    sqlite::Db m_db;
    /// On the heap: the connection's hook points at it, and a moved Store keeps it.
    std::unique_ptr<StorageHealth> m_health;
    std::deque<AuditEntry> m_pendingAudit;
    std::size_t m_droppedAudit = 0;
    std::chrono::steady_clock::time_point m_lastProbe{};
};

/// The profile to use: the one named, or the only one when none is named.
/// Throws hpc::Error(NotFound) with a sentence listing what exists.
Profile selectProfile(Store& store, const std::string& daemonId);

}  // namespace hpc
