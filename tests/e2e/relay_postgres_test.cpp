// Issue 16 item 1: hpc-relay with its state in PostgreSQL (--database) on the
// whole path: setup, a daemon, a command, a job and its callback; a restart
// of the relay keeps all of it; a second relay instance on the same database
// knows the same users, tokens and daemons. A real PostgreSQL server on
// 127.0.0.1 (ctest's fixture `postgres`), real TLS, real processes.
#include "harness.hpp"
#include "postgres.hpp"

#include "platform_client.hpp"
#include "util.hpp"

#include <gtest/gtest.h>

#include <filesystem>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

class RelayOnPostgres : public ::testing::Test {
protected:
    void SetUp() override {
        std::string whyNot;
        auto url = freshPostgresDatabase(whyNot);
        if (!url) GTEST_SKIP() << whyNot;
        m_url = *url;
        m_h.setRelayArgs({"--database", m_url});
        m_h.startRelay();
        m_work = m_h.dir() / "work";
        fs::create_directories(m_work);
        ASSERT_EQ(m_h.setupDaemon("d1", "alice@example.org", {m_work.string()}).status, 0);
        m_token = m_h.login("alice@example.org");
        m_h.startDaemon("d1",
                        {"--reconnect-max-seconds", "1", "--job-poll-min-seconds", "1", "--job-poll-max-seconds", "2"},
                        {"LOCAL_MODE=1"});
        ASSERT_TRUE(m_h.waitConnected(m_token, "d1")) << m_h.daemonLog("d1");
    }

    std::string echo(agent::AgentClient& agent, const std::string& text) {
        agent::ExecSpec spec;
        spec.command = "echo " + text;
        return agent.exec("d1", spec, 60s).out;
    }

    std::int64_t rows(const std::string& table) {
        return relay::sql::openPostgres(m_url)->queryInt("SELECT COUNT(*) FROM " + table);
    }

    Harness m_h;
    std::string m_url;
    fs::path m_work;
    Secret m_token;
};

}  // namespace

TEST_F(RelayOnPostgres, CarriesCommandsAndJobsAndKeepsItsStateAcrossARestart) {
    auto agent = m_h.agent(m_token);
    EXPECT_EQ(echo(*agent, "hi"), "hi\n");
    agent::JobSpec spec;
    spec.script = "#!/bin/sh\necho done\n";
    auto jobId = std::string(agent->submitJob("d1", spec).at("job_id").as_string());
    auto cb = agent->waitForJob("d1", jobId, 60s);
    ASSERT_TRUE(cb) << m_h.daemonLog("d1");
    EXPECT_EQ(cb->state, "COMPLETED");
    EXPECT_EQ(cb->stdoutTail, "done\n");
    agent->ackCallback(cb->callbackId);

    // All of it is in PostgreSQL, and the relay made no relay.db.
    EXPECT_EQ(rows("users"), 1);
    EXPECT_EQ(rows("daemons"), 1);
    EXPECT_EQ(rows("callbacks"), 1);
    EXPECT_FALSE(fs::exists(m_h.dir() / "relay" / "relay.db"));

    // A new relay process on the same database: the token, the registration
    // and the acknowledged callback are all still there.
    agent.reset();
    m_h.stopRelay();
    m_h.startRelay();
    ASSERT_TRUE(m_h.waitConnected(m_token, "d1")) << m_h.daemonLog("d1");
    agent = m_h.agent(m_token);
    EXPECT_EQ(echo(*agent, "again"), "again\n");
    auto stored = agent->storedCallbacks("d1", jobId);
    ASSERT_EQ(stored.size(), 1u);
    EXPECT_EQ(stored[0].callbackId, cb->callbackId);
}

TEST_F(RelayOnPostgres, ASecondInstanceOnTheSameDatabaseKnowsTheSameUsersTokensAndDaemons) {
    Harness other;
    other.setRelayArgs({"--database", m_url});
    other.startRelay();
    net::PlatformClient b(*parseUrl(other.url()), net::ClientOptions{other.caFile()});
    // A token issued by the first instance works on the second, which lists
    // the daemon registered through the first.
    auto daemons = b.listDaemons(m_token);
    ASSERT_EQ(daemons.size(), 1u);
    EXPECT_EQ(daemons[0].as_object().at("daemon_id").as_string(), "d1");
    // A sign-in on the second instance is the same user; its token works on the first.
    auto fresh = other.login("alice@example.org", "second");
    net::PlatformClient a(*parseUrl(m_h.url()), net::ClientOptions{m_h.caFile()});
    EXPECT_EQ(a.whoami(fresh).at("email").as_string(), "alice@example.org");
    EXPECT_EQ(rows("users"), 1);
    // Revoked on the second instance, refused by the first.
    b.revoke(fresh);
    EXPECT_THROW(a.whoami(fresh), Error);
}
