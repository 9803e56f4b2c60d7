#include "shell.hpp"

#include "backoff.hpp"
#include "errors.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <thread>

namespace hpc::agent {
namespace {

/// The self-pipe SIGWINCH and SIGTERM/SIGHUP write to, so poll() sees them.
int g_signalPipe[2] = {-1, -1};

void onSignal(int sig) {
    int saved = errno;
    unsigned char b = static_cast<unsigned char>(sig);
    [[maybe_unused]] auto n = ::write(g_signalPipe[1], &b, 1);
    errno = saved;
}

/// Raw mode for the local terminal while it lives.
class RawTerminal {
public:
    RawTerminal() {
        if (!::isatty(STDIN_FILENO) || ::tcgetattr(STDIN_FILENO, &m_saved) != 0) return;
        termios raw = m_saved;
        ::cfmakeraw(&raw);
        if (::tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) == 0) m_active = true;
    }
    ~RawTerminal() { restore(); }
    void restore() {
        if (m_active) ::tcsetattr(STDIN_FILENO, TCSADRAIN, &m_saved);
        m_active = false;
    }

private:
    termios m_saved{};
    bool m_active = false;
};

bool windowSize(unsigned& cols, unsigned& rows) {
    winsize ws{};
    if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) != 0 || ws.ws_col == 0) return false;
    cols = ws.ws_col;
    rows = ws.ws_row;
    return true;
}

void writeAll(int fd, const char* data, std::size_t size) {
    while (size > 0) {
        ssize_t n = ::write(fd, data, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                pollfd p{fd, POLLOUT, 0};
                ::poll(&p, 1, -1);
                continue;
            }
            return;
        }
        data += n;
        size -= static_cast<std::size_t>(n);
    }
}

/// How the session with the daemon is going: the connection, the channel,
/// and the count of output bytes written to the terminal.
struct Session {
    std::unique_ptr<AgentClient> client;
    PtyHandle pty;
    std::uint64_t received = 0;
    std::size_t unacked = 0;
    bool stdinOpen = true;  ///< until our stdin ends (its EOF is sent once)
};

/// The connection or the daemon's link broke: the session may be attached again.
struct Lost {
    std::string why;
};

/// Runs the terminal until the remote shell exits (its status) or the
/// session is lost (throws Lost); other failures throw hpc::Error.
int pump(Session& s, const std::string& daemonId, RawTerminal& raw) {
    auto& client = *s.client;
    // Credit goes back in quarters of the daemon's default 1 MiB window, and
    // whatever is left once the output pauses for a second: the daemon keeps
    // what is not acknowledged for a reattach.
    constexpr std::size_t kAckEvery = std::size_t{256} * 1024;
    char buf[65536];
    try {
        while (true) {
            pollfd fds[3] = {{s.stdinOpen ? STDIN_FILENO : -1, POLLIN, 0},
                             {client.ws().nativeFd(), POLLIN, 0},
                             {g_signalPipe[0], POLLIN, 0}};
            int ready = ::poll(fds, 3, 1000);
            if (ready < 0 && errno != EINTR) throw Lost{"poll failed"};
            if (ready == 0 && s.unacked > 0) {
                client.ptyAck(daemonId, s.pty.channel, s.unacked);
                s.unacked = 0;
            }
            if (fds[2].revents & POLLIN) {
                unsigned char sig = 0;
                while (::read(g_signalPipe[0], &sig, 1) == 1) {
                    if (sig == SIGWINCH) {
                        unsigned cols, rows;
                        if (windowSize(cols, rows)) client.ptyResize(daemonId, s.pty.channel, cols, rows);
                    } else {
                        client.ptyClose(daemonId, s.pty.channel, SIGHUP);  // our terminal went away
                    }
                }
            }
            if (fds[0].revents & (POLLIN | POLLHUP)) {
                ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
                if (n > 0) {
                    client.ptyInput(s.pty.channel, std::string_view(buf, static_cast<std::size_t>(n)));
                } else if (n == 0) {
                    s.stdinOpen = false;
                    client.ptyInput(s.pty.channel, "\x04");  // EOF for the remote shell too
                }
            }
            // Drain everything that has arrived (TLS may hold more than the socket shows).
            while (auto e = client.nextPtyEvent(std::chrono::milliseconds(0))) {
                if (e->channel != s.pty.channel) continue;
                if (e->kind == PtyEvent::Kind::Exit) {
                    if (e->error.empty()) {
                        raw.restore();
                        return e->exitCode ? *e->exitCode : 128 + e->signal.value_or(0);
                    }
                    // The daemon went away (UNAVAILABLE): it keeps the shell for a while.
                    if (e->errorCode == "UNAVAILABLE") throw Lost{e->error};
                    raw.restore();
                    throw Error(ErrorCode::Unavailable, "the session was lost: " + e->error);
                }
                writeAll(STDOUT_FILENO, e->data.data(), e->data.size());
                s.received += e->data.size();
                s.unacked += e->data.size();
                if (s.unacked >= kAckEvery) {
                    client.ptyAck(daemonId, s.pty.channel, s.unacked);
                    s.unacked = 0;
                }
            }
        }
    } catch (const Error& e) {
        if (e.code() != ErrorCode::Unavailable) throw;
        throw Lost{e.what()};  // the connection to the platform broke
    }
}

