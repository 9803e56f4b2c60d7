// hpc-daemonctl rotate-key: a new API key for the daemon. The new key is
// stored before the old one is revoked, and the old one is revoked only once
// the daemon's link uses the new one, so a crash at any step leaves a key
// that works.
#include "commands.hpp"
#include "daemon_client.hpp"
#include "exit_codes.hpp"

#include "platform_client.hpp"
#include "util.hpp"

#include <iostream>
#include <memory>
#include <thread>

namespace json = boost::json;

namespace hpc::ctl {
namespace {

struct RotateOptions {
    std::string daemonId;
    double timeoutSeconds = 30;
    bool json = false;
};

/// The daemon's status once its (new) link is connected or refused, or at the deadline.
json::object waitForLink(DaemonClient& client, std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        json::object s = client.status();
        auto* state = s.if_contains("link_state");
        bool settled = state && state->is_string() &&
                       (state->get_string() == "connected" || state->get_string() == "unauthorized");
        if (settled || std::chrono::steady_clock::now() >= deadline) return s;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

/// Revokes `key` on the platform; a key it already refuses (it revokes a
/// replaced key itself when the daemon connects with the new one) is done.
void revokeOldKey(net::PlatformClient& platform, const Secret& key) {
    try {
        platform.revoke(key);
    } catch (const Error& e) {
        if (e.code() != ErrorCode::Unauthorized) throw;
    }
}

int runRotateKey(const RotateOptions& o) {
    Target t = resolveTarget(o.daemonId);
    const std::string& id = t.profile.daemonId;
    std::string urlError;
    auto url = parseUrl(t.profile.platformUrl, &urlError);
    if (!url) throw Error(ErrorCode::BadRequest, "profile " + id + " has a bad platform URL: " + urlError);
    net::PlatformClient platform(*url, net::ClientOptions{t.profile.caFile, std::chrono::seconds(20), t.profile.proxy});
    const Secret oldKey = t.profile.apiKey;

    Secret newKey = platform.rotateDaemonKey(oldKey, id);
    // Stored (and synced) before anything revokes the old key: from here on
    // the daemon starts with the new key, and the old one still works.
    Store::open(t.paths.home).setApiKey(id, newKey);

    auto client = DaemonClient::find(t.paths.home, id);
    std::string linkState = "not running";
    if (client) {
        client->reload();
        auto timeout = std::chrono::milliseconds(static_cast<long long>(o.timeoutSeconds * 1000));
        json::object s = waitForLink(*client, timeout);
        linkState = s.at("link_state").as_string().c_str();
        if (linkState != "connected") {
            auto* problem = s.if_contains("link_problem");
            std::string why = problem && problem->is_string() && !problem->get_string().empty()
                                  ? std::string(problem->get_string())
                                  : "its link is " + linkState;
            throw Error(linkState == "unauthorized" ? ErrorCode::Unauthorized : ErrorCode::Unavailable,
                        "the new key is stored, but daemon " + id + " has not connected with it within " +
                            std::to_string(static_cast<long>(o.timeoutSeconds)) + " s (" + why +
                            "); the old key stays valid until it does. Run rotate-key again once the platform is "
                            "reachable");
        }
    } else if (livePid(t.paths) || unitState(id).running()) {
        // A daemon that does not answer on D-Bus still uses the old key.
        throw Error(ErrorCode::Unavailable, "the new key is stored, but daemon " + id +
                                                " runs without answering on D-Bus, so it still uses the old key; "
                                                "restart it (hpc-daemonctl restart): the platform revokes the old "
                                                "key when the daemon connects with the new one");
    }
    // The link is up with the new key, or nothing runs that holds the old one.
    revokeOldKey(platform, oldKey);

    if (o.json) {
        std::cout << json::serialize(json::object{{"daemon_id", id},
                                                  {"daemon_running", client != nullptr},
                                                  {"link_state", linkState},
                                                  {"old_key_revoked", true}})
                  << "\n";
    } else {
        std::cout << "Daemon " << id << " has a new API key"
                  << (client ? " and is connected with it" : " (it is not running: it uses the key when it starts)")
                  << "; the old key is revoked.\n";
    }
    return kExitOk;
}

}  // namespace

Command addRotateKeyCommand(CLI::App& parent) {
    auto o = std::make_shared<RotateOptions>();
    auto* app = parent.add_subcommand("rotate-key", "Replace the daemon's API key with a new one, and revoke the old");
    app->footer(
        "Asks the platform for a new API key (authenticated by the current one), stores it in the profile\n"
        "($HPC_DAEMON_HOME/state.db, 0600), reloads a running daemon so its link reconnects with the new key, and\n"
        "once that link is up revokes the old key. A daemon that is not running uses the new key when it\n"
        "starts; the old key is revoked at once.\n\n"
        "Neither key is ever printed, logged or put on a command line. If rotate-key is interrupted, the\n"
        "profile holds a key that works: the old key stays valid until the daemon has connected with the new\n"
        "one (the platform then revokes it by itself); run rotate-key again to finish.\n\n"
        "Example:\n  hpc-daemonctl rotate-key --daemon-id mila --json\n\n" +
        std::string(kExitCodeHelp));
    app->add_option("--daemon-id", o->daemonId, "profile whose key to replace (default: the only one)");
    app->add_option("--timeout", o->timeoutSeconds, "how long to wait for the running daemon to reconnect, in seconds")
        ->check(CLI::Range(1.0, 3600.0))
        ->capture_default_str();
    app->add_flag("--json", o->json,
                  "print the result as JSON: daemon_id, daemon_running, link_state, old_key_revoked");
    return Command{app, [o] { return runRotateKey(*o); }};
}

}  // namespace hpc::ctl
