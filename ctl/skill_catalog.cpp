#include "skill_catalog.hpp"

#include "errors.hpp"
#include "util.hpp"

namespace hpc::ctl {

const BuiltinSkill* findBuiltinSkill(std::string_view nameOrNumber) {
    for (std::size_t i = 0; i < kBuiltinSkills.size(); ++i)
        if (nameOrNumber == kBuiltinSkills[i].name || nameOrNumber == std::to_string(i + 1)) return &kBuiltinSkills[i];
    return nullptr;
}

std::string builtinSkillNames() {
    std::string names;
    for (const auto& s : kBuiltinSkills) names += (names.empty() ? "" : ", ") + std::string(s.name);
    return names;
}

std::string skillTitle(const BuiltinSkill& s) {
    auto line = s.text.substr(0, s.text.find('\n'));
    return std::string(line.rfind("# ", 0) == 0 ? line.substr(2) : line);
}

std::string skillVersion(const BuiltinSkill& s) { return skill::versionOf(s.text); }

skill::Skill registeredSkill(const std::string& profileSkill, const std::string& instructions) {
    skill::Skill out;
    out.name = profileSkill;
    const auto* builtin = findBuiltinSkill(profileSkill);
    if (builtin) {
        out.name = std::string(builtin->name);
    } else if (profileSkill.size() > skill::kMaxNameBytes) {
        throw Error(ErrorCode::BadRequest, "the description of this server (--skill) is " +
                                               std::to_string(profileSkill.size()) + " bytes; the limit is " +
                                               std::to_string(skill::kMaxNameBytes) +
                                               ": keep it to a line and put the rest in --instructions");
    }
    out.text = skill::withInstructions(builtin ? std::string(builtin->text) : "# " + profileSkill + "\n", instructions);
    if (out.text.size() > skill::kMaxTextBytes)
        throw Error(ErrorCode::BadRequest, "the skill's text with your instructions is " +
                                               std::to_string(out.text.size()) + " bytes; the platform takes at most " +
                                               std::to_string(skill::kMaxTextBytes) + ": shorten --instructions");
    auto problem = isValidUtf8(out.text) ? skill::problem(out.toJson()) : "it is not UTF-8 text";
    if (!problem.empty())
        throw Error(ErrorCode::BadRequest, "the skill (--skill and --instructions) cannot be registered: " + problem);
    out.version = skill::versionOf(out.text);
    return out;
}

}  // namespace hpc::ctl
