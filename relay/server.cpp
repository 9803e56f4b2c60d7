// hpc-relay's HTTP and WebSocket server. The only Beast translation unit of
// the relay: routes live in api.cpp and routing in hub.cpp.
#include "server.hpp"

#include "link.hpp"
#include "log.hpp"
#include "mcp_gateway.hpp"
#include "protocol.hpp"
#include "tcp_cork.hpp"
#include "util.hpp"

#include <openssl/crypto.h>
#include <sys/socket.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

namespace hpc::relay {
namespace {

using TlsStream = beast::ssl_stream<beast::tcp_stream>;
using PlainStream = beast::tcp_stream;

/// Frames larger than the envelope limit still get a protocol error (the link
/// stays up); only frames beyond this are refused by closing with 1009.
constexpr std::size_t kMaxFrameBytes = std::size_t{16} * 1024 * 1024;
/// A peer that lets this much pile up unsent is too slow and is disconnected.
constexpr std::size_t kMaxQueuedBytes = std::size_t{64} * 1024 * 1024;
constexpr std::size_t kMaxQueuedFrames = 8192;

struct Context {
    Api& api;
    Hub& hub;
    const ServerConfig& config;
    McpGateway* mcp = nullptr;  ///< null: no /mcp (--no-mcp)
};

std::string remoteOf(const tcp::socket& socket) {
    beast::error_code ec;
    auto ep = socket.remote_endpoint(ec);
    return ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
}

template <class Stream>
void gracefulClose(Stream& stream) {
    beast::error_code ec;
    if constexpr (std::is_same_v<Stream, TlsStream>) {
        beast::get_lowest_layer(stream).socket().shutdown(tcp::socket::shutdown_both, ec);
    } else {
        stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    }
}

// ------------------------------------------------------------- WebSocket

template <class Stream>
class WsSession : public Peer, public std::enable_shared_from_this<WsSession<Stream>> {
public:
    struct Role {
        bool daemon = false;
        /// Another instance's link for daemon `daemonId` of user principal.userId.
        bool instance = false;
        Principal principal;
        std::string daemonId;
    };

    WsSession(Stream&& stream, Context& ctx, Role role, std::string remote)
        : m_ws(std::move(stream)), m_ctx(ctx), m_role(std::move(role)), m_remote(std::move(remote)) {}

    void accept(http::request<http::string_body> req) {
        beast::get_lowest_layer(m_ws).expires_never();
        websocket::stream_base::timeout t{};
        t.handshake_timeout = std::chrono::seconds(30);
        t.idle_timeout = std::chrono::seconds(m_ctx.config.wsIdleSeconds);
        t.keep_alive_pings = true;
        m_ws.set_option(t);
        m_ws.read_message_max(kMaxFrameBytes);
        m_ws.auto_fragment(false);  // one frame per message, whatever its size
        m_ws.set_option(websocket::stream_base::decorator(
            [](websocket::response_type& res) { res.set(http::field::server, "hpc-relay/" HPC_VERSION); }));
        m_ws.async_accept(req, [self = this->shared_from_this()](beast::error_code ec) { self->onAccept(ec); });
    }

    void sendText(std::string text) override { enqueue(std::move(text), false); }
    void sendBinary(std::string data) override { enqueue(std::move(data), true); }
    bool isInstanceLink() const override { return m_role.instance; }

    void close(std::string_view reason) override {
        if (m_closing) return;
        m_closing = true;
        m_ws.async_close(websocket::close_reason(websocket::close_code::going_away, std::string(reason).substr(0, 120)),
                         [self = this->shared_from_this()](beast::error_code) {});
    }

private:
    void onAccept(beast::error_code ec) {
        if (ec) {
            log::info("WebSocket upgrade from " + m_remote + " failed: " + ec.message());
            return;
        }
        m_open = true;
        if (m_role.instance) {
            if (!m_ctx.hub.attachInstance(m_role.principal.userId, m_role.daemonId, this->shared_from_this())) {
                close("daemon " + m_role.daemonId + " is not connected here");
                return;
            }
            log::info("instance link from " + m_remote + " for daemon " + m_role.daemonId + " (user " +
                      std::to_string(m_role.principal.userId) + ")");
        } else if (m_role.daemon)
            m_ctx.hub.attachDaemon(m_role.principal.userId, m_role.daemonId, this->shared_from_this(),
                                   m_role.principal.credentialId);
        else {
            log::info("agent connected from " + m_remote + " (user " + std::to_string(m_role.principal.userId) +
                      ", credential " + std::to_string(m_role.principal.credentialId) + ")");
            m_ctx.hub.attachAgent(m_role.principal, this->shared_from_this());
        }
        doRead();
    }

    void doRead() {
        m_ws.async_read(m_buffer,
                        [self = this->shared_from_this()](beast::error_code ec, std::size_t) { self->onRead(ec); });
    }

