#include "daemon_metrics.hpp"

#include <algorithm>
#include <cmath>

namespace hpc::daemon {

void DaemonMetrics::linkConnected() { ++m_connects; }

void DaemonMetrics::message(std::string_view type) {
    auto it = m_messages.find(type);
    if (it != m_messages.end()) {
        ++it->second;
        return;
    }
    // protocol::parse has checked the type's characters; the platform still
    // chooses the types, so only so many get a name of their own.
    if (m_messages.size() >= kMaxMessageTypes) type = "other";
    ++m_messages[std::string(type)];
}

void DaemonMetrics::execEnded(int exitCode) {
    ++m_execs;
    if (exitCode != 0) ++m_execsFailed;
}

void DaemonMetrics::jobChanged(JobState state) {
    if (isFinal(state)) ++m_jobs[state];
}

void DaemonMetrics::callbackDelivered(double seconds) {
    auto ms = static_cast<std::uint64_t>(std::llround(std::max(0.0, seconds) * 1000));
    ++m_callbacks;
    m_callbackMsSum += ms;
    m_callbackMsMax = std::max(m_callbackMsMax, ms);
}

std::map<std::string, std::uint64_t> DaemonMetrics::snapshot(std::uint64_t shells) const {
    std::map<std::string, std::uint64_t> out{
        {"reconnects", m_connects > 0 ? m_connects - 1 : 0},
        {"execs", m_execs},
        {"execs_failed", m_execsFailed},
        {"shells", shells},
        {"callbacks_delivered", m_callbacks},
        {"callback_latency_ms_sum", m_callbackMsSum},
        {"callback_latency_ms_max", m_callbackMsMax},
    };
    for (auto state : {JobState::Completed, JobState::Failed, JobState::Cancelled, JobState::Timeout,
                       JobState::OutOfMemory, JobState::NodeFail, JobState::Preempted}) {
        auto it = m_jobs.find(state);
        out["jobs." + std::string(toWireName(state))] = it == m_jobs.end() ? 0 : it->second;
    }
    for (const auto& [type, n] : m_messages) out["messages." + type] = n;
    return out;
}

}  // namespace hpc::daemon
