#include "job_files.hpp"

#include "fd.hpp"
#include "util.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <system_error>

namespace fs = std::filesystem;

namespace hpc::daemon {
namespace {

[[noreturn]] void fail(const std::string& what, int err) {
    throw std::system_error(err, std::generic_category(), what);
}

void writePrivate(const std::string& path, std::string_view content, mode_t mode) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
    if (!fd) fail("cannot create " + path, errno);
    std::size_t done = 0;
    while (done < content.size()) {
        ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("cannot write " + path, n < 0 ? errno : EIO);
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd.get()) != 0) fail("cannot write " + path, errno);
    if (::close(fd.release()) != 0) fail("cannot write " + path, errno);
}

/// Opens a regular file the job may have written, for reading: never
/// through a symlink (the daemon must not read, for the agent, what the
/// job's confinement hides) and never a FIFO or device (which could block a
/// worker for ever). `name` is taken under `dirFd` (AT_FDCWD: a path).
/// Invalid when it is neither there nor a regular file; `notRegular` then
/// says whether something else is there.
UniqueFd openJobFile(int dirFd, const std::string& name, bool* notRegular = nullptr) {
    if (notRegular) *notRegular = false;
    UniqueFd at(::openat(dirFd, name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    struct stat st {};
    if (!at || ::fstat(at.get(), &st) != 0) return UniqueFd();
    if (!S_ISREG(st.st_mode)) {
        if (notRegular) *notRegular = true;
        return UniqueFd();
    }
    // Reopened through /proc: the very file checked, now for reading.
    UniqueFd fd(::open(("/proc/self/fd/" + std::to_string(at.get())).c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd && errno == ENOENT)
        fd = UniqueFd(::openat(dirFd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    return fd;
}

UniqueFd openJobFile(const std::string& path) { return openJobFile(AT_FDCWD, path); }

}  // namespace

/// All of a small file, or up to its last `maxBytes` bytes; "" when unreadable.
std::string readJobFile(const std::string& path, std::size_t maxBytes, std::size_t* startOut) {
    UniqueFd fd = openJobFile(path);
    struct stat st {};
    if (!fd || ::fstat(fd.get(), &st) != 0) return {};
    auto size = static_cast<std::size_t>(std::max<off_t>(0, st.st_size));
    std::size_t start = size > maxBytes ? size - maxBytes : 0;
    std::string out(size - start, '\0');
    std::size_t got = 0;
    while (got < out.size()) {
        ssize_t n = ::pread(fd.get(), out.data() + got, out.size() - got, static_cast<off_t>(start + got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    out.resize(got);
    if (startOut) *startOut = start;
    return out;
}

JobOutputSlice readJobOutput(const std::string& dir, const std::string& name, std::uint64_t offset,
                             std::size_t maxBytes) {
    JobOutputSlice slice;
    // The job's own directory, not one a symlink planted in its place leads to.
    UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (!d) {
        if (errno == ENOENT) return slice;
        if (errno == ELOOP || errno == ENOTDIR) {
            slice.file = JobOutputSlice::File::NotRegular;
            return slice;
        }
        fail("cannot open " + dir, errno);
    }
    bool notRegular = false;
    errno = 0;
    UniqueFd fd = openJobFile(d.get(), name, &notRegular);
    if (notRegular) slice.file = JobOutputSlice::File::NotRegular;
    if (!fd) {
        if (notRegular || errno == ENOENT || errno == 0) return slice;
        fail("cannot open " + dir + "/" + name, errno);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) fail("cannot read " + dir + "/" + name, errno);
    slice.file = JobOutputSlice::File::Regular;
    slice.size = static_cast<std::uint64_t>(std::max<off_t>(0, st.st_size));
    if (offset >= slice.size) return slice;
    slice.data.resize(static_cast<std::size_t>(std::min<std::uint64_t>(maxBytes, slice.size - offset)));
    std::size_t got = 0;
    while (got < slice.data.size()) {
        ssize_t n =
            ::pread(fd.get(), slice.data.data() + got, slice.data.size() - got, static_cast<off_t>(offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("cannot read " + dir + "/" + name, errno);
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    slice.data.resize(got);
    return slice;
}

namespace {

/// The `#SBATCH` lines of the script's first comment block (where sbatch
/// itself would look for them).
std::string sbatchDirectives(std::string_view script) {
    std::string out;
    std::istringstream lines{std::string(script)};
    std::string line;
    bool first = true;
    while (std::getline(lines, line)) {
        if (first && line.rfind("#!", 0) == 0) {
            first = false;
            continue;
        }
        first = false;
        if (line.rfind("#SBATCH", 0) == 0) {
            out += line + "\n";
        } else if (!line.empty() && line[0] != '#' && line.find_first_not_of(" \t\r") != std::string::npos) {
            break;  // the first command ends the directive block
        }
    }
    return out;
}

}  // namespace

std::string shellQuote(std::string_view text) {
    std::string out = "'";
    for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

void writeJobFiles(const JobRecord& job, std::string_view script, bool slurm) {
    fs::path dir(job.dir);
    std::error_code ec;
    fs::create_directories(dir.parent_path(), ec);
    if (ec) fail("cannot create " + dir.parent_path().string(), ec.value());
    if (::mkdir(dir.c_str(), 0700) != 0) fail("cannot create " + dir.string(), errno);
    std::string scriptPath = job.dir + "/script";
    writePrivate(scriptPath, script, 0700);
    std::string quotedDir = shellQuote(job.dir);
    std::string shell = defaultShell();
    std::string run = script.rfind("#!", 0) == 0 ? "\"$job_dir/script\"" : shell + " \"$job_dir/script\"";
    std::string wrapper = "#!" + shell + "\n";
    if (slurm) wrapper += sbatchDirectives(script);
    wrapper += "# Written by hpc-daemond: runs the job's script, then records its exit status.\n";
    wrapper += "job_dir=" + quotedDir + "\n";
    if (!slurm) {
        // Its own pid, so a daemon killed before it recorded the pid still finds the job.
        wrapper += "printf '%d\\n' \"$$\" >\"$job_dir/pid.tmp\" && mv -f \"$job_dir/pid.tmp\" \"$job_dir/pid\"\n";
        wrapper += "exec >\"$job_dir/stdout\" 2>\"$job_dir/stderr\" </dev/null\n";
    }
    wrapper += "export HPC_JOB_ID=" + shellQuote(job.jobId) + " HPC_JOB_DIR=\"$job_dir\"\n";
    wrapper += run + "\n";
    wrapper += "rc=$?\n";
    wrapper +=
        "printf '%d\\n' \"$rc\" >\"$job_dir/exit_status.tmp\" && mv -f \"$job_dir/exit_status.tmp\" "
        "\"$job_dir/exit_status\"\n";
    wrapper += "exit \"$rc\"\n";
    writePrivate(job.dir + "/wrapper", wrapper, 0700);
}

bool settleFromExitFile(JobRecord& job, const std::string& noFileReason) {
    std::istringstream in(readJobFile(job.exitStatusPath(), 64));
    int code = 0;
    if (in >> code) {
        job.exitCode = code;
        job.state = code == 0 ? JobState::Completed : JobState::Failed;
        if (job.cancelRequested && code != 0) job.state = JobState::Cancelled;
        if (job.state == JobState::Failed && job.reason.empty()) job.reason = "exit code " + std::to_string(code);
        return true;
    }
    job.state = job.cancelRequested ? JobState::Cancelled : JobState::Failed;
    if (!job.cancelRequested) job.reason = noFileReason;
    return false;
}

std::string readTail(const std::string& path, std::size_t maxBytes) {
    std::size_t start = 0;
    std::string out = readJobFile(path, maxBytes, &start);
    // Do not start inside a UTF-8 sequence (the tail would not be text).
    std::size_t skip = 0;
    while (start > 0 && skip < 3 && skip < out.size() && (static_cast<unsigned char>(out[skip]) & 0xC0) == 0x80) ++skip;
    return out.substr(skip);
}

}  // namespace hpc::daemon

namespace hpc::daemon {
namespace {

constexpr int kMaxRemoveDepth = 64;

bool validJobId(const std::string& id) {
    if (id.empty() || id.size() > 64 || id[0] == '.' || id[0] == '-') return false;
    for (char c : id)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
    return true;
}

/// Absolute, and no empty, `.` or `..` component: the path means what it says.
bool plainAbsolute(const std::string& path) {
    if (path.empty() || path[0] != '/') return false;
    std::size_t start = 1;
    while (start <= path.size()) {
        std::size_t end = path.find('/', start);
        if (end == std::string::npos) end = path.size();
        std::string_view part(path.data() + start, end - start);
        if (part.empty() || part == "." || part == "..") return false;
        start = end + 1;
    }
    return true;
}

std::string errnoText(const std::string& what, int err) { return what + ": " + std::strerror(err); }

/// Removes `name` (a directory) under `parent` and everything in it, through
/// descriptors only. False (with `error`) when something stayed.
bool removeTree(int parent, const std::string& name, dev_t dev, int depth, std::int64_t& bytes, std::string& error) {
    int fd = ::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        error = errnoText("cannot open " + name, errno);
        return false;
    }
    struct CloseDir {
        void operator()(DIR* dir) const { ::closedir(dir); }
    };
    std::unique_ptr<DIR, CloseDir> d(::fdopendir(fd));
    if (!d) {
        error = errnoText("cannot read " + name, errno);
        ::close(fd);
        return false;
    }
    struct stat self {};
    if (::fstat(fd, &self) != 0 || self.st_dev != dev) {
        error = name + " is on another file system: left alone";
        return false;
    }
    bool ok = true;
    while (dirent* e = ::readdir(d.get())) {
        std::string entry = e->d_name;
        if (entry == "." || entry == "..") continue;
        struct stat st {};
        if (::fstatat(fd, entry.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone meanwhile
        if (S_ISDIR(st.st_mode)) {
            if (depth >= kMaxRemoveDepth) {
                error = "more than " + std::to_string(kMaxRemoveDepth) + " levels of directories: left alone";
                ok = false;
            } else if (!removeTree(fd, entry, dev, depth + 1, bytes, error)) {
                ok = false;
            }
            continue;
        }
        // Files, symlinks (the link itself), FIFOs: unlinked, never opened.
        if (::unlinkat(fd, entry.c_str(), 0) == 0) {
            bytes += static_cast<std::int64_t>(st.st_size);
        } else if (errno != ENOENT) {
            error = errnoText("cannot remove " + entry, errno);
            ok = false;
        }
    }
    d.reset();
    if (!ok) return false;
    if (::unlinkat(parent, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
        error = errnoText("cannot remove " + name, errno);
        return false;
    }
    return true;
}

}  // namespace

JobDirRemoval removeJobDir(const std::string& dir, const std::string& jobId) {
    JobDirRemoval out;
    const std::string suffix = "/.hpc-daemon/jobs/" + jobId;
    if (!validJobId(jobId) || !plainAbsolute(dir) || dir.size() <= suffix.size() ||
        dir.compare(dir.size() - suffix.size(), suffix.size(), suffix) != 0) {
        out.error = "refused: " + dir + " is not a job directory <dir>" + suffix;
        return out;
    }
    std::string workdir = dir.substr(0, dir.size() - suffix.size());
    if (workdir.empty()) workdir = "/";
    UniqueFd work(::open(workdir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!work) {
        out.error = errnoText("cannot open " + workdir, errno);
        return out;
    }
    constexpr int kWalk = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
    UniqueFd hidden(::openat(work.get(), ".hpc-daemon", kWalk));
    UniqueFd jobs(hidden ? ::openat(hidden.get(), "jobs", kWalk) : -1);
    if (!jobs) {
        out.error = errnoText("cannot open " + workdir + "/.hpc-daemon/jobs (a symlink is not followed)", errno);
        return out;
    }
    struct stat st {};
    if (::fstatat(jobs.get(), jobId.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        out.error = errnoText(dir, errno);
        return out;
    }
    if (!S_ISDIR(st.st_mode)) {
        // Replaced by a file or a symlink: the entry goes, its target stays.
        if (::unlinkat(jobs.get(), jobId.c_str(), 0) != 0) {
            out.error = errnoText("cannot remove " + dir, errno);
            return out;
        }
        out.removed = true;
        out.bytes = static_cast<std::int64_t>(st.st_size);
        return out;
    }
    out.removed = removeTree(jobs.get(), jobId, st.st_dev, 0, out.bytes, out.error);
    return out;
}

}  // namespace hpc::daemon
