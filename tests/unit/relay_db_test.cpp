// hpc-relay's database: agent identities (issue 14 item 4) and the migration
// that gives tokens from before them an identity each; pruning and several
// relay instances on one database (issue 16). Real SQLite files, and a real
// PostgreSQL server (scripts/postgres-server.sh, ctest's fixture `postgres`).
#include "relay_db.hpp"
#include "errors.hpp"
#include "postgres.hpp"
#include "sqlite.hpp"
#include "util.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <thread>

using namespace hpc;
using namespace hpc::relay;
namespace json = boost::json;

namespace {

class RelayDbTest : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/hpc-relay-db-XXXXXX";
        ASSERT_TRUE(::mkdtemp(tmpl));
        m_dir = tmpl;
    }
    void TearDown() override { std::filesystem::remove_all(m_dir); }

    std::string path() const { return m_dir + "/relay.db"; }
    static std::int64_t newUser(RelayDb& db, const std::string& email) {
        EXPECT_TRUE(db.startSignin(email, Secret("123456")));
        return db.rawDb().queryInt("SELECT id FROM users WHERE email = '" + email + "'");
    }
    static ErrorCode refusal(RelayDb& db, std::int64_t user, const std::string& name) {
        try {
            db.issueAccessToken(user, name);
        } catch (const Error& e) {
            return e.code();
        }
        ADD_FAILURE() << "a token was issued for agent \"" << name << "\"";
        return ErrorCode::Internal;
    }

    std::string m_dir;
};

/// The same tests on each backend: "sqlite" (a file) and "postgresql" (a
/// database of the test's own on the private server).
class RelayDbStorage : public RelayDbTest, public ::testing::WithParamInterface<std::string> {
protected:
    void SetUp() override {
        RelayDbTest::SetUp();
        if (GetParam() != "postgresql") return;
        std::string whyNot;
        auto url = test::freshPostgresDatabase(whyNot);
        if (!url) GTEST_SKIP() << whyNot;
        m_url = *url;
    }
    /// A new connection to the test's database: another relay instance's, when called again.
    std::unique_ptr<sql::Connection> connection() const {
        return m_url.empty() ? sql::openSqlite(path()) : sql::openPostgres(m_url);
    }

    std::string m_url;
};

INSTANTIATE_TEST_SUITE_P(Backends, RelayDbStorage, ::testing::Values("sqlite", "postgresql"),
                         [](const auto& info) { return info.param; });

TEST_P(RelayDbStorage, ATokenOfAnExistingIdentityActsAsThatIdentity) {
    RelayDb db(connection());
    auto alice = newUser(db, "alice@example.org");
    auto first = db.issueAccessToken(alice, "bot");
    auto second = db.issueAccessToken(alice, "bot");
    EXPECT_NE(first.first, second.first) << "a new credential";
    auto a = db.authenticate(first.second);
    auto b = db.authenticate(second.second);
    ASSERT_TRUE(a && b);
    EXPECT_EQ(a->agent, "bot");
    EXPECT_EQ(agentIdOf(*a), agentIdOf(*b)) << "what daemons see is the identity's, not the token's";
    ASSERT_TRUE(a->expiresAt);
    EXPECT_GT(*a->expiresAt, nowEpochSeconds());

    // Revoking a token (logout) leaves the identity, and its other token.
    ASSERT_TRUE(db.revokeCredential(first.first));
    EXPECT_FALSE(db.authenticate(first.second));
    auto agents = db.agents(alice);
    ASSERT_EQ(agents.size(), 1u);
    EXPECT_EQ(agents[0].name, "bot");
    EXPECT_EQ(agents[0].validTokens, 1);
}

