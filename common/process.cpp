#include "process.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <system_error>
#include <thread>

extern char** environ;

namespace hpc {
namespace {

[[noreturn]] void throwErrno(int err, const std::string& what) {
    throw std::system_error(err, std::generic_category(), what);
}

struct PipePair {
    UniqueFd read;
    UniqueFd write;
};

PipePair makePipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throwErrno(errno, "pipe2");
    return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

std::vector<std::string> mergedEnvironment(const std::vector<std::string>& overrides) {
    std::map<std::string, std::string> byName;
    std::vector<std::string> order;
    auto add = [&](const std::string& entry) {
        auto eq = entry.find('=');
        std::string name = eq == std::string::npos ? entry : entry.substr(0, eq);
        if (!byName.count(name)) order.push_back(name);
        byName[name] = entry;
    };
    for (char** e = environ; e && *e; ++e) add(*e);
    for (const auto& o : overrides) add(o);
    std::vector<std::string> out;
    out.reserve(order.size());
    for (const auto& n : order) out.push_back(byName[n]);
    return out;
}

}  // namespace

void setNonBlocking(int fd) {
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) throwErrno(errno, "fcntl(O_NONBLOCK)");
}

namespace {

/// The open-file soft limit children get back (0: leave theirs alone); set
/// once by raiseOpenFileLimit, read in vforked children.
rlim_t g_childOpenFileLimit = 0;

/// The child's three standard descriptors: -1 means /dev/null, -2 inherit.
struct ChildStdio {
    int in = -2, out = -2, err = -2;
};

/// Reports errno to the parent through the error pipe and ends the child.
[[noreturn]] void childFailed(int errorPipe, int err) {
    [[maybe_unused]] auto n = ::write(errorPipe, &err, sizeof err);
    ::_exit(127);
}

/// Closes every descriptor from `low` up (but `keep`, sorted) in the child.
/// close_range() where the kernel has it (Linux >= 5.9), else the entries of
/// /proc/self/fd read with getdents64 into a buffer on the stack (no
/// allocation: this runs in a vforked child), else every number up to the
/// open-file limit.
void closeDescriptorsFrom(int low, const int* keep, std::size_t keepCount) {
    bool haveCloseRange = true;
    unsigned from = static_cast<unsigned>(low);
    for (std::size_t i = 0; i <= keepCount && haveCloseRange; ++i) {
        unsigned to = i < keepCount ? static_cast<unsigned>(keep[i]) : ~0U;
        if (to > from && ::syscall(SYS_close_range, from, to - 1, 0) != 0) haveCloseRange = false;
        if (i < keepCount) from = static_cast<unsigned>(keep[i]) + 1;
    }
    if (haveCloseRange) return;
    auto kept = [&](int fd) {
        for (std::size_t i = 0; i < keepCount; ++i)
            if (keep[i] == fd) return true;
        return false;
    };
    int dir = ::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) {
        struct rlimit rl {};
        long max = ::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? static_cast<long>(rl.rlim_cur)
                                                                                        : 65536;
        for (long fd = low; fd < max; ++fd)
            if (!kept(static_cast<int>(fd))) ::close(static_cast<int>(fd));
        return;
    }
    alignas(8) char buf[2048];
    long n;
    while ((n = ::syscall(SYS_getdents64, dir, buf, sizeof buf)) > 0) {
        for (long off = 0; off < n;) {
            auto* entry = reinterpret_cast<struct dirent64*>(buf + off);
            off += entry->d_reclen;
            int fd = 0;
            const char* c = entry->d_name;
            if (*c < '0' || *c > '9') continue;
            for (; *c >= '0' && *c <= '9'; ++c) fd = fd * 10 + (*c - '0');
            if (fd >= low && fd != dir && !kept(fd)) ::close(fd);
        }
    }
    ::close(dir);
}

