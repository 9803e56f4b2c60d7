#pragma once
/// A private dbus-daemon for a daemon started without a session bus (nohup
/// mode on a machine with no user session): it listens on
/// $HPC_DAEMON_HOME/<id>.bus (0600 in the 0700 state directory) and lives as
/// long as the daemon. hpc-daemonctl finds the socket by itself.

#include "process.hpp"

#include <filesystem>
#include <string>

namespace hpc::daemon {

class PrivateBus {
public:
    /// Starts dbus-daemon (the host's, else the release's own) and waits
    /// until it says it listens. Throws std::runtime_error.
    PrivateBus(const std::filesystem::path& home, const std::string& daemonId);
    ~PrivateBus();
    const std::string& address() const { return m_address; }

private:
    std::filesystem::path m_socket;
    std::filesystem::path m_config;
    std::string m_address;
    ChildGuard m_child;
};

}  // namespace hpc::daemon
