// The platform link. The daemon's only Beast translation unit.
#include "link.hpp"

#include "log.hpp"
#include "protocol.hpp"
#include "proxy_tunnel.hpp"
#include "tcp_cork.hpp"
#include "tls_client.hpp"

#include <openssl/ssl.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include <deque>
#include <variant>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace hpc::net {

std::string_view toString(LinkState state) {
    switch (state) {
        case LinkState::Connecting:
            return "connecting";
        case LinkState::Connected:
            return "connected";
        case LinkState::Backoff:
            return "backoff";
        case LinkState::Unauthorized:
            return "unauthorized";
        case LinkState::Stopping:
            return "stopping";
    }
    return "unknown";
}

namespace {

using TlsWs = websocket::stream<beast::ssl_stream<beast::tcp_stream>>;
using PlainWs = websocket::stream<beast::tcp_stream>;

struct Outgoing {
    std::string data;
    bool binary = false;
    std::int64_t channel = -1;  ///< PTY output frames: their channel, for coalescing
};

constexpr std::size_t kMaxCoalescedFrame = 1 << 20;

/// One connection attempt and, once up, the connection. Handlers hold it by
/// shared_ptr so the stream outlives every operation started on it.
struct Conn {
    std::variant<std::unique_ptr<TlsWs>, std::unique_ptr<PlainWs>> ws;
    beast::flat_buffer readBuffer;
    std::deque<Outgoing> queue;
    std::size_t queuedBytes = 0;
    FrameCork cork;
    bool open = false;
    bool dead = false;

    template <class F>
    decltype(auto) visit(F&& f) {
        return std::visit([&f](auto& p) -> decltype(auto) { return f(*p); }, ws);
    }
    beast::tcp_stream& tcpStream() {
        return visit([](auto& s) -> beast::tcp_stream& { return beast::get_lowest_layer(s); });
    }
};

}  // namespace

struct Link::Impl : std::enable_shared_from_this<Link::Impl> {
    Impl(asio::io_context& ioc, LinkConfig config, LinkHandlers handlers)
        : ioc(ioc),
          config(std::move(config)),
          handlers(std::move(handlers)),
          tls(ssl::context::tls_client),
          resolver(ioc),
          retryTimer(ioc),
          heartbeatTimer(ioc),
          backoff(this->config.backoffBase, this->config.backoffCap) {}

    asio::io_context& ioc;
    LinkConfig config;
    LinkHandlers handlers;
    ssl::context tls;
    tcp::resolver resolver;
    asio::steady_timer retryTimer;
    asio::steady_timer heartbeatTimer;
    Backoff backoff;
    std::shared_ptr<Conn> conn;
    LinkState state = LinkState::Connecting;
    bool stopped = false;
    double connectedSince = 0;
    Clock::time_point lastReceived;
    std::uint64_t pingSeq = 0;
    bool tlsReady = false;
    bool routeLogged = false;
    std::string lastFailure;  ///< the cause last logged as a warning; "" once connected

    void setState(LinkState s) {
        if (s == state) return;
        state = s;
        if (handlers.onState) handlers.onState(s);
    }

    void prepareTls() {
        if (auto ec = hpc::tls::configureClient(tls, config.caFile))
            log::error("cannot load CA certificates " + config.caFile + ": " + ec.message());
        tlsReady = true;
    }

    // ---- the connect chain: one handler per step ----

    const ProxyEndpoint* proxy() const { return config.route.proxy ? &*config.route.proxy : nullptr; }
    std::string via() const { return proxy() ? " via proxy " + proxy()->display() : std::string(); }

    void connect() {
        if (stopped) return;
        if (config.url.tls() && !tlsReady) prepareTls();
        if (!routeLogged) {
            routeLogged = true;
            log::info("route to " + config.url.str() + ": " + config.route.describe());
        }
        setState(LinkState::Connecting);
        auto c = std::make_shared<Conn>();
        if (config.url.tls())
            c->ws = std::make_unique<TlsWs>(ioc, tls);
        else
            c->ws = std::make_unique<PlainWs>(ioc);
        conn = c;
        const std::string& host = proxy() ? proxy()->host : config.url.host;
        const std::string& port = proxy() ? proxy()->port : config.url.port;
        resolver.async_resolve(
            host, port, [self = shared_from_this(), c](beast::error_code ec, const tcp::resolver::results_type& r) {
                self->onResolve(c, ec, r);
            });
    }

