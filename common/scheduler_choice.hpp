#pragma once
/// Which batch scheduler a daemon uses, and why: one rule for the daemon (its
/// job backend, shown by `status`) and for `hpc-daemonctl setup` (what it
/// registers), so the two agree. Reads the environment the caller runs in: in
/// systemd mode that is the unit's, completed by the per-instance environment
/// file that hpc-daemonctl writes (PATH, SLURM_CONF, LOCAL_MODE).

#include "util.hpp"

#include <cstdlib>
#include <string>

namespace hpc {

struct SchedulerChoice {
    std::string backend;  ///< "slurm" or "local"
    std::string reason;   ///< a sentence for `status`
};

inline SchedulerChoice chooseScheduler() {
    if (const char* local = std::getenv("LOCAL_MODE"); local && std::string(local) == "1")
        return {"local", "LOCAL_MODE=1"};
    std::string sbatch = findInPath("sbatch");
    if (sbatch.empty()) {
        const char* path = std::getenv("PATH");
        return {"local", std::string("no sbatch on PATH=") + (path ? path : "")};
    }
    std::string reason = "sbatch at " + sbatch;
    if (const char* conf = std::getenv("SLURM_CONF"); conf && *conf) reason += ", SLURM_CONF=" + std::string(conf);
    return {"slurm", reason};
}

}  // namespace hpc
