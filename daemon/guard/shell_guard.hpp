#pragma once
/// The advisory shell wrappers (guard/guard.bash): written per profile with
/// the allowed directories, and given to bash as its --rcfile.

#include <filesystem>
#include <string>
#include <vector>

namespace hpc::daemon {

/// Writes the guard for `dirs` to `file` (0600). Throws std::runtime_error.
void writeShellGuard(const std::filesystem::path& file, const std::vector<std::string>& dirs);

/// The argv that starts `shell` with the guard when it is bash, else as is.
std::vector<std::string> guardedShell(const std::string& shell, const std::filesystem::path& guardFile);

}  // namespace hpc::daemon