/// Runs in the vforked child: only system calls from here to exec. All
/// signals are blocked on entry (by the parent): handlers are reset before
/// any is unblocked, so none of the daemon's runs in the child.
[[noreturn]] void execPrepared(const SpawnOptions& o, const ChildStdio& io, char* const* argv, char* const* envp,
                               int errorPipe) {
    auto fail = [errorPipe](int err) { childFailed(errorPipe, err); };
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (o.dieWithParent && ::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) fail(errno);
    if (o.newSession && ::setsid() < 0) fail(errno);
    if (o.controllingTerminal >= 0 && ::ioctl(o.controllingTerminal, TIOCSCTTY, 0) != 0) fail(errno);
    int fds[3] = {io.in, io.out, io.err};
    for (int target = 0; target < 3; ++target) {
        int fd = fds[target];
        if (fd == -2) continue;
        if (fd == -1) fd = ::open("/dev/null", target == 0 ? O_RDONLY : O_WRONLY);
        if (fd == target) {
            ::fcntl(fd, F_SETFD, 0);  // dup2 onto itself would keep FD_CLOEXEC
            continue;
        }
        if (fd < 0 || ::dup2(fd, target) < 0) fail(errno);
    }
    for (const auto& [ours, theirs] : o.extraFds) {
        if (ours == theirs) {
            ::fcntl(ours, F_SETFD, 0);
        } else if (::dup2(ours, theirs) < 0) {
            fail(errno);
        }
    }
    if (!o.cwd.empty() && ::chdir(o.cwd.c_str()) != 0) fail(errno);
    if (o.landlockRuleset >= 0) {
        if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(errno);
        if (::syscall(SYS_landlock_restrict_self, o.landlockRuleset, 0) != 0) fail(errno);
    }
    // Nothing of ours reaches the program (the daemon's link socket, its bus
    // connection, whatever its own starter left open): only 0-2, what the
    // caller hands over, and the error pipe, which closes on exec.
    int keep[kMaxExtraFds + 1];
    std::size_t keepCount = 0;
    keep[keepCount++] = errorPipe;
    for (const auto& [ours, theirs] : o.extraFds) keep[keepCount++] = theirs;
    std::sort(keep, keep + keepCount);
    closeDescriptorsFrom(3, keep, keepCount);
    if (g_childOpenFileLimit != 0) {
        struct rlimit lim {};
        if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur > g_childOpenFileLimit) {
            lim.rlim_cur = g_childOpenFileLimit;
            ::setrlimit(RLIMIT_NOFILE, &lim);
        }
    }
    ::execvpe(argv[0], argv, envp);
    childFailed(errorPipe, errno);
}

/// vfork: the child borrows our memory until exec (it makes only system
/// calls), so starting it costs no page-table copy. Kept in its own frame so
/// no caller's variable lives across the vfork.
pid_t vforkPrepared(const SpawnOptions& o, const ChildStdio& io, char* const* argv, char* const* envp, int errorPipe) {
    pid_t pid = ::vfork();
    if (pid == 0) execPrepared(o, io, argv, envp, errorPipe);
    return pid;
}

}  // namespace

std::pair<unsigned long, unsigned long> raiseOpenFileLimit() {
    struct rlimit lim {};
    if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return {0, 0};
    rlim_t before = lim.rlim_cur;
    if (lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        if (::setrlimit(RLIMIT_NOFILE, &lim) == 0) g_childOpenFileLimit = before;
    }
    ::getrlimit(RLIMIT_NOFILE, &lim);
    return {before, lim.rlim_cur};
}

