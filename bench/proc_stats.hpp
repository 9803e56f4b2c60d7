#pragma once
// Resource figures of a process from /proc.
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
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

/// `root` and its live descendants whose command name is `comm` (as in
/// /proc/PID/comm), e.g. the server processes under a listening sshd.
inline std::vector<pid_t> descendantsNamed(pid_t root, const std::string& comm) {
    std::map<pid_t, std::pair<pid_t, std::string>> procs;  // pid -> (parent, name)
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
        const std::string name = entry.path().filename().string();
        pid_t pid = 0;
        if (std::from_chars(name.data(), name.data() + name.size(), pid).ec != std::errc{} || pid <= 0) continue;
        std::ifstream stat(entry.path() / "stat");
        std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
        auto open = text.find('('), close = text.rfind(')');
        if (open == std::string::npos || close == std::string::npos || close + 4 > text.size()) continue;
        std::istringstream rest(text.substr(close + 4));  // after ") S "
        pid_t parent = 0;
        rest >> parent;
        procs[pid] = {parent, text.substr(open + 1, close - open - 1)};
    }
    auto under = [&](pid_t pid) {
        for (int depth = 0; pid > 1 && depth < 64; ++depth) {
            if (pid == root) return true;
            auto it = procs.find(pid);
            if (it == procs.end()) return false;
            pid = it->second.first;
        }
        return false;
    };
    std::vector<pid_t> out;
    for (const auto& [pid, info] : procs)
        if (info.second == comm && under(pid)) out.push_back(pid);
    return out;
}

/// CPU seconds of these processes now (those gone count nothing).
inline double cpuSecondsOf(const std::vector<pid_t>& pids) {
    double total = 0;
    for (pid_t p : pids) total += procStats(p).cpuSeconds;
    return total;
}

/// Resident KiB per mapped file (by base name; "[heap]", "[anon]" ...), largest first.
inline std::vector<std::pair<std::string, long>> rssByMapping(pid_t pid) {
    std::map<std::string, long> rss;
    std::ifstream smaps("/proc/" + std::to_string(pid) + "/smaps");
    std::string line, current = "[anon]";
    while (std::getline(smaps, line)) {
        if (line.rfind("Rss:", 0) == 0) {
            rss[current] += std::stol(line.substr(4));
        } else if (!line.empty() && line.find(':') != std::string::npos && line.find('-') < line.find(' ')) {
            // A mapping's header: "start-end perms offset dev inode [path]".
            std::istringstream h(line);
            std::string range, perms, offset, dev, inode, path;
            h >> range >> perms >> offset >> dev >> inode >> path;
            current = path.empty() ? "[anon]" : path.substr(path.rfind('/') + 1);
        }
    }
    std::vector<std::pair<std::string, long>> out(rss.begin(), rss.end());
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    return out;
}

/// Starts counting the pages a process touches (its working set).
inline void clearReferenced(pid_t pid) { std::ofstream("/proc/" + std::to_string(pid) + "/clear_refs") << "1"; }

/// KiB of the process's pages touched since clearReferenced().
inline long referencedKiB(pid_t pid) {
    std::ifstream rollup("/proc/" + std::to_string(pid) + "/smaps_rollup");
    std::string line;
    while (std::getline(rollup, line))
        if (line.rfind("Referenced:", 0) == 0) return std::stol(line.substr(11));
    return 0;
}

}  // namespace hpc::test
