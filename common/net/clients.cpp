// The blocking HTTP and WebSocket clients. All Beast code of the client side
// of command-line programs lives in this one translation unit (it takes ~30 s
// to compile); the headers are Beast-free.
#include "http_client.hpp"
#include "ws_client.hpp"

#include "errors.hpp"
#include "proxy_tunnel.hpp"
#include "tls_client.hpp"

#include <openssl/ssl.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include <variant>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace hpc::net {
namespace {

using TlsStream = beast::ssl_stream<beast::tcp_stream>;
using PlainStream = beast::tcp_stream;

[[noreturn]] void unreachable(const Url& base, const std::string& step, const std::string& why,
                              const std::string& via = {}) {
    std::string hint;
    if (why.find("certificate verify failed") != std::string::npos)
        hint = " (the platform's certificate is not trusted: pass its CA with --ca-file)";
    throw Error(ErrorCode::Unavailable, "cannot reach " + base.str() + via + ": " + step + " failed: " + why + hint);
}

/// Runs the io_context until `done` or the deadline; on timeout closes the
/// socket so every pending operation completes (with an error) before return.
template <class Socket>
bool runUntil(asio::io_context& ioc, const bool& done, Clock::time_point deadline, Socket& socket) {
    ioc.restart();
    while (!done && ioc.run_one_until(deadline) > 0) {
    }
    if (done) return true;
    beast::error_code ignored;
    socket.close(ignored);
    ioc.restart();
    while (!done && ioc.run_one() > 0) {
    }
    return false;
}

void configureTls(ssl::context& ctx, const ClientOptions& options, const Url& base) {
    if (auto ec = tls::configureClient(ctx, options.caFile)) {
        if (!options.caFile.empty())
            throw Error(ErrorCode::BadRequest, "cannot load CA file " + options.caFile + ": " + ec.message());
        unreachable(base, "loading the system CA store", ec.message());
    }
}

/// TCP connect, to the platform or to the proxy the route names (then a
/// CONNECT tunnel through it), then the TLS handshake with SNI and host-name
/// verification against the platform.
template <class Stream>
void openStream(asio::io_context& ioc, Stream& stream, const Url& base, const ClientOptions& options,
                Clock::time_point deadline) {
    ProxyRoute route = resolveProxyRoute(options.proxy, base);
    const std::string via = route.proxy ? " via proxy " + route.proxy->display() : "";
    const std::string& host = route.proxy ? route.proxy->host : base.host;
    const std::string& port = route.proxy ? route.proxy->port : base.port;
    const std::string lookupStep = route.proxy ? "name lookup of the proxy" : "name lookup";
    const std::string connectStep = route.proxy ? "connect to the proxy" : "connect";
    tcp::resolver resolver(ioc);
    beast::error_code ec;
    auto endpoints = resolver.resolve(host, port, ec);
    if (ec) unreachable(base, lookupStep, ec.message(), via);
    auto& tcpStream = beast::get_lowest_layer(stream);
    bool done = false;
    tcpStream.async_connect(endpoints, [&](beast::error_code e, const tcp::endpoint&) {
        ec = e;
        done = true;
    });
    if (!runUntil(ioc, done, deadline, tcpStream.socket())) unreachable(base, connectStep, "timed out", via);
    if (ec) unreachable(base, connectStep, ec.message(), via);
    tcpStream.socket().set_option(tcp::no_delay(true), ec);
    if (route.proxy) {
        std::string refused;
        done = false;
        proxy::asyncOpenTunnel(tcpStream, *route.proxy, base.host, base.port,
                               [&](beast::error_code e, std::string why) {
                                   ec = e;
                                   refused = std::move(why);
                                   done = true;
                               });
        if (!runUntil(ioc, done, deadline, tcpStream.socket())) unreachable(base, "CONNECT", "timed out", via);
        if (ec) unreachable(base, "CONNECT", ec.message(), via);
        if (!refused.empty()) throw Error(ErrorCode::Unavailable, "cannot reach " + base.str() + ": " + refused);
    }
    if constexpr (std::is_same_v<Stream, TlsStream>) {
        if (!tls::expectPeer(stream, base.host)) unreachable(base, "TLS setup", "cannot set SNI", via);
        done = false;
        stream.async_handshake(ssl::stream_base::client, [&](beast::error_code e) {
            ec = e;
            done = true;
        });
        if (!runUntil(ioc, done, deadline, tcpStream.socket())) unreachable(base, "TLS handshake", "timed out", via);
        if (ec) unreachable(base, "TLS handshake", ec.message(), via);
    }
}

std::string hostHeader(const Url& base) {
    bool defaultPort = (base.tls() && base.port == "443") || (!base.tls() && base.port == "80");
    std::string h = base.host.find(':') != std::string::npos ? "[" + base.host + "]" : base.host;
    return defaultPort ? h : h + ":" + base.port;
}

/// What a refused WebSocket upgrade says: the platform's own message (an
/// expired token says so) when its answer carries one.
std::string refusedCredentials(int status, const std::string& body) {
    std::string text = "the platform refused the credentials (HTTP " + std::to_string(status) + ")";
    boost::json::error_code ec;
    auto v = boost::json::parse(body, ec);
    if (ec || !v.is_object()) return text;
    auto* m = v.get_object().if_contains("message");
    return m && m->is_string() ? text + ": " + std::string(m->get_string()) : text;
}

template <class Stream>
HttpResponse doHttp(asio::io_context& ioc, Stream& stream, const Url& base, const std::string& method,
                    const std::string& path, const std::string& body, const std::string& bearer,
                    const ClientOptions& options, Clock::time_point deadline) {
    openStream(ioc, stream, base, options, deadline);
    http::request<http::string_body> req{http::string_to_verb(method), base.path + path, 11};
    req.set(http::field::host, hostHeader(base));
    req.set(http::field::user_agent, "hpc-daemon/" HPC_VERSION);
    req.set(http::field::accept, "application/json");
    if (!bearer.empty()) req.set(http::field::authorization, "Bearer " + bearer);
    if (!body.empty() || method == "POST" || method == "PUT") {
        req.set(http::field::content_type, "application/json");
        req.body() = body;
    }
    req.prepare_payload();
    beast::error_code ec;
    bool done = false;
    auto& socket = beast::get_lowest_layer(stream).socket();
    http::async_write(stream, req, [&](beast::error_code e, std::size_t) {
        ec = e;
        done = true;
    });
    if (!runUntil(ioc, done, deadline, socket)) unreachable(base, method + " " + path, "timed out");
    if (ec) unreachable(base, method + " " + path, ec.message());
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(std::uint64_t{8} * 1024 * 1024);
    done = false;
    http::async_read(stream, buffer, parser, [&](beast::error_code e, std::size_t) {
        ec = e;
        done = true;
    });
    if (!runUntil(ioc, done, deadline, socket)) unreachable(base, "reading the reply to " + path, "timed out");
    if (ec) unreachable(base, "reading the reply to " + path, ec.message());
    auto& res = parser.get();
    return HttpResponse{static_cast<int>(res.result_int()), std::move(res.body())};
}

}  // namespace

