#include "store.hpp"
#include "errors.hpp"
#include "relay_db.hpp"
#include "sqlite.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>

namespace fs = std::filesystem;
using namespace hpc;

namespace {

class StoreTest : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/hpc-store-XXXXXX";
        ASSERT_TRUE(::mkdtemp(tmpl));
        m_root = tmpl;
        m_home = m_root / "home";
    }
    void TearDown() override { fs::remove_all(m_root); }

    static mode_t modeOf(const fs::path& p) {
        struct stat st {};
        EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
        return st.st_mode & 07777;
    }

    Profile sample(const std::string& id = "mila") {
        Profile p;
        p.daemonId = id;
        p.platformUrl = "https://127.0.0.1:8443";
        p.apiKey = Secret("hpcd_secret");
        p.allowedDirs = {"/tmp/a", "/tmp/b c"};
        p.clusterName = "Mila";
        p.caFile = "/tmp/ca.pem";
        return p;
    }

    fs::path m_root;
    fs::path m_home;
};

}  // namespace

TEST_F(StoreTest, CreatesThePrivateDirectoryAndFile) {
    auto store = Store::open(m_home);
    EXPECT_EQ(modeOf(m_home), 0700u);
    EXPECT_EQ(modeOf(m_home / "state.db"), 0600u);
}

TEST_F(StoreTest, TightensLoosePermissionsOnEveryOpen) {
    {
        auto store = Store::open(m_home);
        store.saveProfile(sample());
    }
    ::chmod(m_home.c_str(), 0755);
    ::chmod((m_home / "state.db").c_str(), 0644);
    auto store = Store::open(m_home);
    EXPECT_EQ(modeOf(m_home), 0700u);
    EXPECT_EQ(modeOf(m_home / "state.db"), 0600u);
    if (fs::exists(m_home / "state.db-wal")) {
        EXPECT_EQ(modeOf(m_home / "state.db-wal"), 0600u);
    }
}

TEST_F(StoreTest, RefusesASymlinkInPlaceOfTheDirectory) {
    fs::create_directories(m_root / "elsewhere");
    fs::create_directory_symlink(m_root / "elsewhere", m_home);
    EXPECT_THROW(Store::open(m_home), std::runtime_error);
}

TEST_F(StoreTest, HonoursHpcDaemonHome) {
    ::setenv("HPC_DAEMON_HOME", m_home.c_str(), 1);
    EXPECT_EQ(homeDir(), m_home);
    ::unsetenv("HPC_DAEMON_HOME");
    EXPECT_NE(homeDir(), m_home);
}

TEST_F(StoreTest, SavesAndReadsAProfile) {
    auto store = Store::open(m_home);
    store.saveProfile(sample());
    auto p = store.profile("mila");
    ASSERT_TRUE(p);
    EXPECT_EQ(p->platformUrl, "https://127.0.0.1:8443");
    EXPECT_EQ(p->apiKey.reveal(), "hpcd_secret");
    EXPECT_EQ(p->allowedDirs, (std::vector<std::string>{"/tmp/a", "/tmp/b c"}));
    EXPECT_EQ(p->clusterName, "Mila");
    EXPECT_EQ(p->caFile, "/tmp/ca.pem");
    EXPECT_GT(p->createdAt, 0);
}

TEST_F(StoreTest, SavingTheSameIdUpdatesWithoutDuplicating) {
    auto store = Store::open(m_home);
    store.saveProfile(sample());
    auto created = store.profile("mila")->createdAt;
    auto updated = sample();
    updated.platformUrl = "https://other:1";
    store.saveProfile(updated);
    ASSERT_EQ(store.profiles().size(), 1u);
    EXPECT_EQ(store.profile("mila")->platformUrl, "https://other:1");
    EXPECT_EQ(store.profile("mila")->createdAt, created);
}

TEST_F(StoreTest, ReplacesOnlyTheApiKeyOfAProfile) {
    auto store = Store::open(m_home);
    store.saveProfile(sample());
    store.setApiKey("mila", Secret("hpcd_new"));
    auto p = store.profile("mila");
    EXPECT_EQ(p->apiKey.reveal(), "hpcd_new");
    EXPECT_EQ(p->clusterName, "Mila");
    EXPECT_THROW(store.setApiKey("nope", Secret("hpcd_x")), Error);
}

TEST_F(StoreTest, RemovingAProfileTakesItsRowsAndLeavesTheOthers) {
    auto store = Store::open(m_home);
    store.saveProfile(sample("mila"));
    store.saveProfile(sample("other"));
    store.addAudit({1, "mila", "cred-1", "exec", "/tmp", "true", 0});
    store.addAudit({1, "other", "cred-1", "exec", "/tmp", "true", 0});
    EXPECT_TRUE(store.removeProfile("mila"));
    EXPECT_FALSE(store.profile("mila"));
    EXPECT_TRUE(store.audit("mila", 10).empty());
    EXPECT_EQ(store.audit("other", 10).size(), 1u);
    EXPECT_FALSE(store.removeProfile("mila"));
}

