#pragma once
/// Everything that confines a process the daemon starts for an agent
/// (commands, shells, local jobs), in one value handed to each place that
/// starts one, so no place can forget a layer:
///  - a mount namespace (hpc-confine) where unprivileged user namespaces
///    exist: everything outside the allowed directories read-only (content,
///    chmod, chown, utimes, xattrs), the daemon's state directory and the
///    user's runtime directory (session bus, systemd) not there;
///  - Landlock: writes only under the allowed directories (no namespace needed);
///  - the environment confined commands get (TMPDIR in the daemon's private tmp).

#include "guard/landlock.hpp"
#include "process.hpp"

#include <memory>
#include <string>
#include <vector>

namespace hpc::daemon {

class Confinement {
public:
    struct Params {
        std::vector<std::string> allowedDirs;  ///< empty: nothing is confined
        std::string privateTmp;                ///< the commands' TMPDIR (under stateDir)
        std::string stateDir;                  ///< hidden from commands
        std::vector<std::string> shown;        ///< files under stateDir commands read (the shell guard)
        std::string runtimeDir;                ///< $XDG_RUNTIME_DIR, hidden too ("" for none)
        std::string confineProgram;            ///< hpc-confine; "" turns the namespace layer off
        std::string reaperProgram;             ///< hpc-confine for Reap::Descendants, whatever the layers
        bool landlock = true;
    };

    /// Unconfined.
    Confinement() = default;
    /// Builds the layers the kernel allows. `notes` gets one line per layer
    /// that could not be had, with the reason.
    static std::shared_ptr<const Confinement> build(const Params& params, std::vector<std::string>& notes);

    /// Descendants: the process (a local job without a systemd scope) runs
    /// under hpc-confine --subreaper, which adopts its orphans (setsid,
    /// double fork) and ends them when its main process ends or is cancelled.
    enum class Reap { No, Descendants };

    /// Applies every layer to a process about to be spawned: its environment
    /// first (the request's own entries, after, may override), then either
    /// the hpc-confine wrapper in front of argv (which applies Landlock after
    /// its mounts) or Landlock directly. `writable` adds paths for this one
    /// process (a local job's directory).
    void apply(SpawnOptions& options, const std::vector<std::string>& writable = {}, Reap reap = Reap::No) const;

    bool active() const { return m_namespace || m_landlock; }
    /// The active kernel layers, for status.
    std::vector<std::string> layers() const;
    const std::vector<std::string>& env() const { return m_env; }

    /// Where hpc-confine is: $HPC_CONFINE, the release's libexec/, next to
    /// this program, or ../libexec/hpc-daemon/ from it; "" when missing.
    static std::string findProgram();

private:
    std::vector<std::string> wrapper(const std::vector<std::string>& writable, bool withLandlock) const;

    Params m_params;
    std::vector<std::string> m_fixedArgs;  ///< hpc-confine and its per-profile options, made by build()
    bool m_namespace = false;
    std::shared_ptr<LandlockPolicy> m_landlock;
    std::vector<std::string> m_env;
};

}  // namespace hpc::daemon