boost::json::value HttpResponse::json() const {
    boost::json::error_code ec;
    auto v = boost::json::parse(body, ec);
    return ec ? boost::json::value() : v;
}

HttpResponse httpRequest(const Url& base, const std::string& method, const std::string& path, const std::string& body,
                         const std::string& bearer, const ClientOptions& options) {
    asio::io_context ioc;
    auto deadline = Clock::now() + options.timeout;
    if (base.tls()) {
        ssl::context ctx(ssl::context::tls_client);
        configureTls(ctx, options, base);
        TlsStream stream(ioc, ctx);
        return doHttp(ioc, stream, base, method, path, body, bearer, options, deadline);
    }
    PlainStream stream(ioc);
    return doHttp(ioc, stream, base, method, path, body, bearer, options, deadline);
}

// ---------------------------------------------------------------- WebSocket

struct WsClient::Impl {
    asio::io_context ioc;
    ssl::context ctx{ssl::context::tls_client};
    std::variant<std::unique_ptr<websocket::stream<TlsStream>>, std::unique_ptr<websocket::stream<PlainStream>>> ws;
    Url base;
    beast::flat_buffer readBuffer;
    bool readPending = false;
    bool readDone = false;
    beast::error_code readEc;
    bool closed = false;

    template <class F>
    decltype(auto) visit(F&& f) {
        return std::visit([&f](auto& p) -> decltype(auto) { return f(*p); }, ws);
    }
    tcp::socket& socket() {
        return visit([](auto& s) -> tcp::socket& { return beast::get_lowest_layer(s).socket(); });
    }
};

WsClient::WsClient(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}

std::unique_ptr<WsClient> WsClient::over(std::shared_ptr<FrameChannel> channel) {
    std::unique_ptr<WsClient> client(new WsClient(nullptr));
    client->m_channel = std::move(channel);
    return client;
}

WsClient::~WsClient() {
    try {
        close();
    } catch (...) {
        // Best effort: the peer sees a dropped connection instead.
    }
}

