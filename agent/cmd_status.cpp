// hpc-agent status: one job with the end of its output.
#include "commands.hpp"

#include <iostream>
#include <memory>

namespace hpc::agent {
namespace {

struct StatusOptions {
    PlatformOptions platform;
    std::string daemonId;
    std::string jobId;
    bool asJson = false;
};

int runStatus(const StatusOptions& o) {
    auto client = AgentClient::connect(agentOptions(o.platform));
    auto r = client->jobStatus(o.daemonId, o.jobId);
    if (o.asJson) {
        std::cout << boost::json::serialize(r) << "\n";
        return 0;
    }
    auto cb = JobCallback::fromPayload(o.daemonId, r);
    std::cout << fieldText(r, "job_id") << " " << fieldText(r, "state") << " exit " << fieldText(r, "exit_code") << " ("
              << fieldText(r, "backend") << " " << fieldText(r, "scheduler_id") << ")\n"
              << "stdout: " << fieldText(r, "stdout_path") << "\n"
              << cb.stdoutTail << (cb.stdoutTail.empty() || cb.stdoutTail.back() == '\n' ? "" : "\n")
              << "stderr: " << fieldText(r, "stderr_path") << "\n"
              << cb.stderrTail;
    return 0;
}

}  // namespace

Command addStatusCommand(CLI::App& parent) {
    auto o = std::make_shared<StatusOptions>();
    auto* app = parent.add_subcommand("status", "Show one of your jobs with the end of its output");
    app->add_option("daemon", o->daemonId, "daemon id")->required();
    app->add_option("job", o->jobId, "job id")->required();
    app->add_flag("--json", o->asJson, "print JSON");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runStatus(*o); }};
}

}  // namespace hpc::agent
