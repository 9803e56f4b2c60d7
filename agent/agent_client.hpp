#pragma once
/// hpc-agent as a library: a connection to the platform's agent endpoint and
/// typed requests to daemons through it. Used by the hpc-agent CLI, the
/// end-to-end tests and the benchmarks.

#include "secret.hpp"
#include "util.hpp"
#include "ws_client.hpp"

#include <boost/json.hpp>

#include <chrono>
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

    /// The underlying connection, for tests that send raw frames.
    net::WsClient& ws() { return *m_ws; }
    /// A fresh request id.
    std::string nextId() { return "a" + std::to_string(++m_seq); }

private:
    explicit AgentClient(std::unique_ptr<net::WsClient> ws) : m_ws(std::move(ws)) {}
    std::unique_ptr<net::WsClient> m_ws;
    std::uint64_t m_seq = 0;
};

}  // namespace hpc::agent