    void onRead(beast::error_code ec) {
        if (ec) {
            onClosed(ec);
            return;
        }
        std::string text = beast::buffers_to_string(m_buffer.data());
        m_buffer.consume(m_buffer.size());
        auto self = this->shared_from_this();
        // A bug in routing one message costs that message, not this peer's
        // connection (nor, through ioc.run, every other one).
        try {
            if (m_role.instance) {
                if (m_ws.got_text())
                    m_ctx.hub.onInstanceText(m_role.principal.userId, m_role.daemonId, self, text);
                else
                    m_ctx.hub.onAgentBinary(self, std::move(text));
            } else if (!m_ws.got_text()) {
                if (m_role.daemon)
                    m_ctx.hub.onDaemonBinary(m_role.principal.userId, m_role.daemonId, std::move(text));
                else
                    m_ctx.hub.onAgentBinary(self, std::move(text));
            } else if (m_role.daemon) {
                m_ctx.hub.onDaemonText(m_role.principal.userId, m_role.daemonId, self, text);
            } else {
                m_ctx.hub.onAgentText(m_role.principal, self, text);
            }
        } catch (const std::exception& e) {
            log::error("internal error routing a message from " + m_remote + ", continuing: " + e.what());
        }
        doRead();
    }

    void onClosed(beast::error_code ec) {
        if (!m_open) return;
        m_open = false;
        std::string why = ec == websocket::error::closed ? "closed" : ec.message();
        if (m_role.instance) {
            m_ctx.hub.detachInstance(this);
            log::info("instance link from " + m_remote + " for daemon " + m_role.daemonId + " ended: " + why);
        } else if (m_role.daemon) {
            m_ctx.hub.detachDaemon(m_role.principal.userId, m_role.daemonId, this);
            log::debug("daemon " + m_role.daemonId + " link from " + m_remote + " ended: " + why);
        } else {
            m_ctx.hub.detachAgent(this);
            log::info("agent " + m_remote + " disconnected: " + why);
        }
        m_queue.clear();
    }

    void enqueue(std::string text, bool binary) {
        if (!m_open || m_closing) return;
        if (m_queue.size() >= kMaxQueuedFrames || m_queuedBytes + text.size() > kMaxQueuedBytes) {
            log::warning("peer " + m_remote + " is not reading; disconnecting it");
            m_queue.clear();
            m_queuedBytes = 0;
            beast::error_code ignored;
            beast::get_lowest_layer(m_ws).socket().close(ignored);
            return;
        }
        m_queuedBytes += text.size();
        m_queue.push_back(Frame{std::move(text), binary});
        if (m_queue.size() == 1) doWrite();
    }

    void doWrite() {
        m_cork.begin(beast::get_lowest_layer(m_ws).socket().native_handle(), m_queue.front().data.size());
        m_ws.binary(m_queue.front().binary);
        m_ws.async_write(asio::buffer(m_queue.front().data),
                         [self = this->shared_from_this()](beast::error_code ec, std::size_t) { self->onWrite(ec); });
    }

    void onWrite(beast::error_code ec) {
        if (ec) {
            m_queue.clear();
            m_queuedBytes = 0;
            return;  // the read side sees the failure and detaches
        }
        m_queuedBytes -= m_queue.front().data.size();
        m_queue.pop_front();
        m_cork.end(beast::get_lowest_layer(m_ws).socket().native_handle());
        if (!m_queue.empty()) doWrite();
    }

    websocket::stream<Stream> m_ws;
    Context& m_ctx;
    Role m_role;
    std::string m_remote;
    beast::flat_buffer m_buffer;
    struct Frame {
        std::string data;
        bool binary;
    };
    std::deque<Frame> m_queue;
    FrameCork m_cork;
    std::size_t m_queuedBytes = 0;
    bool m_open = false;
    bool m_closing = false;
};

// ------------------------------------------------------------------ HTTP

template <class Stream>
class HttpSession : public std::enable_shared_from_this<HttpSession<Stream>> {
public:
    HttpSession(Stream&& stream, Context& ctx, std::string remote)
        : m_stream(std::move(stream)), m_ctx(ctx), m_remote(std::move(remote)) {}

    void run() { doRead(); }

private:
    void doRead() {
        m_parser.emplace();
        m_parser->header_limit(16 * 1024);
        m_parser->body_limit(std::uint64_t{1024} * 1024);
        beast::get_lowest_layer(m_stream).expires_after(std::chrono::seconds(30));
        http::async_read_header(m_stream, m_buffer, *m_parser,
                                [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                                    if (ec) return self->onRead(ec);
                                    // A file written through MCP travels in the request, base64-encoded.
                                    if (self->isMcp(self->m_parser->get().target()))
                                        self->m_parser->body_limit(McpGateway::kMaxBodyBytes);
                                    http::async_read(self->m_stream, self->m_buffer, *self->m_parser,
                                                     [self](beast::error_code ec, std::size_t) { self->onRead(ec); });
                                });
    }