TEST_P(RelayDbStorage, AnOAuthGrantIsTakenOnceOfItsKindAndNotAfterItExpired) {
    RelayDb db(connection());
    auto alice = newUser(db, "alice@example.org");
    auto client = db.registerOAuthClient("platform", {"https://platform.example.org/cb", "http://127.0.0.1:9/cb"});
    auto found = db.oauthClient(client);
    ASSERT_TRUE(found);
    EXPECT_EQ(found->name, "platform");
    EXPECT_EQ(found->redirectUris,
              (std::vector<std::string>{"https://platform.example.org/cb", "http://127.0.0.1:9/cb"}));
    EXPECT_FALSE(db.oauthClient("mcp-unknown"));

    OAuthGrant code{"code", client, alice, "bot", "https://platform.example.org/cb", "challenge"};
    auto secret = db.storeOAuthGrant(code, 60);
    EXPECT_FALSE(db.takeOAuthGrant(secret, "refresh")) << "a code is not a refresh token";
    auto taken = db.takeOAuthGrant(secret, "code");
    ASSERT_TRUE(taken);
    EXPECT_EQ(taken->userId, alice);
    EXPECT_EQ(taken->agent, "bot");
    EXPECT_EQ(taken->redirectUri, code.redirectUri);
    EXPECT_EQ(taken->challenge, "challenge");
    EXPECT_FALSE(db.takeOAuthGrant(secret, "code")) << "taken once";

    auto expired = db.storeOAuthGrant({"refresh", client, alice, "bot", "", ""}, -1);
    EXPECT_FALSE(db.takeOAuthGrant(expired, "refresh"));
    EXPECT_FALSE(db.authenticate(expired)) << "a grant is no bearer token";
}

TEST_P(RelayDbStorage, IdentityNamesAreUniquePerUserNotAcrossUsers) {
    RelayDb db(connection());
    auto alice = newUser(db, "alice@example.org");
    auto bob = newUser(db, "bob@example.org");
    db.issueAccessToken(alice, "bot");
    db.issueAccessToken(alice, "bot");
    db.issueAccessToken(alice, "default");
    db.issueAccessToken(bob, "bot");
    auto names = [&](std::int64_t user) {
        std::vector<std::string> out;
        for (const auto& a : db.agents(user)) out.push_back(a.name);
        return out;
    };
    EXPECT_EQ(names(alice), (std::vector<std::string>{"bot", "default"}));
    EXPECT_EQ(names(bob), (std::vector<std::string>{"bot"}));
    EXPECT_EQ(db.rawDb().queryInt("SELECT COUNT(*) FROM agents"), 3);
}

TEST_P(RelayDbStorage, RefusesBadNamesAndNewNamesOfMigratedTokens) {
    RelayDb db(connection());
    auto alice = newUser(db, "alice@example.org");
    for (const std::string& bad : {std::string(), std::string("-x"), std::string(".x"), std::string("a b"),
                                   std::string("a/b"), std::string("é"), std::string(65, 'a')})
        EXPECT_EQ(refusal(db, alice, bad), ErrorCode::BadRequest) << bad;
    EXPECT_EQ(refusal(db, alice, "cred-12"), ErrorCode::BadRequest) << "no token 12 became an identity";
    EXPECT_EQ(db.rawDb().queryInt("SELECT COUNT(*) FROM agents"), 0) << "a refused name creates nothing";
    EXPECT_EQ(db.rawDb().queryInt("SELECT COUNT(*) FROM credentials"), 0);
    EXPECT_NO_THROW(db.issueAccessToken(alice, std::string(64, 'a')));
}

TEST_P(RelayDbStorage, AnExpiredTokenIsRefusedAndSaysWhenItExpired) {
    RelayDb db(connection());
    auto alice = newUser(db, "alice@example.org");
    auto [id, token] = db.issueAccessToken(alice, "bot");
    EXPECT_FALSE(db.expiredAt(token)) << "valid";
    double past = nowEpochSeconds() - 7200;
    auto age = db.rawDb().prepare("UPDATE credentials SET expires_at = ?2 WHERE id = ?1");
    age.bind(1, id).bind(2, past).run();
    EXPECT_FALSE(db.authenticate(token));
    ASSERT_TRUE(db.expiredAt(token));
    EXPECT_DOUBLE_EQ(*db.expiredAt(token), past);
    EXPECT_FALSE(db.expiredAt(Secret("hpca_unknown")));
    // A new sign-in of the identity is what the agent does next.
    auto fresh = db.issueAccessToken(alice, "bot");
    EXPECT_EQ(db.authenticate(fresh.second)->agent, "bot");
}

