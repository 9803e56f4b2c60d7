#pragma once
/// hpc-daemond's top level: one io_context, one thread; the link, the
/// dispatcher and the exec service wired together; signals for shutdown.

#include "store.hpp"

#include <chrono>
#include <string>

namespace hpc::daemon {

struct DaemonOptions {
    std::string daemonId;  ///< empty: the only profile
    std::chrono::milliseconds heartbeat{std::chrono::seconds(20)};
    std::chrono::milliseconds reconnectMax{std::chrono::seconds(30)};
    std::chrono::milliseconds unauthorizedDelay{std::chrono::minutes(5)};
};

/// Runs until SIGTERM or SIGINT; returns the exit code (0 on a clean stop).
/// Throws hpc::Error or std::runtime_error for a bad profile.
int runDaemon(const DaemonOptions& options);

}  // namespace hpc::daemon
