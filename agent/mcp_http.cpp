// MCP's streamable HTTP transport: hpc-agent mcp --listen on loopback, and
// the relay's /mcp. One thread per connection, blocking I/O: every call
// already runs on a thread of its own.
#include "mcp_http.hpp"

#include "errors.hpp"
#include "log.hpp"
#include "util.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <netinet/in.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using Socket = asio::generic::stream_protocol::socket;
using namespace std::chrono_literals;

namespace hpc::agent {
namespace {

constexpr std::array<std::string_view, 3> kVersions = {"2025-11-25", "2025-06-18", "2025-03-26"};

/// A message for a stream; `id` numbers the GET stream's events (0: none).
struct Event {
    std::uint64_t id = 0;
    json::value msg;
};

/// The messages of one request (or of the GET stream), from the session's
/// threads to the connection's.
class Exchange {
public:
    void push(Event e) {
        std::lock_guard lock(m_lock);
        m_queue.push_back(std::move(e));
        m_changed.notify_one();
    }
    std::optional<Event> pop(std::chrono::milliseconds timeout) {
        std::unique_lock lock(m_lock);
        if (!m_changed.wait_for(lock, timeout, [this] { return !m_queue.empty(); })) return std::nullopt;
        auto e = std::move(m_queue.front());
        m_queue.pop_front();
        return e;
    }

private:
    std::mutex m_lock;
    std::condition_variable m_changed;
    std::deque<Event> m_queue;
};

/// One MCP session: its backend, its core, and where its messages go. The
/// core answers on whichever thread ran the call; route() hands each answer
/// (and each progress notification) to the connection waiting for it.
class HttpSession {
public:
    HttpSession(std::string owner, std::unique_ptr<mcp::Backend> backend, const mcp::SessionOptions& options)
        : m_owner(std::move(owner)),
          m_backend(std::move(backend)),
          m_session(std::make_unique<mcp::Session>(
              *m_backend, [this](const json::value& msg) { route(msg); }, options)) {}

    /// Where `request`'s answer will go: registered before the core sees it.
    std::shared_ptr<Exchange> open(const json::object& request) {
        auto exchange = std::make_shared<Exchange>();
        std::lock_guard lock(m_lock);
        auto key = json::serialize(request.at("id"));
        m_exchanges[key] = exchange;
        if (auto* params = request.if_contains("params"); params && params->is_object())
            if (auto* meta = params->get_object().if_contains("_meta"); meta && meta->is_object())
                if (auto* token = meta->get_object().if_contains("progressToken"))
                    m_progress[json::serialize(*token)] = key;
        return exchange;
    }
    void close(const json::object& request) {
        std::lock_guard lock(m_lock);
        auto key = json::serialize(request.at("id"));
        m_exchanges.erase(key);
        std::erase_if(m_progress, [&](const auto& p) { return p.second == key; });
    }
    /// The core takes messages one at a time; connections come on many threads.
    void receive(std::string_view text) {
        std::lock_guard lock(m_receiveLock);
        m_session->receive(text);
    }
    bool shutdown(std::chrono::milliseconds limit) {
        m_ended = true;
        return m_session->shutdown(limit);
    }
    /// Ended (DELETE, or evicted): its GET stream ends too.
    bool ended() const { return m_ended; }
    /// No call running and no request waiting: a session that may be evicted.
    bool idle() {
        std::lock_guard lock(m_lock);
        return m_exchanges.empty() && m_session->running() == 0;
    }
    void touch() { m_lastUsed = std::chrono::steady_clock::now(); }
    const std::string& owner() const { return m_owner; }
    std::chrono::steady_clock::time_point lastUsed() const { return m_lastUsed; }

private:
    void route(const json::value& msg) {
        const auto& o = msg.as_object();
        std::string key;
        if (auto* id = o.if_contains("id"); id && !o.contains("method")) {
            key = json::serialize(*id);
        } else if (auto* m = o.if_contains("method");
                   m && m->is_string() && m->get_string() == "notifications/progress") {
            std::lock_guard lock(m_lock);
            auto* token = o.at("params").as_object().if_contains("progressToken");
            if (auto it = token ? m_progress.find(json::serialize(*token)) : m_progress.end(); it != m_progress.end())
                key = it->second;
        }
        std::lock_guard lock(m_lock);
        if (auto it = m_exchanges.find(key); it != m_exchanges.end()) {
            it->second->push({0, msg});
        } else if (key.empty()) {
            // A notification for no request (a subscribed resource changed): numbered and
            // kept (Last-Event-ID), and on the GET stream when one is open.
            Event e{++m_lastEvent, msg};
            m_history.push_back(e);
            if (m_history.size() > kHistory) m_history.pop_front();
            if (m_standalone) m_standalone->push(std::move(e));
        }
    }

public:
    /// The session's GET stream, starting after event `after` (Last-Event-ID),
    /// or after the last one a GET stream sent; nullptr when one is open already.
    std::shared_ptr<Exchange> openStandalone(std::optional<std::uint64_t> after) {
        std::lock_guard lock(m_lock);
        if (m_standalone) return nullptr;
        m_standalone = std::make_shared<Exchange>();
        for (const auto& e : m_history)
            if (e.id > after.value_or(m_delivered)) m_standalone->push(e);
        return m_standalone;
    }
    /// Event `id` has been written to the GET stream.
    void delivered(std::uint64_t id) {
        std::lock_guard lock(m_lock);
        m_delivered = std::max(m_delivered, id);
    }
    void closeStandalone() {
        std::lock_guard lock(m_lock);
        m_standalone.reset();
    }

private:
    /// Events kept for a GET stream that reconnects with Last-Event-ID.
    static constexpr std::size_t kHistory = 256;
    std::atomic<bool> m_ended{false};
    std::shared_ptr<Exchange> m_standalone;
    std::deque<Event> m_history;
    std::uint64_t m_lastEvent = 0, m_delivered = 0;

