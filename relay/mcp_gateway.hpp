#pragma once
/// The relay's /mcp (docs/mcp.md): the MCP streamable HTTP transport of
/// hpc-agent, served to remote agents with their own bearer tokens. Each
/// client connection that reaches /mcp is handed, through a UNIX socket
/// pair, to a thread of its own that speaks the transport; its tool calls
/// reach the user's daemons through the hub in this process (an agent
/// connection with no socket), never through the network.
///
/// The relay's thread owns the api and the hub: the gateway's threads touch
/// them only by posting to it (and waiting when they need an answer).

#include "api.hpp"
#include "hub.hpp"

#include <boost/asio/io_context.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace hpc::agent {
class McpHttpServer;
}

namespace hpc::relay {

struct McpGatewayOptions {
    /// Origins whose pages may call /mcp (a request with another Origin is
    /// refused); requests without an Origin (agents, not browsers) are served.
    std::vector<std::string> allowedOrigins;
    /// "https" or "http" (hpc-relay --insecure-http): how clients reach it.
    std::string scheme = "https";
    std::size_t maxSessionsPerAgent = 16;
    std::size_t maxSessions = 4096;
    /// Client connections to /mcp at once (each holds a thread).
    std::size_t maxConnections = 512;
};

class McpGateway {
public:
    McpGateway(boost::asio::io_context& ioc, Api& api, Hub& hub, McpGatewayOptions options);
    /// Ends every session (their calls cancelled, at most `limit` waited for).
    ~McpGateway();

    /// Serves the connection whose bytes come and go through `fd` (the
    /// gateway's end of a socket pair), on a thread of its own; takes the
    /// descriptor. False (and `fd` closed) when maxConnections are busy.
    bool serve(int fd);
    /// Stops posting to the relay's thread and cancels every session's calls;
    /// call before the io_context stops running.
    void shutdown(std::chrono::milliseconds limit);
    std::size_t sessionCount() const;
    /// The largest request (a file of up to 4 MiB, base64-encoded in JSON).
    static constexpr std::size_t kMaxBodyBytes = std::size_t{8} * 1024 * 1024;

    class Loop;

private:
    std::shared_ptr<Loop> m_loop;
    std::shared_ptr<agent::McpHttpServer> m_server;
    std::shared_ptr<std::atomic<std::size_t>> m_connections;
    McpGatewayOptions m_options;
};

}  // namespace hpc::relay