TEST_F(StoreTest, RefusesAnInvalidDaemonId) {
    auto store = Store::open(m_home);
    EXPECT_THROW(store.saveProfile(sample("../evil")), Error);
    EXPECT_TRUE(store.profiles().empty());
}

TEST_F(StoreTest, SelectsTheOnlyProfileOrNamesTheChoices) {
    auto store = Store::open(m_home);
    EXPECT_THROW(selectProfile(store, ""), Error);
    store.saveProfile(sample("one"));
    EXPECT_EQ(selectProfile(store, "").daemonId, "one");
    store.saveProfile(sample("two"));
    try {
        selectProfile(store, "");
        FAIL() << "two profiles and no id must be an error";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::NotFound);
        EXPECT_NE(std::string(e.what()).find("one, two"), std::string::npos);
    }
    EXPECT_EQ(selectProfile(store, "two").daemonId, "two");
    EXPECT_THROW(selectProfile(store, "three"), Error);
}

TEST_F(StoreTest, MigratesAnEmptyDatabaseToTheLatestVersion) {
    auto store = Store::open(m_home);
    EXPECT_EQ(store.schemaVersion(), Store::latestSchemaVersion());
}

TEST_F(StoreTest, RefusesADatabaseFromANewerVersion) {
    {
        auto store = Store::open(m_home);
        store.db().setUserVersion(Store::latestSchemaVersion() + 1);
    }
    EXPECT_THROW(Store::open(m_home), std::runtime_error);
}

TEST(Migrations, FallThroughFromAnyOlderVersion) {
    char tmpl[] = "/tmp/hpc-mig-XXXXXX";
    ASSERT_TRUE(::mkdtemp(tmpl));
    auto path = std::string(tmpl) + "/m.db";
    std::vector<std::string_view> steps = {"CREATE TABLE a (x INTEGER);", "ALTER TABLE a ADD COLUMN y TEXT;",
                                           "CREATE TABLE b (z INTEGER);"};
    {
        auto db = sqlite::Db::open(path);
        sqlite::migrate(db, std::vector<std::string_view>(steps.begin(), steps.begin() + 1), "test");
        EXPECT_EQ(db.userVersion(), 1);
        db.exec("INSERT INTO a (x) VALUES (7)");
    }
    auto db = sqlite::Db::open(path);
    sqlite::migrate(db, steps, "test");
    EXPECT_EQ(db.userVersion(), 3);
    auto st = db.prepare("SELECT x, y FROM a");
    ASSERT_TRUE(st.step());
    EXPECT_EQ(st.int64(0), 7) << "data survives the migration";
    EXPECT_TRUE(st.isNull(1));
    db.exec("INSERT INTO b (z) VALUES (1)");
    fs::remove_all(tmpl);
}

TEST(Migrations, AFailedStepLeavesTheVersionUnchanged) {
    char tmpl[] = "/tmp/hpc-mig-XXXXXX";
    ASSERT_TRUE(::mkdtemp(tmpl));
    auto path = std::string(tmpl) + "/m.db";
    auto db = sqlite::Db::open(path);
    std::vector<std::string_view> steps = {"CREATE TABLE a (x INTEGER);", "THIS IS NOT SQL;"};
    EXPECT_THROW(sqlite::migrate(db, steps, "test"), std::runtime_error);
    EXPECT_EQ(db.userVersion(), 1);
    fs::remove_all(tmpl);
}

namespace {

/// Fills the database up to its page limit (PRAGMA max_page_count: SQLite's
/// own SQLITE_FULL, the code a full disk gives) with audit rows.
void fillToTheLimit(Store& store) {
    store.db().exec("PRAGMA max_page_count = " + std::to_string(store.db().queryInt("PRAGMA page_count") + 2));
    auto insert = [&store] {
        auto st = store.db().prepare(
            "INSERT INTO audit (time, daemon_id, agent, session, cwd, command) VALUES (0, 'filler', 'a', 'exec', '/', "
            "?1)");
        st.bind(1, std::string(3000, 'x'));
        st.run();
    };
    for (int i = 0; i < 100; ++i) insert();
}

}  // namespace

TEST_F(StoreTest, AWriteRefusedForAFullDiskThrowsDiskFullAndMarksTheStoreFullOnce) {
    auto store = Store::open(m_home);
    std::vector<bool> told;
    store.health().setListener([&told](bool full) { told.push_back(full); });
    try {
        fillToTheLimit(store);
        FAIL() << "no SQLITE_FULL";
    } catch (const sqlite::DiskFull& e) {
        EXPECT_TRUE(sqlite::isDiskFull(e));
    }
    EXPECT_TRUE(store.health().full());
    EXPECT_GT(store.health().fullSince(), 0);
    EXPECT_THROW(fillToTheLimit(store), sqlite::DiskFull);
    EXPECT_EQ(told, std::vector<bool>{true}) << "one episode, told once";
    EXPECT_FALSE(sqlite::isDiskFull(std::runtime_error("database or disk is full"))) << "by type, not by wording";
}

