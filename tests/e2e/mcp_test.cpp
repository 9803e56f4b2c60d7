// hpc-agent mcp (issue 18): the official MCP TypeScript SDK
// (tests/mcp/node_modules, installed by the test command from the lockfile)
// drives the stdio server through the real relay and daemon, with local jobs.
#include "harness.hpp"

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <filesystem>

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;

namespace {

const fs::path kClients = fs::path(HPC_SOURCE_DIR) / "tests" / "mcp";

class McpTest : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_TRUE(fs::exists(kClients / "node_modules" / "@modelcontextprotocol" / "sdk"))
            << "the MCP SDK is not installed: run npm ci --prefix tests/mcp (scripts/test.sh does)";
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

    /// Runs a scenario script with node; returns its findings (its last line).
    json::object runScenario(const std::string& script) {
        auto r = runCommand({"node", (kClients / script).string()}, "",
                            {"HPC_AGENT_BIN=" + Harness::binary("hpc-agent"), "HPC_AGENT_URL=" + m_h.url(),
                             "HPC_AGENT_TOKEN=" + m_token.reveal(), "HPC_AGENT_CA=" + m_h.caFile(), "MCP_DAEMON=m",
                             "MCP_WORK=" + m_work.string(), "MCP_OUTSIDE=" + m_outside.string()},
                            150s);
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
    EXPECT_GE(findings.at("run_progress").as_int64(), 1);
    EXPECT_FALSE(fs::exists(m_outside / "x.txt")) << "nothing written outside the allowed directories";
    EXPECT_EQ(findings.at("shell").as_string(), "ok");
    EXPECT_EQ(findings.at("job").as_string(), "COMPLETED");
    EXPECT_GE(findings.at("progress").as_int64(), 1);
    EXPECT_GT(findings.at("skill").as_int64(), 0);
}
