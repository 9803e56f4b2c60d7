#pragma once
/// Kernel-enforced write confinement with Landlock: a ruleset that allows
/// writing (creating, removing, renaming, truncating) only under the allowed
/// directories and the few paths a shell needs, and reading and executing
/// everywhere. Built once in the daemon; each confined child restricts itself
/// with it just before exec (see SpawnOptions::landlockRuleset).

#include "fd.hpp"

#include <memory>
#include <string>
#include <vector>

namespace hpc::daemon {

class LandlockPolicy {
public:
    /// The kernel's Landlock ABI version; 0 when Landlock is unavailable.
    static int abi();

    /// Builds the ruleset. `dirs` are writable trees; the device files a
    /// shell needs and `privateTmp` are added. Returns nullptr, with the reason
    /// in `why`, when Landlock is unavailable or a rule cannot be added.
    static std::unique_ptr<LandlockPolicy> build(const std::vector<std::string>& dirs, const std::string& privateTmp,
                                                 std::string& why);

    int fd() const { return m_fd.get(); }
    /// "landlock (ABI N)".
    std::string describe() const;

private:
    explicit LandlockPolicy(UniqueFd fd) : m_fd(std::move(fd)) {}
    UniqueFd m_fd;
};

}  // namespace hpc::daemon
