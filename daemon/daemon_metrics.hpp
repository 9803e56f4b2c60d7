#pragma once
/// The daemon's counters since it started (docs/metrics.md): what
/// `hpc-daemonctl status` shows and the Metrics D-Bus property carries.
/// Updated on the daemon's one thread: plain integers, no locks.

#include "job_state.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace hpc::daemon {

class DaemonMetrics {
public:
    /// Distinct message types counted by name; later ones count as "other".
    static constexpr std::size_t kMaxMessageTypes = 48;

    /// The link is up; every time after the first is a reconnect.
    void linkConnected();
    /// A well-formed text message from the platform (a request, an event or a
    /// response; its type as protocol::parse accepts it).
    void message(std::string_view type);
    /// An exec ended with `exitCode` (128 + signal for a signal).
    void execEnded(int exitCode);
    /// A job reached a state; final states are counted.
    void jobChanged(JobState state);
    /// The platform acknowledged a job callback `seconds` after its job ended.
    void callbackDelivered(double seconds);

    /// Every counter by name (docs/metrics.md), `shells` being the PTY
    /// sessions opened so far.
    std::map<std::string, std::uint64_t> snapshot(std::uint64_t shells) const;

private:
    std::uint64_t m_connects = 0;
    std::map<std::string, std::uint64_t, std::less<>> m_messages;
    std::uint64_t m_execs = 0;
    std::uint64_t m_execsFailed = 0;
    std::map<JobState, std::uint64_t> m_jobs;
    std::uint64_t m_callbacks = 0;
    std::uint64_t m_callbackMsSum = 0;
    std::uint64_t m_callbackMsMax = 0;
};

}  // namespace hpc::daemon
