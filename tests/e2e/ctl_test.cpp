// hpc-daemonctl start/status/list/logs/stop for real, in nohup mode, with and
// without a session bus; D-Bus activation; secrets kept out of sight.
#include "errors.hpp"
#include "harness.hpp"
#include "platform_client.hpp"
#include "sqlite.hpp"
#include "store.hpp"

#include <gtest/gtest.h>
#include <sdbus-c++/sdbus-c++.h>
#include <sys/stat.h>
#include <boost/json.hpp>

#include <filesystem>
#include <fstream>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

class CtlTest : public ::testing::Test {
protected:
    void SetUp() override { m_h.startRelay(); }

    void setup(const std::string& id, const std::string& dir) {
        auto r = m_h.setupDaemon(id, "alice@example.org", {(m_h.dir() / dir).string()});
        ASSERT_EQ(r.status, 0) << r.err;
    }

    /// Runs hpc-daemonctl for profile home `id` in nohup mode.
    CommandResult ctl(const std::string& id, std::vector<std::string> args) {
        args.insert(args.begin(), Harness::binary("hpc-daemonctl"));
        std::vector<std::string> env = m_h.baseEnv();
        env.push_back("HPC_DAEMON_HOME=" + m_h.home(id).string());
        env.push_back("HPC_DAEMONCTL_MODE=nohup");
        if (m_h.sessionBusAddress().empty()) {
            env.push_back("DBUS_SESSION_BUS_ADDRESS=");
            env.push_back("XDG_RUNTIME_DIR=");
        }
        return runCommand(args, {}, env);
    }

    json::object status(const std::string& id) {
        auto r = ctl(id, {"status", "--json"});
        return json::parse(r.out).as_object();
    }

    bool waitLinkConnected(const std::string& id) {
        return waitUntil(
            [&] {
                auto s = status(id);
                return s.at("running").as_bool() && s.at("link_state").as_string() == "connected";
            },
            20s);
    }

    Secret apiKey(const std::string& id) { return Store::open(m_h.home(id)).profile(id)->apiKey; }

    net::PlatformClient platform() {
        return net::PlatformClient(*parseUrl(m_h.url()), net::ClientOptions{m_h.caFile()});
    }

    /// Whether the relay still accepts `key` as a credential.
    bool keyAccepted(const Secret& key) {
        try {
            platform().listDaemons(key);
            return true;
        } catch (const Error& e) {
            EXPECT_EQ(e.code(), ErrorCode::Unauthorized) << e.what();
            return false;
        }
    }

    Harness m_h;
};

mode_t modeOf(const fs::path& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 ? st.st_mode & 0777 : 0;
}

std::string allProcessCommandLines() {
    std::string all;
    for (const auto& e : fs::directory_iterator("/proc")) {
        std::ifstream in(e.path() / "cmdline");
        all += std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()) + "\n";
    }
    return all;
}

}  // namespace

