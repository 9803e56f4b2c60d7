// hpc-agent exec: one command on a daemon's machine, its output and status.
#include "commands.hpp"

#include "errors.hpp"
#include "protocol.hpp"

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
    bool allowTruncated = false;
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
    // As much output as the result can carry (4 MiB per stream): more is a truncation, said below.
    spec.maxOutputBytes = ExecSpec::kMaxOutputBytes;
    if (auto size = boost::json::serialize(spec.toPayload()).size(); size > protocol::kMaxEnvelopeBytes - 4096)
        throw Error(ErrorCode::BadRequest,
                    "the request would be " + std::to_string(size) + " bytes, over the platform's " +
                        std::to_string(protocol::kMaxEnvelopeBytes) +
                        "-byte limit (standard input travels inside it, base64 when it is binary): copy files with "
                        "hpc-agent cp, then run the command on them");
    ExecSpec::fromPayload(spec.toPayload());  // the daemon's own checks and messages, before connecting
    auto client = AgentClient::connect(agentOptions(o.platform));
    double wait = spec.timeoutSeconds.value_or(300) + 60;
    auto outcome = client->exec(o.daemonId, spec, std::chrono::milliseconds(static_cast<long long>(wait * 1000)));
    bool truncated = outcome.outTruncated || outcome.errTruncated;
    if (o.asJson) {
        std::cout << boost::json::serialize(outcome.raw) << "\n";
    } else {
        std::cout << outcome.out << std::flush;
        std::cerr << outcome.err << std::flush;
        if (outcome.timedOut) std::cerr << "hpc-agent: the command timed out and was killed\n";
    }
    if (truncated) {
        std::cerr << "hpc-agent: the command's " << (outcome.outTruncated ? "stdout" : "stderr")
                  << (outcome.outTruncated && outcome.errTruncated ? " and stderr were" : " was") << " cut at "
                  << ExecSpec::kMaxOutputBytes << " bytes (it exited with status " << outcome.shellStatus()
                  << "); write large output to a file and fetch it with hpc-agent cp"
                  << (o.allowTruncated ? "" : ", or pass --allow-truncated to accept a cut output") << "\n";
        if (!o.allowTruncated) return kExitOutputTruncated;
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
    app->add_flag("--stdin", o->passStdin,
                  "send this program's standard input to the command: any bytes, up to about 750 KiB (the request "
                  "limit; copy larger input with hpc-agent cp)");
    app->add_flag("--json", o->asJson,
                  "print the full result as JSON (stdout, stderr with their _encoding, and stdout_truncated, "
                  "stderr_truncated)");
    app->add_flag("--allow-truncated", o->allowTruncated,
                  "exit with the command's status even when its output was cut at 4 MiB per stream (without it: "
                  "253, so a script never takes a cut output for the whole)");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runExec(*o); }};
}

}  // namespace hpc::agent
