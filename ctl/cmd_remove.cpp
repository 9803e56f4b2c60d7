// hpc-daemonctl remove: unregister the daemon on the platform (which revokes
// its API key and closes its link), stop it, and remove its unit instance,
// activation file and, unless --keep-state, its state.
#include "commands.hpp"
#include "exit_codes.hpp"
#include "prompter.hpp"

#include "platform_client.hpp"
#include "util.hpp"

#include <unistd.h>

#include <iostream>
#include <memory>
#include <sstream>

namespace fs = std::filesystem;
namespace json = boost::json;

namespace hpc::ctl {
namespace {

struct RemoveOptions {
    std::string daemonId;
    bool keepState = false;
    bool yes = false;
    bool json = false;
};

/// Unregisters the daemon; returns what happened, as a sentence. Throws
/// when the platform cannot be reached (then nothing was changed).
std::string unregister(const Profile& p, std::int64_t& revokedKeys) {
    std::string urlError;
    auto url = parseUrl(p.platformUrl, &urlError);
    if (!url) throw Error(ErrorCode::BadRequest, "profile " + p.daemonId + " has a bad platform URL: " + urlError);
    net::PlatformClient platform(*url, net::ClientOptions{p.caFile, std::chrono::seconds(20), p.proxy});
    try {
        revokedKeys = platform.deleteDaemon(p.apiKey, p.daemonId);
        return "unregistered from " + p.platformUrl + "; its API key is revoked";
    } catch (const Error& e) {
        if (e.code() == ErrorCode::NotFound) return "the platform had no registration for it";
        // Revoked already (an earlier remove, or by the platform): nothing
        // here can unregister it any more.
        if (e.code() == ErrorCode::Unauthorized)
            return "the platform refused its API key (already revoked?), so it could not be unregistered; if "
                   "the platform still lists it, delete it there";
        throw;
    }
}

void removeIfThere(const fs::path& p, json::array& removed) {
    std::error_code ec;
    if (fs::remove_all(p, ec) > 0) removed.emplace_back(p.string());
}

/// This daemon's files in the state directory: pid, bus socket and its
/// config, shell wrappers, log (and rotated logs), private tmp.
void removeDaemonFiles(const Paths& paths, json::array& removed) {
    const std::string prefix = paths.daemonId + ".";
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(paths.home, ec)) {
        std::string name = e.path().filename().string();
        if (name.rfind(prefix, 0) != 0) continue;
        std::string rest = name.substr(prefix.size());
        bool rotatedLog = rest.rfind("log.", 0) == 0 && rest.size() > 4 &&
                          rest.find_first_not_of("0123456789", 4) == std::string::npos;
        if (rest == "pid" || rest == "bus" || rest == "bus.conf" || rest == "guard.bash" || rest == "log" || rotatedLog)
            removeIfThere(e.path(), removed);
    }
    removeIfThere(paths.home / "tmp" / paths.daemonId, removed);
}

/// The profile and everything the store keeps for it; the state directory
/// too when no other profile is left in it (and nothing else is there).
std::string removeState(const Paths& paths, json::array& removed) {
    bool last = false;
    {
        Store store = Store::open(paths.home);
        store.removeProfile(paths.daemonId);
        last = store.profiles().empty();
    }
    removeDaemonFiles(paths, removed);
    if (!last) return "its profile and files are removed; the other profiles in " + paths.home.string() + " stay";
    for (const char* f : {"state.db", "state.db-wal", "state.db-shm"}) removeIfThere(paths.home / f, removed);
    std::error_code ec;
    fs::remove(paths.home / "tmp", ec);  // only when empty
    if (fs::remove(paths.home, ec)) {
        removed.emplace_back(paths.home.string());
        return "the state directory " + paths.home.string() + " is removed";
    }
    return "its state is removed; " + paths.home.string() + " holds other files and stays";
}

int runRemove(const RemoveOptions& o) {
    Target t = resolveTarget(o.daemonId);
    const std::string& id = t.profile.daemonId;
    if (!o.yes) {
        if (!::isatty(STDIN_FILENO))
            throw Error(
                ErrorCode::BadRequest,
                "remove asks for confirmation on a terminal; pass --yes to remove daemon " + id + " from a script");
        Prompter ask;
        ask.say("This unregisters daemon " + id + " from " + t.profile.platformUrl +
                " (its API key is revoked), stops it, removes its systemd unit instance and D-Bus activation file" +
                (o.keepState ? std::string(", and keeps its state in ") + t.paths.home.string()
                             : std::string(", and deletes its state (profile, job records, audit log, logs) in ") +
                                   t.paths.home.string()) +
                ". Jobs already running are not stopped, but nobody follows them any more.");
        if (!ask.confirm("Remove daemon " + id + "?"))
            throw Error(ErrorCode::BadRequest, "remove cancelled; nothing was changed");
    }

    std::int64_t revokedKeys = 0;
    std::string platform = unregister(t.profile, revokedKeys);
    if (!o.json) std::cout << "daemon " << id << ": " << platform << "\n";

    std::ostringstream quiet;
    if (int rc = stopDaemon(t, o.json ? quiet : std::cout); rc != kExitOk)
        throw Error(ErrorCode::Internal, "daemon " + id +
                                             " did not stop, so its files were left in place; stop it, then run "
                                             "remove again");
    json::array removed;
    // A unit instance enabled without running (stop disables only a running one).
    if (auto unit = unitState(id); unit.fileState == "enabled") systemctlUser({"disable", unitName(id)});
    removeIfThere(activationFile(id), removed);
    removeIfThere(environmentFile(id), removed);
    std::string state = o.keepState ? "its state in " + t.paths.home.string() + " is kept (--keep-state)"
                                    : removeState(t.paths, removed);

    if (o.json) {
        std::cout << json::serialize(json::object{{"daemon_id", id},
                                                  {"platform", platform},
                                                  {"revoked_keys", revokedKeys},
                                                  {"state", state},
                                                  {"removed", removed}})
                  << "\n";
    } else {
        for (const auto& p : removed) std::cout << "removed " << p.as_string().c_str() << "\n";
        std::cout << "daemon " << id << " is removed; " << state << ".\n";
    }
    return kExitOk;
}

}  // namespace

