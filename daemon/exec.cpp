#include "exec.hpp"

#include "exec_stream.hpp"

#include "child_process.hpp"
#include "errors.hpp"
#include "log.hpp"
#include "util.hpp"

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <array>

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace hpc::daemon {

/// How long to keep reading after the command exited, for output still in
/// flight from processes it left behind holding the pipes.
constexpr auto kDrainAfterExit = std::chrono::seconds(1);

class ExecRun : public std::enable_shared_from_this<ExecRun> {
public:
    ExecRun(ExecService& service, ExecRequest req, std::function<void(ExecResult)> done)
        : m_service(service),
          m_req(std::move(req)),
          m_done(std::move(done)),
          m_stdout(service.m_ioc),
          m_stderr(service.m_ioc),
          m_stdin(service.m_ioc),
          m_timeout(service.m_ioc),
          m_drain(service.m_ioc) {}

    void start() {
        SpawnOptions o;
        o.argv = m_req.argv;
        o.cwd = m_req.cwd;
        o.envOverrides = m_req.env;
        o.in = m_req.stdinData ? Stdio::Pipe : Stdio::Null;
        o.out = Stdio::Pipe;
        o.err = Stdio::Pipe;
        if (m_req.confinement) m_req.confinement->apply(o);
        auto self = shared_from_this();
        m_child = ChildProcess::start(m_service.m_ioc, std::move(o), "the command",
                                      [self](std::optional<ExitStatus> status) { self->onExit(status); });
        m_started = Clock::now();
        m_result.pid = m_child->pid();
        m_stdout.assign(m_child->pipes().stdoutFd.release());
        m_stderr.assign(m_child->pipes().stderrFd.release());
        m_service.m_running.emplace(this, self);
        readFrom(m_stdout, m_outBuf, m_result.out, m_result.outTruncated, m_outOpen);
        readFrom(m_stderr, m_errBuf, m_result.err, m_result.errTruncated, m_errOpen);
        if (m_req.stdinData) {
            m_stdin.assign(m_child->pipes().stdinFd.release());
            asio::async_write(m_stdin, asio::buffer(*m_req.stdinData), [self](boost::system::error_code, std::size_t) {
                boost::system::error_code ignored;
                self->m_stdin.close(ignored);  // EOF for the command; EPIPE when it did not read is fine
            });
        }
        m_timeout.expires_after(m_req.timeout);
        m_timeout.async_wait([self](boost::system::error_code ec) {
            if (!ec) self->onTimeout();
        });
    }

    void kill() { m_child->kill(); }

private:
    void readFrom(asio::posix::stream_descriptor& fd, std::array<char, 65536>& buf, std::string& sink, bool& truncated,
                  bool& open) {
        open = true;
        fd.async_read_some(asio::buffer(buf), [self = shared_from_this(), &fd, &buf, &sink, &truncated, &open](
                                                  boost::system::error_code ec, std::size_t n) {
            if (ec) {
                open = false;
                boost::system::error_code ignored;
                fd.close(ignored);
                self->maybeFinish();
                return;
            }
            std::size_t room = self->m_req.maxOutputBytes > sink.size() ? self->m_req.maxOutputBytes - sink.size() : 0;
            // Beyond the cap keep reading (so the command never blocks on a
            // full pipe) but drop the bytes.
            sink.append(buf.data(), std::min(n, room));
            if (n > room) truncated = true;
            self->readFrom(fd, buf, sink, truncated, open);
        });
    }

    void onExit(std::optional<ExitStatus> status) {
        if (status) {
            m_result.exitCode = status->code;
            m_result.signal = status->signal;
        }
        m_exited = true;
        m_result.durationSeconds = std::chrono::duration<double>(Clock::now() - m_started).count();
        m_timeout.cancel();
        m_drain.expires_after(kDrainAfterExit);
        m_drain.async_wait([self = shared_from_this()](boost::system::error_code ec) {
            if (ec) return;
            boost::system::error_code ignored;
            self->m_stdout.cancel(ignored);
            self->m_stderr.cancel(ignored);
        });
        maybeFinish();
    }

    void onTimeout() {
        if (m_exited) return;
        m_result.timedOut = true;
        log::info("exec pid " + std::to_string(m_child->pid()) + " timed out after " +
                  std::to_string(m_req.timeout.count()) + " ms: sending SIGTERM to its process group");
        m_child->terminate(m_req.killGrace);
    }

    void maybeFinish() {
        if (m_finished || !m_exited || m_outOpen || m_errOpen) return;
        m_finished = true;
        m_drain.cancel();
        m_service.m_running.erase(this);
        auto done = std::move(m_done);
        done(std::move(m_result));
    }

    ExecService& m_service;
    ExecRequest m_req;
    std::function<void(ExecResult)> m_done;
    asio::posix::stream_descriptor m_stdout, m_stderr, m_stdin;
    std::shared_ptr<ChildProcess> m_child;
    asio::steady_timer m_timeout, m_drain;
    std::array<char, 65536> m_outBuf{}, m_errBuf{};
    ExecResult m_result;
    Clock::time_point m_started;
    bool m_outOpen = false, m_errOpen = false, m_exited = false, m_finished = false;
};

ExecService::ExecService(asio::io_context& ioc, std::size_t maxConcurrent)
    : m_ioc(ioc), m_maxConcurrent(maxConcurrent), m_streams(std::make_unique<ExecStreams>(ioc)) {}

ExecService::~ExecService() { killAll(); }

std::size_t ExecService::running() const { return m_running.size() + m_streams->count(); }

void ExecService::start(ExecRequest request, std::function<void(ExecResult)> done) {
    if (running() >= m_maxConcurrent)
        throw Error(ErrorCode::Limit, "too many commands running (" + std::to_string(m_maxConcurrent) + ")");
    if (request.argv.empty()) throw Error(ErrorCode::BadRequest, "empty command");
    auto run = std::make_shared<ExecRun>(*this, std::move(request), std::move(done));
    run->start();
}

void ExecService::killAll() {
    for (auto& [raw, weak] : m_running)
        if (auto run = weak.lock()) run->kill();
    m_streams->closeAll();
}

}  // namespace hpc::daemon
