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
};

/// Sends one request to base.path + path. The bearer token (may be empty) goes
/// in the Authorization header only. Throws hpc::Error(Unavailable) when the
/// platform cannot be reached or its certificate is not trusted; the message
/// names the URL and the cause, never the token.
HttpResponse httpRequest(const Url& base, const std::string& method, const std::string& path,
                         const std::string& body, const std::string& bearer, const ClientOptions& options = {});

}  // namespace hpc::net
