#include "job_state.hpp"

#include <array>

namespace hpc {
namespace {

struct JobStateRow {
    JobState state;
    std::string_view wire;
    bool final;
};

// clang-format off
constexpr std::array kJobStateTable{
    JobStateRow{JobState::Submitting,  "SUBMITTING",    false},
    JobStateRow{JobState::Pending,     "PENDING",       false},
    JobStateRow{JobState::Running,     "RUNNING",       false},
    JobStateRow{JobState::Suspended,   "SUSPENDED",     false},
    JobStateRow{JobState::Completed,   "COMPLETED",     true},
    JobStateRow{JobState::Failed,      "FAILED",        true},
    JobStateRow{JobState::Cancelled,   "CANCELLED",     true},
    JobStateRow{JobState::Timeout,     "TIMEOUT",       true},
    JobStateRow{JobState::OutOfMemory, "OUT_OF_MEMORY", true},
    JobStateRow{JobState::NodeFail,    "NODE_FAIL",     true},
    JobStateRow{JobState::Preempted,   "PREEMPTED",     true},
};
// clang-format on

constexpr bool inEnumOrder() {
    for (std::size_t i = 0; i < kJobStateTable.size(); ++i)
        if (static_cast<std::size_t>(kJobStateTable[i].state) != i) return false;
    return true;
}
static_assert(inEnumOrder(), "kJobStateTable has one row per JobState, in the enum's order");

const JobStateRow& row(JobState state) { return kJobStateTable.at(static_cast<std::size_t>(state)); }

}  // namespace

std::string_view toWireName(JobState state) { return row(state).wire; }
bool isFinal(JobState state) { return row(state).final; }

std::optional<JobState> jobStateFromWireName(std::string_view name) {
    for (const auto& r : kJobStateTable)
        if (r.wire == name) return r.state;
    return std::nullopt;
}

std::string finalStatesSqlList() {
    std::string out = "(";
    for (const auto& r : kJobStateTable) {
        if (!r.final) continue;
        if (out.size() > 1) out += ", ";
        out += "'" + std::string(r.wire) + "'";
    }
    return out + ")";
}

}  // namespace hpc
