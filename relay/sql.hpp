#pragma once
/// The relay's storage connection: one interface, with SQLite (a file in the
/// data directory, the default) and PostgreSQL (--database postgresql://...,
/// shared by several relay instances) behind it. RelayDb's statements are
/// written once, in the SQL both accept, with numbered parameters (?1, ?2);
/// the PostgreSQL connection sends them as $1, $2.
///
/// Errors throw std::runtime_error with the server's message (which never
/// contains bound values, so secrets stay out of error text); a write refused
/// because the disk or the quota is full throws StorageFull.

#include "sqlite.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace hpc::relay::sql {

enum class Dialect { SQLite, PostgreSQL };

/// The database refused a write for want of space (SQLite: the file system or
/// quota; PostgreSQL: SQLSTATE 53100 on the server). Nothing was changed.
class StorageFull : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// What a backend implements for one statement.
class StatementImpl {
public:
    virtual ~StatementImpl() = default;
    virtual void bindText(int index, std::string_view text) = 0;
    virtual void bindInt(int index, std::int64_t value) = 0;
    virtual void bindReal(int index, double value) = 0;
    virtual void bindNull(int index) = 0;
    /// Runs the statement on the first call; true while a row is available.
    virtual bool step() = 0;
    virtual std::string text(int column) const = 0;
    virtual std::int64_t int64(int column) const = 0;
    virtual double real(int column) const = 0;
    virtual bool isNull(int column) const = 0;
};

/// A prepared statement: bind its parameters (1-based), then step().
class Statement {
public:
    explicit Statement(std::unique_ptr<StatementImpl> impl) : m_impl(std::move(impl)) {}

    Statement& bind(int index, std::string_view text) { return m_impl->bindText(index, text), *this; }
    Statement& bind(int index, std::int64_t value) { return m_impl->bindInt(index, value), *this; }
    Statement& bind(int index, double value) { return m_impl->bindReal(index, value), *this; }
    Statement& bind(int index, int value) { return bind(index, static_cast<std::int64_t>(value)); }
    Statement& bind(int index, const char* text) { return bind(index, std::string_view(text)); }
    Statement& bind(int index, const std::string& text) { return bind(index, std::string_view(text)); }
    Statement& bind(int index, const std::optional<std::string>& text) {
        return text ? bind(index, std::string_view(*text)) : bindNull(index);
    }
    Statement& bindNull(int index) { return m_impl->bindNull(index), *this; }

    bool step() { return m_impl->step(); }
    /// Steps to completion, for statements that return no rows.
    void run() {
        while (step()) {
        }
    }
    std::string text(int column) const { return m_impl->text(column); }
    std::int64_t int64(int column) const { return m_impl->int64(column); }
    double real(int column) const { return m_impl->real(column); }
    bool isNull(int column) const { return m_impl->isNull(column); }

private:
    std::unique_ptr<StatementImpl> m_impl;
};

class Connection {
public:
    virtual ~Connection() = default;
    virtual Dialect dialect() const = 0;
    /// For the operator's log: the file, or host, port and database (never a password).
    virtual const std::string& describe() const = 0;

    virtual Statement prepare(std::string_view sql) = 0;
    /// Runs statements without parameters (several, separated by ';').
    virtual void exec(std::string_view sql) = 0;
    /// Rows the last INSERT, UPDATE or DELETE changed.
    virtual std::int64_t changes() = 0;
    /// Rows changed since the connection opened (to notice the first write that works).
    virtual std::int64_t totalChanges() = 0;
    /// The id the last INSERT into a table with an id column gave its row.
    virtual std::int64_t lastInsertId() = 0;

    /// One writer at a time, as SQLite's BEGIN IMMEDIATE: on PostgreSQL a
    /// transaction-scoped advisory lock, so that every relay instance's
    /// read-then-write steps (a code's attempts, a key's rotation) are serial.
    virtual void begin() = 0;
    virtual void commit() = 0;
    virtual void rollback() = 0;
    /// While on, commits reach the disk before they return (SQLite's
    /// synchronous=FULL; PostgreSQL's commits always do).
    virtual void setDurable(bool on) = 0;

    /// The schema version; 0 for a new database.
    virtual int schemaVersion() = 0;
    /// Inside the migration's transaction.
    virtual void setSchemaVersion(int version) = 0;
    /// After a prune: give freed space back (SQLite: incremental vacuum and a
    /// WAL checkpoint; PostgreSQL: its autovacuum does).
    virtual void compact() = 0;

    /// A single-value query, as an integer (0 when it returns no row).
    std::int64_t queryInt(std::string_view sql);
};

/// BEGIN on construction; ROLLBACK unless commit() was called.
class Transaction {
public:
    explicit Transaction(Connection& c) : m_c(c) { m_c.begin(); }
    ~Transaction();
    void commit() {
        m_c.commit();
        m_done = true;
    }
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;

private:
    Connection& m_c;
    bool m_done = false;
};

/// While alive, commits are durable against a power cut (see setDurable).
class Durable {
public:
    explicit Durable(Connection& c) : m_c(c) { m_c.setDurable(true); }
    ~Durable();
    Durable(const Durable&) = delete;
    Durable& operator=(const Durable&) = delete;

private:
    Connection& m_c;
};

/// Applies migrations[i] for every i >= the stored version, each in its own
/// transaction, so a database at any older version falls through to the
/// newest; refuses a database newer than this program knows. On PostgreSQL
/// the first step's transaction holds the writer lock, so relay instances
/// starting together migrate once.
void migrate(Connection& c, const std::vector<sqlite::Migration>& migrations);

/// SQLite at `path` (created when missing), WAL, foreign keys on.
std::unique_ptr<Connection> openSqlite(const std::string& path);

/// Whether `url` names a PostgreSQL database (postgresql:// or postgres://).
bool isPostgresUrl(std::string_view url);
/// Connects to PostgreSQL, loading libpq.so.5 at this first use (hpc-relay
/// needs it only for this). Throws with a clear message when libpq is
/// missing, the server cannot be reached, or `url` carries a password: a
/// command line is readable by every user of the machine, so the password
/// belongs in ~/.pgpass (or PGPASSFILE, PGPASSWORD). Unless the URL says
/// otherwise, connecting times out after 10 s, TCP keepalives notice a dead
/// server within about 30 s, and a statement is cancelled after 30 s. A
/// connection found broken is opened again: a statement outside a
/// transaction is then tried once more; otherwise, and while the server
/// stays unreachable, hpc::Error(Unavailable) is thrown, its message without
/// the database's name (logged once per outage instead).
std::unique_ptr<Connection> openPostgres(const std::string& url);

}  // namespace hpc::relay::sql
