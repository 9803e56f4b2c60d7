// Retention of state.db (issue 21): real SQLite files in a temporary directory.
#include "retention.hpp"
#include "errors.hpp"
#include "jobs/job_store.hpp"
#include "settings.hpp"
#include "sqlite.hpp"
#include "store.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

namespace fs = std::filesystem;
using namespace hpc;
using hpc::daemon::JobRecord;
using hpc::daemon::JobStore;
using namespace std::chrono_literals;

namespace {

constexpr double kNow = 2'000'000'000;  // a fixed "now": ages are exact, no wall clock

class Retention : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/hpc-retention-XXXXXX";
        ASSERT_TRUE(::mkdtemp(tmpl));
        m_root = tmpl;
    }
    void TearDown() override { fs::remove_all(m_root); }

    static Profile profile(const std::string& id = "mila") {
        Profile p;
        p.daemonId = id;
        p.platformUrl = "https://127.0.0.1:8443";
        p.apiKey = Secret("hpcd_x");
        return p;
    }
    static void addAudit(Store& s, double time, const std::string& id = "mila", std::size_t commandBytes = 40) {
        s.addAudit(Store::AuditEntry{time, id, "agent-1", "exec", "/tmp", std::string(commandBytes, 'x'), 0});
    }
    static JobRecord job(const std::string& jobId, JobState state, double endedAt) {
        JobRecord j;
        j.jobId = jobId;
        j.daemonId = "mila";
        j.agentId = "agent-1";
        j.backend = "local";
        j.state = isFinal(state) ? JobState::Running : state;
        j.dir = "/tmp/j/" + jobId;
        j.cwd = "/tmp";
        j.submittedAt = endedAt - 10;
        return j;
    }
    /// Inserts a job and, for a final state, finishes it (which queues its callback).
    static void addJob(Store& s, const std::string& jobId, JobState state, double endedAt, bool ack) {
        JobStore jobs(s);
        JobRecord j = job(jobId, state, endedAt);
        jobs.insert(j);
        if (isFinal(state)) {
            j.state = state;
            j.endedAt = endedAt;
            ASSERT_TRUE(jobs.finish(j, {{"job_id", jobId}}, "cb-" + jobId));
            if (ack) jobs.acknowledge("cb-" + jobId);
        }
    }
    static std::int64_t count(Store& s, const std::string& sql) { return s.db().queryInt(sql); }

    fs::path m_root;
};

TEST_F(Retention, PrunesOnlyAuditRowsAndEndedJobsOutsideTheirWindow) {
    auto store = Store::open(m_root);
    store.saveProfile(profile());
    for (int i = 0; i < 500; ++i) addAudit(store, kNow - 3601 - i);  // older than 1 h
    for (int i = 0; i < 30; ++i) addAudit(store, kNow - 60 - i);     // inside
    addAudit(store, kNow - 7200, "other");                           // another profile's: not ours to prune
    addJob(store, "old-done", JobState::Completed, kNow - 7200, true);
    addJob(store, "new-done", JobState::Completed, kNow - 60, true);
    addJob(store, "old-running", JobState::Running, kNow - 7200, false);
    addJob(store, "old-unacked", JobState::Failed, kNow - 7200, false);

    Settings s;
    s.auditRetention = 1h;
    s.jobRetention = 1h;
    PruneReport r = pruneNow(store, "mila", s, kNow);

    EXPECT_EQ(r.auditRows, 500);
    EXPECT_EQ(r.jobs, 1);
    EXPECT_FALSE(r.capForced());
    EXPECT_EQ(count(store, "SELECT COUNT(*) FROM audit WHERE daemon_id = 'mila'"), 30);
    EXPECT_EQ(
        count(store, "SELECT COUNT(*) FROM audit WHERE daemon_id = 'mila' AND time < " + std::to_string(kNow - 3600)),
        0);
    EXPECT_EQ(count(store, "SELECT COUNT(*) FROM audit WHERE daemon_id = 'other'"), 1);
    JobStore jobs(store);
    EXPECT_FALSE(jobs.get("mila", "old-done"));
    EXPECT_TRUE(jobs.get("mila", "new-done"));
    EXPECT_TRUE(jobs.get("mila", "old-running")) << "a live job is never pruned, whatever its age";
    EXPECT_TRUE(jobs.get("mila", "old-unacked")) << "a job whose callback is not acknowledged is kept";
    ASSERT_EQ(jobs.pendingCallbacks("mila").size(), 1u);
    EXPECT_EQ(jobs.pendingCallbacks("mila")[0].callbackId, "cb-old-unacked");
}

