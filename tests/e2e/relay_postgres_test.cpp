// Issue 16: hpc-relay with its state in PostgreSQL (--database) on the whole
// path: setup, a daemon, a command, a job and its callback; a restart of the
// relay keeps all of it; a second relay instance on the same database knows
// the same users, tokens and daemons; failover behind HAProxy; instances
// that route to each other (--cluster-url). A real PostgreSQL server on
// 127.0.0.1 (ctest's fixture `postgres`), real TLS, real processes.
#include "haproxy.hpp"
#include "harness.hpp"
#include "postgres.hpp"

#include "platform_client.hpp"
#include "store.hpp"
#include "util.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

std::int64_t rowsIn(const std::string& url, const std::string& table) {
    return relay::sql::openPostgres(url)->queryInt("SELECT COUNT(*) FROM " + table);
}

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

    std::int64_t rows(const std::string& table) { return rowsIn(m_url, table); }

    Harness m_h;
    std::string m_url;
    fs::path m_work;
    Secret m_token;
};

/// Two relay instances on one database, routing to each other.
struct TwoInstances {
    Harness a, b;
    bool ready(std::string& whyNot) {
        auto url = freshPostgresDatabase(whyNot);
        if (!url) return false;
        database = *url;
        configureRelayCluster(a, b, database);
        a.startRelay();
        b.startRelay();
        return true;
    }
    std::string database;
};

/// A shell on d1 that prints line-1 ... line-3000 (pausing 50 ms every
/// hundred lines), then END-42.
agent::PtyHandle startNumberedShell(agent::AgentClient& agent) {
    agent::PtySpec spec;
    spec.shell = "/bin/bash";
    spec.env = {{"PS1", "$ "}};
    auto pty = agent.openPty("d1", spec);
    agent.ptyInput(pty.channel,
                   "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo line-$i; [ $((i % 100)) = 0 ] && sleep 0.05; "
                   "done; echo END-$((6*7))\r");
    return pty;
}

/// Reads the shell's output into `out` until `needle` (or an end of the
/// channel, returned) appears, for up to 60 s, acknowledging what it reads
/// when `ack`. Reads without pausing: a reader that pauses lets pings wait
/// behind thousands of one-line frames.
std::optional<agent::PtyEvent> readShellUntil(agent::AgentClient& c, std::uint32_t channel, std::string& out,
                                              const std::string& needle, bool ack = true) {
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline && out.find(needle) == std::string::npos) {
        auto e = c.nextPtyEvent(200ms);
        if (!e || e->channel != channel) continue;
        if (e->kind != agent::PtyEvent::Kind::Output) return e;
        out += e->data;
        if (ack) c.ptyAck("d1", channel, e->data.size());
    }
    return std::nullopt;
}

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

