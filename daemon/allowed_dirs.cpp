#include "allowed_dirs.hpp"

#include "errors.hpp"
#include "util.hpp"

#include <cstdlib>

namespace fs = std::filesystem;

namespace hpc::daemon {

AllowedDirs::AllowedDirs(const std::vector<std::string>& dirs) {
    for (const auto& d : dirs) {
        std::error_code ec;
        fs::path p = fs::weakly_canonical(fs::path(d), ec);
        m_dirs.push_back(ec ? fs::path(d).lexically_normal() : p);
    }
}

bool AllowedDirs::allows(const fs::path& resolved) const {
    if (unrestricted()) return true;
    for (const auto& d : m_dirs)
        if (isWithin(resolved, d)) return true;
    return false;
}

std::string AllowedDirs::describe() const {
    if (unrestricted()) return "(unrestricted)";
    std::string out;
    for (const auto& d : m_dirs) out += (out.empty() ? "" : ", ") + d.string();
    return out;
}

fs::path AllowedDirs::resolveCwd(const std::optional<std::string>& requested, const fs::path& fallback) const {
    fs::path base = unrestricted() ? fallback : m_dirs.front();
    fs::path wanted = base;
    if (requested && !requested->empty()) {
        std::string r = *requested;
        if (r == "~" || r.rfind("~/", 0) == 0) {
            const char* home = std::getenv("HOME");
            r = std::string(home ? home : "/") + r.substr(1);
        }
        wanted = fs::path(r).is_absolute() ? fs::path(r) : base / r;
    }
    std::error_code ec;
    fs::path resolved = fs::canonical(wanted, ec);
    if (ec || !fs::is_directory(resolved))
        throw Error(ErrorCode::NotFound, "working directory " + wanted.string() + " does not exist");
    if (!allows(resolved))
        throw Error(ErrorCode::PathNotAllowed,
                    "working directory " + resolved.string() + " is outside the allowed directories: " + describe());
    return resolved;
}

}  // namespace hpc::daemon