    bool isMcp(std::string_view target) const { return m_ctx.mcp && target.substr(0, target.find('?')) == "/mcp"; }

    void onRead(beast::error_code ec) {
        if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::eof) {
            gracefulClose(m_stream);
            return;
        }
        if (ec) {
            if (ec == http::error::body_limit || ec == http::error::header_limit) {
                // BAD_REQUEST on the wire; HTTP has a status of its own for it.
                auto res = errorResponse(ErrorCode::BadRequest, "request too large");
                res.status = static_cast<int>(http::status::payload_too_large);
                writeResponse(std::move(res), false);
            }
            return;
        }
        auto req = m_parser->release();
        if (websocket::is_upgrade(req)) {
            upgrade(std::move(req));
            return;
        }
        if (httpRoute(req.target()) == "/metrics") return serveMetrics(req);
        if (isMcp(req.target())) return forwardMcp(std::move(req));
        ApiRequest api{std::string(req.method_string()),
                       std::string(req.target()),
                       std::string(req[http::field::authorization]),
                       std::move(req.body()),
                       m_remote,
                       std::string(req[http::field::content_type]),
                       baseUrl(req[http::field::host])};
        auto started = std::chrono::steady_clock::now();
        auto answer = m_ctx.api.handle(api);
        m_ctx.hub.metrics().httpAnswered(api.method, api.target, answer.status, answer.body, secondsSince(started));
        writeResponse(std::move(answer), req.keep_alive());
    }

    // ---- /mcp: each request goes to the MCP gateway's thread for this
    // connection (through a UNIX socket pair), and its answer comes back
    // here, an event stream as it flows; other routes stay this session's.

    void forwardMcp(http::request<http::string_body> req, bool again = false) {
        if (!m_gateway && !openGateway())
            return writeResponse(errorResponse(ErrorCode::Limit, "too many MCP connections; try again later"), false);
        // Event streams stay open as long as the client wants them.
        beast::get_lowest_layer(m_stream).expires_never();
        m_responding = true;
        // While the answer is on its way, a client that hangs up is seen (its
        // call is cancelled); bytes it sends meanwhile are its next request.
        if (m_buffer.size() > 0)
            m_haveNext = true;
        else if (!m_watching)
            watchClient();
        auto shared = std::make_shared<http::request<http::string_body>>(std::move(req));
        http::async_write(
            *m_gateway, *shared, [self = this->shared_from_this(), shared, again](beast::error_code ec, std::size_t) {
                if (!ec) return self->relayHeader();
                // The gateway's thread ended this connection (idle): once more on a new one.
                self->m_gateway.reset();
                self->m_responding = false;
                if (again)
                    return self->writeResponse(errorResponse(ErrorCode::Unavailable, "MCP is not answering"), false);
                self->forwardMcp(std::move(*shared), true);
            });
    }

