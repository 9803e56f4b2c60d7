// The command-line programs as a user meets them: setup, the agent CLI, and
// their errors.
#include "errors.hpp"
#include "harness.hpp"
#include "platform_client.hpp"
#include "store.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

class CliTest : public ::testing::Test {
protected:
    void SetUp() override {
        m_h = std::make_unique<Harness>();
        m_h->startRelay();
    }
    std::unique_ptr<Harness> m_h;
};

}  // namespace

TEST_F(CliTest, SetupStoresAPrivateProfileAndRegistersTheDaemon) {
    auto work = m_h->dir() / "work";
    auto r = m_h->setupDaemon("lab.server-1", "a@example.org", {work.string()});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.err.find("[5/5]"), std::string::npos) << "progress is shown";
    EXPECT_TRUE(fs::is_directory(work)) << "the allowed directory is created";
    struct stat st {};
    ASSERT_EQ(::stat((m_h->home("lab.server-1") / "state.db").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    ASSERT_EQ(::stat(m_h->home("lab.server-1").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    auto token = m_h->login("a@example.org");
    auto list = net::PlatformClient(*parseUrl(m_h->url()), net::ClientOptions{m_h->caFile()}).listDaemons(token);
    ASSERT_EQ(list.size(), 1u);
    EXPECT_EQ(list[0].at("daemon_id").as_string(), "lab.server-1");
}

TEST_F(CliTest, RerunningSetupUpdatesInsteadOfDuplicating) {
    ASSERT_EQ(m_h->setupDaemon("d", "a@example.org", {(m_h->dir() / "w1").string()}).status, 0);
    auto r = m_h->setupDaemon("d", "a@example.org", {(m_h->dir() / "w2").string()});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("updated"), std::string::npos) << r.out;
    auto store = Store::open(m_h->home("d"));
    ASSERT_EQ(store.profiles().size(), 1u);
    EXPECT_EQ(store.profiles()[0].allowedDirs, std::vector<std::string>{fs::canonical(m_h->dir() / "w2").string()});
    auto token = m_h->login("a@example.org");
    EXPECT_EQ(net::PlatformClient(*parseUrl(m_h->url()), net::ClientOptions{m_h->caFile()}).listDaemons(token).size(),
              1u);
}

TEST_F(CliTest, SetupWarnsLoudlyWithoutAllowedDirectories) {
    auto r = m_h->setupDaemon("open", "a@example.org", {});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.err.find("WARNING"), std::string::npos);
    EXPECT_NE(r.err.find("ANYWHERE"), std::string::npos);
}

TEST_F(CliTest, SetupNeverPrintsTheApiKeyOrTheCode) {
    auto r = m_h->setupDaemon("quiet", "a@example.org", {(m_h->dir() / "w").string()});
    ASSERT_EQ(r.status, 0);
    auto key = Store::open(m_h->home("quiet")).profile("quiet")->apiKey.reveal();
    EXPECT_EQ((r.out + r.err).find(key), std::string::npos);
    EXPECT_EQ(m_h->relayLog().find(key), std::string::npos);
}

TEST_F(CliTest, SetupAgainstAUrlWithoutThePlatformRoutesSaysSo) {
    // The relay answers 404 JSON for unknown routes; a base path that adds a
    // prefix reaches none of /otp, /auth, /hpc.
    auto r = runCommand({Harness::binary("hpc-daemonctl"), "setup", "--no-interview", "--email", "a@example.org",
                         "--url", m_h->url() + "/marketing", "--daemon-id", "x", "--ca-file", m_h->caFile()},
                        "", {"HPC_DAEMON_HOME=" + (m_h->dir() / "h").string()});
    EXPECT_EQ(r.status, 4) << r.err;
    EXPECT_NE(r.err.find("/otp/signin"), std::string::npos) << r.err;
}

TEST_F(CliTest, SetupWithAWrongCodeFailsWithTheAuthExitCode) {
    auto r = runCommand({Harness::binary("hpc-daemonctl"), "setup", "--no-interview", "--email", "a@example.org",
                         "--url", m_h->url(), "--daemon-id", "x", "--ca-file", m_h->caFile()},
                        "not-the-code\n", {"HPC_DAEMON_HOME=" + (m_h->dir() / "h").string()});
    EXPECT_EQ(r.status, 6) << r.err;
    EXPECT_NE(r.err.find("wrong code"), std::string::npos) << r.err;
}

TEST_F(CliTest, SetupWithoutTheCaFileExplainsTheUntrustedCertificate) {
    auto r = runCommand({Harness::binary("hpc-daemonctl"), "setup", "--no-interview", "--email", "a@example.org",
                         "--url", m_h->url(), "--daemon-id", "x"},
                        "", {"HPC_DAEMON_HOME=" + (m_h->dir() / "h").string()});
    EXPECT_EQ(r.status, 5) << r.err;
    EXPECT_NE(r.err.find("--ca-file"), std::string::npos) << r.err;
}

TEST_F(CliTest, SetupRefusesBadInputBeforeContactingThePlatform) {
    auto ctl = Harness::binary("hpc-daemonctl");
    auto env = std::vector<std::string>{"HPC_DAEMON_HOME=" + (m_h->dir() / "h").string()};
    auto r = runCommand(
        {ctl, "setup", "--no-interview", "--email", "a@example.org", "--url", m_h->url(), "--daemon-id", "bad/id"}, "",
        env);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.err.find("invalid"), std::string::npos);
    r = runCommand({ctl, "setup", "--no-interview", "--email", "a@example.org", "--url", "http://example.org"}, "",
                   env);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.err.find("https"), std::string::npos);
    r = runCommand({ctl, "setup", "--bogus-flag"}, "", env);
    EXPECT_EQ(r.status, 2);
    r = runCommand({ctl, "setup", "--no-interview", "--email", "a@example.org", "--url", m_h->url(), "--skill",
                    "plain-server", "--instructions", std::string(70000, 'i')},
                   "", env);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.err.find("65536"), std::string::npos) << "the skill's size limit: " << r.err;
    EXPECT_EQ(m_h->codeLines(), 0u) << "no code was requested";
}

