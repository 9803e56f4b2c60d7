#include "api.hpp"
#include "hub.hpp"
#include "postgres.hpp"
#include "relay_db.hpp"
#include "skill.hpp"
#include "util.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

using namespace hpc;
using namespace hpc::relay;
namespace json = boost::json;

namespace {

/// Each test runs on both storage backends: "sqlite" (a file) and
/// "postgresql" (a database of its own on the private server).
class ApiTest : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/hpc-api-XXXXXX";
        ASSERT_TRUE(::mkdtemp(tmpl));
        m_dir = tmpl;
        if (GetParam() == "postgresql") {
            std::string whyNot;
            auto url = test::freshPostgresDatabase(whyNot);
            if (!url) GTEST_SKIP() << whyNot;
            m_url = *url;
            m_db = std::make_unique<RelayDb>(sql::openPostgres(m_url));
        } else {
            m_db = std::make_unique<RelayDb>(m_dir + "/relay.db");
        }
        m_hub = std::make_unique<Hub>(*m_db);
        m_api = std::make_unique<Api>(*m_db, *m_hub, [this](const std::string& email, const Secret& code) {
            m_codes.emplace_back(email, code.reveal());
        });
    }
    void TearDown() override { std::filesystem::remove_all(m_dir); }

    ApiResponse call(const std::string& method, const std::string& path, const json::object& body = {},
                     const std::string& bearer = {}) {
        return m_api->handle({method, path, bearer.empty() ? "" : "Bearer " + bearer, json::serialize(body), "test"});
    }
    static json::object bodyOf(const ApiResponse& r) { return json::parse(r.body).as_object(); }

    std::string signIn(const std::string& email, const std::string& agent = {}) {
        auto r = call("POST", "/otp/signin", {{"email", email}});
        EXPECT_EQ(r.status, 200) << r.body;
        std::string token(bodyOf(r).at("payload").at("token").as_string());
        json::object body{{"token", token}, {"otp", m_codes.back().second}};
        if (!agent.empty()) body["agent"] = agent;
        auto v = call("POST", "/auth/otp/signin/verify", body);
        EXPECT_EQ(v.status, 200) << v.body;
        return std::string(bodyOf(v).at("access_token").as_string());
    }

    std::string m_dir;
    std::string m_url;  ///< postgresql: the test's database
    std::unique_ptr<RelayDb> m_db;
    std::unique_ptr<Hub> m_hub;
    std::unique_ptr<Api> m_api;
    std::vector<std::pair<std::string, std::string>> m_codes;
};

}  // namespace

TEST_P(ApiTest, SignsInWithAOneTimeCodeAndCreatesAnApiKey) {
    std::string access = signIn("a@example.org");
    EXPECT_EQ(m_codes.size(), 1u);
    EXPECT_EQ(m_codes[0].second.size(), 6u);
    auto k = call("POST", "/auth/api-keys", {}, access);
    EXPECT_EQ(k.status, 201) << k.body;
    std::string key(bodyOf(k).at("api_key").as_string());
    EXPECT_EQ(key.rfind("hpcd_", 0), 0u);
    auto who = m_api->authenticate("Bearer " + key);
    ASSERT_TRUE(who);
    EXPECT_EQ(who->kind, "api_key");
}

TEST_P(ApiTest, ACodeWorksOnlyOnce) {
    auto r = call("POST", "/otp/signin", {{"email", "a@example.org"}});
    std::string token(bodyOf(r).at("payload").at("token").as_string());
    json::object verify{{"token", token}, {"otp", m_codes.back().second}};
    EXPECT_EQ(call("POST", "/auth/otp/signin/verify", verify).status, 200);
    EXPECT_EQ(call("POST", "/auth/otp/signin/verify", verify).status, 401);
}

TEST_P(ApiTest, WrongCodesAreLimitedThenTheSignInIsBurned) {
    auto r = call("POST", "/otp/signin", {{"email", "a@example.org"}});
    std::string token(bodyOf(r).at("payload").at("token").as_string());
    std::string right = m_codes.back().second;
    std::string wrong = right == "000000" ? "111111" : "000000";
    for (int i = 0; i < RelayDb::kMaxVerifyAttempts - 1; ++i)
        EXPECT_EQ(call("POST", "/auth/otp/signin/verify", {{"token", token}, {"otp", wrong}}).status, 401);
    EXPECT_EQ(call("POST", "/auth/otp/signin/verify", {{"token", token}, {"otp", wrong}}).status, 429);
    EXPECT_EQ(call("POST", "/auth/otp/signin/verify", {{"token", token}, {"otp", right}}).status, 429)
        << "after too many attempts even the right code is refused";
}

