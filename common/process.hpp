#pragma once
/// Child processes: spawning with pipes in a new session, and a guard that
/// never lets a child outlive its owner.

#include "fd.hpp"

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace hpc {

enum class Stdio { Inherit, Null, Pipe };

inline constexpr std::size_t kMaxExtraFds = 8;

struct SpawnOptions {
    std::vector<std::string> argv;  ///< argv[0] is looked up in PATH
    std::string cwd;                ///< empty: the caller's cwd
    /// Extra "NAME=value" entries over the caller's environment.
    std::vector<std::string> envOverrides;
    /// A new session (and so a new process group whose id is the pid), so a
    /// signal to -pid reaches every process the child starts.
    bool newSession = true;
    Stdio in = Stdio::Null;
    Stdio out = Stdio::Inherit;
    Stdio err = Stdio::Inherit;
    /// When set, stdout and stderr go to this file (appended, 0600) instead.
    std::string outputFile;
    /// A Landlock ruleset fd: the child restricts itself with it (and sets
    /// no_new_privs) before exec.
    int landlockRuleset = -1;
    /// A PTY slave: the child makes it its controlling terminal and its
    /// stdin, stdout and stderr (in, out, err and outputFile are ignored).
    /// Needs newSession.
    int controllingTerminal = -1;
    /// More descriptors for the child: {ours, its number}; at most
    /// kMaxExtraFds. No other descriptor above 2 reaches the child.
    std::vector<std::pair<int, int>> extraFds;
    /// The child gets SIGTERM when this process dies, however it dies (a
    /// helper that must not outlive its owner, even after SIGKILL).
    bool dieWithParent = false;
};

struct SpawnedProcess {
    pid_t pid = -1;
    UniqueFd stdinFd;   ///< write end, when in == Pipe
    UniqueFd stdoutFd;  ///< read end, when out == Pipe
    UniqueFd stderrFd;  ///< read end, when err == Pipe
};

/// Starts a child (vfork and exec: no page-table copy, whatever the caller's
/// size). The child gets descriptors 0-2 and extraFds, nothing else of ours,
/// whatever their close-on-exec flag. Throws std::system_error (ENOENT when
/// the program is not found, or the errno of the failing step). Pipe fds are
/// O_CLOEXEC and, on the parent side, O_NONBLOCK.
SpawnedProcess spawn(const SpawnOptions& options);

/// Raises this process's open-file soft limit to its hard limit: a daemon or
/// a relay holds a descriptor per connection, shell and pipe, and a login
/// shell's 1024 is too few for a few hundred shells. Children started by
/// spawn() from then on get the soft limit back as it was, so the programs
/// they run see the account's usual limit. Returns {before, after}.
std::pair<unsigned long, unsigned long> raiseOpenFileLimit();

/// How a child ended: exactly one of code and signal is set.
struct ExitStatus {
    std::optional<int> code;
    std::optional<int> signal;
    static ExitStatus fromWaitStatus(int status);
};

/// Opens a pidfd (readable when the child exits). Throws std::system_error.
UniqueFd openPidFd(pid_t pid);

/// Owns a running child: on destruction (or terminate()) sends SIGTERM to its
/// process group, waits up to the grace period, then SIGKILL, and reaps it.
class ChildGuard {
public:
    ChildGuard() = default;
    explicit ChildGuard(pid_t pid, bool group = true) : m_pid(pid), m_group(group) {}
    ChildGuard(ChildGuard&& o) noexcept;
    ChildGuard& operator=(ChildGuard&& o) noexcept;
    ChildGuard(const ChildGuard&) = delete;
    ChildGuard& operator=(const ChildGuard&) = delete;
    ~ChildGuard() { terminate(); }

    pid_t pid() const { return m_pid; }
    bool running() const { return m_pid > 0; }
    /// Non-blocking reap: the status once the child has exited.
    std::optional<ExitStatus> poll();
    /// Blocks up to `timeout` for the child to exit.
    std::optional<ExitStatus> waitFor(std::chrono::milliseconds timeout);
    /// Sends a signal to the child (its group when it leads one).
    void signal(int sig) const;
    /// TERM, grace, KILL, reap. Returns the exit status if it was running.
    std::optional<ExitStatus> terminate(std::chrono::milliseconds grace = std::chrono::milliseconds(3000));
    /// Forgets the child without signalling it.
    pid_t release() {
        pid_t p = m_pid;
        m_pid = -1;
        return p;
    }

private:
    pid_t m_pid = -1;
    bool m_group = true;
};

/// Sets O_NONBLOCK on a descriptor.
void setNonBlocking(int fd);

}  // namespace hpc
