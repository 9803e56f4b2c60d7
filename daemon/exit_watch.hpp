#pragma once
/// Tells the event loop when a process has ended, on any kernel the daemon
/// supports. Where pidfd_open exists (Linux >= 5.3) each process is followed
/// through its pidfd. On older kernels (RHEL 8 is 4.18) the daemon's own
/// children are reaped on SIGCHLD, and processes it did not start (local jobs
/// re-adopted after a restart) are polled once a second.

#include "process.hpp"

#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <functional>
#include <optional>

#include <sys/types.h>

namespace hpc::daemon {

/// How a watched process ended: the wait status when it was our child (it is
/// reaped), nothing when it was not ours to reap.
using ExitHandler = std::function<void(std::optional<ExitStatus>)>;

/// One per io_context (an Asio service). The daemon's processes are followed
/// through ChildProcess, which is built on this.
class ExitWatch {
public:
    /// Calls `onExit` once, on the loop, when `pid` has ended. `ourChild`:
    /// the process is a child of this one, and is reaped. Returns a token
    /// for cancel(). Throws std::system_error when a pidfd cannot be opened
    /// (ESRCH: the process is already gone and was not our child).
    static std::uint64_t watch(boost::asio::io_context& ioc, pid_t pid, bool ourChild, ExitHandler onExit);
    /// Stops watching without calling the handler (the child is not reaped).
    static void cancel(boost::asio::io_context& ioc, std::uint64_t token);
    /// "pidfd" or "SIGCHLD", for status and logs.
    static const char* method();
    /// Tests: follow processes as on a kernel without pidfd_open.
    static void forceSignalFallback(bool on);
};

}  // namespace hpc::daemon
