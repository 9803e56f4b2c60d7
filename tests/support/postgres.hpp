#pragma once
// A PostgreSQL database of its own for each test, on the private server that
// scripts/postgres-server.sh starts in HPC_PG_DIR (ctest's fixture
// `postgres`). A target that includes this defines HPC_PG_DIR and links
// hpc_relay_core.

#include "sql.hpp"

#include <unistd.h>

#include <atomic>
#include <fstream>
#include <optional>
#include <string>

#ifndef HPC_PG_DIR
#error "define HPC_PG_DIR (the fixture's directory) for targets that use tests/support/postgres.hpp"
#endif

namespace hpc::test {

/// The URL of the private server's `postgres` database, or nullopt with the
/// reason in `whyNot`.
inline std::optional<std::string> postgresServerUrl(std::string& whyNot) {
    std::string dir = HPC_PG_DIR;
    std::string url;
    if (std::ifstream in(dir + "/url"); in && std::getline(in, url) && !url.empty()) return url;
    std::string reason;
    if (std::ifstream in(dir + "/skipped"); in) std::getline(in, reason);
    whyNot = reason.empty() ? "no PostgreSQL server for the tests: run them through ctest (fixture postgres) or "
                              "scripts/postgres-server.sh start " +
                                  dir
                            : "no PostgreSQL server for the tests: " + reason;
    return std::nullopt;
}

/// A new, empty database on the private server: its URL, or nullopt with
/// the reason in `whyNot`.
inline std::optional<std::string> freshPostgresDatabase(std::string& whyNot) {
    auto server = postgresServerUrl(whyNot);
    if (!server) return std::nullopt;
    static std::atomic<int> counter{0};
    std::string name = "hpc_t" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
    relay::sql::openPostgres(*server)->exec("CREATE DATABASE " + name);
    return server->substr(0, server->rfind('/') + 1) + name;
}

}  // namespace hpc::test
