// Issue 21 for real: a running daemon started by hpc-daemonctl (nohup mode),
// its settings changed with `hpc-daemonctl config` and seen in what it does
// to state.db and its log file.
#include "harness.hpp"
#include "process.hpp"
#include "sqlite.hpp"
#include "store.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <boost/json.hpp>

#include <filesystem>
#include <fstream>
#include <optional>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

class RetentionE2E : public ::testing::Test {
protected:
    void SetUp() override {
        m_h.startRelay();
        auto r = m_h.setupDaemon("d1", "alice@example.org", {(m_h.dir() / "w").string()});
        ASSERT_EQ(r.status, 0) << r.err;
        r = ctl({"start"});
        ASSERT_EQ(r.status, 0) << r.out << r.err;
        ASSERT_TRUE(waitUntil(
            [&] { return status().at("running").as_bool() && status().at("link_state").as_string() == "connected"; },
            30s))
            << ctl({"logs"}).out;
        m_agent = m_h.agent(m_h.login("alice@example.org"));
    }
    void TearDown() override { ctl({"stop"}); }

    CommandResult ctl(std::vector<std::string> args) {
        args.insert(args.begin(), Harness::binary("hpc-daemonctl"));
        std::vector<std::string> env = m_h.baseEnv();
        env.push_back("HPC_DAEMON_HOME=" + m_h.home("d1").string());
        env.push_back("HPC_DAEMONCTL_MODE=nohup");
        env.push_back("DBUS_SESSION_BUS_ADDRESS=");
        env.push_back("XDG_RUNTIME_DIR=");
        env.push_back("LOCAL_MODE=1");  // the daemon started by `start` runs jobs locally, SLURM or not
        return runCommand(args, {}, env);
    }
    json::object status() {
        auto r = ctl({"status", "--json"});
        json::error_code ec;
        auto v = json::parse(r.out, ec);
        return !ec && v.is_object() ? v.as_object() : json::object{{"running", false}};
    }
    double num(const json::object& s, const char* key) {
        auto* v = s.if_contains(key);
        return v && v->is_number() ? v->to_number<double>() : -1;
    }
    std::map<std::string, json::object> config() {
        auto r = ctl({"config", "--json"});
        EXPECT_EQ(r.status, 0) << r.err;
        std::map<std::string, json::object> out;
        json::error_code ec;
        json::value v = json::parse(r.out, ec);
        if (ec || !v.is_array()) {
            ADD_FAILURE() << "config --json printed " << r.out;
            return out;
        }
        for (auto& e : v.as_array()) out[std::string(e.at("key").as_string())] = e.as_object();
        return out;
    }
    std::int64_t auditRows() {
        auto db = sqlite::Db::open((m_h.home("d1") / "state.db").string());
        return db.queryInt("SELECT COUNT(*) FROM audit");
    }
    void execs(int n) {
        for (int i = 0; i < n; ++i) {
            agent::ExecSpec spec;
            spec.command = "echo " + std::to_string(i);
            ASSERT_EQ(m_agent->exec("d1", spec, 60s).shellStatus(), 0);
        }
    }
    /// A prune pass that starts after this call has finished (Reload starts one).
    void pruneNow() {
        double before = num(status(), "last_prune_at");
        ASSERT_EQ(ctl({"config", "set", "job_retention", "30d"}).status, 0);
        ASSERT_TRUE(waitUntil([&] { return num(status(), "last_prune_at") > before; }, 20s));
    }

    Harness m_h;
    std::unique_ptr<agent::AgentClient> m_agent;
};

}  // namespace

TEST_F(RetentionE2E, ConfigListsEveryKeyWithItsDefault) {
    auto c = config();
    for (const char* key : {"audit_retention", "job_retention", "state_max_bytes", "log_max_bytes"}) {
        ASSERT_TRUE(c.count(key)) << key;
        EXPECT_FALSE(c[key].at("set").as_bool());
        EXPECT_EQ(c[key].at("value"), c[key].at("default"));
    }
    EXPECT_EQ(c["state_max_bytes"].at("default").as_string(), "64MiB");
    auto text = ctl({"config"});
    EXPECT_NE(text.out.find("audit_retention"), std::string::npos);
}

