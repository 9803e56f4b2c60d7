#include "exec_stream.hpp"

#include "child_process.hpp"
#include "errors.hpp"
#include "log.hpp"
#include "protocol.hpp"
#include "util.hpp"
#include "wire.hpp"

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>

namespace asio = boost::asio;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace hpc::daemon {

using protocol::ExecStream;

namespace {

/// After the command exited, how long reads may wait with nothing arriving
/// before the pipes (held by processes it left behind) are closed. Waiting
/// for the agent's credit does not count.
constexpr auto kDrainAfterExit = std::chrono::seconds(1);
constexpr std::size_t kRememberEnded = 1024;
constexpr std::uint64_t kMaxCredit = ExecSpec::kMaxCredit;

}  // namespace

class ExecStreams::Run : public std::enable_shared_from_this<Run> {
public:
    Run(ExecStreams& owner, std::uint32_t channel, ExecRequest req, std::uint64_t credit, bool streamStdin,
        std::string agentId, Ended ended)
        : m_owner(&owner),
          m_channel(channel),
          m_req(std::move(req)),
          m_agentId(std::move(agentId)),
          m_ended(std::move(ended)),
          m_credit(credit),
          m_streamStdin(streamStdin),
          m_out(owner.m_ioc, ExecStream::Stdout),
          m_err(owner.m_ioc, ExecStream::Stderr),
          m_stdin(owner.m_ioc),
          m_timeout(owner.m_ioc),
          m_drain(owner.m_ioc) {}

    const std::string& agentId() const { return m_agentId; }
    int pid() const { return m_child->pid(); }
    std::uint64_t stdinGranted() const { return m_stdinGranted; }

    void start() {
        SpawnOptions o;
        o.argv = m_req.argv;
        o.cwd = m_req.cwd;
        o.envOverrides = m_req.env;
        o.in = m_streamStdin ? Stdio::Pipe : Stdio::Null;
        o.out = Stdio::Pipe;
        o.err = Stdio::Pipe;
        if (m_req.confinement) m_req.confinement->apply(o);
        auto self = shared_from_this();
        m_child = ChildProcess::start(m_owner->m_ioc, std::move(o), "the command",
                                      [self](std::optional<ExitStatus> status) { self->onExit(status); });
        m_started = Clock::now();
        m_out.fd.assign(m_child->pipes().stdoutFd.release());
        m_err.fd.assign(m_child->pipes().stderrFd.release());
        m_out.fd.non_blocking(true);
        m_err.fd.non_blocking(true);
        m_out.open = m_err.open = true;
        if (m_streamStdin) {
            m_stdin.assign(m_child->pipes().stdinFd.release());
            m_stdinGranted = kStdinWindow;
        }
        m_timeout.expires_after(m_req.timeout);
        m_timeout.async_wait([self](boost::system::error_code ec) {
            if (!ec) self->onTimeout();
        });
        pump();
    }

    void ack(std::uint64_t bytes) {
        m_credit = std::min<std::uint64_t>(m_credit + bytes, kMaxCredit);
        pump();
    }

    void onStdin(std::span<const char> data) {
        if (!m_streamStdin) return abort(ErrorCode::BadRequest, "its stdin is not streamed (no \"stream_stdin\")");
        if (m_eof) return abort(ErrorCode::BadRequest, "a stdin frame after exec.eof");
        if (data.empty()) return abort(ErrorCode::BadRequest, "an empty stdin frame");
        if (data.size() > kMaxFrameBytes)
            return abort(ErrorCode::BadRequest, "a stdin frame of " + std::to_string(data.size()) +
                                                    " bytes, over the limit of " + std::to_string(kMaxFrameBytes));
        if (m_stdinReceived + data.size() > m_stdinGranted)
            return abort(ErrorCode::BadRequest,
                         "stdin beyond its window: " + std::to_string(m_stdinReceived + data.size()) + " bytes sent, " +
                             std::to_string(m_stdinGranted) + " granted");
        m_stdinReceived += data.size();
        if (!m_stdin.is_open()) return grantBack(data.size());  // the command no longer reads: dropped
        m_stdinQueue.emplace_back(data.data(), data.size());
        writeNext();
    }

