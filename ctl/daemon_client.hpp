#pragma once
/// hpc-daemonctl's D-Bus client: the one place that finds a running daemon
/// (its session-bus name, else its private bus socket) and calls it, one
/// function per method. Errors come back as hpc::Error with sentences.

#include <boost/json.hpp>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

namespace hpc::ctl {

class DaemonClient {
public:
    /// The running daemon `daemonId`, or nullptr when it is not running (on
    /// neither bus). Never starts it.
    static std::unique_ptr<DaemonClient> find(const std::filesystem::path& home, const std::string& daemonId);
    ~DaemonClient();

    /// GetStatus as JSON (the keys documented in dbus/org.tiptree.HpcDaemon.xml).
    boost::json::object status();
    void stop();
    /// Drain: new work refused, running commands get `limit`, then the
    /// daemon exits. Returns once the daemon has started draining.
    void drain(std::chrono::seconds limit);
    /// Returns whether the daemon reconnected.
    bool reload();
    /// ListJobs as JSON objects (job_id, state, backend, scheduler_id, name,
    /// agent_id, exit_code (null when none), submitted_at), newest first.
    boost::json::array jobs();
    const std::string& address() const { return m_address; }
    /// How long a method call may take before it fails with ErrorCode::Timeout
    /// (default 10 s).
    void setTimeout(std::chrono::milliseconds timeout);

    struct Impl;

private:
    DaemonClient(std::unique_ptr<Impl> impl, std::string address);
    std::unique_ptr<Impl> m_impl;
    std::string m_address;
};

}  // namespace hpc::ctl