    bool openGateway() {
        int fds[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return false;
        m_gateway.emplace(m_stream.get_executor());
        beast::error_code ec;
        m_gateway->assign(asio::local::stream_protocol(), fds[0], ec);
        if (ec) ::close(fds[0]);
        if (ec || !m_ctx.mcp->serve(fds[1])) {
            if (ec) ::close(fds[1]);
            m_gateway.reset();
            return false;
        }
        m_gatewayBuffer.clear();
        return true;
    }

    void watchClient() {
        m_watching = true;
        m_stream.async_read_some(m_buffer.prepare(kMcpPieceBytes),
                                 [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
                                     self->m_watching = false;
                                     if (ec) {  // gone (or idle too long): the gateway's thread sees its end
                                         self->closeGateway();
                                         if (!self->m_responding) gracefulClose(self->m_stream);
                                         return;
                                     }
                                     self->m_buffer.commit(n);
                                     self->m_haveNext = true;
                                     if (!self->m_responding) self->nextRequest();
                                 });
    }

    void relayHeader() {
        m_piece.resize(kMcpPieceBytes);
        m_response.emplace();
        m_response->body_limit(boost::none);  // an event stream has no end known in advance
        http::async_read_header(*m_gateway, m_gatewayBuffer, *m_response,
                                [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                                    if (ec) return self->gatewayFailed();
                                    self->m_serializer.emplace(self->m_response->get());
                                    http::async_write_header(self->m_stream, *self->m_serializer,
                                                             [self](beast::error_code ec, std::size_t) {
                                                                 if (ec) return self->closeAll();
                                                                 self->relayBody();
                                                             });
                                });
    }

    /// One piece of the answer's body read from the gateway, then written.
    void relayBody() {
        auto& body = m_response->get().body();
        if (m_response->is_done()) {
            body.data = nullptr;
            body.size = 0;
            body.more = false;
            return writeBody();
        }
        body.data = m_piece.data();
        body.size = m_piece.size();
        http::async_read_some(*m_gateway, m_gatewayBuffer, *m_response,
                              [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                                  if (ec == http::error::need_buffer) ec = {};
                                  if (ec) return self->closeAll();
                                  auto& body = self->m_response->get().body();
                                  body.size = self->m_piece.size() - body.size;
                                  body.data = self->m_piece.data();
                                  body.more = !self->m_response->is_done();
                                  self->writeBody();
                              });
    }

    void writeBody() {
        http::async_write(m_stream, *m_serializer,
                          [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                              if (ec == http::error::need_buffer) ec = {};
                              if (ec) return self->closeAll();
                              if (!self->m_serializer->is_done()) return self->relayBody();
                              self->responded();
                          });
    }

    void responded() {
        bool keepAlive = m_response->get().keep_alive();
        m_serializer.reset();
        m_response.reset();
        m_responding = false;
        if (!keepAlive) {
            closeGateway();
            gracefulClose(m_stream);
        } else if (m_haveNext || !m_watching) {
            nextRequest();
        } else {
            // The pending watch is the wait for the next request.
            beast::get_lowest_layer(m_stream).expires_after(std::chrono::seconds(kMcpIdleSeconds));
        }
    }

    void nextRequest() {
        m_haveNext = false;
        doRead();
    }

    /// The gateway ended the connection before it answered.
    void gatewayFailed() {
        m_responding = false;
        closeGateway();
        writeResponse(errorResponse(ErrorCode::Unavailable, "MCP is not answering"), false);
    }

    void closeGateway() {
        beast::error_code ignored;
        if (m_gateway) m_gateway->close(ignored);
        m_gateway.reset();
    }

    void closeAll() {
        closeGateway();
        beast::error_code ignored;
        beast::get_lowest_layer(m_stream).socket().close(ignored);
    }

    static constexpr std::size_t kMcpPieceBytes = std::size_t{16} * 1024;
    /// How long an MCP client's connection may idle between requests.
    static constexpr int kMcpIdleSeconds = 300;

    /// GET /metrics (docs/metrics.md): who may read it is MetricsAccess's call.
    void serveMetrics(const http::request<http::string_body>& req) {
        auto started = std::chrono::steady_clock::now();
        ApiResponse answer;
        const char* type = "application/json";
        auto refused = checkScrape(m_ctx.config.metrics, fromLoopback(), req[http::field::authorization]);
        if (req.method() != http::verb::get) {
            answer = errorResponse(ErrorCode::BadRequest, "use GET");
            answer.status = static_cast<int>(http::status::method_not_allowed);
        } else if (refused == ErrorCode::NotFound) {
            answer = errorResponse(*refused, "metrics are off (hpc-relay --no-metrics)");
        } else if (refused == ErrorCode::NotOwner) {
            answer = errorResponse(*refused,
                                   "metrics are served to loopback clients only; start hpc-relay with "
                                   "--metrics-token-file to let others scrape with that token");
        } else if (refused) {
            answer = errorResponse(*refused, "GET /metrics needs the bearer token of hpc-relay --metrics-token-file");
        } else {
            answer.body = m_ctx.hub.renderMetrics();
            type = "text/plain; version=0.0.4; charset=utf-8";
        }
        m_ctx.hub.metrics().httpAnswered(req.method_string(), "/metrics", answer.status, answer.body,
                                         secondsSince(started));
        answer.contentType = type;
        writeResponse(std::move(answer), req.keep_alive());
    }

    bool fromLoopback() {
        beast::error_code ec;
        auto address = beast::get_lowest_layer(m_stream).socket().remote_endpoint(ec).address();
        if (ec) return false;
        if (address.is_v6() && address.to_v6().is_v4_mapped())
            return asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6()).is_loopback();
        return address.is_loopback();
    }

    static double secondsSince(std::chrono::steady_clock::time_point t) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    }

