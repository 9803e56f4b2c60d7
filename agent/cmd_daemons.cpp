// hpc-agent daemons: the user's daemons, whether they are connected, and
// what a connected one warns of.
#include "commands.hpp"

#include "platform_client.hpp"

#include <cstdio>
#include <iostream>
#include <memory>

namespace hpc::agent {
namespace {

struct DaemonsOptions {
    PlatformOptions platform;
    bool asJson = false;
};

int runDaemons(const DaemonsOptions& o) {
    auto opts = agentOptions(o.platform);
    net::PlatformClient platform(opts.url, net::ClientOptions{opts.caFile, std::chrono::seconds(15), opts.proxy});
    auto list = platform.listDaemons(opts.token);
    if (o.asJson) {
        std::cout << boost::json::serialize(list) << "\n";
        return 0;
    }
    std::printf("%-24s %-10s %-20s %s\n", "DAEMON", "STATE", "CLUSTER", "HOST");
    for (const auto& d : list) {
        const auto& obj = d.as_object();
        auto str = [&](const char* k) {
            auto* v = obj.if_contains(k);
            return v && v->is_string() ? std::string(v->get_string()) : std::string("-");
        };
        bool up = obj.if_contains("connected") && obj.at("connected").is_bool() && obj.at("connected").get_bool();
        std::printf("%-24s %-10s %-20s %s\n", str("daemon_id").c_str(), up ? "connected" : "offline",
                    str("cluster_name").c_str(), str("hostname").c_str());
        // The daemon's own warning: its state cut short by its size cap, or its disk full.
        if (auto* w = obj.if_contains("warning"); w && w->is_string() && !w->get_string().empty())
            std::printf("  WARNING: %s\n", std::string(w->get_string()).c_str());
    }
    return 0;
}

}  // namespace

Command addDaemonsCommand(CLI::App& parent) {
    auto o = std::make_shared<DaemonsOptions>();
    auto* app = parent.add_subcommand("daemons", "List your daemons and whether they are connected");
    app->add_flag("--json", o->asJson, "print JSON");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runDaemons(*o); }};
}

}  // namespace hpc::agent
