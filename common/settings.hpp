#pragma once
/// A profile's tunable settings (retention, size caps, shells), kept in the store's
/// `settings` table as the text the user gave, with defaults for what is
/// unset. `hpc-daemonctl config` shows and changes them; the daemon reads
/// them at start and on Reload.

#include "store.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hpc {

struct Settings {
    /// Audit rows older than this are pruned.
    std::chrono::seconds auditRetention{std::chrono::hours(24 * 5)};
    /// Jobs that ended longer ago than this are pruned (never a live job).
    std::chrono::seconds jobRetention{std::chrono::hours(24 * 14)};
    /// The rows of state.db beyond this are pruned oldest-first, even inside
    /// the retention windows (never a live job or an unacknowledged callback).
    std::uint64_t stateMaxBytes = 64ull << 20;
    /// nohup mode: the log file is rotated past this size (kLogFiles kept).
    std::uint64_t logMaxBytes = 8ull << 20;
    /// Shells (PTY sessions) open at once; unset: the profile's (16).
    std::optional<unsigned> maxShells;
    static constexpr unsigned kMaxShellsCeiling = 1000;

    static constexpr int kLogFiles = 3;  ///< the log and two rotated ones
};

/// One settable key, for listing and validation.
struct SettingInfo {
    const char* key;
    const char* kind;  ///< "duration", "size" or "count"
    const char* defaultText;
    const char* help;
};
const std::vector<SettingInfo>& settingKeys();
const SettingInfo* findSetting(std::string_view key);

/// "90d", "12h", "30m", "45s", "2w", or plain seconds; nullopt when bad.
std::optional<std::chrono::seconds> parseDuration(std::string_view text);
/// "64MiB", "512KiB", "1GiB", "64M" (binary), "64MB" (decimal), plain bytes.
std::optional<std::uint64_t> parseSize(std::string_view text);
std::string formatDuration(std::chrono::seconds s);
std::string formatSize(std::uint64_t bytes);

/// Checks `value` for `key`; returns the canonical text to store. Throws
/// hpc::Error(BadRequest) naming the key, the value and what is accepted.
std::string validateSetting(std::string_view key, std::string_view value);

/// The profile's values: what is set, else the defaults. A stored value that
/// no longer parses falls back to the default.
Settings loadSettings(Store& store, const std::string& daemonId);
/// key -> stored text, only what is set.
std::vector<std::pair<std::string, std::string>> storedSettings(Store& store, const std::string& daemonId);
/// Validates and stores one key. Throws hpc::Error(BadRequest); nothing changes then.
void setSetting(Store& store, const std::string& daemonId, std::string_view key, std::string_view value);
/// Back to the default; false when it was not set. Throws for an unknown key.
bool unsetSetting(Store& store, const std::string& daemonId, std::string_view key);

}  // namespace hpc
