#pragma once
/// A blocking HTTPS (or loopback HTTP) client for the platform's JSON routes.
/// For command-line programs and tests only: the daemon never blocks.

#include "util.hpp"

#include <boost/json.hpp>

#include <chrono>
#include <string>

namespace hpc::net {

struct HttpResponse {
    int status = 0;
    std::string body;
    /// The body as JSON; a null value when it is not JSON.
    boost::json::value json() const;
};

struct ClientOptions {
    std::string caFile;  ///< empty: the system's CA store
    std::chrono::milliseconds timeout{std::chrono::seconds(15)};
    /// "" : the proxy the environment names (HTTPS_PROXY, NO_PROXY...);
    /// "direct"/"none": no proxy; else a proxy URL (common/proxy.hpp).
    std::string proxy{};
};

/// Sends one request to base.path + path. The bearer token (may be empty) goes
/// in the Authorization header only. Throws hpc::Error(Unavailable) when the
/// platform (or the proxy on the way) cannot be reached or its certificate is
/// not trusted; the message names the URL, the proxy as scheme://host:port
/// and the cause, never the token or the proxy's credentials. Throws
/// hpc::Error(BadRequest) when the proxy that applies is not a usable URL.
HttpResponse httpRequest(const Url& base, const std::string& method, const std::string& path, const std::string& body,
                         const std::string& bearer, const ClientOptions& options = {});

}  // namespace hpc::net
