#pragma once
/// The daemon's local state: ~/.hpc_daemon/state.db (or $HPC_DAEMON_HOME).
///
/// Every open enforces the directory at 0700 and the database files at 0600,
/// refuses a directory owned by someone else, and brings the schema to the
/// newest version with fall-through migrations.

#include "secret.hpp"
#include "sqlite.hpp"

#include <filesystem>
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
    int maxSessions = 16;                ///< PTY shells open at once
    int idleTimeoutSeconds = 12 * 3600;  ///< a silent shell is hung up after this
    double createdAt = 0;
    double updatedAt = 0;
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
    void addAudit(const AuditEntry& entry);
    /// The newest `limit` entries of a daemon, oldest first.
    std::vector<AuditEntry> audit(const std::string& daemonId, int limit);

    int schemaVersion() { return m_db.userVersion(); }
    static int latestSchemaVersion();
    /// The schema's steps (for tests that make a state file of an older version).
    static const std::vector<sqlite::Migration>& migrations();
    const std::filesystem::path& dir() const { return m_dir; }
    sqlite::Db& db() { return m_db; }

private:
    Store(std::filesystem::path dir, sqlite::Db db) : m_dir(std::move(dir)), m_db(std::move(db)) {}
    std::filesystem::path m_dir;
    sqlite::Db m_db;
};

/// The profile to use: the one named, or the only one when none is named.
/// Throws hpc::Error(NotFound) with a sentence listing what exists.
Profile selectProfile(Store& store, const std::string& daemonId);

}  // namespace hpc
