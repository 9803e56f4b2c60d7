#pragma once
/// Where an hpc-daemond instance is found on D-Bus. The one place that knows
/// the names; the daemon and hpc-daemonctl both use it.

#include <filesystem>
#include <string>
#include <string_view>

namespace hpc::bus {

inline constexpr const char* kInterface = "org.tiptree.HpcDaemon";
inline constexpr const char* kObjectPath = "/org/tiptree/HpcDaemon";
inline constexpr const char* kNamePrefix = "org.tiptree.HpcDaemon.";

/// Escapes a daemon id into one valid bus-name element: [A-Za-z0-9] are kept
/// (except a leading digit), everything else becomes _XX (lower-case hex).
/// Injective, so two ids never share a name.
std::string escapeLabel(std::string_view id);
/// "org.tiptree.HpcDaemon.<escaped id>".
std::string busNameFor(std::string_view daemonId);
/// The private bus socket of a daemon that runs without a session bus.
std::filesystem::path privateBusSocket(const std::filesystem::path& home, std::string_view daemonId);
/// "unix:path=<socket>".
std::string privateBusAddress(const std::filesystem::path& home, std::string_view daemonId);
/// The session bus address from the environment (DBUS_SESSION_BUS_ADDRESS, or
/// $XDG_RUNTIME_DIR/bus when that socket exists); empty when there is none.
std::string sessionBusAddress();

}  // namespace hpc::bus