TEST_F(Retention, ThePrunedJobsDirectoriesAreHandedOnOnceAndNoLiveJobs) {
    auto store = Store::open(m_root);
    store.saveProfile(profile());
    addJob(store, "old-done", JobState::Completed, kNow - 7200, true);
    addJob(store, "new-done", JobState::Completed, kNow - 60, true);
    addJob(store, "old-running", JobState::Running, kNow - 7200, false);
    addJob(store, "old-unacked", JobState::Failed, kNow - 7200, false);
    Settings s;
    s.jobRetention = 1h;
    StatePruner pruner(store, "mila");
    pruner.begin(s, kNow);
    while (pruner.step()) {
    }
    auto dirs = pruner.takeJobDirs();
    ASSERT_EQ(dirs.size(), 1u);
    EXPECT_EQ(dirs[0].jobId, "old-done");
    EXPECT_EQ(dirs[0].dir, "/tmp/j/old-done") << "exactly as recorded";
    EXPECT_TRUE(pruner.takeJobDirs().empty()) << "handed on once";

    // The cap takes ended jobs inside their retention: theirs go too.
    s.stateMaxBytes = 1;
    pruner.begin(s, kNow);
    while (pruner.step()) {
    }
    dirs = pruner.takeJobDirs();
    ASSERT_EQ(dirs.size(), 1u);
    EXPECT_EQ(dirs[0].jobId, "new-done");
    EXPECT_EQ(pruner.report().capJobs, 1);
}

TEST_F(Retention, WorksInBatchesThatEachEndInACommit) {
    auto store = Store::open(m_root);
    for (int i = 0; i < 3 * StatePruner::kBatchRows + 7; ++i) addAudit(store, kNow - 7200 - i);
    StatePruner pruner(store, "mila");
    Settings s;
    s.auditRetention = 1h;
    pruner.begin(s, kNow);
    int steps = 0;
    std::int64_t last = count(store, "SELECT COUNT(*) FROM audit");
    while (pruner.step()) {
        ++steps;
        std::int64_t now = count(store, "SELECT COUNT(*) FROM audit");
        EXPECT_LE(last - now, StatePruner::kBatchRows) << "one step deletes at most one batch";
        last = now;
    }
    EXPECT_GE(steps, 4);
    EXPECT_EQ(last, 0);
    EXPECT_EQ(pruner.report().auditRows, 3 * StatePruner::kBatchRows + 7);
}

TEST_F(Retention, TheFileShrinksAfterAPrune) {
    auto store = Store::open(m_root);
    EXPECT_EQ(store.db().queryInt("PRAGMA auto_vacuum"), 2) << "incremental";
    for (int i = 0; i < 20000; ++i) addAudit(store, kNow - 7200 - i, "mila", 200);
    store.db().exec("PRAGMA wal_checkpoint(TRUNCATE)");
    StatePruner probe(store, "mila");
    std::int64_t before = probe.fileBytes();
    ASSERT_GT(before, 4 << 20);
    Settings s;
    s.auditRetention = 1h;
    PruneReport r = pruneNow(store, "mila", s, kNow);
    EXPECT_EQ(r.auditRows, 20000);
    EXPECT_EQ(r.bytesBefore, before);
    EXPECT_LT(r.bytesAfter, before / 10) << "incremental vacuum gave the pages back";
    EXPECT_EQ(static_cast<std::uintmax_t>(r.bytesAfter),
              fs::file_size(m_root / "state.db") + fs::file_size(m_root / "state.db-wal"));
    EXPECT_EQ(store.db().queryInt("PRAGMA freelist_count"), 0);
}

