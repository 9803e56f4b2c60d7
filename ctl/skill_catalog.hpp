#pragma once
/// The built-in skills (skills/*.md, compiled in) and the skill setup
/// registers for a profile. Shared by `setup` and `skills`.

#include "skill.hpp"

#include <builtin_skills.hpp>

#include <string>
#include <string_view>

namespace hpc::ctl {

/// A built-in skill by name, or by its number (from 1) in the sorted list;
/// nullptr when `nameOrNumber` is neither.
const BuiltinSkill* findBuiltinSkill(std::string_view nameOrNumber);
/// "generic-slurm, mila-hpc, plain-server".
std::string builtinSkillNames();
/// The first line of the skill's markdown, without its "# ".
std::string skillTitle(const BuiltinSkill& s);
/// A built-in's version: skill::versionOf its markdown.
std::string skillVersion(const BuiltinSkill& s);

/// What setup registers for a profile's skill (a built-in's name, or the
/// owner's description of the server) and instructions: the built-in's
/// markdown, or the description as a heading, then the instructions.
/// Throws Error(BadRequest) when the result is over the platform's limits
/// (skill::kMaxTextBytes; skill::kMaxNameBytes for a description) or is not
/// UTF-8 text.
skill::Skill registeredSkill(const std::string& profileSkill, const std::string& instructions);

}  // namespace hpc::ctl
