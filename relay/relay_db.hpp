#pragma once
/// hpc-relay's storage: users, one-time codes, credentials, daemon
/// registrations and acknowledged callbacks. Only hashes of codes, tokens and
/// API keys are stored.

#include "secret.hpp"
#include "sql.hpp"

#include <boost/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hpc::relay {

/// Who a bearer credential belongs to.
struct Principal {
    std::int64_t userId = 0;
    std::int64_t credentialId = 0;
    std::string kind;  ///< "access" or "api_key"
    /// An access token's agent identity. Its name is the agent id daemons
    /// see, so every token of one identity owns the same jobs and callbacks.
    /// Empty for API keys.
    std::string agent;
    std::optional<double> expiresAt;  ///< none: an API key
};

/// The agent id daemons see for `p` (job owner, callbacks' agent_id): its
/// identity's name; for an API key used as an agent, "cred-<id>".
inline std::string agentIdOf(const Principal& p) {
    return p.agent.empty() ? "cred-" + std::to_string(p.credentialId) : p.agent;
}

/// An agent identity of a user (GET /auth/agents).
struct AgentIdentity {
    std::string name;
    double createdAt = 0;
    std::int64_t validTokens = 0;  ///< its access tokens that have not expired
};

struct Registration {
    std::string daemonId;
    boost::json::object info;  ///< its "skill" is the skill's name
    double createdAt = 0;
    double updatedAt = 0;
    std::string skillVersion;  ///< "" when the registration has no skill text
    std::string skillText;     ///< only from daemon(), not from daemons()
};

struct StoredCallback {
    std::string daemonId;
    boost::json::object payload;
    bool acked = false;
    std::int64_t seq = 0;  ///< the order it was stored in
};

struct CallbackQuery {
    std::optional<std::string> daemonId;
    std::optional<std::string> agentId;
    std::optional<std::string> jobId;
    bool unackedOnly = false;
};

/// What the relay keeps, and for how long (hpc-relay --callback-retention...).
struct RelayRetention {
    double callbackSeconds = 7 * 86400;  ///< acknowledged callbacks, after their acknowledgement
    double expiredSeconds = 86400;       ///< sign-in codes and tokens, after they expired
    double intervalSeconds = 600;        ///< at most one pass this often (maybePrune)
};

/// What one prune pass removed.
struct RelayPruneReport {
    std::int64_t signins = 0;
    std::int64_t credentials = 0;
    std::int64_t callbacks = 0;
};

/// Where a daemon is connected, when several instances share the database.
struct Presence {
    std::string instance;  ///< that instance's --cluster-url
    double since = 0;      ///< when the daemon connected there
};

/// A callback as callbacksSince returns it; an empty payload: one that
/// instance stored itself (or that could not be read), only its seq counts.
struct ClusterCallback {
    std::int64_t seq = 0;
    std::int64_t userId = 0;
    std::string daemonId;
    boost::json::object payload;
};

/// A credential revoked (credentialId) or a registration deleted (userId,
/// daemonId) on one instance: the others close their connections of it.
/// Both empty: one the asking instance made itself (only seq counts).
struct ClusterDrop {
    std::int64_t seq = 0;
    std::int64_t credentialId = 0;
    std::int64_t userId = 0;
    std::string daemonId;
    std::string why;
};

/// A client of the MCP authorization flow, registered by itself (RFC 7591).
struct OAuthClient {
    std::string clientId;
    std::string name;
    std::vector<std::string> redirectUris;
};

/// An authorization code ("code") or a refresh token ("refresh") of a user's
/// agent identity for a client.
struct OAuthGrant {
    std::string kind;
    std::string clientId;
    std::int64_t userId = 0;
    std::string agent;
    std::string redirectUri;  ///< a code's: the token request must name it again
    std::string challenge;    ///< a code's PKCE S256 challenge
};

enum class VerifyOutcome { Ok, WrongCode, Expired, TooManyAttempts, UnknownToken };

/// A write refused because the disk or the quota is full throws
/// Error(StorageFull) (HTTP 507), logged once per episode with the
/// database's name; reads keep working, and the first write that works again says so
/// in the log. Nothing else is needed to recover.
class RelayDb {
public:
    static constexpr double kCodeLifetime = 600;  ///< seconds
    static constexpr int kMaxVerifyAttempts = 5;
    static constexpr int kMaxSigninsPerWindow = 5;  ///< per email, per code lifetime
    static constexpr double kAccessTokenLifetime = 7 * 24 * 3600;

