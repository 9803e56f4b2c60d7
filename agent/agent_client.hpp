#pragma once
/// hpc-agent as a library: a connection to the platform's agent endpoint and
/// typed requests to daemons through it. Used by the hpc-agent CLI, the
/// end-to-end tests and the benchmarks.

#include "secret.hpp"
#include "util.hpp"
#include "wire.hpp"
#include "ws_client.hpp"

#include <boost/json.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace hpc::agent {

struct AgentOptions {
    Url url;
    Secret token;  ///< access token or API key
    std::string caFile;
    std::chrono::milliseconds connectTimeout{std::chrono::seconds(15)};
    /// "" : the environment's proxy (HTTPS_PROXY, NO_PROXY...); "direct";
    /// or an http:// proxy URL.
    std::string proxy{};
};

/// What an exec request asks for (protocol `exec` payload), shared with the daemon.
using hpc::ExecSpec;

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

/// Where a streamed exec's streams go and come from (AgentClient::execStream).
struct ExecStreamIo {
    /// Each piece of output as it arrives, in order: any bytes, no cap.
    std::function<void(std::string_view)> onStdout, onStderr;
    /// Read until EOF and streamed to the command's stdin (a pipe, a file, a
    /// terminal); -1: the command's stdin is /dev/null.
    int stdinFd = -1;
    std::uint64_t credit = 0;  ///< output window in bytes; 0: the daemon's default (1 MiB)
    /// Asked at least every 100 ms; once it returns true the command is
    /// stopped as pty.close does (SIGTERM to its group, SIGKILL after its
    /// kill grace) and execStream still returns how it ended.
    std::function<bool()> interrupted;
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
    /// The daemon's name for the session, for attachPty from a later connection.
    std::string session;
    /// attachPty: the offset of the session's output the first frame starts at.
    std::uint64_t fromByte = 0;
};

/// Something that happened on a channel: a PTY's, or a job's output (job.logs).
struct PtyEvent {
    enum class Kind { Output, Exit, LogsEnd } kind = Kind::Output;
    std::uint32_t channel = 0;
    std::string data;             ///< Output
    std::optional<int> exitCode;  ///< Exit; LogsEnd: the job's, once it has one
    std::optional<int> signal;    ///< Exit; LogsEnd: the job's
    std::string error;            ///< Exit, LogsEnd: set when the channel was lost or cut short, not ended
    std::string errorCode;        ///< with `error`: UNAVAILABLE (the daemon went away), NOT_OWNER (taken elsewhere)
    std::string state;            ///< LogsEnd: the job's state then ("" when unknown)
    std::uint64_t endByte = 0;    ///< LogsEnd: the offset after the last byte sent
};

/// What job.logs asks for: a job's stdout or stderr from a byte offset.
struct JobLogsSpec {
    std::string jobId;
    bool stderrStream = false;  ///< stderr rather than stdout
    std::uint64_t fromByte = 0;
    bool follow = false;       ///< keep sending while the job runs; end after its last byte
    std::uint64_t credit = 0;  ///< initial credit in bytes; 0: the daemon's default (1 MiB)
};

struct JobLogsHandle {
    std::uint32_t channel = 0;
    std::uint64_t size = 0;  ///< the file's size when the daemon first read it
};

/// What job.submit asks for, shared with the daemon.
using hpc::JobSpec;

/// A job's wake-on-complete callback, as the platform delivers it.
struct JobCallback {
    std::string daemonId;
    std::string callbackId;
    std::string jobId;
    std::string state;
    std::optional<int> exitCode;
    std::optional<int> signal;
    std::string stdoutTail;
    std::string stderrTail;
    boost::json::object raw;
    static JobCallback fromPayload(const std::string& daemonId, const boost::json::object& payload);
};

/// Synchronous: frames are read only inside its calls. The platform closes a
/// connection that answers no keep-alive ping for its idle limit (60 s by
/// default), so a client kept idle longer than that must reconnect; the
/// calls that wait (waitForJob, nextCallback, nextPtyEvent) read all along.
class AgentClient {
public:
    /// Connects to /hpc/agent/ws. Throws hpc::Error (Unauthorized, Unavailable).
    static std::unique_ptr<AgentClient> connect(const AgentOptions& options);
    /// An agent on a connection made elsewhere (already authenticated).
    static std::unique_ptr<AgentClient> over(std::unique_ptr<net::WsClient> ws) {
        return std::unique_ptr<AgentClient>(new AgentClient(std::move(ws)));
    }

    /// Sends a request to `daemonId` and waits for its response. Returns the
    /// result object; throws hpc::Error with the response's code and message,
    /// or Timeout when no response came in time.
    boost::json::object request(const std::string& daemonId, const std::string& type, boost::json::object payload,
                                std::chrono::milliseconds timeout = std::chrono::minutes(10));

    /// The buffered exec: output capped at spec.maxOutputBytes per stream
    /// (outTruncated, errTruncated say when it was cut).
    ExecOutcome exec(const std::string& daemonId, const ExecSpec& spec,
                     std::chrono::milliseconds timeout = std::chrono::minutes(10));
    /// The streamed exec (docs/protocol.md §4.3): the output goes to `io` as
    /// it arrives, under a credit window granted back as the callbacks return
    /// (a slow callback slows the command, never memory), and io.stdinFd is
    /// streamed as stdin. Returns how the command ended (out and err empty).
    /// Throws hpc::Error: the daemon's refusal; Unavailable when the daemon
    /// or the connection went away (the command is then killed); the code in
    /// exec.end when the daemon cut the stream short.
    ExecOutcome execStream(const std::string& daemonId, ExecSpec spec, const ExecStreamIo& io);

