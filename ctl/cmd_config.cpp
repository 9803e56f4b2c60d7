// hpc-daemonctl config: the profile's settings (retention, size caps), shown
// and changed; a change reaches a running daemon through Reload.
#include "commands.hpp"
#include "daemon_client.hpp"
#include "exit_codes.hpp"
#include "settings.hpp"

#include <boost/json.hpp>

#include <iomanip>
#include <iostream>
#include <map>

namespace json = boost::json;

namespace hpc::ctl {
namespace {

int runList(const std::string& daemonId, bool asJson) {
    Target t = resolveTarget(daemonId);
    auto store = Store::open(t.paths.home);
    std::map<std::string, std::string> set;
    for (auto& [k, v] : storedSettings(store, t.profile.daemonId)) set[k] = v;
    if (asJson) {
        json::array out;
        for (const auto& k : settingKeys()) {
            auto it = set.find(k.key);
            out.push_back(json::object{{"key", k.key},
                                       {"value", it != set.end() ? it->second : std::string(k.defaultText)},
                                       {"default", k.defaultText},
                                       {"set", it != set.end()},
                                       {"description", k.help}});
        }
        std::cout << json::serialize(out) << "\n";
        return kExitOk;
    }
    std::cout << "settings of daemon " << t.profile.daemonId << " (change with: hpc-daemonctl config set KEY VALUE)\n";
    for (const auto& k : settingKeys()) {
        auto it = set.find(k.key);
        std::string value = it != set.end() ? it->second : std::string(k.defaultText);
        std::cout << "  " << std::left << std::setw(16) << k.key << std::setw(8) << value
                  << (it != set.end() ? std::string("(default ") + k.defaultText + ")" : std::string("(default)"))
                  << "\n      " << k.help << "\n";
    }
    return kExitOk;
}

/// Tells a running daemon; says what happened either way.
int applyLive(const Target& t) {
    auto client = DaemonClient::find(t.paths.home, t.profile.daemonId);
    if (!client) {
        std::cout << "daemon " << t.profile.daemonId << " is not running: it will use this when it starts\n";
        return kExitOk;
    }
    client->reload();
    std::cout << "applied to the running daemon " << t.profile.daemonId << "\n";
    return kExitOk;
}

int runSet(const std::string& daemonId, const std::string& key, const std::string& value) {
    Target t = resolveTarget(daemonId);
    auto store = Store::open(t.paths.home);
    setSetting(store, t.profile.daemonId, key, value);
    std::cout << key << " = " << validateSetting(key, value) << "\n";
    return applyLive(t);
}

int runUnset(const std::string& daemonId, const std::string& key) {
    Target t = resolveTarget(daemonId);
    auto store = Store::open(t.paths.home);
    bool was = unsetSetting(store, t.profile.daemonId, key);
    std::cout << key << " = " << findSetting(key)->defaultText << " (default" << (was ? "" : "; it was not set")
              << ")\n";
    return was ? applyLive(t) : kExitOk;
}

}  // namespace

Command addConfigCommand(CLI::App& parent) {
    auto id = std::make_shared<std::string>();
    auto asJson = std::make_shared<bool>(false);
    auto key = std::make_shared<std::string>();
    auto value = std::make_shared<std::string>();
    auto* app = parent.add_subcommand("config", "Show or change the profile's settings (retention, size caps)");
    app->footer(
        "Durations: 90d, 12h, 30m, 45s, 2w (or seconds). Sizes: 64MiB, 512KiB, 1GiB, 64M (binary), 64MB\n"
        "(decimal), or bytes. A change is checked first (nothing changes when it is refused) and applied to\n"
        "a running daemon at once. See docs/ctl.md, \"Settings\".\n\n" +
        std::string(kExitCodeHelp));
    app->add_option("--daemon-id", *id, "profile (default: the only one)");
    app->add_flag("--json", *asJson, "print JSON (key, value, default, set, description)");
    app->require_subcommand(0, 1);
    auto* set = app->add_subcommand("set", "Set KEY to VALUE");
    set->add_option("KEY", *key, "the setting")->required();
    set->add_option("VALUE", *value, "its new value")->required();
    set->add_option("--daemon-id", *id, "profile (default: the only one)");
    auto* unset = app->add_subcommand("unset", "Put KEY back to its default");
    unset->add_option("KEY", *key, "the setting")->required();
    unset->add_option("--daemon-id", *id, "profile (default: the only one)");
    return Command{app, [id, asJson, key, value, set, unset] {
                       if (set->parsed()) return runSet(*id, *key, *value);
                       if (unset->parsed()) return runUnset(*id, *key);
                       return runList(*id, *asJson);
                   }};
}

}  // namespace hpc::ctl
