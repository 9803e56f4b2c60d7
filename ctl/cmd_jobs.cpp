// hpc-daemonctl jobs: every agent's jobs on this daemon, from the daemon over D-Bus.
#include "commands.hpp"
#include "daemon_client.hpp"
#include "exit_codes.hpp"

#include <boost/json.hpp>

#include <cstdio>
#include <iostream>

namespace json = boost::json;

namespace hpc::ctl {
namespace {

std::string text(const json::object& o, const char* key) {
    const auto& v = o.at(key);
    if (v.is_null()) return "-";
    if (v.is_string()) return v.get_string().empty() ? "-" : std::string(v.get_string());
    return json::serialize(v);
}

int runJobs(const std::string& daemonId, bool asJson) {
    Target t = resolveTarget(daemonId);
    auto client = DaemonClient::find(t.paths.home, t.profile.daemonId);
    if (!client) {
        std::cerr << "hpc-daemonctl: daemon " << t.profile.daemonId
                  << " is not running (start it with: hpc-daemonctl start --daemon-id " << t.profile.daemonId << ")\n";
        return kExitNotRunning;
    }
    auto jobs = client->jobs();
    if (asJson) {
        std::cout << json::serialize(jobs) << "\n";
        return kExitOk;
    }
    if (jobs.empty()) {
        std::cout << "no jobs on daemon " << t.profile.daemonId << "\n";
        return kExitOk;
    }
    std::printf("%-19s %-10s %-5s %-7s %-10s %-20s %-12s %s\n", "JOB", "STATE", "EXIT", "BACKEND", "SCHED-ID",
                "SUBMITTED (UTC)", "AGENT", "NAME");
    for (const auto& v : jobs) {
        const auto& o = v.as_object();
        std::string when = utcTime(o.at("submitted_at").to_number<double>());
        std::printf("%-19s %-10s %-5s %-7s %-10s %-20s %-12s %s\n", text(o, "job_id").c_str(), text(o, "state").c_str(),
                    text(o, "exit_code").c_str(), text(o, "backend").c_str(), text(o, "scheduler_id").c_str(),
                    when.c_str(), text(o, "agent_id").c_str(), text(o, "name").c_str());
    }
    return kExitOk;
}

}  // namespace

Command addJobsCommand(CLI::App& parent) {
    auto id = std::make_shared<std::string>();
    auto asJson = std::make_shared<bool>(false);
    auto* app = parent.add_subcommand("jobs", "List the daemon's batch jobs (every agent's, newest first)");
    app->footer(
        "Asks the running daemon over D-Bus (ListJobs): its newest 1000 jobs with their state (PENDING,\n"
        "RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...), exit code, backend (slurm or local) and\n"
        "scheduler id (the SLURM job id or the local pid). Exit code 3 when the daemon is not running.\n\n" +
        std::string(kExitCodeHelp));
    app->add_option("--daemon-id", *id, "profile (default: the only one)");
    app->add_flag("--json", *asJson, "print JSON");
    return Command{app, [id, asJson] { return runJobs(*id, *asJson); }};
}

}  // namespace hpc::ctl
