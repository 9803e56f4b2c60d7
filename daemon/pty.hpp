#pragma once
/// Interactive PTY sessions (protocol `pty.*`): a shell on a pseudo-terminal
/// per session, its output sent as binary frames under credit flow control,
/// its input written to the terminal.
///
/// Output: while a session has credit it waits for its terminal to be
/// readable, then reads all that is waiting (never waiting for more) into
/// the service's one read buffer and sends it as one frame. Output in bulk
/// (a fast program) is held up to 64 KiB or 2 ms, so it crosses every hop in
/// large frames; typing and prompts go out at once. With no credit the
/// session stops reading, the kernel's PTY buffer fills and the program
/// blocks: a slow agent slows the program, never the daemon's memory.

#include "guard/confinement.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hpc::daemon {

struct PtyLimits {
    std::size_t maxSessions = 16;
    std::chrono::seconds idleTimeout{std::chrono::hours(12)};
    /// After the agent that opened a session disconnects.
    std::chrono::seconds detachGrace{std::chrono::seconds(30)};
    /// Output granted before the first pty.ack, unless pty.open asks otherwise.
    std::uint64_t initialCredit = 1 << 20;
};

struct PtyOpenRequest {
    unsigned cols = 80, rows = 24;
    std::string cwd;                ///< resolved and checked by the caller
    std::vector<std::string> env;   ///< "NAME=value" over the daemon's environment
    std::vector<std::string> argv;  ///< the shell and its arguments
    std::string agentId;
    std::uint64_t credit = 0;                        ///< 0: the default
    std::shared_ptr<const Confinement> confinement;  ///< applied at spawn; null: unconfined
};

struct PtyInfo {
    std::uint32_t channel;
    int pid;
    std::string agentId;
    std::string cwd;
    double openedAt;
    /// What pty.attach names the session by: "<channel>-<random>", so that
    /// a session number alone does not find it.
    std::string session;
};

/// pty.attach's answer: the session, and the offset its output is sent again from.
struct PtyAttached {
    PtyInfo info;
    std::uint64_t fromByte = 0;
};

class PtySession;

class PtyService {
public:
    using SendText = std::function<void(std::string)>;
    /// Sends output of a channel; false when the link cannot take it now.
    using SendOutput = std::function<bool(std::uint32_t channel, const char* data, std::size_t size)>;
    /// A command line the shell reported: (channel, agent, cwd, command, status).
    using AuditLine =
        std::function<void(const PtyInfo& session, const std::string& cwd, const std::string& command, int status)>;
    /// The descriptor number a shell writes its audit lines to (HPC_AUDIT_FD).
    static constexpr int kAuditFd = 9;

    PtyService(boost::asio::io_context& ioc, PtyLimits limits, SendText sendText, SendOutput sendOutput);
    ~PtyService();

    /// Starts a shell on a new PTY. Throws hpc::Error (Limit, NotFound, Internal).
    PtyInfo open(const PtyOpenRequest& request);
    /// Agent input for a channel. Throws hpc::Error(NotFound, NotOwner, Limit).
    void input(std::uint32_t channel, const char* data, std::size_t size);
    void resize(std::uint32_t channel, unsigned cols, unsigned rows, const std::string& agentId);
    /// Sends `signal` to the session's process group (SIGHUP by default).
    void close(std::uint32_t channel, int signal, const std::string& agentId);
    void ack(std::uint32_t channel, std::uint64_t bytes, const std::string& agentId);
    /// The session's agent is gone: its output is kept (up to kScrollback
    /// bytes, then the program waits) and it is hung up after the grace
    /// period unless an agent attaches.
    void detach(std::uint32_t channel);
    /// Every session is detached (the link to the platform dropped).
    void detachAll();
    /// An agent (the same identity that opened it) takes the session up
    /// again, through any connection: output from `fromByte` (default: the
    /// oldest kept) is sent again, then the session carries on with `credit`
    /// (0: the default) less what was sent again. Throws hpc::Error
    /// (NotFound, NotOwner, BadRequest). The output is sent after the caller
    /// has answered, so the platform knows the channel first.
    PtyAttached attach(const std::string& session, std::optional<std::uint64_t> fromByte, std::uint64_t credit,
                       const std::string& agentId);
    /// Output kept per session for a reattach: what the agent has not
    /// acknowledged yet, at most this much (the oldest goes first).
    static constexpr std::size_t kScrollback = std::size_t{1} << 20;
    /// Every session is hung up (daemon shutdown).
    void closeAll();

    std::size_t count() const { return m_sessions.size(); }
    /// Sessions opened since the service started.
    std::uint64_t opened() const { return m_nextChannel - 1; }
    std::vector<PtyInfo> list() const;
    void setLimits(PtyLimits limits) { m_limits = limits; }
    void setAudit(AuditLine audit) { m_audit = std::move(audit); }

private:
    friend class PtySession;
    std::shared_ptr<PtySession> find(std::uint32_t channel, const std::string* agentId) const;
    void ended(std::uint32_t channel);

    boost::asio::io_context& m_ioc;
    PtyLimits m_limits;
    SendText m_sendText;
    SendOutput m_sendOutput;
    AuditLine m_audit;
    std::map<std::uint32_t, std::shared_ptr<PtySession>> m_sessions;
    /// Every session reads into this (see PtySession::readReady).
    std::vector<char> m_readBuffer = std::vector<char>(std::size_t{64} * 1024);
    std::uint32_t m_nextChannel = 1;
};

}  // namespace hpc::daemon
