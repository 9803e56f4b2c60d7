#pragma once
/// The allowed-directory policy: where an agent's commands may run and write.
/// One list, read from the profile; every layer (cwd checks now, shell
/// wrappers and Landlock later) asks this class.

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace hpc::daemon {

class AllowedDirs {
public:
    /// Directories are resolved (symlinks, "..") once, here; ones that do not
    /// exist are kept as given, normalised.
    explicit AllowedDirs(const std::vector<std::string>& dirs);

    /// No directories configured: nothing is restricted.
    bool unrestricted() const { return m_dirs.empty(); }
    const std::vector<std::filesystem::path>& dirs() const { return m_dirs; }

    /// Whether a resolved absolute path is inside one of the directories.
    bool allows(const std::filesystem::path& resolved) const;

    /// The working directory for a command: `requested` (relative to the
    /// default) or the default (the first allowed directory, else `fallback`).
    /// Throws hpc::Error: NotFound when it does not exist or is not a
    /// directory, PathNotAllowed when it is outside the allowed directories.
    std::filesystem::path resolveCwd(const std::optional<std::string>& requested,
                                     const std::filesystem::path& fallback) const;

    /// "a, b, c" for messages.
    std::string describe() const;

private:
    std::vector<std::filesystem::path> m_dirs;
};

}  // namespace hpc::daemon
