// hpc-agent logs: a job's stdout or stderr, from a byte offset, followed
// while the job runs and resumed across reconnections.
#include "commands.hpp"

#include "errors.hpp"
#include "job_state.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <memory>

namespace hpc::agent {
namespace {

struct LogsOptions {
    PlatformOptions platform;
    std::string daemonId;
    std::string jobId;
    bool follow = false;
    bool stderrStream = false;
    std::uint64_t fromByte = 0;
};

int runLogs(const LogsOptions& o) {
    JobLogsSpec spec;
    spec.jobId = o.jobId;
    spec.stderrStream = o.stderrStream;
    spec.fromByte = o.fromByte;  // then: the byte after the last one written
    spec.follow = o.follow;
    bool opened = false;
    PtyEvent end;
    int status = runReconnecting(o.platform, std::nullopt, 0, [&](AgentClient& client) {
        JobLogsHandle handle;
        try {
            handle = client.openJobLogs(o.daemonId, spec);
        } catch (const Error& e) {
            // Only a stream that was running is resumed: the first refusal is the answer.
            if (opened) throw;
            std::cerr << "hpc-agent: " << e.what() << "\n";
            return kExitAgentError;
        }
        opened = true;
        end = client.readJobLogs(o.daemonId, handle.channel, spec.credit, [&spec](std::string_view data) {
            writeOutput(STDOUT_FILENO, data);
            spec.fromByte += data.size();
        });
        // Cut short (the daemon's link went down, its queue was full): resume from the next byte.
        if (!end.error.empty()) throw Error(ErrorCode::Unavailable, "the output stopped: " + end.error);
        return 0;
    });
    if (status != 0 || !o.follow) return status;
    return jobStateFromWireName(end.state) == JobState::Completed ? 0 : 1;
}

}  // namespace

void writeOutput(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw Error(ErrorCode::Internal, std::string("cannot write the output: ") + std::strerror(errno));
        data.remove_prefix(static_cast<std::size_t>(n));
    }
}

Command addLogsCommand(CLI::App& parent) {
    auto o = std::make_shared<LogsOptions>();
    auto* app = parent.add_subcommand("logs", "Print a job's stdout (or stderr) from a byte offset; -f follows it");
    app->add_option("daemon", o->daemonId, "daemon id")->required();
    app->add_option("job", o->jobId, "job id")->required();
    app->add_flag("--follow,-f", o->follow,
                  "keep printing while the job runs; end after its last byte, once it has ended");
    app->add_flag("--stderr", o->stderrStream, "the job's stderr rather than its stdout (printed on stdout)");
    app->add_option("--from-byte", o->fromByte, "start at this byte of the output (default 0: the beginning)")
        ->type_name("N");
    app->footer(
        "The bytes are printed exactly as the job wrote them (any bytes, no decoding). Without -f, prints what "
        "the file holds now and exits. With -f, a connection that breaks (a platform restart, a network blip, a "
        "daemon restart) is made again with backoff and the output resumes from the byte after the last one "
        "printed; to resume by hand later, add the bytes printed to --from-byte.\n"
        "Exit status: without -f, 0 once printed; with -f, 0 when the job COMPLETED and 1 when it ended in any "
        "other state (as wait); 255 when hpc-agent failed (an unknown job, another agent's job, a job output "
        "that is not a regular file).");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runLogs(*o); }};
}

}  // namespace hpc::agent
