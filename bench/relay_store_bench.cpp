// Sign-in and registration throughput of hpc-relay's request handling on its
// two storage backends, side by side in one run: SQLite (relay.db, the
// default) and PostgreSQL (--database), on one relay instance and on two
// instances sharing the database (two threads, each its own connection).
// Requests go through the relay's Api (routing, validation, authentication,
// storage) without TLS, so the figures are the storage's share.
//
//   relay_store_bench POSTGRES_URL [SETUPS] [ROUNDS]
//
// POSTGRES_URL: a server where the bench may create databases
// (scripts/postgres-server.sh start DIR prints one). One setup is what
// `hpc-daemonctl setup` costs the relay: request a code, verify it (an
// access token), create an API key, register a daemon. SETUPS (default 300)
// per round; ROUNDS (default 3) with the backends taking turns; medians.
#include "api.hpp"
#include "hub.hpp"
#include "log.hpp"
#include "relay_db.hpp"
#include "sql.hpp"

#include <boost/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace hpc;
using namespace hpc::relay;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

/// One relay instance's request handling on its own connection.
struct Instance {
    std::unique_ptr<RelayDb> db;
    std::unique_ptr<Hub> hub;
    std::unique_ptr<Api> api;
    std::string lastCode;

    explicit Instance(std::unique_ptr<sql::Connection> c) : db(std::make_unique<RelayDb>(std::move(c))) {
        hub = std::make_unique<Hub>(*db);
        api = std::make_unique<Api>(*db, *hub,
                                    [this](const std::string&, const Secret& code) { lastCode = code.reveal(); });
        api->setSigninLimitPerClient(0);
    }

    json::object call(const std::string& method, const std::string& path, const json::object& body,
                      const std::string& bearer = {}) {
        auto r = api->handle({method, path, bearer.empty() ? "" : "Bearer " + bearer, json::serialize(body), "bench"});
        if (r.status >= 300)
            throw std::runtime_error(method + " " + path + ": HTTP " + std::to_string(r.status) + " " + r.body);
        return json::parse(r.body).as_object();
    }

    /// One setup; the four requests' durations in `ms`.
    void setup(const std::string& tag, int i, std::map<std::string, std::vector<double>>& ms) {
        auto timed = [&](const char* what, auto&& f) {
            auto t0 = Clock::now();
            auto out = f();
            ms[what].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
            return out;
        };
        std::string email = tag + "-" + std::to_string(i) + "@example.org";
        auto signin = timed("request code", [&] { return call("POST", "/otp/signin", {{"email", email}}); });
        std::string token(signin.at("payload").at("token").as_string());
        auto verified = timed("verify code", [&] {
            return call("POST", "/auth/otp/signin/verify", {{"token", token}, {"otp", lastCode}});
        });
        std::string access(verified.at("access_token").as_string());
        auto key = timed("create API key", [&] { return call("POST", "/auth/api-keys", {}, access); });
        std::string apiKey(key.at("api_key").as_string());
        timed("register daemon", [&] {
            return call("PUT", "/hpc/daemons/d" + std::to_string(i), {{"hostname", "login1"}}, apiKey);
        });
    }
};

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

struct Backend {
    std::string name;
    std::function<std::string()> newDatabase;  ///< a new, empty database: its path or URL
    std::function<std::unique_ptr<sql::Connection>(const std::string&)> connect;
    std::vector<double> single, dual;               ///< setups per second, per round
    std::map<std::string, std::vector<double>> ms;  ///< request durations, all rounds
};

}  // namespace

int main(int argc, char** argv) try {
    if (argc < 2) {
        std::cerr << "usage: relay_store_bench POSTGRES_URL [SETUPS] [ROUNDS]\n";
        return 2;
    }
    log::init({}, log::Level::Warning);  // not a line per sign-in
    std::string server = argv[1];
    int setups = argc > 2 ? std::stoi(argv[2]) : 300;
    int rounds = argc > 3 ? std::stoi(argv[3]) : 3;
    char tmpl[] = "/tmp/hpc-store-bench-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    std::string dir = tmpl;
    int databases = 0;

    std::vector<Backend> backends;
    backends.push_back({"sqlite",
                        [&] { return dir + "/relay" + std::to_string(++databases) + ".db"; },
                        [](const std::string& path) { return sql::openSqlite(path); },
                        {},
                        {},
                        {}});
    backends.push_back({"postgresql",
                        [&] {
                            std::string name =
                                "hpc_bench" + std::to_string(::getpid()) + "_" + std::to_string(++databases);
                            sql::openPostgres(server)->exec("CREATE DATABASE " + name);
                            return server.substr(0, server.rfind('/') + 1) + name;
                        },
                        [](const std::string& url) { return sql::openPostgres(url); },
                        {},
                        {},
                        {}});

    std::printf("relay_store_bench: %d setups per round (code, verify, API key, registration), %d rounds\n", setups,
                rounds);
    std::printf("load average at start: ");
    std::fflush(stdout);
    std::system("cut -d' ' -f1-3 /proc/loadavg");
    for (int round = 0; round < rounds; ++round) {
        for (auto& b : backends) {
            // One instance.
            {
                Instance one(b.connect(b.newDatabase()));
                auto t0 = Clock::now();
                for (int i = 0; i < setups; ++i) one.setup("r" + std::to_string(round), i, b.ms);
                b.single.push_back(setups / std::chrono::duration<double>(Clock::now() - t0).count());
            }
            // Two instances on one database, a thread each.
            {
                auto where = b.newDatabase();
                Instance a(b.connect(where));
                Instance c(b.connect(where));
                std::map<std::string, std::vector<double>> ignoredA, ignoredC;
                auto t0 = Clock::now();
                std::thread ta([&] {
                    for (int i = 0; i < setups / 2; ++i) a.setup("a" + std::to_string(round), i, ignoredA);
                });
                std::thread tc([&] {
                    for (int i = 0; i < setups / 2; ++i) c.setup("c" + std::to_string(round), i, ignoredC);
                });
                ta.join();
                tc.join();
                int done = setups / 2 * 2;
                b.dual.push_back(done / std::chrono::duration<double>(Clock::now() - t0).count());
            }
            std::printf("  round %d %-10s: %7.1f setups/s one instance, %7.1f two instances\n", round + 1,
                        b.name.c_str(), b.single.back(), b.dual.back());
        }
    }

    std::printf("\n%-26s %16s %16s %8s\n", "median of rounds", "sqlite", "postgresql", "pg/sqlite");
    auto row = [&](const char* what, double s, double p, const char* unit) {
        std::printf("%-26s %12.2f %-3s %12.2f %-3s %8.2f\n", what, s, unit, p, unit, s > 0 ? p / s : 0);
    };
    row("setups/s, one instance", median(backends[0].single), median(backends[1].single), "/s");
    row("setups/s, two instances", median(backends[0].dual), median(backends[1].dual), "/s");
    for (const char* what : {"request code", "verify code", "create API key", "register daemon"}) {
        row((std::string(what) + " p50").c_str(), median(backends[0].ms[what]), median(backends[1].ms[what]), "ms");
        row((std::string(what) + " p99").c_str(), percentile(backends[0].ms[what], 0.99),
            percentile(backends[1].ms[what], 0.99), "ms");
    }
    std::filesystem::remove_all(dir);
    return 0;
} catch (const std::exception& e) {
    std::cerr << "relay_store_bench: " << e.what() << "\n";
    return 1;
}
