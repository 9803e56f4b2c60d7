// The whole path over real TLS on 127.0.0.1: agent -> hpc-relay -> hpc-daemond.
#include "harness.hpp"

#include "errors.hpp"
#include "platform_client.hpp"
#include "protocol.hpp"
#include "store.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

class EndToEnd : public ::testing::Test {
protected:
    void SetUp() override {
        m_h = std::make_unique<Harness>();
        m_h->startRelay();
        m_work = m_h->dir() / "work";
        auto r = m_h->setupDaemon("d1", "alice@example.org", {m_work.string()});
        ASSERT_EQ(r.status, 0) << r.err;
    }

    void startDaemon(std::vector<std::string> extra = {}) {
        extra.insert(extra.end(), {"--heartbeat-seconds", "0.5", "--reconnect-max-seconds", "1"});
        m_h->startDaemon("d1", extra);
        m_token = m_h->login("alice@example.org");
        ASSERT_TRUE(m_h->waitConnected(m_token, "d1")) << m_h->daemonLog("d1");
        m_agent = m_h->agent(m_token);
    }

    agent::ExecOutcome sh(const std::string& script, std::optional<double> timeout = std::nullopt) {
        agent::ExecSpec spec;
        spec.command = script;
        spec.timeoutSeconds = timeout;
        return m_agent->exec("d1", spec, 60s);
    }

    /// Sends a raw frame and returns the next response.
    protocol::Envelope rawRoundTrip(const std::string& frame, bool binary = false) {
        if (binary)
            m_agent->ws().sendBinary(frame);
        else
            m_agent->ws().sendText(frame);
        auto reply = m_agent->ws().read(20s);
        EXPECT_TRUE(reply) << "no reply to a bad frame";
        if (!reply) return {};
        auto parsed = protocol::parse(reply->data, protocol::kMaxResponseBytes);
        EXPECT_TRUE(std::holds_alternative<protocol::Envelope>(parsed));
        return std::get<protocol::Envelope>(parsed);
    }

    std::unique_ptr<Harness> m_h;
    fs::path m_work;
    Secret m_token;
    std::unique_ptr<agent::AgentClient> m_agent;
};

int countOf(const std::string& haystack, const std::string& needle) {
    int n = 0;
    for (auto p = haystack.find(needle); p != std::string::npos; p = haystack.find(needle, p + 1)) ++n;
    return n;
}

}  // namespace

TEST_F(EndToEnd, ACommandSeesOnlyItsOwnDescriptors) {
    // Not the daemon's platform link, its D-Bus connection or anything its
    // starter left open: a command could shut the link down through them.
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    agent::ExecSpec spec;
    spec.argv = {"ls", "-l", "/proc/self/fd"};
    auto r = m_agent->exec("d1", spec, 60s);
    ASSERT_EQ(r.exitCode, 0) << r.err;
    auto fds = parseFdListing(r.out);
    std::set<int> numbers;
    for (auto& [fd, target] : fds) numbers.insert(fd);
    EXPECT_EQ(numbers, (std::set<int>{0, 1, 2, 3})) << r.out;  // 3: ls reading /proc/self/fd
    for (auto& [fd, target] : fds) EXPECT_EQ(target.find("socket:"), std::string::npos) << r.out;
}

TEST_F(EndToEnd, ExecReturnsOutputAndExitCode) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    auto r = sh("echo hello; echo warn >&2; exit 3");
    EXPECT_EQ(r.out, "hello\n");
    EXPECT_EQ(r.err, "warn\n");
    EXPECT_EQ(r.exitCode, 3);
    agent::ExecSpec argv;
    argv.argv = {"printf", "%s|", "a b", "c"};
    auto a = m_agent->exec("d1", argv);
    EXPECT_EQ(a.out, "a b|c|");
    EXPECT_EQ(a.exitCode, 0);
}

TEST_F(EndToEnd, ExecRunsInTheAllowedDirectoryAndRefusesOthers) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    EXPECT_EQ(sh("pwd").out, fs::canonical(m_work).string() + "\n");
    agent::ExecSpec spec;
    spec.argv = {"pwd"};
    spec.cwd = "/etc";
    try {
        m_agent->exec("d1", spec);
        FAIL() << "ran outside the allowed directories";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::PathNotAllowed);
        EXPECT_NE(std::string(e.what()).find(fs::canonical(m_work).string()), std::string::npos)
            << "the message names the allowed directories";
    }
}

