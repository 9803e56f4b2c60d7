// hpc-daemonctl skills: the built-in skills setup offers, listed or shown.
#include "commands.hpp"
#include "exit_codes.hpp"
#include "skill_catalog.hpp"

#include <boost/json.hpp>

#include <cstdio>
#include <iostream>
#include <memory>

namespace json = boost::json;

namespace hpc::ctl {
namespace {

json::object describe(const BuiltinSkill& s) {
    return {{"name", s.name}, {"title", skillTitle(s)}, {"version", skillVersion(s)}};
}

int runList(bool asJson) {
    if (asJson) {
        json::array out;
        for (const auto& s : kBuiltinSkills) out.push_back(describe(s));
        std::cout << json::serialize(out) << "\n";
        return kExitOk;
    }
    std::printf("%-16s %-24s %s\n", "NAME", "VERSION", "TITLE");
    for (const auto& s : kBuiltinSkills)
        std::printf("%-16s %-24s %s\n", std::string(s.name).c_str(), skillVersion(s).c_str(), skillTitle(s).c_str());
    return kExitOk;
}

int runShow(const std::string& name, bool asJson) {
    const auto* s = findBuiltinSkill(name);
    if (!s) throw Error(ErrorCode::NotFound, "no built-in skill " + name + " (there are: " + builtinSkillNames() + ")");
    if (asJson) {
        auto out = describe(*s);
        out["text"] = s->text;
        std::cout << json::serialize(out) << "\n";
    } else {
        std::cout << s->text;
    }
    return kExitOk;
}

}  // namespace

Command addSkillsCommand(CLI::App& parent) {
    auto name = std::make_shared<std::string>();
    auto asJson = std::make_shared<bool>(false);
    auto* app = parent.add_subcommand("skills", "List the built-in skills, or show one");
    app->footer(
        "A skill is the guidance an agent reads before it works on this machine: how to use the login node, the\n"
        "scheduler, the file systems. setup --skill NAME registers a built-in skill's text with the platform\n"
        "(setup --skill \"a description\" registers your own), followed by the --instructions given to setup;\n"
        "an agent reads it with: hpc-agent daemons --show DAEMON. A version is a hash of the text, so it changes\n"
        "whenever the text does. The files are also installed in <prefix>/share/hpc-daemon/skills.\n\n"
        "Examples:\n  hpc-daemonctl skills\n  hpc-daemonctl skills show mila-hpc\n  hpc-daemonctl skills --json\n\n" +
        std::string(kExitCodeHelp));
    app->add_flag("--json", *asJson, "print JSON: [{name, title, version}], or for show {name, title, version, text}");
    app->require_subcommand(0, 1);
    auto* show = app->add_subcommand("show", "Print a built-in skill's text (markdown)");
    show->add_option("NAME", *name, "the skill's name, as listed")->required();
    show->add_flag("--json", *asJson, "print JSON: {name, title, version, text}");
    return Command{app, [name, asJson, show] { return show->parsed() ? runShow(*name, *asJson) : runList(*asJson); }};
}

}  // namespace hpc::ctl