TEST_F(Retention, TheSizeCapPrunesOldestFirstInsideRetentionButNeverLiveState) {
    auto store = Store::open(m_root);
    store.saveProfile(profile());
    addJob(store, "ancient-running", JobState::Running, kNow - 86400, false);
    addJob(store, "ancient-unacked", JobState::Completed, kNow - 86400, false);
    for (int i = 0; i < 50; ++i) addJob(store, "done-" + std::to_string(i), JobState::Completed, kNow - 5000 + i, true);
    for (int i = 0; i < 8000; ++i) addAudit(store, kNow - 4000 + i * 0.1, "mila", 300);  // ~3 MB, all recent
    Settings s;  // default retention: everything is inside it
    s.stateMaxBytes = 512 << 10;
    PruneReport r = pruneNow(store, "mila", s, kNow);

    EXPECT_TRUE(r.capForced());
    EXPECT_FALSE(r.overCapWithNothingPrunable);
    EXPECT_LE(sqlite::usedBytes(store.db()), static_cast<std::int64_t>(s.stateMaxBytes));
    EXPECT_LT(r.bytesAfter, r.bytesBefore);
    EXPECT_EQ(r.capJobs, 50) << "the ended jobs are older than every audit row: they go first";
    EXPECT_GT(r.capAuditRows, 0);
    // What remains is the newest audit rows: everything older than the oldest kept row is gone.
    double oldestKept = 0;
    {
        auto st = store.db().prepare("SELECT MIN(time) FROM audit");
        ASSERT_TRUE(st.step());
        oldestKept = st.real(0);
    }
    EXPECT_EQ(count(store, "SELECT COUNT(*) FROM audit"),
              count(store, "SELECT COUNT(*) FROM audit WHERE time >= " + std::to_string(oldestKept)));
    EXPECT_NEAR(oldestKept, kNow - 4000 + (8000 - count(store, "SELECT COUNT(*) FROM audit")) * 0.1, 0.5);
    JobStore jobs(store);
    EXPECT_TRUE(jobs.get("mila", "ancient-running"));
    EXPECT_TRUE(jobs.get("mila", "ancient-unacked"));
    EXPECT_NE(r.summary().find("state_max_bytes"), std::string::npos);
}

TEST_F(Retention, OverTheCapWithOnlyLiveStateSaysSoAndDeletesNothing) {
    auto store = Store::open(m_root);
    for (int i = 0; i < 200; ++i) {
        JobStore jobs(store);
        JobRecord j = job("run-" + std::to_string(i), JobState::Running, kNow);
        j.context = "\"" + std::string(2000, 'c') + "\"";
        jobs.insert(j);
    }
    Settings s;
    s.stateMaxBytes = 64 << 10;
    PruneReport r = pruneNow(store, "mila", s, kNow);
    EXPECT_TRUE(r.overCapWithNothingPrunable);
    EXPECT_EQ(count(store, "SELECT COUNT(*) FROM jobs"), 200);
}

