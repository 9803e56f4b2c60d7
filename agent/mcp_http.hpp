#pragma once
/// The MCP session core (mcp_session.hpp) behind the streamable HTTP
/// transport (MCP 2025-06-18 and 2025-11-25): `hpc-agent mcp --listen` on a
/// loopback address, and the relay's /mcp. One endpoint, /mcp:
///   POST    a JSON-RPC message. A request is answered with application/json,
///           or with text/event-stream when notifications (progress) come
///           before its response; a notification or a response gets 202.
///           `initialize` opens a session: the answer's Mcp-Session-Id header
///           names it, and every later request carries it (400 without it,
///           404 for one that is unknown or ended).
///   DELETE  ends the session (its running calls are cancelled).
///   GET     the session's notifications that answer no request (a subscribed
///           resource changed) as an event stream, one per session; those
///           that came while none was open are sent first; with
///           Last-Event-ID, those after that event (the last 256 are kept).
/// On loopback, Host and Origin must name a loopback host (403 otherwise: DNS
/// rebinding), and with a bearer token every request must carry it (401).
/// In the relay, each request's bearer names its caller. A client that
/// hangs up while its call runs cancels the call. docs/mcp.md.

#include "mcp_session.hpp"
#include "secret.hpp"

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hpc::agent {

/// Each session's backend (its own platform connections and shells).
using BackendFactory = std::function<std::unique_ptr<mcp::Backend>()>;

/// Who a request comes from, as a server that embeds the transport (the
/// relay's /mcp) decides it: a session belongs to the owner that opened it,
/// and another owner's requests never find it.
struct McpCaller {
    std::string owner;
    BackendFactory makeBackend;  ///< for a session this caller opens
};

struct McpHttpOptions {
    std::string host = "127.0.0.1";  ///< 127.0.0.1, localhost or ::1
    unsigned short port = 0;         ///< 0: any free port
    /// Clients must send "Authorization: Bearer <it>"; none: no check.
    std::optional<Secret> bearer;
    /// Written "http://HOST:PORT/mcp\n" once listening, then closed; -1: none.
    int readyFd = -1;
    /// Sessions per owner (the least recently used idle one makes room).
    std::size_t maxSessions = 16;
    /// Sessions of all owners together (503 beyond).
    std::size_t maxSessionsTotal = 4096;
    std::size_t maxConnections = 64;
    std::size_t maxBodyBytes = 4 * 1024 * 1024;
    mcp::SessionOptions session;
    /// Embedded behind a server that authenticates (the relay): decides each
    /// request's caller from its Authorization header, or nullopt and the
    /// 401's message in `refusal`. Host is then not checked, and an Origin
    /// must be one of `allowedOrigins`. Unset: the loopback server of
    /// `hpc-agent mcp --listen` (Host and Origin must be loopback names).
    std::function<std::optional<McpCaller>(const std::string& authorization, std::string& refusal)> authorize;
    std::vector<std::string> allowedOrigins;
    /// With authorize: the WWW-Authenticate header of a 401 for a request
    /// whose Host is `host` (where the client finds how to get a token).
    std::function<std::string(const std::string& host)> challenge;
};

/// Whether `host` (a Host header's or an Origin's host, with or without a
/// port) names this machine's loopback: localhost, 127.0.0.1 or [::1].
bool isLoopbackHost(const std::string& host);

/// The transport's sessions, and the connections that reach them. One
/// thread per connection, blocking I/O; each call runs on a thread of its own.
class McpHttpServer {
public:
    /// `loopbackCaller`: every request's caller when options.authorize is unset.
    McpHttpServer(McpHttpOptions options, McpCaller loopbackCaller = {});
    ~McpHttpServer();
    McpHttpServer(const McpHttpServer&) = delete;
    McpHttpServer& operator=(const McpHttpServer&) = delete;

    /// Serves a connected stream socket (TCP, or a UNIX socket pair's end)
    /// until it closes, then closes it. Blocks: run it on a thread of its own.
    void serve(int fd);
    /// Every session's calls cancelled; false when some still run after `limit`.
    bool shutdownAll(std::chrono::milliseconds limit);
    std::size_t sessionCount() const;

    class Impl;

private:
    std::unique_ptr<Impl> m_impl;
};

/// Serves until SIGINT or SIGTERM, then cancels the running calls and
/// returns 0. Throws hpc::Error(BadRequest) for an address that is not a
/// loopback one, Internal when it cannot listen.
int serveMcpHttp(const McpHttpOptions& options, const BackendFactory& makeBackend);

}  // namespace hpc::agent
