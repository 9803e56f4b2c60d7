#include "pty.hpp"

#include "child_process.hpp"
#include "errors.hpp"
#include "fd.hpp"
#include "log.hpp"
#include "protocol.hpp"
#include "util.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <deque>

namespace asio = boost::asio;
namespace json = boost::json;

namespace hpc::daemon {
namespace {

constexpr std::size_t kMaxInputBacklog = 1 << 20;
/// Output in bulk (a batch of at least kBulkBatch bytes read within kHoldFor
/// of the last frame) is held until kHoldBytes have gathered or kHoldFor has
/// passed: a fast program's output then crosses the link, the platform and
/// the agent in 64 KiB frames instead of one frame per few-KiB read, each of
/// which costs every hop a TLS record, a send and a wake-up. Typing, prompts
/// and a program's occasional lines are not bulk and go out at once.
constexpr std::size_t kBulkBatch = 1024;
constexpr std::size_t kHoldBytes = std::size_t{64} * 1024;
constexpr auto kHoldFor = std::chrono::milliseconds(2);

void setWindowSize(int fd, unsigned cols, unsigned rows) {
    winsize ws{};
    ws.ws_col = static_cast<unsigned short>(cols);
    ws.ws_row = static_cast<unsigned short>(rows);
    ::ioctl(fd, TIOCSWINSZ, &ws);
}

}  // namespace

class PtySession : public std::enable_shared_from_this<PtySession> {
public:
    PtySession(PtyService& service, PtyInfo info, UniqueFd master, UniqueFd audit, std::uint64_t credit)
        : m_service(service),
          m_info(std::move(info)),
          m_master(service.m_ioc, master.release()),
          m_auditPipe(service.m_ioc, audit.release()),
          m_idle(service.m_ioc),
          m_grace(service.m_ioc),
          m_holdTimer(service.m_ioc),
          m_credit(credit) {}

    const PtyInfo& info() const { return m_info; }

    /// Starts the shell. Throws hpc::Error (NotFound, BadRequest, Internal).
    void start(SpawnOptions options) {
        // Reads beyond the first of a batch must never block the loop.
        m_master.non_blocking(true);
        m_child = ChildProcess::start(
            m_service.m_ioc, std::move(options), "the shell",
            [self = shared_from_this()](std::optional<ExitStatus> status) { self->onExit(status); });
        m_info.pid = m_child->pid();
        touch();
        doRead();
        readAudit();
    }

    void write(const char* data, std::size_t size) {
        if (m_finished || m_eof)
            throw Error(ErrorCode::NotFound, "channel " + std::to_string(m_info.channel) + " has ended");
        if (m_inputBytes + size > kMaxInputBacklog)
            throw Error(ErrorCode::Limit,
                        "input to channel " + std::to_string(m_info.channel) + " is not being read; backlog full");
        m_inputBytes += size;
        m_input.emplace_back(data, size);
        touch();
        if (m_input.size() == 1) doWrite();
    }

    void resize(unsigned cols, unsigned rows) {
        if (!m_eof) setWindowSize(m_master.native_handle(), cols, rows);
    }

    void signal(int sig) {
        if (!m_exited) m_child->signalGroup(sig);
    }

    void addCredit(std::uint64_t bytes) {
        m_credit += bytes;
        // The agent has these bytes: they need not be kept for a reattach.
        m_acked = std::min(m_acked + bytes, m_sent);
        dropRetainedBefore(m_acked);
        if (!m_reading && !m_eof) doRead();
    }

    void detach(std::chrono::seconds grace) {
        if (m_detached) return;
        m_detached = true;
        m_grace.expires_after(grace);
        m_grace.async_wait([self = shared_from_this()](boost::system::error_code ec) {
            if (ec) return;
            self->m_graceOver = true;
            if (self->m_finished) return self->m_service.ended(self->m_info.channel);
            log::info("pty " + std::to_string(self->m_info.channel) + ": agent gone for the grace period; hanging up");
            self->signal(SIGHUP);
        });
    }