    // ---- PTY sessions ----
    PtyHandle openPty(const std::string& daemonId, const PtySpec& spec,
                      std::chrono::milliseconds timeout = std::chrono::seconds(30));
    /// Takes up a session this agent identity opened, through this
    /// connection (pty.attach): its output from `fromByte` (the count of
    /// bytes already received; none: the oldest the daemon kept) comes again,
    /// then it carries on under a new channel number, with `credit` (0: the
    /// daemon's default) less what comes again.
    PtyHandle attachPty(const std::string& daemonId, const std::string& session, std::optional<std::uint64_t> fromByte,
                        std::uint64_t credit = 0, std::chrono::milliseconds timeout = std::chrono::seconds(30));
    /// Sends keystrokes or other input (a binary frame).
    void ptyInput(std::uint32_t channel, std::string_view data);
    void ptyResize(const std::string& daemonId, std::uint32_t channel, unsigned cols, unsigned rows);
    /// Signals the session's process group (SIGHUP by default).
    void ptyClose(const std::string& daemonId, std::uint32_t channel, int signal = 1);
    /// Grants `bytes` more output credit. Does not wait for the answer.
    void ptyAck(const std::string& daemonId, std::uint32_t channel, std::uint64_t bytes);
    /// The next output or exit on any channel, or nullopt after `timeout`.
    std::optional<PtyEvent> nextPtyEvent(std::chrono::milliseconds timeout);

    // ---- A job's output ----
    /// job.logs: a channel carrying the job's output from spec.fromByte. Its
    /// bytes and its end (PtyEvent::Kind::LogsEnd) come from nextPtyEvent;
    /// grant credit back with ptyAck as for a shell.
    JobLogsHandle openJobLogs(const std::string& daemonId, const JobLogsSpec& spec,
                              std::chrono::milliseconds timeout = std::chrono::seconds(60));
    /// job.logs.close: the stream ends now (its LogsEnd still comes).
    void closeJobLogs(const std::string& daemonId, std::uint32_t channel);
    /// The rest of a stream openJobLogs opened with `credit` (0: the
    /// default): gives each piece of output to `sink` in order, grants credit
    /// in quarters of the window as it goes, and returns the end event.
    /// Events of other channels meanwhile are dropped. Throws
    /// hpc::Error(Unavailable) when the connection breaks.
    PtyEvent readJobLogs(const std::string& daemonId, std::uint32_t channel, std::uint64_t credit,
                         const std::function<void(std::string_view)>& sink);
    /// openJobLogs, then readJobLogs.
    PtyEvent streamJobLogs(const std::string& daemonId, const JobLogsSpec& spec,
                           const std::function<void(std::string_view)>& sink);

    // ---- Jobs ----
    /// Returns job.submit's result (job_id, backend, scheduler_id, state, paths).
    boost::json::object submitJob(const std::string& daemonId, const JobSpec& spec,
                                  std::chrono::milliseconds timeout = std::chrono::minutes(2));
    /// job.status: the job with the tails of its output.
    boost::json::object jobStatus(const std::string& daemonId, const std::string& jobId);
    boost::json::object cancelJob(const std::string& daemonId, const std::string& jobId);
    boost::json::array listJobs(const std::string& daemonId, int limit = 100);
    /// Callbacks the platform holds for this agent (for `daemonId` and
    /// `jobId` when not empty), acknowledged or not.
    std::vector<JobCallback> storedCallbacks(const std::string& daemonId, const std::string& jobId);
    /// Tells the platform this callback has been handled: not sent again.
    void ackCallback(const std::string& callbackId);
    /// The next callback pushed by the platform (each callback id once per
    /// connection), or nullopt after `timeout`. Frames for PTYs are kept.
    std::optional<JobCallback> nextCallback(std::chrono::milliseconds timeout);
    /// The job's callback: at once when the platform already has it, else
    /// when it arrives; nullopt after `timeout`.
    std::optional<JobCallback> waitForJob(const std::string& daemonId, const std::string& jobId,
                                          std::chrono::milliseconds timeout);

    /// The underlying connection, for tests that send raw frames.
    net::WsClient& ws() { return *m_ws; }
    /// A fresh request id.
    std::string nextId() { return "a" + std::to_string(++m_seq); }
    /// The next frame: one put aside while waiting for a response, else a
    /// read (for code that runs its own channel, as FileClient does).
    /// Throws hpc::Error(Unavailable) when the connection breaks.
    std::optional<net::WsFrame> nextFrame(std::chrono::milliseconds timeout);

private:
    explicit AgentClient(std::unique_ptr<net::WsClient> ws) : m_ws(std::move(ws)) {}

    std::unique_ptr<net::WsClient> m_ws;
    std::uint64_t m_seq = 0;
    std::deque<net::WsFrame> m_backlog;
    std::set<std::string> m_unanswered;  ///< ids of fire-and-forget requests
    /// A pushed job.completed event from this frame, if it is one (and new).
    std::optional<JobCallback> callbackIn(const net::WsFrame& frame, bool& isCallback);
    std::deque<JobCallback> m_callbacks;    ///< pushed callbacks not yet taken
    std::set<std::string> m_seenCallbacks;  ///< callback ids already taken or queued
};

}  // namespace hpc::agent