    void upgrade(http::request<http::string_body> req) {
        std::string path(req.target().substr(0, req.target().find('?')));
        typename WsSession<Stream>::Role role;
        if (path.rfind(kClusterPrefix, 0) == 0 && !m_ctx.config.cluster.url.empty())
            return upgradeInstanceLink(std::move(req), path);
        auto who = m_ctx.api.authenticate(std::string(req[http::field::authorization]));
        static const std::string kDaemonPrefix = "/hpc/daemons/";
        static const std::string kDaemonSuffix = "/ws";
        if (path == "/hpc/agent/ws") {
            if (!who)
                return writeResponse(m_ctx.api.refuseBearer(std::string(req[http::field::authorization]),
                                                            "a valid bearer token or API key is required"),
                                     false);
        } else if (path.rfind(kDaemonPrefix, 0) == 0 && path.size() > kDaemonPrefix.size() + kDaemonSuffix.size() &&
                   path.compare(path.size() - kDaemonSuffix.size(), kDaemonSuffix.size(), kDaemonSuffix) == 0) {
            role.daemon = true;
            role.daemonId =
                path.substr(kDaemonPrefix.size(), path.size() - kDaemonPrefix.size() - kDaemonSuffix.size());
            if (!isValidDaemonId(role.daemonId)) return reject(ErrorCode::BadRequest, "invalid daemon id");
            if (!who || who->kind != "api_key") {
                log::warning("daemon " + role.daemonId + " from " + m_remote + " refused: bad or missing API key");
                return reject(ErrorCode::Unauthorized, "a valid API key is required");
            }
            // Registration is what makes a daemon id the user's.
            if (!m_ctx.api.isRegistered(who->userId, role.daemonId))
                return reject(ErrorCode::NotFound,
                              "daemon " + role.daemonId + " is not registered; run hpc-daemonctl setup");
            if (!m_ctx.api.mayActFor(*who, role.daemonId, false))
                return reject(ErrorCode::NotOwner, "this API key is not daemon " + role.daemonId + "'s");
        } else {
            // Quoted back in JSON: only printable ASCII of it.
            std::string shown = path.substr(0, 200);
            std::replace_if(
                shown.begin(), shown.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
            return reject(ErrorCode::NotFound, "no WebSocket route " + shown);
        }
        role.principal = *who;
        auto session = std::make_shared<WsSession<Stream>>(std::move(m_stream), m_ctx, std::move(role), m_remote);
        session->accept(std::move(req));
    }

    static constexpr std::string_view kClusterPrefix = "/hpc/cluster/";

    /// /hpc/cluster/USER/DAEMON/ws: another instance's link for a daemon
    /// connected here, with the cluster's secret as its bearer.
    void upgradeInstanceLink(http::request<http::string_body> req, const std::string& path) {
        std::string expected = "Bearer " + m_ctx.config.cluster.secret.reveal();
        std::string_view given = req[http::field::authorization];
        if (given.size() != expected.size() || CRYPTO_memcmp(given.data(), expected.data(), given.size()) != 0) {
            log::warning("instance link from " + m_remote + " refused: wrong or missing cluster secret");
            return reject(ErrorCode::Unauthorized, "the cluster's secret is required");
        }
        auto rest = path.substr(kClusterPrefix.size());
        auto slash = rest.find('/');
        typename WsSession<Stream>::Role role;
        role.instance = true;
        std::int64_t userId = 0;
        if (slash != std::string::npos) {
            auto user = rest.substr(0, slash);
            auto [end, ec] = std::from_chars(user.data(), user.data() + user.size(), userId);
            if (ec != std::errc() || end != user.data() + user.size() || userId <= 0) slash = std::string::npos;
        }
        static constexpr std::string_view kSuffix = "/ws";
        if (slash == std::string::npos || rest.size() <= slash + 1 + kSuffix.size() || !rest.ends_with(kSuffix))
            return reject(ErrorCode::BadRequest, "an instance link's path is /hpc/cluster/USER/DAEMON/ws");
        role.daemonId = rest.substr(slash + 1, rest.size() - slash - 1 - kSuffix.size());
        if (!isValidDaemonId(role.daemonId)) return reject(ErrorCode::BadRequest, "invalid daemon id");
        if (!m_ctx.hub.connectedHere(userId, role.daemonId))
            return reject(ErrorCode::NotFound, "daemon " + role.daemonId + " is not connected to this instance");
        role.principal.userId = userId;
        auto session = std::make_shared<WsSession<Stream>>(std::move(m_stream), m_ctx, std::move(role), m_remote);
        session->accept(std::move(req));
    }

    /// Refuses an upgrade with a plain HTTP error answer (docs/protocol.md, 2).
    void reject(ErrorCode code, std::string message) { writeResponse(errorResponse(code, std::move(message)), false); }

    /// This relay as the client names it: its scheme and the Host header
    /// (the listening address when Host is missing or not a plain name).
    std::string baseUrl(std::string_view host) const {
        std::string scheme = std::is_same_v<Stream, TlsStream> ? "https://" : "http://";
        if (isPlainHost(host)) return scheme + std::string(host);
        beast::error_code ec;
        auto local = beast::get_lowest_layer(m_stream).socket().local_endpoint(ec);
        return scheme +
               (ec ? std::string("localhost") : local.address().to_string() + ":" + std::to_string(local.port()));
    }

    void writeResponse(ApiResponse answer, bool keepAlive) {
        auto res = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(answer.status), 11);
        res->set(http::field::server, "hpc-relay/" HPC_VERSION);
        res->set(http::field::content_type, answer.contentType);
        for (const auto& [name, value] : answer.headers) res->set(name, value);
        res->keep_alive(keepAlive);
        res->body() = std::move(answer.body);
        res->prepare_payload();
        http::async_write(m_stream, *res,
                          [self = this->shared_from_this(), res, keepAlive](beast::error_code ec, std::size_t) {
                              if (ec || !keepAlive) {
                                  gracefulClose(self->m_stream);
                                  return;
                              }
                              self->doRead();
                          });
    }