TEST_F(RelayDbTest, AnOldSchemaDatabaseKeepsItsTokensOwnersAndCallbacks) {
    const auto& steps = RelayDb::migrations();
    auto identities = std::find_if(steps.begin(), steps.end(), [](const sqlite::Migration& m) {
        return m.sql.find("CREATE TABLE agents") != std::string_view::npos;
    });
    ASSERT_NE(identities, steps.end());
    Secret oldToken("hpca_old"), oldKey("hpcd_old");
    std::int64_t tokenId = 0, keyId = 0;
    {
        // The schema as it was before identities, with what a relay of then held.
        auto db = sqlite::Db::open(path());
        sqlite::migrate(db, std::vector<sqlite::Migration>(steps.begin(), identities), "before identities");
        db.exec("INSERT INTO users (id, email, created_at) VALUES (7, 'alice@example.org', 1)");
        auto cred = db.prepare(
            "INSERT INTO credentials (user_id, kind, secret_hash, created_at, expires_at) VALUES (7, ?1, ?2, 1, ?3)");
        cred.bind(1, "access").bind(2, sha256Hex(oldToken.reveal())).bind(3, nowEpochSeconds() + 3600).run();
        tokenId = db.lastInsertRowid();
        auto key = db.prepare(
            "INSERT INTO credentials (user_id, kind, secret_hash, created_at, expires_at) VALUES (7, ?1, ?2, 1, NULL)");
        key.bind(1, "api_key").bind(2, sha256Hex(oldKey.reveal())).run();
        keyId = db.lastInsertRowid();
        auto cb = db.prepare(
            "INSERT INTO callbacks (user_id, daemon_id, callback_id, payload, received_at, agent_id, job_id) "
            "VALUES (7, 'd1', 'cb-1', ?1, 1, ?2, 'j1')");
        std::string owner = "cred-" + std::to_string(tokenId);
        cb.bind(1, R"({"callback_id":"cb-1","job_id":"j1","agent_id":")" + owner + "\"}").bind(2, owner).run();
    }
    RelayDb db(path());
    std::string owner = "cred-" + std::to_string(tokenId);
    // The old token keeps working, as the agent id daemons recorded for its jobs.
    auto old = db.authenticate(oldToken);
    ASSERT_TRUE(old);
    EXPECT_EQ(old->agent, owner);
    EXPECT_EQ(agentIdOf(*old), owner);
    // Its callbacks are still addressed to it.
    CallbackQuery q;
    q.agentId = agentIdOf(*old);
    ASSERT_EQ(db.callbacks(7, q).size(), 1u);
    EXPECT_TRUE(db.ackCallback(7, agentIdOf(*old), "cb-1"));
    // A new sign-in with the name the migration gave keeps those jobs.
    auto fresh = db.issueAccessToken(7, owner);
    EXPECT_EQ(agentIdOf(*db.authenticate(fresh.second)), owner);
    auto agents = db.agents(7);
    ASSERT_EQ(agents.size(), 1u) << "API keys are no agent identities";
    EXPECT_EQ(agents[0].name, owner);
    EXPECT_EQ(agents[0].validTokens, 2);
    // An API key is no identity: as before.
    auto key = db.authenticate(oldKey);
    ASSERT_TRUE(key);
    EXPECT_TRUE(key->agent.empty());
    EXPECT_EQ(agentIdOf(*key), "cred-" + std::to_string(keyId));
    EXPECT_FALSE(key->expiresAt);
}

