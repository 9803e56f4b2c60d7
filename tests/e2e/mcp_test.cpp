// hpc-agent mcp (issue 18): the official MCP TypeScript SDK
// (tests/mcp/node_modules, installed by the test command from the lockfile)
// drives the stdio server through the real relay and daemon, with local jobs.
#include "harness.hpp"
#include "util.hpp"

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;

namespace {

const fs::path kClients = fs::path(HPC_SOURCE_DIR) / "tests" / "mcp";
const std::string kAllowedOrigin = "https://console.example.org";

class McpTest : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_TRUE(fs::exists(kClients / "node_modules" / "@modelcontextprotocol" / "sdk"))
            << "the MCP SDK is not installed: run npm ci --prefix tests/mcp (scripts/test.sh does)";
        m_h.setRelayArgs({"--mcp-origin", kAllowedOrigin});
        m_h.startRelay();
        m_work = m_h.dir() / "work";
        m_outside = m_h.dir() / "outside";
        fs::create_directories(m_work);
        fs::create_directories(m_outside);
        auto r = m_h.setupDaemon("m", "mcp@example.org", {m_work.string()});
        ASSERT_EQ(r.status, 0) << r.err;
        m_h.startDaemon("m", {}, {"LOCAL_MODE=1"});  // jobs as local processes: no SLURM in this tier
        m_token = m_h.login("mcp@example.org");
        ASSERT_TRUE(m_h.waitConnected(m_token, "m")) << m_h.daemonLog("m");
    }

    std::vector<std::string> agentEnv() const {
        return {"HPC_AGENT_URL=" + m_h.url(), "HPC_AGENT_TOKEN=" + m_token.reveal(), "HPC_AGENT_CA=" + m_h.caFile()};
    }

    /// Runs a scenario script with node; returns its findings (its last line).
    json::object runScenario(const std::string& script, std::vector<std::string> env = {}) {
        env.insert(env.end(), {"HPC_AGENT_BIN=" + Harness::binary("hpc-agent"), "MCP_DAEMON=m",
                               "MCP_WORK=" + m_work.string(), "MCP_OUTSIDE=" + m_outside.string()});
        for (auto& e : agentEnv()) env.push_back(e);
        auto r = runCommand({"node", (kClients / script).string()}, "", env, 150s);
        EXPECT_EQ(r.status, 0) << r.out << r.err << m_h.daemonLog("m");
        auto nl = r.out.find_last_of('\n', r.out.size() >= 2 ? r.out.size() - 2 : 0);
        json::error_code ec;
        auto v = json::parse(nl == std::string::npos ? r.out : r.out.substr(nl + 1), ec);
        if (ec || !v.is_object()) {
            ADD_FAILURE() << "no findings: " << r.out << r.err;
            return {};
        }
        return v.as_object();
    }

    /// hpc-agent mcp --listen on a free loopback port, ready once it has
    /// written its URL on the readiness pipe.
    ReadyProcess startHttpServer(const std::vector<std::string>& args) {
        constexpr int kReadyFd = 3;
        SpawnOptions o;
        o.argv = {Harness::binary("hpc-agent"), "mcp", "--listen", "127.0.0.1:0", "--ready-fd",
                  std::to_string(kReadyFd)};
        o.argv.insert(o.argv.end(), args.begin(), args.end());
        o.envOverrides = agentEnv();
        o.outputFile = (m_h.dir() / "mcp-http.log").string();
        auto ready = spawnReady(o, kReadyFd, 60s, m_h.dir() / "mcp-http.log");
        while (!ready.line.empty() && ready.line.back() == '\n') ready.line.pop_back();
        return ready;
    }

    /// What http_scenario.mjs found, every check of it.
    static void expectHttpScenarioHeld(const json::object& findings, const std::string& serverLog) {
        ASSERT_TRUE(findings.contains("ok")) << json::serialize(findings) << serverLog;
        for (const char* check : {"refused", "cancel", "ended", "resumed", "evicted", "subscribed"})
            EXPECT_EQ(findings.at(check).as_string(), "ok") << check;
        EXPECT_GE(findings.at("progress").as_int64(), 1);
    }

    Harness m_h;
    fs::path m_work, m_outside;
    Secret m_token{""};
};

}  // namespace

TEST_F(McpTest, TheOfficialSdkRunsCommandsJobsAndReadsSkillsOverStdio) {
    auto findings = runScenario("stdio_scenario.mjs");
    ASSERT_TRUE(findings.contains("ok")) << json::serialize(findings);
    EXPECT_EQ(findings.at("tools").as_int64(), 14);
    EXPECT_EQ(findings.at("files").as_string(), "ok");
    EXPECT_EQ(findings.at("run_cancel").as_string(), "ok");
    EXPECT_EQ(findings.at("subscribed").as_string(), "ok");
    EXPECT_GE(findings.at("run_progress").as_int64(), 1);
    EXPECT_FALSE(fs::exists(m_outside / "x.txt")) << "nothing written outside the allowed directories";
    EXPECT_EQ(findings.at("shell").as_string(), "ok");
    EXPECT_EQ(findings.at("job").as_string(), "COMPLETED");
    EXPECT_GE(findings.at("progress").as_int64(), 1);
    EXPECT_GT(findings.at("skill").as_int64(), 0);
}