    Stream m_stream;
    Context& m_ctx;
    std::string m_remote;
    beast::flat_buffer m_buffer;
    std::optional<http::request_parser<http::string_body>> m_parser;
    // /mcp
    std::optional<asio::local::stream_protocol::socket> m_gateway;
    beast::flat_buffer m_gatewayBuffer;
    std::optional<http::response_parser<http::buffer_body>> m_response;
    std::optional<http::serializer<false, http::buffer_body>> m_serializer;
    std::vector<char> m_piece;  ///< sized when first used
    bool m_responding = false;  ///< an answer from the gateway is on its way
    bool m_watching = false;    ///< a read of the client is pending
    bool m_haveNext = false;    ///< m_buffer holds the start of the next request
};

// -------------------------------------------------------------- listener

class Listener : public std::enable_shared_from_this<Listener> {
public:
    Listener(asio::io_context& ioc, ssl::context* tls, Context& ctx, const tcp::endpoint& ep)
        : m_ioc(ioc), m_tls(tls), m_ctx(ctx), m_acceptor(ioc) {
        m_acceptor.open(ep.protocol());
        m_acceptor.set_option(asio::socket_base::reuse_address(true));
        beast::error_code ec;
        m_acceptor.bind(ep, ec);
        if (ec)
            throw std::runtime_error("cannot listen on " + ep.address().to_string() + ":" + std::to_string(ep.port()) +
                                     ": " + ec.message());
        m_acceptor.listen(asio::socket_base::max_listen_connections);
    }

    unsigned short port() const { return m_acceptor.local_endpoint().port(); }
    void start() { doAccept(); }
    void stop() {
        beast::error_code ec;
        m_acceptor.close(ec);
        m_retry.cancel();
    }

private:
    void doAccept() {
        m_acceptor.async_accept(m_ioc, [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
            if (ec == asio::error::operation_aborted) return;
            if (isResourceShortage(ec)) return self->pauseAccepting(ec);
            if (!ec) {
                if (self->m_pause != std::chrono::milliseconds::zero()) {
                    log::notice("accepting connections again");
                    self->m_ctx.api.setAcceptProblem({});
                }
                self->m_pause = std::chrono::milliseconds::zero();
                self->onAccept(std::move(socket));
            }
            self->doAccept();
        });
    }

    /// Out of descriptors (or kernel memory): the pending connection stays in
    /// the backlog and the listening socket stays readable, so accepting again
    /// at once would spin. Wait, doubling from 50 ms to 1 s, while the
    /// connections already open carry on.
    static bool isResourceShortage(const beast::error_code& ec) {
        return ec == asio::error::no_descriptors || ec == beast::error_code(ENFILE, beast::system_category()) ||
               ec == asio::error::no_buffer_space || ec == asio::error::no_memory;
    }

    void pauseAccepting(const beast::error_code& ec) {
        if (m_pause == std::chrono::milliseconds::zero()) {
            log::warning("cannot accept connections: " + ec.message() + "; retrying with backoff up to 1 s");
            m_ctx.api.setAcceptProblem(ec.message());
        }
        m_pause = std::clamp(m_pause * 2, std::chrono::milliseconds(50), std::chrono::milliseconds(1000));
        m_retry.expires_after(m_pause);
        m_retry.async_wait([self = shared_from_this()](beast::error_code ec) {
            if (!ec && self->m_acceptor.is_open()) self->doAccept();
        });
    }

    void onAccept(tcp::socket socket) {
        beast::error_code ec;
        socket.set_option(tcp::no_delay(true), ec);
        std::string remote = remoteOf(socket);
        if (!m_tls) {
            std::make_shared<HttpSession<PlainStream>>(PlainStream(std::move(socket)), m_ctx, remote)->run();
            return;
        }
        auto stream = std::make_shared<TlsStream>(std::move(socket), *m_tls);
        beast::get_lowest_layer(*stream).expires_after(std::chrono::seconds(15));
        stream->async_handshake(ssl::stream_base::server, [stream, remote, &ctx = m_ctx](beast::error_code ec) {
            if (ec) {
                log::debug("TLS handshake from " + remote + " failed: " + ec.message());
                return;
            }
            std::make_shared<HttpSession<TlsStream>>(std::move(*stream), ctx, remote)->run();
        });
    }

    asio::io_context& m_ioc;
    ssl::context* m_tls;
    Context& m_ctx;
    tcp::acceptor m_acceptor;
    asio::steady_timer m_retry{m_ioc};
    std::chrono::milliseconds m_pause{0};
};

/// This instance's end of a link to another, for one daemon connected
/// there: to the hub, that daemon's connection. Requests wait while it
/// connects; a link that fails or is refused ends (the hub looks for the
/// daemon again on the next request), it does not reconnect.
class InstanceLink : public Peer, public std::enable_shared_from_this<InstanceLink> {
public:
    InstanceLink(asio::io_context& ioc, Hub& hub, std::int64_t userId, std::string daemonId)
        : m_ioc(ioc), m_hub(hub), m_userId(userId), m_daemonId(std::move(daemonId)) {}