Command addRemoveCommand(CLI::App& parent) {
    auto o = std::make_shared<RemoveOptions>();
    auto* app = parent.add_subcommand(
        "remove", "Unregister the daemon from the platform, revoke its key, stop it and delete its files");
    app->footer(
        "In order: the platform deletes the daemon's registration, revokes its API keys and closes its link\n"
        "(a platform that cannot be reached stops remove here, with nothing changed); the daemon is stopped;\n"
        "its systemd unit instance is disabled, and its D-Bus activation file and unit environment file are\n"
        "deleted; then, unless --keep-state, its profile, job records, audit log, logs and private tmp in\n"
        "$HPC_DAEMON_HOME (default ~/.hpc_daemon), and that directory itself when no other profile is left.\n"
        "Jobs that are still running are not cancelled. The unit template, shared by every daemon, stays.\n\n"
        "On a terminal, remove asks for confirmation; elsewhere it needs --yes.\n\n"
        "Example:\n  hpc-daemonctl remove --daemon-id mila --yes --json\n\n" +
        std::string(kExitCodeHelp));
    app->add_option("--daemon-id", o->daemonId, "profile to remove (default: the only one)");
    app->add_flag("--keep-state", o->keepState,
                  "keep the profile, job records, audit log and logs (the profile's key is revoked all the same)");
    app->add_flag("-y,--yes", o->yes, "do not ask for confirmation (needed when standard input is not a terminal)");
    app->add_flag("--json", o->json, "print the result as JSON: daemon_id, platform, revoked_keys, state, removed");
    return Command{app, [o] { return runRemove(*o); }};
}

}  // namespace hpc::ctl