    /// SQLite at `path`.
    explicit RelayDb(const std::string& path);
    /// Either backend (sql::openSqlite, sql::openPostgres); migrates it to this program's schema.
    explicit RelayDb(std::unique_ptr<sql::Connection> connection);
    RelayDb(const RelayDb&) = delete;
    RelayDb& operator=(const RelayDb&) = delete;

    /// Creates the user when new. Returns nullopt when the email has asked for
    /// too many codes recently; else the token that identifies this sign-in.
    std::optional<Secret> startSignin(const std::string& email, const Secret& code);
    /// Checks a code; on Ok, the user's id is stored in `userId`.
    VerifyOutcome verifyCode(const Secret& token, const Secret& code, std::int64_t& userId);

    /// Issues a new credential of `kind`; returns its id and the secret.
    std::pair<std::int64_t, Secret> issueCredential(std::int64_t userId, const std::string& kind,
                                                    std::optional<double> lifetime);
    std::optional<Principal> authenticate(const Secret& bearer);
    /// When `bearer` is a credential that has expired (and is not pruned yet): when it did.
    std::optional<double> expiredAt(const Secret& bearer);

    /// The identity a sign-in without a name gets.
    static constexpr std::string_view kDefaultAgent = "default";
    /// What names the migration gave the identities of access tokens issued
    /// before identities existed start with; no new identity may take one.
    static constexpr std::string_view kMigratedAgentPrefix = "cred-";
    /// Issues an access token of the user's identity `agentName`, which is
    /// created when new. Throws Error(BadRequest) for a name that is not 1-64
    /// characters of A-Z a-z 0-9 . _ - (not starting with . or -), or that
    /// would be a new "cred-..." identity.
    std::pair<std::int64_t, Secret> issueAccessToken(std::int64_t userId, const std::string& agentName);
    /// The user's agent identities, by name.
    std::vector<AgentIdentity> agents(std::int64_t userId);
    std::string email(std::int64_t userId);

    /// Returns true when the registration is new. `info` is as the API
    /// validated it; a "skill" object's version and text are stored apart
    /// (its version computed when it has none), replacing the ones before;
    /// a string skill clears them. With `apiKeyId` (the API
    /// key that registers it), the registration is bound to that key and the
    /// key it was bound to before is superseded (see daemonConnected).
    bool putDaemon(std::int64_t userId, const std::string& daemonId, const boost::json::object& info,
                   std::int64_t apiKeyId = 0);
    std::vector<Registration> daemons(std::int64_t userId);
    std::optional<Registration> daemon(std::int64_t userId, const std::string& daemonId);
    /// Deletes the registration and revokes its bound and superseded keys
    /// (each unless another registration is bound to it). Returns the ids
    /// revoked; nullopt when there was no such registration.
    std::optional<std::vector<std::int64_t>> deleteDaemon(std::int64_t userId, const std::string& daemonId);

    /// The API key a registration is bound to, if any.
    std::optional<std::int64_t> boundKey(std::int64_t userId, const std::string& daemonId);
    /// Whether `credentialId` is a key the registration was bound to before
    /// and that is not revoked yet.
    bool isSuperseded(std::int64_t userId, const std::string& daemonId, std::int64_t credentialId);
    /// Whether an API key is bound to no registration, nor superseded for
    /// one: a key setup has just made, which may claim a daemon id.
    bool isUnbound(std::int64_t userId, std::int64_t credentialId);
    /// Issues a new API key for a registration and binds it; the key it was
    /// bound to (or, unbound, `by`'s key) stays valid, superseded, until the
    /// daemon connects with the new one. The caller checks `by` may do this.
    std::pair<std::int64_t, Secret> rotateDaemonKey(std::int64_t userId, const std::string& daemonId,
                                                    const Principal& by);
    /// A daemon's WebSocket was accepted with API key `credentialId`. When it
    /// is the bound key (or none was bound yet: it becomes bound), the
    /// superseded keys are revoked: the daemon uses its new key. Returns the
    /// ids revoked. Connecting with a superseded key changes nothing.
    std::vector<std::int64_t> daemonConnected(std::int64_t userId, const std::string& daemonId,
                                              std::int64_t credentialId);
    /// The MCP authorization flow (OAuth 2.1): a client registers; a grant
    /// is stored as its secret's hash and taken once (deleted as it is read;
    /// nullopt when unknown, of another kind, or expired).
    std::string registerOAuthClient(const std::string& name, const std::vector<std::string>& redirectUris);
    std::optional<OAuthClient> oauthClient(const std::string& clientId);
    Secret storeOAuthGrant(const OAuthGrant& grant, double lifetime);
    std::optional<OAuthGrant> takeOAuthGrant(const Secret& secret, const std::string& kind);

