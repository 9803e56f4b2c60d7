#include "errors.hpp"
#include "sqlite.hpp"
#include "store.hpp"

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
        struct stat st{};
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
    { auto store = Store::open(m_home); store.saveProfile(sample()); }
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
    { auto store = Store::open(m_home); store.db().setUserVersion(Store::latestSchemaVersion() + 1); }
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
