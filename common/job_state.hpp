#pragma once
/// The closed set of job states shared by the daemon, the agent and the CLI.
///
/// One enum, one table: the wire name (also the text in state.db's jobs.state
/// column and on D-Bus) and whether the state is final. Final states end
/// tracking and queue the job's callback; live ones are followed.

#include <optional>
#include <string>
#include <string_view>

namespace hpc {

enum class JobState {
    Submitting,  ///< row written, not yet accepted by the scheduler
    Pending,
    Running,
    Suspended,
    Completed,
    Failed,
    Cancelled,
    Timeout,
    OutOfMemory,
    NodeFail,
    Preempted,
};

/// The wire name, e.g. "OUT_OF_MEMORY".
std::string_view toWireName(JobState state);
/// Parses a wire name; nullopt when it is not in the closed set.
std::optional<JobState> jobStateFromWireName(std::string_view name);
/// Whether the job has ended (COMPLETED, FAILED, CANCELLED, TIMEOUT,
/// OUT_OF_MEMORY, NODE_FAIL, PREEMPTED).
bool isFinal(JobState state);
/// The final states' wire names as an SQL list, "('COMPLETED', 'FAILED', …)",
/// for `state IN …` in queries on the jobs table.
std::string finalStatesSqlList();

}  // namespace hpc
