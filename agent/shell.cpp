#include "shell.hpp"

#include "errors.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

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

}  // namespace

int runShell(AgentClient& client, const std::string& daemonId, PtySpec spec) {
    windowSize(spec.cols, spec.rows);
    auto pty = client.openPty(daemonId, spec);

    if (::pipe2(g_signalPipe, O_CLOEXEC | O_NONBLOCK) != 0) throw Error(ErrorCode::Internal, "pipe2 failed");
    struct sigaction sa {};
    sa.sa_handler = onSignal;
    for (int sig : {SIGWINCH, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);

    RawTerminal raw;
    bool stdinOpen = true;
    // Credit goes back in quarters of the daemon's default 1 MiB window.
    constexpr std::size_t kAckEvery = std::size_t{256} * 1024;
    std::size_t unacked = 0;
    char buf[65536];
    while (true) {
        pollfd fds[3] = {{stdinOpen ? STDIN_FILENO : -1, POLLIN, 0},
                         {client.ws().nativeFd(), POLLIN, 0},
                         {g_signalPipe[0], POLLIN, 0}};
        if (::poll(fds, 3, 1000) < 0 && errno != EINTR) break;
        if (fds[2].revents & POLLIN) {
            unsigned char sig = 0;
            while (::read(g_signalPipe[0], &sig, 1) == 1) {
                if (sig == SIGWINCH) {
                    unsigned cols, rows;
                    if (windowSize(cols, rows)) client.ptyResize(daemonId, pty.channel, cols, rows);
                } else {
                    client.ptyClose(daemonId, pty.channel, SIGHUP);  // our terminal went away
                }
            }
        }
        if (fds[0].revents & (POLLIN | POLLHUP)) {
            ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
            if (n > 0) {
                client.ptyInput(pty.channel, std::string_view(buf, static_cast<std::size_t>(n)));
            } else if (n == 0) {
                stdinOpen = false;
                client.ptyInput(pty.channel, "\x04");  // EOF for the remote shell too
            }
        }
        // Drain everything that has arrived (TLS may hold more than the socket shows).
        while (auto e = client.nextPtyEvent(std::chrono::milliseconds(0))) {
            if (e->channel != pty.channel) continue;
            if (e->kind == PtyEvent::Kind::Exit) {
                raw.restore();
                if (!e->error.empty()) throw Error(ErrorCode::Unavailable, "the session was lost: " + e->error);
                return e->exitCode ? *e->exitCode : 128 + e->signal.value_or(0);
            }
            writeAll(STDOUT_FILENO, e->data.data(), e->data.size());
            unacked += e->data.size();
            if (unacked >= kAckEvery) {
                client.ptyAck(daemonId, pty.channel, unacked);
                unacked = 0;
            }
        }
    }
    raw.restore();
    throw Error(ErrorCode::Unavailable, "the connection to the platform broke");
}

}  // namespace hpc::agent