TEST_F(Retention, AStateFileOfThePreviousSchemaIsMigratedAndKeepsItsJobs) {
    const auto& steps = Store::migrations();
    {
        auto db = sqlite::Db::open((m_root / "state.db").string());
        sqlite::migrate(db, std::vector<sqlite::Migration>(steps.begin(), steps.begin() + 3), "v3");
        ASSERT_EQ(db.userVersion(), 3);
        ASSERT_EQ(db.queryInt("PRAGMA auto_vacuum"), 0);
        db.exec(
            "INSERT INTO jobs (job_id, daemon_id, agent_id, backend, state, dir, cwd, submitted_at, updated_at) "
            "VALUES ('j1', 'mila', 'a', 'local', 'RUNNING', '/tmp/j1', '/tmp', 1, 1)");
        db.exec(
            "INSERT INTO outbox (callback_id, daemon_id, job_id, payload, created_at) "
            "VALUES ('cb-0', 'mila', 'j0', '{}', 1)");
        for (int i = 0; i < 2000; ++i)
            db.exec(
                "INSERT INTO audit (time, daemon_id, agent, session, cwd, command) VALUES (1, 'mila', 'a', "
                "'exec', '/', '" +
                std::string(200, 'y') + "')");
    }
    auto store = Store::open(m_root);
    EXPECT_EQ(store.schemaVersion(), Store::latestSchemaVersion());
    EXPECT_EQ(store.db().queryInt("PRAGMA auto_vacuum"), 2);
    JobStore jobs(store);
    ASSERT_TRUE(jobs.get("mila", "j1"));
    EXPECT_EQ(jobs.get("mila", "j1")->state, JobState::Running);
    EXPECT_EQ(jobs.pendingCallbackCount("mila"), 1u);
    // And the converted file gives space back.
    std::int64_t before = StatePruner(store, "mila").fileBytes();
    Settings s;
    s.auditRetention = 1h;
    auto r = pruneNow(store, "mila", s, kNow);
    EXPECT_EQ(r.auditRows, 2000);
    EXPECT_LT(r.bytesAfter, before);
    EXPECT_TRUE(jobs.get("mila", "j1"));
}

TEST(Settings, ParsesDurationsAndSizesWithUnits) {
    EXPECT_EQ(parseDuration("90d"), std::chrono::seconds(90 * 86400));
    EXPECT_EQ(parseDuration("12h"), 12h);
    EXPECT_EQ(parseDuration("30m"), 30min);
    EXPECT_EQ(parseDuration("45"), 45s);
    EXPECT_EQ(parseDuration("2w"), std::chrono::seconds(14 * 86400));
    EXPECT_FALSE(parseDuration("12 parsecs"));
    EXPECT_FALSE(parseDuration("-1d"));
    EXPECT_FALSE(parseDuration(""));
    EXPECT_FALSE(parseDuration("99999999999999999999d"));
    EXPECT_EQ(parseSize("64MiB"), 64ull << 20);
    EXPECT_EQ(parseSize("512KiB"), 512ull << 10);
    EXPECT_EQ(parseSize("1G"), 1ull << 30);
    EXPECT_EQ(parseSize("10MB"), 10'000'000ull);
    EXPECT_EQ(parseSize("4096"), 4096ull);
    EXPECT_FALSE(parseSize("64 furlongs"));
    EXPECT_FALSE(parseSize("MiB"));
    EXPECT_EQ(formatDuration(std::chrono::seconds(90 * 86400)), "90d");
    EXPECT_EQ(formatSize(64ull << 20), "64MiB");
}