TEST_F(RetentionE2E, BadKeysAndValuesAreRefusedWithNothingChanged) {
    ASSERT_EQ(ctl({"config", "set", "audit_retention", "90d"}).status, 0);
    auto before = config();
    for (auto args : std::vector<std::vector<std::string>>{{"config", "set", "no_such_key", "1d"},
                                                           {"config", "set", "audit_retention", "soon"},
                                                           {"config", "set", "state_max_bytes", "12 furlongs"},
                                                           {"config", "set", "log_max_bytes", "1"},
                                                           {"config", "unset", "no_such_key"}}) {
        auto r = ctl(args);
        EXPECT_EQ(r.status, 2) << args[2] << ": " << r.out << r.err;
        EXPECT_FALSE(r.err.empty());
    }
    EXPECT_NE(ctl({"config", "set", "no_such_key", "1d"}).err.find("unknown setting"), std::string::npos);
    EXPECT_EQ(config(), before);
    EXPECT_EQ(before["audit_retention"].at("value").as_string(), "90d");
}

TEST_F(RetentionE2E, AuditRetentionIsAppliedLiveAndKeepsWhatIsInsideTheWindow) {
    execs(20);
    ASSERT_EQ(auditRows(), 20);
    pruneNow();  // default retention: nothing goes
    EXPECT_EQ(auditRows(), 20);

    auto r = ctl({"config", "set", "audit_retention", "1s"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("applied to the running daemon"), std::string::npos) << r.out;
    ASSERT_TRUE(waitUntil([&] { return auditRows() == 0; }, 30s)) << ctl({"logs"}).out;
    auto s = status();
    EXPECT_GE(num(s, "last_prune_audit_rows"), 0);
    EXPECT_NE(ctl({"logs", "-n", "200"}).out.find("state.db pruned"), std::string::npos);

    ASSERT_EQ(ctl({"config", "unset", "audit_retention"}).status, 0);
    execs(5);
    pruneNow();
    EXPECT_EQ(auditRows(), 5) << "inside the (default) window again: kept";
}

TEST_F(RetentionE2E, TheSizeCapPrunesEarlyAndSaysSoInStatusAndLog) {
    {
        // Another writer on the live file (WAL): 2000 recent rows, ~0.7 MB.
        auto db = sqlite::Db::open((m_h.home("d1") / "state.db").string());
        sqlite::Transaction tx(db);
        for (int i = 0; i < 2000; ++i)
            db.exec(
                "INSERT INTO audit (time, daemon_id, agent, session, cwd, command) VALUES (strftime('%s','now'), "
                "'d1', 'a', 'exec', '/', '" +
                std::string(300, 'z') + "')");
        tx.commit();
    }
    ASSERT_EQ(ctl({"config", "set", "state_max_bytes", "256KiB"}).status, 0);
    ASSERT_TRUE(waitUntil([&] { return !status()["state_warning"].as_string().empty(); }, 30s)) << ctl({"logs"}).out;
    auto s = status();
    EXPECT_NE(s["state_warning"].as_string().find("state_max_bytes"), std::string::npos);
    EXPECT_EQ(num(s, "state_max_bytes"), 256 * 1024);
    EXPECT_LT(auditRows(), 2000);
    EXPECT_GT(auditRows(), 0) << "only what the cap needed";
    {
        auto db = sqlite::Db::open((m_h.home("d1") / "state.db").string());
        EXPECT_LE(sqlite::usedBytes(db), 256 * 1024);
        EXPECT_EQ(db.prepare("PRAGMA integrity_check").step(), true);
    }
    auto logs = ctl({"logs", "-n", "400"}).out;
    EXPECT_NE(logs.find("warning: state.db reached state_max_bytes"), std::string::npos) << logs;
    auto text = ctl({"status"});
    EXPECT_NE(text.out.find("WARNING"), std::string::npos) << text.out;
}

TEST_F(RetentionE2E, APrunedJobsDirectoryGoesWithItsRowAndARunningJobsStays) {
    JobSpec ended;
    ended.script = "echo finished\n";
    auto a = m_agent->submitJob("d1", ended);
    std::string endedId(a.at("job_id").as_string());
    fs::path endedDir = fs::path(std::string(a.at("stdout_path").as_string())).parent_path();
    JobSpec running;
    running.script = "sleep 90\n";  // never outlives the test by much, whatever happens to it
    auto b = m_agent->submitJob("d1", running);
    std::string runningId(b.at("job_id").as_string());
    fs::path runningDir = fs::path(std::string(b.at("stdout_path").as_string())).parent_path();
    ASSERT_EQ(endedDir.parent_path(), m_h.dir() / "w" / ".hpc-daemon" / "jobs");

    ASSERT_TRUE(m_agent->waitForJob("d1", endedId, 60s));
    // Prunable once the daemon has its callback acknowledged.
    ASSERT_TRUE(waitUntil([&] { return num(status(), "pending_callbacks") == 0; }, 30s)) << ctl({"logs"}).out;
    ASSERT_TRUE(
        waitUntil([&] { return m_agent->jobStatus("d1", runningId).at("state").as_string() == "RUNNING"; }, 30s));
    // Links out of the ended job's directory (a job can make them): removed, never followed.
    fs::path precious = m_h.dir() / "precious";
    { std::ofstream(precious) << "the user's own work"; }
    fs::create_directories(m_h.dir() / "mine");
    { std::ofstream(m_h.dir() / "mine" / "data") << "data"; }
    fs::create_symlink(precious, endedDir / "escape");
    fs::create_directory_symlink(m_h.dir() / "mine", endedDir / "escape-dir");
    EXPECT_EQ(num(status(), "job_dirs_removed"), 0);

    ASSERT_EQ(ctl({"config", "set", "job_retention", "1s"}).status, 0);
    ASSERT_TRUE(waitUntil([&] { return num(status(), "job_dirs_removed") >= 1; }, 30s)) << ctl({"logs"}).out;
    auto s = status();
    EXPECT_EQ(num(s, "job_dirs_removed"), 1);
    EXPECT_GT(num(s, "job_dir_bytes_removed"), 0);
    EXPECT_FALSE(fs::exists(fs::symlink_status(endedDir)));
    EXPECT_THROW(m_agent->jobStatus("d1", endedId), Error) << "its row went first";
    EXPECT_TRUE(fs::exists(runningDir / "wrapper")) << "a running job's directory is never touched";
    EXPECT_EQ(m_agent->jobStatus("d1", runningId).at("state").as_string(), "RUNNING");
    EXPECT_EQ(readFile(precious), "the user's own work");
    EXPECT_EQ(readFile(m_h.dir() / "mine" / "data"), "data");
    EXPECT_NE(ctl({"status"}).out.find("directories of pruned jobs removed"), std::string::npos);

    // Once it has ended (and its callback is acknowledged), its directory goes too.
    m_agent->cancelJob("d1", runningId);
    ASSERT_TRUE(m_agent->waitForJob("d1", runningId, 60s));
    EXPECT_TRUE(waitUntil([&] { return num(status(), "job_dirs_removed") >= 2; }, 30s)) << ctl({"logs"}).out;
    EXPECT_FALSE(fs::exists(fs::symlink_status(runningDir)));
}

TEST_F(RetentionE2E, TheCapWarningReachesTheAgentsDaemonsListAfterEveryReconnectAndClears) {
    Secret token = m_h.login("alice@example.org");
    std::vector<std::string> env = {"HPC_AGENT_URL=" + m_h.url(), "HPC_AGENT_TOKEN=" + token.reveal(),
                                    "HPC_AGENT_CA=" + m_h.caFile()};
    // What `hpc-agent daemons --json` says of d1: connected, and its warning.
    auto listed = [&]() -> std::optional<std::pair<bool, std::string>> {
        auto r = runCommand({Harness::binary("hpc-agent"), "daemons", "--json"}, "", env);
        json::error_code ec;
        auto v = json::parse(r.out, ec);
        if (ec || !v.is_array()) return std::nullopt;
        for (const auto& d : v.as_array())
            if (d.as_object().at("daemon_id") == "d1")
                return std::pair{d.at("connected").as_bool(), std::string(d.at("warning").as_string())};
        return std::nullopt;
    };
    auto warns = [&] {
        auto d = listed();
        return d && d->first && d->second.find("state_max_bytes") != std::string::npos;
    };
    ASSERT_TRUE(listed());
    EXPECT_EQ(listed()->second, "");

    {
        // Another writer on the live file (WAL): 2000 recent rows, ~0.7 MB,
        // and a cap that makes the daemon prune inside retention.
        auto db = sqlite::Db::open((m_h.home("d1") / "state.db").string());
        sqlite::Transaction tx(db);
        for (int i = 0; i < 2000; ++i)
            db.exec(
                "INSERT INTO audit (time, daemon_id, agent, session, cwd, command) VALUES (strftime('%s','now'), "
                "'d1', 'a', 'exec', '/', '" +
                std::string(300, 'z') + "')");
        tx.commit();
    }
    ASSERT_EQ(ctl({"config", "set", "state_max_bytes", "256KiB"}).status, 0);
    ASSERT_TRUE(waitUntil([&] { return !status()["state_warning"].as_string().empty(); }, 30s)) << ctl({"logs"}).out;
    ASSERT_TRUE(waitUntil(warns, 30s)) << m_h.relayLog();
    EXPECT_EQ(listed()->second, std::string(status()["state_warning"].as_string()));
    auto text = runCommand({Harness::binary("hpc-agent"), "daemons"}, "", env);
    EXPECT_NE(text.out.find("WARNING: state.db reached state_max_bytes"), std::string::npos) << text.out;

    // A platform restarted knows nothing of it: the daemon says it again on reconnecting.
    m_h.stopRelay();
    m_h.startRelay(m_h.port());
    ASSERT_TRUE(waitUntil(warns, 60s)) << m_h.relayLog();

    // Back under the cap: the next pass clears it, at the platform too.
    ASSERT_EQ(ctl({"config", "unset", "state_max_bytes"}).status, 0);
    ASSERT_TRUE(waitUntil(
        [&] {
            auto d = listed();
            return d && d->first && d->second.empty();
        },
        30s))
        << m_h.relayLog();
    EXPECT_EQ(status()["state_warning"].as_string(), "");
}

TEST_F(RetentionE2E, TheLogFileRotatesAtLogMaxBytesAndLogsFollowsAcrossIt) {
    fs::path log = m_h.home("d1") / "d1.log";
    fs::path followed = m_h.dir() / "followed.txt";
    SpawnOptions o;
    o.argv = {Harness::binary("hpc-daemonctl"), "logs", "-f", "-n", "1"};
    o.envOverrides = m_h.baseEnv();
    for (const std::string& e : {"HPC_DAEMON_HOME=" + m_h.home("d1").string(), std::string("HPC_DAEMONCTL_MODE=nohup"),
                                 std::string("DBUS_SESSION_BUS_ADDRESS="), std::string("XDG_RUNTIME_DIR=")})
        o.envOverrides.push_back(e);
    o.outputFile = followed.string();
    ChildGuard follower(spawn(o).pid);

    ASSERT_EQ(ctl({"config", "set", "log_max_bytes", "4KiB"}).status, 0);
    int reloads = 1;
    // Each Reload writes a line or two; enough of them rotate twice over.
    for (int i = 0; i < 200 && !fs::exists(log.string() + ".2"); ++i, ++reloads)
        ASSERT_EQ(ctl({"config", "set", "job_retention", std::to_string(30 + i) + "d"}).status, 0);
    ASSERT_TRUE(fs::exists(log.string() + ".1"));
    ASSERT_TRUE(fs::exists(log.string() + ".2"));
    for (int i = 0; i < 30; ++i, ++reloads) ASSERT_EQ(ctl({"config", "set", "job_retention", "9d"}).status, 0);
    EXPECT_FALSE(fs::exists(log.string() + ".3")) << "three files in all";
    for (const auto& f : {log, fs::path(log.string() + ".1"), fs::path(log.string() + ".2")}) {
        struct stat st {};
        ASSERT_EQ(::stat(f.c_str(), &st), 0);
        EXPECT_EQ(st.st_mode & 0777, 0600u) << f;
        EXPECT_LE(st.st_size, 4096 + 512) << f;
    }
    // The follower shows lines from before the rotations and the newest
    // line of the current file (each line is unique by its timestamp).
    ASSERT_EQ(ctl({"config", "set", "job_retention", "77d"}).status, 0);
    auto read = [](const fs::path& f) {
        std::ifstream in(f);
        return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    };
    std::string current = read(log);
    ASSERT_GT(current.size(), 2u);
    std::string newest = current.substr(current.rfind('\n', current.size() - 2) + 1);
    std::string older = read(log.string() + ".2");
    std::string oldLine = older.substr(0, older.find('\n') + 1);
    EXPECT_TRUE(waitUntil([&] { return read(followed).find(newest) != std::string::npos; }, 20s))
        << "newest: " << newest << "followed:\n"
        << read(followed);
    EXPECT_NE(read(followed).find(oldLine), std::string::npos) << oldLine;
    EXPECT_GE(reloads, 30);
    follower.terminate();
}
