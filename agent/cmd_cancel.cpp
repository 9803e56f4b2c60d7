// hpc-agent cancel: ends one of the user's jobs.
#include "commands.hpp"

#include <iostream>
#include <memory>

namespace hpc::agent {
namespace {

struct CancelOptions {
    PlatformOptions platform;
    std::string daemonId;
    std::string jobId;
};

int runCancel(const CancelOptions& o) {
    auto client = AgentClient::connect(agentOptions(o.platform));
    auto r = client->cancelJob(o.daemonId, o.jobId);
    std::cerr << "cancel requested for " << o.jobId << " (it was " << fieldText(r, "state") << ")\n";
    return 0;
}

}  // namespace

Command addCancelCommand(CLI::App& parent) {
    auto o = std::make_shared<CancelOptions>();
    auto* app = parent.add_subcommand("cancel", "Cancel one of your jobs (scancel, or TERM then KILL for local jobs)");
    app->add_option("daemon", o->daemonId, "daemon id")->required();
    app->add_option("job", o->jobId, "job id")->required();
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runCancel(*o); }};
}

}  // namespace hpc::agent