TEST_F(CliTest, AgentExecPrintsRemoteOutputAndExitsWithItsStatus) {
    ASSERT_EQ(m_h->setupDaemon("d", "a@example.org", {(m_h->dir() / "w").string()}).status, 0);
    m_h->startDaemon("d");
    auto token = m_h->login("a@example.org");
    ASSERT_TRUE(m_h->waitConnected(token, "d"));
    std::vector<std::string> env = {"HPC_AGENT_URL=" + m_h->url(), "HPC_AGENT_TOKEN=" + token.reveal(),
                                    "HPC_AGENT_CA=" + m_h->caFile()};
    auto r = runCommand({Harness::binary("hpc-agent"), "exec", "d", "--", "sh", "-c", "echo hi; echo oops >&2; exit 4"},
                        "", env);
    EXPECT_EQ(r.status, 4);
    EXPECT_EQ(r.out, "hi\n");
    EXPECT_EQ(r.err, "oops\n");
    r = runCommand({Harness::binary("hpc-agent"), "exec", "d", "--json", "-c", "echo json"}, "", env);
    EXPECT_EQ(r.status, 0);
    auto v = boost::json::parse(r.out).as_object();
    EXPECT_EQ(v.at("stdout").as_string(), "json\n");
    r = runCommand({Harness::binary("hpc-agent"), "exec", "nope", "--", "true"}, "", env);
    EXPECT_EQ(r.status, 255);
    EXPECT_NE(r.err.find("not connected"), std::string::npos);
    r = runCommand({Harness::binary("hpc-agent"), "daemons"}, "", env);
    EXPECT_EQ(r.status, 0);
    EXPECT_NE(r.out.find("connected"), std::string::npos);
}

