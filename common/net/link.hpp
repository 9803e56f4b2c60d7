#pragma once
/// The daemon's connection to the platform (design: "link"); a relay instance
/// reaches another through the same client (docs/relay.md).
///
/// Resolve, TCP (to the platform, or to a proxy and CONNECT through it), TLS
/// (peer verified, SNI), WebSocket upgrade with the API key
/// as bearer, then `hello`. A heartbeat `ping` goes out every period; a link
/// that has received nothing for three periods is dead and is replaced.
/// Reconnects forever with capped exponential backoff and full jitter; a
/// refused key or an unknown daemon id (401/403/404) stops the link
/// (LinkState::Unauthorized) until a reload, unless a retry delay is set. A
/// failure is logged as a warning when its cause changes, at debug level
/// while it repeats. One write in flight, a bounded queue behind it.
/// Everything runs on the caller's io_context; nothing blocks.

#include "backoff.hpp"
#include "proxy.hpp"
#include "secret.hpp"
#include "util.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace hpc::net {

enum class LinkState { Connecting, Connected, Backoff, Unauthorized, Stopping };
std::string_view toString(LinkState state);

struct LinkConfig {
    Url url;
    std::string daemonId;
    Secret apiKey;
    std::string caFile;
    /// Direct, or through an HTTP proxy (CONNECT, then TLS to the platform
    /// inside the tunnel). A proxy that is down or refuses is a connect
    /// failure like any other: the link never goes direct instead.
    ProxyRoute route;
    std::chrono::milliseconds heartbeat{std::chrono::seconds(20)};
    std::chrono::milliseconds backoffBase{std::chrono::milliseconds(500)};
    std::chrono::milliseconds backoffCap{std::chrono::seconds(30)};
    /// After a refused key or unknown id: wait this long, plus up to as much
    /// again of jitter; zero: do not retry.
    std::chrono::milliseconds unauthorizedDelay{0};
    std::chrono::milliseconds connectTimeout{std::chrono::seconds(20)};
    std::size_t maxQueuedFrames = 8192;
    std::size_t maxQueuedBytes = 64 * 1024 * 1024;
    boost::json::object hello;  ///< the payload of the hello message
    /// The WebSocket path after the URL's own; empty: the daemon's,
    /// "/hpc/daemons/<daemonId>/ws".
    std::string target;
    std::string userAgent = "hpc-daemond/" HPC_VERSION;
    /// What the link is, in log lines; empty: "daemon <daemonId>".
    std::string name;
    /// When set, a refusal (401/403/404) is logged at info level as this
    /// says, and the link stops (no retry); unset: the daemon's messages.
    std::function<std::string(unsigned status)> describeRefusal;
};

struct LinkHandlers {
    std::function<void(std::string_view text)> onText;
    std::function<void(std::string_view data)> onBinary;
    std::function<void(LinkState state)> onState;
};

class Link {
public:
    Link(boost::asio::io_context& ioc, LinkConfig config, LinkHandlers handlers);
    ~Link();

    /// Starts connecting (and keeps doing so until stop()).
    void start();
    /// Closes the link and stops reconnecting.
    void stop();
    /// Queues a text frame. False (and nothing queued) when the link is down
    /// or the queue is full; callers keep what must not be lost elsewhere.
    bool sendText(std::string text);
    /// Queues PTY output for `channel` as a binary frame. Output queued behind
    /// a write in flight is coalesced into one frame per channel (up to
    /// 1 MiB), so a busy link sends fewer, larger frames; nothing is delayed.
    bool sendChannelData(std::uint32_t channel, const char* data, std::size_t size);
    /// Queues a binary frame built by the caller (a file transfer's, header
    /// and bytes in one buffer: sent without a copy). False as sendText.
    bool sendBinary(std::string frame);

    LinkState state() const;
    /// How the link reaches the platform (ProxyRoute::describe, no secrets).
    std::string route() const;
    /// Why it is not connected, as a sentence (the last failure; never a
    /// secret); "" while connected or before the first failure.
    std::string problem() const;
    /// Epoch seconds of the current connection, 0 when not connected.
    double connectedSince() const;

    struct Impl;

private:
    std::shared_ptr<Impl> m_impl;
};

}  // namespace hpc::net