    std::mutex m_lock;
    std::map<std::string, std::shared_ptr<Exchange>> m_exchanges;  ///< by request id, serialized
    std::map<std::string, std::string> m_progress;                 ///< progress token -> request id
    std::atomic<std::chrono::steady_clock::time_point> m_lastUsed{std::chrono::steady_clock::now()};
    std::mutex m_receiveLock;
    const std::string m_owner;
    // Destroyed first: the core waits for its calls, which route() into the maps above.
    std::unique_ptr<mcp::Backend> m_backend;
    std::unique_ptr<mcp::Session> m_session;
};

using Request = http::request<http::string_body>;

/// A connection, and the CORS headers every answer to its current request carries.
struct Conn {
    Socket socket;
    std::vector<std::pair<std::string, std::string>> cors;
};

std::string hostOf(std::string_view hostPort) {
    if (hostPort.starts_with('[')) {
        auto end = hostPort.find(']');
        return std::string(hostPort.substr(0, end == std::string_view::npos ? hostPort.size() : end + 1));
    }
    return std::string(hostPort.substr(0, hostPort.find(':')));
}

/// A JSON-RPC error with no id, as the body of an HTTP error.
std::string rpcErrorBody(int code, const std::string& message) {
    return json::serialize(
        json::object{{"jsonrpc", "2.0"}, {"id", nullptr}, {"error", {{"code", code}, {"message", message}}}});
}

}  // namespace

class McpHttpServer::Impl {
public:
    Impl(McpHttpOptions options, McpCaller loopbackCaller)
        : m_options(std::move(options)), m_loopbackCaller(std::move(loopbackCaller)) {}

