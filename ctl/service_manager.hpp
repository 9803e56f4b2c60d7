#pragma once
/// How a daemon is run: as the systemd user unit hpc-daemon@<id> where a user
/// manager is reachable and lingering is on, else detached (nohup mode) with
/// a pid file and a log file in the state directory.

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <sys/types.h>

namespace hpc::ctl {

struct ModeDecision {
    bool systemd = false;
    std::string reason;  ///< a sentence for `status`
};

/// Decides the mode for this user on this machine, turning lingering on when
/// a user manager exists and it is off (and saying so when that fails).
ModeDecision decideMode();

struct Paths {
    std::filesystem::path home;
    std::string daemonId;
    std::filesystem::path logFile() const { return home / (daemonId + ".log"); }
    std::filesystem::path pidFile() const { return home / (daemonId + ".pid"); }
};

/// The pid in the pid file, when that process is alive.
std::optional<pid_t> livePid(const Paths& paths);

/// The hpc-daemond to start: $HPC_DAEMOND, else the release's own (when run
/// from one), else beside hpc-daemonctl (installed or in the build tree), else
/// from PATH.
std::string daemonBinary();

/// Starts hpc-daemond detached from this terminal. Returns its pid.
pid_t startDetached(const Paths& paths, const std::string& modeReason);

/// Runs `systemctl --user ARGS...`; returns its exit code, output in `out`.
int systemctlUser(const std::vector<std::string>& args, std::string* out = nullptr);

/// "hpc-daemon@<id>.service", with the id escaped as systemd does.
std::string unitName(const std::string& daemonId);

/// The last `lines` lines of a file ("" when it does not exist).
std::string tailOf(const std::filesystem::path& file, std::size_t lines);

}  // namespace hpc::ctl
