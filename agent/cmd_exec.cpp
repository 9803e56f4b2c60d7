// hpc-agent exec: one command on a daemon's machine, its output and status.
#include "commands.hpp"

#include "errors.hpp"
#include "protocol.hpp"

#include <unistd.h>

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

/// --json: the buffered result, capped at 4 MiB per stream; a cut output is
/// an explicit field and, without --allow-truncated, a failure.
int runBuffered(const ExecOptions& o, ExecSpec spec) {
    if (o.passStdin)
        spec.stdinData = std::string((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    // As much output as the result can carry (4 MiB per stream): more is a truncation, said below.
    spec.maxOutputBytes = ExecSpec::kMaxOutputBytes;
    if (auto size = boost::json::serialize(spec.toPayload()).size(); size > protocol::kMaxEnvelopeBytes - 4096)
        throw Error(ErrorCode::BadRequest,
                    "the request would be " + std::to_string(size) + " bytes, over the platform's " +
                        std::to_string(protocol::kMaxEnvelopeBytes) +
                        "-byte limit (with --json, standard input travels inside it, base64 when it is binary): "
                        "leave out --json to stream it");
    ExecSpec::fromPayload(spec.toPayload());  // the daemon's own checks and messages, before connecting
    auto client = AgentClient::connect(agentOptions(o.platform));
    double wait = spec.timeoutSeconds.value_or(300) + 60;
    auto outcome = client->exec(o.daemonId, spec, std::chrono::milliseconds(static_cast<long long>(wait * 1000)));
    std::cout << boost::json::serialize(outcome.raw) << "\n";
    if (outcome.outTruncated || outcome.errTruncated) {
        std::cerr << "hpc-agent: the command's " << (outcome.outTruncated ? "stdout" : "stderr")
                  << (outcome.outTruncated && outcome.errTruncated ? " and stderr were" : " was") << " cut at "
                  << ExecSpec::kMaxOutputBytes << " bytes (it exited with status " << outcome.shellStatus()
                  << "); leave out --json to stream all of it"
                  << (o.allowTruncated ? "" : ", or pass --allow-truncated to accept a cut output") << "\n";
        if (!o.allowTruncated) return kExitOutputTruncated;
    }
    return outcome.shellStatus();
}

/// Like ssh host cmd: stdout and stderr as they come, any bytes, no cap.
int runStreamed(const ExecOptions& o, ExecSpec spec) {
    spec.stream = true;
    ExecSpec::fromPayload(spec.toPayload());
    auto client = AgentClient::connect(agentOptions(o.platform));
    ExecStreamIo io;
    io.onStdout = [](std::string_view data) { writeOutput(STDOUT_FILENO, data); };
    io.onStderr = [](std::string_view data) { writeOutput(STDERR_FILENO, data); };
    io.stdinFd = o.passStdin ? STDIN_FILENO : -1;
    auto outcome = client->execStream(o.daemonId, std::move(spec), io);
    if (outcome.timedOut) std::cerr << "hpc-agent: the command timed out and was killed\n";
    return outcome.shellStatus();
}

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
    return o.asJson ? runBuffered(o, std::move(spec)) : runStreamed(o, std::move(spec));
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
                  "send this program's standard input to the command, streamed: any bytes, any size (with --json: "
                  "up to about 750 KiB, the request limit)");
    app->add_flag("--json", o->asJson,
                  "wait for the end and print the whole result as JSON (stdout, stderr with their _encoding, "
                  "exit_code, signal, timed_out, and stdout_truncated, stderr_truncated: each stream is cut at 4 MiB)");
    app->add_flag("--allow-truncated", o->allowTruncated,
                  "with --json: exit with the command's status even when its output was cut at 4 MiB per stream "
                  "(without it: 253, so a script never takes a cut output for the whole)");
    app->footer(
        "Without --json the command's stdout and stderr are written to hpc-agent's as they arrive, byte for byte "
        "and with no size limit (like ssh HOST CMD); a reader that is slow holds the command back rather than "
        "filling memory. Exit status: the command's, or 128 + the signal that ended it; 253 when --json cut the "
        "output (see --allow-truncated); 255 when hpc-agent failed (the daemon refused the command, the "
        "connection broke: the command is then killed).");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runExec(*o); }};
}

}  // namespace hpc::agent
