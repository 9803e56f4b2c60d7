#include "guard/landlock.hpp"

#include <fcntl.h>
#include <linux/landlock.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace hpc::daemon {
namespace {

// Rights newer than the headers of Debian 12 (ABI 2): defined here so a newer
// kernel is used fully.
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
constexpr __u64 LANDLOCK_ACCESS_FS_TRUNCATE = 1ULL << 14;
#endif

constexpr __u64 kFileWriteRights = LANDLOCK_ACCESS_FS_WRITE_FILE;
constexpr __u64 kDirWriteRights = LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_REMOVE_DIR |
                                  LANDLOCK_ACCESS_FS_REMOVE_FILE | LANDLOCK_ACCESS_FS_MAKE_CHAR |
                                  LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG |
                                  LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO |
                                  LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_MAKE_SYM;

/// What this kernel can handle: every write-type right it knows.
__u64 handledRights(int abi) {
    __u64 rights = kDirWriteRights;
    if (abi >= 2) rights |= LANDLOCK_ACCESS_FS_REFER;
    if (abi >= 3) rights |= LANDLOCK_ACCESS_FS_TRUNCATE;
    return rights;
}

bool addRule(int ruleset, const std::string& path, __u64 handled, std::string& why) {
    int fd = ::open(path.c_str(), O_PATH | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return true;  // nothing there to allow
        why = "cannot open " + path + ": " + std::strerror(errno);
        return false;
    }
    struct stat st {};
    ::fstat(fd, &st);
    landlock_path_beneath_attr rule{};
    rule.parent_fd = fd;
    // A rule on a file may carry only file rights.
    __u64 fileRights = kFileWriteRights | (handled & LANDLOCK_ACCESS_FS_TRUNCATE);
    rule.allowed_access = S_ISDIR(st.st_mode) ? handled : (handled & fileRights);
    long rc = ::syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0);
    int err = errno;
    ::close(fd);
    if (rc != 0) {
        why = "cannot add a Landlock rule for " + path + ": " + std::strerror(err);
        return false;
    }
    return true;
}

}  // namespace

int LandlockPolicy::abi() {
    static const int version = [] {
        long v = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
        return v < 0 ? 0 : static_cast<int>(v);
    }();
    return version;
}

std::unique_ptr<LandlockPolicy> LandlockPolicy::build(const std::vector<std::string>& dirs,
                                                      const std::string& privateTmp, std::string& why) {
    int version = abi();
    if (version == 0) {
        why = "the kernel has no Landlock (needs Linux 5.13+ with landlock in the LSM list)";
        return nullptr;
    }
    landlock_ruleset_attr attr{};
    attr.handled_access_fs = handledRights(version);
    long fd = ::syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (fd < 0) {
        why = std::string("cannot create a Landlock ruleset: ") + std::strerror(errno);
        return nullptr;
    }
    UniqueFd ruleset(static_cast<int>(fd));
    ::fcntl(ruleset.get(), F_SETFD, FD_CLOEXEC);
    std::vector<std::string> writable = dirs;
    // What a shell and common tools write besides the user's files.
    for (const char* p : {"/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/ptmx", "/dev/pts", "/dev/shm"})
        writable.emplace_back(p);
    if (!privateTmp.empty()) writable.push_back(privateTmp);
    for (const auto& path : writable)
        if (!addRule(ruleset.get(), path, attr.handled_access_fs, why)) return nullptr;
    return std::unique_ptr<LandlockPolicy>(new LandlockPolicy(std::move(ruleset)));
}

std::string LandlockPolicy::describe() const { return "landlock (ABI " + std::to_string(abi()) + ")"; }

}  // namespace hpc::daemon
