#pragma once
/// A snapshot of the daemon's state, for `hpc-daemonctl status` (via the bus)
/// and logs. Never holds a secret.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace hpc::daemon {

struct DaemonStatus {
    std::string daemonId;
    std::string version;
    unsigned pid = 0;
    std::string mode;        ///< "systemd" or "nohup"
    std::string modeReason;  ///< why that mode
    std::string linkState;
    double connectedSince = 0;
    std::string linkProblem;  ///< why the link is not connected, a sentence ("" when connected)
    std::string platformUrl;
    std::string route;  ///< "direct", "via proxy http://host:port (HTTPS_PROXY)": never credentials
    std::string scheduler;
    std::string schedulerReason;  ///< why that scheduler (LOCAL_MODE, where sbatch is)
    std::vector<std::string> allowedDirs;
    std::vector<std::string> guardLayers;
    std::string processWatch;  ///< how process exits are followed: "pidfd", or "SIGCHLD" on kernels < 5.3
    unsigned runningExecs = 0;
    unsigned activeSessions = 0;
    unsigned activeJobs = 0;
    unsigned pendingCallbacks = 0;  ///< job callbacks the platform has not acknowledged
    bool draining = false;          ///< refusing new work until running commands end, then stopping
    std::string busAddress;
    double startedAt = 0;
    long long stateBytes = 0;              ///< state.db and its WAL on disk
    unsigned long long stateMaxBytes = 0;  ///< the state_max_bytes setting
    std::string stateWarning;              ///< set while the size cap prunes early (or cannot be met)
    double lastPruneAt = 0;                ///< 0: no prune pass finished yet
    long long lastPruneAuditRows = 0;
    long long lastPruneJobs = 0;
    std::string lastPruneSummary;
    long long lastPruneJobDirs = 0;  ///< directories of the pruned jobs removed by the last pass
    long long lastPruneJobDirBytes = 0;
    long long jobDirsRemoved = 0;  ///< the same, since the daemon started
    long long jobDirBytesRemoved = 0;
    /// Counters since the daemon started (DaemonMetrics::snapshot).
    std::map<std::string, std::uint64_t> metrics;
};

}  // namespace hpc::daemon