    void eof() {
        if (!m_streamStdin)
            throw Error(ErrorCode::BadRequest,
                        "channel " + std::to_string(m_channel) + ": its stdin is not streamed (no \"stream_stdin\")");
        if (m_eof) throw Error(ErrorCode::BadRequest, "channel " + std::to_string(m_channel) + ": exec.eof came twice");
        m_eof = true;
        writeNext();
    }

    void terminate() {
        if (!m_exited) m_child->terminate(m_req.killGrace);
    }

    /// Ends the stream now: the command is killed, exec.end carries `message`.
    void abort(ErrorCode code, const std::string& message) {
        if (m_error.empty()) {
            m_error = "channel " + std::to_string(m_channel) + ": " + message;
            m_errorCode = code;
            log::warning("streamed exec on " + m_error + ": killing the command (pid " +
                         std::to_string(m_child->pid()) + ")");
        }
        if (!m_exited) m_child->kill();
        closeAll();
    }

    /// Nobody to tell any more (the agent or the link has gone): killed, quietly.
    void forget() {
        m_owner = nullptr;
        if (!m_exited) m_child->kill();
        closeAll();
    }

private:
    struct Output {
        Output(asio::io_context& ioc, ExecStream s) : fd(ioc), stream(s) {}
        asio::posix::stream_descriptor fd;
        ExecStream stream;
        bool open = false;
        bool waiting = false;     ///< for the pipe to be readable
        std::uint64_t bytes = 0;  ///< sent so far
    };

    /// Keeps a wait for data pending on each open pipe while there is
    /// credit. A wait takes no credit: what is read when the pipe is ready
    /// is what the credit allows then, so one quiet stream never holds
    /// credit the other needs.
    void pump() {
        for (Output* o : {&m_out, &m_err}) {
            if (!o->open || o->waiting || m_credit == 0) continue;
            o->waiting = true;
            o->fd.async_wait(
                asio::posix::descriptor_base::wait_read,
                [self = shared_from_this(), o](boost::system::error_code ec) { self->onReadable(*o, ec); });
        }
        armDrain();
    }

    void onReadable(Output& o, boost::system::error_code ec) {
        o.waiting = false;
        if (!ec && m_credit > 0) {
            auto want = static_cast<std::size_t>(std::min<std::uint64_t>(kReadBytes, m_credit));
            std::string frame = protocol::makeExecFrame(m_channel, o.stream, want);
            std::size_t n =
                o.fd.read_some(asio::buffer(frame.data() + protocol::kExecFrameHeaderBytes, want), ec);  // non-blocking
            if (ec == asio::error::would_block || ec == asio::error::try_again) {
                ec.clear();
            } else if (!ec) {
                frame.resize(protocol::kExecFrameHeaderBytes + n);
                m_credit -= n;
                o.bytes += n;
                if (m_owner && !m_owner->m_sendFrame(std::move(frame)))
                    return abort(ErrorCode::Unavailable, "the link to the platform could not take the output");
            }
        }
        if (ec) {
            // The end of the output (EOF), or the pipe was closed here.
            boost::system::error_code ignored;
            o.fd.close(ignored);
            o.open = false;
            armDrain();
            return maybeFinish();
        }
        pump();
    }

    /// After the exit, pipes that stay quiet while reads wait on them are
    /// held by what the command left behind: they are closed after a while.
    void armDrain() {
        if (!m_exited || m_finished) return;
        if (!m_out.waiting && !m_err.waiting) {
            m_drain.cancel();
            return;
        }
        m_drain.expires_after(kDrainAfterExit);
        m_drain.async_wait([self = shared_from_this()](boost::system::error_code ec) {
            if (!ec) self->closeOutputs();
        });
    }

    void writeNext() {
        if (m_writing || !m_stdin.is_open()) return;
        if (m_stdinQueue.empty()) {
            if (m_eof) closeStdin();
            return;
        }
        m_writing = true;
        asio::async_write(m_stdin, asio::buffer(m_stdinQueue.front()),
                          [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
                              self->m_writing = false;
                              if (ec) {
                                  // EPIPE: the command closed its stdin. What is left, and
                                  // what still comes, is dropped (and granted back).
                                  self->closeStdin();
                                  return;
                              }
                              self->m_stdinQueue.pop_front();
                              self->grantBack(n);
                              self->writeNext();
                          });
    }

