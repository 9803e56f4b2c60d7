// hpc-agent logout: revoke the token on the platform and forget it here.
#include "commands.hpp"

#include "errors.hpp"
#include "platform_client.hpp"

#include <filesystem>
#include <iostream>
#include <memory>

namespace hpc::agent {
namespace {

int runLogout(const PlatformOptions& o) {
    AgentOptions a = agentOptions(o);
    net::PlatformClient platform(a.url, net::ClientOptions{a.caFile, a.connectTimeout, a.proxy});
    std::string outcome = "the token is revoked";
    try {
        platform.revoke(a.token);
    } catch (const Error& e) {
        // Expired or revoked already: there is nothing left to revoke.
        if (e.code() != ErrorCode::Unauthorized) throw;
        outcome = "the platform no longer accepted the token (expired or revoked already)";
    }
    if (!o.tokenFile.empty()) {
        std::error_code ec;
        if (!std::filesystem::remove(o.tokenFile, ec) && ec)
            throw Error(ErrorCode::Internal,
                        outcome + ", but " + o.tokenFile + " could not be removed: " + ec.message());
        std::cerr << outcome << "; removed " << o.tokenFile << "\n";
    } else {
        std::cerr << outcome << "; unset HPC_AGENT_TOKEN, it holds nothing usable any more\n";
    }
    return 0;
}

}  // namespace

Command addLogoutCommand(CLI::App& parent) {
    auto o = std::make_shared<PlatformOptions>();
    auto* app = parent.add_subcommand("logout", "Revoke the access token on the platform and remove its token file");
    app->footer(
        "The token (from --token-file, else HPC_AGENT_TOKEN) is revoked on the platform: every request and\n"
        "connection made with it is refused from then on, including those already open. The token file is\n"
        "then deleted; a token from HPC_AGENT_TOKEN cannot be removed from here: unset it. A token the platform\n"
        "no longer accepts (expired, revoked) is not an error. Sign in again with hpc-agent login.");
    addPlatformOptions(app, *o);
    return Command{app, [o] { return runLogout(*o); }};
}

}  // namespace hpc::agent