std::unique_ptr<WsClient> WsClient::connect(const Url& base, const std::string& path, const std::string& bearer,
                                            const ClientOptions& options) {
    auto impl = std::make_unique<Impl>();
    impl->base = base;
    auto deadline = Clock::now() + options.timeout;
    if (base.tls()) {
        configureTls(impl->ctx, options, base);
        impl->ws = std::make_unique<websocket::stream<TlsStream>>(impl->ioc, impl->ctx);
    } else {
        impl->ws = std::make_unique<websocket::stream<PlainStream>>(impl->ioc);
    }
    impl->visit([&](auto& ws) {
        openStream(impl->ioc, ws.next_layer(), base, options, deadline);
        ws.set_option(websocket::stream_base::decorator([&bearer](websocket::request_type& req) {
            req.set(http::field::user_agent, "hpc-daemon/" HPC_VERSION);
            if (!bearer.empty()) req.set(http::field::authorization, "Bearer " + bearer);
        }));
        ws.read_message_max(64 * 1024 * 1024);
        // A client masks what it sends through a buffer of this size: Beast's
        // 4 KiB default cut every file-transfer frame into 4 KiB TLS records.
        ws.write_buffer_bytes(256 * 1024);
        websocket::response_type res;
        beast::error_code ec;
        bool done = false;
        ws.async_handshake(res, hostHeader(base), base.path + path, [&](beast::error_code e) {
            ec = e;
            done = true;
        });
        if (!runUntil(impl->ioc, done, deadline, impl->socket())) unreachable(base, "WebSocket upgrade", "timed out");
        if (ec) {
            auto status = res.result_int();
            std::string detail = res.body().empty() ? ec.message() : res.body();
            if (status == 401 || status == 403)
                throw Error(ErrorCode::Unauthorized, refusedCredentials(static_cast<int>(status), res.body()));
            if (status == 404) throw Error(ErrorCode::NotFound, "the platform has no WebSocket route " + path);
            unreachable(base, "WebSocket upgrade", status ? "HTTP " + std::to_string(status) : detail);
        }
        // The handshake's decorator captured bearer by reference: drop it.
        ws.set_option(websocket::stream_base::decorator([](websocket::request_type&) {}));
    });
    return std::unique_ptr<WsClient>(new WsClient(std::move(impl)));
}

namespace {

template <class Ws>
void writeFrame(WsClient::Impl& impl, Ws& ws, const std::string& data, bool binary) {
    if (impl.closed) throw Error(ErrorCode::Unavailable, "the connection to the platform is closed");
    ws.binary(binary);
    beast::error_code ec;
    bool done = false;
    ws.async_write(asio::buffer(data), [&](beast::error_code e, std::size_t) {
        ec = e;
        done = true;
    });
    auto deadline = Clock::now() + std::chrono::seconds(30);
    impl.ioc.restart();
    while (!done && impl.ioc.run_one_until(deadline) > 0) {
    }
    if (!done) {
        impl.closed = true;
        beast::error_code ignored;
        impl.socket().close(ignored);
        impl.ioc.restart();
        while (!done && impl.ioc.run_one() > 0) {
        }
        throw Error(ErrorCode::Unavailable, "writing to the platform timed out");
    }
    if (ec) {
        impl.closed = true;
        throw Error(ErrorCode::Unavailable, "the connection to the platform broke: " + ec.message());
    }
}

}  // namespace

void WsClient::sendText(const std::string& text) {
    if (m_channel) return m_channel->send(WsFrame{false, text});
    m_impl->visit([&](auto& ws) { writeFrame(*m_impl, ws, text, false); });
}

void WsClient::sendBinary(const std::string& data) {
    if (m_channel) return m_channel->send(WsFrame{true, data});
    m_impl->visit([&](auto& ws) { writeFrame(*m_impl, ws, data, true); });
}

std::optional<WsFrame> WsClient::read(std::chrono::milliseconds timeout) {
    if (m_channel) return m_channel->receive(timeout);
    auto& impl = *m_impl;
    if (impl.closed) throw Error(ErrorCode::Unavailable, "the connection to the platform is closed");
    if (!impl.readPending) {
        impl.readPending = true;
        impl.readDone = false;
        impl.visit([&impl](auto& ws) {
            ws.async_read(impl.readBuffer, [&impl](beast::error_code e, std::size_t) {
                impl.readEc = e;
                impl.readDone = true;
            });
        });
    }
    impl.ioc.restart();
    if (timeout.count() <= 0) {
        // Only what is ready now: run handlers until none is ready.
        while (!impl.readDone && impl.ioc.poll_one() > 0) {
        }
    } else {
        auto deadline = Clock::now() + timeout;
        while (!impl.readDone && impl.ioc.run_one_until(deadline) > 0) {
        }
    }
    if (!impl.readDone) return std::nullopt;
    impl.readPending = false;
    if (impl.readEc) {
        impl.closed = true;
        if (impl.readEc == websocket::error::closed)
            throw Error(ErrorCode::Unavailable, "the platform closed the connection");
        throw Error(ErrorCode::Unavailable, "the connection to the platform broke: " + impl.readEc.message());
    }
    WsFrame frame;
    frame.binary = impl.visit([](auto& ws) { return ws.got_binary(); });
    frame.data = beast::buffers_to_string(impl.readBuffer.data());
    impl.readBuffer.consume(impl.readBuffer.size());
    return frame;
}

int WsClient::nativeFd() const { return m_channel ? m_channel->pollFd() : m_impl->socket().native_handle(); }

bool WsClient::isOpen() const { return m_channel ? m_channel->isOpen() : !m_impl->closed; }

void WsClient::close() {
    if (m_channel) return m_channel->close();
    auto& impl = *m_impl;
    if (impl.closed) return;
    impl.closed = true;
    bool done = false;
    impl.visit(
        [&](auto& ws) { ws.async_close(websocket::close_code::normal, [&](beast::error_code) { done = true; }); });
    runUntil(impl.ioc, done, Clock::now() + std::chrono::seconds(2), impl.socket());
}

}  // namespace hpc::net
