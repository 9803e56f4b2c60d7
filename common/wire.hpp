#pragma once
/// The requests an agent sends a daemon, as structs with one to/from pair:
/// toPayload (the agent) and fromPayload (the daemon), so both read the same
/// field names, and the limits and messages live in one place
/// (docs/protocol.md: `exec`, `job.submit`).
///
/// fromPayload checks the shape and the limits of every field and throws
/// hpc::Error(BadRequest) naming the field. What needs the daemon's policy
/// (allowed directories, the scheduler, sbatch options) is checked by the
/// daemon after it.

#include "protocol.hpp"

#include <boost/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hpc {

/// An `exec` request: a program with its arguments, or a shell command line.
struct ExecSpec {
    static constexpr std::size_t kMaxArgs = 4096;
    static constexpr std::int64_t kMaxOutputBytes = 4 * 1024 * 1024;  ///< per stream
    static constexpr double kMaxTimeoutSeconds = 7 * 24 * 3600;
    static constexpr double kMaxKillGraceSeconds = 600;
    /// A streamed exec's output window (`credit`).
    static constexpr std::int64_t kMinCredit = 4096;
    static constexpr std::int64_t kMaxCredit = 16 << 20;

    std::vector<std::string> argv;  ///< or
    std::string command;            ///< a shell command line
    std::optional<std::string> cwd;
    std::optional<std::string> stdinData;
    std::optional<double> timeoutSeconds;
    std::optional<double> killGraceSeconds;      ///< between SIGTERM and SIGKILL at the timeout
    std::optional<std::int64_t> maxOutputBytes;  ///< buffered only
    protocol::EnvVars env;
    /// Streamed (docs/protocol.md §4.3): the answer opens a channel that
    /// carries the output as binary frames, with no cap.
    bool stream = false;
    bool streamStdin = false;            ///< stream: stdin comes as binary frames, then exec.eof
    std::optional<std::int64_t> credit;  ///< stream: the output window; default 1 MiB

    boost::json::object toPayload() const;
    /// Throws hpc::Error(BadRequest) for a payload the daemon cannot run.
    static ExecSpec fromPayload(const boost::json::object& payload);
};

/// A `job.submit` request: a batch script and how to run it.
struct JobSpec {
    static constexpr std::size_t kMaxScriptBytes = 512 * 1024;
    static constexpr std::size_t kMaxNameBytes = 128;
    static constexpr std::size_t kMaxContextBytes = 64 * 1024;
    static constexpr double kMaxTimeLimitSeconds = 365.0 * 24 * 3600;

    std::string script;
    std::optional<std::string> name;
    std::optional<std::string> cwd;
    std::vector<std::string> sbatchArgs;
    protocol::EnvVars env;
    std::optional<double> timeLimitSeconds;
    std::optional<boost::json::value> context;  ///< returned in the job's callback

    boost::json::object toPayload() const;
    /// Throws hpc::Error(BadRequest) for a payload the daemon cannot submit.
    static JobSpec fromPayload(const boost::json::object& payload);
};

}  // namespace hpc