TEST_P(RelayDbStorage, PruningDeletesWhatOutlivedItsRetentionAndKeepsTheRest) {
    RelayDb db(connection());
    auto alice = newUser(db, "alice@example.org");
    auto token = db.issueAccessToken(alice, "bot");
    auto key = db.issueCredential(alice, "api_key", std::nullopt);
    for (const char* id : {"cb-acked", "cb-waiting"})
        ASSERT_TRUE(db.recordCallback(alice, "d1", id, {{"agent_id", "bot"}, {"job_id", id}}));
    ASSERT_TRUE(db.ackCallback(alice, "bot", "cb-acked"));
    double longAgo = nowEpochSeconds() - 30 * 86400.0;
    db.rawDb().prepare("UPDATE signins SET expires_at = ?1").bind(1, longAgo).run();
    db.rawDb()
        .prepare("UPDATE credentials SET expires_at = ?1 WHERE id = ?2")
        .bind(1, longAgo)
        .bind(2, token.first)
        .run();
    db.rawDb().prepare("UPDATE callbacks SET acked_at = ?1 WHERE acked_at IS NOT NULL").bind(1, longAgo).run();

    auto report = db.prune(nowEpochSeconds());
    EXPECT_EQ(report.signins, 1);
    EXPECT_EQ(report.credentials, 1);
    EXPECT_EQ(report.callbacks, 1);
    EXPECT_EQ(db.rawDb().queryInt("SELECT COUNT(*) FROM signins"), 0);
    EXPECT_TRUE(db.authenticate(key.second)) << "API keys do not expire";
    auto left = db.callbacks(alice, {});
    ASSERT_EQ(left.size(), 1u) << "an unacknowledged callback stays";
    EXPECT_EQ(left[0].payload.at("job_id").as_string(), "cb-waiting");
    EXPECT_EQ(db.prune(nowEpochSeconds()).callbacks, 0) << "a second pass finds nothing";
}

TEST_P(RelayDbStorage, TwoRelayInstancesOnOneDatabaseSeeOneState) {
    RelayDb a(connection());
    RelayDb b(connection());  // a second instance: its migration finds the schema done
    auto signin = a.startSignin("alice@example.org", Secret("424242"));
    ASSERT_TRUE(signin);
    std::int64_t user = 0;
    EXPECT_EQ(b.verifyCode(*signin, Secret("424242"), user), VerifyOutcome::Ok) << "a code sent by A works on B";
    EXPECT_EQ(a.verifyCode(*signin, Secret("424242"), user), VerifyOutcome::UnknownToken) << "and is spent for A";
    auto token = b.issueAccessToken(user, "bot");
    ASSERT_TRUE(a.authenticate(token.second));
    EXPECT_TRUE(a.putDaemon(user, "hpc1", {{"host", "login1"}}));
    ASSERT_EQ(b.daemons(user).size(), 1u);
    EXPECT_EQ(b.daemons(user)[0].info.at("host").as_string(), "login1");

    // A callback stored through A (its daemon was there) is a retry for B, and B's agent acknowledges it.
    json::object payload{{"agent_id", "bot"}, {"job_id", "j1"}};
    EXPECT_TRUE(a.recordCallback(user, "hpc1", "cb-1", payload));
    EXPECT_FALSE(b.recordCallback(user, "hpc1", "cb-1", payload)) << "stored once";
    EXPECT_TRUE(b.ackCallback(user, "bot", "cb-1"));
    auto seen = a.callbacks(user, {});
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_TRUE(seen[0].acked);
    EXPECT_TRUE(a.revokeCredential(token.first));
    EXPECT_FALSE(b.authenticate(token.second)) << "a revocation on A holds on B";
}

TEST_P(RelayDbStorage, ACodeTriedOnTwoInstancesAtOnceSignsInOnce) {
    RelayDb a(connection());
    RelayDb b(connection());
    for (int round = 0; round < 10; ++round) {
        std::string email = "u" + std::to_string(round) + "@example.org";
        auto signin = a.startSignin(email, Secret("777777"));
        ASSERT_TRUE(signin);
        std::atomic<int> ok{0};
        auto attempt = [&](RelayDb& db) {
            std::int64_t user = 0;
            if (db.verifyCode(*signin, Secret("777777"), user) == VerifyOutcome::Ok) ++ok;
        };
        std::thread ta(attempt, std::ref(a));
        std::thread tb(attempt, std::ref(b));
        ta.join();
        tb.join();
        EXPECT_EQ(ok.load(), 1) << "round " << round << ": one code, one sign-in";
    }
}

TEST_P(RelayDbStorage, ADatabaseFromANewerRelayIsRefused) {
    {
        RelayDb db(connection());
        db.rawDb().exec("BEGIN");
        db.rawDb().setSchemaVersion(999);
        db.rawDb().exec("COMMIT");
    }
    try {
        RelayDb db(connection());
        ADD_FAILURE() << "a schema this relay does not know was opened";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("newer than this program"), std::string::npos) << e.what();
    }
}

}  // namespace
