#pragma once
/// A blocking WebSocket client over TLS (or loopback plain TCP), for the agent
/// CLI, tests and benchmarks. Reads take a timeout; a read that times out stays
/// pending and the next read() picks it up, so no frame is ever lost.

#include "http_client.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace hpc::net {

struct WsFrame {
    bool binary = false;
    std::string data;
};

/// The other end of a connection that is not a socket: a WsClient made
/// with WsClient::over() reads and writes frames through it. The relay's
/// MCP endpoint uses one to reach its own hub in the same process.
class FrameChannel {
public:
    virtual ~FrameChannel() = default;
    /// Throws hpc::Error(Unavailable) when the channel has closed.
    virtual void send(WsFrame frame) = 0;
    /// The next frame, or nullopt after `timeout`; throws
    /// hpc::Error(Unavailable) once the channel has closed and is drained.
    virtual std::optional<WsFrame> receive(std::chrono::milliseconds timeout) = 0;
    virtual void close() = 0;
    /// A descriptor poll(2) finds readable while a frame waits (or the
    /// channel has closed): WsClient::nativeFd() of a client over it.
    virtual int pollFd() const = 0;
    /// False once the channel has closed (either end).
    virtual bool isOpen() const = 0;
};

class WsClient {
public:
    /// Connects to base.path + path with `Authorization: Bearer <token>`.
    /// Throws hpc::Error(Unauthorized) on 401/403, hpc::Error(NotFound) on 404,
    /// hpc::Error(Unavailable) for anything else that fails.
    static std::unique_ptr<WsClient> connect(const Url& base, const std::string& path, const std::string& bearer,
                                             const ClientOptions& options = {});
    /// A client whose frames go through `channel` instead of a socket
    /// (nativeFd() is then the channel's pollFd()).
    static std::unique_ptr<WsClient> over(std::shared_ptr<FrameChannel> channel);
    ~WsClient();

    void sendText(const std::string& text);
    void sendBinary(const std::string& data);
    /// The next frame, or nullopt when none arrived within the timeout. A zero
    /// timeout takes only what has already arrived, without waiting.
    /// Throws hpc::Error(Unavailable) when the connection is closed or broken.
    std::optional<WsFrame> read(std::chrono::milliseconds timeout);
    /// Sends a close frame and waits briefly for the peer's.
    void close();
    /// False once it is known closed: by close(), a failed read or write, or
    /// (over a channel) the other end. A network peer's close is only seen by
    /// the next read or write.
    bool isOpen() const;
    /// The socket, for poll(2) beside other descriptors. Readable means a
    /// read() will make progress; TLS may also hold frames already received,
    /// so after a read keep reading with a short timeout until none is left.
    int nativeFd() const;

    struct Impl;

private:
    explicit WsClient(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> m_impl;
    std::shared_ptr<FrameChannel> m_channel;
};

}  // namespace hpc::net
