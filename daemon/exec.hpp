#pragma once
/// One-shot commands (protocol `exec`): run, capture output up to a cap,
/// enforce a timeout on the whole process group, report how it ended.
/// Asynchronous on the daemon's io_context: many run at once.

#include "guard/confinement.hpp"
#include "util.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace hpc::daemon {

struct ExecRequest {
    std::vector<std::string> argv;  ///< the program and its arguments
    std::string cwd;                ///< resolved and checked by the caller
    std::vector<std::string> env;   ///< "NAME=value" over the daemon's environment
    std::optional<std::string> stdinData;
    std::chrono::milliseconds timeout{std::chrono::minutes(5)};
    std::chrono::milliseconds killGrace{std::chrono::seconds(2)};
    std::size_t maxOutputBytes = 1024 * 1024;        ///< per stream
    std::shared_ptr<const Confinement> confinement;  ///< applied at spawn; null: unconfined
};

struct ExecResult {
    int pid = 0;
    std::optional<int> exitCode;
    std::optional<int> signal;
    std::string out;
    std::string err;
    bool outTruncated = false;
    bool errTruncated = false;
    bool timedOut = false;
    double durationSeconds = 0;

    /// How it ended, as both exec answers carry it (docs/protocol.md §4.3):
    /// pid, exit_code, signal, signal_name, timed_out, duration_s; no output.
    /// Inline: the dispatch fuzz target links the dispatcher without exec.cpp.
    boost::json::object statusJson() const {
        boost::json::object o{{"pid", pid},
                              {"exit_code", exitCode ? boost::json::value(*exitCode) : boost::json::value(nullptr)},
                              {"signal", signal ? boost::json::value(*signal) : boost::json::value(nullptr)},
                              {"timed_out", timedOut},
                              {"duration_s", durationSeconds}};
        if (signal) o["signal_name"] = signalName(*signal);
        return o;
    }
};

class ExecRun;
class ExecStreams;

/// Starts and tracks exec children, buffered and streamed (exec_stream.hpp).
class ExecService {
public:
    static constexpr std::size_t kDefaultMaxConcurrent = 128;

    explicit ExecService(boost::asio::io_context& ioc, std::size_t maxConcurrent = kDefaultMaxConcurrent);
    ~ExecService();

    /// Starts the command; `done` runs on the loop when it has ended and its
    /// output is collected. Throws hpc::Error: Limit when too many run,
    /// NotFound when the program cannot be found, Internal for other spawn
    /// failures.
    void start(ExecRequest request, std::function<void(ExecResult)> done);
    /// The streamed commands (`exec` with `"stream": true`).
    ExecStreams& streams() { return *m_streams; }
    /// Commands running now, buffered and streamed.
    std::size_t running() const;
    /// Kills every running command's process group (daemon shutdown).
    void killAll();

private:
    friend class ExecRun;
    boost::asio::io_context& m_ioc;
    std::size_t m_maxConcurrent;
    std::unordered_map<ExecRun*, std::weak_ptr<ExecRun>> m_running;
    std::unique_ptr<ExecStreams> m_streams;
};

}  // namespace hpc::daemon