TEST_P(ApiTest, SignInRequestsAreRateLimitedPerEmail) {
    for (int i = 0; i < RelayDb::kMaxSigninsPerWindow; ++i)
        EXPECT_EQ(call("POST", "/otp/signin", {{"email", "a@example.org"}}).status, 200);
    EXPECT_EQ(call("POST", "/otp/signin", {{"email", "a@example.org"}}).status, 429);
    EXPECT_EQ(call("POST", "/otp/signin", {{"email", "b@example.org"}}).status, 200);
}

TEST_P(ApiTest, OneClientCannotRequestCodesForEveryAddress) {
    auto from = [this](const std::string& remote, const std::string& email) {
        return m_api->handle({"POST", "/otp/signin", "", json::serialize(json::object{{"email", email}}), remote})
            .status;
    };
    for (std::size_t i = 0; i < Api::kDefaultSigninLimitPerClient; ++i)
        EXPECT_EQ(from("192.0.2.7:" + std::to_string(40000 + i), "victim" + std::to_string(i) + "@example.org"), 200);
    EXPECT_EQ(from("192.0.2.7:41000", "one-more@example.org"), 429) << "a new port is the same client";
    EXPECT_EQ(m_codes.size(), Api::kDefaultSigninLimitPerClient) << "no code sent past the limit";
    EXPECT_EQ(from("198.51.100.2:40000", "one-more@example.org"), 200) << "other clients still get codes";

    m_api->setSigninLimitPerClient(1);
    EXPECT_EQ(from("2001:db8::1:40000", "v6@example.org"), 200);
    EXPECT_EQ(from("2001:db8::1:40001", "v6b@example.org"), 429) << "IPv6 clients are told apart by address too";
    m_api->setSigninLimitPerClient(0);
    EXPECT_EQ(from("2001:db8::1:40002", "v6b@example.org"), 200) << "0 means no per-client limit";
}

TEST_P(ApiTest, ExpiredCodesAreRefused) {
    auto r = call("POST", "/otp/signin", {{"email", "a@example.org"}});
    std::string token(bodyOf(r).at("payload").at("token").as_string());
    m_db->rawDb().exec("UPDATE signins SET expires_at = 0");
    auto v = call("POST", "/auth/otp/signin/verify", {{"token", token}, {"otp", m_codes.back().second}});
    EXPECT_EQ(v.status, 401);
    EXPECT_NE(v.body.find("expired"), std::string::npos);
}

TEST_P(ApiTest, RefusesBadSignInInput) {
    EXPECT_EQ(call("POST", "/otp/signin", {{"email", "not-an-email"}}).status, 400);
    EXPECT_EQ(m_api->handle({"POST", "/otp/signin", "", "{broken", "t"}).status, 400);
    auto wrongMethod = call("GET", "/otp/signin");
    EXPECT_EQ(wrongMethod.status, 405);
    EXPECT_EQ(bodyOf(wrongMethod).at("code").as_string(), "BAD_REQUEST")
        << "405 is HTTP's word; the code stays in the set";
    EXPECT_TRUE(m_codes.empty());
}

TEST_P(ApiTest, AnApiKeyNeedsAnAccessToken) {
    EXPECT_EQ(call("POST", "/auth/api-keys").status, 401);
    EXPECT_EQ(call("POST", "/auth/api-keys", {}, "hpca_made_up").status, 401);
}

TEST_P(ApiTest, RegistersUpdatesListsAndDeletesDaemons) {
    std::string access = signIn("a@example.org");
    json::object info{{"hostname", "login1"}, {"allowed_dirs", json::array{"/scratch/x"}}};
    auto put = call("PUT", "/hpc/daemons/mila", info, access);
    EXPECT_EQ(put.status, 201) << put.body;
    EXPECT_EQ(call("PUT", "/hpc/daemons/mila", info, access).status, 200) << "re-registering updates";
    auto list = bodyOf(call("GET", "/hpc/daemons", {}, access));
    auto daemons = list.at("payload").at("daemons").as_array();
    ASSERT_EQ(daemons.size(), 1u);
    EXPECT_EQ(daemons[0].at("daemon_id").as_string(), "mila");
    EXPECT_FALSE(daemons[0].at("connected").as_bool());
    EXPECT_EQ(call("GET", "/hpc/daemons/mila", {}, access).status, 200);
    EXPECT_EQ(call("DELETE", "/hpc/daemons/mila", {}, access).status, 200);
    EXPECT_EQ(call("GET", "/hpc/daemons/mila", {}, access).status, 404);
}