    void start(net::LinkConfig config) {
        net::LinkHandlers handlers;
        std::weak_ptr<InstanceLink> weak = shared_from_this();
        handlers.onText = [weak](std::string_view text) {
            if (auto self = weak.lock()) self->m_hub.onDaemonText(self->m_userId, self->m_daemonId, self, text);
        };
        handlers.onBinary = [weak](std::string_view data) {
            if (auto self = weak.lock())
                self->m_hub.onDaemonBinary(self->m_userId, self->m_daemonId, std::string(data));
        };
        handlers.onState = [weak](net::LinkState state) {
            if (auto self = weak.lock()) self->onState(state);
        };
        m_link = std::make_unique<net::Link>(m_ioc, std::move(config), std::move(handlers));
        m_link->start();
    }

    void sendText(std::string text) override { send(std::move(text), false); }
    void sendBinary(std::string data) override { send(std::move(data), true); }
    void close(std::string_view) override { end(); }
    bool isInstanceLink() const override { return true; }

private:
    static constexpr std::size_t kMaxWaiting = 4096;

    void send(std::string data, bool binary) {
        if (m_ended) return;
        if (!m_connected) {
            if (m_waiting.size() >= kMaxWaiting) return fail();
            m_waiting.emplace_back(std::move(data), binary);
            return;
        }
        if (!(binary ? m_link->sendBinary(std::move(data)) : m_link->sendText(std::move(data)))) fail();
    }

    void onState(net::LinkState state) {
        if (m_ended) return;
        if (state == net::LinkState::Connected) {
            m_connected = true;
            for (auto& [data, binary] : std::exchange(m_waiting, {})) send(std::move(data), binary);
        } else if (state == net::LinkState::Backoff || state == net::LinkState::Unauthorized) {
            fail();
        }
    }

    /// The link is down or too far behind: what is in flight fails (later:
    /// this may be called while the hub walks its routes).
    void fail() {
        if (m_ended) return;
        end();
        asio::post(m_ioc, [self = shared_from_this()] {
            self->m_hub.detachDaemon(self->m_userId, self->m_daemonId, self.get());
        });
    }

    void end() {
        if (m_ended) return;
        m_ended = true;
        m_waiting.clear();
        // Not from inside the link's own handler.
        asio::post(m_ioc, [self = shared_from_this()] { self->m_link->stop(); });
    }

    asio::io_context& m_ioc;
    Hub& m_hub;
    std::int64_t m_userId;
    std::string m_daemonId;
    std::unique_ptr<net::Link> m_link;
    std::vector<std::pair<std::string, bool>> m_waiting;
    bool m_connected = false;
    bool m_ended = false;
};

class InstanceLinks : public Cluster {
public:
    InstanceLinks(asio::io_context& ioc, Hub& hub, const ClusterConfig& config, std::string self)
        : m_ioc(ioc), m_hub(hub), m_config(config), m_self(std::move(self)) {}

    const std::string& self() const override { return m_self; }

    std::shared_ptr<Peer> open(const std::string& instance, std::int64_t userId, const std::string& daemonId) override {
        auto link = std::make_shared<InstanceLink>(m_ioc, m_hub, userId, daemonId);
        net::LinkConfig config;
        std::string error;
        auto url = parseUrl(instance, &error);
        if (!url) {
            log::error("instance " + instance + " has a bad URL in the database: " + error);
            url = Url{"https", "invalid.invalid", "443", ""};
        }
        config.url = *url;
        config.daemonId = daemonId;
        config.apiKey = m_config.secret;
        config.caFile = m_config.caFile;
        config.target = "/hpc/cluster/" + std::to_string(userId) + "/" + daemonId + "/ws";
        config.userAgent = "hpc-relay/" HPC_VERSION;
        config.name = "the link for daemon " + daemonId + " (user " + std::to_string(userId) + ")";
        config.describeRefusal = [instance, daemonId](unsigned status) {
            return status == 404 ? "daemon " + daemonId + " is not connected to " + instance + " any more"
                                 : instance + " refused this instance's link (HTTP " + std::to_string(status) +
                                       "): are both given the same --cluster-secret-file?";
        };
        config.heartbeat = std::chrono::seconds(10);
        config.connectTimeout = std::chrono::seconds(10);
        link->start(std::move(config));
        return link;
    }

private:
    asio::io_context& m_ioc;
    Hub& m_hub;
    const ClusterConfig& m_config;
    std::string m_self;
};

/// The cluster URL with the port this instance listens on when it names none.
std::string clusterUrlWithPort(const std::string& url, unsigned short port) {
    auto authority = url.find("://");
    authority = authority == std::string::npos ? 0 : authority + 3;
    auto end = url.find('/', authority);
    std::string hostPort = url.substr(authority, end == std::string::npos ? std::string::npos : end - authority);
    auto colon = hostPort.rfind(':');
    if (colon != std::string::npos && hostPort.find(']', colon) == std::string::npos) return url;
    std::string out = url;
    out.insert(end == std::string::npos ? out.size() : end, ":" + std::to_string(port));
    return out;
}

