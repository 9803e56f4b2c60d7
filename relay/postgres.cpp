// The PostgreSQL connection behind relay/sql.hpp. libpq is loaded with
// dlopen at the first use, so hpc-relay (and the release bundle) carries no
// libpq and its dependencies for the SQLite default.
#include "sql.hpp"

#include "errors.hpp"
#include "log.hpp"

#include <libpq-fe.h>

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

namespace hpc::relay::sql {
namespace {

struct Libpq {
    decltype(&PQconnectdbParams) connectdbParams = nullptr;
    decltype(&PQstatus) status = nullptr;
    decltype(&PQerrorMessage) errorMessage = nullptr;
    decltype(&PQfinish) finish = nullptr;
    decltype(&PQreset) reset = nullptr;
    decltype(&PQexec) exec = nullptr;
    decltype(&PQexecParams) execParams = nullptr;
    decltype(&PQresultStatus) resultStatus = nullptr;
    decltype(&PQresultErrorField) resultErrorField = nullptr;
    decltype(&PQclear) clear = nullptr;
    decltype(&PQntuples) ntuples = nullptr;
    decltype(&PQgetvalue) getvalue = nullptr;
    decltype(&PQgetisnull) getisnull = nullptr;
    decltype(&PQcmdTuples) cmdTuples = nullptr;
    decltype(&PQconninfoParse) conninfoParse = nullptr;
    decltype(&PQconninfoFree) conninfoFree = nullptr;
    decltype(&PQfreemem) freemem = nullptr;
    decltype(&PQhost) host = nullptr;
    decltype(&PQport) port = nullptr;
    decltype(&PQdb) db = nullptr;
    decltype(&PQtransactionStatus) transactionStatus = nullptr;
};

const Libpq& libpq() {
    static Libpq lib;
    static std::string failure;
    static std::once_flag once;
    std::call_once(once, [] {
        void* h = ::dlopen("libpq.so.5", RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            failure = ::dlerror();
            return;
        }
        auto load = [&](auto& fn, const char* name) {
            fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(h, name));
            if (!fn && failure.empty()) failure = std::string("libpq.so.5 has no ") + name;
        };
        load(lib.connectdbParams, "PQconnectdbParams");
        load(lib.status, "PQstatus");
        load(lib.errorMessage, "PQerrorMessage");
        load(lib.finish, "PQfinish");
        load(lib.reset, "PQreset");
        load(lib.exec, "PQexec");
        load(lib.execParams, "PQexecParams");
        load(lib.resultStatus, "PQresultStatus");
        load(lib.resultErrorField, "PQresultErrorField");
        load(lib.clear, "PQclear");
        load(lib.ntuples, "PQntuples");
        load(lib.getvalue, "PQgetvalue");
        load(lib.getisnull, "PQgetisnull");
        load(lib.cmdTuples, "PQcmdTuples");
        load(lib.conninfoParse, "PQconninfoParse");
        load(lib.conninfoFree, "PQconninfoFree");
        load(lib.freemem, "PQfreemem");
        load(lib.host, "PQhost");
        load(lib.port, "PQport");
        load(lib.db, "PQdb");
        load(lib.transactionStatus, "PQtransactionStatus");
    });
    if (!failure.empty())
        throw std::runtime_error(
            "a PostgreSQL database needs libpq.so.5 (Debian and Ubuntu: apt install libpq5; RHEL and Rocky: dnf "
            "install libpq): " +
            failure);
    return lib;
}

std::string trimmed(const char* s) {
    std::string out = s ? s : "";
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
}

/// ?N outside quoted text becomes $N.
std::string dollarParameters(std::string_view sql) {
    std::string out;
    out.reserve(sql.size());
    bool quoted = false;
    for (std::size_t i = 0; i < sql.size(); ++i) {
        char c = sql[i];
        if (c == '\'') quoted = !quoted;
        bool param = !quoted && c == '?' && i + 1 < sql.size() && sql[i + 1] >= '0' && sql[i + 1] <= '9';
        out += param ? '$' : c;
    }
    return out;
}

using Result = std::unique_ptr<PGresult, void (*)(PGresult*)>;

// Parameter types: the server infers a NULL's type from where it is used.
constexpr Oid kInt8 = 20;
constexpr Oid kText = 25;
constexpr Oid kFloat8 = 701;

class PgConnection;

class PgStatement final : public StatementImpl {
public:
    PgStatement(PgConnection& c, std::string sql) : m_c(c), m_sql(std::move(sql)) {}
    void bindText(int index, std::string_view text) override { set(index, std::string(text), kText); }
    void bindInt(int index, std::int64_t value) override { set(index, std::to_string(value), kInt8); }
    void bindReal(int index, double value) override {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.17g", value);
        set(index, buf, kFloat8);
    }
    void bindNull(int index) override { set(index, std::nullopt, 0); }
    bool step() override;
    std::string text(int column) const override { return value(column); }
    std::int64_t int64(int column) const override { return std::strtoll(value(column), nullptr, 10); }
    double real(int column) const override { return std::strtod(value(column), nullptr); }
    bool isNull(int column) const override { return libpq().getisnull(m_res.get(), m_row, column) != 0; }

private:
    void set(int index, std::optional<std::string> v, Oid type) {
        auto i = static_cast<std::size_t>(index - 1);
        if (m_values.size() <= i) {
            m_values.resize(i + 1);
            m_types.resize(i + 1, 0);
        }
        m_values[i] = std::move(v);
        m_types[i] = type;
    }
    const char* value(int column) const { return libpq().getvalue(m_res.get(), m_row, column); }

