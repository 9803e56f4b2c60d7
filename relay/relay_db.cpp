#include "relay_db.hpp"

#include "errors.hpp"
#include "log.hpp"
#include "skill.hpp"
#include "util.hpp"

#include <openssl/evp.h>

#include <exception>

namespace json = boost::json;

namespace hpc::relay {
namespace {

const std::vector<sqlite::Migration> kMigrations = {
    R"sql(
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE TABLE signins (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        code_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        used INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX signins_by_user ON signins(user_id, created_at);
    CREATE TABLE credentials (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL CHECK (kind IN ('access', 'api_key')),
        secret_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        expires_at REAL
    );
    CREATE TABLE daemons (
        user_id INTEGER NOT NULL REFERENCES users(id),
        daemon_id TEXT NOT NULL,
        info TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (user_id, daemon_id)
    );
    CREATE TABLE callbacks (
        user_id INTEGER NOT NULL,
        daemon_id TEXT NOT NULL,
        callback_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (user_id, daemon_id, callback_id)
    );
    )sql",
    // Callbacks are delivered to the agent that submitted the job, which
    // acknowledges each one; unacknowledged ones are sent again on connect.
    R"sql(
    ALTER TABLE callbacks ADD COLUMN agent_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE callbacks ADD COLUMN job_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE callbacks ADD COLUMN acked_at REAL;
    CREATE INDEX callbacks_by_agent ON callbacks(user_id, agent_id, acked_at);
    )sql",
    // Issue 21: pruning by age needs these; freed pages go back to the disk.
    R"sql(
    CREATE INDEX signins_by_expiry ON signins(expires_at);
    CREATE INDEX credentials_by_expiry ON credentials(expires_at);
    CREATE INDEX callbacks_by_ack ON callbacks(acked_at);
    )sql",
    {"PRAGMA auto_vacuum=INCREMENTAL; VACUUM;", true},
    // Issue 14: a registration is bound to the API key that registered it
    // (or its rotation); the keys it replaced stay valid until the daemon
    // connects with the bound one, then they are revoked.
    R"sql(
    ALTER TABLE daemons ADD COLUMN credential_id INTEGER;
    CREATE TABLE superseded_keys (
        user_id INTEGER NOT NULL,
        daemon_id TEXT NOT NULL,
        credential_id INTEGER NOT NULL,
        PRIMARY KEY (user_id, daemon_id, credential_id)
    );
    CREATE INDEX superseded_by_credential ON superseded_keys(credential_id);
    CREATE INDEX daemons_by_credential ON daemons(credential_id);
    )sql",
    // Issue 14: an access token is a credential of an agent identity, a name
    // unique per user; daemons see the name as the agent's id, so a new token
    // of the same identity owns the same jobs and callbacks. Daemons recorded
    // "cred-<id>" for jobs submitted before this, and cannot be rewritten from
    // here: each existing access token becomes an identity of that name.
    R"sql(
    CREATE TABLE agents (
        user_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (user_id, name)
    );
    ALTER TABLE credentials ADD COLUMN agent TEXT;
    CREATE INDEX credentials_by_agent ON credentials(user_id, agent);
    INSERT INTO agents (user_id, name, created_at)
        SELECT user_id, 'cred-' || id, created_at FROM credentials WHERE kind = 'access';
    UPDATE credentials SET agent = 'cred-' || id WHERE kind = 'access';
    )sql",
    // Issue 14: a registration carries its skill's text (up to 64 KiB) for
    // agents to read; kept out of `info` so listing daemons does not load it.
    R"sql(
    ALTER TABLE daemons ADD COLUMN skill_version TEXT NOT NULL DEFAULT '';
    ALTER TABLE daemons ADD COLUMN skill_text TEXT NOT NULL DEFAULT '';
    )sql",
    // Issue 16: several instances on one database (hpc-relay --cluster-url):
    // each says it is alive, and which daemons are connected to it; a
    // callback names the instance that stored it (the others deliver it); a
    // revoked credential or deleted registration is recorded for the others
    // to close their connections of it.
    R"sql(
    CREATE TABLE relay_instances (
        url TEXT PRIMARY KEY,
        alive_at REAL NOT NULL
    );
    CREATE TABLE daemon_presence (
        user_id INTEGER NOT NULL,
        daemon_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        since REAL NOT NULL,
        PRIMARY KEY (user_id, daemon_id)
    );
    CREATE INDEX daemon_presence_by_instance ON daemon_presence(instance);
    ALTER TABLE callbacks ADD COLUMN received_by TEXT NOT NULL DEFAULT '';
    CREATE TABLE cluster_drops (
        seq INTEGER PRIMARY KEY,
        credential_id INTEGER,
        user_id INTEGER,
        daemon_id TEXT,
        why TEXT NOT NULL,
        dropped_by TEXT NOT NULL,
        at REAL NOT NULL
    );
    )sql",
    // Issue 18: the MCP authorization flow (OAuth 2.1). Clients register
    // themselves (dynamic client registration); a grant is an authorization
    // code (single use, minutes) or a refresh token (rotated on each use),
    // kept as the hash of its secret.
    R"sql(
    CREATE TABLE oauth_clients (
        client_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        redirect_uris TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE oauth_grants (
        secret_hash TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('code', 'refresh')),
        client_id TEXT NOT NULL,
        user_id INTEGER NOT NULL REFERENCES users(id),
        agent TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        challenge TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX oauth_grants_by_expiry ON oauth_grants(expires_at);
    )sql",
};