TEST_F(EndToEnd, ExecReportsASignalExit) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    auto r = sh("kill -KILL $$");
    EXPECT_FALSE(r.exitCode);
    EXPECT_EQ(r.signal, SIGKILL);
    EXPECT_EQ(r.shellStatus(), 128 + SIGKILL);
}

TEST_F(EndToEnd, ExecPassesStdinAndCapsOutput) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    agent::ExecSpec spec;
    spec.argv = {"sort"};
    spec.stdinData = "b\na\nc\n";
    EXPECT_EQ(m_agent->exec("d1", spec).out, "a\nb\nc\n");
    agent::ExecSpec big;
    big.command = "head -c 100000 /dev/zero | tr '\\0' x";
    big.maxOutputBytes = 4096;
    auto r = m_agent->exec("d1", big);
    EXPECT_EQ(r.out.size(), 4096u);
    EXPECT_TRUE(r.outTruncated);
}

TEST_F(EndToEnd, TimeoutKillsTheWholeProcessGroup) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    auto pidFile = m_work / "grandchild.pid";
    auto r = sh("(trap '' TERM; sleep 120) & echo $! > " + pidFile.string() + "; sleep 120", 0.5);
    EXPECT_TRUE(r.timedOut);
    pid_t grandchild = 0;
    std::ifstream(pidFile) >> grandchild;
    ASSERT_GT(grandchild, 0);
    EXPECT_TRUE(waitUntil([&] { return ::kill(grandchild, 0) != 0; }, 10s))
        << "grandchild " << grandchild << " outlived the timeout";
}

TEST_F(EndToEnd, ManyExecsRunConcurrently) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    // Twenty one-second commands at once: sent together, answered together.
    std::set<std::string> ids;
    for (int i = 0; i < 20; ++i) {
        protocol::Envelope env;
        env.type = "exec";
        env.id = "c" + std::to_string(i);
        env.daemonId = "d1";
        env.payload = {{"command", "sleep 1; echo " + std::to_string(i)}};
        m_agent->ws().sendText(protocol::serialize(env));
        ids.insert(env.id);
    }
    auto start = std::chrono::steady_clock::now();
    while (!ids.empty()) {
        auto f = m_agent->ws().read(30s);
        ASSERT_TRUE(f);
        auto env = std::get<protocol::Envelope>(protocol::parse(f->data, protocol::kMaxResponseBytes));
        ASSERT_TRUE(env.ok) << env.errorMessage;
        ids.erase(env.replyTo);
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, 15s) << "the execs ran one after another";
}

TEST_F(EndToEnd, AnAgentCannotReachAnotherUsersDaemon) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    auto bobToken = m_h->login("bob@example.org");
    auto bob = m_h->agent(bobToken);
    agent::ExecSpec spec;
    spec.argv = {"true"};
    try {
        bob->exec("d1", spec);
        FAIL() << "bob reached alice's daemon";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Unavailable);
    }
    EXPECT_EQ(countOf(m_h->daemonLog("d1"), "exec r"), 0) << "no request reached the daemon";
}

TEST_F(EndToEnd, ABadApiKeyIsRefusedOnceAndNotRetried) {
    m_h->editProfile("d1", [](Profile& p) { p.apiKey = Secret("hpcd_not_a_real_key"); });
    m_h->startDaemon("d1", {"--reconnect-max-seconds", "0.2"});
    ASSERT_TRUE(m_h->waitLinkState("d1", "unauthorized", 10s)) << m_h->daemonLog("d1");
    // Lets time pass on purpose (waits for nothing): a daemon retrying in a
    // loop would be refused again many times within it.
    std::this_thread::sleep_for(2s);
    EXPECT_EQ(countOf(m_h->relayLog(), "bad or missing API key"), 1)
        << "a refused key must not be retried in a tight loop";
    EXPECT_EQ(m_h->daemonLog("d1").find("hpcd_not_a_real_key"), std::string::npos) << "the key is never logged";
    EXPECT_EQ(m_h->relayLog().find("hpcd_not_a_real_key"), std::string::npos);
}