    PgConnection& m_c;
    std::string m_sql;
    std::vector<std::optional<std::string>> m_values;
    std::vector<Oid> m_types;
    Result m_res{nullptr, [](PGresult*) {}};
    int m_row = -1;
    bool m_ran = false;
};

class PgConnection final : public Connection {
public:
    explicit PgConnection(PGconn* conn) : m_conn(conn) {
        const auto& pq = libpq();
        m_describe = std::string("postgresql://") + pq.host(conn) + ":" + pq.port(conn) + "/" + pq.db(conn);
    }
    ~PgConnection() override { libpq().finish(m_conn); }
    PgConnection(const PgConnection&) = delete;
    PgConnection& operator=(const PgConnection&) = delete;

    Dialect dialect() const override { return Dialect::PostgreSQL; }
    const std::string& describe() const override { return m_describe; }
    Statement prepare(std::string_view sql) override {
        return Statement(std::make_unique<PgStatement>(*this, dollarParameters(sql)));
    }
    void exec(std::string_view sql) override {
        std::string s(sql);
        attempt([&] { return Result(libpq().exec(m_conn, s.c_str()), libpq().clear); });
    }
    std::int64_t changes() override { return m_changes; }
    std::int64_t totalChanges() override { return m_totalChanges; }
    std::int64_t lastInsertId() override { return queryInt("SELECT lastval()"); }
    // The key is the relay's: "hpcrelay" in ASCII.
    void begin() override { exec("BEGIN; SELECT pg_advisory_xact_lock(7526466868155736441)"); }
    void commit() override { exec("COMMIT"); }
    void rollback() override { exec("ROLLBACK"); }
    void setDurable(bool) override {}
    int schemaVersion() override {
        auto exists = prepare("SELECT to_regclass('hpc_schema_version') IS NOT NULL");
        if (!exists.step() || exists.text(0) != "t") return 0;
        return static_cast<int>(queryInt("SELECT version FROM hpc_schema_version"));
    }
    void setSchemaVersion(int version) override {
        exec(
            "CREATE TABLE IF NOT EXISTS hpc_schema_version (version INTEGER NOT NULL); DELETE FROM "
            "hpc_schema_version; INSERT INTO hpc_schema_version (version) VALUES (" +
            std::to_string(version) + ")");
    }
    void compact() override {}