// Issue 16 items 3 and 4: two relay instances on one PostgreSQL database
// behind a real load balancer (HAProxy). The daemon and the agent know only
// the balancer's URL. The instance they use is killed with -9 while a shell
// streams and a job runs: the daemon and the agent reconnect to the other,
// the shell is attached again byte-exact, and each job's callback (one stored
// by the dead instance and not yet acknowledged, one sent after it died)
// is stored once and acknowledged once; hpc-agent wait, started before, carries on.
TEST(RelayFailover, AnInstanceKilledMidStreamAndMidJobLosesNothingAndRepeatsNothing) {
    std::string whyNot;
    auto url = freshPostgresDatabase(whyNot);
    if (!url) GTEST_SKIP() << whyNot;
    if (!HaProxy::available()) GTEST_SKIP() << "no haproxy (scripts/install-deps.sh installs it)";
    Harness a, b;
    a.setRelayArgs({"--database", *url});
    b.setRelayArgs({"--database", *url});
    // One certificate for both, as behind any TCP balancer.
    for (const char* f : {"ca.pem", "cert.pem", "key.pem"})
        fs::copy_file(a.dir() / "tls" / f, b.dir() / "tls" / f, fs::copy_options::overwrite_existing);
    a.startRelay();
    b.startRelay();
    HaProxy lb(a.dir() / "haproxy", {a.port(), b.port()});

    fs::path work = a.dir() / "work";
    fs::create_directories(work);
    ASSERT_EQ(a.setupDaemon("d1", "alice@example.org", {work.string()}).status, 0);
    a.editProfile("d1", [&](Profile& p) { p.platformUrl = lb.url(); });
    a.startDaemon("d1", {"--reconnect-max-seconds", "1", "--job-poll-min-seconds", "1", "--job-poll-max-seconds", "2"},
                  {"LOCAL_MODE=1"});
    Secret token = a.login("alice@example.org");
    ASSERT_TRUE(a.waitConnected(token, "d1")) << "through the balancer, to the first instance\n" << a.daemonLog("d1");
    auto connect = [&] {
        return agent::AgentClient::connect(agent::AgentOptions{*parseUrl(lb.url()), token, a.caFile()});
    };
    auto agent = connect();

    // A job that ends now: its callback is stored by A, and left unacknowledged.
    agent::JobSpec quick;
    quick.script = "#!/bin/sh\necho first\n";
    std::string first(agent->submitJob("d1", quick).at("job_id").as_string());
    ASSERT_TRUE(waitUntil([&] { return rowsIn(*url, "callbacks") == 1; }, 60s)) << a.daemonLog("d1");
    // A job still running when A dies.
    agent::JobSpec slow;
    slow.script = "#!/bin/sh\nsleep 3\necho second\n";
    std::string second(agent->submitJob("d1", slow).at("job_id").as_string());
    // A shell streaming numbered lines for about two seconds.
    auto pty = startNumberedShell(*agent);
    std::string out;
    readShellUntil(*agent, pty.channel, out, "line-400\r\n");
    ASSERT_NE(out.find("line-400\r\n"), std::string::npos) << out;

    // hpc-agent wait on the running job, through the balancer, across the failover.
    SpawnOptions w;
    w.argv = {Harness::binary("hpc-agent"), "wait", "d1", second, "--timeout", "120"};
    w.envOverrides = {"HPC_AGENT_URL=" + lb.url(), "HPC_AGENT_TOKEN=" + token.reveal(), "HPC_AGENT_CA=" + a.caFile()};
    w.outputFile = (a.dir() / "wait.out").string();
    w.dieWithParent = true;
    ChildGuard waiting(spawn(w).pid);

    a.killRelay();
    agent.reset();
    ASSERT_TRUE(b.waitConnected(token, "d1", 60s)) << "the daemon came back through the balancer, to B\n"
                                                   << a.daemonLog("d1");
    agent = connect();
    auto again = agent->attachPty("d1", pty.session, out.size());
    EXPECT_EQ(again.fromByte, out.size());
    readShellUntil(*agent, again.channel, out, "END-42");
    auto numbers = numbersAfter(out, "line-");
    ASSERT_EQ(numbers.size(), 3000u);
    for (int i = 0; i < 3000; ++i) ASSERT_EQ(numbers[static_cast<std::size_t>(i)], i + 1) << "at line " << i + 1;

    // hpc-agent wait reconnected through the balancer and got the running job's end.
    auto waited = waiting.waitFor(60s);
    ASSERT_TRUE(waited) << readFile(a.dir() / "wait.out");
    EXPECT_EQ(waited->code, 0) << readFile(a.dir() / "wait.out");
    // The callback A stored and nobody acknowledged comes to this connection
    // once; the one B received came once to whichever connection of the
    // identity was there (hpc-agent wait acknowledged it), never twice.
    std::map<std::string, int> seen;
    auto until = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < until)
        if (auto cb = agent->nextCallback(200ms)) {
            ++seen[cb->jobId];
            agent->ackCallback(cb->callbackId);
        }
    EXPECT_EQ(seen[first], 1);
    EXPECT_LE(seen[second], 1);
    EXPECT_EQ(rowsIn(*url, "callbacks"), 2) << "stored once each, whichever instance received it";
    EXPECT_TRUE(waitUntil(
        [&] {
            return relay::sql::openPostgres(*url)->queryInt(
                       "SELECT COUNT(*) FROM callbacks WHERE acked_at IS NOT NULL") == 2;
        },
        10s))
        << "each acknowledged";
    // Acknowledged: a new connection is not sent them again.
    auto later = connect();
    EXPECT_FALSE(later->nextCallback(2s)) << "an acknowledged callback came again";
}

