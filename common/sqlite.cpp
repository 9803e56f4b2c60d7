#include "sqlite.hpp"

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace hpc::sqlite {
namespace {

[[noreturn]] void fail(sqlite3* db, std::string_view what, const DiskFullHook* onDiskFull = nullptr) {
    std::string msg = std::string(what) + ": " + (db ? sqlite3_errmsg(db) : "out of memory");
    if (!db) throw std::runtime_error(msg);
    // SQLite says "disk I/O error" for EDQUOT (and for ENOSPC met while
    // growing its shared-memory file): name the system's reason, so the
    // error is clear to the user.
    int code = sqlite3_extended_errcode(db) & 0xff;
    int sys = sqlite3_system_errno(db);
    if ((code == SQLITE_FULL || code == SQLITE_IOERR || code == SQLITE_CANTOPEN) && sys != 0)
        msg += std::string(" (") + std::strerror(sys) + ")";
    bool full =
        code == SQLITE_FULL || ((code == SQLITE_IOERR || code == SQLITE_CANTOPEN) && (sys == ENOSPC || sys == EDQUOT));
    if (!full) throw std::runtime_error(msg);
    if (onDiskFull && *onDiskFull) (*onDiskFull)(msg);
    throw DiskFull(msg);
}

}  // namespace

Statement::Statement(sqlite3* db, std::string_view sql, const DiskFullHook* onDiskFull)
    : m_db(db), m_onDiskFull(onDiskFull) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr) != SQLITE_OK)
        fail(db, "sqlite prepare", m_onDiskFull);
    m_stmt.reset(stmt);
}

Statement& Statement::bind(int index, std::string_view text) {
    if (sqlite3_bind_text(m_stmt.get(), index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT) !=
        SQLITE_OK)
        fail(m_db, "sqlite bind");
    return *this;
}

Statement& Statement::bind(int index, std::int64_t value) {
    if (sqlite3_bind_int64(m_stmt.get(), index, value) != SQLITE_OK) fail(m_db, "sqlite bind");
    return *this;
}

Statement& Statement::bind(int index, double value) {
    if (sqlite3_bind_double(m_stmt.get(), index, value) != SQLITE_OK) fail(m_db, "sqlite bind");
    return *this;
}

Statement& Statement::bindNull(int index) {
    if (sqlite3_bind_null(m_stmt.get(), index) != SQLITE_OK) fail(m_db, "sqlite bind");
    return *this;
}

bool Statement::step() {
    int rc = sqlite3_step(m_stmt.get());
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail(m_db, "sqlite step", m_onDiskFull);
}

void Statement::run() {
    while (step()) {
    }
}

void Statement::reset() {
    sqlite3_reset(m_stmt.get());
    sqlite3_clear_bindings(m_stmt.get());
}

std::string Statement::text(int column) const {
    const auto* p = sqlite3_column_text(m_stmt.get(), column);
    if (!p) return {};
    return std::string(reinterpret_cast<const char*>(p),
                       static_cast<std::size_t>(sqlite3_column_bytes(m_stmt.get(), column)));
}

std::int64_t Statement::int64(int column) const { return sqlite3_column_int64(m_stmt.get(), column); }
double Statement::real(int column) const { return sqlite3_column_double(m_stmt.get(), column); }
bool Statement::isNull(int column) const { return sqlite3_column_type(m_stmt.get(), column) == SQLITE_NULL; }

Db Db::open(const std::string& path, std::chrono::milliseconds busyTimeout) {
    sqlite3* raw = nullptr;
    int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                             nullptr);
    Db db(raw);
    if (rc != SQLITE_OK) fail(raw, "cannot open database " + path);
    sqlite3_busy_timeout(raw, static_cast<int>(busyTimeout.count()));
    db.exec("PRAGMA journal_mode=WAL");
    db.exec("PRAGMA synchronous=NORMAL");
    db.exec("PRAGMA foreign_keys=ON");
    return db;
}

void Db::exec(std::string_view sql) {
    std::string s(sql);
    char* err = nullptr;
    if (sqlite3_exec(m_db.get(), s.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
        sqlite3_free(err);
        fail(m_db.get(), "sqlite exec", m_onDiskFull.get());
    }
}

int Db::userVersion() {
    auto st = prepare("PRAGMA user_version");
    st.step();
    return static_cast<int>(st.int64(0));
}

void Db::setUserVersion(int version) { exec("PRAGMA user_version=" + std::to_string(version)); }

Transaction::Transaction(Db& db) : m_db(db) { m_db.exec("BEGIN IMMEDIATE"); }

Transaction::~Transaction() {
    if (!m_done) {
        try {
            m_db.exec("ROLLBACK");
        } catch (...) {
        }
    }
}

void Transaction::commit() {
    m_db.exec("COMMIT");
    m_done = true;
}

void migrate(Db& db, const std::vector<std::string_view>& migrations, std::string_view what) {
    migrate(db, std::vector<Migration>(migrations.begin(), migrations.end()), what);
}

std::int64_t Db::queryInt(std::string_view sql) {
    auto st = prepare(sql);
    return st.step() ? st.int64(0) : 0;
}

std::int64_t usedBytes(Db& db) {
    return (db.queryInt("PRAGMA page_count") - db.queryInt("PRAGMA freelist_count")) * db.queryInt("PRAGMA page_size");
}

std::int64_t freePages(Db& db) { return db.queryInt("PRAGMA freelist_count"); }

bool isDiskFull(const std::exception& e) { return dynamic_cast<const DiskFull*>(&e) != nullptr; }

void migrate(Db& db, const std::vector<Migration>& migrations, std::string_view what) {
    int have = db.userVersion();
    int want = static_cast<int>(migrations.size());
    if (have > want)
        throw std::runtime_error(std::string(what) + " has schema version " + std::to_string(have) +
                                 ", newer than this program's " + std::to_string(want) +
                                 "; upgrade hpc-daemon or use the matching version");
    for (int v = have; v < want; ++v) {
        const Migration& m = migrations[static_cast<std::size_t>(v)];
        if (m.outsideTransaction) {
            db.exec(m.sql);
            db.setUserVersion(v + 1);
            continue;
        }
        Transaction tx(db);
        db.exec(m.sql);
        db.setUserVersion(v + 1);
        tx.commit();
    }
}

}  // namespace hpc::sqlite