TEST_F(StoreTest, WhileFullNewWorkIsRefusedWithStorageFullNamingTheFile) {
    auto store = Store::open(m_home);
    EXPECT_NO_THROW(store.requireWritable());
    EXPECT_THROW(fillToTheLimit(store), sqlite::DiskFull);
    // Waits for room, so the probe inside requireWritable finds none.
    store.addAudit({1.0, "d", "agent", "exec", "/", std::string(4000, 'w'), 0});
    try {
        store.requireWritable();
        FAIL() << "not refused";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::StorageFull);
        EXPECT_NE(std::string(e.what()).find((m_home / "state.db").string()), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("full"), std::string::npos) << e.what();
    }
    EXPECT_EQ(store.profiles().size(), 0u) << "reads keep working";
}

TEST_F(StoreTest, AuditRowsKeptWhileFullAreWrittenWhenSpaceReturns) {
    auto store = Store::open(m_home);
    EXPECT_THROW(fillToTheLimit(store), sqlite::DiskFull);
    std::vector<bool> told;
    store.health().setListener([&told](bool full) { told.push_back(full); });
    for (int i = 0; i < 3; ++i)
        EXPECT_NO_THROW(store.addAudit({1.0 + i, "d", "agent", "exec", "/", "echo " + std::to_string(i), 0}));
    EXPECT_EQ(store.pendingAudit(), 3u);
    EXPECT_EQ(store.audit("d", 10).size(), 0u);

    store.db().exec("PRAGMA max_page_count = 1073741823");  // space is back
    EXPECT_TRUE(store.probeSpace(true));
    EXPECT_FALSE(store.health().full());
    EXPECT_EQ(told, std::vector<bool>{false});
    EXPECT_EQ(store.pendingAudit(), 0u);
    auto rows = store.audit("d", 10);
    ASSERT_EQ(rows.size(), 3u);
    EXPECT_EQ(rows[2].command, "echo 2");
    EXPECT_NO_THROW(store.requireWritable());
    auto check = store.db().prepare("PRAGMA integrity_check");
    ASSERT_TRUE(check.step());
    EXPECT_EQ(check.text(0), "ok");
}

TEST_F(StoreTest, AProbeThatFindsNoSpaceLeavesTheStoreFull) {
    auto store = Store::open(m_home);
    EXPECT_THROW(fillToTheLimit(store), sqlite::DiskFull);
    store.addAudit({1.0, "d", "agent", "exec", "/", "echo " + std::string(4000, 'k'), 0});
    // The file system has room, the database still has none: the audit
    // row cannot be written, so the store is not writable yet.
    EXPECT_FALSE(store.probeSpace(true));
    EXPECT_TRUE(store.health().full());
    EXPECT_EQ(store.pendingAudit(), 1u);
    EXPECT_FALSE(fs::exists(m_home / ".space-probe")) << "the probe file is removed";
}

TEST_F(StoreTest, TheRelayRefusesWritesToAFullDiskWithStorageFullAndRecordsThemOnceThereIsRoom) {
    fs::create_directories(m_root);
    relay::RelayDb db((m_root / "relay.db").string());
    db.rawDb().exec("PRAGMA max_page_count = " + std::to_string(db.rawDb().queryInt("PRAGMA page_count") + 2));
    boost::json::object payload{{"job_id", "j1"}, {"agent_id", "a"}, {"padding", std::string(3000, 'p')}};
    std::optional<ErrorCode> refused;
    int recorded = 0;
    for (; recorded < 100 && !refused; ++recorded) {
        try {
            db.recordCallback(1, "d", "cb" + std::to_string(recorded), payload);
        } catch (const Error& e) {
            refused = e.code();
            EXPECT_NE(std::string(e.what()).find("full"), std::string::npos) << e.what();
            EXPECT_EQ(std::string(e.what()).find(m_root.string()), std::string::npos) << "no server path to clients";
        }
    }
    ASSERT_EQ(refused, ErrorCode::StorageFull);
    EXPECT_GT(db.fullSince(), 0);
    EXPECT_EQ(toHttpStatus(ErrorCode::StorageFull), 507);
    EXPECT_EQ(db.callbacks(1, {}).size(), static_cast<std::size_t>(recorded - 1)) << "reads keep working";

    db.rawDb().exec("PRAGMA max_page_count = 1073741823");  // space is back
    EXPECT_TRUE(db.recordCallback(1, "d", "late", payload));
    EXPECT_EQ(db.fullSince(), 0);
    EXPECT_EQ(db.callbacks(1, {}).size(), static_cast<std::size_t>(recorded));
}