    void onResolve(const std::shared_ptr<Conn>& c, beast::error_code ec, const tcp::resolver::results_type& results) {
        if (c != conn) return;
        if (ec) return fail(c, proxy() ? "resolve the proxy " + proxy()->host : "resolve " + config.url.host, ec);
        c->tcpStream().expires_after(config.connectTimeout);
        c->tcpStream().async_connect(
            results,
            [self = shared_from_this(), c](beast::error_code ec, const tcp::endpoint&) { self->onConnect(c, ec); });
    }

    void onConnect(const std::shared_ptr<Conn>& c, beast::error_code ec) {
        if (c != conn) return;
        if (ec) return fail(c, proxy() ? "connect to the proxy" : "connect", ec);
        beast::error_code ignored;
        c->tcpStream().socket().set_option(tcp::no_delay(true), ignored);
        if (!proxy()) return startTls(c);
        c->tcpStream().expires_after(config.connectTimeout);
        proxy::asyncOpenTunnel(c->tcpStream(), *proxy(), config.url.host, config.url.port,
                               [self = shared_from_this(), c](beast::error_code ec, const std::string& refused) {
                                   self->onTunnel(c, ec, refused);
                               });
    }

    void onTunnel(const std::shared_ptr<Conn>& c, beast::error_code ec, const std::string& refused) {
        if (c != conn) return;
        if (ec) return fail(c, "CONNECT through the proxy", ec);
        if (!refused.empty()) return fail(c, "CONNECT", beast::error_code{}, refused);
        startTls(c);
    }

    void startTls(const std::shared_ptr<Conn>& c) {
        if (auto* tlsWs = std::get_if<std::unique_ptr<TlsWs>>(&c->ws)) {
            auto& stream = (*tlsWs)->next_layer();
            if (!hpc::tls::expectPeer(stream, config.url.host))
                return fail(c, "TLS setup", beast::error_code{}, "cannot set SNI");
            c->tcpStream().expires_after(config.connectTimeout);
            stream.async_handshake(ssl::stream_base::client, [self = shared_from_this(), c](beast::error_code ec) {
                self->onTlsHandshake(c, ec);
            });
            return;
        }
        onTlsHandshake(c, {});
    }

    void onTlsHandshake(const std::shared_ptr<Conn>& c, beast::error_code ec) {
        if (c != conn) return;
        if (ec) return fail(c, "TLS handshake", ec);
        c->tcpStream().expires_never();
        auto response = std::make_shared<websocket::response_type>();
        c->visit([&](auto& ws) {
            websocket::stream_base::timeout t{};
            t.handshake_timeout = config.connectTimeout;
            t.idle_timeout = websocket::stream_base::none();
            t.keep_alive_pings = false;
            ws.set_option(t);
            ws.read_message_max(16 * 1024 * 1024);
            // A client masks what it sends, through a buffer of this size:
            // Beast's 4 KiB default cut PTY output into 4 KiB TLS writes.
            ws.write_buffer_bytes(256 * 1024);
            ws.auto_fragment(false);
            ws.set_option(websocket::stream_base::decorator(
                [key = config.apiKey, userAgent = config.userAgent](websocket::request_type& req) {
                    req.set(http::field::authorization, "Bearer " + key.reveal());
                    req.set(http::field::user_agent, userAgent);
                }));
            std::string host =
                config.url.host.find(':') != std::string::npos ? "[" + config.url.host + "]" : config.url.host;
            ws.async_handshake(
                *response, host + ":" + config.url.port,
                config.url.path + (config.target.empty() ? "/hpc/daemons/" + config.daemonId + "/ws" : config.target),
                [self = shared_from_this(), c, response](beast::error_code ec) {
                    self->onWsHandshake(c, ec, *response);
                });
        });
    }

    void onWsHandshake(const std::shared_ptr<Conn>& c, beast::error_code ec, const websocket::response_type& res) {
        if (c != conn) return;
        if (ec) {
            auto status = res.result_int();
            if (status == 401 || status == 403 || status == 404) return unauthorized(c, status);
            return fail(c, "WebSocket upgrade" + (status ? " (HTTP " + std::to_string(status) + ")" : std::string()),
                        ec);
        }
        c->open = true;
        backoff.reset();
        lastFailure.clear();
        connectedSince = nowEpochSeconds();
        lastReceived = Clock::now();
        log::notice("connected to " + config.url.str() + via() + " as " +
                    (config.name.empty() ? "daemon " + config.daemonId : config.name));
        setState(LinkState::Connected);
        boost::json::object hello = config.hello;
        hello["daemon_id"] = config.daemonId;
        enqueue(c, Outgoing{protocol::makeMessage("hello", "hello-" + std::to_string(++pingSeq), hello), false});
        doRead(c);
        armHeartbeat(c);
    }

