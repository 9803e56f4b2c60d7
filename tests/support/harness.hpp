#pragma once
/// Runs the real system on 127.0.0.1 for end-to-end tests and benchmarks: a
/// certificate made now, hpc-relay, profiles made by `hpc-daemonctl setup`,
/// hpc-daemond, and agent connections. Every process started here is stopped
/// by pid when the harness is destroyed, and gets SIGTERM if the test process
/// dies first (PR_SET_PDEATHSIG). Readiness is a handshake, never a file
/// appearing: dbus-daemon prints its address on a pipe, hpc-relay writes its
/// port on one (--ready-fd), hpc-daemond sends READY=1 on a notify socket the
/// harness owns. Failures throw, which stops the test.

#include "agent_client.hpp"
#include "process.hpp"
#include "secret.hpp"
#include "store.hpp"

#include <boost/json.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hpc::test {

/// A file's whole content ("" when it cannot be read), any bytes.
std::string readFile(const std::filesystem::path& path);
/// Writes `data` as the whole of `path`, any bytes.
void writeBytes(const std::filesystem::path& path, const std::string& data);
/// `size` bytes: every byte value first, then random ones from `seed`.
std::string binaryData(std::size_t size, unsigned seed);
/// The SHA-256 of `data`, in hex.
std::string sha256(std::string_view data);
/// The numbers N of every "<prefix>N" in `text`, in order (a stream of
/// numbered lines: each must come once, in order, whatever broke on the way).
std::vector<int> numbersAfter(const std::string& text, const std::string& prefix);
/// Every path below `dir` with its content (files) or target (symlinks), one
/// a line: compare two snapshots to see whether anything changed.
std::string snapshotTree(const std::filesystem::path& dir);

/// The descriptors in an `ls -l /proc/PID/fd` listing: number -> target
/// ("/dev/null", "socket:[123]", "pipe:[456]").
std::map<int, std::string> parseFdListing(const std::string& listing);

/// Writes a script (0700), creating its directory: stand-ins and wrappers
/// for programs the system under test runs.
void writeExecutable(const std::filesystem::path& file, const std::string& content);

/// Polls `pred` every `interval` until it holds or `timeout` passes (a
/// longer interval for a predicate that asks a process or a scheduler).
bool waitUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout,
               std::chrono::milliseconds interval = std::chrono::milliseconds(10));

/// A child started with a readiness pipe, and the first line it wrote there.
struct ReadyProcess {
    ChildGuard child;
    std::string line;
};

/// Starts `options` with the write end of a pipe as the child's descriptor
/// `childFd` and waits for the first line the child writes there (dbus-daemon
/// --print-address, hpc-relay --ready-fd). Throws std::runtime_error, with
/// `logFile`'s content when given, if the child closes the pipe or exits
/// first, or after `timeout`.
ReadyProcess spawnReady(SpawnOptions options, int childFd, std::chrono::milliseconds timeout,
                        const std::filesystem::path& logFile = {});

/// Output of a finished command.
struct CommandResult {
    int status = -1;  ///< exit code, or 128 + signal
    std::string out;
    std::string err;
};

/// The value of one series, `name{labels}` exactly as exposed, in a
/// Prometheus text exposition; nullopt when it is not there.
std::optional<double> metricValue(const std::string& exposition, const std::string& series);
/// Runs `promtool check metrics` (Prometheus's own parser and linter) on an
/// exposition. Throws when promtool is missing: scripts/install-deps.sh
/// installs it ($HPC_PROMTOOL names another).
CommandResult promtoolCheck(const std::string& exposition);

/// Runs a program to completion with `input` on stdin (bounded by `timeout`).
CommandResult runCommand(const std::vector<std::string>& argv, const std::string& input = {},
                         const std::vector<std::string>& env = {},
                         std::chrono::milliseconds timeout = std::chrono::seconds(60));

class Harness {
public:
    Harness();
    ~Harness();
    Harness(const Harness&) = delete;
    Harness& operator=(const Harness&) = delete;

    const std::filesystem::path& dir() const { return m_dir; }
    std::string url() const { return "https://127.0.0.1:" + std::to_string(m_port); }
    std::string caFile() const { return (m_dir / "tls" / "ca.pem").string(); }
    int port() const { return m_port; }

    /// Starts hpc-relay (on `port`, or a free port the first time).
    void startRelay(int port = 0);
    /// SIGTERM and reap.
    void stopRelay();
    /// SIGKILL, no clean-up: a crash.
    void killRelay();
    std::string relayLog() const;
    /// The relay's GET /health payload (accepting, agents_connected,
    /// daemons_connected: docs/protocol.md). Throws hpc::Error when it does
    /// not answer.
    boost::json::object relayHealth() const;
    pid_t relayPid() const { return m_relay.pid(); }
    /// GET /metrics, with `bearer` as the token when not empty: the HTTP
    /// status and the body.
    std::pair<int, std::string> relayMetrics(const std::string& bearer = {}) const;
    /// More hpc-relay arguments, from the next startRelay on.
    void setRelayArgs(std::vector<std::string> args) { m_relayArgs = std::move(args); }

