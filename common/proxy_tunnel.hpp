#pragma once
/// HTTP CONNECT through a proxy: on a TCP stream connected to the proxy,
/// asks for a tunnel to host:port (with Proxy-Authorization: Basic when the
/// proxy URL has credentials) and reads the proxy's answer. TLS to the
/// platform then runs inside the tunnel, verified against the platform's host
/// as usual. Header-only, for the translation units that already use Beast
/// (the daemon's link, the CLIs' clients).

#include "proxy.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <memory>
#include <string>
#include <utility>

namespace hpc::proxy {

/// The sentence for a proxy that answered CONNECT with `status`.
inline std::string refusalText(const ProxyEndpoint& proxy, unsigned status, std::string_view reason,
                               const std::string& target) {
    std::string head = "the proxy " + proxy.display() + " refused the tunnel to " + target + " (HTTP " +
                       std::to_string(status) + (reason.empty() ? "" : " " + std::string(reason)) + ")";
    switch (status) {
        case 401:  // tinyproxy's answer to a wrong password
        case 407:
            return head + (proxy.hasCredentials() ? ": it did not accept the user and password in the proxy URL"
                                                  : ": it wants a user and password (http://user:password@host:port)");
        case 403:
            return head + ": its rules forbid this destination or port; ask its administrator";
        case 502:
        case 503:
        case 504:
            return head + ": the proxy could not reach the platform";
        default:
            return head;
    }
}

namespace detail {
struct TunnelOp {
    boost::beast::http::request<boost::beast::http::empty_body> request;
    boost::beast::flat_buffer buffer;
    boost::beast::http::response_parser<boost::beast::http::empty_body> parser;
};
}  // namespace detail

/// Opens the tunnel on `stream` (already connected to `proxy`); calls
/// `handler(ec, why)`: both empty on success; `ec` set for a transport error;
/// `why` set (ec empty) when the proxy refused. `stream` must outlive the
/// operation (the caller's handler holds it). Timeouts are the stream's.
template <class Handler>
void asyncOpenTunnel(boost::beast::tcp_stream& stream, const ProxyEndpoint& proxy, const std::string& host,
                     const std::string& port, Handler handler) {
    namespace http = boost::beast::http;
    auto op = std::make_shared<detail::TunnelOp>();
    std::string authority = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + port;
    op->request = {http::verb::connect, authority, 11};
    op->request.set(http::field::host, authority);
    op->request.set(http::field::user_agent, "hpc-daemon/" HPC_VERSION);
    if (proxy.hasCredentials()) op->request.set(http::field::proxy_authorization, proxy.authorization().reveal());
    // A reply to CONNECT has no body, whatever its headers say.
    op->parser.skip(true);
    http::async_write(stream, op->request,
                      [&stream, op, proxy, authority, handler = std::move(handler)](boost::beast::error_code ec,
                                                                                    std::size_t) mutable {
                          op->request.clear();  // the credentials go no further than the socket
                          if (ec) return handler(ec, std::string());
                          http::async_read(
                              stream, op->buffer, op->parser,
                              [op, proxy = std::move(proxy), authority, handler = std::move(handler)](
                                  boost::beast::error_code ec, std::size_t) mutable {
                                  if (ec) return handler(ec, std::string());
                                  const auto& res = op->parser.get();
                                  unsigned status = res.result_int();
                                  if (status / 100 != 2)
                                      return handler(ec, refusalText(proxy, status, res.reason(), authority));
                                  // The platform speaks first only after our ClientHello.
                                  if (op->buffer.size() != 0)
                                      return handler(
                                          ec, "the proxy " + proxy.display() + " sent data before the tunnel was used");
                                  handler(ec, std::string());
                              });
                      });
}

}  // namespace hpc::proxy