// The same schema on PostgreSQL, whose steps start from SQLite's seventh:
// ids are identity columns, times epoch seconds in double precision, and
// callbacks carry `seq`, the order they arrived in (SQLite's rowid). A
// change to the schema adds a step to both lists.
const std::vector<sqlite::Migration> kPostgresMigrations = {
    R"sql(
    CREATE TABLE users (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE signins (
        token_hash TEXT PRIMARY KEY,
        user_id BIGINT NOT NULL REFERENCES users(id),
        code_hash TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        used INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX signins_by_user ON signins(user_id, created_at);
    CREATE INDEX signins_by_expiry ON signins(expires_at);
    CREATE TABLE credentials (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        user_id BIGINT NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL CHECK (kind IN ('access', 'api_key')),
        secret_hash TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        agent TEXT
    );
    CREATE INDEX credentials_by_expiry ON credentials(expires_at);
    CREATE INDEX credentials_by_agent ON credentials(user_id, agent);
    CREATE TABLE daemons (
        user_id BIGINT NOT NULL REFERENCES users(id),
        daemon_id TEXT NOT NULL,
        info TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        credential_id BIGINT,
        skill_version TEXT NOT NULL DEFAULT '',
        skill_text TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (user_id, daemon_id)
    );
    CREATE INDEX daemons_by_credential ON daemons(credential_id);
    CREATE TABLE superseded_keys (
        user_id BIGINT NOT NULL,
        daemon_id TEXT NOT NULL,
        credential_id BIGINT NOT NULL,
        PRIMARY KEY (user_id, daemon_id, credential_id)
    );
    CREATE INDEX superseded_by_credential ON superseded_keys(credential_id);
    CREATE TABLE agents (
        user_id BIGINT NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (user_id, name)
    );
    CREATE TABLE callbacks (
        user_id BIGINT NOT NULL,
        daemon_id TEXT NOT NULL,
        callback_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        agent_id TEXT NOT NULL DEFAULT '',
        job_id TEXT NOT NULL DEFAULT '',
        acked_at DOUBLE PRECISION,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        PRIMARY KEY (user_id, daemon_id, callback_id)
    );
    CREATE INDEX callbacks_by_agent ON callbacks(user_id, agent_id, acked_at);
    CREATE INDEX callbacks_by_ack ON callbacks(acked_at);
    )sql",
    R"sql(
    CREATE TABLE relay_instances (
        url TEXT PRIMARY KEY,
        alive_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE daemon_presence (
        user_id BIGINT NOT NULL,
        daemon_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        since DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (user_id, daemon_id)
    );
    CREATE INDEX daemon_presence_by_instance ON daemon_presence(instance);
    ALTER TABLE callbacks ADD COLUMN received_by TEXT NOT NULL DEFAULT '';
    CREATE INDEX callbacks_by_seq ON callbacks(seq);
    CREATE TABLE cluster_drops (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        credential_id BIGINT,
        user_id BIGINT,
        daemon_id TEXT,
        why TEXT NOT NULL,
        dropped_by TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    )sql",
    R"sql(
    CREATE TABLE oauth_clients (
        client_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        redirect_uris TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE oauth_grants (
        secret_hash TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('code', 'refresh')),
        client_id TEXT NOT NULL,
        user_id BIGINT NOT NULL REFERENCES users(id),
        agent TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        challenge TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX oauth_grants_by_expiry ON oauth_grants(expires_at);
    )sql",
};

/// The order callbacks arrived in: SQLite's rowid, PostgreSQL's seq column.
const char* callbackSeq(const sql::Connection& db) { return db.dialect() == sql::Dialect::SQLite ? "rowid" : "seq"; }

/// The database's clock in epoch seconds: instances compare liveness on one
/// clock, whatever their hosts' clocks say.
const char* dbNow(const sql::Connection& db) {
    return db.dialect() == sql::Dialect::SQLite ? "((julianday('now') - 2440587.5) * 86400.0)"
                                                : "EXTRACT(EPOCH FROM clock_timestamp())";
}

Registration readRegistration(sql::Statement& st) {
    Registration r;
    r.daemonId = st.text(0);
    json::error_code ec;
    auto v = json::parse(st.text(1), ec);
    if (!ec && v.is_object()) r.info = v.get_object();
    r.createdAt = st.real(2);
    r.updatedAt = st.real(3);
    r.skillVersion = st.text(4);
    r.skillText = st.text(5);
    return r;
}

}  // namespace

std::string sha256Hex(const std::string& data) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) {
        out += kHex[digest[i] >> 4];
        out += kHex[digest[i] & 15];
    }
    return out;
}

const std::vector<sqlite::Migration>& RelayDb::migrations() { return kMigrations; }

const std::vector<sqlite::Migration>& RelayDb::postgresMigrations() { return kPostgresMigrations; }

RelayDb::RelayDb(const std::string& path) : RelayDb(sql::openSqlite(path)) {}

