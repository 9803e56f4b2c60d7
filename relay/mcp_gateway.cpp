#include "mcp_gateway.hpp"

#include "errors.hpp"
#include "fd.hpp"
#include "log.hpp"
#include "mcp_backend.hpp"
#include "mcp_http.hpp"
#include "ws_client.hpp"

#include <boost/asio/post.hpp>
#include <boost/json.hpp>

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>

namespace asio = boost::asio;
namespace json = boost::json;

namespace hpc::relay {

/// The relay's thread, as the gateway's threads reach it: work is posted
/// there while the relay runs, and refused once it stops.
class McpGateway::Loop {
public:
    Loop(asio::io_context& ioc, Api& api, Hub& hub) : api(api), hub(hub), m_ioc(ioc) {}

    template <class F>
    bool post(F&& f) {
        std::lock_guard lock(m_lock);
        if (!m_open) return false;
        asio::post(m_ioc, std::forward<F>(f));
        return true;
    }

    /// Runs `f` on the relay's thread and returns what it returns. Throws
    /// hpc::Error(Unavailable) when the relay is stopping. Never call it
    /// from the relay's thread.
    template <class F>
    auto call(F f) -> decltype(f()) {
        using R = decltype(f());
        auto promise = std::make_shared<std::promise<R>>();
        auto future = promise->get_future();
        bool posted = post([promise, f = std::move(f)]() mutable {
            try {
                promise->set_value(f());
            } catch (...) {
                promise->set_exception(std::current_exception());
            }
        });
        try {
            if (posted) return future.get();
        } catch (const std::future_error&) {
            // The relay stopped before it ran.
        }
        throw Error(ErrorCode::Unavailable, "the relay is stopping");
    }

    void close() {
        std::lock_guard lock(m_lock);
        m_open = false;
    }

    Api& api;
    Hub& hub;

private:
    asio::io_context& m_ioc;
    std::mutex m_lock;
    bool m_open = true;
};

namespace {

/// An agent connection without a socket: the hub sees a Peer, the MCP
/// backend's AgentClient a FrameChannel. Frames from the hub wait here for
/// the backend's thread; frames from the backend are posted to the hub.
class LocalAgent final : public Peer, public net::FrameChannel, public std::enable_shared_from_this<LocalAgent> {
public:
    LocalAgent(std::shared_ptr<McpGateway::Loop> loop, Principal who)
        : m_loop(std::move(loop)), m_who(std::move(who)), m_ready(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
        if (!m_ready) throw Error(ErrorCode::Internal, std::string("eventfd: ") + std::strerror(errno));
    }

    /// Joins the hub (posted: it happens before any frame this agent sends).
    void attach() {
        if (!m_loop->post([self = shared_from_this()] { self->m_loop->hub.attachAgent(self->m_who, self); }))
            throw Error(ErrorCode::Unavailable, "the relay is stopping");
    }

    // Peer: called on the relay's thread.
    void sendText(std::string text) override { push(net::WsFrame{false, std::move(text)}); }
    void sendBinary(std::string data) override { push(net::WsFrame{true, std::move(data)}); }
    void close(std::string_view reason) override {
        end(std::string(reason));
        detach();
    }

    // FrameChannel: called on the backend's threads.
    void send(net::WsFrame frame) override {
        {
            std::lock_guard lock(m_lock);
            if (m_closed) throw Error(ErrorCode::Unavailable, closedMessage());
        }
        bool posted = m_loop->post([self = shared_from_this(), frame = std::move(frame)]() mutable {
            if (self->m_detached) return;
            if (frame.binary)
                self->m_loop->hub.onAgentBinary(self, std::move(frame.data));
            else
                self->m_loop->hub.onAgentText(self->m_who, self, frame.data);
        });
        if (!posted) throw Error(ErrorCode::Unavailable, "the relay is stopping");
    }

