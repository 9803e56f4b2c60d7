#pragma once
/// A thin RAII layer over sqlite3: a connection, prepared statements, and
/// transactions. Errors throw std::runtime_error with SQLite's message (which
/// never contains bound values, so secrets stay out of error text); a write
/// refused because the disk or the quota is full throws DiskFull.

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace hpc::sqlite {

/// A write failed because the file system or the user's quota is full:
/// SQLITE_FULL, or an I/O error whose system errno is ENOSPC or EDQUOT.
/// SQLite has rolled the statement (or its transaction) back: the database
/// is as it was before, and the same write can be tried again later.
class DiskFull : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Called with the error's text when a statement on a connection fails with
/// DiskFull, before it is thrown. It must not use the connection.
using DiskFullHook = std::function<void(const std::string& error)>;

class Statement {
public:
    /// `onDiskFull` (may be null) must outlive the statement.
    Statement(sqlite3* db, std::string_view sql, const DiskFullHook* onDiskFull = nullptr);

    Statement& bind(int index, std::string_view text);
    Statement& bind(int index, std::int64_t value);
    Statement& bind(int index, double value);
    Statement& bindNull(int index);
    Statement& bind(int index, const std::optional<std::string>& text) {
        return text ? bind(index, std::string_view(*text)) : bindNull(index);
    }
    Statement& bind(int index, const char* text) { return bind(index, std::string_view(text)); }
    Statement& bind(int index, const std::string& text) { return bind(index, std::string_view(text)); }
    Statement& bind(int index, int value) { return bind(index, static_cast<std::int64_t>(value)); }

    /// Runs one step: true while a row is available.
    bool step();
    /// Steps to completion, for statements that return no rows.
    void run();
    void reset();

    std::string text(int column) const;
    std::int64_t int64(int column) const;
    double real(int column) const;
    bool isNull(int column) const;

private:
    sqlite3* m_db;
    const DiskFullHook* m_onDiskFull;
    std::unique_ptr<sqlite3_stmt, decltype(&sqlite3_finalize)> m_stmt{nullptr, &sqlite3_finalize};
};

class Db {
public:
    /// Opens (creating when allowed) with WAL, a busy timeout and foreign keys.
    static Db open(const std::string& path, std::chrono::milliseconds busyTimeout = std::chrono::milliseconds(5000));

    void exec(std::string_view sql);
    /// A single-value PRAGMA or SELECT, as an integer.
    std::int64_t queryInt(std::string_view sql);
    Statement prepare(std::string_view sql) { return Statement(m_db.get(), sql, m_onDiskFull.get()); }
    std::int64_t lastInsertRowid() const { return sqlite3_last_insert_rowid(m_db.get()); }
    int changes() const { return sqlite3_changes(m_db.get()); }
    int userVersion();
    void setUserVersion(int version);
    sqlite3* raw() const { return m_db.get(); }
    /// Told of every DiskFull on this connection (the store's full-disk
    /// state, issue 21). Replaces the previous hook; null clears it.
    void setOnDiskFull(DiskFullHook hook) { *m_onDiskFull = std::move(hook); }

private:
    explicit Db(sqlite3* db) : m_db(db, &sqlite3_close_v2) {}
    std::unique_ptr<sqlite3, decltype(&sqlite3_close_v2)> m_db;
    /// On the heap: statements point at it, and a moved Db keeps it.
    std::unique_ptr<DiskFullHook> m_onDiskFull = std::make_unique<DiskFullHook>();
};

/// While alive, commits are synced to disk (synchronous=FULL) rather than
/// only surviving a process crash (the connection's default, NORMAL): for
/// the writes that must outlive a power cut, like a callback about to be
/// acknowledged.
class Durable {
public:
    explicit Durable(Db& db) : m_db(db) { m_db.exec("PRAGMA synchronous=FULL"); }
    ~Durable() {
        try {
            m_db.exec("PRAGMA synchronous=NORMAL");
        } catch (...) {
        }
    }
    Durable(const Durable&) = delete;
    Durable& operator=(const Durable&) = delete;

private:
    Db& m_db;
};

/// BEGIN IMMEDIATE on construction; ROLLBACK unless commit() was called.
class Transaction {
public:
    explicit Transaction(Db& db);
    ~Transaction();
    void commit();
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;

private:
    Db& m_db;
    bool m_done = false;
};

/// One schema step. Most run inside a transaction; a step that SQLite refuses
/// inside one (VACUUM, changing auto_vacuum on a database with tables) sets
/// outsideTransaction, and its version is written after it succeeded.
struct Migration {
    Migration(std::string_view s, bool outside = false) : sql(s), outsideTransaction(outside) {}
    Migration(const char* s, bool outside = false) : sql(s), outsideTransaction(outside) {}
    std::string_view sql;
    bool outsideTransaction = false;
};

/// Applies migrations[i] for every i >= the stored user_version, each in its
/// own transaction, so a database at any older version falls through to the
/// newest. Refuses a database newer than this program knows.
void migrate(Db& db, const std::vector<Migration>& migrations, std::string_view what);
void migrate(Db& db, const std::vector<std::string_view>& migrations, std::string_view what);

/// Bytes the database's pages hold (page_count - freelist_count, times the
/// page size): what the rows take, whatever the file's size on disk.
std::int64_t usedBytes(Db& db);
/// Pages on the freelist: space the file could give back.
std::int64_t freePages(Db& db);
/// True when `e` is a DiskFull from this layer.
bool isDiskFull(const std::exception& e);

}  // namespace hpc::sqlite