RelayDb::RelayDb(std::unique_ptr<sql::Connection> connection) : m_db(std::move(connection)) {
    sql::migrate(*m_db, m_db->dialect() == sql::Dialect::SQLite ? kMigrations : kPostgresMigrations);
}

/// Around each write: the first one that changes rows after a full disk
/// says the disk is writable again.
class RelayDb::Writing {
public:
    explicit Writing(RelayDb& db)
        : m_db(db), m_changes(db.m_db->totalChanges()), m_exceptions(std::uncaught_exceptions()) {}
    ~Writing() {
        if (m_db.m_fullSince == 0 || std::uncaught_exceptions() != m_exceptions ||
            m_db.m_db->totalChanges() == m_changes)
            return;
        log::notice(m_db.m_db->describe() + " is writable again after " +
                    std::to_string(static_cast<long long>(nowEpochSeconds() - m_db.m_fullSince)) +
                    " s of a full disk or quota");
        m_db.m_fullSince = 0;
    }
    Writing(const Writing&) = delete;
    Writing& operator=(const Writing&) = delete;

private:
    RelayDb& m_db;
    std::int64_t m_changes;
    int m_exceptions;
};

void RelayDb::refuseFull(const sql::StorageFull& e) {
    if (m_fullSince == 0) {
        m_fullSince = nowEpochSeconds();
        log::warning(m_db->describe() + ": the disk or quota is full (" + e.what() +
                     "); sign-ins, new credentials, registrations and callbacks are refused (HTTP 507, "
                     "STORAGE_FULL) until space is freed there");
    }
    // The path is for the operator's log, not for every client.
    throw Error(ErrorCode::StorageFull,
                "the relay's disk or quota is full, so it cannot record this now; nothing was changed, try again "
                "later");
}

RelayPruneReport RelayDb::prune(double now) {
    RelayPruneReport report;
    auto batched = [&](const std::string& sql, double before) {
        std::int64_t total = 0;
        for (;;) {
            sql::Transaction tx(*m_db);
            auto st = m_db->prepare(sql);
            st.bind(1, before);
            st.run();
            auto n = m_db->changes();
            tx.commit();
            total += n;
            if (n < 500) return total;
        }
    };
    double expired = now - m_retention.expiredSeconds;
    report.signins = batched(
        "DELETE FROM signins WHERE token_hash IN (SELECT token_hash FROM signins WHERE expires_at < ?1 LIMIT 500)",
        expired);
    // Only access tokens expire; API keys (expires_at NULL) stay until deleted.
    report.credentials = batched(
        "DELETE FROM credentials WHERE id IN (SELECT id FROM credentials WHERE expires_at IS NOT NULL AND "
        "expires_at < ?1 LIMIT 500)",
        expired);
    report.callbacks = batched(
        "DELETE FROM callbacks WHERE (user_id, daemon_id, callback_id) IN (SELECT user_id, daemon_id, callback_id "
        "FROM callbacks WHERE acked_at IS NOT NULL AND acked_at < ?1 LIMIT 500)",
        now - m_retention.callbackSeconds);
    batched(
        "DELETE FROM oauth_grants WHERE secret_hash IN (SELECT secret_hash FROM oauth_grants WHERE "
        "expires_at < ?1 LIMIT 500)",
        now);
    // Applied by every live instance within seconds; a day is plenty.
    batched("DELETE FROM cluster_drops WHERE seq IN (SELECT seq FROM cluster_drops WHERE at < ?1 LIMIT 500)",
            now - 86400);
    m_db->compact();
    return report;
}

