// hpc-agent wait: blocks until a job's callback arrives, across reconnections.
#include "commands.hpp"

#include "errors.hpp"
#include "job_state.hpp"

#include <algorithm>
#include <iostream>
#include <memory>

namespace hpc::agent {
namespace {

struct WaitOptions {
    PlatformOptions platform;
    std::string daemonId;
    std::string jobId;
    double timeout = 0;
    bool asJson = false;
};

/// One line for a callback: daemon, job, state, exit.
std::string describe(const JobCallback& cb) {
    std::string how = cb.exitCode ? "exit " + std::to_string(*cb.exitCode)
                      : cb.signal ? "signal " + std::to_string(*cb.signal)
                                  : "no exit code";
    return cb.daemonId + " " + cb.jobId + " " + cb.state + " (" + how + ")";
}

/// Before waiting for a callback that is not there: the job must be one
/// this agent identity may wait on. Another agent's job (NOT_OWNER) or an
/// unknown one (NOT_FOUND) is an error now rather than a wait that never
/// ends. Returns the job's state; "" when the daemon is not connected (its
/// callback comes once it is).
std::string checkWaitable(AgentClient& client, const WaitOptions& o) {
    try {
        return fieldText(client.jobStatus(o.daemonId, o.jobId), "state");
    } catch (const Error& e) {
        if (e.code() == ErrorCode::NotOwner)
            throw Error(ErrorCode::NotOwner, std::string(e.what()) +
                                                 "; its callback goes to that agent (hpc-agent whoami shows which "
                                                 "agent this token is)");
        if (e.code() != ErrorCode::Unavailable) throw;
        return {};
    }
}

int runWait(const WaitOptions& o) {
    std::optional<std::chrono::steady_clock::time_point> deadline;
    if (o.timeout > 0)
        deadline =
            std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<long long>(o.timeout * 1000));
    std::optional<JobCallback> cb;
    std::string lastState;
    int status = runReconnecting(o.platform, deadline, kExitWaitTimedOut, [&](AgentClient& client) {
        cb = client.waitForJob(o.daemonId, o.jobId, std::chrono::milliseconds(0));
        if (!cb) lastState = checkWaitable(client, o);
        auto left =
            deadline
                ? std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - std::chrono::steady_clock::now())
                : std::chrono::milliseconds(std::chrono::hours(24 * 365));
        if (!cb) cb = client.waitForJob(o.daemonId, o.jobId, std::max(left, std::chrono::milliseconds(0)));
        if (cb) client.ackCallback(cb->callbackId);
        return cb ? 0 : kExitWaitTimedOut;
    });
    if (!cb) {
        std::cerr << "hpc-agent: no callback for " << o.jobId << " before --timeout"
                  << (lastState.empty() ? "" : " (it was " + lastState + ")") << "\n";
        return status;
    }
    if (o.asJson) {
        std::cout << boost::json::serialize(cb->raw) << "\n";
    } else {
        std::cout << describe(*cb) << "\n" << cb->stdoutTail << std::flush;
        std::cerr << cb->stderrTail << std::flush;
    }
    return jobStateFromWireName(cb->state) == JobState::Completed ? 0 : 1;
}

}  // namespace

Command addWaitCommand(CLI::App& parent) {
    auto o = std::make_shared<WaitOptions>();
    auto* app = parent.add_subcommand(
        "wait", "Block until a job's callback arrives (at once if it already has); prints its state and output tails");
    app->add_option("daemon", o->daemonId, "daemon id")->required();
    app->add_option("job", o->jobId, "job id")->required();
    app->add_option("--timeout", o->timeout, "give up after this many seconds (default: wait forever)")
        ->check(CLI::PositiveNumber);
    app->add_flag("--json", o->asJson, "print the callback as JSON");
    app->footer(
        "A connection that breaks (a platform restart, a network blip) is made again with backoff; the "
        "callback is kept by the platform meanwhile.\n"
        "Exit status: 0 when the job COMPLETED, 1 when it ended in any other state, 254 when --timeout "
        "passed first, 255 when hpc-agent failed.");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runWait(*o); }};
}

}  // namespace hpc::agent