TEST_F(McpTest, TheOfficialSdkUsesTheStreamableHttpTransportWithABearerToken) {
    auto tokenFile = m_h.dir() / "mcp-http-token";
    std::string token = "mcp-" + randomHex(16);
    {
        std::ofstream out(tokenFile);
        out << token << "\n";
    }
    fs::permissions(tokenFile, fs::perms::owner_read | fs::perms::owner_write);
    auto server = startHttpServer({"--http-token-file", tokenFile.string()});
    ASSERT_EQ(server.line.rfind("http://127.0.0.1:", 0), 0u) << server.line;
    auto findings = runScenario("http_scenario.mjs", {"MCP_URL=" + server.line, "MCP_HTTP_TOKEN=" + token});
    expectHttpScenarioHeld(findings, "");
    auto status = server.child.terminate(5000ms);
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(status->code.value_or(-1), 0) << "SIGTERM ends the server cleanly";
    EXPECT_EQ(readFile(m_h.dir() / "mcp-http.log").find(token), std::string::npos) << "the bearer token was logged";
}

TEST_F(McpTest, TheRelayServesTheSameTransportAtSlashMcpWithTheAgentsOwnToken) {
    auto findings = runScenario(
        "http_scenario.mjs",
        {"MCP_URL=" + m_h.url() + "/mcp", "MCP_HTTP_TOKEN=" + m_token.reveal(), "NODE_EXTRA_CA_CERTS=" + m_h.caFile()});
    expectHttpScenarioHeld(findings, m_h.relayLog());
    EXPECT_EQ(m_h.relayLog().find(m_token.reveal()), std::string::npos) << "the bearer token was logged";
}

TEST_F(McpTest, TheRelaysSessionsAndDaemonsOfOneUserAreInvisibleToAnother) {
    auto other = m_h.login("someone-else@example.org");
    auto findings = runScenario("relay_scenario.mjs",
                                {"MCP_URL=" + m_h.url() + "/mcp", "MCP_RELAY=" + m_h.url(),
                                 "MCP_HTTP_TOKEN=" + m_token.reveal(), "MCP_OTHER_TOKEN=" + other.reveal(),
                                 "MCP_ALLOWED_ORIGIN=" + kAllowedOrigin, "NODE_EXTRA_CA_CERTS=" + m_h.caFile()});
    ASSERT_TRUE(findings.contains("ok")) << json::serialize(findings) << m_h.relayLog();
    EXPECT_EQ(findings.at("sessions").as_string(), "ok");
    EXPECT_EQ(findings.at("daemons").as_string(), "ok");
    EXPECT_EQ(findings.at("origin").as_string(), "ok");
    EXPECT_EQ(findings.at("revoked").as_string(), "ok");
}

TEST_F(McpTest, TheOfficialSdksOAuthClientSignsInWithTheEmailCodeRefreshesAndIsRevoked) {
    auto findings =
        runScenario("oauth_scenario.mjs",
                    {"MCP_URL=" + m_h.url() + "/mcp", "MCP_RELAY=" + m_h.url(), "MCP_EMAIL=mcp@example.org",
                     "MCP_CODES=" + (m_h.dir() / "codes.txt").string(), "NODE_EXTRA_CA_CERTS=" + m_h.caFile()});
    ASSERT_TRUE(findings.contains("ok")) << json::serialize(findings) << m_h.relayLog();
    EXPECT_EQ(findings.at("signin").as_string(), "ok");
    EXPECT_EQ(findings.at("refreshed").as_string(), "ok");
    EXPECT_EQ(findings.at("revoked").as_string(), "ok");
    EXPECT_EQ(findings.at("refusals").as_string(), "ok");
    auto log = m_h.relayLog();
    EXPECT_EQ(log.find("hpcr_"), std::string::npos) << "a refresh token was logged";
    EXPECT_EQ(log.find("hpcc_"), std::string::npos) << "an authorization code was logged";
}

TEST_F(McpTest, RefusesToListenBeyondLoopbackOrWithoutChoosingAuthentication) {
    auto r =
        runCommand({Harness::binary("hpc-agent"), "mcp", "--listen", "0.0.0.0:0", "--no-http-auth"}, "", agentEnv());
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("loopback"), std::string::npos) << r.err;
    r = runCommand({Harness::binary("hpc-agent"), "mcp", "--listen", "127.0.0.1:0"}, "", agentEnv());
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("--http-token-file"), std::string::npos) << r.err;
}

// The official conformance suite (@modelcontextprotocol/conformance 0.1.12, a
// client that sends no credentials) against --listen: the server scenarios
// that need none of the suite's own fixture tools (docs/mcp.md lists the rest).
TEST_F(McpTest, TheConformanceSuitesServerScenariosPass) {
    const auto suite = kClients / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js";
    ASSERT_TRUE(fs::exists(suite)) << "run npm ci --prefix tests/mcp (scripts/test.sh does)";
    auto server = startHttpServer({"--no-http-auth"});
    // It writes its results under its working directory.
    auto results = m_h.dir() / "conformance";
    fs::create_directories(results);
    for (const char* scenario : {"server-initialize", "ping", "logging-set-level", "tools-list", "resources-list",
                                 "prompts-list", "server-sse-multiple-streams", "dns-rebinding-protection"}) {
        auto r = runCommand({"sh", "-c", "cd \"$1\" && exec node \"$2\" server --url \"$3\" --scenario \"$4\"", "sh",
                             results.string(), suite.string(), server.line, scenario},
                            "", {}, 120s);
        EXPECT_EQ(r.status, 0) << scenario << ":\n" << r.out << r.err;
    }
}
