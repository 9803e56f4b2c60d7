// hpc-agent jobs: the user's jobs on a daemon, newest first.
#include "commands.hpp"

#include <cstdio>
#include <iostream>
#include <memory>

namespace hpc::agent {
namespace {

struct JobsOptions {
    PlatformOptions platform;
    std::string daemonId;
    int limit = 100;
    bool asJson = false;
};

int runJobs(const JobsOptions& o) {
    auto client = AgentClient::connect(agentOptions(o.platform));
    auto list = client->listJobs(o.daemonId, o.limit);
    if (o.asJson) {
        std::cout << boost::json::serialize(list) << "\n";
        return 0;
    }
    std::printf("%-18s %-10s %-5s %-8s %-10s %s\n", "JOB", "STATE", "EXIT", "BACKEND", "SCHED-ID", "NAME");
    for (const auto& v : list) {
        const auto& job = v.as_object();
        std::printf("%-18s %-10s %-5s %-8s %-10s %s\n", fieldText(job, "job_id").c_str(),
                    fieldText(job, "state").c_str(), fieldText(job, "exit_code").c_str(),
                    fieldText(job, "backend").c_str(), fieldText(job, "scheduler_id").c_str(),
                    fieldText(job, "name").c_str());
    }
    return 0;
}

}  // namespace

Command addJobsCommand(CLI::App& parent) {
    auto o = std::make_shared<JobsOptions>();
    auto* app = parent.add_subcommand("jobs", "List your jobs on a daemon, newest first");
    app->add_option("daemon", o->daemonId, "daemon id")->required();
    app->add_option("--limit", o->limit, "at most this many")->check(CLI::Range(1, 10000))->capture_default_str();
    app->add_flag("--json", o->asJson, "print JSON");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runJobs(*o); }};
}

}  // namespace hpc::agent