TEST(Settings, ABadKeyOrValueIsRefusedAndNothingChanges) {
    char tmpl[] = "/tmp/hpc-settings-XXXXXX";
    ASSERT_TRUE(::mkdtemp(tmpl));
    {
        auto store = Store::open(tmpl);
        setSetting(store, "mila", "audit_retention", "90d");
        for (auto [key, value] : std::vector<std::pair<std::string, std::string>>{{"audit_retention", "soon"},
                                                                                  {"audit_retention", "0"},
                                                                                  {"no_such_key", "1d"},
                                                                                  {"state_max_bytes", "1KiB"},
                                                                                  {"log_max_bytes", "lots"},
                                                                                  {"max_shells", "0"},
                                                                                  {"max_shells", "1001"},
                                                                                  {"max_shells", "12x"}}) {
            try {
                setSetting(store, "mila", key, value);
                ADD_FAILURE() << key << "=" << value << " was accepted";
            } catch (const Error& e) {
                EXPECT_EQ(e.code(), ErrorCode::BadRequest);
                EXPECT_NE(std::string(e.what()).find(key == "no_such_key" ? "unknown setting" : key), std::string::npos)
                    << e.what();
            }
        }
        auto stored = storedSettings(store, "mila");
        ASSERT_EQ(stored.size(), 1u);
        EXPECT_EQ(stored[0].second, "90d");
        EXPECT_EQ(loadSettings(store, "mila").auditRetention, std::chrono::seconds(90 * 86400));
        EXPECT_EQ(loadSettings(store, "other").auditRetention, Settings{}.auditRetention);
        EXPECT_THROW(unsetSetting(store, "mila", "no_such_key"), Error);
        EXPECT_TRUE(unsetSetting(store, "mila", "audit_retention"));
        EXPECT_FALSE(unsetSetting(store, "mila", "audit_retention"));
        EXPECT_EQ(loadSettings(store, "mila").auditRetention, Settings{}.auditRetention);
        EXPECT_FALSE(loadSettings(store, "mila").maxShells);
        setSetting(store, "mila", "max_shells", "500");
        EXPECT_EQ(loadSettings(store, "mila").maxShells, 500u);
    }
    fs::remove_all(tmpl);
}

}  // namespace

// The relay's database: expired codes and tokens, and callbacks the agent
// acknowledged, go; API keys and unacknowledged callbacks stay.
#include "relay_db.hpp"
#include "util.hpp"

namespace {

TEST(RelayRetentionTest, PrunesExpiredCodesAndTokensAndAcknowledgedCallbacksOnly) {
    char tmpl[] = "/tmp/hpc-relay-retention-XXXXXX";
    ASSERT_TRUE(::mkdtemp(tmpl));
    std::string path = std::string(tmpl) + "/relay.db";
    {
        relay::RelayDb db(path);
        EXPECT_EQ(db.rawDb().queryInt("PRAGMA auto_vacuum"), 2);
        for (int i = 0; i < 3; ++i)
            ASSERT_TRUE(db.startSignin("u" + std::to_string(i) + "@example.org", Secret("123456")));
        auto user = db.rawDb().queryInt("SELECT id FROM users WHERE email = 'u0@example.org'");
        auto access = db.issueCredential(user, "access", relay::RelayDb::kAccessTokenLifetime);
        auto apiKey = db.issueCredential(user, "api_key", std::nullopt);
        for (int i = 0; i < 1200; ++i)
            ASSERT_TRUE(db.recordCallback(user, "d1", "cb-" + std::to_string(i),
                                          {{"agent_id", "agent-1"}, {"job_id", "j" + std::to_string(i)}}));
        for (int i = 0; i < 1100; ++i) ASSERT_TRUE(db.ackCallback(user, "agent-1", "cb-" + std::to_string(i)));

        double now = nowEpochSeconds();
        relay::RelayRetention r;  // defaults: 7 d after acknowledgement, 1 d after expiry
        db.setRetention(r);
        auto nothing = db.prune(now);
        EXPECT_EQ(nothing.signins + nothing.credentials + nothing.callbacks, 0) << "nothing is old enough yet";

        auto report = db.prune(now + 30 * 86400.0);
        EXPECT_EQ(report.signins, 3);
        EXPECT_EQ(report.credentials, 1) << "the access token; the API key has no expiry";
        EXPECT_EQ(report.callbacks, 1100) << "in batches of 500";
        EXPECT_FALSE(db.authenticate(access.second));
        EXPECT_TRUE(db.authenticate(apiKey.second));
        auto left = db.callbacks(user, relay::CallbackQuery{});
        ASSERT_EQ(left.size(), 100u);
        for (const auto& c : left) EXPECT_FALSE(c.acked) << "only acknowledged callbacks were pruned";
        EXPECT_EQ(db.rawDb().queryInt("PRAGMA freelist_count"), 0);
        EXPECT_EQ(db.rawDb().prepare("PRAGMA integrity_check").step(), true);
    }
    fs::remove_all(tmpl);
}

}  // namespace
