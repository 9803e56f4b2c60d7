// hpc-daemonctl status.
#include "commands.hpp"
#include "daemon_client.hpp"
#include "exit_codes.hpp"

#include <cstdio>
#include <ctime>
#include <iostream>

namespace json = boost::json;

namespace hpc::ctl {
namespace {

std::string when(double epoch) {
    if (epoch <= 0) return "-";
    long ago = static_cast<long>(std::time(nullptr) - static_cast<time_t>(epoch));
    std::string rel = ago < 120    ? std::to_string(ago) + " s ago"
                      : ago < 7200 ? std::to_string(ago / 60) + " min ago"
                                   : std::to_string(ago / 3600) + " h ago";
    return utcTime(epoch) + " UTC (" + rel + ")";
}

std::string str(const json::object& o, const char* key) {
    auto* v = o.if_contains(key);
    return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

double num(const json::object& o, const char* key) {
    auto* v = o.if_contains(key);
    return v && v->is_number() ? v->to_number<double>() : 0;
}

std::string list(const json::object& o, const char* key, const char* empty) {
    auto* v = o.if_contains(key);
    std::string out;
    if (v && v->is_array())
        for (const auto& e : v->get_array()) out += (out.empty() ? "" : ", ") + std::string(e.as_string());
    return out.empty() ? empty : out;
}

std::string sizeText(double bytes) {
    char buf[32];
    if (bytes >= 1024.0 * 1024)
        std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / 1024 / 1024);
    else
        std::snprintf(buf, sizeof buf, "%.1f KiB", bytes / 1024);
    return buf;
}

/// The daemon's counters (GetStatus "metrics") in one line; "" from a daemon without them.
std::string countersLine(const json::object& s) {
    const auto* m = s.if_contains("metrics");
    if (!m || !m->is_object()) return {};
    const auto& c = m->get_object();
    auto n = [&c](const std::string& key) { return static_cast<long long>(num(c, key.c_str())); };
    std::string jobs;
    for (const auto& [key, v] : c)
        if (key.starts_with("jobs.") && n(key) > 0)
            jobs += (jobs.empty() ? "" : ", ") + std::to_string(n(key)) + " " + std::string(key.substr(5));
    std::string line = "  counters:   " + std::to_string(n("reconnects")) + " reconnects, " +
                       std::to_string(n("execs")) + " commands run (" + std::to_string(n("execs_failed")) +
                       " failed), " + std::to_string(n("shells")) +
                       " shells opened, jobs ended: " + (jobs.empty() ? "none" : jobs) + "; " +
                       std::to_string(n("callbacks_delivered")) + " callbacks delivered";
    if (n("callbacks_delivered") > 0) {
        char buf[64];
        std::snprintf(buf, sizeof buf, " (mean %.1f s, max %.1f s after the job ended)",
                      num(c, "callback_latency_ms_sum") / 1000.0 / static_cast<double>(n("callbacks_delivered")),
                      num(c, "callback_latency_ms_max") / 1000.0);
        line += buf;
    }
    return line + "\n";
}

int runStatus(const std::string& daemonId, bool asJson) {
    Target t = resolveTarget(daemonId);
    auto client = DaemonClient::find(t.paths.home, t.profile.daemonId);
    if (!client) {
        if (asJson)
            std::cout << json::serialize(json::object{{"daemon_id", t.profile.daemonId}, {"running", false}}) << "\n";
        else
            std::cout << "daemon " << t.profile.daemonId << " is not running (start it with: hpc-daemonctl start"
                      << (daemonId.empty() ? "" : " --daemon-id " + daemonId) << ")\n";
        return kExitNotRunning;
    }
    json::object s = client->status();
    s["running"] = true;
    if (asJson) {
        std::cout << json::serialize(s) << "\n";
        return kExitOk;
    }
    std::string link = str(s, "link_state");
    if (link == "connected") link += " since " + when(num(s, "connected_since"));
    if (!str(s, "link_problem").empty()) link += " — " + str(s, "link_problem");
    const bool draining = s.contains("draining") && s.at("draining").is_bool() && s.at("draining").as_bool();
    std::cout << "daemon " << str(s, "daemon_id") << ": "
              << (draining ? "draining (refuses new work; stops once running commands end)" : "running")
              << " (hpc-daemond " << str(s, "version") << ", pid " << static_cast<long>(num(s, "pid")) << ", up since "
              << when(num(s, "started_at")) << ")\n"
              << "  mode:       " << str(s, "mode") << " — " << str(s, "mode_reason") << "\n"
              << "  link:       " << link << "\n"
              << "  platform:   " << str(s, "platform_url") << "\n"
              << "  route:      " << (str(s, "route").empty() ? std::string("direct") : str(s, "route")) << "\n"
              << "  allowed:    " << list(s, "allowed_dirs", "(unrestricted: agents may write anywhere)") << "\n"
              << "  guards:     " << list(s, "guard_layers", "none") << "\n"
              << "  processes:  exits followed by " << str(s, "process_watch") << "\n"
              << "  scheduler:  " << str(s, "scheduler")
              << (str(s, "scheduler_reason").empty() ? "" : " — " + str(s, "scheduler_reason")) << "\n"
              << "  activity:   " << static_cast<long>(num(s, "running_execs")) << " commands, "
              << static_cast<long>(num(s, "active_sessions")) << " shells, " << static_cast<long>(num(s, "active_jobs"))
              << " jobs, " << static_cast<long>(num(s, "pending_callbacks"))
              << " job callbacks waiting for the platform\n"
              << countersLine(s) << "  state:      " << sizeText(num(s, "state_bytes")) << " of state_max_bytes "
              << sizeText(num(s, "state_max_bytes")) << "; last prune: "
              << (num(s, "last_prune_at") > 0 ? when(num(s, "last_prune_at")) + ", " + str(s, "last_prune")
                                              : std::string("none yet"))
              << "\n"
              << (num(s, "job_dirs_removed") > 0
                      ? "  job dirs:   " + std::to_string(static_cast<long long>(num(s, "job_dirs_removed"))) +
                            " directories of pruned jobs removed since start (" +
                            sizeText(num(s, "job_dir_bytes_removed")) + ")\n"
                      : std::string())
              << (str(s, "state_warning").empty() ? "" : "  WARNING:    " + str(s, "state_warning") + "\n")
              << "  bus:        " << client->address() << "\n";
    if (str(s, "mode") == "systemd") {
        std::cout << "  unit:       " << unitName(t.profile.daemonId) << " ("
                  << (unitState(t.profile.daemonId).fileState.empty() ? "?" : unitState(t.profile.daemonId).fileState)
                  << "; logs: journalctl --user -u " << unitName(t.profile.daemonId) << ")\n";
        std::error_code ec;
        auto env = environmentFile(t.profile.daemonId);
        std::cout << "  env file:   " << env.string() << (std::filesystem::exists(env, ec) ? "" : " (none)") << "\n";
    }
    return kExitOk;
}

}  // namespace

Command addStatusCommand(CLI::App& parent) {
    auto id = std::make_shared<std::string>();
    auto asJson = std::make_shared<bool>(false);
    auto* app = parent.add_subcommand("status", "Show whether the daemon runs, how, and its link to the platform");
    app->footer("Exit code 3 when the daemon is not running.\n\n" + std::string(kExitCodeHelp));
    app->add_option("--daemon-id", *id, "profile (default: the only one)");
    app->add_flag("--json", *asJson, "print JSON (the keys of GetStatus, plus \"running\")");
    return Command{app, [id, asJson] { return runStatus(*id, *asJson); }};
}

}  // namespace hpc::ctl