TEST_P(ApiTest, DaemonRoutesAreScopedToTheUser) {
    std::string alice = signIn("alice@example.org");
    std::string bob = signIn("bob@example.org");
    EXPECT_EQ(call("PUT", "/hpc/daemons/x", {}, alice).status, 201);
    EXPECT_EQ(call("GET", "/hpc/daemons/x", {}, bob).status, 404);
    EXPECT_EQ(call("DELETE", "/hpc/daemons/x", {}, bob).status, 404);
    EXPECT_TRUE(bodyOf(call("GET", "/hpc/daemons", {}, bob)).at("payload").at("daemons").as_array().empty());
}

TEST_P(ApiTest, RefusesBadRegistrations) {
    std::string access = signIn("a@example.org");
    EXPECT_EQ(call("PUT", "/hpc/daemons/bad%20id", {}, access).status, 400);
    EXPECT_EQ(call("PUT", "/hpc/daemons/ok", {{"allowed_dirs", "not-a-list"}}, access).status, 400);
    EXPECT_EQ(call("PUT", "/hpc/daemons/ok", {{"allowed_dirs", json::array{1, 2}}}, access).status, 400);
    EXPECT_EQ(call("PUT", "/hpc/daemons/ok", {}, "").status, 401);
}

TEST_P(ApiTest, UnknownRoutesAre404) {
    auto r = call("GET", "/nowhere");
    EXPECT_EQ(r.status, 404);
    EXPECT_EQ(bodyOf(r).at("status").as_string(), "error");
}

TEST_P(ApiTest, AnswersAreJsonWhateverBytesTheRequestCarried) {
    // Found by api_fuzz: a path that is not UTF-8 was quoted into the answer.
    auto r = call("POST", "/auth/api-k\x8b\xdf\x65ys\n");
    EXPECT_EQ(r.status, 404);
    EXPECT_EQ(bodyOf(r).at("code").as_string(), "NOT_FOUND");
    auto e = call("POST", "/otp/signin", {{"email", "a\x01@example.org"}});
    EXPECT_EQ(e.status, 400) << "control characters are no part of an email address";
}

TEST(ApiErrors, AnswerWithTheStatusAndCodeOfTheErrorTable) {
    for (auto c : {ErrorCode::BadRequest, ErrorCode::UnknownType, ErrorCode::NotFound, ErrorCode::PathNotAllowed,
                   ErrorCode::NotOwner, ErrorCode::Limit, ErrorCode::Timeout, ErrorCode::Unavailable,
                   ErrorCode::Unauthorized, ErrorCode::StorageFull, ErrorCode::Internal}) {
        auto r = errorResponse(c, "why");
        EXPECT_EQ(r.status, toHttpStatus(c));
        auto body = json::parse(r.body).as_object();
        EXPECT_EQ(body.at("status").as_string(), "error");
        EXPECT_EQ(body.at("code").as_string(), toProtocolCode(c));
        EXPECT_EQ(body.at("message").as_string(), "why");
    }
}

TEST_P(ApiTest, AnErrorFromTheClosedSetAnswersWithItsOwnStatusAndABugWithout) {
    auto refusingWith = [this](const Error& e) {
        Api api(*m_db, *m_hub, [e](const std::string&, const Secret&) { throw e; });
        return api.handle({"POST", "/otp/signin", "", json::serialize(json::object{{"email", "a@example.org"}}), "t"});
    };
    auto full = refusingWith(Error(ErrorCode::StorageFull, "the disk is full"));
    EXPECT_EQ(full.status, 507);
    EXPECT_EQ(bodyOf(full).at("code").as_string(), "STORAGE_FULL");
    EXPECT_EQ(bodyOf(full).at("message").as_string(), "the disk is full");
    auto bug = refusingWith(Error(ErrorCode::Internal, "detail for the log at /srv/relay"));
    EXPECT_EQ(bug.status, 500);
    EXPECT_EQ(bodyOf(bug).at("code").as_string(), "INTERNAL");
    EXPECT_EQ(bug.body.find("/srv/relay"), std::string::npos) << bug.body;
}

namespace {

/// A daemon or agent connection, for what the hub closes.
struct ClosablePeer : Peer {
    bool closed = false;
    void sendText(std::string) override {}
    void sendBinary(std::string) override {}
    void close(std::string_view) override { closed = true; }
};

const auto kBackends = ::testing::Values("sqlite", "postgresql");
const auto kBackendName = [](const auto& info) { return info.param; };

}  // namespace

INSTANTIATE_TEST_SUITE_P(Backends, ApiTest, kBackends, kBackendName);