    PtyAttached attach(std::optional<std::uint64_t> fromByte, std::uint64_t credit) {
        if (m_graceOver)
            throw Error(ErrorCode::NotFound, "shell session " + m_info.session +
                                                 " was hung up: no agent attached it within the grace period");
        std::uint64_t from = fromByte.value_or(m_retainedFrom);
        if (from > m_sent)
            throw Error(ErrorCode::BadRequest, "\"from_byte\" " + std::to_string(from) + " is beyond the " +
                                                   std::to_string(m_sent) + " bytes this session has sent");
        // Older bytes are gone (more than kScrollback went unacknowledged):
        // the answer's from_byte says where the output starts again.
        from = std::max(from, m_retainedFrom);
        dropRetainedBefore(from);
        m_acked = from;
        m_detached = false;
        // Until the output kept is sent again (after this answer), what the
        // terminal writes meanwhile is only kept: sent now, it would come
        // before the older bytes, and again with them.
        m_resending = true;
        m_grace.cancel();
        std::uint64_t resend = m_sent - from;
        m_credit = credit > resend ? credit - resend : 0;
        log::info("pty " + std::to_string(m_info.channel) + " attached by " + m_info.agentId + " from byte " +
                  std::to_string(from) + " (" + std::to_string(resend) + " bytes sent again)");
        asio::post(m_service.m_ioc, [self = shared_from_this()] { self->resendRetained(); });
        return PtyAttached{m_info, from};
    }

    void hangup() { signal(SIGHUP); }

private:
    /// Notes activity. The idle timer is armed once and re-armed when it
    /// fires early, so busy output does not reschedule a timer per read.
    void touch() {
        m_lastActivity = std::chrono::steady_clock::now();
        if (!m_idleArmed) armIdle(m_service.m_limits.idleTimeout);
    }

    void armIdle(std::chrono::steady_clock::duration after) {
        m_idleArmed = true;
        m_idle.expires_after(after);
        m_idle.async_wait([self = shared_from_this()](boost::system::error_code ec) {
            self->m_idleArmed = false;
            if (ec || self->m_finished) return;
            auto idleFor = std::chrono::steady_clock::now() - self->m_lastActivity;
            auto limit =
                std::chrono::duration_cast<std::chrono::steady_clock::duration>(self->m_service.m_limits.idleTimeout);
            if (idleFor < limit) {
                self->armIdle(limit - idleFor);
                return;
            }
            log::info("pty " + std::to_string(self->m_info.channel) + " idle too long; hanging up");
            self->hangup();
        });
    }

    /// Reads once the terminal has output. (Asio re-arms the descriptor for
    /// each wait, so output or a hang-up that came while no wait was pending,
    /// with no credit, is seen at once.)
    void doRead() {
        if (m_credit == 0 || m_eof) {
            m_reading = false;
            return;
        }
        m_reading = true;
        m_master.async_wait(asio::posix::descriptor_base::wait_read,
                            [self = shared_from_this()](boost::system::error_code ec) {
                                if (ec == asio::error::operation_aborted) return;
                                self->readReady();
                            });
    }

