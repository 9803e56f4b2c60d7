#pragma once
/// hpc-agent mcp --listen: the MCP session core (mcp_session.hpp) behind the
/// streamable HTTP transport (MCP 2025-06-18 and 2025-11-25), on a loopback
/// address only. One endpoint, /mcp:
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
/// Host and Origin must name a loopback host (403 otherwise: DNS rebinding),
/// and with a bearer token every request must carry it (401). A client that
/// hangs up while its call runs cancels the call. docs/mcp.md.

#include "mcp_session.hpp"
#include "secret.hpp"

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace hpc::agent {

struct McpHttpOptions {
    std::string host = "127.0.0.1";  ///< 127.0.0.1, localhost or ::1
    unsigned short port = 0;         ///< 0: any free port
    /// Clients must send "Authorization: Bearer <it>"; none: no check.
    std::optional<Secret> bearer;
    /// Written "http://HOST:PORT/mcp\n" once listening, then closed; -1: none.
    int readyFd = -1;
    std::size_t maxSessions = 16;
    std::size_t maxConnections = 64;
    std::size_t maxBodyBytes = 4 * 1024 * 1024;
    mcp::SessionOptions session;
};

/// Each session's backend (its own platform connections and shells).
using BackendFactory = std::function<std::unique_ptr<mcp::Backend>()>;

/// Whether `host` (a Host header's or an Origin's host, with or without a
/// port) names this machine's loopback: localhost, 127.0.0.1 or [::1].
bool isLoopbackHost(const std::string& host);

/// Serves until SIGINT or SIGTERM, then cancels the running calls and
/// returns 0. Throws hpc::Error(BadRequest) for an address that is not a
/// loopback one, Internal when it cannot listen.
int serveMcpHttp(const McpHttpOptions& options, const BackendFactory& makeBackend);

}  // namespace hpc::agent