class KeyTest : public ApiTest {
protected:
    void SetUp() override {
        ApiTest::SetUp();
        m_access = signIn("a@example.org");
        m_user = m_api->authenticate("Bearer " + m_access)->userId;
    }
    /// A new API key: its credential id and secret.
    std::pair<std::int64_t, std::string> newKey() {
        auto o = bodyOf(call("POST", "/auth/api-keys", {}, m_access));
        return {o.at("id").as_int64(), std::string(o.at("api_key").as_string())};
    }
    std::pair<std::int64_t, std::string> rotate(const std::string& daemonId, const std::string& bearer) {
        auto r = call("POST", "/hpc/daemons/" + daemonId + "/rotate-key", {}, bearer);
        EXPECT_EQ(r.status, 201) << r.body;
        auto p = bodyOf(r).at("payload");
        return {p.at("id").as_int64(), std::string(p.at("api_key").as_string())};
    }
    bool accepted(const std::string& key) { return m_api->authenticate("Bearer " + key).has_value(); }

    std::string m_access;
    std::int64_t m_user = 0;
};

INSTANTIATE_TEST_SUITE_P(Backends, KeyTest, kBackends, kBackendName);

TEST_P(KeyTest, ARotatedKeyIsRevokedOnlyOnceTheDaemonConnectsWithItsSuccessor) {
    auto [oldId, oldKey] = newKey();
    ASSERT_EQ(call("PUT", "/hpc/daemons/d", {}, oldKey).status, 201);
    auto onOld = std::make_shared<ClosablePeer>();
    m_hub->attachDaemon(m_user, "d", onOld, oldId);
    // An interrupted rotation (its key never stored) and a second one.
    auto [lostId, lostKey] = rotate("d", oldKey);
    auto [newId, newKey_] = rotate("d", oldKey);
    EXPECT_TRUE(accepted(oldKey) && accepted(lostKey) && accepted(newKey_)) << "all valid until the daemon moves";
    m_hub->attachDaemon(m_user, "d", onOld, oldId);  // a reconnect with the old key changes nothing
    EXPECT_TRUE(accepted(oldKey));
    auto onNew = std::make_shared<ClosablePeer>();
    m_hub->attachDaemon(m_user, "d", onNew, newId);
    EXPECT_FALSE(accepted(oldKey));
    EXPECT_FALSE(accepted(lostKey)) << "the lost key of the interrupted rotation goes too";
    EXPECT_TRUE(accepted(newKey_));
    EXPECT_FALSE(onNew->closed);
}

TEST_P(KeyTest, OnlyTheDaemonsOwnKeyMayRotateIt) {
    auto [id1, key1] = newKey();
    auto [id2, key2] = newKey();
    ASSERT_EQ(call("PUT", "/hpc/daemons/d1", {}, key1).status, 201);
    ASSERT_EQ(call("PUT", "/hpc/daemons/d2", {}, key2).status, 201);
    EXPECT_EQ(call("POST", "/hpc/daemons/d1/rotate-key", {}, key2).status, 403);
    EXPECT_EQ(call("POST", "/hpc/daemons/nope/rotate-key", {}, key1).status, 404);
    EXPECT_EQ(call("GET", "/hpc/daemons/d1/rotate-key", {}, key1).status, 405);
    EXPECT_EQ(call("POST", "/hpc/daemons/d1/rotate-key").status, 401);
    EXPECT_TRUE(accepted(key1) && accepted(key2));
}

TEST_P(KeyTest, OneDaemonsKeyCannotRegisterOrDeleteAnother) {
    auto [id1, key1] = newKey();
    auto [id2, key2] = newKey();
    ASSERT_EQ(call("PUT", "/hpc/daemons/d1", {}, key1).status, 201);
    ASSERT_EQ(call("PUT", "/hpc/daemons/d2", {}, key2).status, 201);
    EXPECT_EQ(call("PUT", "/hpc/daemons/d2", {}, key1).status, 403) << "d1's key taking over d2";
    EXPECT_EQ(call("PUT", "/hpc/daemons/d3", {}, key1).status, 403) << "d1's key registering another daemon";
    EXPECT_EQ(call("DELETE", "/hpc/daemons/d2", {}, key1).status, 403);
    EXPECT_TRUE(m_api->mayActFor(*m_api->authenticate("Bearer " + key2), "d2", false));
    EXPECT_FALSE(m_api->mayActFor(*m_api->authenticate("Bearer " + key1), "d2", false))
        << "the check the daemon's WebSocket upgrade makes";
    EXPECT_TRUE(accepted(key2));
    EXPECT_EQ(call("GET", "/hpc/daemons/d2", {}, m_access).status, 200) << "d2 is still registered";
    EXPECT_EQ(call("PUT", "/hpc/daemons/d2", {}, key2).status, 200) << "its own key still updates it";
    EXPECT_EQ(call("DELETE", "/hpc/daemons/d2", {}, m_access).status, 200) << "the user's token may";
}