    /// Reads what the terminal has, up to the buffer and the credit, and
    /// sends or holds it. A read returns at most one line-discipline buffer
    /// (4 KiB); it reads on while TIOCINQ says more is there. Never until
    /// EAGAIN: a read of an empty terminal waits in the kernel for the tty's
    /// flush worker (n_tty flushes it synchronously), which on a busy machine
    /// would stall every other session and job behind one shell's output.
    ///
    /// The reads happen here, not in an async_read_some, because the buffer
    /// is the service's, shared by every session: the reactor would read
    /// several ready sessions into it before any handler ran. The daemon
    /// runs on one thread and each batch is sent or held before the next
    /// read, so an idle shell holds no buffer of its own.
    void readReady() {
        m_reading = false;
        if (m_eof || m_finished) return;
        auto& buffer = m_service.m_readBuffer;
        std::size_t limit = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), m_credit));
        std::size_t n = 0;
        boost::system::error_code ec;
        while (n < limit) {
            std::size_t got = m_master.read_some(asio::buffer(buffer.data() + n, limit - n), ec);
            if (ec) break;
            n += got;
            if (waiting() == 0) break;
        }
        // EIO: every process closed the terminal. Nothing more will come.
        if (ec && ec != asio::error::would_block && ec != asio::error::try_again) m_eof = true;
        if (n > 0) {
            m_credit -= n;
            auto now = std::chrono::steady_clock::now();
            bool bulk = n >= kBulkBatch && now - m_lastSent < kHoldFor;
            if (!bulk && m_held.empty()) {
                send(buffer.data(), n);
            } else {
                m_held.append(buffer.data(), n);
                if (m_held.size() >= kHoldBytes)
                    flushHeld();
                else if (!m_holdArmed)
                    armHold();
            }
            touch();
        }
        if (m_eof) return maybeFinish();
        doRead();
    }

    /// Bytes in the terminal's read buffer (TIOCINQ, which never waits).
    std::size_t waiting() {
        int n = 0;
        return ::ioctl(m_master.native_handle(), FIONREAD, &n) == 0 && n > 0 ? static_cast<std::size_t>(n) : 0;
    }

    void send(const char* data, std::size_t size) {
        m_lastSent = std::chrono::steady_clock::now();
        retain(data, size);
        if (m_detached || m_resending) return;  // kept for the agent that attaches
        if (!m_service.m_sendOutput(m_info.channel, data, size))
            log::debug("pty " + std::to_string(m_info.channel) + ": the link is down; output kept for a reattach");
    }

    /// Keeps what is sent until the agent acknowledges it, at most kScrollback bytes.
    void retain(const char* data, std::size_t size) {
        m_retained.emplace_back(data, size);
        m_retainedBytes += size;
        m_sent += size;
        if (m_retainedBytes > PtyService::kScrollback) dropRetainedBefore(m_sent - PtyService::kScrollback);
    }

    void dropRetainedBefore(std::uint64_t offset) {
        while (m_retainedFrom < offset && !m_retained.empty()) {
            std::size_t left = m_retained.front().size() - m_retainedSkip;
            auto take = static_cast<std::size_t>(std::min<std::uint64_t>(left, offset - m_retainedFrom));
            m_retainedSkip += take;
            m_retainedFrom += take;
            m_retainedBytes -= take;
            if (m_retainedSkip == m_retained.front().size()) {
                m_retained.pop_front();
                m_retainedSkip = 0;
            }
        }
    }

    /// After an attach was answered: what is kept, in frames of up to
    /// kHoldBytes, then pty.exit if the shell ended meanwhile, then on.
    void resendRetained() {
        m_resending = false;
        // Detached again before this ran: kept for the next attach.
        if (m_detached) return;
        std::string frame;
        auto flush = [&] {
            if (!frame.empty()) m_service.m_sendOutput(m_info.channel, frame.data(), frame.size());
            frame.clear();
        };
        std::size_t skip = m_retainedSkip;
        for (const auto& chunk : m_retained) {
            std::string_view rest(chunk.data() + skip, chunk.size() - skip);
            skip = 0;
            while (!rest.empty()) {
                std::size_t take = std::min(rest.size(), kHoldBytes - frame.size());
                frame.append(rest.data(), take);
                rest.remove_prefix(take);
                if (frame.size() == kHoldBytes) flush();
            }
        }
        flush();
        if (m_finished) {
            m_service.m_sendText(m_exitMessage);
            m_service.ended(m_info.channel);
            return;
        }
        if (!m_reading && !m_eof) doRead();
    }

    void flushHeld() {
        if (m_held.empty()) return;
        send(m_held.data(), m_held.size());
        m_held.clear();
    }

    /// Sends what is held once kHoldFor has passed, whatever came meanwhile.
    /// The burst is over then: its buffer is given back, so a shell that once
    /// streamed keeps nothing while it idles.
    void armHold() {
        m_holdArmed = true;
        m_holdTimer.expires_after(kHoldFor);
        m_holdTimer.async_wait([self = shared_from_this()](boost::system::error_code ec) {
            self->m_holdArmed = false;
            if (ec || self->m_finished) return;
            self->flushHeld();
            std::string().swap(self->m_held);
        });
    }

    /// Lines "status<TAB>cwd<TAB>command" from the shell's audit descriptor.
    void readAudit() {
        m_auditPipe.async_read_some(asio::buffer(m_auditBuffer),
                                    [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
                                        if (ec) return;  // the shell is gone
                                        self->m_auditPending.append(self->m_auditBuffer.data(), n);
                                        self->takeAuditLines();
                                        self->readAudit();
                                    });
    }

    void takeAuditLines() {
        std::size_t nl;
        while ((nl = m_auditPending.find('\n')) != std::string::npos) {
            std::string line = m_auditPending.substr(0, nl);
            m_auditPending.erase(0, nl + 1);
            auto t1 = line.find('\t');
            auto t2 = t1 == std::string::npos ? t1 : line.find('\t', t1 + 1);
            if (t2 == std::string::npos || !m_service.m_audit) continue;
            int status = -1;  // not a number: unknown
            std::string_view field(line.data(), t1);
            std::from_chars(field.data(), field.data() + field.size(), status);
            m_service.m_audit(m_info, line.substr(t1 + 1, t2 - t1 - 1), line.substr(t2 + 1), status);
        }
        // A line longer than this is not from our shell function: drop it.
        if (m_auditPending.size() > std::size_t{64} * 1024) m_auditPending.clear();
    }

    void doWrite() {
        asio::async_write(m_master, asio::buffer(m_input.front()),
                          [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                              if (ec) {
                                  self->m_input.clear();
                                  self->m_inputBytes = 0;
                                  return;
                              }
                              self->m_inputBytes -= self->m_input.front().size();
                              self->m_input.pop_front();
                              if (!self->m_input.empty()) self->doWrite();
                          });
    }

    void onExit(std::optional<ExitStatus> status) {
        if (status) m_status = *status;
        m_exited = true;
        // Output still in the PTY is delivered (as credit allows) before pty.exit.
        if (!m_reading && m_credit > 0) doRead();
        maybeFinish();
    }

    void maybeFinish() {
        if (m_finished || !m_exited || !m_eof) return;
        flushHeld();  // before pty.exit, in order
        m_finished = true;
        m_idle.cancel();
        m_holdTimer.cancel();
        json::object p{{"channel", m_info.channel}};
        p["exit_code"] = m_status.code ? json::value(*m_status.code) : json::value(nullptr);
        p["signal"] = m_status.signal ? json::value(*m_status.signal) : json::value(nullptr);
        m_exitMessage = protocol::makeMessage("pty.exit", "exit-" + std::to_string(m_info.channel), p);
        log::info("pty " + std::to_string(m_info.channel) + " of " + m_info.agentId + " ended: " +
                  (m_status.code ? "exit " + std::to_string(*m_status.code)
                                 : "signal " + std::to_string(m_status.signal.value_or(0))));
        boost::system::error_code ignored;
        m_master.close(ignored);
        m_auditPipe.close(ignored);
        // Detached: the last output and the exit wait for an agent to
        // attach, until the grace period ends.
        if ((m_detached && !m_graceOver) || m_resending) return;  // resendRetained sends it
        m_grace.cancel();
        m_service.m_sendText(m_exitMessage);
        m_service.ended(m_info.channel);
    }

    PtyService& m_service;
    PtyInfo m_info;
    std::shared_ptr<ChildProcess> m_child;
    asio::posix::stream_descriptor m_master;
    asio::posix::stream_descriptor m_auditPipe;
    std::array<char, 4096> m_auditBuffer{};
    std::string m_auditPending;
    asio::steady_timer m_idle;
    asio::steady_timer m_grace;
    asio::steady_timer m_holdTimer;
    std::string m_held;  ///< output read in bulk, not sent yet
    /// Output sent and not acknowledged yet: bytes m_retainedFrom to m_sent
    /// of the session's output, the front chunk's first m_retainedSkip gone.
    std::deque<std::string> m_retained;
    std::size_t m_retainedSkip = 0;
    std::size_t m_retainedBytes = 0;
    std::uint64_t m_retainedFrom = 0;
    std::uint64_t m_sent = 0;
    std::uint64_t m_acked = 0;  ///< the offset the agent has acknowledged
    bool m_detached = false;    ///< no agent: output is kept, not sent
    bool m_graceOver = false;   ///< detached for the whole grace period: hung up
    bool m_resending = false;   ///< attached, the kept output not yet sent again
    std::string m_exitMessage;
    std::chrono::steady_clock::time_point m_lastSent;
    bool m_holdArmed = false;
    std::uint64_t m_credit;
    std::deque<std::string> m_input;
    std::size_t m_inputBytes = 0;
    ExitStatus m_status;
    std::chrono::steady_clock::time_point m_lastActivity;
    bool m_idleArmed = false;
    bool m_reading = false;
    bool m_exited = false;
    bool m_eof = false;
    bool m_finished = false;
};

