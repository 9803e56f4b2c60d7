// Agent identities (issue 14 item 4) through the real programs: a job belongs
// to the identity named at `hpc-agent login --agent NAME`, so a new token of
// that identity sees, waits on and cancels it and gets its callbacks, and
// another identity of the same user cannot.
#include "agent_client.hpp"
#include "harness.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

class AgentIdentity : public ::testing::Test {
protected:
    void SetUp() override {
        m_h.startRelay();
        ASSERT_EQ(m_h.setupDaemon("d", kEmail, {(m_h.dir() / "w").string()}).status, 0);
        m_h.startDaemon("d", {"--job-poll-min-seconds", "1", "--job-poll-max-seconds", "2"}, {"LOCAL_MODE=1"});
    }

    /// `hpc-agent login --agent NAME --json`, typing the code; the token goes to a file.
    fs::path login(const std::string& agent) {
        auto file = m_h.dir() / ("token-" + agent + "-" + std::to_string(++m_logins));
        auto r = m_h.runTypingCode({Harness::binary("hpc-agent"), "login", "--email", kEmail, "--agent", agent,
                                    "--write-token", file.string(), "--json"},
                                   env(), kEmail);
        EXPECT_EQ(r.status, 0) << r.err;
        auto out = json::parse(r.out).as_object();
        EXPECT_EQ(out.at("agent").as_string(), agent);
        EXPECT_EQ(out.at("token_file").as_string(), file.string());
        EXPECT_FALSE(out.contains("access_token")) << "the token went to the file only";
        return file;
    }
    CommandResult agent(const fs::path& token, std::vector<std::string> args) {
        args.insert(args.begin(), Harness::binary("hpc-agent"));
        args.insert(args.end(), {"--token-file", token.string()});
        return runCommand(args, "", env());
    }
    Secret tokenIn(const fs::path& file) {
        std::string t;
        std::getline(std::ifstream(file), t);
        return Secret(t);
    }
    std::vector<std::string> env() const { return {"HPC_AGENT_URL=" + m_h.url(), "HPC_AGENT_CA=" + m_h.caFile()}; }
    /// Submits a script as `token`'s identity; returns the job id.
    std::string submit(const fs::path& token, const std::string& script) {
        auto path = m_h.dir() / ("job-" + std::to_string(++m_jobs) + ".sh");
        std::ofstream(path) << script;
        auto r = agent(token, {"submit", "d", path.string()});
        EXPECT_EQ(r.status, 0) << r.err;
        return r.out.substr(0, r.out.find('\n'));
    }

    static constexpr const char* kEmail = "id@example.org";
    Harness m_h;
    int m_logins = 0;
    int m_jobs = 0;
};

}  // namespace

TEST_F(AgentIdentity, ANewTokenOfTheSameAgentControlsItsJobsAndAnotherAgentCannot) {
    auto first = login("trainer");
    ASSERT_TRUE(m_h.waitConnected(tokenIn(first), "d")) << m_h.daemonLog("d");
    std::string running = submit(first, "echo started\nsleep 600\n");
    auto go = m_h.dir() / "w" / "go";
    std::string gated = submit(first, "while [ ! -e " + go.string() + " ]; do sleep 0.1; done\necho gated done\n");
    ASSERT_FALSE(running.empty());
    ASSERT_FALSE(gated.empty());

    // The first token is gone (revoked); another agent of the same user signs
    // in (it may get the revoked token's credential id: SQLite reuses the
    // highest rowid), then the first agent signs in again as itself.
    Secret firstToken = tokenIn(first);
    ASSERT_EQ(agent(first, {"logout"}).status, 0);
    auto other = login("other");
    auto again = login("trainer");
    auto r = agent(again, {"whoami", "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    auto me = json::parse(r.out).as_object();
    EXPECT_EQ(me.at("agent").as_string(), "trainer");
    EXPECT_EQ(me.at("email").as_string(), kEmail);

    // Another identity of the same user is told why, at once, for each command.
    for (const auto& command :
         {std::vector<std::string>{"status", "d", running}, std::vector<std::string>{"cancel", "d", running},
          std::vector<std::string>{"wait", "d", running, "--timeout", "60"}}) {
        r = agent(other, command);
        EXPECT_EQ(r.status, 255) << command[0] << ": " << r.out << r.err;
        EXPECT_NE(r.err.find("another agent"), std::string::npos) << command[0] << ": " << r.err;
        EXPECT_EQ(r.err.find("no callback"), std::string::npos) << command[0] << ": " << r.err;
    }
    r = agent(other, {"whoami", "--list", "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(json::parse(r.out).at("agents").as_array().size(), 3u)
        << r.out << " (default from setup, other, trainer)";

    // The new token of the same identity reads, cancels and waits on the job.
    r = agent(again, {"status", "d", running, "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(json::parse(r.out).at("job_id").as_string(), running);
    r = agent(again, {"cancel", "d", running});
    EXPECT_EQ(r.status, 0) << r.err;
    r = agent(again, {"wait", "d", running, "--timeout", "60"});
    EXPECT_EQ(r.status, 1) << "not COMPLETED: " << r.err;
    EXPECT_NE(r.out.find("CANCELLED"), std::string::npos) << r.out << r.err;

    // And the callback of a job that ends now reaches it as an event.
    std::ofstream(go).put('\n');
    r = agent(again, {"events", "--count", "1", "--timeout", "60"});
    ASSERT_EQ(r.status, 0) << r.err;
    auto event = json::parse(r.out).as_object();
    EXPECT_EQ(event.at("job_id").as_string(), gated);
    EXPECT_EQ(event.at("state").as_string(), "COMPLETED");
    EXPECT_EQ(event.at("agent_id").as_string(), "trainer");
    // Both callbacks are stored by now: none of them is the other identity's.
    auto otherClient = m_h.agent(tokenIn(other));
    EXPECT_TRUE(otherClient->storedCallbacks("d", "").empty());

    // The revoked first token is told it is refused, not that no callback came.
    std::ofstream(first) << firstToken.reveal() << "\n";
    r = agent(first, {"wait", "d", gated});
    EXPECT_EQ(r.status, 255);
    EXPECT_NE(r.err.find("refused the credentials"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find(firstToken.reveal()), std::string::npos) << "never the token itself";
}