TEST_F(CliTest, TheSkillChosenAtSetupReachesTheAgentWithTheOwnersInstructions) {
    ASSERT_EQ(m_h->setupDaemon("lab", "a@example.org", {(m_h->dir() / "w").string()},
                               {"--skill", "plain-server", "--instructions", "Use /data for inputs."})
                  .status,
              0);
    auto token = m_h->login("a@example.org");
    std::vector<std::string> env = {"HPC_AGENT_URL=" + m_h->url(), "HPC_AGENT_TOKEN=" + token.reveal(),
                                    "HPC_AGENT_CA=" + m_h->caFile()};
    auto builtin = runCommand({Harness::binary("hpc-daemonctl"), "skills", "show", "plain-server"});
    ASSERT_EQ(builtin.status, 0) << builtin.err;
    auto r = runCommand({Harness::binary("hpc-agent"), "daemons", "--show", "lab"}, "", env);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("state:          offline"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("skill:          plain-server (sha256:"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(builtin.out.substr(0, builtin.out.find_last_not_of('\n') + 1)), std::string::npos)
        << "the built-in's whole text: " << r.out;
    EXPECT_NE(r.out.find("Use /data for inputs."), std::string::npos) << "and the owner's instructions: " << r.out;

    // Set up again with a description of the server: the agent reads the new text and version.
    auto json = [&] {
        auto shown = runCommand({Harness::binary("hpc-agent"), "daemons", "--show", "lab", "--json"}, "", env);
        EXPECT_EQ(shown.status, 0) << shown.err;
        return boost::json::parse(shown.out).as_object();
    };
    auto before = json();
    ASSERT_EQ(m_h->setupDaemon("lab", "a@example.org", {(m_h->dir() / "w").string()},
                               {"--skill", "a lab server with two GPUs", "--instructions", "Ask before using GPU 1."})
                  .status,
              0);
    auto after = json();
    EXPECT_EQ(after.at("skill").as_string(), "a lab server with two GPUs");
    std::string text(after.at("skill_text").as_string());
    EXPECT_EQ(text.rfind("# a lab server with two GPUs\n", 0), 0u) << text;
    EXPECT_NE(text.find("Ask before using GPU 1."), std::string::npos) << text;
    EXPECT_NE(after.at("skill_version"), before.at("skill_version"));

    r = runCommand({Harness::binary("hpc-agent"), "daemons", "--show", "nope"}, "", env);
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("no daemon nope"), std::string::npos) << r.err;
}