    /// Stdin bytes written (or dropped): the agent may send as many more,
    /// told in batches of a quarter of the window, or when all is written.
    void grantBack(std::uint64_t bytes) {
        m_stdinUnacked += bytes;
        if (m_stdinUnacked < kStdinWindow / 4 && !m_stdinQueue.empty()) return;
        if (!m_owner || m_eof) return;
        m_stdinGranted += m_stdinUnacked;
        json::object p{{"channel", m_channel}, {"bytes", m_stdinUnacked}};
        m_stdinUnacked = 0;
        m_owner->m_sendText(protocol::makeMessage(
            "exec.ack", "eack-" + std::to_string(m_channel) + "-" + std::to_string(++m_acks), std::move(p)));
    }

    void closeStdin() {
        boost::system::error_code ignored;
        m_stdin.close(ignored);  // first: a write in flight is cancelled before its buffer goes
        std::uint64_t dropped = 0;
        for (const auto& chunk : m_stdinQueue) dropped += chunk.size();
        m_stdinQueue.clear();
        if (dropped) grantBack(dropped);
    }

    void closeOutputs() {
        boost::system::error_code ignored;
        for (Output* o : {&m_out, &m_err}) {
            // A pending wait completes with an error and marks it closed.
            o->fd.close(ignored);
            if (!o->waiting) o->open = false;
        }
        maybeFinish();
    }

    void closeAll() {
        closeStdin();
        closeOutputs();
    }

    void onTimeout() {
        if (m_exited) return;
        m_timedOut = true;
        log::info("streamed exec pid " + std::to_string(m_child->pid()) + " on channel " + std::to_string(m_channel) +
                  " timed out after " + std::to_string(m_req.timeout.count()) +
                  " ms: sending SIGTERM to its process group");
        m_child->terminate(m_req.killGrace);
    }

    void onExit(std::optional<ExitStatus> status) {
        if (status) {
            m_exitCode = status->code;
            m_signal = status->signal;
        }
        m_exited = true;
        m_duration = std::chrono::duration<double>(Clock::now() - m_started).count();
        m_timeout.cancel();
        // Nobody reads stdin any more: what still comes is dropped (exec.eof stays allowed).
        closeStdin();
        armDrain();
        maybeFinish();
    }

    void maybeFinish() {
        if (m_finished || !m_exited || m_out.open || m_err.open) return;
        m_finished = true;
        m_drain.cancel();
        ExecResult r;
        r.pid = m_child->pid();
        r.exitCode = m_exitCode;
        r.signal = m_signal;
        r.timedOut = m_timedOut;
        r.durationSeconds = m_duration;
        if (m_ended) std::exchange(m_ended, nullptr)(r);
        if (!m_owner) return;
        json::object p = r.statusJson();
        p["channel"] = m_channel;
        p["stdout_bytes"] = m_out.bytes;
        p["stderr_bytes"] = m_err.bytes;
        p["stdin_bytes"] = m_stdinReceived;
        if (!m_error.empty()) {
            p["error"] = m_error;
            p["code"] = std::string(toProtocolCode(m_errorCode));
        }
        auto* owner = std::exchange(m_owner, nullptr);
        owner->m_sendText(protocol::makeMessage("exec.end", "eend-" + std::to_string(m_channel), std::move(p)));
        owner->forget(m_channel);
    }