std::string RelayDb::registerOAuthClient(const std::string& name, const std::vector<std::string>& redirectUris) try {
    Writing writing(*this);
    json::array uris;
    for (const auto& u : redirectUris) uris.emplace_back(u);
    std::string id = "mcp-" + randomHex(16);
    m_db->prepare("INSERT INTO oauth_clients (client_id, name, redirect_uris, created_at) VALUES (?1, ?2, ?3, ?4)")
        .bind(1, id)
        .bind(2, name)
        .bind(3, json::serialize(uris))
        .bind(4, nowEpochSeconds())
        .run();
    return id;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

std::optional<OAuthClient> RelayDb::oauthClient(const std::string& clientId) {
    auto st = m_db->prepare("SELECT name, redirect_uris FROM oauth_clients WHERE client_id = ?1");
    st.bind(1, clientId);
    if (!st.step()) return std::nullopt;
    OAuthClient c{clientId, st.text(0), {}};
    json::error_code ec;
    auto uris = json::parse(st.text(1), ec);
    if (!ec && uris.is_array())
        for (const auto& u : uris.get_array())
            if (u.is_string()) c.redirectUris.emplace_back(u.get_string());
    return c;
}

Secret RelayDb::storeOAuthGrant(const OAuthGrant& g, double lifetime) try {
    Writing writing(*this);
    Secret secret((g.kind == "code" ? "hpcc_" : "hpcr_") + randomHex(32));
    m_db->prepare(
            "INSERT INTO oauth_grants (secret_hash, kind, client_id, user_id, agent, redirect_uri, challenge, "
            "expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
        .bind(1, sha256Hex(secret.reveal()))
        .bind(2, g.kind)
        .bind(3, g.clientId)
        .bind(4, g.userId)
        .bind(5, g.agent)
        .bind(6, g.redirectUri)
        .bind(7, g.challenge)
        .bind(8, nowEpochSeconds() + lifetime)
        .run();
    return secret;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

std::optional<OAuthGrant> RelayDb::takeOAuthGrant(const Secret& secret, const std::string& kind) try {
    if (secret.empty() || secret.reveal().size() > 256) return std::nullopt;
    Writing writing(*this);
    sql::Transaction tx(*m_db);
    auto hash = sha256Hex(secret.reveal());
    auto st = m_db->prepare(
        "SELECT client_id, user_id, agent, redirect_uri, challenge, expires_at FROM oauth_grants WHERE "
        "secret_hash = ?1 AND kind = ?2");
    st.bind(1, hash).bind(2, kind);
    if (!st.step()) return std::nullopt;
    OAuthGrant g{kind, st.text(0), st.int64(1), st.text(2), st.text(3), st.text(4)};
    bool live = st.real(5) >= nowEpochSeconds();
    m_db->prepare("DELETE FROM oauth_grants WHERE secret_hash = ?1").bind(1, hash).run();
    tx.commit();
    if (!live) return std::nullopt;
    return g;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

void RelayDb::maybePrune(double now) {
    if (now - m_lastPrune < m_retention.intervalSeconds) return;
    m_lastPrune = now;
    try {
        auto r = prune(now);
        if (r.signins + r.credentials + r.callbacks > 0)
            log::info("relay.db pruned: " + std::to_string(r.signins) + " sign-in codes, " +
                      std::to_string(r.credentials) + " expired tokens, " + std::to_string(r.callbacks) +
                      " acknowledged callbacks");
    } catch (const std::exception& e) {
        log::warning(std::string("pruning relay.db failed, will retry: ") + e.what());
    }
}

std::optional<Secret> RelayDb::startSignin(const std::string& email, const Secret& code) try {
    Writing writing(*this);
    double now = nowEpochSeconds();
    sql::Transaction tx(*m_db);
    auto ins = m_db->prepare("INSERT INTO users (email, created_at) VALUES (?1, ?2) ON CONFLICT(email) DO NOTHING");
    ins.bind(1, email).bind(2, now).run();
    auto sel = m_db->prepare("SELECT id FROM users WHERE email = ?1");
    sel.bind(1, email);
    sel.step();
    std::int64_t userId = sel.int64(0);
    auto count = m_db->prepare("SELECT COUNT(*) FROM signins WHERE user_id = ?1 AND created_at > ?2");
    count.bind(1, userId).bind(2, now - kCodeLifetime);
    count.step();
    if (count.int64(0) >= kMaxSigninsPerWindow) return std::nullopt;
    Secret token(randomHex(24));
    auto add = m_db->prepare(
        "INSERT INTO signins (token_hash, user_id, code_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)");
    add.bind(1, sha256Hex(token.reveal()))
        .bind(2, userId)
        .bind(3, sha256Hex(token.reveal() + ":" + code.reveal()))
        .bind(4, now)
        .bind(5, now + kCodeLifetime)
        .run();
    tx.commit();
    return token;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

VerifyOutcome RelayDb::verifyCode(const Secret& token, const Secret& code, std::int64_t& userId) try {
    Writing writing(*this);
    double now = nowEpochSeconds();
    sql::Transaction tx(*m_db);
    auto sel =
        m_db->prepare("SELECT user_id, code_hash, expires_at, attempts, used FROM signins WHERE token_hash = ?1");
    std::string tokenHash = sha256Hex(token.reveal());
    sel.bind(1, tokenHash);
    if (!sel.step()) return VerifyOutcome::UnknownToken;
    std::int64_t user = sel.int64(0);
    std::string codeHash = sel.text(1);
    double expires = sel.real(2);
    auto attempts = sel.int64(3);
    bool used = sel.int64(4) != 0;
    if (used) return VerifyOutcome::UnknownToken;
    if (now > expires) return VerifyOutcome::Expired;
    if (attempts >= kMaxVerifyAttempts) return VerifyOutcome::TooManyAttempts;
    bool match = sha256Hex(token.reveal() + ":" + code.reveal()) == codeHash;
    auto upd = m_db->prepare("UPDATE signins SET attempts = attempts + 1, used = ?2 WHERE token_hash = ?1");
    upd.bind(1, tokenHash).bind(2, match ? 1 : 0).run();
    tx.commit();
    if (!match) return attempts + 1 >= kMaxVerifyAttempts ? VerifyOutcome::TooManyAttempts : VerifyOutcome::WrongCode;
    userId = user;
    return VerifyOutcome::Ok;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

std::pair<std::int64_t, Secret> RelayDb::issueCredential(std::int64_t userId, const std::string& kind,
                                                         std::optional<double> lifetime) try {
    Writing writing(*this);
    double now = nowEpochSeconds();
    Secret secret((kind == "api_key" ? "hpcd_" : "hpca_") + randomHex(32));
    auto st = m_db->prepare(
        "INSERT INTO credentials (user_id, kind, secret_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)");
    st.bind(1, userId).bind(2, kind).bind(3, sha256Hex(secret.reveal())).bind(4, now);
    if (lifetime)
        st.bind(5, now + *lifetime);
    else
        st.bindNull(5);
    st.run();
    return {m_db->lastInsertId(), std::move(secret)};
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

std::optional<Principal> RelayDb::authenticate(const Secret& bearer) {
    if (bearer.empty() || bearer.reveal().size() > 256) return std::nullopt;
    auto st = m_db->prepare("SELECT id, user_id, kind, expires_at, agent FROM credentials WHERE secret_hash = ?1");
    st.bind(1, sha256Hex(bearer.reveal()));
    if (!st.step()) return std::nullopt;
    if (!st.isNull(3) && st.real(3) < nowEpochSeconds()) return std::nullopt;
    Principal p;
    p.userId = st.int64(1);
    p.credentialId = st.int64(0);
    p.kind = st.text(2);
    if (!st.isNull(4)) p.agent = st.text(4);
    if (!st.isNull(3)) p.expiresAt = st.real(3);
    return p;
}

std::optional<double> RelayDb::expiredAt(const Secret& bearer) {
    if (bearer.empty() || bearer.reveal().size() > 256) return std::nullopt;
    auto st = m_db->prepare("SELECT expires_at FROM credentials WHERE secret_hash = ?1 AND expires_at < ?2");
    st.bind(1, sha256Hex(bearer.reveal())).bind(2, nowEpochSeconds());
    if (!st.step()) return std::nullopt;
    return st.real(0);
}

std::pair<std::int64_t, Secret> RelayDb::issueAccessToken(std::int64_t userId, const std::string& agentName) try {
    if (!isValidDaemonId(agentName))
        throw Error(ErrorCode::BadRequest,
                    "agent names are 1-64 characters of A-Z a-z 0-9 . _ - (not starting with . or -)");
    Writing writing(*this);
    double now = nowEpochSeconds();
    sql::Transaction tx(*m_db);
    auto known = m_db->prepare("SELECT 1 FROM agents WHERE user_id = ?1 AND name = ?2");
    known.bind(1, userId).bind(2, agentName);
    if (!known.step()) {
        if (agentName.rfind(kMigratedAgentPrefix, 0) == 0)
            throw Error(ErrorCode::BadRequest, "agent names starting with \"" + std::string(kMigratedAgentPrefix) +
                                                   "\" are those of tokens from before agent identities; there is no "
                                                   "agent " +
                                                   agentName + " to sign in as");
        auto add = m_db->prepare("INSERT INTO agents (user_id, name, created_at) VALUES (?1, ?2, ?3)");
        add.bind(1, userId).bind(2, agentName).bind(3, now).run();
    }
    auto issued = issueCredential(userId, "access", kAccessTokenLifetime);
    auto bind = m_db->prepare("UPDATE credentials SET agent = ?2 WHERE id = ?1");
    bind.bind(1, issued.first).bind(2, agentName).run();
    tx.commit();
    return issued;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

std::vector<AgentIdentity> RelayDb::agents(std::int64_t userId) {
    auto st = m_db->prepare(
        "SELECT a.name, a.created_at, (SELECT COUNT(*) FROM credentials c WHERE c.user_id = a.user_id AND c.agent = "
        "a.name AND c.expires_at >= ?2) FROM agents a WHERE a.user_id = ?1 ORDER BY a.name");
    st.bind(1, userId).bind(2, nowEpochSeconds());
    std::vector<AgentIdentity> out;
    while (st.step()) out.push_back(AgentIdentity{st.text(0), st.real(1), st.int64(2)});
    return out;
}

std::string RelayDb::email(std::int64_t userId) {
    auto st = m_db->prepare("SELECT email FROM users WHERE id = ?1");
    st.bind(1, userId);
    return st.step() ? st.text(0) : std::string();
}

bool RelayDb::putDaemon(std::int64_t userId, const std::string& daemonId, const json::object& info,
                        std::int64_t apiKeyId) try {
    Writing writing(*this);
    double now = nowEpochSeconds();
    sql::Transaction tx(*m_db);
    bool existed = daemon(userId, daemonId).has_value();
    // A skill object is stored as its name in `info` (what a string skill
    // is) and its version and text in their columns; a string skill has none.
    json::object stored = info;
    std::string skillVersion, skillText;
    if (auto* s = stored.if_contains("skill"); s && s->is_object()) {
        const auto& skill = s->get_object();
        skillText = skill.at("text").as_string();
        auto* v = skill.if_contains("version");
        skillVersion = v && v->is_string() && !v->get_string().empty() ? std::string(v->get_string())
                                                                       : skill::versionOf(skillText);
        json::string name = skill.at("name").as_string();
        stored["skill"] = std::move(name);
    }
    auto st = m_db->prepare(
        "INSERT INTO daemons (user_id, daemon_id, info, created_at, updated_at, skill_version, skill_text) "
        "VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6) "
        "ON CONFLICT(user_id, daemon_id) DO UPDATE SET info = ?3, updated_at = ?4, skill_version = ?5, "
        "skill_text = ?6");
    st.bind(1, userId)
        .bind(2, daemonId)
        .bind(3, json::serialize(stored))
        .bind(4, now)
        .bind(5, skillVersion)
        .bind(6, skillText)
        .run();
    if (apiKeyId != 0) bindKey(userId, daemonId, apiKeyId);
    tx.commit();
    return !existed;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

std::optional<std::int64_t> RelayDb::boundKey(std::int64_t userId, const std::string& daemonId) {
    auto st = m_db->prepare("SELECT credential_id FROM daemons WHERE user_id = ?1 AND daemon_id = ?2");
    st.bind(1, userId).bind(2, daemonId);
    if (!st.step() || st.isNull(0)) return std::nullopt;
    return st.int64(0);
}

bool RelayDb::isSuperseded(std::int64_t userId, const std::string& daemonId, std::int64_t credentialId) {
    auto st =
        m_db->prepare("SELECT 1 FROM superseded_keys WHERE user_id = ?1 AND daemon_id = ?2 AND credential_id = ?3");
    st.bind(1, userId).bind(2, daemonId).bind(3, credentialId);
    return st.step();
}

bool RelayDb::isUnbound(std::int64_t userId, std::int64_t credentialId) {
    auto st = m_db->prepare(
        "SELECT 1 FROM daemons WHERE user_id = ?1 AND credential_id = ?2 "
        "UNION ALL SELECT 1 FROM superseded_keys WHERE user_id = ?1 AND credential_id = ?2 LIMIT 1");
    st.bind(1, userId).bind(2, credentialId);
    return !st.step();
}

void RelayDb::bindKey(std::int64_t userId, const std::string& daemonId, std::int64_t keyId) {
    auto bound = boundKey(userId, daemonId);
    if (bound == keyId) return;
    if (bound) {
        auto keep = m_db->prepare(
            "INSERT INTO superseded_keys (user_id, daemon_id, credential_id) VALUES (?1, ?2, ?3) ON CONFLICT DO "
            "NOTHING");
        keep.bind(1, userId).bind(2, daemonId).bind(3, *bound).run();
    }
    auto forget =
        m_db->prepare("DELETE FROM superseded_keys WHERE user_id = ?1 AND daemon_id = ?2 AND credential_id = ?3");
    forget.bind(1, userId).bind(2, daemonId).bind(3, keyId).run();
    auto st = m_db->prepare("UPDATE daemons SET credential_id = ?3 WHERE user_id = ?1 AND daemon_id = ?2");
    st.bind(1, userId).bind(2, daemonId).bind(3, keyId).run();
}

std::pair<std::int64_t, Secret> RelayDb::rotateDaemonKey(std::int64_t userId, const std::string& daemonId,
                                                         const Principal& by) try {
    Writing writing(*this);
    sql::Transaction tx(*m_db);
    // A key the registration was not bound to yet (registered before keys
    // were bound, or by an access token) is replaced as well.
    if (by.kind == "api_key" && !boundKey(userId, daemonId)) bindKey(userId, daemonId, by.credentialId);
    auto issued = issueCredential(userId, "api_key", std::nullopt);
    bindKey(userId, daemonId, issued.first);
    tx.commit();
    return issued;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

std::vector<std::int64_t> RelayDb::daemonConnected(std::int64_t userId, const std::string& daemonId,
                                                   std::int64_t credentialId) try {
    auto bound = boundKey(userId, daemonId);
    if (bound && *bound != credentialId) return {};  // an older key: the rotation is not finished
    std::vector<std::int64_t> superseded;
    auto st = m_db->prepare("SELECT credential_id FROM superseded_keys WHERE user_id = ?1 AND daemon_id = ?2");
    st.bind(1, userId).bind(2, daemonId);
    while (st.step()) superseded.push_back(st.int64(0));
    if (bound && superseded.empty()) return {};
    Writing writing(*this);
    sql::Transaction tx(*m_db);
    if (!bound) bindKey(userId, daemonId, credentialId);
    auto clear = m_db->prepare("DELETE FROM superseded_keys WHERE user_id = ?1 AND daemon_id = ?2");
    clear.bind(1, userId).bind(2, daemonId).run();
    auto revoked = revokeUnlessBound(superseded);
    tx.commit();
    return revoked;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

std::vector<std::int64_t> RelayDb::revokeUnlessBound(const std::vector<std::int64_t>& keys) {
    std::vector<std::int64_t> revoked;
    for (auto id : keys) {
        auto inUse = m_db->prepare("SELECT 1 FROM daemons WHERE credential_id = ?1");
        inUse.bind(1, id);
        if (inUse.step()) continue;  // another registration is bound to it (a key shared by hand)
        if (deleteCredential(id)) revoked.push_back(id);
    }
    return revoked;
}

bool RelayDb::deleteCredential(std::int64_t credentialId) {
    auto st = m_db->prepare("DELETE FROM credentials WHERE id = ?1");
    st.bind(1, credentialId).run();
    bool deleted = m_db->changes() > 0;
    auto forget = m_db->prepare("DELETE FROM superseded_keys WHERE credential_id = ?1");
    forget.bind(1, credentialId).run();
    return deleted;
}

bool RelayDb::revokeCredential(std::int64_t credentialId) try {
    Writing writing(*this);
    sql::Transaction tx(*m_db);
    bool deleted = deleteCredential(credentialId);
    tx.commit();
    return deleted;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

std::vector<Registration> RelayDb::daemons(std::int64_t userId) {
    auto st = m_db->prepare(
        "SELECT daemon_id, info, created_at, updated_at, skill_version, '' FROM daemons WHERE user_id = ?1 "
        "ORDER BY daemon_id");
    st.bind(1, userId);
    std::vector<Registration> out;
    while (st.step()) out.push_back(readRegistration(st));
    return out;
}

std::optional<Registration> RelayDb::daemon(std::int64_t userId, const std::string& daemonId) {
    auto st = m_db->prepare(
        "SELECT daemon_id, info, created_at, updated_at, skill_version, skill_text FROM daemons "
        "WHERE user_id = ?1 AND daemon_id = ?2");
    st.bind(1, userId).bind(2, daemonId);
    if (!st.step()) return std::nullopt;
    return readRegistration(st);
}

std::optional<std::vector<std::int64_t>> RelayDb::deleteDaemon(std::int64_t userId, const std::string& daemonId) try {
    Writing writing(*this);
    sql::Transaction tx(*m_db);
    std::vector<std::int64_t> keys;
    if (auto bound = boundKey(userId, daemonId)) keys.push_back(*bound);
    auto sup = m_db->prepare("SELECT credential_id FROM superseded_keys WHERE user_id = ?1 AND daemon_id = ?2");
    sup.bind(1, userId).bind(2, daemonId);
    while (sup.step()) keys.push_back(sup.int64(0));
    auto st = m_db->prepare("DELETE FROM daemons WHERE user_id = ?1 AND daemon_id = ?2");
    st.bind(1, userId).bind(2, daemonId).run();
    if (m_db->changes() == 0) return std::nullopt;
    auto clear = m_db->prepare("DELETE FROM superseded_keys WHERE user_id = ?1 AND daemon_id = ?2");
    clear.bind(1, userId).bind(2, daemonId).run();
    auto revoked = revokeUnlessBound(keys);
    tx.commit();
    return revoked;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

bool RelayDb::recordCallback(std::int64_t userId, const std::string& daemonId, const std::string& callbackId,
                             const json::object& payload, const std::string& receivedBy) try {
    Writing writing(*this);
    auto field = [&payload](const char* name) {
        const auto* v = payload.if_contains(name);
        return v && v->is_string() ? std::string(v->get_string()) : std::string();
    };
    sql::Durable durable(*m_db);  // acknowledged next: the daemon then forgets it
    // In a transaction (on PostgreSQL, under the writers' lock): callbacks
    // become visible in the order of their `seq`, which callbacksSince needs.
    sql::Transaction tx(*m_db);
    auto st = m_db->prepare(
        "INSERT INTO callbacks (user_id, daemon_id, callback_id, payload, received_at, agent_id, job_id, "
        "received_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING");
    st.bind(1, userId)
        .bind(2, daemonId)
        .bind(3, callbackId)
        .bind(4, json::serialize(payload))
        .bind(5, nowEpochSeconds());
    st.bind(6, field("agent_id")).bind(7, field("job_id")).bind(8, receivedBy);
    st.run();
    bool isNew = m_db->changes() > 0;
    tx.commit();
    return isNew;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

std::vector<StoredCallback> RelayDb::callbacks(std::int64_t userId, const CallbackQuery& q) {
    auto st = m_db->prepare(
        std::string("SELECT daemon_id, payload, CASE WHEN acked_at IS NULL THEN 0 ELSE 1 END, ") + callbackSeq(*m_db) +
        " FROM callbacks WHERE "
        "user_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR daemon_id = ?2) AND (CAST(?3 AS TEXT) IS NULL OR "
        "agent_id = ?3) AND (CAST(?4 AS TEXT) IS NULL OR job_id = ?4) AND (?5 = 0 OR acked_at IS NULL) "
        "ORDER BY received_at, " +
        callbackSeq(*m_db));
    st.bind(1, userId).bind(2, q.daemonId).bind(3, q.agentId).bind(4, q.jobId).bind(5, q.unackedOnly ? 1 : 0);
    std::vector<StoredCallback> out;
    while (st.step()) {
        json::error_code ec;
        auto v = json::parse(st.text(1), ec);
        if (ec || !v.is_object()) continue;
        out.push_back(StoredCallback{st.text(0), v.get_object(), st.int64(2) != 0, st.int64(3)});
    }
    return out;
}

std::int64_t RelayDb::unackedCallbackCount() {
    auto st = m_db->prepare("SELECT COUNT(*) FROM callbacks WHERE acked_at IS NULL");
    return st.step() ? st.int64(0) : 0;
}

bool RelayDb::ackCallback(std::int64_t userId, const std::string& agentId, const std::string& callbackId) try {
    Writing writing(*this);
    auto st = m_db->prepare(
        "UPDATE callbacks SET acked_at = COALESCE(acked_at, ?4) WHERE user_id = ?1 AND agent_id = ?2 AND callback_id = "
        "?3");
    st.bind(1, userId).bind(2, agentId).bind(3, callbackId).bind(4, nowEpochSeconds());
    st.run();
    return m_db->changes() > 0;
} catch (const sql::StorageFull& e) {
    refuseFull(e);
}

}  // namespace hpc::relay

namespace hpc::relay {

// ---------------------------------------------------------- several instances

void RelayDb::instanceAlive(const std::string& instance) {
    auto st = m_db->prepare(std::string("INSERT INTO relay_instances (url, alive_at) VALUES (?1, ") + dbNow(*m_db) +
                            ") ON CONFLICT (url) DO UPDATE SET alive_at = excluded.alive_at");
    st.bind(1, instance).run();
}

void RelayDb::forgetInstance(const std::string& instance) {
    m_db->prepare("DELETE FROM daemon_presence WHERE instance = ?1").bind(1, instance).run();
}

void RelayDb::instanceGone(const std::string& instance) {
    sql::Transaction tx(*m_db);
    forgetInstance(instance);
    m_db->prepare("DELETE FROM relay_instances WHERE url = ?1").bind(1, instance).run();
    tx.commit();
}

void RelayDb::daemonPresent(std::int64_t userId, const std::string& daemonId, const std::string& instance,
                            double since) {
    // A later connection wins: an instance recording an older one again
    // (after the database was away) does not take the daemon back.
    auto st = m_db->prepare(
        "INSERT INTO daemon_presence (user_id, daemon_id, instance, since) VALUES (?1, ?2, ?3, ?4) "
        "ON CONFLICT (user_id, daemon_id) DO UPDATE SET instance = excluded.instance, since = excluded.since "
        "WHERE daemon_presence.since <= excluded.since");
    st.bind(1, userId).bind(2, daemonId).bind(3, instance).bind(4, since).run();
}

void RelayDb::daemonAbsent(std::int64_t userId, const std::string& daemonId, const std::string& instance) {
    auto st = m_db->prepare("DELETE FROM daemon_presence WHERE user_id = ?1 AND daemon_id = ?2 AND instance = ?3");
    st.bind(1, userId).bind(2, daemonId).bind(3, instance).run();
}

std::optional<Presence> RelayDb::presence(std::int64_t userId, const std::string& daemonId, double maxSilence) {
    auto st = m_db->prepare(std::string("SELECT p.instance, p.since FROM daemon_presence p JOIN relay_instances i ON "
                                        "i.url = p.instance WHERE p.user_id = ?1 AND p.daemon_id = ?2 AND "
                                        "i.alive_at > ") +
                            dbNow(*m_db) + " - ?3");
    st.bind(1, userId).bind(2, daemonId).bind(3, maxSilence);
    if (!st.step()) return std::nullopt;
    return Presence{st.text(0), st.real(1)};
}

void RelayDb::recordDrop(const ClusterDrop& drop, const std::string& droppedBy) {
    auto st = m_db->prepare(
        "INSERT INTO cluster_drops (credential_id, user_id, daemon_id, why, dropped_by, at) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
    if (drop.credentialId)
        st.bind(1, drop.credentialId);
    else
        st.bindNull(1);
    if (drop.daemonId.empty()) {
        st.bindNull(2).bindNull(3);
    } else {
        st.bind(2, drop.userId).bind(3, drop.daemonId);
    }
    st.bind(4, drop.why).bind(5, droppedBy).bind(6, nowEpochSeconds()).run();
}

std::int64_t RelayDb::lastDropSeq() {
    auto st = m_db->prepare("SELECT COALESCE(MAX(seq), 0) FROM cluster_drops");
    return st.step() ? st.int64(0) : 0;
}

std::vector<ClusterDrop> RelayDb::dropsSince(std::int64_t afterSeq, const std::string& notBy) {
    auto st = m_db->prepare(
        "SELECT seq, COALESCE(credential_id, 0), COALESCE(user_id, 0), COALESCE(daemon_id, ''), why, dropped_by "
        "FROM cluster_drops WHERE seq > ?1 ORDER BY seq LIMIT 1000");
    st.bind(1, afterSeq);
    std::vector<ClusterDrop> out;
    while (st.step()) {
        ClusterDrop d;
        d.seq = st.int64(0);
        // Another's only: the instance that dropped it has done so.
        if (st.text(5) != notBy) {
            d.credentialId = st.int64(1);
            d.userId = st.int64(2);
            d.daemonId = st.text(3);
            d.why = st.text(4);
        }
        out.push_back(std::move(d));
    }
    return out;
}

std::int64_t RelayDb::lastCallbackSeq() {
    auto st = m_db->prepare(std::string("SELECT COALESCE(MAX(") + callbackSeq(*m_db) + "), 0) FROM callbacks");
    return st.step() ? st.int64(0) : 0;
}

std::vector<ClusterCallback> RelayDb::callbacksSince(std::int64_t afterSeq, const std::string& notBy, int limit) {
    const char* seq = callbackSeq(*m_db);
    auto st = m_db->prepare(std::string("SELECT ") + seq +
                            ", user_id, daemon_id, payload, received_by FROM callbacks WHERE " + seq +
                            " > ?1 ORDER BY " + seq + " LIMIT ?2");
    st.bind(1, afterSeq).bind(2, static_cast<std::int64_t>(limit));
    std::vector<ClusterCallback> out;
    while (st.step()) {
        ClusterCallback cb;
        cb.seq = st.int64(0);
        // Skipped, but counted: the next pass starts after them.
        if (st.text(4) != notBy) {
            json::error_code ec;
            auto v = json::parse(st.text(3), ec);
            if (!ec && v.is_object()) {
                cb.userId = st.int64(1);
                cb.daemonId = st.text(2);
                cb.payload = std::move(v.get_object());
            }
        }
        out.push_back(std::move(cb));
    }
    return out;
}

}  // namespace hpc::relay