TEST_P(KeyTest, RegisteringAgainWithANewKeyRevokesTheOldOneWhenTheDaemonConnects) {
    auto [firstId, first] = newKey();
    auto [secondId, second] = newKey();
    ASSERT_EQ(call("PUT", "/hpc/daemons/d", {}, first).status, 201);
    ASSERT_EQ(call("PUT", "/hpc/daemons/d", {}, second).status, 200);
    EXPECT_TRUE(accepted(first));
    m_hub->attachDaemon(m_user, "d", std::make_shared<ClosablePeer>(), secondId);
    EXPECT_FALSE(accepted(first));
    EXPECT_TRUE(accepted(second));
}

TEST_P(KeyTest, DeletingARegistrationRevokesItsKeysAndClosesItsLink) {
    auto [id, key] = newKey();
    ASSERT_EQ(call("PUT", "/hpc/daemons/d", {}, key).status, 201);
    auto link = std::make_shared<ClosablePeer>();
    m_hub->attachDaemon(m_user, "d", link, id);
    auto r = call("DELETE", "/hpc/daemons/d", {}, key);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(bodyOf(r).at("payload").at("revoked_keys").as_int64(), 1);
    EXPECT_TRUE(link->closed);
    EXPECT_FALSE(m_hub->connectedSince(m_user, "d"));
    EXPECT_FALSE(accepted(key));
    EXPECT_EQ(call("GET", "/hpc/daemons/d", {}, m_access).status, 404);
}

TEST_P(KeyTest, ARevokedTokenIsRefusedAndItsConnectionsClosed) {
    auto agent = std::make_shared<ClosablePeer>();
    m_hub->attachAgent(*m_api->authenticate("Bearer " + m_access), agent);
    auto r = call("POST", "/auth/revoke", {}, m_access);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(bodyOf(r).at("kind").as_string(), "access");
    EXPECT_FALSE(accepted(m_access));
    EXPECT_TRUE(agent->closed);
    EXPECT_EQ(call("POST", "/auth/revoke", {}, m_access).status, 401);
}

namespace {

json::object skillOf(const std::string& name, const std::string& text, const std::string& version = {}) {
    json::object s{{"name", name}, {"text", text}};
    if (!version.empty()) s["version"] = version;
    return s;
}

}  // namespace

TEST_P(ApiTest, ASkillsTextIsStoredWithTheRegistrationAndShownForOneDaemonOnly) {
    std::string access = signIn("a@example.org");
    auto put = call("PUT", "/hpc/daemons/mila",
                    {{"skill", skillOf("mila-hpc", "# Mila\n\nUse sbatch.\n", "sha256:0123456789abcdef")}}, access);
    ASSERT_EQ(put.status, 201) << put.body;
    auto one = bodyOf(call("GET", "/hpc/daemons/mila", {}, access)).at("payload").as_object();
    EXPECT_EQ(one.at("skill").as_string(), "mila-hpc") << "the name stays a string for older readers";
    EXPECT_EQ(one.at("skill_version").as_string(), "sha256:0123456789abcdef");
    EXPECT_EQ(one.at("skill_text").as_string(), "# Mila\n\nUse sbatch.\n");
    auto listed = bodyOf(call("GET", "/hpc/daemons", {}, access)).at("payload").at("daemons").at(0).as_object();
    EXPECT_EQ(listed.at("skill_version").as_string(), "sha256:0123456789abcdef");
    EXPECT_FALSE(listed.contains("skill_text")) << "a list of daemons does not carry every text";

    // Registering again with another text replaces it; without a version the relay hashes the text.
    ASSERT_EQ(
        call("PUT", "/hpc/daemons/mila", {{"skill", skillOf("mila-hpc", "# Mila\n\nUse salloc.\n")}}, access).status,
        200);
    one = bodyOf(call("GET", "/hpc/daemons/mila", {}, access)).at("payload").as_object();
    EXPECT_EQ(one.at("skill_text").as_string(), "# Mila\n\nUse salloc.\n");
    EXPECT_EQ(one.at("skill_version").as_string(), skill::versionOf("# Mila\n\nUse salloc.\n"));

    // An older client sends the name only: accepted, and there is no text to show any more.
    ASSERT_EQ(call("PUT", "/hpc/daemons/mila", {{"skill", "generic-slurm"}}, access).status, 200);
    one = bodyOf(call("GET", "/hpc/daemons/mila", {}, access)).at("payload").as_object();
    EXPECT_EQ(one.at("skill").as_string(), "generic-slurm");
    EXPECT_EQ(one.at("skill_version").as_string(), "");
    EXPECT_EQ(one.at("skill_text").as_string(), "");
}