    /// The code the relay sent to `email` after `linesBefore` lines of the code file.
    std::string waitForCode(const std::string& email, std::size_t linesBefore);
    std::size_t codeLines() const;

    /// Runs `hpc-daemonctl setup --no-interview` for `daemonId` as `email`,
    /// typing the code, with HPC_DAEMON_HOME = home(daemonId).
    CommandResult setupDaemon(const std::string& daemonId, const std::string& email,
                              const std::vector<std::string>& allowedDirs, const std::vector<std::string>& extra = {});
    /// Runs a program that asks for `email`'s code: once the relay has sent
    /// it, types `beforeCode()` (a hook, may be empty), the code, a newline
    /// and `afterCode`, then closes stdin.
    CommandResult runTypingCode(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                                const std::string& email, const std::string& afterCode = {},
                                const std::function<void()>& beforeCode = {});
    /// Changes a stored profile (before its daemon starts, or then Reload).
    void editProfile(const std::string& daemonId, const std::function<void(Profile&)>& edit);
    std::filesystem::path home(const std::string& daemonId) const { return m_dir / ("home-" + daemonId); }

    /// Starts hpc-daemond for a profile made by setupDaemon, with `env`
    /// ("NAME=value") over the harness's environment, and returns once it
    /// sent READY=1 (store open, bus name owned; not yet connected) on the
    /// harness's notify socket. Throws if it exits or is not ready in 60 s.
    void startDaemon(const std::string& daemonId, const std::vector<std::string>& extra = {},
                     const std::vector<std::string>& env = {});
    /// SIGKILL, no clean-up: a crash.
    void killDaemon(const std::string& daemonId);
    /// Daemons started from now on run as this (unprivileged) user, through
    /// setpriv; their profile directory is handed to that user. Needs root.
    void setDaemonUser(const std::string& user) { m_daemonUser = user; }
    void stopDaemon(const std::string& daemonId);
    pid_t daemonPid(const std::string& daemonId) const;
    std::string daemonLog(const std::string& daemonId) const;
    /// The daemon's D-Bus GetStatus as JSON (keys as in
    /// dbus/org.tiptree.HpcDaemon.xml), on the harness's session bus or the
    /// daemon's private bus. Throws hpc::Error when it does not answer.
    boost::json::object daemonStatus(const std::string& daemonId) const;
    /// Waits until the daemon's GetStatus satisfies `pred`. Returns false after
    /// `timeout`; while the daemon does not answer, `pred` is not called.
    bool waitStatus(const std::string& daemonId, const std::function<bool(const boost::json::object&)>& pred,
                    std::chrono::milliseconds timeout = std::chrono::seconds(20)) const;
    /// Waits until the daemon's link_state is `state` (connecting, connected,
    /// backoff, unauthorized, stopping).
    bool waitLinkState(const std::string& daemonId, const std::string& state,
                       std::chrono::milliseconds timeout = std::chrono::seconds(20)) const;

    /// Signs in as `email` over HTTP and returns an access token of the
    /// agent identity `agent` ("": the relay's default).
    Secret login(const std::string& email, const std::string& agent = {});
    std::unique_ptr<agent::AgentClient> agent(const Secret& token);
    /// Waits until the relay lists `daemonId` as connected for `token`'s user.
    bool waitConnected(const Secret& token, const std::string& daemonId,
                       std::chrono::milliseconds timeout = std::chrono::seconds(20));

    static std::string binary(const std::string& name);

    /// Starts a private session bus (dbus-daemon) whose activation directory
    /// is xdgDataHome()/dbus-1/services; from then on every process this
    /// harness starts gets DBUS_SESSION_BUS_ADDRESS.
    void startSessionBus();
    std::string sessionBusAddress() const { return m_busAddress; }
    std::filesystem::path xdgDataHome() const { return m_dir / "xdg"; }
    /// The environment every process started here gets (plus its own).
    std::vector<std::string> baseEnv() const;

private:
    std::filesystem::path m_dir;
    int m_port = 0;
    ChildGuard m_relay;
    std::vector<std::string> m_relayArgs;
    ChildGuard m_bus;
    std::string m_busAddress;
    std::map<std::string, ChildGuard> m_daemons;
    std::string m_daemonUser;
};

/// Makes `a` and `b` two instances of one relay (hpc-relay --cluster-url) on
/// the PostgreSQL `database`, from their next startRelay: one certificate
/// (as behind any balancer), one cluster secret, and `extra` arguments.
void configureRelayCluster(Harness& a, Harness& b, const std::string& database,
                           const std::vector<std::string>& extra = {});
/// The cluster secret configureRelayCluster gave them.
inline constexpr const char* kTestClusterSecret = "a-cluster-secret-of-the-tests";

}  // namespace hpc::test