    // ---- steady state ----

    void doRead(const std::shared_ptr<Conn>& c) {
        c->visit([&](auto& ws) {
            ws.async_read(c->readBuffer,
                          [self = shared_from_this(), c](beast::error_code ec, std::size_t) { self->onRead(c, ec); });
        });
    }

    void onRead(const std::shared_ptr<Conn>& c, beast::error_code ec) {
        if (c != conn) return;
        if (ec) return fail(c, "read", ec);
        lastReceived = Clock::now();
        bool text = c->visit([](auto& ws) { return ws.got_text(); });
        std::string data = beast::buffers_to_string(c->readBuffer.data());
        c->readBuffer.consume(c->readBuffer.size());
        // A handler that throws is a bug: the message is lost, the link is not
        // (no reconnect, the next read goes on).
        try {
            if (text) {
                if (handlers.onText) handlers.onText(data);
            } else if (handlers.onBinary) {
                handlers.onBinary(data);
            }
        } catch (const std::exception& e) {
            log::error(std::string("internal error handling a message from the platform, continuing: ") + e.what());
        }
        if (c == conn && c->open) doRead(c);
    }

    void armHeartbeat(const std::shared_ptr<Conn>& c) {
        heartbeatTimer.expires_after(config.heartbeat);
        heartbeatTimer.async_wait([self = shared_from_this(), c](beast::error_code ec) {
            if (ec || c != self->conn || !c->open) return;
            auto silent = Clock::now() - self->lastReceived;
            if (silent > 3 * self->config.heartbeat) {
                auto secs = std::chrono::duration_cast<std::chrono::seconds>(silent).count();
                self->fail(c, "heartbeat", beast::error_code{},
                           "nothing received for " + std::to_string(secs) + " s: the link is dead");
                return;
            }
            self->enqueue(c, Outgoing{protocol::makeMessage("ping", "ping-" + std::to_string(++self->pingSeq)), false});
            self->armHeartbeat(c);
        });
    }

    bool enqueue(const std::shared_ptr<Conn>& c, Outgoing out) {
        if (!c || !c->open || c->dead) return false;
        if (c->queue.size() >= config.maxQueuedFrames || c->queuedBytes + out.data.size() > config.maxQueuedBytes)
            return false;
        c->queuedBytes += out.data.size();
        c->queue.push_back(std::move(out));
        if (c->queue.size() == 1) doWrite(c);
        return true;
    }

    void doWrite(const std::shared_ptr<Conn>& c) {
        c->cork.begin(c->tcpStream().socket().native_handle(), c->queue.front().data.size());
        c->visit([&](auto& ws) {
            ws.binary(c->queue.front().binary);
            ws.async_write(asio::buffer(c->queue.front().data),
                           [self = shared_from_this(), c](beast::error_code ec, std::size_t) { self->onWrite(c, ec); });
        });
    }

    void onWrite(const std::shared_ptr<Conn>& c, beast::error_code ec) {
        if (ec) {
            c->queue.clear();
            c->queuedBytes = 0;
            if (c == conn) fail(c, "write", ec);
            return;
        }
        c->queuedBytes -= c->queue.front().data.size();
        c->queue.pop_front();
        c->cork.end(c->tcpStream().socket().native_handle());
        if (!c->queue.empty()) doWrite(c);
    }

    // ---- failure and retry ----

    void teardown(const std::shared_ptr<Conn>& c) {
        c->open = false;
        c->dead = true;
        c->queue.clear();
        c->queuedBytes = 0;
        beast::error_code ignored;
        c->tcpStream().socket().close(ignored);
        heartbeatTimer.cancel();
        connectedSince = 0;
    }

    void fail(const std::shared_ptr<Conn>& c, const std::string& step, beast::error_code ec, std::string why = {}) {
        if (c != conn || stopped) return;
        bool wasOpen = c->open;
        teardown(c);
        conn.reset();
        if (why.empty()) why = ec.message();
        auto delay = backoff.next();
        // One warning per cause: a proxy or platform that stays down does not
        // fill the journal; the retries go on at debug level.
        std::string cause = std::string(wasOpen ? "link to " : "cannot connect to ") + config.url.str() + via() + ": " +
                            step + ": " + why;
        std::string line = cause + "; retrying in " + std::to_string(delay.count()) + " ms";
        if (cause == lastFailure) {
            log::debug(line);
        } else {
            log::warning(line);
            lastFailure = cause;
        }
        setState(LinkState::Backoff);
        scheduleRetry(delay);
    }