    ExecStreams* m_owner;  ///< null once nobody is to be told
    std::uint32_t m_channel;
    ExecRequest m_req;
    std::string m_agentId;
    Ended m_ended;
    std::uint64_t m_credit;
    bool m_streamStdin;
    Output m_out, m_err;
    asio::posix::stream_descriptor m_stdin;
    std::deque<std::string> m_stdinQueue;
    std::uint64_t m_stdinReceived = 0, m_stdinGranted = 0, m_stdinUnacked = 0, m_acks = 0;
    bool m_writing = false, m_eof = false;
    std::shared_ptr<ChildProcess> m_child;
    asio::steady_timer m_timeout, m_drain;
    Clock::time_point m_started;
    std::optional<int> m_exitCode, m_signal;
    double m_duration = 0;
    bool m_timedOut = false, m_exited = false, m_finished = false;
    std::string m_error;
    ErrorCode m_errorCode = ErrorCode::Internal;
};

ExecStreams::ExecStreams(asio::io_context& ioc) : m_ioc(ioc) {}

ExecStreams::~ExecStreams() {
    try {
        closeAll();
    } catch (const std::exception& e) {
        log::error(std::string("ending the streamed commands: ") + e.what());
    }
}

void ExecStreams::setSenders(SendText text, SendFrame frame) {
    m_sendText = std::move(text);
    m_sendFrame = std::move(frame);
}

ExecStreams::Opened ExecStreams::open(ExecRequest request, std::uint64_t credit, bool streamStdin,
                                      const std::string& agentId, Ended ended) {
    if (request.argv.empty()) throw Error(ErrorCode::BadRequest, "empty command");
    if (m_runs.size() >= kMaxStreams)
        throw Error(ErrorCode::Limit, "this daemon already streams " + std::to_string(m_runs.size()) +
                                          " commands (the limit is " + std::to_string(kMaxStreams) + ")");
    if (!m_sendText || !m_sendFrame) throw Error(ErrorCode::Unavailable, "this daemon cannot stream output now");
    std::uint32_t channel = m_nextChannel;
    while (m_runs.count(channel)) channel = channel == kLastChannel ? kFirstChannel : channel + 1;
    m_nextChannel = channel == kLastChannel ? kFirstChannel : channel + 1;
    request.stdinData.reset();
    auto run = std::make_shared<Run>(*this, channel, std::move(request), credit ? credit : kDefaultCredit, streamStdin,
                                     agentId, std::move(ended));
    run->start();
    m_runs.emplace(channel, run);
    return Opened{channel, run->pid(), run->stdinGranted()};
}

bool ExecStreams::recentlyEnded(std::uint32_t channel) const {
    return std::find(m_ended.begin(), m_ended.end(), channel) != m_ended.end();
}

void ExecStreams::forget(std::uint32_t channel) {
    if (!m_runs.erase(channel)) return;
    m_ended.push_back(channel);
    if (m_ended.size() > kRememberEnded) m_ended.pop_front();
}

void ExecStreams::onFrame(std::span<const char> frame) {
    auto f = protocol::decodeChannelFrame(frame);
    if (!f) return;
    auto it = m_runs.find(f->channel);
    if (it == m_runs.end()) return;
    auto run = it->second;  // an abort may forget it
    auto e = protocol::decodeExecFrame(frame);
    if (!e) return run->abort(ErrorCode::BadRequest, "a frame without its stream byte");
    if (e->stream != static_cast<std::uint8_t>(ExecStream::Stdin))
        return run->abort(ErrorCode::BadRequest,
                          "a frame for stream " + std::to_string(e->stream) + ": only stdin (0) goes to the daemon");
    run->onStdin(e->data);
}

ExecStreams::Run& ExecStreams::owned(std::uint32_t channel, const std::string& agentId) {
    auto it = m_runs.find(channel);
    if (it == m_runs.end()) throw Error(ErrorCode::NotFound, "channel " + std::to_string(channel) + " is not open");
    if (it->second->agentId() != agentId)
        throw Error(ErrorCode::NotOwner, "channel " + std::to_string(channel) + " belongs to another agent");
    return *it->second;
}

void ExecStreams::ack(std::uint32_t channel, std::uint64_t bytes, const std::string& agentId) {
    owned(channel, agentId).ack(bytes);
}

void ExecStreams::eof(std::uint32_t channel, const std::string& agentId) { owned(channel, agentId).eof(); }

void ExecStreams::close(std::uint32_t channel, const std::string& agentId) { owned(channel, agentId).terminate(); }

void ExecStreams::detach(std::uint32_t channel) {
    auto it = m_runs.find(channel);
    if (it == m_runs.end()) return;
    auto run = it->second;
    forget(channel);
    log::info("streamed exec on channel " + std::to_string(channel) + ": its agent has gone, killing pid " +
              std::to_string(run->pid()));
    run->forget();
}

void ExecStreams::closeAll() {
    auto runs = std::move(m_runs);
    m_runs.clear();
    for (auto& [channel, run] : runs) run->forget();
}

}  // namespace hpc::daemon
