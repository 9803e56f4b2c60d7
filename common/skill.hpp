#pragma once
/// A skill: the guidance an agent reads before it works on a daemon's machine
/// (docs/protocol.md, section 1.4). A built-in one is a skills/*.md file; a
/// custom one is the owner's description of the server. Either way the text
/// registered with the platform ends with the owner's instructions, if any.
/// Shared by hpc-daemonctl (which composes and checks it) and hpc-relay
/// (which checks and stores it): one set of limits on both sides.

#include <boost/json.hpp>

#include <cstddef>
#include <string>
#include <string_view>

namespace hpc::skill {

inline constexpr std::size_t kMaxTextBytes = 64 * 1024;
inline constexpr std::size_t kMaxNameBytes = 256;
inline constexpr std::size_t kMaxVersionBytes = 64;

struct Skill {
    std::string name;     ///< a built-in's name, or the owner's description of the server
    std::string version;  ///< versionOf(text)
    std::string text;     ///< markdown

    /// {"name", "version", "text"}: the registration's "skill" field.
    boost::json::object toJson() const;
};

/// "sha256:" and the first 16 hex digits of the SHA-256 of `text`: changes
/// whenever the text does.
std::string versionOf(std::string_view text);

/// The text for `base` (a built-in's markdown, or a custom skill's heading)
/// followed by the owner's instructions under a heading of their own.
std::string withInstructions(std::string base, std::string_view instructions);

/// Why a registration's "skill" value is refused, or "" when it is fine: a
/// string (a name only, as older clients send), or an object with a
/// non-empty "name", a non-empty "text" and optionally a "version", each
/// within its limit and free of control characters (newlines and tabs are
/// allowed in the text).
std::string problem(const boost::json::value& skill);

}  // namespace hpc::skill
