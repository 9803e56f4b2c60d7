#pragma once
/// The relay's network side: HTTPS + WSS (or loopback-only plain HTTP) on one
/// port. Beast lives only in server.cpp; this header is Beast-free.

#include "api.hpp"
#include "hub.hpp"
#include "metrics.hpp"
#include "secret.hpp"

#include <string>
#include <vector>

namespace hpc::relay {

/// Several instances on one database (hpc-relay --cluster-url).
struct ClusterConfig {
    /// This instance's URL as the others reach it ("" : not in a cluster).
    /// Without a port, the port this instance listens on.
    std::string url;
    Secret secret;       ///< every instance's links carry it as their bearer
    std::string caFile;  ///< verifies the other instances' certificates; "": the system's
};

/// /mcp (docs/mcp.md).
struct McpConfig {
    bool enabled = true;
    /// Web origins whose pages may call it (requests without Origin are served).
    std::vector<std::string> allowedOrigins;
};

struct ServerConfig {
    std::string listen = "127.0.0.1";
    unsigned short port = 8443;  ///< 0: any free port (see portFile)
    std::string certFile;
    std::string keyFile;
    bool plainHttp = false;  ///< allowed only when `listen` is a loopback address
    std::string portFile;    ///< when set, the bound port is written there
    int readyFd = -1;        ///< when >= 0, "PORT\n" is written to it once listening, then it is closed
    int wsIdleSeconds = 60;  ///< a WebSocket silent this long (pings unanswered) is closed
    MetricsAccess metrics;   ///< who may read GET /metrics
    ClusterConfig cluster;
    McpConfig mcp;
};

/// Serves until SIGINT or SIGTERM. Returns the process exit code; throws
/// std::runtime_error for configuration errors (bad cert, port in use).
int runServer(const ServerConfig& config, Api& api, Hub& hub);

}  // namespace hpc::relay