TEST_P(ApiTest, RefusesSkillsOverTheirLimitsWithAClearErrorAndChangesNothing) {
    std::string access = signIn("a@example.org");
    ASSERT_EQ(call("PUT", "/hpc/daemons/d", {{"skill", skillOf("plain-server", "# kept\n")}}, access).status, 201);
    std::string full(skill::kMaxTextBytes, 'x');
    EXPECT_EQ(call("PUT", "/hpc/daemons/d", {{"skill", skillOf("big", full)}}, access).status, 200)
        << "exactly the limit is accepted";
    ASSERT_EQ(call("PUT", "/hpc/daemons/d", {{"skill", skillOf("plain-server", "# kept\n")}}, access).status, 200);

    auto refused = [&](const json::value& skill, const std::string& says) {
        auto r = call("PUT", "/hpc/daemons/d", {{"skill", skill}}, access);
        EXPECT_EQ(r.status, 400) << json::serialize(skill).substr(0, 200);
        auto body = bodyOf(r);
        EXPECT_EQ(body.at("code").as_string(), "BAD_REQUEST");
        EXPECT_NE(std::string(body.at("message").as_string()).find(says), std::string::npos) << r.body;
    };
    refused(skillOf("big", full + "x"), "the limit is 65536");
    refused(skillOf(std::string(skill::kMaxNameBytes + 1, 'n'), "# t\n"), "\"skill.name\" is 257 bytes");
    refused(skillOf("x", "# t\n", std::string(skill::kMaxVersionBytes + 1, 'v')), "\"skill.version\" is 65 bytes");
    refused(skillOf("x", "\x1b]0;owned\x07# t\n"), "control characters");
    refused(skillOf("two\nlines", "# t\n"), "one line");
    refused(skillOf("", "# t\n"), "\"skill.name\" must be a non-empty string");
    refused(json::object{{"name", "x"}}, "\"skill.text\" must be a non-empty string");
    refused(json::object{{"name", "x"}, {"text", "t"}, {"version", 3}}, "\"skill.version\" must be a string");
    refused(42, "\"skill\" must be a string or an object");
    refused(json::string(std::string(skill::kMaxTextBytes + 1, 's')), "the limit is 65536");

    auto one = bodyOf(call("GET", "/hpc/daemons/d", {}, access)).at("payload").as_object();
    EXPECT_EQ(one.at("skill_text").as_string(), "# kept\n") << "a refused registration changes nothing";
}

TEST_P(ApiTest, TheRelayDatabaseKeepsTheSkillApartFromTheRegistrationsInfo) {
    std::int64_t user = 0;
    {
        auto token = m_db->startSignin("s@example.org", Secret("123456"));
        ASSERT_TRUE(token);
        ASSERT_EQ(m_db->verifyCode(*token, Secret("123456"), user), VerifyOutcome::Ok);
    }
    json::object info{{"hostname", "h"}, {"skill", skillOf("mila-hpc", "# text\n", "v1")}};
    EXPECT_TRUE(m_db->putDaemon(user, "d", info));
    auto reg = m_db->daemon(user, "d");
    ASSERT_TRUE(reg);
    EXPECT_EQ(reg->info.at("skill").as_string(), "mila-hpc");
    EXPECT_EQ(reg->skillVersion, "v1");
    EXPECT_EQ(reg->skillText, "# text\n");
    auto all = m_db->daemons(user);
    ASSERT_EQ(all.size(), 1u);
    EXPECT_EQ(all[0].skillVersion, "v1");
    EXPECT_EQ(all[0].skillText, "") << "the list does not load the texts";
    // The stored info is what the daemon's JSON says, with the skill's name only.
    auto st = m_db->rawDb().prepare("SELECT info FROM daemons WHERE daemon_id = 'd'");
    ASSERT_TRUE(st.step());
    EXPECT_EQ(st.text(0).find("# text"), std::string::npos) << st.text(0);
}

namespace {

/// An agent connection that keeps what it is sent.
struct RecordingAgent : Peer {
    std::vector<std::string> sent;
    void sendText(std::string text) override { sent.push_back(std::move(text)); }
    void sendBinary(std::string) override {}
    void close(std::string_view) override {}
};

}  // namespace