    /// A refusal that retrying will not fix (a revoked or replaced key, a
    /// deleted registration): the link stops until a reload gives it a new
    /// key, or, when configured, retries after a long wait.
    void unauthorized(const std::shared_ptr<Conn>& c, unsigned status) {
        teardown(c);
        conn.reset();
        if (config.describeRefusal) {
            lastFailure = config.describeRefusal(status);
            log::info(lastFailure);
            setState(LinkState::Unauthorized);
            return;
        }
        lastFailure = status == 404 ? "the platform does not know daemon " + config.daemonId +
                                          " (HTTP 404): it was unregistered, or never registered; run hpc-daemonctl "
                                          "setup to register it"
                                    : "the platform refused this daemon's API key (HTTP " + std::to_string(status) +
                                          "): it was revoked or replaced; run hpc-daemonctl setup to get a new key";
        if (config.unauthorizedDelay.count() <= 0) {
            log::error(lastFailure + "; not retrying until the daemon is reloaded or restarted");
            setState(LinkState::Unauthorized);
            return;
        }
        std::uniform_int_distribution<long long> jitter(0, config.unauthorizedDelay.count());
        std::mt19937_64 rng(std::random_device{}());
        auto delay = config.unauthorizedDelay + std::chrono::milliseconds(jitter(rng));
        log::error(lastFailure + "; retrying in " + std::to_string(delay.count() / 1000) + " s");
        setState(LinkState::Unauthorized);
        scheduleRetry(delay);
    }

    void scheduleRetry(std::chrono::milliseconds delay) {
        retryTimer.expires_after(delay);
        retryTimer.async_wait([self = shared_from_this()](beast::error_code ec) {
            if (!ec) self->connect();
        });
    }

    void stop() {
        if (stopped) return;
        stopped = true;
        setState(LinkState::Stopping);
        retryTimer.cancel();
        heartbeatTimer.cancel();
        resolver.cancel();
        if (auto c = std::exchange(conn, nullptr)) {
            if (c->open) {
                c->open = false;
                c->visit([&](auto& ws) {
                    ws.async_close(websocket::close_code::going_away, [c](beast::error_code) {
                        beast::error_code ignored;
                        c->tcpStream().socket().close(ignored);
                    });
                });
                // Bound the close handshake: a dead peer must not hold shutdown.
                c->tcpStream().expires_after(std::chrono::seconds(2));
            } else {
                beast::error_code ignored;
                c->tcpStream().socket().close(ignored);
            }
        }
    }
};

Link::Link(asio::io_context& ioc, LinkConfig config, LinkHandlers handlers)
    : m_impl(std::make_shared<Impl>(ioc, std::move(config), std::move(handlers))) {}

Link::~Link() {
    try {
        m_impl->stop();
    } catch (const std::exception& e) {
        log::error(std::string("stopping a link: ") + e.what());
    }
}

void Link::start() {
    asio::post(m_impl->ioc, [impl = m_impl] { impl->connect(); });
}
void Link::stop() { m_impl->stop(); }
bool Link::sendText(std::string text) { return m_impl->enqueue(m_impl->conn, Outgoing{std::move(text), false}); }
bool Link::sendBinary(std::string frame) { return m_impl->enqueue(m_impl->conn, Outgoing{std::move(frame), true}); }

bool Link::sendChannelData(std::uint32_t channel, const char* data, std::size_t size) {
    auto& c = m_impl->conn;
    if (!c || !c->open || c->dead) return false;
    // The front frame is being written; anything behind it may still grow.
    if (c->queue.size() >= 2) {
        auto& back = c->queue.back();
        if (back.channel == channel && back.data.size() + size <= kMaxCoalescedFrame &&
            c->queuedBytes + size <= m_impl->config.maxQueuedBytes) {
            back.data.append(data, size);
            c->queuedBytes += size;
            return true;
        }
    }
    return m_impl->enqueue(c, Outgoing{protocol::encodeChannelFrame(channel, std::string_view(data, size)), true,
                                       static_cast<std::int64_t>(channel)});
}
LinkState Link::state() const { return m_impl->state; }
std::string Link::route() const { return m_impl->config.route.describe(); }
std::string Link::problem() const { return m_impl->state == LinkState::Connected ? "" : m_impl->lastFailure; }
double Link::connectedSince() const { return m_impl->connectedSince; }

}  // namespace hpc::net