TEST_F(EndToEnd, UnregisteringADaemonEndsItsLinkForGood) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    net::PlatformClient platform(*parseUrl(m_h->url()), net::ClientOptions{m_h->caFile()});
    EXPECT_EQ(platform.deleteDaemon(m_token, "d1"), 1) << "its API key is revoked with it";
    ASSERT_TRUE(m_h->waitLinkState("d1", "unauthorized", 10s)) << m_h->daemonLog("d1");
    auto problem = std::string(m_h->daemonStatus("d1").at("link_problem").as_string());
    EXPECT_NE(problem.find("hpc-daemonctl setup"), std::string::npos) << problem;
    // A daemon that kept trying would be seen connecting or in backoff within
    // its 1 s backoff cap.
    EXPECT_FALSE(m_h->waitStatus(
        "d1", [](const json::object& s) { return s.at("link_state").as_string() != "unauthorized"; }, 2s))
        << m_h->daemonLog("d1");
}

TEST_F(EndToEnd, DaemonReconnectsAfterTheRelayRestarts) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    ASSERT_EQ(sh("echo before").out, "before\n");
    m_h->killRelay();
    // The daemon saw its link drop (it may go through backoff too fast to be seen).
    ASSERT_TRUE(m_h->waitStatus(
        "d1", [](const json::object& s) { return s.at("link_state").as_string() != "connected"; }, 10s))
        << m_h->daemonLog("d1");
    m_h->startRelay(m_h->port());
    // Backoff is capped at 1 s here: the daemon must be back well within that.
    ASSERT_TRUE(m_h->waitConnected(m_token, "d1", 15s)) << m_h->daemonLog("d1");
    m_agent = m_h->agent(m_token);
    EXPECT_EQ(sh("echo after").out, "after\n");
}

TEST_F(EndToEnd, ADeadLinkIsDetectedWithinThreeHeartbeats) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    // A frozen relay keeps the TCP connection open but answers nothing: only
    // the heartbeat can tell.
    ASSERT_TRUE(m_h->waitLinkState("d1", "connected", 10s));
    ::kill(m_h->relayPid(), SIGSTOP);
    bool detected = m_h->waitStatus(
        "d1", [](const json::object& s) { return s.at("link_state").as_string() != "connected"; }, 10s);
    ::kill(m_h->relayPid(), SIGCONT);
    EXPECT_TRUE(detected) << m_h->daemonLog("d1");
    EXPECT_TRUE(m_h->waitConnected(m_token, "d1", 15s));
}

TEST_F(EndToEnd, EveryMalformedMessageGetsAProtocolErrorAndTheLinkStaysUp) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    struct Case {
        std::string frame;
        ErrorCode expected;
    };
    std::vector<Case> cases = {
        {"this is not json", ErrorCode::BadRequest},
        {"[1,2,3]", ErrorCode::BadRequest},
        {R"({"v":1,"type":"exec","daemon_id":"d1"})", ErrorCode::BadRequest},
        {R"({"v":2,"type":"exec","id":"v2","daemon_id":"d1"})", ErrorCode::BadRequest},
        {R"({"v":1,"type":7,"id":"t","daemon_id":"d1"})", ErrorCode::BadRequest},
        {R"({"v":1,"type":"exec","id":"p","daemon_id":"d1","payload":[]})", ErrorCode::BadRequest},
        {R"({"v":1,"type":"exec","id":"n","payload":{}})", ErrorCode::BadRequest},
        {R"({"v":1,"type":"no.such.type","id":"u","daemon_id":"d1"})", ErrorCode::UnknownType},
        {R"({"v":1,"type":"exec","id":"e","daemon_id":"d1","payload":{"argv":"ls"}})", ErrorCode::BadRequest},
        {R"({"v":1,"type":"exec","id":"t","daemon_id":"d1","payload":{"command":"x","timeout_s":-5}})",
         ErrorCode::BadRequest},
        {R"({"v":1,"type":"exec","id":"h","daemon_id":"d1","payload":{"stdin":")" + std::string(2 << 20, 'x') + "\"}}",
         ErrorCode::BadRequest},
    };
    for (const auto& c : cases) {
        auto reply = rawRoundTrip(c.frame);
        EXPECT_FALSE(reply.ok) << c.frame.substr(0, 80);
        EXPECT_EQ(reply.errorCode, c.expected) << c.frame.substr(0, 80) << ": " << reply.errorMessage;
    }
    auto bin = rawRoundTrip(std::string("\0\0\0\7data", 8), true);
    EXPECT_EQ(bin.errorCode, ErrorCode::NotFound) << "no channel 7 is open";
    auto shortFrame = rawRoundTrip(std::string("\0\1", 2), true);
    EXPECT_EQ(shortFrame.errorCode, ErrorCode::BadRequest) << "shorter than the channel header";
    // The same connection, and the daemon's link, still work.
    EXPECT_EQ(sh("echo still-up").out, "still-up\n");
    EXPECT_EQ(countOf(m_h->relayLog(), "daemon d1 (user 1) connected"), 1) << "the daemon link never dropped";
}

