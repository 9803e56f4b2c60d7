// hpc-agent exec: one command on a daemon's machine, its output and status.
#include "commands.hpp"

#include "errors.hpp"

#include <iostream>
#include <iterator>
#include <memory>

namespace hpc::agent {
namespace {

struct ExecOptions {
    PlatformOptions platform;
    std::string daemonId;
    std::vector<std::string> argv;
    std::string shell;
    std::string cwd;
    double timeout = 0;
    bool passStdin = false;
    bool asJson = false;
};

int runExec(const ExecOptions& o) {
    if (!o.shell.empty() && !o.argv.empty())
        throw Error(ErrorCode::BadRequest, "give a command after -- or --shell, not both");
    if (o.shell.empty() && o.argv.empty())
        throw Error(ErrorCode::BadRequest, "no command: hpc-agent exec DAEMON -- CMD...");
    ExecSpec spec;
    spec.command = o.shell;
    spec.argv = o.argv;
    if (!o.cwd.empty()) spec.cwd = o.cwd;
    if (o.timeout > 0) spec.timeoutSeconds = o.timeout;
    if (o.passStdin)
        spec.stdinData = std::string((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    ExecSpec::fromPayload(spec.toPayload());  // the daemon's own checks and messages, before connecting
    auto client = AgentClient::connect(agentOptions(o.platform));
    double wait = spec.timeoutSeconds.value_or(300) + 60;
    auto outcome = client->exec(o.daemonId, spec, std::chrono::milliseconds(static_cast<long long>(wait * 1000)));
    if (o.asJson) {
        std::cout << boost::json::serialize(outcome.raw) << "\n";
    } else {
        std::cout << outcome.out << std::flush;
        std::cerr << outcome.err << std::flush;
        if (outcome.outTruncated || outcome.errTruncated) std::cerr << "hpc-agent: output was truncated\n";
        if (outcome.timedOut) std::cerr << "hpc-agent: the command timed out and was killed\n";
    }
    return outcome.shellStatus();
}

}  // namespace

Command addExecCommand(CLI::App& parent) {
    auto o = std::make_shared<ExecOptions>();
    auto* app =
        parent.add_subcommand("exec", "Run a command on a daemon's machine: hpc-agent exec DAEMON -- CMD [ARGS...]");
    app->add_option("daemon", o->daemonId, "daemon id")->required();
    app->add_option("cmd", o->argv, "command and arguments (after --)");
    app->add_option("--shell,-c", o->shell, "run this shell command line instead of an argv");
    app->add_option("--cwd", o->cwd, "working directory (default: the daemon's first allowed directory)");
    app->add_option("--timeout", o->timeout, "seconds before the command's process group is killed (default 300)")
        ->check(CLI::PositiveNumber);
    app->add_flag("--stdin", o->passStdin, "send this program's standard input to the command");
    app->add_flag("--json", o->asJson, "print the full result as JSON");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runExec(*o); }};
}

}  // namespace hpc::agent