    /// Runs one statement with text parameters.
    Result run(const std::string& sql, const std::vector<std::optional<std::string>>& values,
               const std::vector<Oid>& types) {
        std::vector<const char*> ptrs;
        ptrs.reserve(values.size());
        for (const auto& v : values) ptrs.push_back(v ? v->c_str() : nullptr);
        auto res = attempt([&] {
            return Result(libpq().execParams(m_conn, sql.c_str(), static_cast<int>(values.size()), types.data(),
                                             ptrs.data(), nullptr, nullptr, 0),
                          libpq().clear);
        });
        const char* n = libpq().cmdTuples(res.get());
        m_changes = n && *n ? std::strtoll(n, nullptr, 10) : 0;
        m_totalChanges += m_changes;
        return res;
    }

private:
    /// Runs `send` and checks its result. A connection the server or the
    /// network dropped is opened again; outside a transaction the statement
    /// is sent once more (each of the relay's single statements may run
    /// twice: an insert of a callback or code is keyed, an update sets a
    /// value), inside one the transaction is lost and the caller fails.
    template <typename Send>
    Result attempt(Send&& send) {
        const auto& pq = libpq();
        reconnectIfBroken();
        bool idle = pq.transactionStatus(m_conn) == PQTRANS_IDLE;
        Result res = send();
        if (pq.status(m_conn) == CONNECTION_BAD) {
            if (!idle) unreachable("the connection broke inside a transaction");
            reconnectIfBroken();
            res = send();
        }
        check(res);
        return res;
    }
    void reconnectIfBroken() {
        const auto& pq = libpq();
        if (pq.status(m_conn) == CONNECTION_OK) return;
        pq.reset(m_conn);
        if (pq.status(m_conn) != CONNECTION_OK) unreachable(trimmed(pq.errorMessage(m_conn)));
        if (m_down) log::notice(m_describe + " is reachable again");
        m_down = false;
    }
    /// Logged once per outage with the database's name; the client is told
    /// only that the relay's database cannot be reached.
    [[noreturn]] void unreachable(const std::string& why) {
        if (!m_down) log::warning(m_describe + " is unreachable (" + why + "); requests that need it get UNAVAILABLE");
        m_down = true;
        throw Error(ErrorCode::Unavailable, "the relay's database cannot be reached; try again shortly");
    }
    void check(const Result& res) {
        const auto& pq = libpq();
        if (!res) throw std::runtime_error(m_describe + ": " + trimmed(pq.errorMessage(m_conn)));
        auto st = pq.resultStatus(res.get());
        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return;
        // The primary message only: a DETAIL line can quote the row's values.
        std::string state = trimmed(pq.resultErrorField(res.get(), PG_DIAG_SQLSTATE));
        std::string msg = m_describe + ": " + trimmed(pq.resultErrorField(res.get(), PG_DIAG_MESSAGE_PRIMARY)) +
                          " (SQLSTATE " + state + ")";
        if (state == "53100") throw StorageFull(msg);
        throw std::runtime_error(msg);
    }

    PGconn* m_conn;
    std::string m_describe;
    std::int64_t m_changes = 0;
    std::int64_t m_totalChanges = 0;
    bool m_down = false;  ///< unreachable since the last warning
};

bool PgStatement::step() {
    if (!m_ran) {
        m_res = m_c.run(m_sql, m_values, m_types);
        m_ran = true;
    }
    return m_res && ++m_row < libpq().ntuples(m_res.get());
}

}  // namespace

std::unique_ptr<Connection> openPostgres(const std::string& url) {
    const auto& pq = libpq();
    char* err = nullptr;
    PQconninfoOption* parsed = pq.conninfoParse(url.c_str(), &err);
    if (!parsed) {
        std::string why = err ? trimmed(err) : "out of memory";
        if (err) pq.freemem(err);
        throw std::runtime_error("--database: not a PostgreSQL URL: " + why);
    }
    bool hasPassword = false;
    for (auto* o = parsed; o->keyword; ++o)
        if (std::strcmp(o->keyword, "password") == 0 && o->val && *o->val) hasPassword = true;
    pq.conninfoFree(parsed);
    if (hasPassword)
        throw std::runtime_error(
            "--database: the URL carries a password, and a command line is readable by every user of the machine; "
            "put it in ~/.pgpass (or the file PGPASSFILE names) and give the URL without it");
    // Defaults first: what the URL sets overrides them.
    const char* keys[] = {"connect_timeout",  "keepalives_idle",  "keepalives_interval",
                          "keepalives_count", "application_name", "client_encoding",
                          "options",          "dbname",           nullptr};
    const char* values[] = {
        "10",        "10",   "5", "4", "hpc-relay", "UTF8", "-c statement_timeout=30000 -c client_min_messages=warning",
        url.c_str(), nullptr};
    PGconn* conn = pq.connectdbParams(keys, values, 1);
    if (!conn) throw std::runtime_error("cannot connect to PostgreSQL: out of memory");
    if (pq.status(conn) != CONNECTION_OK) {
        std::string why = trimmed(pq.errorMessage(conn));
        pq.finish(conn);
        throw std::runtime_error("cannot connect to PostgreSQL: " + why);
    }
    return std::make_unique<PgConnection>(conn);
}

}  // namespace hpc::relay::sql