TEST_F(EndToEnd, ASecondConnectionOfTheSameDaemonReplacesTheFirst) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    double firstSince = m_h->daemonStatus("d1").at("connected_since").as_double();
    ASSERT_GT(firstSince, 0);
    // The same profile from another home (a second machine with a copy of
    // it): on a shared home the pid-file lock refuses the second daemon.
    fs::path otherHome = m_h->dir() / "other-home";
    fs::create_directories(otherHome);
    fs::permissions(otherHome, fs::perms::owner_all, fs::perm_options::replace);
    for (const auto& e : fs::directory_iterator(m_h->home("d1")))
        if (e.path().filename().string().rfind("state.db", 0) == 0)
            fs::copy_file(e.path(), otherHome / e.path().filename());
    SpawnOptions o;
    o.argv = {Harness::binary("hpc-daemond"), "--daemon-id", "d1", "--unauthorized-retry-seconds", "60"};
    o.envOverrides = {"HPC_DAEMON_HOME=" + otherHome.string()};
    o.outputFile = (m_h->dir() / "second.log").string();
    o.dieWithParent = true;  // nothing the test starts outlives it
    ChildGuard second(spawn(o).pid);
    // The relay closes the first daemon's link when the second connects: it
    // leaves "connected", or is back on a connection of its own.
    EXPECT_TRUE(m_h->waitStatus(
        "d1",
        [firstSince](const json::object& s) {
            return s.at("link_state").as_string() != "connected" || s.at("connected_since").as_double() != firstSince;
        },
        10s))
        << m_h->relayLog() << readFile(m_h->dir() / "second.log");
    second.terminate();
}

TEST_F(EndToEnd, LoosenedModesInTheStateDirectoryAreSetBack) {
    ASSERT_NO_FATAL_FAILURE(startDaemon({"--state-check-seconds", "1"}));
    fs::path home = m_h->home("d1");
    auto modeOf = [](const fs::path& p) {
        struct stat st {};
        return ::stat(p.c_str(), &st) == 0 ? st.st_mode & 07777 : 07777u;
    };
    ASSERT_EQ(modeOf(home / "state.db"), 0600u);
    ASSERT_EQ(::chmod((home / "state.db").c_str(), 0644), 0);
    ASSERT_EQ(::chmod(home.c_str(), 0755), 0);
    EXPECT_TRUE(waitUntil([&] { return modeOf(home / "state.db") == 0600u && modeOf(home) == 0700u; }, 30s))
        << std::oct << modeOf(home / "state.db") << " " << modeOf(home);
    EXPECT_EQ(sh("echo still-up").out, "still-up\n");
}

TEST_F(EndToEnd, DaemonExitsCleanlyOnSigterm) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    pid_t pid = m_h->daemonPid("d1");
    ASSERT_GT(pid, 0);
    ::kill(pid, SIGTERM);
    int status = 0;
    bool reaped = waitUntil([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, 10s);
    ASSERT_TRUE(reaped);
    EXPECT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    EXPECT_NE(m_h->daemonLog("d1").find("hpc-daemond stopped"), std::string::npos);
}