PtyService::PtyService(asio::io_context& ioc, PtyLimits limits, SendText sendText, SendOutput sendOutput)
    : m_ioc(ioc), m_limits(limits), m_sendText(std::move(sendText)), m_sendOutput(std::move(sendOutput)) {}

PtyService::~PtyService() { closeAll(); }

PtyInfo PtyService::open(const PtyOpenRequest& r) {
    if (m_sessions.size() >= m_limits.maxSessions)
        throw Error(ErrorCode::Limit, "this daemon already has " + std::to_string(m_sessions.size()) +
                                          " shells open (the limit is " + std::to_string(m_limits.maxSessions) + ")");
    UniqueFd master(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!master || ::grantpt(master.get()) != 0 || ::unlockpt(master.get()) != 0)
        throw Error(ErrorCode::Internal, std::string("cannot allocate a PTY: ") + std::strerror(errno));
    char name[128];
    if (::ptsname_r(master.get(), name, sizeof name) != 0) throw Error(ErrorCode::Internal, "cannot name the PTY");
    UniqueFd slave(::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!slave) throw Error(ErrorCode::Internal, std::string("cannot open ") + name + ": " + std::strerror(errno));
    setWindowSize(master.get(), r.cols, r.rows);
    setNonBlocking(master.get());

    int auditFds[2];
    if (::pipe2(auditFds, O_CLOEXEC) != 0) throw Error(ErrorCode::Internal, "cannot create the audit pipe");
    UniqueFd auditRead(auditFds[0]), auditWrite(auditFds[1]);
    setNonBlocking(auditRead.get());

    SpawnOptions o;
    o.argv = r.argv;
    o.cwd = r.cwd;
    o.extraFds = {{auditWrite.get(), kAuditFd}};
    o.envOverrides = {"TERM=xterm-256color", "HPC_AUDIT_FD=" + std::to_string(kAuditFd)};
    o.envOverrides.insert(o.envOverrides.end(), r.env.begin(), r.env.end());
    o.controllingTerminal = slave.get();
    if (r.confinement) r.confinement->apply(o);
    std::uint32_t channel = m_nextChannel;
    auto session = std::make_shared<PtySession>(
        *this, PtyInfo{channel, -1, r.agentId, r.cwd, nowEpochSeconds(), std::to_string(channel) + "-" + randomHex(8)},
        std::move(master), std::move(auditRead), r.credit ? r.credit : m_limits.initialCredit);
    session->start(std::move(o));
    slave.reset();  // the shell has its own: the master reads EOF when the last one closes
    auditWrite.reset();
    ++m_nextChannel;
    m_sessions[channel] = session;
    log::info("pty " + std::to_string(channel) + " opened for " + r.agentId + " in " + r.cwd + ": " + r.argv.front() +
              " (pid " + std::to_string(session->info().pid) + ")");
    return session->info();
}

