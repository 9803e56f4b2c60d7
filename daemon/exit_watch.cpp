#include "exit_watch.hpp"

#include "log.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <system_error>
#include <vector>

namespace asio = boost::asio;

namespace hpc::daemon {
namespace {

std::atomic<bool> g_forceFallback{false};

bool kernelHasPidfd() {
    static const bool has = [] {
        // ENOSYS before Linux 5.3; a seccomp filter may answer EPERM instead.
        int fd = static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0));
        if (fd < 0) return false;
        ::close(fd);
        return true;
    }();
    return has;
}

bool usePidfd() { return !g_forceFallback && kernelHasPidfd(); }

/// SIGCHLD, turned into a readable byte on a pipe the loop waits on. The
/// handler is installed once per process and never removed.
int g_sigchldPipe[2] = {-1, -1};

extern "C" void onSigchld(int) {
    int saved = errno;
    char c = 0;
    [[maybe_unused]] auto n = ::write(g_sigchldPipe[1], &c, 1);  // full pipe: a wake-up is already pending
    errno = saved;
}

void installSigchldHandler() {
    static std::once_flag once;
    std::call_once(once, [] {
        if (::pipe2(g_sigchldPipe, O_CLOEXEC | O_NONBLOCK) != 0)
            throw std::system_error(errno, std::generic_category(), "pipe2");
        struct sigaction sa {};
        sa.sa_handler = onSigchld;
        sigemptyset(&sa.sa_mask);
        // SA_RESTART: the rest of the daemon never sees EINTR for it.
        sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
        if (::sigaction(SIGCHLD, &sa, nullptr) != 0)
            throw std::system_error(errno, std::generic_category(), "sigaction(SIGCHLD)");
    });
}

constexpr auto kPollPeriod = std::chrono::seconds(1);

/// A process that is not ours has ended when it is gone or a zombie (its
/// parent has not reaped it yet).
bool processEnded(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text;
    if (stat && std::getline(stat, text)) {
        auto close = text.rfind(')');  // the name may hold spaces and parentheses
        return close == std::string::npos || close + 2 >= text.size() || text[close + 2] == 'Z' ||
               text[close + 2] == 'X';
    }
    return ::kill(pid, 0) != 0 && errno == ESRCH;
}

class ExitWatchService : public asio::io_context::service {
public:
    static asio::io_context::id id;

    explicit ExitWatchService(asio::io_context& ioc)
        : asio::io_context::service(ioc), m_ioc(ioc), m_wake(ioc), m_poll(ioc) {}

    std::uint64_t watch(pid_t pid, bool ourChild, ExitHandler onExit) {
        std::uint64_t token = ++m_lastToken;
        Entry entry{pid, ourChild, std::move(onExit), nullptr};
        if (usePidfd()) {
            entry.pidfd = std::make_unique<asio::posix::stream_descriptor>(m_ioc, openPidFd(pid).release());
            entry.pidfd->async_wait(asio::posix::descriptor_base::wait_read,
                                    [this, token](boost::system::error_code ec) {
                                        if (!ec) pidfdReadable(token);
                                    });
        } else {
            if (!ourChild && processEnded(pid))
                throw std::system_error(ESRCH, std::generic_category(), "process " + std::to_string(pid));
            startFallback();
            // It may have ended before SIGCHLD had a handler.
            asio::post(m_ioc, [this] { scan(); });
        }
        m_entries.emplace(token, std::move(entry));
        return token;
    }

    void cancel(std::uint64_t token) {
        auto it = m_entries.find(token);
        if (it == m_entries.end()) return;
        auto entry = std::move(it->second);
        m_entries.erase(it);
        if (entry.pidfd) {
            boost::system::error_code ignored;
            entry.pidfd->close(ignored);
        }
    }

private:
    struct Entry {
        pid_t pid;
        bool ourChild;
        ExitHandler onExit;
        std::unique_ptr<asio::posix::stream_descriptor> pidfd;
    };

    void shutdown() override {
        m_entries.clear();
        boost::system::error_code ignored;
        m_wake.close(ignored);
        m_poll.cancel();
    }

    void pidfdReadable(std::uint64_t token) {
        auto it = m_entries.find(token);
        if (it == m_entries.end()) return;
        Entry entry = std::move(it->second);
        m_entries.erase(it);
        boost::system::error_code ignored;
        entry.pidfd->close(ignored);
        std::optional<ExitStatus> status;
        int raw = 0;
        // The process has exited: this wait does not block.
        if (entry.ourChild && ::waitpid(entry.pid, &raw, 0) == entry.pid) status = ExitStatus::fromWaitStatus(raw);
        entry.onExit(status);
    }

    void startFallback() {
        if (m_fallbackStarted) return;
        m_fallbackStarted = true;
        installSigchldHandler();
        m_wake.assign(::fcntl(g_sigchldPipe[0], F_DUPFD_CLOEXEC, 0));
        waitForSignal();
        armPoll();
    }

    void waitForSignal() {
        m_wake.async_wait(asio::posix::descriptor_base::wait_read, [this](boost::system::error_code ec) {
            if (ec) return;
            char buf[64];
            while (::read(m_wake.native_handle(), buf, sizeof buf) > 0) {
            }
            scan();
            waitForSignal();
        });
    }

    /// Processes that are not our children send no SIGCHLD; a lost wake-up
    /// (another loop of this process drained the pipe) is caught here too.
    void armPoll() {
        m_poll.expires_after(kPollPeriod);
        m_poll.async_wait([this](boost::system::error_code ec) {
            if (ec) return;
            scan();
            armPoll();
        });
    }

    void scan() {
        std::vector<std::pair<Entry, std::optional<ExitStatus>>> ended;
        for (auto it = m_entries.begin(); it != m_entries.end();) {
            Entry& e = it->second;
            bool gone = false;
            std::optional<ExitStatus> status;
            if (e.ourChild) {
                int raw = 0;
                pid_t r = ::waitpid(e.pid, &raw, WNOHANG);
                if (r == e.pid) {
                    gone = true;
                    status = ExitStatus::fromWaitStatus(raw);
                } else if (r < 0 && errno == ECHILD) {
                    gone = true;  // reaped elsewhere: its status is lost
                }
            } else {
                gone = processEnded(e.pid);
            }
            if (!gone) {
                ++it;
                continue;
            }
            ended.emplace_back(std::move(e), status);
            it = m_entries.erase(it);
        }
        // Handlers may watch or cancel others: call them after the walk.
        for (auto& [entry, status] : ended) entry.onExit(status);
    }

    asio::io_context& m_ioc;
    asio::posix::stream_descriptor m_wake;
    asio::steady_timer m_poll;
    bool m_fallbackStarted = false;
    std::uint64_t m_lastToken = 0;
    std::map<std::uint64_t, Entry> m_entries;
};

asio::io_context::id ExitWatchService::id;

}  // namespace

std::uint64_t ExitWatch::watch(asio::io_context& ioc, pid_t pid, bool ourChild, ExitHandler onExit) {
    return asio::use_service<ExitWatchService>(ioc).watch(pid, ourChild, std::move(onExit));
}

void ExitWatch::cancel(asio::io_context& ioc, std::uint64_t token) {
    asio::use_service<ExitWatchService>(ioc).cancel(token);
}

const char* ExitWatch::method() { return usePidfd() ? "pidfd" : "SIGCHLD"; }

void ExitWatch::forceSignalFallback(bool on) { g_forceFallback = on; }

}  // namespace hpc::daemon