void tell(const std::string& line) {
    std::string text = "\r\nhpc-agent: " + line + "\r\n";
    writeAll(STDERR_FILENO, text.data(), text.size());
}

}  // namespace

int runShell(const ConnectAgent& connect, const std::string& daemonId, PtySpec spec, const std::string& attach) {
    windowSize(spec.cols, spec.rows);
    Session s;
    s.client = connect();
    s.pty = attach.empty() ? s.client->openPty(daemonId, spec) : s.client->attachPty(daemonId, attach, std::nullopt);
    s.received = s.pty.fromByte;
    if (!attach.empty()) s.client->ptyResize(daemonId, s.pty.channel, spec.cols, spec.rows);

    if (::pipe2(g_signalPipe, O_CLOEXEC | O_NONBLOCK) != 0) throw Error(ErrorCode::Internal, "pipe2 failed");
    struct sigaction sa {};
    sa.sa_handler = onSignal;
    for (int sig : {SIGWINCH, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);

    RawTerminal raw;
    for (;;) {
        try {
            return pump(s, daemonId, raw);
        } catch (const Lost& lost) {
            tell(lost.why + "; attaching to shell session " + s.pty.session + " again");
        }
        // The daemon keeps the shell for its grace period (30 s by default)
        // after the agent went away, and its own link may take a while to come
        // back: try for a minute.
        Backoff backoff(std::chrono::milliseconds(250), std::chrono::seconds(5), std::chrono::milliseconds(100));
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        std::string lastError;
        for (;;) {
            try {
                s.client.reset();
                s.client = connect();
                auto again = s.client->attachPty(daemonId, s.pty.session, s.received);
                if (again.fromByte > s.received)
                    tell(std::to_string(again.fromByte - s.received) +
                         " bytes of output were lost (more than the "
                         "daemon keeps went unacknowledged)");
                s.pty.channel = again.channel;
                s.received = again.fromByte;
                s.unacked = 0;
                unsigned cols, rows;
                if (windowSize(cols, rows)) s.client->ptyResize(daemonId, s.pty.channel, cols, rows);
                tell("attached again");
                break;
            } catch (const Error& e) {
                if (e.code() != ErrorCode::Unavailable) {
                    raw.restore();
                    throw Error(e.code(), std::string("the shell session could not be attached again: ") + e.what());
                }
                lastError = e.what();
            }
            auto delay = backoff.next();
            if (std::chrono::steady_clock::now() + delay >= deadline) {
                raw.restore();
                throw Error(ErrorCode::Unavailable, "the session was lost (" + lastError +
                                                        "); if the daemon comes back within its grace period: "
                                                        "hpc-agent shell --attach " +
                                                        s.pty.session + " " + daemonId);
            }
            std::this_thread::sleep_for(delay);
        }
    }
}

}  // namespace hpc::agent
