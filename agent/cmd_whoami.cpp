// hpc-agent whoami: the agent identity a token belongs to, and the user's others.
#include "commands.hpp"

#include "platform_client.hpp"
#include "util.hpp"

#include <iostream>
#include <memory>

namespace hpc::agent {
namespace {

struct WhoamiOptions {
    PlatformOptions platform;
    bool list = false;
    bool asJson = false;
};

int runWhoami(const WhoamiOptions& o) {
    AgentOptions a = agentOptions(o.platform);
    net::PlatformClient platform(a.url, net::ClientOptions{a.caFile, a.connectTimeout, a.proxy});
    if (o.list) {
        auto agents = platform.listAgents(a.token);
        if (o.asJson) {
            std::cout << boost::json::serialize(boost::json::object{{"agents", agents}}) << "\n";
            return 0;
        }
        for (const auto& v : agents) {
            if (!v.is_object()) continue;
            const auto& agent = v.get_object();
            std::cout << fieldText(agent, "name") << "\t" << fieldText(agent, "valid_tokens") << " valid token(s)\n";
        }
        return 0;
    }
    auto me = platform.whoami(a.token);
    if (o.asJson) {
        std::cout << boost::json::serialize(me) << "\n";
        return 0;
    }
    std::string agent = fieldText(me, "agent");
    std::cout << "agent " << (agent.empty() ? "(none: " + fieldText(me, "kind") + ")" : agent) << " of "
              << fieldText(me, "email") << " (agent id " << fieldText(me, "agent_id") << ")\n";
    if (auto* e = me.if_contains("expires_at"); e && e->is_number()) {
        auto left = static_cast<long long>(e->to_number<double>() - nowEpochSeconds());
        std::cout << "token expires in " << left / 3600 << " h; sign in again with hpc-agent login --agent " << agent
                  << " to keep this agent's jobs\n";
    }
    return 0;
}

}  // namespace

Command addWhoamiCommand(CLI::App& parent) {
    auto o = std::make_shared<WhoamiOptions>();
    auto* app = parent.add_subcommand("whoami", "Show the agent identity and user the token belongs to");
    app->add_flag("--list", o->list, "list the user's agent identities instead");
    app->add_flag("--json", o->asJson, "print JSON");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runWhoami(*o); }};
}

}  // namespace hpc::agent