    std::optional<net::WsFrame> receive(std::chrono::milliseconds timeout) override {
        std::unique_lock lock(m_lock);
        m_changed.wait_for(lock, timeout, [this] { return !m_frames.empty() || m_closed; });
        if (!m_frames.empty()) {
            auto frame = std::move(m_frames.front());
            m_frames.pop_front();
            m_queued -= frame.data.size();
            if (m_frames.empty() && !m_closed) signalReady(false);
            return frame;
        }
        if (m_closed) throw Error(ErrorCode::Unavailable, closedMessage());
        return std::nullopt;
    }

    void close() override {
        end("");
        detach();
    }

    int pollFd() const override { return m_ready.get(); }

    bool isOpen() const override {
        std::lock_guard lock(m_lock);
        return !m_closed;
    }

private:
    /// Under m_lock: m_ready is readable exactly while a frame waits or the channel has closed.
    void signalReady(bool ready) {
        std::uint64_t n = 1;
        if (ready)
            (void)!::write(m_ready.get(), &n, sizeof n);
        else
            (void)!::read(m_ready.get(), &n, sizeof n);
    }

    /// What the backend leaves unread past this is a connection nobody
    /// reads: it is closed, as the relay closes a slow WebSocket.
    static constexpr std::size_t kMaxQueuedBytes = std::size_t{64} * 1024 * 1024;

    void push(net::WsFrame frame) {
        bool overflow = false;
        {
            std::lock_guard lock(m_lock);
            if (m_closed) return;
            overflow = m_queued + frame.data.size() > kMaxQueuedBytes;
            if (m_frames.empty()) signalReady(true);
            if (overflow) {
                m_closed = true;
                m_reason = "its output was not read";
            } else {
                m_queued += frame.data.size();
                m_frames.push_back(std::move(frame));
            }
        }
        m_changed.notify_all();
        if (overflow) detach();
    }

    void end(std::string reason) {
        {
            std::lock_guard lock(m_lock);
            if (m_closed) return;
            m_reason = std::move(reason);
            m_closed = true;
            if (m_frames.empty()) signalReady(true);
        }
        m_changed.notify_all();
    }

    /// Under m_lock.
    std::string closedMessage() const {
        return "the relay closed this connection" + (m_reason.empty() ? std::string() : ": " + m_reason);
    }

    void detach() {
        m_loop->post([self = shared_from_this()] {
            if (self->m_detached) return;
            self->m_detached = true;
            self->m_loop->hub.detachAgent(self.get());
        });
    }