TEST_F(CtlTest, StartStatusListStopWithoutASessionBus) {
    ASSERT_NO_FATAL_FAILURE(setup("d1", "w"));
    auto r = ctl("d1", {"status"});
    EXPECT_EQ(r.status, 3) << "not running yet";
    EXPECT_NE(r.out.find("not running"), std::string::npos);

    r = ctl("d1", {"start"});
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("nohup mode"), std::string::npos) << r.out;
    ASSERT_TRUE(waitLinkConnected("d1")) << ctl("d1", {"logs"}).out;

    auto s = status("d1");
    EXPECT_EQ(s.at("mode").as_string(), "nohup");
    EXPECT_NE(s.at("mode_reason").as_string().find("HPC_DAEMONCTL_MODE"), json::string::npos);
    auto socket = m_h.home("d1") / "d1.bus";
    EXPECT_EQ(s.at("bus_address").as_string(), "unix:path=" + socket.string()) << "the private bus is used";
    EXPECT_EQ(modeOf(socket), 0600u);
    EXPECT_EQ(modeOf(m_h.home("d1")), 0700u);
    EXPECT_EQ(modeOf(m_h.home("d1") / "d1.log"), 0600u);
    EXPECT_EQ(modeOf(m_h.home("d1") / "d1.pid"), 0600u);

    const auto& counters = s.at("metrics").as_object();
    EXPECT_EQ(counters.at("reconnects").to_number<int>(), 0);
    EXPECT_EQ(counters.at("execs").to_number<int>(), 0);
    EXPECT_EQ(counters.at("jobs.COMPLETED").to_number<int>(), 0);

    r = ctl("d1", {"status"});
    EXPECT_EQ(r.status, 0);
    EXPECT_NE(r.out.find("link:       connected since"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("counters:   0 reconnects, 0 commands run (0 failed), 0 shells opened"), std::string::npos)
        << r.out;

    r = ctl("d1", {"list", "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    auto list = json::parse(r.out).at("profiles").as_array();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_TRUE(list[0].at("running").as_bool());
    EXPECT_TRUE(list[0].at("registered").as_bool());
    EXPECT_TRUE(list[0].at("connected").as_bool());

    r = ctl("d1", {"start"});
    EXPECT_EQ(r.status, 0);
    EXPECT_NE(r.out.find("already running"), std::string::npos);

    r = ctl("d1", {"logs", "-n", "50"});
    EXPECT_EQ(r.status, 0);
    EXPECT_NE(r.out.find("connected to https://127.0.0.1"), std::string::npos) << r.out;

    r = ctl("d1", {"stop"});
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(ctl("d1", {"status"}).status, 3);
    EXPECT_FALSE(fs::exists(socket)) << "the private bus goes with the daemon";
    EXPECT_FALSE(fs::exists(m_h.home("d1") / "d1.pid"));
    EXPECT_EQ(ctl("d1", {"stop"}).status, 0) << "stopping a stopped daemon is not an error";
}

TEST_F(CtlTest, HpcDaemonIsTheSameClientAndStartsInTheForeground) {
    // The name tasc-hpc-daemon's users type, beside hpc-daemonctl.
    std::string hpcDaemon = (fs::path(Harness::binary("hpc-daemonctl")).parent_path() / "hpc-daemon").string();
    auto version = runCommand({hpcDaemon, "--version"}, {}, m_h.baseEnv());
    EXPECT_EQ(version.out, std::string("hpc-daemon ") + HPC_VERSION + "\n") << version.err;
    ASSERT_NO_FATAL_FAILURE(setup("d7", "w"));

    // start --foreground: this very process becomes the daemon, logs to its
    // terminal, and ends on SIGTERM (Ctrl-C) with the daemon.
    SpawnOptions o;
    o.argv = {hpcDaemon, "start", "--foreground", "--daemon-id", "d7"};
    o.envOverrides = m_h.baseEnv();
    o.envOverrides.insert(o.envOverrides.end(), {"HPC_DAEMON_HOME=" + m_h.home("d7").string(), "LOCAL_MODE=1"});
    o.outputFile = (m_h.dir() / "foreground.log").string();
    o.dieWithParent = true;  // nothing the test starts outlives it
    ChildGuard foreground(spawn(o).pid, false);
    ASSERT_TRUE(waitLinkConnected("d7")) << readFile(m_h.dir() / "foreground.log");
    auto s = status("d7");
    EXPECT_EQ(s.at("pid").to_number<pid_t>(), foreground.pid());
    EXPECT_NE(std::string(s.at("mode_reason").as_string()).find("foreground"), std::string::npos) << json::serialize(s);
    ::kill(foreground.pid(), SIGTERM);
    auto ended = foreground.waitFor(30s);
    ASSERT_TRUE(ended.has_value());
    EXPECT_EQ(ended->code, 0) << readFile(m_h.dir() / "foreground.log");
}

TEST_F(CtlTest, ASecondDaemonForTheSameProfileIsRefusedAndTheFirstCarriesOn) {
    ASSERT_NO_FATAL_FAILURE(setup("d1", "w"));
    auto r = ctl("d1", {"start"});
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    ASSERT_TRUE(waitLinkConnected("d1")) << ctl("d1", {"logs"}).out;
    auto first = status("d1");
    auto pid = static_cast<long>(first.at("pid").to_number<double>());

    // As a second `start` on another login node sharing $HOME would: the
    // daemon itself, not ctl's "already running" check.
    std::vector<std::string> env = m_h.baseEnv();
    env.push_back("HPC_DAEMON_HOME=" + m_h.home("d1").string());
    env.push_back("DBUS_SESSION_BUS_ADDRESS=");
    auto second = runCommand({Harness::binary("hpc-daemond"), "--daemon-id", "d1"}, {}, env);
    EXPECT_EQ(second.status, 1) << second.out << second.err;
    EXPECT_NE(second.err.find("already runs (pid " + std::to_string(pid) + ")"), std::string::npos) << second.err;

    // The first one kept its bus socket and its link.
    auto after = status("d1");
    EXPECT_TRUE(after.at("running").as_bool());
    EXPECT_EQ(static_cast<long>(after.at("pid").to_number<double>()), pid);
    EXPECT_EQ(after.at("link_state").as_string(), "connected");
    EXPECT_EQ(after.at("connected_since"), first.at("connected_since")) << "the link was not displaced";
    EXPECT_EQ(ctl("d1", {"stop"}).status, 0);
}

TEST_F(CtlTest, StartStatusStopOnASessionBus) {
    m_h.startSessionBus();
    ASSERT_NO_FATAL_FAILURE(setup("d2", "w"));
    ASSERT_EQ(ctl("d2", {"start"}).status, 0);
    ASSERT_TRUE(waitLinkConnected("d2"));
    EXPECT_EQ(status("d2").at("bus_address").as_string(), m_h.sessionBusAddress());
    EXPECT_FALSE(fs::exists(m_h.home("d2") / "d2.bus"));
    auto r = ctl("d2", {"restart"});
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("stopped daemon d2"), std::string::npos);
    EXPECT_NE(r.out.find("started daemon d2"), std::string::npos);
    EXPECT_EQ(ctl("d2", {"stop"}).status, 0);
    EXPECT_EQ(ctl("d2", {"status"}).status, 3);
}

TEST_F(CtlTest, RerunningSetupReloadsTheRunningDaemonAndRevokesItsPreviousKey) {
    ASSERT_NO_FATAL_FAILURE(setup("d3", "first"));
    ASSERT_EQ(ctl("d3", {"start"}).status, 0);
    ASSERT_TRUE(waitLinkConnected("d3"));
    Secret first = apiKey("d3");
    auto r = m_h.setupDaemon("d3", "alice@example.org", {(m_h.dir() / "second").string()});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("reloaded (reconnected)"), std::string::npos) << r.out << "(a new API key means a new link)";
    auto dirs = status("d3").at("allowed_dirs").as_array();
    ASSERT_EQ(dirs.size(), 1u);
    EXPECT_EQ(dirs[0].as_string(), fs::canonical(m_h.dir() / "second").string());
    ASSERT_TRUE(waitLinkConnected("d3")) << "reconnected with the new key";
    EXPECT_FALSE(keyAccepted(first)) << "the key setup replaced is revoked once the daemon uses the new one";
    EXPECT_TRUE(keyAccepted(apiKey("d3")));
    ctl("d3", {"stop"});
}