void writePortFile(const std::string& path, unsigned short port) {
    std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << port << "\n";
        if (!out) throw std::runtime_error("cannot write port file " + path);
    }
    std::filesystem::rename(tmp, path);
}

}  // namespace

int runServer(const ServerConfig& config, Api& api, Hub& hub) {
    beast::error_code ec;
    auto address = asio::ip::make_address(config.listen, ec);
    if (ec) throw std::runtime_error("--listen must be an IP address, got \"" + config.listen + "\"");
    std::unique_ptr<ssl::context> tls;
    if (config.plainHttp) {
        if (!address.is_loopback())
            throw std::runtime_error("plain HTTP is allowed only on a loopback address, not " + config.listen);
    } else {
        if (config.certFile.empty() || config.keyFile.empty())
            throw std::runtime_error("--cert and --key are required (or --insecure-http on a loopback address)");
        tls = std::make_unique<ssl::context>(ssl::context::tls_server);
        tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                         ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
        tls->use_certificate_chain_file(config.certFile, ec);
        if (ec) throw std::runtime_error("cannot load certificate " + config.certFile + ": " + ec.message());
        tls->use_private_key_file(config.keyFile, ssl::context::pem, ec);
        if (ec) throw std::runtime_error("cannot load key " + config.keyFile + ": " + ec.message());
    }

    asio::io_context ioc(1);
    std::unique_ptr<McpGateway> mcp;
    if (config.mcp.enabled) {
        McpGatewayOptions options;
        options.allowedOrigins = config.mcp.allowedOrigins;
        options.scheme = tls ? "https" : "http";
        mcp = std::make_unique<McpGateway>(ioc, api, hub, std::move(options));
    }
    Context ctx{api, hub, config, mcp.get()};
    auto listener = std::make_shared<Listener>(ioc, tls.get(), ctx, tcp::endpoint(address, config.port));
    listener->start();
    if (!config.portFile.empty()) writePortFile(config.portFile, listener->port());
    if (config.readyFd >= 0) {
        std::string line = std::to_string(listener->port()) + "\n";
        bool written = ::write(config.readyFd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
        ::close(config.readyFd);
        if (!written) throw std::runtime_error("cannot write the port to --ready-fd " + std::to_string(config.readyFd));
    }
    std::string listening =
        std::string(tls ? "https" : "http") + "://" + config.listen + ":" + std::to_string(listener->port());
    log::notice(std::string("hpc-relay ") + HPC_VERSION + " listening on " + listening);
    // Under systemd (Type=notify): started once it listens. Nothing without NOTIFY_SOCKET.
    sd_notify(0, ("READY=1\nSTATUS=listening on " + listening).c_str());

    std::unique_ptr<InstanceLinks> cluster;
    asio::steady_timer clusterTimer(ioc);
    std::function<void()> clusterTick;
    if (!config.cluster.url.empty()) {
        cluster = std::make_unique<InstanceLinks>(ioc, hub, config.cluster,
                                                  clusterUrlWithPort(config.cluster.url, listener->port()));
        hub.setCluster(cluster.get());
        clusterTick = [&clusterTimer, &hub, &clusterTick] {
            clusterTimer.expires_after(std::chrono::seconds(1));
            clusterTimer.async_wait([&hub, &clusterTick](beast::error_code ec) {
                if (ec) return;
                hub.clusterTick();
                clusterTick();
            });
        };
        clusterTick();
    }

    asio::signal_set signals(ioc, SIGINT, SIGTERM);
    asio::steady_timer shutdownTimer(ioc);
    signals.async_wait([&ioc, &hub, &shutdownTimer, &clusterTimer, &mcp, listener](beast::error_code, int sig) {
        log::notice(std::string("received ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") + ", stopping");
        sd_notify(0, "STOPPING=1");
        listener->stop();
        // MCP calls are cancelled; the relay's thread cannot wait for them (they wait for it).
        if (mcp) mcp->shutdown(std::chrono::milliseconds(0));
        clusterTimer.cancel();
        hub.closeAll();
        // Give close frames a moment to leave, never longer.
        shutdownTimer.expires_after(std::chrono::milliseconds(300));
        shutdownTimer.async_wait([&ioc](beast::error_code) { ioc.stop(); });
    });
    // Each chain catches its own errors; this is the last guard, so one
    // missed does not stop every user's connections.
    for (;;) {
        try {
            ioc.run();
            break;
        } catch (const std::exception& e) {
            log::error(std::string("internal error, continuing: ") + e.what());
        }
    }
    // Sessions still referenced by the hub use this io_context: drop them now.
    hub.closeAll();
    hub.setCluster(nullptr);
    return 0;
}

}  // namespace hpc::relay
