#include "process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

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

class SpawnActions {
public:
    SpawnActions() { ::posix_spawn_file_actions_init(&m_actions); }
    ~SpawnActions() { ::posix_spawn_file_actions_destroy(&m_actions); }
    posix_spawn_file_actions_t* get() { return &m_actions; }

private:
    posix_spawn_file_actions_t m_actions;
};

class SpawnAttr {
public:
    SpawnAttr() { ::posix_spawnattr_init(&m_attr); }
    ~SpawnAttr() { ::posix_spawnattr_destroy(&m_attr); }
    posix_spawnattr_t* get() { return &m_attr; }

private:
    posix_spawnattr_t m_attr;
};

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

/// The child's three standard descriptors: -1 means /dev/null, -2 inherit.
struct ChildStdio {
    int in = -2, out = -2, err = -2;
};

/// Reports errno to the parent through the error pipe and ends the child.
[[noreturn]] void childFailed(int errorPipe, int err) {
    [[maybe_unused]] auto n = ::write(errorPipe, &err, sizeof err);
    ::_exit(127);
}

/// Runs in the vforked child: only system calls from here to exec.
[[noreturn]] void execPrepared(const SpawnOptions& o, const ChildStdio& io, char* const* argv, char* const* envp,
                               int errorPipe) {
    auto fail = [errorPipe](int err) { childFailed(errorPipe, err); };
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl{};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);
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

SpawnedProcess spawn(const SpawnOptions& options) {
    if (options.argv.empty()) throw std::invalid_argument("spawn: empty argv");
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
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = options.argv;
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    pid_t pid = -1;
    if (options.landlockRuleset >= 0 || options.controllingTerminal >= 0 || options.dieWithParent) {
        PipePair errors = makePipe();  // CLOEXEC: closes on a successful exec
        pid = vforkPrepared(options, io, argv.data(), envp.data(), errors.write.get());
        if (pid < 0) throwErrno(errno, "vfork");
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
    } else {
        SpawnActions actions;
        SpawnAttr attr;
        int fds[3] = {io.in, io.out, io.err};
        for (int target = 0; target < 3; ++target) {
            if (fds[target] == -1)
                ::posix_spawn_file_actions_addopen(actions.get(), target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0);
            else if (fds[target] >= 0)
                ::posix_spawn_file_actions_adddup2(actions.get(), fds[target], target);
        }
        if (!options.cwd.empty()) ::posix_spawn_file_actions_addchdir_np(actions.get(), options.cwd.c_str());
        short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
        if (options.newSession) flags |= POSIX_SPAWN_SETSID;
        ::posix_spawnattr_setflags(attr.get(), flags);
        sigset_t empty, all;
        sigemptyset(&empty);
        sigfillset(&all);
        ::posix_spawnattr_setsigmask(attr.get(), &empty);
        ::posix_spawnattr_setsigdefault(attr.get(), &all);
        int rc = ::posix_spawnp(&pid, argv[0], actions.get(), attr.get(), argv.data(), envp.data());
        if (rc != 0) throwErrno(rc, "cannot start " + options.argv[0]);
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