TEST_P(ApiTest, ASignInNamesItsAgentIdentityAndWhoamiShowsIt) {
    std::string bot = signIn("a@example.org", "bot");
    auto me = bodyOf(call("GET", "/auth/whoami", {}, bot)).at("payload").as_object();
    EXPECT_EQ(me.at("agent").as_string(), "bot");
    EXPECT_EQ(me.at("agent_id").as_string(), "bot");
    EXPECT_EQ(me.at("email").as_string(), "a@example.org");
    EXPECT_EQ(me.at("kind").as_string(), "access");
    EXPECT_TRUE(me.at("expires_at").is_number());
    std::string plain = signIn("a@example.org");
    EXPECT_EQ(bodyOf(call("GET", "/auth/whoami", {}, plain)).at("payload").at("agent").as_string(), "default")
        << "a sign-in without a name is the default identity";
    auto agents = bodyOf(call("GET", "/auth/agents", {}, plain)).at("payload").at("agents").as_array();
    ASSERT_EQ(agents.size(), 2u);
    EXPECT_EQ(agents[0].at("name").as_string(), "bot");
    EXPECT_EQ(agents[1].at("name").as_string(), "default");
    EXPECT_EQ(call("GET", "/auth/whoami").status, 401);
    EXPECT_EQ(call("POST", "/auth/agents", {}, plain).status, 405);
}

TEST_P(ApiTest, ABadAgentNameIsRefusedBeforeTheCodeIsSpent) {
    auto r = call("POST", "/otp/signin", {{"email", "a@example.org"}});
    std::string token(bodyOf(r).at("payload").at("token").as_string());
    for (const json::value& bad : {json::value("a b"), json::value(""), json::value(7), json::value("cred-99")}) {
        auto v =
            call("POST", "/auth/otp/signin/verify", {{"token", token}, {"otp", m_codes.back().second}, {"agent", bad}});
        EXPECT_EQ(v.status, 400) << json::serialize(bad) << " " << v.body;
        EXPECT_EQ(bodyOf(v).at("code").as_string(), "BAD_REQUEST");
        if (bad == json::value("cred-99")) return;  // only known once the user is: that one spends the code
        auto ok = call("POST", "/auth/otp/signin/verify",
                       {{"token", token}, {"otp", m_codes.back().second}, {"agent", "bot"}});
        ASSERT_EQ(ok.status, 200) << "the code was still good after " << json::serialize(bad);
        r = call("POST", "/otp/signin", {{"email", "a@example.org"}});
        token = std::string(bodyOf(r).at("payload").at("token").as_string());
    }
}

TEST_P(ApiTest, AnExpiredTokenIsToldItExpiredAndAnUnknownOneIsNot) {
    std::string bot = signIn("a@example.org", "bot");
    auto who = m_api->authenticate("Bearer " + bot);
    auto age = m_db->rawDb().prepare("UPDATE credentials SET expires_at = ?2 WHERE id = ?1");
    age.bind(1, who->credentialId).bind(2, nowEpochSeconds() - 3 * 3600).run();
    auto r = call("GET", "/auth/whoami", {}, bot);
    EXPECT_EQ(r.status, 401);
    std::string message(bodyOf(r).at("message").as_string());
    EXPECT_NE(message.find("expired 3 h ago"), std::string::npos) << message;
    EXPECT_NE(message.find("--agent"), std::string::npos) << message;
    auto unknown = call("GET", "/auth/whoami", {}, "hpca_nosuchtoken");
    EXPECT_EQ(unknown.status, 401);
    EXPECT_EQ(std::string(bodyOf(unknown).at("message").as_string()).find("expired"), std::string::npos);
}

TEST_P(ApiTest, ANewTokenOfTheSameIdentityGetsItsCallbacksAndAnotherIdentityDoesNot) {
    std::string first = signIn("a@example.org", "bot");
    auto firstWho = *m_api->authenticate("Bearer " + first);
    // The daemon recorded the job's owner as the agent id the relay stamped.
    ASSERT_TRUE(m_db->recordCallback(firstWho.userId, "d1", "cb-1",
                                     {{"callback_id", "cb-1"}, {"job_id", "j1"}, {"agent_id", agentIdOf(firstWho)}}));
    ASSERT_EQ(call("POST", "/auth/revoke", {}, first).status, 200);
    auto again = std::make_shared<RecordingAgent>(), other = std::make_shared<RecordingAgent>();
    m_hub->attachAgent(*m_api->authenticate("Bearer " + signIn("a@example.org", "bot")), again);
    m_hub->attachAgent(*m_api->authenticate("Bearer " + signIn("a@example.org", "other")), other);
    ASSERT_EQ(again->sent.size(), 1u);
    EXPECT_NE(again->sent[0].find("cb-1"), std::string::npos) << again->sent[0];
    EXPECT_TRUE(other->sent.empty()) << "another identity of the same user got the callback";
}

/// What only a database server does: drop a connection, or go away.
class ApiOnPostgres : public ApiTest {};
INSTANTIATE_TEST_SUITE_P(Backends, ApiOnPostgres, ::testing::Values("postgresql"), kBackendName);

