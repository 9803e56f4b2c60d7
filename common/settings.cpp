#include "settings.hpp"

#include "errors.hpp"
#include "util.hpp"

#include <cctype>
#include <charconv>
#include <limits>

namespace hpc {
namespace {

constexpr std::int64_t kMaxSeconds = 100ll * 365 * 86400;
constexpr std::uint64_t kMinStateBytes = 64 << 10;
constexpr std::uint64_t kMinLogBytes = 4 << 10;
constexpr std::uint64_t kMaxBytes = 1ull << 50;

std::optional<std::pair<std::uint64_t, std::string>> splitNumber(std::string_view text) {
    std::size_t i = 0;
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    std::size_t start = i;
    std::uint64_t n = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
        if (n > (std::numeric_limits<std::uint64_t>::max() - 9) / 10) return std::nullopt;
        n = n * 10 + static_cast<std::uint64_t>(text[i] - '0');
        ++i;
    }
    if (i == start) return std::nullopt;
    while (i < text.size() && text[i] == ' ') ++i;
    std::string unit(text.substr(i));
    while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.back()))) unit.pop_back();
    return std::make_pair(n, unit);
}

/// A whole number from 1 to Settings::kMaxShellsCeiling.
std::optional<unsigned> parseCount(std::string_view text) {
    unsigned n = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc{} || end != text.data() + text.size() || n < 1 || n > Settings::kMaxShellsCeiling)
        return std::nullopt;
    return n;
}

}  // namespace

const std::vector<SettingInfo>& settingKeys() {
    static const std::vector<SettingInfo> keys = {
        {"audit_retention", "duration", "5d", "audit rows (commands agents ran) older than this are pruned"},
        {"job_retention", "duration", "14d",
         "jobs that ended longer ago than this are pruned, their directories with them (live jobs never)"},
        {"state_max_bytes", "size", "64MiB", "state.db's rows beyond this are pruned oldest-first, with a warning"},
        {"log_max_bytes", "size", "8MiB", "nohup mode: the log file rotates past this size (3 files kept)"},
        {"max_shells", "count", "16", "shells (PTY sessions) open at once, 1 to 1000"},
    };
    return keys;
}

const SettingInfo* findSetting(std::string_view key) {
    for (const auto& k : settingKeys())
        if (key == k.key) return &k;
    return nullptr;
}

std::optional<std::chrono::seconds> parseDuration(std::string_view text) {
    auto parts = splitNumber(text);
    if (!parts) return std::nullopt;
    auto [n, unit] = *parts;
    std::uint64_t mult = 0;
    if (unit.empty() || unit == "s" || unit == "sec")
        mult = 1;
    else if (unit == "m" || unit == "min")
        mult = 60;
    else if (unit == "h")
        mult = 3600;
    else if (unit == "d")
        mult = 86400;
    else if (unit == "w")
        mult = 7ull * 86400;
    else
        return std::nullopt;
    if (n > static_cast<std::uint64_t>(kMaxSeconds) / mult) return std::nullopt;
    return std::chrono::seconds(static_cast<std::int64_t>(n * mult));
}

std::optional<std::uint64_t> parseSize(std::string_view text) {
    auto parts = splitNumber(text);
    if (!parts) return std::nullopt;
    auto [n, unit] = *parts;
    std::uint64_t mult = 0;
    if (unit.empty() || unit == "B")
        mult = 1;
    else if (unit == "K" || unit == "KiB")
        mult = 1ull << 10;
    else if (unit == "M" || unit == "MiB")
        mult = 1ull << 20;
    else if (unit == "G" || unit == "GiB")
        mult = 1ull << 30;
    else if (unit == "kB" || unit == "KB")
        mult = 1000;
    else if (unit == "MB")
        mult = 1000ull * 1000;
    else if (unit == "GB")
        mult = 1000ull * 1000 * 1000;
    else
        return std::nullopt;
    if (n > kMaxBytes / mult) return std::nullopt;
    return n * mult;
}

std::string formatDuration(std::chrono::seconds s) {
    auto n = s.count();
    if (n > 0 && n % 86400 == 0) return std::to_string(n / 86400) + "d";
    if (n > 0 && n % 3600 == 0) return std::to_string(n / 3600) + "h";
    if (n > 0 && n % 60 == 0) return std::to_string(n / 60) + "m";
    return std::to_string(n) + "s";
}

