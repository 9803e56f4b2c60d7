// hpc-relay: the self-hostable reference platform.
#include "api.hpp"
#include "hub.hpp"
#include "log.hpp"
#include "process.hpp"
#include "relay_db.hpp"
#include "server.hpp"
#include "settings.hpp"
#include "store.hpp"
#include "util.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

using namespace hpc;

namespace {

/// Runs `command` with the email and code in its environment (never on a
/// command line, where other users could read them).
relay::CodeSender commandSender(std::string command) {
    return [command = std::move(command)](const std::string& email, const Secret& code) {
        try {
            SpawnOptions o;
            o.argv = {"/bin/sh", "-c", command};
            o.envOverrides = {"HPC_OTP_EMAIL=" + email, "HPC_OTP_CODE=" + code.reveal()};
            o.out = Stdio::Inherit;
            o.err = Stdio::Inherit;
            auto child = spawn(o);
            log::info("code delivery command started for " + email + " (pid " + std::to_string(child.pid) + ")");
        } catch (const std::exception& e) {
            log::error(std::string("code delivery command failed to start: ") + e.what());
        }
    };
}

/// Appends "email code" lines to a 0600 file, for local use and tests.
relay::CodeSender fileSender(std::string path) {
    return [path = std::move(path)](const std::string& email, const Secret& code) {
        int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            log::error("cannot write the code file " + path);
            return;
        }
        std::string line = email + " " + code.reveal() + "\n";
        ssize_t w = ::write(fd, line.data(), line.size());
        ::close(fd);
        if (w != static_cast<ssize_t>(line.size())) log::error("short write to the code file " + path);
    };
}

/// The first line of a file holding a token (trailing blanks dropped);
/// nullopt, with the reason printed, when it is shorter than 16 characters.
std::optional<Secret> readTokenFile(const std::string& path, const char* flag) {
    std::ifstream in(path);
    std::string token;
    std::getline(in, token);
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
    if (token.size() < 16) {
        std::cerr << "hpc-relay: " << flag << " " << path
                  << ": its first line must be a token of at least 16 characters\n";
        return std::nullopt;
    }
    return Secret(std::move(token));
}

}  // namespace

