// hpc-daemonctl list: local profiles beside the platform's registrations.
#include "commands.hpp"
#include "daemon_client.hpp"
#include "exit_codes.hpp"
#include "platform_client.hpp"

#include <cstdio>
#include <iostream>
#include <map>

namespace json = boost::json;

namespace hpc::ctl {
namespace {

int runList(bool asJson) {
    Store store = Store::open();
    json::array rows;
    // One platform call per (URL, key): profiles often share both.
    std::map<std::pair<std::string, std::string>, json::value> registries;
    for (const auto& p : store.profiles()) {
        json::object row{{"daemon_id", p.daemonId}, {"platform_url", p.platformUrl}};
        auto client = DaemonClient::find(store.dir(), p.daemonId);
        row["running"] = client != nullptr;
        row["link_state"] = client ? client->status()["link_state"] : json::value(nullptr);
        auto key = std::make_pair(p.platformUrl, p.apiKey.reveal());
        if (!registries.count(key)) {
            try {
                auto url = parseUrl(p.platformUrl);
                if (!url) throw Error(ErrorCode::BadRequest, "bad URL");
                net::PlatformClient platform(*url, net::ClientOptions{p.caFile, std::chrono::seconds(5), p.proxy});
                registries[key] = platform.listDaemons(p.apiKey);
            } catch (const Error& e) {
                registries[key] = json::value(std::string(e.what()));
            }
        }
        const auto& reg = registries[key];
        if (reg.is_string()) {
            row["registered"] = nullptr;
            row["platform_error"] = reg.get_string();
        } else {
            row["registered"] = false;
            row["connected"] = false;
            for (const auto& d : reg.get_array())
                if (d.as_object().at("daemon_id").as_string() == p.daemonId) {
                    row["registered"] = true;
                    row["connected"] = d.as_object().at("connected");
                }
        }
        rows.push_back(std::move(row));
    }
    if (asJson) {
        std::cout << json::serialize(json::object{{"profiles", rows}}) << "\n";
        return kExitOk;
    }
    if (rows.empty()) {
        std::cout << "no daemon profiles in " << store.dir().string() << "; create one with hpc-daemonctl setup\n";
        return kExitOk;
    }
    std::printf("%-24s %-9s %-13s %-22s %s\n", "DAEMON", "LOCAL", "LINK", "PLATFORM", "URL");
    for (const auto& r : rows) {
        const auto& o = r.as_object();
        std::string platform = o.at("registered").is_null()    ? "unreachable"
                               : !o.at("registered").as_bool() ? "not registered"
                               : o.at("connected").as_bool()   ? "registered, online"
                                                               : "registered, offline";
        std::string link = o.at("link_state").is_string() ? std::string(o.at("link_state").as_string()) : "-";
        std::printf("%-24s %-9s %-13s %-22s %s\n", std::string(o.at("daemon_id").as_string()).c_str(),
                    o.at("running").as_bool() ? "running" : "stopped", link.c_str(), platform.c_str(),
                    std::string(o.at("platform_url").as_string()).c_str());
        if (auto* err = o.if_contains("platform_error"))
            std::printf("  platform: %s\n", std::string(err->as_string()).c_str());
    }
    return kExitOk;
}

}  // namespace

Command addListCommand(CLI::App& parent) {
    auto asJson = std::make_shared<bool>(false);
    auto* app = parent.add_subcommand("list", "List local daemon profiles, their state, and the platform's view");
    app->footer(kExitCodeHelp);
    app->add_flag("--json", *asJson, "print JSON");
    return Command{app, [asJson] { return runList(*asJson); }};
}

}  // namespace hpc::ctl