// Issue 16 items 2 and 4: the daemon is connected to instance A, the agent to
// instance B, which reaches the daemon through a link to A (presence in the
// database). A command, a shell streaming 3000 lines byte-exact, a job with
// hpc-agent wait and its callback (hpc-agent events, and the library's
// events) all work across; then A is
// killed with -9 mid-stream and mid-job: the daemon comes back through the
// balancer to B, the agent attaches its shell again, and each callback comes
// once.
TEST(RelayCluster, AnAgentOnOneInstanceReachesADaemonOnAnotherAndSurvivesItsDeath) {
    if (!HaProxy::available()) GTEST_SKIP() << "no haproxy (scripts/install-deps.sh installs it)";
    TwoInstances c;
    std::string whyNot;
    if (!c.ready(whyNot)) GTEST_SKIP() << whyNot;
    HaProxy lb(c.a.dir() / "haproxy", {c.a.port(), c.b.port()});
    fs::path work = c.a.dir() / "work";
    fs::create_directories(work);
    ASSERT_EQ(c.a.setupDaemon("d1", "alice@example.org", {work.string()}).status, 0);
    c.a.editProfile("d1", [&](Profile& p) { p.platformUrl = lb.url(); });
    c.a.startDaemon("d1",
                    {"--reconnect-max-seconds", "1", "--job-poll-min-seconds", "1", "--job-poll-max-seconds", "2"},
                    {"LOCAL_MODE=1"});
    Secret token = c.b.login("alice@example.org");
    ASSERT_TRUE(c.a.waitConnected(token, "d1")) << "to A, through the balancer\n" << c.a.daemonLog("d1");
    EXPECT_EQ(c.a.relayHealth().at("daemons_connected").as_int64(), 1);
    EXPECT_EQ(c.b.relayHealth().at("daemons_connected").as_int64(), 0);
    ASSERT_TRUE(c.b.waitConnected(token, "d1")) << "B lists the daemon A holds as connected\n" << c.b.relayLog();
    auto agent = c.b.agent(token);

    // A command.
    agent::ExecSpec echo;
    echo.command = "echo across-$((6*7))";
    auto ran = agent->exec("d1", echo, 60s);
    EXPECT_EQ(ran.exitCode, 0);
    EXPECT_EQ(ran.out, "across-42\n") << c.b.relayLog();

    // A job: its callback, stored by A, comes through B to hpc-agent events
    // and to the agent as an event; hpc-agent wait through B returns the
    // job's end (and acknowledges the callback).
    agent::JobSpec quick;
    quick.script = "#!/bin/sh\necho first\n";
    std::string first(agent->submitJob("d1", quick).at("job_id").as_string());
    auto events =
        runCommand({Harness::binary("hpc-agent"), "events", "--count", "1", "--timeout", "60", "--no-ack"}, {},
                   {"HPC_AGENT_URL=" + c.b.url(), "HPC_AGENT_TOKEN=" + token.reveal(), "HPC_AGENT_CA=" + c.b.caFile()});
    EXPECT_EQ(events.status, 0) << events.err;
    EXPECT_NE(events.out.find(first), std::string::npos) << "hpc-agent events through B: " << events.out;
    auto waited =
        runCommand({Harness::binary("hpc-agent"), "wait", "d1", first, "--timeout", "60"}, {},
                   {"HPC_AGENT_URL=" + c.b.url(), "HPC_AGENT_TOKEN=" + token.reveal(), "HPC_AGENT_CA=" + c.b.caFile()});
    EXPECT_EQ(waited.status, 0) << waited.out << waited.err;
    auto cb = agent->nextCallback(30s);
    ASSERT_TRUE(cb) << "the callback A stored came to the agent on B\n" << c.b.relayLog();
    EXPECT_EQ(cb->jobId, first);
    agent->ackCallback(cb->callbackId);

    // A shell streaming numbered lines, and a job still running when A dies.
    agent::JobSpec slow;
    slow.script = "#!/bin/sh\nsleep 6\necho second\n";
    std::string second(agent->submitJob("d1", slow).at("job_id").as_string());
    auto pty = startNumberedShell(*agent);
    std::string out;
    readShellUntil(*agent, pty.channel, out, "line-400\r\n");
    ASSERT_NE(out.find("line-400\r\n"), std::string::npos) << out;
    EXPECT_EQ(agent->jobStatus("d1", second).at("state").as_string(), "RUNNING") << "killed mid-job";

    c.a.killRelay();
    // The link from B to A ends: the shell is lost with UNAVAILABLE, and the
    // daemon comes back through the balancer, to B.
    // Not acknowledged: the daemon sends it again on attaching.
    auto lost = readShellUntil(*agent, pty.channel, out, "END-42", false);
    std::size_t lostAt = out.size();
    ASSERT_TRUE(lost) << "the agent on B learnt that its shell's link went away";
    EXPECT_EQ(lost->errorCode, "UNAVAILABLE") << lost->error;
    // (B may list it as connected sooner: A's presence outlives A by up to 15 s.)
    ASSERT_TRUE(waitUntil([&] { return c.b.relayHealth().at("daemons_connected").as_int64() == 1; }, 60s))
        << c.a.daemonLog("d1");
    auto again = agent->attachPty("d1", pty.session, out.size());
    EXPECT_EQ(again.fromByte, out.size());
    readShellUntil(*agent, again.channel, out, "END-42");
    auto numbers = numbersAfter(out, "line-");
    for (std::size_t i = 0; i < numbers.size() && i < 3000; ++i)
        if (numbers[i] != static_cast<int>(i) + 1) {
            auto at = out.find("line-" + std::to_string(i) + "\r\n");
            ADD_FAILURE() << "line " << i + 1 << " is " << numbers[i] << " (attached at byte " << again.fromByte
                          << ", the lost event at " << lostAt << "); around it:\n"
                          << out.substr(at == std::string::npos ? 0 : (at > 200 ? at - 200 : 0), 500);
            break;
        }
    ASSERT_EQ(numbers.size(), 3000u) << out.substr(out.size() > 300 ? out.size() - 300 : 0);

    // The running job's callback comes once, the first one not again.
    std::map<std::string, int> seen;
    auto until = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < until && seen[second] == 0)
        if (auto next = agent->nextCallback(200ms)) {
            ++seen[next->jobId];
            agent->ackCallback(next->callbackId);
        }
    until = std::chrono::steady_clock::now() + 3s;
    while (std::chrono::steady_clock::now() < until)
        if (auto next = agent->nextCallback(200ms)) ++seen[next->jobId];
    EXPECT_EQ(seen[second], 1);
    EXPECT_EQ(seen[first], 0) << "acknowledged before A died";
    EXPECT_EQ(rowsIn(c.database, "callbacks"), 2);
}

