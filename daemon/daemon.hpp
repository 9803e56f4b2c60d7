#pragma once
/// hpc-daemond's top level: one io_context, one thread; the store, the link,
/// the dispatcher, the exec service, the control bus and sd_notify wired
/// together, and signals for shutdown.

#include <chrono>
#include <string>

namespace hpc::daemon {

struct DaemonOptions {
    std::string daemonId;  ///< empty: the only profile
    std::chrono::milliseconds heartbeat{std::chrono::seconds(20)};
    std::chrono::milliseconds reconnectMax{std::chrono::seconds(30)};
    std::chrono::milliseconds unauthorizedDelay{0};  ///< zero: a refused key stops the link until a reload
    /// D-Bus to serve on: empty for the session bus (or, without one, a
    /// private bus at $HPC_DAEMON_HOME/<id>.bus); "none" for no bus.
    std::string busAddress;
    /// Why the daemon runs the way it does (hpc-daemonctl start says).
    std::string modeReason;
    /// Leave Landlock off even where the kernel has it (diagnosis, tests).
    bool noLandlock = false;
    /// Leave the mount namespace (hpc-confine) off even where user namespaces exist.
    bool noMountNamespace = false;
    /// How often the state directory's modes are checked (and repaired).
    std::chrono::seconds stateCheckInterval{std::chrono::seconds(300)};
    /// How long a shell outlives the agent that opened it.
    std::chrono::seconds ptyDetachGrace{std::chrono::seconds(30)};
    /// The SLURM monitor's interval: this right after a change, growing to
    /// the maximum while nothing changes.
    std::chrono::milliseconds jobPollMin{std::chrono::seconds(3)};
    std::chrono::milliseconds jobPollMax{std::chrono::seconds(60)};
    std::chrono::milliseconds slurmCommandTimeout{std::chrono::seconds(30)};
    /// How long a read or write in a job directory (NFS, Lustre) may take
    /// before the request that needs it is answered with an error.
    std::chrono::milliseconds jobIoTimeout{std::chrono::seconds(30)};
    /// Non-zero: SIGTERM drains (as `hpc-daemonctl stop --drain`) with this
    /// limit for running commands instead of stopping at once.
    std::chrono::milliseconds sigtermDrain{0};
};

/// Runs until SIGTERM, SIGINT, a D-Bus Stop or the end of a drain; returns the exit code (0 on a
/// clean stop). Throws hpc::Error or std::runtime_error for a bad profile, or
/// when this daemon already runs.
int runDaemon(const DaemonOptions& options);

}  // namespace hpc::daemon