TEST_P(ApiOnPostgres, ADroppedConnectionIsOpenedAgainAndAnUnreachableDatabaseAnswers503) {
    std::string access = signIn("a@example.org");
    std::string name = m_url.substr(m_url.rfind('/') + 1);
    std::string whyNot;
    auto admin = sql::openPostgres(*test::postgresServerUrl(whyNot));
    auto endConnections = [&] {
        auto ended = admin->prepare(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = ?1) t");
        EXPECT_TRUE(ended.bind(1, name).step());
        EXPECT_EQ(ended.int64(0), 1) << "the relay's one connection";
    };
    endConnections();
    auto again = call("GET", "/auth/whoami", {}, access);
    EXPECT_EQ(again.status, 200) << "the connection is opened again and the request sent once more: " << again.body;

    // The database refuses connections from now on: as good as gone.
    admin->exec("ALTER DATABASE " + name + " ALLOW_CONNECTIONS false");
    endConnections();
    auto gone = call("GET", "/auth/whoami", {}, access);
    EXPECT_EQ(gone.status, 503) << gone.body;
    EXPECT_EQ(bodyOf(gone).at("code").as_string(), "UNAVAILABLE");
    EXPECT_EQ(gone.body.find(name), std::string::npos) << "the database's name is for the log: " << gone.body;
    EXPECT_EQ(call("POST", "/otp/signin", {{"email", "b@example.org"}}).status, 503) << "and writes too";
}

TEST_P(ApiOnPostgres, ACallbackTheDatabaseCannotTakeIsRefusedAndStoredWhenSentAgain) {
    std::string name = m_url.substr(m_url.rfind('/') + 1);
    std::string whyNot;
    auto admin = sql::openPostgres(*test::postgresServerUrl(whyNot));
    auto daemon = std::make_shared<RecordingAgent>();
    m_hub->attachDaemon(1, "d1", daemon);
    std::string msg = R"({"v":1,"type":"job.completed","id":"c1","payload":{"callback_id":"cb-9","job_id":"j9"}})";
    admin->exec("ALTER DATABASE " + name + " ALLOW_CONNECTIONS false");
    admin->prepare("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = ?1")
        .bind(1, name)
        .run();
    m_hub->onDaemonText(1, "d1", daemon, msg);
    ASSERT_FALSE(daemon->sent.empty());
    auto refused = protocol::parse(daemon->sent.back(), protocol::kMaxResponseBytes);
    auto* env = std::get_if<protocol::Envelope>(&refused);
    ASSERT_TRUE(env);
    EXPECT_FALSE(env->ok) << "not acknowledged: the daemon keeps it and sends it again";
    EXPECT_EQ(env->errorCode, ErrorCode::Unavailable) << env->errorMessage;
    EXPECT_EQ(env->errorMessage.find(name), std::string::npos) << env->errorMessage;

    admin->exec("ALTER DATABASE " + name + " ALLOW_CONNECTIONS true");
    m_hub->onDaemonText(1, "d1", daemon, msg);
    auto stored = protocol::parse(daemon->sent.back(), protocol::kMaxResponseBytes);
    env = std::get_if<protocol::Envelope>(&stored);
    ASSERT_TRUE(env);
    EXPECT_TRUE(env->ok) << env->errorMessage;
    EXPECT_FALSE(env->result.at("duplicate").as_bool());
    EXPECT_EQ(m_db->callbacks(1, {}).size(), 1u);
}

TEST_P(ApiOnPostgres, ADaemonThatConnectsWhileTheDatabaseIsAwayIsRecordedAsPresentWhenItIsBack) {
    struct Here : Cluster {
        std::string me = "wss://here";
        const std::string& self() const override { return me; }
        std::shared_ptr<Peer> open(const std::string&, std::int64_t, const std::string&) override { return nullptr; }
    } cluster;
    m_hub->setCluster(&cluster);
    m_hub->setDatabaseRetrySeconds(0);  // the next tick tries at once
    std::string name = m_url.substr(m_url.rfind('/') + 1);
    std::string whyNot;
    auto admin = sql::openPostgres(*test::postgresServerUrl(whyNot));
    admin->exec("ALTER DATABASE " + name + " ALLOW_CONNECTIONS false");
    admin->prepare("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = ?1")
        .bind(1, name)
        .run();
    auto daemon = std::make_shared<RecordingAgent>();
    m_hub->attachDaemon(1, "d1", daemon);
    m_hub->clusterTick();  // still away: nothing, and no throw
    admin->exec("ALTER DATABASE " + name + " ALLOW_CONNECTIONS true");
    EXPECT_FALSE(m_db->presence(1, "d1", 60)) << "recorded while the database was away?";
    m_hub->clusterTick();
    auto where = m_db->presence(1, "d1", 60);
    ASSERT_TRUE(where) << "other instances can reach it now";
    EXPECT_EQ(where->instance, "wss://here");
    m_hub->setCluster(nullptr);
}