    /// Revokes a credential (logout, a key revoking itself). False when it
    /// did not exist.
    bool revokeCredential(std::int64_t credentialId);

    /// Records a callback from a daemon (its payload names the submitting
    /// agent and the job); false when it was seen before (a retry).
    /// `receivedBy`: the instance that stores it (hpc-relay --cluster-url).
    bool recordCallback(std::int64_t userId, const std::string& daemonId, const std::string& callbackId,
                        const boost::json::object& payload, const std::string& receivedBy = {});
    /// A user's callbacks, oldest first, narrowed by what `query` sets.
    std::vector<StoredCallback> callbacks(std::int64_t userId, const CallbackQuery& query);
    /// The agent has the callback: it is not sent again. False when no such
    /// callback is addressed to that agent.
    bool ackCallback(std::int64_t userId, const std::string& agentId, const std::string& callbackId);
    /// Callbacks of every user no agent has acknowledged yet (GET /metrics).
    std::int64_t unackedCallbackCount();

    // Several instances on one database (hpc-relay --cluster-url, docs/relay.md).
    /// The instance says it is alive (every few seconds), on the database's clock.
    void instanceAlive(const std::string& instance);
    /// Forgets which daemons an instance held (an instance starting again
    /// under the same URL holds none yet).
    void forgetInstance(const std::string& instance);
    /// The instance stops (forgetInstance, and it is no longer alive).
    void instanceGone(const std::string& instance);
    /// The daemon is connected to `instance` since `since`, unless another
    /// instance recorded a later connection of it.
    void daemonPresent(std::int64_t userId, const std::string& daemonId, const std::string& instance, double since);
    /// The daemon left `instance` (nothing when it is connected elsewhere now).
    void daemonAbsent(std::int64_t userId, const std::string& daemonId, const std::string& instance);
    /// Where the daemon is connected, when that instance said it was alive
    /// within `maxSilence` seconds (the database's clock): an instance that
    /// died stops counting by itself.
    std::optional<Presence> presence(std::int64_t userId, const std::string& daemonId, double maxSilence);
    /// Records a drop for the other instances (the seq is the database's).
    void recordDrop(const ClusterDrop& drop, const std::string& droppedBy);
    std::int64_t lastDropSeq();
    /// Up to 1000 drops after `afterSeq`, oldest first; those `notBy` made come empty.
    std::vector<ClusterDrop> dropsSince(std::int64_t afterSeq, const std::string& notBy);
    /// The newest callback's seq (0 when none).
    std::int64_t lastCallbackSeq();
    /// Up to `limit` callbacks after `afterSeq`, in the order they were
    /// stored; those stored by `notBy` come with an empty payload.
    std::vector<ClusterCallback> callbacksSince(std::int64_t afterSeq, const std::string& notBy, int limit);

    void setRetention(const RelayRetention& r) { m_retention = r; }
    /// Deletes sign-in codes and access tokens that expired longer ago than
    /// the retention, and acknowledged callbacks older than theirs, in
    /// batches of 500 rows (one short transaction each), then gives the
    /// pages back. Unacknowledged callbacks and API keys (no expiry) stay.
    RelayPruneReport prune(double now);
    /// prune() when the last pass is older than the interval; cheap otherwise.
    /// Errors are logged, never thrown (a full disk must not fail a request).
    void maybePrune(double now);

    /// The schema steps, oldest first (tests build older databases with them).
    static const std::vector<sqlite::Migration>& migrations();
    /// The same for PostgreSQL.
    static const std::vector<sqlite::Migration>& postgresMigrations();
    /// The database, for the operator's log (no password).
    const std::string& describe() const { return m_db->describe(); }
    /// For tests that need to age rows.
    sql::Connection& rawDb() { return *m_db; }
    /// Since when writes fail for a full disk or quota (epoch seconds); 0: they work.
    double fullSince() const { return m_fullSince; }

private:
    class Writing;
    [[noreturn]] void refuseFull(const sql::StorageFull& e);
    /// Inside a transaction: binds the registration to `keyId`, superseding its previous key.
    void bindKey(std::int64_t userId, const std::string& daemonId, std::int64_t keyId);
    /// Inside a transaction: deletes each key no registration is bound to; returns those deleted.
    std::vector<std::int64_t> revokeUnlessBound(const std::vector<std::int64_t>& keys);
    bool deleteCredential(std::int64_t credentialId);

    std::unique_ptr<sql::Connection> m_db;
    double m_fullSince = 0;
    RelayRetention m_retention;
    double m_lastPrune = 0;
};

/// Lower-case hex SHA-256.
std::string sha256Hex(const std::string& data);

}  // namespace hpc::relay
