#include "sql.hpp"

#include <utility>

namespace hpc::relay::sql {
namespace {

/// Runs `f`, turning SQLite's full-disk error into the relay's.
template <typename F>
auto translated(F&& f) -> decltype(f()) {
    try {
        return f();
    } catch (const sqlite::DiskFull& e) {
        throw StorageFull(e.what());
    }
}

class SqliteStatement final : public StatementImpl {
public:
    explicit SqliteStatement(sqlite::Statement st) : m_st(std::move(st)) {}
    void bindText(int index, std::string_view text) override { m_st.bind(index, text); }
    void bindInt(int index, std::int64_t value) override { m_st.bind(index, value); }
    void bindReal(int index, double value) override { m_st.bind(index, value); }
    void bindNull(int index) override { m_st.bindNull(index); }
    bool step() override {
        return translated([&] { return m_st.step(); });
    }
    std::string text(int column) const override { return m_st.text(column); }
    std::int64_t int64(int column) const override { return m_st.int64(column); }
    double real(int column) const override { return m_st.real(column); }
    bool isNull(int column) const override { return m_st.isNull(column); }

private:
    sqlite::Statement m_st;
};

class SqliteConnection final : public Connection {
public:
    explicit SqliteConnection(const std::string& path) : m_path(path), m_db(sqlite::Db::open(path)) {}

    Dialect dialect() const override { return Dialect::SQLite; }
    const std::string& describe() const override { return m_path; }
    Statement prepare(std::string_view sql) override {
        return Statement(std::make_unique<SqliteStatement>(translated([&] { return m_db.prepare(sql); })));
    }
    void exec(std::string_view sql) override {
        translated([&] { m_db.exec(sql); });
    }
    std::int64_t changes() override { return m_db.changes(); }
    std::int64_t totalChanges() override { return sqlite3_total_changes64(m_db.raw()); }
    std::int64_t lastInsertId() override { return m_db.lastInsertRowid(); }
    void begin() override { exec("BEGIN IMMEDIATE"); }
    void commit() override { exec("COMMIT"); }
    void rollback() override { exec("ROLLBACK"); }
    void setDurable(bool on) override { exec(on ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"); }
    int schemaVersion() override { return m_db.userVersion(); }
    void setSchemaVersion(int version) override { m_db.setUserVersion(version); }
    void compact() override {
        while (sqlite::freePages(m_db) > 0) {
            auto before = sqlite::freePages(m_db);
            exec("PRAGMA incremental_vacuum(256)");
            if (sqlite::freePages(m_db) >= before) break;
        }
        exec("PRAGMA wal_checkpoint(TRUNCATE)");
    }

private:
    std::string m_path;
    sqlite::Db m_db;
};

}  // namespace

std::int64_t Connection::queryInt(std::string_view sql) {
    auto st = prepare(sql);
    return st.step() ? st.int64(0) : 0;
}

Transaction::~Transaction() {
    if (m_done) return;
    try {
        m_c.rollback();
    } catch (...) {
    }
}

Durable::~Durable() {
    try {
        m_c.setDurable(false);
    } catch (...) {
    }
}

void migrate(Connection& c, const std::vector<sqlite::Migration>& migrations) {
    int want = static_cast<int>(migrations.size());
    auto tooNew = [&](int have) {
        if (have > want)
            throw std::runtime_error(c.describe() + " has schema version " + std::to_string(have) +
                                     ", newer than this program's " + std::to_string(want) +
                                     "; upgrade hpc-relay or use the matching version");
    };
    for (;;) {
        int have = c.schemaVersion();
        tooNew(have);
        if (have == want) return;
        const auto& m = migrations[static_cast<std::size_t>(have)];
        if (m.outsideTransaction) {  // SQLite only: VACUUM and the like
            c.exec(m.sql);
            c.setSchemaVersion(have + 1);
            continue;
        }
        Transaction tx(c);
        // Another relay instance may have taken this step while we waited for the lock.
        if (int now = c.schemaVersion(); now != have) {
            tooNew(now);
            continue;
        }
        c.exec(m.sql);
        c.setSchemaVersion(have + 1);
        tx.commit();
    }
}

std::unique_ptr<Connection> openSqlite(const std::string& path) { return std::make_unique<SqliteConnection>(path); }

bool isPostgresUrl(std::string_view url) {
    return url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0;
}

}  // namespace hpc::relay::sql
