#pragma once
/// The Model Context Protocol (MCP, JSON-RPC 2.0) without a transport: one
/// client session's messages in, its responses and notifications out. The
/// tools (mcp_tools.hpp) run against a Backend: hpc-agent's is the platform
/// connection (`hpc-agent mcp`). Transports (stdio, streamable HTTP) only
/// move text; docs/mcp.md is the reference.
///
/// Spec revisions spoken: 2025-11-25, 2025-06-18, 2025-03-26.

#include "wire.hpp"

#include <boost/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <string_view>

namespace hpc::mcp {

/// What a tool call may do while it runs: report progress (sent as
/// notifications/progress when the client asked for it) and see whether the
/// client cancelled it (notifications/cancelled).
struct CallContext {
    std::function<void(double progress, std::optional<double> total, const std::string& message)> progress;
    std::shared_ptr<std::atomic<bool>> cancelled;
    bool isCancelled() const { return cancelled && cancelled->load(); }
};

/// How a shell_send or shell_read waits for output.
struct ShellWait {
    std::optional<std::regex> pattern;  ///< return once the output so far matches
    double settleSeconds = 0.3;         ///< else once output stopped arriving this long
    double timeoutSeconds = 30;         ///< and at the latest then
};

/// What a shell printed since it was last read.
struct ShellOutput {
    std::string data;  ///< raw bytes (terminal escapes included), whole UTF-8 sequences
    bool matched = false;
    bool timedOut = false;
    bool ended = false;  ///< the shell has exited (or its connection broke: error)
    std::optional<int> exitCode;
    std::optional<int> signal;
    std::string error;
};

/// What the tools reach: the user's daemons through the platform. Every
/// call may run on its own thread, several at once. Errors are hpc::Error
/// with their ErrorCode; the tools turn them into isError results.
class Backend {
public:
    virtual ~Backend() = default;
    /// The user's daemons as the platform describes them (GET /hpc/daemons).
    virtual boost::json::array listDaemons() = 0;
    /// One request to a daemon (docs/protocol.md §4); returns its result.
    virtual boost::json::object request(const std::string& daemonId, const std::string& type,
                                        boost::json::object payload, const CallContext& ctx) = 0;
    /// Runs a command to its end with its output streamed (exec with
    /// "stream": true), so that a cancelled call stops it: SIGTERM to its
    /// process group, then SIGKILL. Returns the buffered exec's result
    /// (docs/protocol.md §4.3), each stream kept up to `maxOutputBytes` and
    /// the rest read and dropped (stdout_truncated, stderr_truncated).
    virtual boost::json::object runCommand(const std::string& daemonId, const ExecSpec& spec,
                                           std::size_t maxOutputBytes, const CallContext& ctx) = 0;
    /// Waits for a job's completion callback, up to `timeoutSeconds`; nullopt
    /// when it has not come by then. Returns the callback's payload.
    virtual std::optional<boost::json::object> waitJob(const std::string& daemonId, const std::string& jobId,
                                                       double timeoutSeconds, const CallContext& ctx) = 0;
    /// Writes `content` to `path` on the daemon (file.put: a temporary name,
    /// renamed once complete and checked); returns {path, size, sha256}.
    virtual boost::json::object writeFile(const std::string& daemonId, const std::string& path,
                                          std::string_view content, std::optional<std::uint32_t> mode,
                                          const CallContext& ctx) = 0;

    // ---- persistent shells (a PTY kept between calls) ----
    /// Opens a shell; returns its session id and the daemon's answer (pid, cwd).
    virtual std::pair<std::string, boost::json::object> shellOpen(const std::string& daemonId, unsigned cols,
                                                                  unsigned rows,
                                                                  const std::optional<std::string>& cwd) = 0;
    /// Types `input` (may be empty), then waits as `wait` says and returns
    /// what the shell printed since the last read. Throws hpc::Error(NotFound)
    /// for an unknown session.
    virtual ShellOutput shellExchange(const std::string& session, const std::string& input, const ShellWait& wait,
                                      const CallContext& ctx) = 0;
    virtual void shellResize(const std::string& session, unsigned cols, unsigned rows) = 0;
    /// Hangs the shell up (SIGHUP to its process group) and forgets it.
    virtual void shellClose(const std::string& session) = 0;
};

/// JSON-RPC error codes.
enum RpcError : int {
    kParseError = -32700,
    kInvalidRequest = -32600,
    kMethodNotFound = -32601,
    kInvalidParams = -32602,
    kInternalError = -32603,
    kResourceNotFound = -32002,
};

struct SessionOptions {
    std::string serverName = "hpc-agent";
    std::string serverVersion;
    std::size_t maxMessageBytes = 4 * 1024 * 1024;
    std::size_t maxConcurrentCalls = 64;
};

/// One client's session. receive() takes each message as it comes (from one
/// thread); tools/call runs on a thread of its own, so calls overlap and a
/// long `wait_job` blocks nothing. Every answer leaves through `send`, which
/// is called under a lock, one message at a time.
class Session {
public:
    using Send = std::function<void(const boost::json::value&)>;
    Session(Backend& backend, Send send, SessionOptions options);
    /// Waits for the calls still running (cancelled first).
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    /// One incoming message (a request, a notification, or a response).
    void receive(std::string_view text);
    /// Whether the client has finished the initialize handshake.
    bool initialized() const { return m_initialized.load(); }
    /// Calls running now.
    std::size_t running() const;
    /// Cancels every running call and waits for them to end, at most `limit`
    /// when given; false when some still run then.
    bool shutdown(std::optional<std::chrono::milliseconds> limit = std::nullopt);

private:
    void handle(const boost::json::object& msg);
    void answer(const boost::json::value& id, boost::json::value result);
    void fail(const boost::json::value& id, int code, const std::string& message);
    void emit(const boost::json::value& msg);
    void startCall(const boost::json::value& id, const boost::json::object& params);
    /// resources/subscribe: a job's end becomes notifications/resources/updated, once.
    void subscribe(const std::string& uri);
    /// m_calls' keys of subscriptions: not a serialized request id (those are a number or start with '"').
    static constexpr const char* kWatchPrefix = "watch:";
    boost::json::object initialize(const boost::json::object& params);

    Backend& m_backend;
    Send m_send;
    SessionOptions m_options;
    std::atomic<bool> m_initialized{false};
    std::mutex m_sendLock;

    struct Call {
        std::shared_ptr<std::atomic<bool>> cancelled;
    };
    mutable std::mutex m_callsLock;
    std::condition_variable m_callsDone;
    /// Tool calls by serialized request id, and subscriptions (kWatchPrefix and
    /// the URI); each runs on a detached thread.
    std::map<std::string, Call> m_calls;
    bool m_closing = false;
};

}  // namespace hpc::mcp