TEST(CtlSkills, ListsTheBuiltInSkillsAndShowsOne) {
    auto ctl = Harness::binary("hpc-daemonctl");
    auto r = runCommand({ctl, "skills"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out.rfind("NAME", 0), 0u) << r.out;
    EXPECT_NE(r.out.find("mila-hpc"), std::string::npos);
    EXPECT_NE(r.out.find("Mila cluster"), std::string::npos) << "each with its title";
    r = runCommand({ctl, "skills", "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    auto list = boost::json::parse(r.out).as_array();
    ASSERT_EQ(list.size(), 3u);
    std::string version;
    for (const auto& s : list)
        if (s.at("name") == "generic-slurm") version = s.at("version").as_string();
    EXPECT_EQ(version.rfind("sha256:", 0), 0u) << r.out;
    r = runCommand({ctl, "skills", "show", "generic-slurm", "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    auto one = boost::json::parse(r.out).as_object();
    EXPECT_EQ(one.at("version").as_string(), version);
    EXPECT_EQ(std::string(one.at("text").as_string()).rfind("# A SLURM cluster\n", 0), 0u);
    r = runCommand({ctl, "skills", "show", "generic-slurm"});
    EXPECT_EQ(r.out, one.at("text").as_string());
    r = runCommand({ctl, "skills", "show", "nope"});
    EXPECT_EQ(r.status, 4);
    EXPECT_NE(r.err.find("generic-slurm, mila-hpc, plain-server"), std::string::npos) << r.err;
}

TEST_F(CliTest, AgentLogoutRevokesTheTokenAndRemovesItsFile) {
    auto token = m_h->login("a@example.org");
    auto file = m_h->dir() / "token";
    std::ofstream(file) << token.reveal() << "\n";
    std::vector<std::string> env = {"HPC_AGENT_URL=" + m_h->url(), "HPC_AGENT_CA=" + m_h->caFile()};
    auto r = runCommand({Harness::binary("hpc-agent"), "logout", "--token-file", file.string()}, "", env);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_FALSE(fs::exists(file));
    try {
        net::PlatformClient(*parseUrl(m_h->url()), net::ClientOptions{m_h->caFile()}).listDaemons(token);
        ADD_FAILURE() << "the token still works after logout";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Unauthorized) << e.what();
    }
    env.push_back("HPC_AGENT_TOKEN=" + token.reveal());
    r = runCommand({Harness::binary("hpc-agent"), "logout"}, "", env);
    EXPECT_EQ(r.status, 0) << "a token already revoked is not an error: " << r.err;
    EXPECT_EQ((r.out + r.err).find(token.reveal()), std::string::npos);
}

TEST(RelayCli, DeliversCodesThroughTheConfiguredCommandWithoutACommandLineSecret) {
    Harness h;  // for the certificate and a scratch directory
    auto sink = h.dir() / "delivered.txt";
    SpawnOptions o;
    o.argv = {Harness::binary("hpc-relay"),
              "--port",
              "0",
              "--ready-fd",
              "3",
              "--cert",
              (h.dir() / "tls" / "cert.pem").string(),
              "--key",
              (h.dir() / "tls" / "key.pem").string(),
              "--data-dir",
              (h.dir() / "r").string(),
              "--otp-command",
              "printf '%s %s\\n' \"$HPC_OTP_EMAIL\" \"$HPC_OTP_CODE\" >> " + sink.string()};
    o.outputFile = (h.dir() / "relay-cmd.log").string();
    auto relay = spawnReady(o, 3, 60s, o.outputFile);
    int port = std::stoi(relay.line);
    net::PlatformClient platform(*parseUrl("https://127.0.0.1:" + std::to_string(port)),
                                 net::ClientOptions{h.caFile()});
    Secret signin = platform.requestCode("c@example.org");
    std::string line;
    ASSERT_TRUE(waitUntil(
        [&] {
            std::ifstream in(sink);
            return static_cast<bool>(std::getline(in, line));
        },
        10s));
    ASSERT_EQ(line.rfind("c@example.org ", 0), 0u) << line;
    std::string code = line.substr(line.find(' ') + 1);
    EXPECT_EQ(code.size(), 6u);
    EXPECT_FALSE(platform.verifyCode(signin, Secret(code)).empty());
    std::ifstream logIn(h.dir() / "relay-cmd.log");
    std::string log((std::istreambuf_iterator<char>(logIn)), std::istreambuf_iterator<char>());
    EXPECT_EQ(log.find(code), std::string::npos) << "the code is never logged";
}

TEST(RelayCli, RefusesPlainHttpExceptOnLoopback) {
    Harness h;
    auto r = runCommand({Harness::binary("hpc-relay"), "--listen", "0.0.0.0", "--port", "0", "--insecure-http",
                         "--data-dir", (h.dir() / "r").string(), "--otp-file", (h.dir() / "c").string()});
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("loopback"), std::string::npos) << r.err;
    r = runCommand({Harness::binary("hpc-relay"), "--port", "0", "--data-dir", (h.dir() / "r").string(), "--otp-file",
                    (h.dir() / "c").string()});
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("--cert"), std::string::npos) << r.err;

    SpawnOptions o;
    o.argv = {Harness::binary("hpc-relay"),
              "--listen",
              "127.0.0.1",
              "--port",
              "0",
              "--insecure-http",
              "--ready-fd",
              "3",
              "--data-dir",
              (h.dir() / "r").string(),
              "--otp-file",
              (h.dir() / "c").string()};
    o.outputFile = (h.dir() / "plain.log").string();
    auto relay = spawnReady(o, 3, 60s, o.outputFile);
    int port = std::stoi(relay.line);
    auto res = net::httpRequest(*parseUrl("http://127.0.0.1:" + std::to_string(port)), "GET", "/health", "", "");
    EXPECT_EQ(res.status, 200);
}
