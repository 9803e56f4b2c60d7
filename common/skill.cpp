#include "skill.hpp"

#include "file_wire.hpp"

#include <algorithm>

namespace json = boost::json;

namespace hpc::skill {
namespace {

/// Control characters would reach an agent's terminal when it prints the
/// text: escape sequences, NULs. Newlines and tabs are part of markdown.
bool printable(std::string_view s, bool multiLine) {
    return std::none_of(s.begin(), s.end(), [multiLine](char ch) {
        auto c = static_cast<unsigned char>(ch);
        if (multiLine && (c == '\n' || c == '\t' || c == '\r')) return false;
        return c < 0x20 || c == 0x7f;
    });
}

std::string tooLong(std::string_view what, std::size_t size, std::size_t limit) {
    return "\"" + std::string(what) + "\" is " + std::to_string(size) + " bytes; the limit is " + std::to_string(limit);
}

}  // namespace

json::object Skill::toJson() const { return {{"name", name}, {"version", version}, {"text", text}}; }

std::string versionOf(std::string_view text) {
    files::Sha256 sha;
    sha.update(text);
    return "sha256:" + sha.hex().substr(0, 16);
}

std::string withInstructions(std::string base, std::string_view instructions) {
    if (instructions.empty()) return base;
    while (!base.empty() && base.back() == '\n') base.pop_back();
    return base + "\n\n## Instructions from this machine's owner\n\n" + std::string(instructions) + "\n";
}

std::string problem(const json::value& skill) {
    if (skill.is_string()) {
        const auto& name = skill.get_string();
        if (name.size() > kMaxTextBytes) return tooLong("skill", name.size(), kMaxTextBytes);
        return {};
    }
    if (!skill.is_object()) return "\"skill\" must be a string or an object {\"name\", \"version\", \"text\"}";
    const auto& o = skill.get_object();
    auto field = [&o](std::string_view key) -> const json::string* {
        auto* v = o.if_contains(key);
        return v && v->is_string() ? &v->get_string() : nullptr;
    };
    auto* name = field("name");
    auto* text = field("text");
    if (!name || name->empty()) return "\"skill.name\" must be a non-empty string";
    if (!text || text->empty()) return "\"skill.text\" must be a non-empty string";
    if (auto* v = o.if_contains("version"); v && !v->is_string() && !v->is_null())
        return "\"skill.version\" must be a string";
    auto* version = field("version");
    if (name->size() > kMaxNameBytes) return tooLong("skill.name", name->size(), kMaxNameBytes);
    if (text->size() > kMaxTextBytes) return tooLong("skill.text", text->size(), kMaxTextBytes);
    if (version && version->size() > kMaxVersionBytes)
        return tooLong("skill.version", version->size(), kMaxVersionBytes);
    if (!printable(*name, false) || (version && !printable(*version, false)))
        return "\"skill.name\" and \"skill.version\" must be one line without control characters";
    if (!printable(*text, true))
        return "\"skill.text\" must not contain control characters other than newlines and tabs";
    return {};
}

}  // namespace hpc::skill