// A link between instances carries the cluster's secret: without it, or for
// a daemon not connected there, the upgrade is refused; a request on a link
// (hub_test: a request on a link that names no agent is refused).
TEST(RelayCluster, RefusesALinkWithoutTheSecretOrForADaemonNotConnectedThere) {
    TwoInstances c;
    std::string whyNot;
    if (!c.ready(whyNot)) GTEST_SKIP() << whyNot;
    fs::path work = c.a.dir() / "work";
    fs::create_directories(work);
    ASSERT_EQ(c.a.setupDaemon("d1", "alice@example.org", {work.string()}).status, 0);
    c.a.startDaemon("d1", {}, {"LOCAL_MODE=1"});
    Secret token = c.a.login("alice@example.org");
    ASSERT_TRUE(c.a.waitConnected(token, "d1")) << c.a.daemonLog("d1");
    std::string userId = std::to_string(relay::sql::openPostgres(c.database)->queryInt("SELECT MIN(id) FROM users"));
    auto upgrade = [&](const std::string& path, const std::string& bearer) {
        return runCommand({"curl",
                           "-s",
                           "-o",
                           "/dev/null",
                           "-w",
                           "%{http_code}",
                           "--cacert",
                           c.a.caFile(),
                           "-H",
                           "Connection: Upgrade",
                           "-H",
                           "Upgrade: websocket",
                           "-H",
                           "Sec-WebSocket-Version: 13",
                           "-H",
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                           "-H",
                           "Authorization: Bearer " + bearer,
                           "--max-time",
                           "5",
                           c.a.url() + path})
            .out;
    };
    EXPECT_EQ(upgrade("/hpc/cluster/" + userId + "/d1/ws", "not-the-secret"), "401");
    EXPECT_EQ(upgrade("/hpc/cluster/" + userId + "/d1/ws", token.reveal()), "401") << "an agent's token is not it";
    EXPECT_EQ(upgrade("/hpc/cluster/" + userId + "/nope/ws", kTestClusterSecret), "404");
    EXPECT_EQ(upgrade("/hpc/cluster/x/d1/ws", kTestClusterSecret), "400");
    EXPECT_EQ(upgrade("/hpc/cluster/" + userId + "/d1/ws", kTestClusterSecret), "101");
}

TEST(RelayDatabaseOption, RefusesAPasswordInTheUrlAndSaysWhyWhenItCannotConnect) {
    Harness h;
    auto relay = [&](const std::string& database) {
        return runCommand({Harness::binary("hpc-relay"), "--port", "0", "--insecure-http", "--data-dir",
                           (h.dir() / "data").string(), "--otp-file", (h.dir() / "codes").string(), "--database",
                           database});
    };
    auto withPassword = relay("postgresql://alice:s3cret-pw@127.0.0.1:1/hpc");
    EXPECT_EQ(withPassword.status, 1);
    EXPECT_NE(withPassword.err.find(".pgpass"), std::string::npos) << withPassword.err;
    EXPECT_EQ(withPassword.err.find("s3cret-pw"), std::string::npos) << "the password is never repeated";
    auto query = relay("postgresql://alice@127.0.0.1:1/hpc?password=s3cret-pw");
    EXPECT_EQ(query.status, 1);
    EXPECT_EQ(query.err.find("s3cret-pw"), std::string::npos) << query.err;

    int closed = freeLoopbackPort();
    auto down = relay("postgresql://alice@127.0.0.1:" + std::to_string(closed) + "/hpc");
    EXPECT_EQ(down.status, 1);
    EXPECT_NE(down.err.find("cannot connect to PostgreSQL"), std::string::npos) << down.err;

    auto other = relay("mysql://alice@127.0.0.1/hpc");
    EXPECT_EQ(other.status, 2) << other.err;
    EXPECT_FALSE(fs::exists(h.dir() / "data" / "relay.db")) << "nothing was made for a refused option";
}