int main(int argc, char** argv) try {
    hpc::adoptProgramName(argc > 0 ? argv[0] : nullptr);
    CLI::App app{
        "hpc-relay: a self-hostable platform for hpc-daemon. Serves the sign-in, API-key and daemon-registry\n"
        "routes over HTTPS, routes WebSocket messages between agents and daemons of the same user, and serves\n"
        "the Model Context Protocol at /mcp for remote AI agents (with its OAuth sign-in).\n"
        "See docs/protocol.md for every route and message, docs/mcp.md for /mcp."};
    app.set_version_flag("--version", "hpc-relay " HPC_VERSION);
    relay::ServerConfig config;
    std::string dataDir;
    std::string otpCommand;
    std::string otpFile;
    std::string logFile;
    bool verbose = false;
    app.add_option("--listen", config.listen, "IP address to listen on")->capture_default_str();
    app.add_option("--port", config.port, "TCP port (0: any free port; see --port-file)")->capture_default_str();
    app.add_option("--cert", config.certFile, "TLS certificate chain (PEM)")->check(CLI::ExistingFile);
    app.add_option("--key", config.keyFile, "TLS private key (PEM)")->check(CLI::ExistingFile);
    app.add_flag("--insecure-http", config.plainHttp,
                 "serve plain HTTP/WS instead of TLS; refused unless --listen is a loopback address");
    app.add_option("--data-dir", dataDir, "directory for relay.db (created 0700)")->required();
    std::string database;
    app.add_option("--database", database,
                   "keep users, credentials, registrations and callbacks in PostgreSQL instead of relay.db: "
                   "postgresql://[USER@]HOST[:PORT]/DBNAME[?PARAM=VALUE...], the password in ~/.pgpass (never in "
                   "the URL); several relay instances may share one database (loads libpq.so.5)");
    app.add_option("--otp-command", otpCommand,
                   "shell command that delivers a sign-in code; it gets HPC_OTP_EMAIL and HPC_OTP_CODE in its "
                   "environment");
    app.add_option("--otp-file", otpFile, "append \"EMAIL CODE\" lines to this file (0600) instead; for local use");
    app.add_option("--port-file", config.portFile, "write the bound port to this file once listening");
    app.add_option("--ready-fd", config.readyFd,
                   "write the bound port and a newline to this inherited descriptor once listening, then close it "
                   "(a readiness handshake for scripts: a pipe's reader gets the port, or end-of-file if the relay "
                   "failed)")
        ->check(CLI::NonNegativeNumber);
    app.add_option("--ws-idle-seconds", config.wsIdleSeconds, "close a WebSocket silent for this long")
        ->check(CLI::Range(5, 3600))
        ->capture_default_str();
    bool noMetrics = false;
    std::string metricsTokenFile;
    app.add_flag("--no-metrics", noMetrics, "do not serve GET /metrics (docs/metrics.md)");
    app.add_option("--metrics-token-file", metricsTokenFile,
                   "let any client scrape GET /metrics with \"Authorization: Bearer <token>\", the token being this "
                   "file's first line; without it only clients on a loopback address may scrape")
        ->check(CLI::ExistingFile);
    std::size_t signinLimit = relay::Api::kDefaultSigninLimitPerClient;
    app.add_option("--signin-limit", signinLimit,
                   "sign-in codes one client address may request per 10 minutes, whatever the email (0: no limit; "
                   "raise it behind a proxy that hides client addresses)")
        ->capture_default_str();
    std::string callbackRetention = "7d", expiredRetention = "1d", pruneInterval = "10m";
    app.add_option("--callback-retention", callbackRetention,
                   "acknowledged job callbacks are deleted this long after the agent acknowledged them "
                   "(90d, 12h, 30m, 45s)")
        ->capture_default_str();
    app.add_option("--expired-retention", expiredRetention,
                   "sign-in codes and access tokens are deleted this long after they expired")
        ->capture_default_str();
    app.add_option("--prune-interval", pruneInterval, "at most one prune pass this often (on the next request)")
        ->capture_default_str();
    std::string clusterSecretFile;
    app.add_option("--cluster-url", config.cluster.url,
                   "run as one of several instances on the --database: the URL the other instances reach this one "
                   "at (wss://HOST[:PORT]; without a port, the one this instance listens on). An agent on any "
                   "instance reaches a daemon connected to any other (docs/relay.md)");
    app.add_option("--cluster-secret-file", clusterSecretFile,
                   "with --cluster-url: a file whose first line, the same on every instance, authenticates the "
                   "instances' links to each other (at least 16 characters; keep it 0600)")
        ->check(CLI::ExistingFile);
    app.add_option("--cluster-ca", config.cluster.caFile,
                   "with --cluster-url: CA certificates (PEM) that verify the other instances' certificates "
                   "(default: the system's)")
        ->check(CLI::ExistingFile);
    bool noMcp = false;
    app.add_flag("--no-mcp", noMcp,
                 "do not serve /mcp, the Model Context Protocol endpoint through which a remote AI agent uses its "
                 "daemons with its bearer token (docs/mcp.md)");
    app.add_option("--mcp-origin", config.mcp.allowedOrigins,
                   "a web origin (https://host[:port]) whose pages may call /mcp; repeatable. Requests with any "
                   "other Origin header are refused; agents, which send none, are served")
        ->check([](const std::string& origin) {
            auto scheme = origin.find("://");
            return scheme == std::string::npos || origin.back() == '/'
                       ? std::string("an origin is SCHEME://HOST[:PORT], without a path")
                       : std::string();
        });
    app.add_option("--log-file", logFile, "log to this file instead of stderr");
    app.add_flag("-v,--verbose", verbose, "log debug lines too");
    CLI11_PARSE(app, argc, argv);

    log::init(logFile, verbose ? log::Level::Debug : log::Level::Info);
    if (otpCommand.empty() == otpFile.empty()) {
        std::cerr << "hpc-relay: give exactly one of --otp-command or --otp-file (how sign-in codes reach users)\n";
        return 2;
    }
    // The delivery command's exit status is not needed: let the kernel reap it.
    struct sigaction sa {};
    sa.sa_handler = SIG_DFL;
    sa.sa_flags = SA_NOCLDWAIT;
    ::sigaction(SIGCHLD, &sa, nullptr);

    // Every connection is a descriptor.
    if (auto [before, after] = raiseOpenFileLimit(); after > before)
        log::debug("open-file limit raised from " + std::to_string(before) + " to " + std::to_string(after));
    ensurePrivateDir(dataDir);
    relay::RelayRetention retention;
    for (auto [flag, text, out] : {std::tuple{"--callback-retention", &callbackRetention, &retention.callbackSeconds},
                                   std::tuple{"--expired-retention", &expiredRetention, &retention.expiredSeconds},
                                   std::tuple{"--prune-interval", &pruneInterval, &retention.intervalSeconds}}) {
        auto d = parseDuration(*text);
        if (!d) {
            std::cerr << "hpc-relay: " << flag << " \"" << *text << "\" is not a duration (90d, 12h, 30m, 45s)\n";
            return 2;
        }
        *out = static_cast<double>(d->count());
    }
    config.metrics.enabled = !noMetrics;
    config.mcp.enabled = !noMcp;
    if (!metricsTokenFile.empty()) {
        auto token = readTokenFile(metricsTokenFile, "--metrics-token-file");
        if (!token) return 2;
        config.metrics.token = std::move(*token);
    }
    if (!database.empty() && !relay::sql::isPostgresUrl(database)) {
        std::cerr << "hpc-relay: --database \"" << database
                  << "\" is not a postgresql:// URL (without --database, the relay keeps relay.db in --data-dir)\n";
        return 2;
    }
    if (!config.cluster.url.empty()) {
        std::string error;
        auto url = parseUrl(config.cluster.url, &error);
        if (database.empty() || clusterSecretFile.empty()) {
            std::cerr << "hpc-relay: --cluster-url needs --database postgresql://... (the instances share it) and "
                         "--cluster-secret-file\n";
            return 2;
        }
        if (!url || url->tls() == config.plainHttp) {
            std::cerr << "hpc-relay: --cluster-url \"" << config.cluster.url << "\" is not "
                      << (config.plainHttp ? "a ws:// URL (this instance serves plain HTTP)" : "a wss:// URL")
                      << (error.empty() ? "" : ": " + error) << "\n";
            return 2;
        }
        auto secret = readTokenFile(clusterSecretFile, "--cluster-secret-file");
        if (!secret) return 2;
        config.cluster.secret = std::move(*secret);
    } else if (!clusterSecretFile.empty() || !config.cluster.caFile.empty()) {
        std::cerr << "hpc-relay: --cluster-secret-file and --cluster-ca go with --cluster-url\n";
        return 2;
    }
    relay::RelayDb db(database.empty() ? relay::sql::openSqlite((std::filesystem::path(dataDir) / "relay.db").string())
                                       : relay::sql::openPostgres(database));
    log::info("storage: " + db.describe());
    db.setRetention(retention);
    db.maybePrune(nowEpochSeconds());
    relay::Hub hub(db);
    relay::Api api(db, hub, otpCommand.empty() ? fileSender(otpFile) : commandSender(otpCommand));
    api.setSigninLimitPerClient(signinLimit);
    return relay::runServer(config, api, hub);
} catch (const std::exception& e) {
    std::cerr << "hpc-relay: " << e.what() << "\n";
    return 1;
}
