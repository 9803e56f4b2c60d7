#pragma once
// Resource figures of a process from /proc.
#include <sys/types.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace hpc::test {

struct ProcStats {
    double cpuSeconds = 0;     ///< user + system
    long rssKiB = 0;           ///< VmRSS: includes every shared library page touched
    long pssKiB = 0;           ///< proportional set size: shared pages divided among their users
    long privateKiB = 0;       ///< pages only this process uses
    long contextSwitches = 0;  ///< voluntary + involuntary: each is a wake-up or preemption
};

inline ProcStats procStats(pid_t pid) {
    ProcStats s;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    auto close = text.rfind(')');
    if (close != std::string::npos) {
        std::istringstream rest(text.substr(close + 2));
        std::vector<std::string> f;
        std::string field;
        while (rest >> field) f.push_back(field);
        // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name.
        if (f.size() > 13)
            s.cpuSeconds = (std::stod(f[11]) + std::stod(f[12])) / static_cast<double>(::sysconf(_SC_CLK_TCK));
    }
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("VmRSS:", 0) == 0) s.rssKiB = std::stol(line.substr(6));
        if (line.rfind("voluntary_ctxt_switches:", 0) == 0) s.contextSwitches += std::stol(line.substr(24));
        if (line.rfind("nonvoluntary_ctxt_switches:", 0) == 0) s.contextSwitches += std::stol(line.substr(27));
    }
    std::ifstream rollup("/proc/" + std::to_string(pid) + "/smaps_rollup");
    while (std::getline(rollup, line)) {
        if (line.rfind("Pss:", 0) == 0) s.pssKiB = std::stol(line.substr(4));
        if (line.rfind("Private_Clean:", 0) == 0) s.privateKiB += std::stol(line.substr(14));
        if (line.rfind("Private_Dirty:", 0) == 0) s.privateKiB += std::stol(line.substr(14));
    }
    return s;
}

}  // namespace hpc::test