    void serveConnection(Socket raw) {
        Conn socket{std::move(raw), {}};
        // A client silent for this long between requests is gone.
        timeval idle{300, 0};
        ::setsockopt(socket.socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
        beast::flat_buffer buffer;
        for (;;) {
            http::request_parser<http::string_body> parser;
            parser.body_limit(m_options.maxBodyBytes);
            beast::error_code ec;
            http::read(socket.socket, buffer, parser, ec);
            if (ec == http::error::body_limit) {
                reply(socket, 413, {},
                      rpcErrorBody(mcp::kInvalidRequest, "the body is over the limit of " +
                                                             std::to_string(m_options.maxBodyBytes) + " bytes"),
                      false);
                break;
            }
            if (ec) break;
            const auto& req = parser.get();
            if (!handle(socket, req) || !req.keep_alive()) break;
        }
        beast::error_code ignored;
        socket.socket.shutdown(Socket::shutdown_both, ignored);
    }

    std::size_t sessionCount() {
        std::lock_guard lock(m_lock);
        return m_sessions.size();
    }

    /// Every session's calls cancelled; false when some still run after `limit`.
    bool shutdownAll(std::chrono::milliseconds limit) {
        std::map<std::string, std::shared_ptr<HttpSession>> sessions;
        {
            std::lock_guard lock(m_lock);
            sessions = m_sessions;
        }
        bool all = true;
        for (auto& [id, s] : sessions) all = s->shutdown(limit) && all;
        return all;
    }

private:
    /// Answers one request; false when the connection must close.
    bool handle(Conn& socket, const Request& req) {
        std::string_view target = req.target();
        target = target.substr(0, target.find('?'));
        if (target != "/mcp") return reply(socket, 404, {}, rpcErrorBody(mcp::kInvalidRequest, "the endpoint is /mcp"));
        bool keep = true;
        auto caller = m_options.authorize ? admitEmbedded(socket, req, keep) : admitLoopback(socket, req, keep);
        if (!caller) return keep;
        if (auto v = std::string(req["MCP-Protocol-Version"]);
            !v.empty() && std::find(kVersions.begin(), kVersions.end(), v) == kVersions.end())
            return reply(socket, 400, {},
                         rpcErrorBody(mcp::kInvalidRequest, "unsupported MCP-Protocol-Version " + v.substr(0, 32)));

        if (req.method() == http::verb::post) return post(socket, req, *caller);
        std::shared_ptr<HttpSession> session;
        if (!findSession(socket, req, *caller, session)) return true;
        if (req.method() == http::verb::get) return standaloneStream(socket, req, *session);
        if (req.method() == http::verb::delete_) {
            {
                std::lock_guard lock(m_lock);
                m_sessions.erase(std::string(req["Mcp-Session-Id"]));
            }
            // Its calls are cancelled; one that takes a while to stop ends on a thread of its own.
            session->shutdown(0ms);
            std::thread([s = std::move(session)]() mutable { s.reset(); }).detach();
            return reply(socket, 200, {}, "");
        }
        return reply(socket, 405, {{"Allow", "POST, DELETE"}}, rpcErrorBody(mcp::kInvalidRequest, "POST or DELETE"));
    }

    /// An admit step's end when it has answered the request itself.
    static std::optional<McpCaller> answered(bool& keep, bool connectionStays) {
        keep = connectionStays;
        return std::nullopt;
    }

    /// `hpc-agent mcp --listen`: the request's caller, or nullopt once it
    /// is answered (refused); `keep` then says whether the connection stays.
    std::optional<McpCaller> admitLoopback(Conn& socket, const Request& req, bool& keep) {
        // DNS rebinding: a web page's request to a name that resolves here carries that name.
        if (!isLoopbackHost(std::string(req[http::field::host])))
            return answered(keep,
                            reply(socket, 403, {}, rpcErrorBody(mcp::kInvalidRequest, "Host is not a loopback name")));
        if (auto origin = std::string(req[http::field::origin]); !origin.empty()) {
            auto scheme = origin.find("://");
            if (scheme == std::string::npos || !isLoopbackHost(origin.substr(scheme + 3)))
                return answered(keep, reply(socket, 403, {},
                                            rpcErrorBody(mcp::kInvalidRequest, "Origin is not a loopback origin")));
        }
        if (m_options.bearer) {
            std::string want = "Bearer " + m_options.bearer->reveal();
            auto got = req[http::field::authorization];
            if (got.size() != want.size() || CRYPTO_memcmp(got.data(), want.data(), want.size()) != 0)
                return answered(keep, reply(socket, 401, {{"WWW-Authenticate", "Bearer"}},
                                            rpcErrorBody(mcp::kInvalidRequest, "a bearer token is required")));
        }
        return m_loopbackCaller;
    }

    /// The relay's /mcp: the caller its bearer names, or nullopt once the
    /// request is answered (refused, or a CORS preflight).
    std::optional<McpCaller> admitEmbedded(Conn& socket, const Request& req, bool& keep) {
        socket.cors.clear();
        // A page elsewhere may not drive a user's agent session with a token it holds.
        if (auto origin = std::string(req[http::field::origin]); !origin.empty()) {
            if (std::find(m_options.allowedOrigins.begin(), m_options.allowedOrigins.end(), origin) ==
                m_options.allowedOrigins.end())
                return answered(
                    keep, reply(socket, 403, {},
                                rpcErrorBody(mcp::kInvalidRequest,
                                             "Origin " + origin.substr(0, 100) +
                                                 " is not allowed (hpc-relay --mcp-origin lists those that are)")));
            // An allowed page's script may read the answers (CORS).
            socket.cors = {{"Access-Control-Allow-Origin", origin},
                           {"Vary", "Origin"},
                           {"Access-Control-Expose-Headers", "Mcp-Session-Id, WWW-Authenticate"}};
            if (req.method() == http::verb::options)
                return answered(keep,
                                reply(socket, 204,
                                      {{"Access-Control-Allow-Methods", "GET, POST, DELETE"},
                                       {"Access-Control-Allow-Headers",
                                        "Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, "
                                        "Last-Event-ID"},
                                       {"Access-Control-Max-Age", "600"}},
                                      ""));
        }
        std::string refusal;
        auto who = m_options.authorize(std::string(req[http::field::authorization]), refusal);
        if (!who) {
            std::string challenge =
                m_options.challenge ? m_options.challenge(std::string(req[http::field::host])) : "Bearer";
            return answered(keep, reply(socket, 401, {{"WWW-Authenticate", challenge}},
                                        rpcErrorBody(mcp::kInvalidRequest, refusal)));
        }
        return who;
    }

    /// Under m_lock.
    std::size_t sessionsOf(const std::string& owner) const {
        return static_cast<std::size_t>(std::count_if(m_sessions.begin(), m_sessions.end(),
                                                      [&](const auto& s) { return s.second->owner() == owner; }));
    }

    /// Under m_lock: the owner's least recently used idle session ends.
    void evictOldestIdle(const std::string& owner) {
        auto oldest = m_sessions.end();
        for (auto it = m_sessions.begin(); it != m_sessions.end(); ++it)
            if (it->second->owner() == owner && it->second->idle() &&
                (oldest == m_sessions.end() || it->second->lastUsed() < oldest->second->lastUsed()))
                oldest = it;
        if (oldest == m_sessions.end()) return;
        log::info("MCP session limit reached: ending the least recently used idle session");
        oldest->second->shutdown(0ms);
        std::thread([s = std::move(oldest->second)]() mutable { s.reset(); }).detach();
        m_sessions.erase(oldest);
    }

    /// The request's session, or false after answering 400 (no header) or 404.
    /// Another owner's session is not found either.
    bool findSession(Conn& socket, const Request& req, const McpCaller& caller, std::shared_ptr<HttpSession>& session) {
        auto id = std::string(req["Mcp-Session-Id"]);
        if (id.empty()) {
            reply(socket, 400, {}, rpcErrorBody(mcp::kInvalidRequest, "Mcp-Session-Id is required (initialize first)"));
            return false;
        }
        {
            std::lock_guard lock(m_lock);
            if (auto it = m_sessions.find(id); it != m_sessions.end() && it->second->owner() == caller.owner)
                session = it->second;
        }
        if (!session) {
            reply(socket, 404, {}, rpcErrorBody(mcp::kInvalidRequest, "no session " + id.substr(0, 64)));
            return false;
        }
        session->touch();
        return true;
    }

    bool post(Conn& socket, const Request& req, const McpCaller& caller) {
        if (std::string_view(req[http::field::content_type]).find("application/json") == std::string_view::npos)
            return reply(socket, 415, {}, rpcErrorBody(mcp::kInvalidRequest, "Content-Type must be application/json"));
        json::error_code ec;
        auto v = json::parse(req.body(), ec);
        if (ec) return reply(socket, 400, {}, rpcErrorBody(mcp::kParseError, "not JSON: " + ec.message()));
        if (!v.is_object())
            return reply(socket, 400, {},
                         rpcErrorBody(mcp::kInvalidRequest, "a message must be one JSON object (no batches)"));
        const auto& msg = v.get_object();
        auto* method = msg.if_contains("method");
        auto* id = msg.if_contains("id");
        bool isRequest = method && id && (id->is_string() || id->is_int64() || id->is_uint64());

        std::shared_ptr<HttpSession> session;
        std::string newId;
        if (isRequest && method->is_string() && method->get_string() == "initialize" && req["Mcp-Session-Id"].empty()) {
            {
                std::lock_guard lock(m_lock);
                // Clients often leave without DELETE: the least recently used idle session makes room.
                if (sessionsOf(caller.owner) >= m_options.maxSessions) evictOldestIdle(caller.owner);
                if (sessionsOf(caller.owner) < m_options.maxSessions &&
                    m_sessions.size() < m_options.maxSessionsTotal) {
                    newId = randomHex(16);
                    session = std::make_shared<HttpSession>(caller.owner, caller.makeBackend(), m_options.session);
                    m_sessions[newId] = session;
                }
            }
            if (!session)
                return reply(
                    socket, 503, {},
                    rpcErrorBody(mcp::kInvalidRequest,
                                 "every session is busy (at most " + std::to_string(m_options.maxSessions) + " each, " +
                                     std::to_string(m_options.maxSessionsTotal) + " in all); end one (DELETE) first"));
        } else if (!findSession(socket, req, caller, session)) {
            return true;
        }
        if (!isRequest) {  // a notification, or a response: nothing comes back
            session->receive(req.body());
            return reply(socket, 202, {}, "");
        }
        auto exchange = session->open(msg);
        session->receive(req.body());
        bool keep = answer(socket, req, *session, *exchange, msg, newId);
        session->close(msg);
        return keep;
    }

    /// Waits for the request's messages: its answer alone goes back as JSON;
    /// notifications before it turn the answer into an event stream.
    bool answer(Conn& socket, const Request& req, HttpSession& session, Exchange& exchange, const json::object& msg,
                const std::string& newId) {
        std::vector<std::pair<std::string, std::string>> headers;
        if (!newId.empty()) headers.emplace_back("Mcp-Session-Id", newId);
        bool streaming = false;
        for (;;) {
            auto next = exchange.pop(200ms);
            if (!next) {
                if (!hungUp(socket)) continue;
                // The client went away: its call is cancelled, as notifications/cancelled would.
                session.receive(json::serialize(
                    json::object{{"jsonrpc", "2.0"},
                                 {"method", "notifications/cancelled"},
                                 {"params", {{"requestId", msg.at("id")}, {"reason", "the HTTP client hung up"}}}}));
                return false;
            }
            const auto& message = next->msg.as_object();
            bool final = !message.contains("method");
            if (final && !newId.empty() && message.contains("error")) {
                std::lock_guard lock(m_lock);
                m_sessions.erase(newId);  // initialize failed: no session
                headers.clear();
            }
            if (final && !streaming) return reply(socket, 200, headers, json::serialize(message), req.keep_alive());
            if (!streaming) {
                std::string head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
                for (const auto& [k, v] : headers) head += k + ": " + v + "\r\n";
                for (const auto& [k, v] : socket.cors) head += k + ": " + v + "\r\n";
                head += "Connection: close\r\n\r\n";
                if (!send(socket, head)) return false;
                streaming = true;
            }
            if (!send(socket, "event: message\ndata: " + json::serialize(message) + "\n\n") || final) return false;
        }
    }

    /// GET: the session's notifications for no request (resources/updated),
    /// as an event stream, until the client hangs up.
    bool standaloneStream(Conn& socket, const Request& req, HttpSession& session) {
        if (std::string_view(req[http::field::accept]).find("text/event-stream") == std::string_view::npos)
            return reply(socket, 406, {}, rpcErrorBody(mcp::kInvalidRequest, "GET takes Accept: text/event-stream"));
        std::optional<std::uint64_t> after;
        if (auto last = std::string(req["Last-Event-ID"]); !last.empty()) {
            if (last.size() > 19 || last.find_first_not_of("0123456789") != std::string::npos)
                return reply(socket, 400, {}, rpcErrorBody(mcp::kInvalidRequest, "Last-Event-ID is not an event id"));
            after = std::stoull(last);
        }
        auto stream = session.openStandalone(after);
        if (!stream)
            return reply(socket, 409, {}, rpcErrorBody(mcp::kInvalidRequest, "this session's GET stream is open"));
        std::string head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
        for (const auto& [k, v] : socket.cors) head += k + ": " + v + "\r\n";
        bool open = send(socket, head + "Connection: close\r\n\r\n");
        while (open && !session.ended() && !hungUp(socket))
            if (auto next = stream->pop(200ms)) {
                open = send(socket, "id: " + std::to_string(next->id) +
                                        "\nevent: message\ndata: " + json::serialize(next->msg) + "\n\n");
                if (open) session.delivered(next->id);
            }
        session.closeStandalone();
        return false;
    }

    static bool hungUp(Conn& socket) {
        pollfd p{socket.socket.native_handle(), POLLRDHUP, 0};
        return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
    }

    static bool send(Conn& socket, const std::string& data) {
        beast::error_code ec;
        asio::write(socket.socket, asio::buffer(data), ec);
        return !ec;
    }

    /// Writes a response; returns whether the connection may stay open.
    static bool reply(Conn& socket, unsigned status, const std::vector<std::pair<std::string, std::string>>& headers,
                      std::string body, bool keepAlive = true) {
        http::response<http::string_body> res{static_cast<http::status>(status), 11};
        if (!body.empty()) res.set(http::field::content_type, "application/json");
        for (const auto& [k, v] : headers) res.set(k, v);
        for (const auto& [k, v] : socket.cors) res.set(k, v);
        res.keep_alive(keepAlive);
        res.body() = std::move(body);
        res.prepare_payload();
        beast::error_code ec;
        http::write(socket.socket, res, ec);
        return keepAlive && !ec;
    }

public:
    /// Only for the sockets' construction: their I/O is blocking.
    asio::io_context ioc;

private:
    const McpHttpOptions m_options;
    const McpCaller m_loopbackCaller;
    std::mutex m_lock;
    std::map<std::string, std::shared_ptr<HttpSession>> m_sessions;
};

McpHttpServer::McpHttpServer(McpHttpOptions options, McpCaller loopbackCaller)
    : m_impl(std::make_unique<Impl>(std::move(options), std::move(loopbackCaller))) {}

McpHttpServer::~McpHttpServer() = default;

void McpHttpServer::serve(int fd) {
    int family = AF_UNIX;
    socklen_t size = sizeof family;
    ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &size);
    beast::error_code ec;
    Socket socket(m_impl->ioc);
    socket.assign(asio::generic::stream_protocol(family, family == AF_UNIX ? 0 : IPPROTO_TCP), fd, ec);
    if (ec) {
        ::close(fd);
        return;
    }
    try {
        m_impl->serveConnection(std::move(socket));
    } catch (const std::exception& e) {
        // One connection's failure never ends the process that serves the others.
        log::error(std::string("MCP connection: ") + e.what());
    }
}

bool McpHttpServer::shutdownAll(std::chrono::milliseconds limit) { return m_impl->shutdownAll(limit); }

std::size_t McpHttpServer::sessionCount() const { return m_impl->sessionCount(); }

bool isLoopbackHost(const std::string& hostPort) {
    auto host = hostOf(hostPort);
    std::transform(host.begin(), host.end(), host.begin(), [](unsigned char c) { return std::tolower(c); });
    return host == "localhost" || host == "127.0.0.1" || host == "[::1]";
}

int serveMcpHttp(const McpHttpOptions& options, const BackendFactory& makeBackend) {
    std::string host = options.host == "localhost" ? "127.0.0.1" : options.host;
    if (host != "127.0.0.1" && host != "::1")
        throw Error(ErrorCode::BadRequest,
                    "--listen serves on a loopback address only (127.0.0.1, localhost, ::1), "
                    "not " +
                        options.host);
    // SIGINT and SIGTERM are taken by one thread (sigwait): blocked before any other starts.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);

    asio::io_context ioc;
    tcp::acceptor acceptor(ioc);
    beast::error_code ec;
    tcp::endpoint endpoint(asio::ip::make_address(host), options.port);
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.bind(endpoint, ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
        throw Error(ErrorCode::Internal,
                    "cannot listen on " + host + ":" + std::to_string(options.port) + ": " + ec.message());
    auto port = acceptor.local_endpoint().port();
    std::string url = "http://" + (host == "::1" ? "[::1]" : host) + ":" + std::to_string(port) + "/mcp";
    log::notice("serving MCP on " + url + (options.bearer ? " (bearer token required)" : " (no authentication)"));
    if (options.readyFd >= 0) {
        std::string line = url + "\n";
        (void)!::write(options.readyFd, line.data(), line.size());
        ::close(options.readyFd);
    }

    McpHttpServer server(options, McpCaller{"", makeBackend});
    std::atomic<std::size_t> connections{0};
    int listenFd = acceptor.native_handle();
    std::thread([stop, listenFd] {
        int sig = 0;
        sigwait(&stop, &sig);
        ::shutdown(listenFd, SHUT_RDWR);  // wakes accept()
    }).detach();
    for (;;) {
        tcp::socket socket(ioc);
        acceptor.accept(socket, ec);
        if (ec == asio::error::interrupted || ec == asio::error::connection_aborted) continue;
        if (ec) break;  // shut down by a signal
        if (connections.load() >= options.maxConnections) {
            socket.close(ec);
            continue;
        }
        ++connections;
        std::thread([&server, &connections, s = std::move(socket)]() mutable {
            server.serve(s.release());
            --connections;
        }).detach();
    }
    log::notice("stopping: cancelling the running calls");
    // Connections' threads may still run: the process ends here rather than
    // waiting for clients to hang up.
    if (!server.shutdownAll(5s)) log::warning("some calls did not stop within 5 s");
    std::quick_exit(0);
}

}  // namespace hpc::agent
