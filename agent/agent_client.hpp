#pragma once
/// hpc-agent as a library: a connection to the platform's agent endpoint and
/// typed requests to daemons through it. Used by the hpc-agent CLI, the
/// end-to-end tests and the benchmarks.

#include "secret.hpp"
#include "util.hpp"
#include "ws_client.hpp"

#include <boost/json.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <set>
#include <string_view>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hpc::agent {

struct AgentOptions {
    Url url;
    Secret token;  ///< access token or API key
    std::string caFile;
    std::chrono::milliseconds connectTimeout{std::chrono::seconds(15)};
};

/// What an exec request asks for (protocol `exec` payload).
struct ExecSpec {
    std::vector<std::string> argv;  ///< or
    std::string command;            ///< a shell command line
    std::optional<std::string> cwd;
    std::optional<std::string> stdinData;
    std::optional<double> timeoutSeconds;
    std::optional<std::int64_t> maxOutputBytes;
    std::vector<std::pair<std::string, std::string>> env;
    boost::json::object toPayload() const;
};

/// An exec result with its output decoded.
struct ExecOutcome {
    std::optional<int> exitCode;
    std::optional<int> signal;
    std::string out;
    std::string err;
    bool outTruncated = false;
    bool errTruncated = false;
    bool timedOut = false;
    double durationSeconds = 0;
    int pid = 0;
    boost::json::object raw;
    /// The conventional status: the exit code, or 128 + signal.
    int shellStatus() const { return exitCode ? *exitCode : 128 + signal.value_or(0); }
    static ExecOutcome fromResult(const boost::json::object& result);
};

/// What pty.open asks for.
struct PtySpec {
    unsigned cols = 80, rows = 24;
    std::optional<std::string> cwd;
    std::optional<std::string> shell;
    std::vector<std::pair<std::string, std::string>> env;
    std::uint64_t credit = 0;  ///< initial output credit; 0: the daemon's default
};

struct PtyHandle {
    std::uint32_t channel = 0;
    int pid = 0;
};

/// Something that happened on a PTY channel.
struct PtyEvent {
    enum class Kind { Output, Exit } kind = Kind::Output;
    std::uint32_t channel = 0;
    std::string data;              ///< Output
    std::optional<int> exitCode;   ///< Exit
    std::optional<int> signal;     ///< Exit
    std::string error;             ///< Exit: set when the session was lost, not ended
};

class AgentClient {
public:
    /// Connects to /hpc/agent/ws. Throws hpc::Error (Unauthorized, Unavailable).
    static std::unique_ptr<AgentClient> connect(const AgentOptions& options);

    /// Sends a request to `daemonId` and waits for its response. Returns the
    /// result object; throws hpc::Error with the response's code and message,
    /// or Timeout when no response came in time.
    boost::json::object request(const std::string& daemonId, const std::string& type, boost::json::object payload,
                                std::chrono::milliseconds timeout = std::chrono::minutes(10));

    ExecOutcome exec(const std::string& daemonId, const ExecSpec& spec,
                     std::chrono::milliseconds timeout = std::chrono::minutes(10));

    // ---- PTY sessions ----
    PtyHandle openPty(const std::string& daemonId, const PtySpec& spec,
                      std::chrono::milliseconds timeout = std::chrono::seconds(30));
    /// Sends keystrokes or other input (a binary frame).
    void ptyInput(std::uint32_t channel, std::string_view data);
    void ptyResize(const std::string& daemonId, std::uint32_t channel, unsigned cols, unsigned rows);
    /// Signals the session's process group (SIGHUP by default).
    void ptyClose(const std::string& daemonId, std::uint32_t channel, int signal = 1);
    /// Grants `bytes` more output credit. Does not wait for the answer.
    void ptyAck(const std::string& daemonId, std::uint32_t channel, std::uint64_t bytes);
    /// The next output or exit on any channel, or nullopt after `timeout`.
    std::optional<PtyEvent> nextPtyEvent(std::chrono::milliseconds timeout);

    /// The underlying connection, for tests that send raw frames.
    net::WsClient& ws() { return *m_ws; }
    /// A fresh request id.
    std::string nextId() { return "a" + std::to_string(++m_seq); }

private:
    explicit AgentClient(std::unique_ptr<net::WsClient> ws) : m_ws(std::move(ws)) {}
    /// The next frame: one put aside while waiting for a response, else a read.
    std::optional<net::WsFrame> nextFrame(std::chrono::milliseconds timeout);

    std::unique_ptr<net::WsClient> m_ws;
    std::uint64_t m_seq = 0;
    std::deque<net::WsFrame> m_backlog;
    std::set<std::string> m_unanswered;  ///< ids of fire-and-forget requests
};

}  // namespace hpc::agent