SpawnedProcess spawn(const SpawnOptions& options) {
    if (options.argv.empty()) throw std::invalid_argument("spawn: empty argv");
    if (options.extraFds.size() > kMaxExtraFds) throw std::invalid_argument("spawn: too many descriptors to hand over");
    SpawnedProcess result;
    PipePair inPipe, outPipe, errPipe;
    UniqueFd outFile;
    ChildStdio io;
    auto mode = [](Stdio s) { return s == Stdio::Null ? -1 : -2; };
    io.in = mode(options.in);
    io.out = mode(options.out);
    io.err = mode(options.err);
    if (options.controllingTerminal >= 0) {
        io.in = io.out = io.err = options.controllingTerminal;
    } else if (options.in == Stdio::Pipe) {
        inPipe = makePipe();
        io.in = inPipe.read.get();
    }
    if (options.controllingTerminal >= 0) {
        // The terminal is all three.
    } else if (!options.outputFile.empty()) {
        outFile.reset(::open(options.outputFile.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
        if (!outFile) throwErrno(errno, "open " + options.outputFile);
        io.out = io.err = outFile.get();
    } else {
        if (options.out == Stdio::Pipe) {
            outPipe = makePipe();
            io.out = outPipe.write.get();
        }
        if (options.err == Stdio::Pipe) {
            errPipe = makePipe();
            io.err = errPipe.write.get();
        }
    }

    std::vector<std::string> env = mergedEnvironment(options.envOverrides);
    std::vector<char*> envp;
    envp.reserve(env.size() + 1);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = options.argv;
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    // Every signal stays blocked across vfork: until the child has reset the
    // handlers, a signal would run one of ours in it, on our memory.
    PipePair errors = makePipe();  // CLOEXEC: closes on a successful exec
    sigset_t all, saved;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &saved);
    pid_t pid = vforkPrepared(options, io, argv.data(), envp.data(), errors.write.get());
    int vforkErrno = errno;
    ::pthread_sigmask(SIG_SETMASK, &saved, nullptr);
    if (pid < 0) throwErrno(vforkErrno, "vfork");
    errors.write.reset();
    int childErrno = 0;
    ssize_t n;
    do {
        n = ::read(errors.read.get(), &childErrno, sizeof childErrno);
    } while (n < 0 && errno == EINTR);
    if (n == sizeof childErrno) {
        ::waitpid(pid, nullptr, 0);
        throwErrno(childErrno, "cannot start " + options.argv[0]);
    }
    result.pid = pid;
    if (inPipe.write) {
        setNonBlocking(inPipe.write.get());
        result.stdinFd = std::move(inPipe.write);
    }
    if (outPipe.read) {
        setNonBlocking(outPipe.read.get());
        result.stdoutFd = std::move(outPipe.read);
    }
    if (errPipe.read) {
        setNonBlocking(errPipe.read.get());
        result.stderrFd = std::move(errPipe.read);
    }
    return result;
}

ExitStatus ExitStatus::fromWaitStatus(int status) {
    ExitStatus s;
    if (WIFEXITED(status))
        s.code = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        s.signal = WTERMSIG(status);
    return s;
}

UniqueFd openPidFd(pid_t pid) {
    // glibc 2.36's <sys/pidfd.h> lacks C linkage for C++; use the syscall.
    int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (fd < 0) throwErrno(errno, "pidfd_open");
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    return UniqueFd(fd);
}

ChildGuard::ChildGuard(ChildGuard&& o) noexcept : m_pid(o.release()), m_group(o.m_group) {}

ChildGuard& ChildGuard::operator=(ChildGuard&& o) noexcept {
    if (this != &o) {
        terminate();
        m_group = o.m_group;
        m_pid = o.release();
    }
    return *this;
}

std::optional<ExitStatus> ChildGuard::poll() {
    if (m_pid <= 0) return std::nullopt;
    int status = 0;
    pid_t r = ::waitpid(m_pid, &status, WNOHANG);
    if (r == m_pid) {
        m_pid = -1;
        return ExitStatus::fromWaitStatus(status);
    }
    if (r < 0 && errno == ECHILD) {  // reaped elsewhere: the status is lost
        m_pid = -1;
        return ExitStatus{};
    }
    return std::nullopt;
}

std::optional<ExitStatus> ChildGuard::waitFor(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (m_pid > 0) {
        if (auto s = poll()) return s;
        if (std::chrono::steady_clock::now() >= deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return std::nullopt;
}

void ChildGuard::signal(int sig) const {
    if (m_pid <= 0) return;
    if (m_group && ::kill(-m_pid, sig) == 0) return;
    ::kill(m_pid, sig);
}

std::optional<ExitStatus> ChildGuard::terminate(std::chrono::milliseconds grace) {
    if (m_pid <= 0) return std::nullopt;
    if (auto s = poll()) return s;
    signal(SIGTERM);
    if (auto s = waitFor(grace)) return s;
    signal(SIGKILL);
    return waitFor(std::chrono::milliseconds(5000));
}

}  // namespace hpc