std::string formatSize(std::uint64_t b) {
    if (b > 0 && b % (1ull << 30) == 0) return std::to_string(b >> 30) + "GiB";
    if (b > 0 && b % (1ull << 20) == 0) return std::to_string(b >> 20) + "MiB";
    if (b > 0 && b % (1ull << 10) == 0) return std::to_string(b >> 10) + "KiB";
    return std::to_string(b) + "B";
}

std::string validateSetting(std::string_view key, std::string_view value) {
    const SettingInfo* info = findSetting(key);
    if (!info) {
        std::string known;
        for (const auto& k : settingKeys()) known += (known.empty() ? "" : ", ") + std::string(k.key);
        throw Error(ErrorCode::BadRequest, "unknown setting \"" + std::string(key) + "\"; the settings are " + known);
    }
    std::string bad = "bad value \"" + std::string(value) + "\" for " + info->key + ": ";
    if (std::string_view(info->kind) == "count") {
        auto n = parseCount(value);
        if (!n) throw Error(ErrorCode::BadRequest, bad + "give a whole number from 1 to 1000");
        return std::to_string(*n);
    }
    if (std::string_view(info->kind) == "duration") {
        auto d = parseDuration(value);
        if (!d)
            throw Error(ErrorCode::BadRequest,
                        bad + "give a duration such as 90d, 12h, 30m or 45s (at most 100 years)");
        if (d->count() < 1) throw Error(ErrorCode::BadRequest, bad + "it must be at least 1s");
        return formatDuration(*d);
    }
    auto b = parseSize(value);
    if (!b) throw Error(ErrorCode::BadRequest, bad + "give a size such as 64MiB, 512KiB, 1GiB or a number of bytes");
    std::uint64_t min = key == "log_max_bytes" ? kMinLogBytes : kMinStateBytes;
    if (*b < min) throw Error(ErrorCode::BadRequest, bad + "it must be at least " + formatSize(min));
    return formatSize(*b);
}

std::vector<std::pair<std::string, std::string>> storedSettings(Store& store, const std::string& daemonId) {
    auto st = store.db().prepare("SELECT key, value FROM settings WHERE daemon_id = ?1 ORDER BY key");
    st.bind(1, daemonId);
    std::vector<std::pair<std::string, std::string>> out;
    while (st.step()) out.emplace_back(st.text(0), st.text(1));
    return out;
}

Settings loadSettings(Store& store, const std::string& daemonId) {
    Settings s;
    for (const auto& [key, value] : storedSettings(store, daemonId)) {
        if (key == "audit_retention") {
            if (auto d = parseDuration(value); d && d->count() > 0) s.auditRetention = *d;
        } else if (key == "job_retention") {
            if (auto d = parseDuration(value); d && d->count() > 0) s.jobRetention = *d;
        } else if (key == "state_max_bytes") {
            if (auto b = parseSize(value); b && *b >= kMinStateBytes) s.stateMaxBytes = *b;
        } else if (key == "log_max_bytes") {
            if (auto b = parseSize(value); b && *b >= kMinLogBytes) s.logMaxBytes = *b;
        } else if (key == "max_shells") {
            s.maxShells = parseCount(value);
        }
    }
    return s;
}

void setSetting(Store& store, const std::string& daemonId, std::string_view key, std::string_view value) {
    std::string canonical = validateSetting(key, value);
    auto st = store.db().prepare(
        "INSERT INTO settings (daemon_id, key, value, updated_at) VALUES (?1, ?2, ?3, ?4) "
        "ON CONFLICT(daemon_id, key) DO UPDATE SET value = ?3, updated_at = ?4");
    st.bind(1, daemonId).bind(2, key).bind(3, canonical).bind(4, nowEpochSeconds());
    st.run();
}

bool unsetSetting(Store& store, const std::string& daemonId, std::string_view key) {
    if (!findSetting(key)) validateSetting(key, "");  // throws the unknown-key sentence
    auto st = store.db().prepare("DELETE FROM settings WHERE daemon_id = ?1 AND key = ?2");
    st.bind(1, daemonId).bind(2, key);
    st.run();
    return store.db().changes() > 0;
}

}  // namespace hpc