TEST_F(CtlTest, RotateKeyReconnectsWithANewKeyAndRevokesTheOld) {
    ASSERT_NO_FATAL_FAILURE(setup("r1", "w"));
    ASSERT_EQ(ctl("r1", {"start"}).status, 0);
    ASSERT_TRUE(waitLinkConnected("r1"));
    Secret old = apiKey("r1");
    auto r = ctl("r1", {"rotate-key", "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    auto out = json::parse(r.out).as_object();
    EXPECT_TRUE(out.at("daemon_running").as_bool());
    EXPECT_EQ(out.at("link_state").as_string(), "connected");
    EXPECT_TRUE(out.at("old_key_revoked").as_bool());
    Secret fresh = apiKey("r1");
    EXPECT_FALSE(fresh == old);
    EXPECT_FALSE(keyAccepted(old));
    EXPECT_TRUE(keyAccepted(fresh));
    EXPECT_EQ(status("r1").at("link_state").as_string(), "connected");
    for (const auto& key : {old, fresh}) {
        EXPECT_EQ((r.out + r.err).find(key.reveal()), std::string::npos);
        EXPECT_EQ(m_h.relayLog().find(key.reveal()), std::string::npos);
        EXPECT_EQ(ctl("r1", {"logs", "-n", "1000"}).out.find(key.reveal()), std::string::npos);
    }

    // A stopped daemon: the old key goes at once, the new one is used at the next start.
    ASSERT_EQ(ctl("r1", {"stop"}).status, 0);
    r = ctl("r1", {"rotate-key", "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_FALSE(json::parse(r.out).at("daemon_running").as_bool());
    EXPECT_FALSE(keyAccepted(fresh));
    ASSERT_EQ(ctl("r1", {"start"}).status, 0);
    EXPECT_TRUE(waitLinkConnected("r1"));
    ctl("r1", {"stop"});
}

TEST_F(CtlTest, RemoveUnregistersRevokesStopsAndDeletesTheDaemon) {
    ASSERT_NO_FATAL_FAILURE(setup("rm", "w"));
    ASSERT_EQ(ctl("rm", {"start"}).status, 0);
    ASSERT_TRUE(waitLinkConnected("rm"));
    Secret key = apiKey("rm");
    auto r = ctl("rm", {"remove"});
    EXPECT_EQ(r.status, 2) << "standard input is no terminal and there is no --yes";
    EXPECT_NE(r.err.find("--yes"), std::string::npos) << r.err;
    EXPECT_EQ(status("rm").at("link_state").as_string(), "connected") << "nothing was changed";

    r = ctl("rm", {"remove", "--yes", "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(json::parse(r.out).at("revoked_keys").as_int64(), 1) << r.out;
    EXPECT_FALSE(keyAccepted(key));
    EXPECT_TRUE(platform().listDaemons(m_h.login("alice@example.org")).empty()) << "the relay forgot it";
    EXPECT_FALSE(fs::exists(m_h.home("rm"))) << "its only profile gone, the state directory goes";
    EXPECT_FALSE(fs::exists(m_h.xdgDataHome() / "dbus-1" / "services" / "org.tiptree.HpcDaemon.rm.service"));
}

TEST_F(CtlTest, CallingTheBusNameActivatesTheDaemon) {
    m_h.startSessionBus();
    ASSERT_NO_FATAL_FAILURE(setup("d4", "w"));
    auto activation = m_h.xdgDataHome() / "dbus-1" / "services" / "org.tiptree.HpcDaemon.d4.service";
    ASSERT_TRUE(fs::exists(activation)) << "setup writes the activation file";
    EXPECT_EQ(ctl("d4", {"status"}).status, 3);
    auto connection = sdbus::createSessionBusConnectionWithAddress(m_h.sessionBusAddress());
    auto proxy = sdbus::createProxy(*connection, "org.tiptree.HpcDaemon.d4", "/org/tiptree/HpcDaemon");
    std::map<std::string, sdbus::Variant> s;
    proxy->callMethod("GetStatus").onInterface("org.tiptree.HpcDaemon").storeResultsTo(s);
    EXPECT_EQ(s["daemon_id"].get<std::string>(), "d4");
    EXPECT_EQ(ctl("d4", {"status"}).status, 0);
    EXPECT_EQ(ctl("d4", {"stop"}).status, 0);
}

TEST_F(CtlTest, TheApiKeyAppearsInNoCommandLineLogOrStatus) {
    ASSERT_NO_FATAL_FAILURE(setup("d5", "w"));
    ASSERT_EQ(ctl("d5", {"start"}).status, 0);
    ASSERT_TRUE(waitLinkConnected("d5"));
    std::string key = Store::open(m_h.home("d5")).profile("d5")->apiKey.reveal();
    ASSERT_FALSE(key.empty());
    EXPECT_EQ(allProcessCommandLines().find(key), std::string::npos);
    EXPECT_EQ(ctl("d5", {"status", "--json"}).out.find(key), std::string::npos);
    EXPECT_EQ(ctl("d5", {"list", "--json"}).out.find(key), std::string::npos);
    EXPECT_EQ(ctl("d5", {"logs", "-n", "1000"}).out.find(key), std::string::npos);
    EXPECT_EQ(m_h.relayLog().find(key), std::string::npos);
    ctl("d5", {"stop"});
}

TEST_F(CtlTest, SeveralProfilesNeedADaemonId) {
    ASSERT_NO_FATAL_FAILURE(setup("d6", "w"));
    // A second profile in the same state directory.
    auto store = Store::open(m_h.home("d6"));
    auto p = *store.profile("d6");
    p.daemonId = "d7";
    store.saveProfile(p);
    auto r = ctl("d6", {"status"});
    EXPECT_EQ(r.status, 4);
    EXPECT_NE(r.err.find("d6, d7"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("--daemon-id"), std::string::npos);
    EXPECT_EQ(ctl("d6", {"status", "--daemon-id", "d7"}).status, 3);
    EXPECT_EQ(ctl("d6", {"status", "--daemon-id", "nope"}).status, 4);
}

TEST_F(CtlTest, TheInterviewAsksEachQuestionInOrder) {
    auto work = m_h.dir() / "ws";
    std::vector<std::string> env = m_h.baseEnv();
    env.push_back("HPC_DAEMON_HOME=" + m_h.home("iv").string());
    // After the code: accept the disclaimer, pick skill 2, the allowed
    // directory, the default job directory, instructions, a cluster name.
    auto r = m_h.runTypingCode({Harness::binary("hpc-daemonctl"), "setup", "--email", "alice@example.org", "--url",
                                m_h.url(), "--daemon-id", "iv", "--ca-file", m_h.caFile()},
                               env, "alice@example.org", "yes\n2\n" + work.string() + "\n\nUse the GPU queue.\nMila\n");
    ASSERT_EQ(r.status, 0) << r.err;
    auto order = {"Enter the code", "REMOTE CODE EXECUTION", "Creating an API key",
                  "Skill",          "Allowed directories",   "Working directory for jobs",
                  "Instructions",   "Cluster name",          "Registering daemon"};
    std::size_t at = 0;
    for (const char* step : order) {
        auto p = r.err.find(step, at);
        ASSERT_NE(p, std::string::npos) << "missing or out of order: " << step << "\n" << r.err;
        at = p;
    }
    auto p = Store::open(m_h.home("iv")).profile("iv");
    ASSERT_TRUE(p);
    EXPECT_EQ(p->skill, "mila-hpc") << "skill 2 in the sorted built-in list";
    EXPECT_EQ(p->allowedDirs, std::vector<std::string>{fs::canonical(work).string()});
    EXPECT_EQ(p->jobWorkdir, fs::canonical(work).string());
    EXPECT_EQ(p->instructions, "Use the GPU queue.");
    EXPECT_EQ(p->clusterName, "Mila");
}

TEST_F(CtlTest, DecliningTheDisclaimerSavesNothing) {
    std::vector<std::string> env = m_h.baseEnv();
    env.push_back("HPC_DAEMON_HOME=" + m_h.home("no").string());
    auto r = m_h.runTypingCode({Harness::binary("hpc-daemonctl"), "setup", "--email", "alice@example.org", "--url",
                                m_h.url(), "--daemon-id", "no", "--ca-file", m_h.caFile()},
                               env, "alice@example.org", "no\n");
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.err.find("not accepted"), std::string::npos) << r.err;
    EXPECT_TRUE(Store::open(m_h.home("no")).profiles().empty());
}

TEST_F(CtlTest, AnExpiredCodeIsRefused) {
    std::vector<std::string> env = m_h.baseEnv();
    env.push_back("HPC_DAEMON_HOME=" + m_h.home("ex").string());
    auto r =
        m_h.runTypingCode({Harness::binary("hpc-daemonctl"), "setup", "--no-interview", "--email", "alice@example.org",
                           "--url", m_h.url(), "--daemon-id", "ex", "--ca-file", m_h.caFile()},
                          env, "alice@example.org", {}, [&] {
                              // Ten minutes pass before the user types the code.
                              auto db = sqlite::Db::open((m_h.dir() / "relay" / "relay.db").string());
                              db.exec("UPDATE signins SET expires_at = 0");
                          });
    EXPECT_EQ(r.status, 6);
    EXPECT_NE(r.err.find("expired"), std::string::npos) << r.err;
}

TEST_F(CtlTest, AnUnknownSkillNameIsRefusedBeforeSignIn) {
    auto r = ctl("sk", {"setup", "--no-interview", "--email", "a@example.org", "--url", m_h.url(), "--daemon-id", "sk",
                        "--skill", "mila"});
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.err.find("mila-hpc"), std::string::npos) << r.err;
    EXPECT_EQ(m_h.codeLines(), 0u);
}
