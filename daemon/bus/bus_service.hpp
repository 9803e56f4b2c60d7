#pragma once
/// The D-Bus face of the daemon: org.tiptree.HpcDaemon on /org/tiptree/HpcDaemon.
/// A thin translation layer: the core hands it a Controls object and knows
/// nothing about D-Bus (house style point 1).

#include "jobs/job_store.hpp"
#include "pty.hpp"
#include "status.hpp"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace hpc::daemon {

/// What the bus may ask of the core.
struct Controls {
    std::function<DaemonStatus()> status;
    std::function<void()> stop;
    /// Graceful stop with this limit for running commands. Throws hpc::Error.
    std::function<void(std::chrono::milliseconds)> drain;
    /// Returns whether the link was rebuilt. Throws hpc::Error.
    std::function<bool()> reload;
    std::function<std::vector<PtyInfo>()> sessions;
    std::function<std::vector<JobRecord>()> jobs;
};

class BusService {
public:
    /// Connects to `address`, exports the object, owns the daemon's name and
    /// starts pumping the connection from `ioc`. Throws hpc::Error(Limit) when
    /// another instance already owns the name, std::exception otherwise.
    BusService(boost::asio::io_context& ioc, const std::string& address, const std::string& daemonId,
               Controls controls);
    ~BusService();

    /// Emits LinkStateChanged and PropertiesChanged(LinkState, ConnectedSince).
    void linkStateChanged(const std::string& state);
    /// Emits JobChanged and PropertiesChanged(ActiveJobs).
    void jobChanged(const std::string& jobId, JobState state);
    /// Emits PropertiesChanged(Draining).
    void drainingChanged();
    const std::string& address() const { return m_address; }

    struct Impl;

private:
    std::string m_address;
    std::unique_ptr<Impl> m_impl;
};

}  // namespace hpc::daemon