TEST_F(EndToEnd, EveryExecIsInTheAuditLogWithItsAgentAndExitCode) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    sh("echo audited; exit 4");
    agent::ExecSpec spec;
    spec.argv = {"true"};
    m_agent->exec("d1", spec);
    auto r = runCommand({Harness::binary("hpc-daemonctl"), "audit", "--json"}, {},
                        {"HPC_DAEMON_HOME=" + m_h->home("d1").string()});
    ASSERT_EQ(r.status, 0) << r.err;
    auto entries = json::parse(r.out).as_array();
    ASSERT_EQ(entries.size(), 2u) << r.out;
    EXPECT_EQ(entries[0].at("command").as_string(), "echo audited; exit 4");
    EXPECT_EQ(entries[0].at("exit_code").as_int64(), 4);
    EXPECT_EQ(entries[0].at("session").as_string(), "exec");
    EXPECT_EQ(entries[0].at("cwd").as_string(), fs::canonical(m_work).string());
    EXPECT_EQ(entries[0].at("agent").as_string(), "default") << "the agent identity the token was signed in as";
    EXPECT_EQ(entries[1].at("command").as_string(), "true");
    EXPECT_EQ(entries[1].at("exit_code").as_int64(), 0);
}

TEST_F(EndToEnd, RelayMetricsPassPromtoolAndCountConnectionsAndExecs) {
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    auto [status, before] = m_h->relayMetrics();
    ASSERT_EQ(status, 200) << before;
    EXPECT_EQ(metricValue(before, R"(hpc_relay_connections{kind="agent"})"), 1);
    EXPECT_EQ(metricValue(before, R"(hpc_relay_connections{kind="daemon"})"), 1);
    EXPECT_GE(metricValue(before, R"(hpc_relay_signins_total{result="success"})").value_or(0), 1);
    auto second = m_h->agent(m_token);
    const std::string agents = R"(hpc_relay_connections{kind="agent"})";
    ASSERT_TRUE(waitUntil([&] { return metricValue(m_h->relayMetrics().second, agents) == 2; }, 10s));
    auto execsBefore = metricValue(before, R"(hpc_relay_request_duration_seconds_count{type="exec"})").value_or(0);
    auto out = sh("echo metered; exit 3");
    EXPECT_EQ(out.exitCode, 3);

    auto [again, after] = m_h->relayMetrics();
    ASSERT_EQ(again, 200);
    auto check = promtoolCheck(after);
    EXPECT_EQ(check.status, 0) << check.out << check.err << after;
    EXPECT_EQ(metricValue(after, agents), 2);
    EXPECT_EQ(metricValue(after, R"(hpc_relay_request_duration_seconds_count{type="exec"})"), execsBefore + 1);
    EXPECT_GT(metricValue(after, R"(hpc_relay_bytes_routed_total{direction="to_agent",frame="text"})"),
              metricValue(before, R"(hpc_relay_bytes_routed_total{direction="to_agent",frame="text"})"));
    EXPECT_GE(metricValue(after, R"(hpc_relay_http_requests_total{route="/metrics",status="200"})"), 1)
        << "scrapes are counted too";

    // The daemon's own counters, over D-Bus (GetStatus "metrics").
    auto counters = m_h->daemonStatus("d1").at("metrics").as_object();
    EXPECT_EQ(counters.at("execs").to_number<int>(), 1);
    EXPECT_EQ(counters.at("execs_failed").to_number<int>(), 1);
    EXPECT_EQ(counters.at("messages.exec").to_number<int>(), 1);
    EXPECT_EQ(counters.at("reconnects").to_number<int>(), 0);
}

TEST_F(EndToEnd, RelayMetricsNeedTheTokenOnceATokenFileIsGiven) {
    auto tokenFile = m_h->dir() / "metrics-token";
    std::ofstream(tokenFile) << "s3cret-metrics-token-0123456789\n";
    m_h->stopRelay();
    m_h->setRelayArgs({"--metrics-token-file", tokenFile.string()});
    m_h->startRelay();
    EXPECT_EQ(m_h->relayMetrics().first, 401) << "not even from loopback without it";
    EXPECT_EQ(m_h->relayMetrics("wrong-token-0123456789").first, 401);
    auto [status, text] = m_h->relayMetrics("s3cret-metrics-token-0123456789");
    EXPECT_EQ(status, 200);
    EXPECT_EQ(metricValue(text, R"(hpc_relay_connections{kind="agent"})"), 0);
    EXPECT_EQ(m_h->relayLog().find("s3cret-metrics-token"), std::string::npos) << "never logged";
}
