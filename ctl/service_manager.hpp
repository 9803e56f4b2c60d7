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

/// Runs `argv` (stdout and stderr in `out`, 30 s at most); returns its exit code.
int runCommand(const std::vector<std::string>& argv, std::string* out = nullptr);

/// Runs `systemctl --user ARGS...`; returns its exit code, output in `out`.
int systemctlUser(const std::vector<std::string>& args, std::string* out = nullptr);

/// "hpc-daemon@<id>.service", with the id escaped as systemd does.
std::string unitName(const std::string& daemonId);

/// What the user manager knows of a unit (`systemctl --user show`).
struct UnitState {
    std::string load;       ///< LoadState: "loaded", "not-found", ... ("" when systemctl failed)
    std::string active;     ///< ActiveState: "active", "inactive", "failed", "activating", ...
    std::string fileState;  ///< UnitFileState: "enabled", "disabled", ...
    std::string fragment;   ///< FragmentPath: the unit file in use
    pid_t mainPid = 0;
    bool running() const {
        return active == "active" || active == "activating" || active == "reloading" || active == "deactivating";
    }
};
UnitState unitState(const std::string& daemonId);

/// The per-instance environment file the unit reads
/// (EnvironmentFile=-%E/hpc-daemon/%I.env): $XDG_CONFIG_HOME/hpc-daemon/<id>.env,
/// default ~/.config/hpc-daemon/<id>.env.
std::filesystem::path environmentFile(const std::string& daemonId);

/// The profile's D-Bus activation file (written by setup):
/// $XDG_DATA_HOME/dbus-1/services/<bus name>.service, default under
/// ~/.local/share.
std::filesystem::path activationFile(const std::string& daemonId);

/// Writes the environment file from this process's environment:
/// HPC_DAEMON_HOME, PATH (where sbatch is found), and SLURM_CONF,
/// LOCAL_MODE, HPC_JOB_MEMORY_MAX and HPC_JOB_TASKS_MAX (limits of each local
/// job's scope; throws hpc::Error(BadRequest) when not a systemd limit) when set. A user manager reads neither
/// ~/.profile nor the caller's environment, so without this a `module load slurm` or a LOCAL_MODE=1 would not reach the
/// unit. Returns its path.
std::filesystem::path writeEnvironmentFile(const Paths& paths);

/// Installs the user unit template to $XDG_CONFIG_HOME/systemd/user (default
/// ~/.config/systemd/user), running daemonBinary(), when the user manager does
/// not know hpc-daemon@<id> yet, and reloads the manager. Returns what it did
/// ("" when the unit was there already). Throws hpc::Error when it cannot.
std::string ensureUnitInstalled(const std::string& daemonId);

/// The last `lines` lines of a file ("" when it does not exist).
std::string tailOf(const std::filesystem::path& file, std::size_t lines);

}  // namespace hpc::ctl
