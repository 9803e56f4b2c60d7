#include "child_process.hpp"

#include "errors.hpp"
#include "exit_watch.hpp"
#include "log.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <boost/asio/post.hpp>

#include <cerrno>
#include <system_error>

namespace asio = boost::asio;

namespace hpc::daemon {
namespace {

Error startError(const std::system_error& e, const std::string& program, const std::string& name,
                 ChildProcess::ProgramOf whose) {
    if (whose == ChildProcess::ProgramOf::Agent) {
        if (e.code() == std::errc::no_such_file_or_directory)
            return Error(ErrorCode::NotFound, "no such program: " + program);
        if (e.code() == std::errc::permission_denied)
            return Error(ErrorCode::BadRequest, "permission denied running " + program);
    }
    return Error(ErrorCode::Internal, "cannot start " + name + ": " + e.what());
}

}  // namespace

ChildProcess::ChildProcess(asio::io_context& ioc, pid_t pid, std::string name, OnExit onExit)
    : m_ioc(ioc), m_pid(pid), m_name(std::move(name)), m_onExit(std::move(onExit)), m_grace(ioc) {}

std::shared_ptr<ChildProcess> ChildProcess::start(asio::io_context& ioc, SpawnOptions options, std::string name,
                                                  OnExit onExit, ProgramOf whose) {
    options.newSession = true;
    SpawnedProcess spawned;
    try {
        spawned = spawn(options);
    } catch (const std::system_error& e) {
        throw startError(e, options.argv.front(), name, whose);
    }
    std::shared_ptr<ChildProcess> child(new ChildProcess(ioc, spawned.pid, std::move(name), std::move(onExit)));
    child->m_pipes = std::move(spawned);
    try {
        child->watch(true);
    } catch (const std::system_error& e) {
        // Unfollowed, it would never be reaped: it goes now (it has just
        // been killed, so this wait is short).
        ::kill(-child->m_pid, SIGKILL);
        while (::waitpid(child->m_pid, nullptr, 0) < 0 && errno == EINTR) {
        }
        throw Error(ErrorCode::Internal, "cannot follow " + child->m_name + ": " + e.what());
    }
    return child;
}

std::shared_ptr<ChildProcess> ChildProcess::follow(asio::io_context& ioc, pid_t pid, std::string name, OnExit onExit) {
    std::shared_ptr<ChildProcess> child(new ChildProcess(ioc, pid, std::move(name), std::move(onExit)));
    try {
        child->watch(false);
    } catch (const std::system_error&) {
        // Gone between the caller's look and now: it has ended.
        asio::post(ioc, [child] { child->exited(std::nullopt); });
    }
    return child;
}

void ChildProcess::watch(bool ourChild) {
    m_watch = ExitWatch::watch(m_ioc, m_pid, ourChild,
                               [self = shared_from_this()](std::optional<ExitStatus> status) { self->exited(status); });
}

void ChildProcess::exited(std::optional<ExitStatus> status) {
    m_watch.reset();
    auto onExit = std::move(m_onExit);
    m_onExit = nullptr;  // what it holds (often its owner) is let go
    if (onExit) onExit(status);
}

void ChildProcess::signalGroup(int sig) {
    ::kill(-m_pid, sig);
    if (m_alsoSignal) m_alsoSignal(sig);
}

void ChildProcess::terminate(std::chrono::milliseconds grace) {
    signalGroup(SIGTERM);
    m_grace.expires_after(grace);
    m_grace.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (ec) return;
        if (self->running())
            log::info(self->m_name + " (pid " + std::to_string(self->m_pid) + ") outlived its grace period: SIGKILL");
        // Also when the leader has gone: what ignored TERM is still in the group.
        self->signalGroup(SIGKILL);
    });
}

void ChildProcess::kill() {
    m_grace.cancel();
    signalGroup(SIGKILL);
}

void ChildProcess::release() {
    auto keep = shared_from_this();  // the watch being dropped may hold the last reference
    if (m_watch) ExitWatch::cancel(m_ioc, *m_watch);
    m_watch.reset();
    m_grace.cancel();
    m_onExit = nullptr;
}

}  // namespace hpc::daemon