    std::shared_ptr<McpGateway::Loop> m_loop;
    const Principal m_who;
    bool m_detached = false;  ///< the relay's thread only
    mutable std::mutex m_lock;
    std::condition_variable m_changed;
    std::deque<net::WsFrame> m_frames;
    std::size_t m_queued = 0;
    bool m_closed = false;
    std::string m_reason;
    UniqueFd m_ready;  ///< an eventfd
};

/// The credential an agent identity last presented to /mcp. Its sessions
/// act with it: a token revoked or expired and replaced (an OAuth refresh)
/// is not used again once the client's next request carries the new one.
struct Credential {
    std::mutex lock;
    Principal who;
    Secret authorization{""};  ///< the Authorization header's value
};

/// A session's way to the user's daemons: agent connections to the hub in
/// this process, and the daemon list as GET /hpc/daemons answers it.
agent::McpCaller callerFor(const std::shared_ptr<McpGateway::Loop>& loop, std::string owner,
                           const std::shared_ptr<Credential>& credential) {
    agent::PlatformAccess access;
    access.connect = [loop, credential] {
        Principal who;
        {
            std::lock_guard lock(credential->lock);
            who = credential->who;
        }
        auto channel = std::make_shared<LocalAgent>(loop, std::move(who));
        channel->attach();
        return agent::AgentClient::over(net::WsClient::over(channel));
    };
    access.listDaemons = [loop, credential] {
        std::string authorization;
        {
            std::lock_guard lock(credential->lock);
            authorization = credential->authorization.reveal();
        }
        auto answer = loop->call([&] {
            return loop->api.handle(ApiRequest{"GET", "/hpc/daemons", authorization, "", "mcp"});
        });
        if (answer.status != 200) throw Error(ErrorCode::Unavailable, "listing the daemons: " + errorMessageOf(answer));
        json::error_code ec;
        auto v = json::parse(answer.body, ec);
        if (!ec && v.is_object())
            if (auto* p = v.get_object().if_contains("payload"); p && p->is_object())
                if (auto* d = p->get_object().if_contains("daemons"); d && d->is_array()) return d->get_array();
        throw Error(ErrorCode::Internal, "the daemon list has no daemons");
    };
    return {std::move(owner), [access] { return std::make_unique<agent::PlatformBackend>(access); }};
}

}  // namespace

McpGateway::McpGateway(asio::io_context& ioc, Api& api, Hub& hub, McpGatewayOptions options)
    : m_loop(std::make_shared<Loop>(ioc, api, hub)),
      m_connections(std::make_shared<std::atomic<std::size_t>>(0)),
      m_options(std::move(options)) {
    agent::McpHttpOptions o;
    o.maxSessions = m_options.maxSessionsPerAgent;
    o.maxSessionsTotal = m_options.maxSessions;
    o.maxConnections = m_options.maxConnections;
    o.maxBodyBytes = kMaxBodyBytes;
    o.allowedOrigins = m_options.allowedOrigins;
    // MCP's authorization flow starts here: the client reads the metadata and signs in.
    o.challenge = [scheme = m_options.scheme](const std::string& host) {
        if (!isPlainHost(host)) return std::string("Bearer");
        return "Bearer resource_metadata=\"" + scheme + "://" + host + "/.well-known/oauth-protected-resource/mcp\"";
    };
    o.session.serverName = "hpc-relay";
    o.session.serverVersion = HPC_VERSION;
    // Forgotten only when the relay stops: one entry per agent identity that used /mcp.
    struct Credentials {
        std::mutex lock;
        std::map<std::string, std::shared_ptr<Credential>> byOwner;
        std::shared_ptr<Credential> of(const std::string& owner) {
            std::lock_guard hold(lock);
            auto& c = byOwner[owner];
            if (!c) c = std::make_shared<Credential>();
            return c;
        }
    };
    o.authorize = [loop = m_loop, credentials = std::make_shared<Credentials>()](
                      const std::string& authorization, std::string& refusal) -> std::optional<agent::McpCaller> {
        struct Verdict {
            std::optional<Principal> who;
            std::string refusal;
        };
        try {
            auto verdict = loop->call([&] {
                Verdict v{loop->api.authenticate(authorization), {}};
                if (!v.who)
                    v.refusal = errorMessageOf(
                        loop->api.refuseBearer(authorization, "a valid bearer token or API key is required"));
                return v;
            });
            if (!verdict.who) {
                refusal = verdict.refusal;
                return std::nullopt;
            }
            // Sessions are the agent identity's: its tokens share them, nobody else.
            std::string owner = std::to_string(verdict.who->userId) + "/" + agentIdOf(*verdict.who);
            auto credential = credentials->of(owner);
            {
                std::lock_guard lock(credential->lock);
                credential->who = *verdict.who;
                credential->authorization = Secret(authorization);
            }
            return callerFor(loop, std::move(owner), credential);
        } catch (const std::exception& e) {
            refusal = e.what();
            return std::nullopt;
        }
    };
    m_server = std::make_shared<agent::McpHttpServer>(std::move(o));
}

McpGateway::~McpGateway() { shutdown(std::chrono::seconds(0)); }

bool McpGateway::serve(int fd) {
    if (m_connections->load() >= m_options.maxConnections) {
        ::close(fd);
        return false;
    }
    ++*m_connections;
    std::thread([server = m_server, connections = m_connections, fd] {
        server->serve(fd);
        --*connections;
    }).detach();
    return true;
}

void McpGateway::shutdown(std::chrono::milliseconds limit) {
    m_loop->close();
    if (!m_server->shutdownAll(limit) && limit.count() > 0)
        log::warning("MCP: some calls did not stop within " + std::to_string(limit.count()) + " ms");
}

std::size_t McpGateway::sessionCount() const { return m_server->sessionCount(); }

}  // namespace hpc::relay