std::shared_ptr<PtySession> PtyService::find(std::uint32_t channel, const std::string* agentId) const {
    auto it = m_sessions.find(channel);
    if (it == m_sessions.end()) throw Error(ErrorCode::NotFound, "channel " + std::to_string(channel) + " is not open");
    if (agentId && !agentId->empty() && it->second->info().agentId != *agentId)
        throw Error(ErrorCode::NotOwner, "channel " + std::to_string(channel) + " belongs to another agent");
    return it->second;
}

void PtyService::input(std::uint32_t channel, const char* data, std::size_t size) {
    find(channel, nullptr)->write(data, size);
}

void PtyService::resize(std::uint32_t channel, unsigned cols, unsigned rows, const std::string& agentId) {
    find(channel, &agentId)->resize(cols, rows);
}

void PtyService::close(std::uint32_t channel, int signal, const std::string& agentId) {
    find(channel, &agentId)->signal(signal);
}

void PtyService::ack(std::uint32_t channel, std::uint64_t bytes, const std::string& agentId) {
    find(channel, &agentId)->addCredit(bytes);
}

void PtyService::detach(std::uint32_t channel) {
    if (auto it = m_sessions.find(channel); it != m_sessions.end()) it->second->detach(m_limits.detachGrace);
}

void PtyService::detachAll() {
    for (auto& [channel, session] : m_sessions) session->detach(m_limits.detachGrace);
}

PtyAttached PtyService::attach(const std::string& session, std::optional<std::uint64_t> fromByte, std::uint64_t credit,
                               const std::string& agentId) {
    std::uint32_t channel = 0;
    auto dash = session.find('-');
    auto [end, ec] = std::from_chars(session.data(), session.data() + std::min(dash, session.size()), channel);
    auto it = ec == std::errc() && end == session.data() + dash ? m_sessions.find(channel) : m_sessions.end();
    if (it == m_sessions.end() || it->second->info().session != session)
        throw Error(ErrorCode::NotFound,
                    "no shell session " + session + " on this daemon (it ended, or its grace period passed)");
    if (it->second->info().agentId != agentId)
        throw Error(ErrorCode::NotOwner, "shell session " + session + " belongs to another agent");
    return it->second->attach(fromByte, credit ? credit : m_limits.initialCredit);
}

void PtyService::closeAll() {
    for (auto& [channel, session] : m_sessions) session->hangup();
}

void PtyService::ended(std::uint32_t channel) { m_sessions.erase(channel); }

std::vector<PtyInfo> PtyService::list() const {
    std::vector<PtyInfo> out;
    for (const auto& [channel, session] : m_sessions) out.push_back(session->info());
    return out;
}

}  // namespace hpc::daemon
