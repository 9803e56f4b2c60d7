#include "files/file_ops.hpp"

#include "errors.hpp"
#include "util.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>

namespace fs = std::filesystem;
namespace json = boost::json;
using hpc::files::displayPath;
using hpc::files::tempNameFor;
using hpc::files::toSeconds;
using hpc::files::toTimespec;

namespace hpc::daemon::files {
namespace {

constexpr int kMaxSymlinkHops = 8;

/// What errno means for `path`, as a code from the closed set and a sentence.
Error errnoError(int err, const std::string& path) {
    std::string p = displayPath(path);
    switch (err) {
        case ENOENT:
            return Error(ErrorCode::NotFound, p + ": no such file or directory");
        case ENOTDIR:
            return Error(ErrorCode::NotFound, p + ": a component of the path is not a directory");
        case EACCES:
        case EPERM:
            return Error(ErrorCode::PathNotAllowed, p + ": permission denied");
        case EROFS:
            return Error(ErrorCode::PathNotAllowed, p + ": read-only file system");
        case ENOSPC:
            return Error(ErrorCode::StorageFull, p + ": no space left on the device");
        case EDQUOT:
            return Error(ErrorCode::StorageFull, p + ": disk quota exceeded");
        case EISDIR:
            return Error(ErrorCode::BadRequest, p + " is a directory");
        case ENOTEMPTY:
        case EEXIST:
            return Error(ErrorCode::BadRequest, p + " already exists");
        case ELOOP:
            return Error(ErrorCode::BadRequest, p + ": too many levels of symbolic links");
        case ENAMETOOLONG:
            return Error(ErrorCode::BadRequest, p + ": file name too long");
        case EFBIG:
            return Error(ErrorCode::BadRequest, p + ": file too large for its file system");
        default:
            return Error(ErrorCode::Internal, p + ": " + std::strerror(err));
    }
}

[[noreturn]] void throwErrno(const std::string& path) { throw errnoError(errno, path); }

/// Where a descriptor really is: every symlink and ".." already resolved by the kernel.
std::string fdPath(int fd, const std::string& fallback) {
    char buf[PATH_MAX + 1];
    std::string link = "/proc/self/fd/" + std::to_string(fd);
    ssize_t n = ::readlink(link.c_str(), buf, PATH_MAX);
    if (n <= 0) {
        // No /proc: the path as the kernel resolves it now (a rename in
        // between could fool this; /proc is there on every supported system).
        std::error_code ec;
        auto p = fs::canonical(fallback, ec);
        if (ec) throw Error(ErrorCode::Internal, "cannot tell where " + displayPath(fallback) + " is: " + ec.message());
        return p.string();
    }
    return std::string(buf, static_cast<std::size_t>(n));
}

void checkNotHidden(const FilePolicy& policy, const std::string& real, const std::string& shown) {
    for (const auto& h : policy.hidden)
        if (isWithin(real, h))
            throw Error(ErrorCode::PathNotAllowed,
                        displayPath(shown) + " is in " + h.string() +
                            ", which the daemon keeps from agents (its state, or the user's runtime directory)");
}

void checkWritable(const FilePolicy& policy, const std::string& realDir, const std::string& shown) {
    checkNotHidden(policy, realDir, shown);
    if (policy.allowed.empty()) return;
    for (const auto& a : policy.allowed)
        if (isWithin(realDir, a)) return;
    throw Error(ErrorCode::PathNotAllowed,
                displayPath(shown) + " is outside the allowed directories: " + policy.describeAllowed());
}

bool sameTime(const timespec& a, const timespec& b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; }

/// The directory that is to hold a new entry, open and checked.
struct Target {
    UniqueFd dir;
    std::string dirReal;
    std::string name;
    std::string path;  ///< dirReal/name
    bool exists = false;
    struct stat st {};  ///< lstat of the entry, when it exists
};

Target openTarget(const FilePolicy& policy, const std::string& abs, bool followFinal, int hops = 0) {
    if (abs.empty() || abs.back() == '/')
        throw Error(ErrorCode::BadRequest, displayPath(abs) + " names a directory, not a file");
    auto slash = abs.rfind('/');
    Target t;
    t.name = abs.substr(slash + 1);
    if (t.name == "." || t.name == "..")
        throw Error(ErrorCode::BadRequest, displayPath(abs) + " names a directory, not a file");
    std::string parent = slash == 0 ? "/" : abs.substr(0, slash);
    t.dir = UniqueFd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!t.dir) throwErrno(parent);
    t.dirReal = fdPath(t.dir.get(), parent);
    checkWritable(policy, t.dirReal, abs);
    t.path = (t.dirReal == "/" ? "" : t.dirReal) + "/" + t.name;
    if (::fstatat(t.dir.get(), t.name.c_str(), &t.st, AT_SYMLINK_NOFOLLOW) == 0) {
        t.exists = true;
    } else if (errno != ENOENT) {
        throwErrno(abs);
    }
    if (t.exists && S_ISLNK(t.st.st_mode) && followFinal) {
        // As cp does, write through the symlink: to its target, checked in turn.
        if (hops >= kMaxSymlinkHops) throw errnoError(ELOOP, abs);
        char buf[PATH_MAX + 1];
        ssize_t n = ::readlinkat(t.dir.get(), t.name.c_str(), buf, PATH_MAX);
        if (n <= 0) throwErrno(abs);
        std::string target(buf, static_cast<std::size_t>(n));
        std::string next = target.front() == '/' ? target : t.dirReal + "/" + target;
        return openTarget(policy, next, true, hops + 1);
    }
    return t;
}

void writeAll(int fd, const char* data, std::size_t size, std::uint64_t offset, const std::string& path) {
    while (size > 0) {
        ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
        if (n < 0) {
            if (errno == EINTR) continue;
            throwErrno(path);
        }
        data += n;
        size -= static_cast<std::size_t>(n);
        offset += static_cast<std::uint64_t>(n);
    }
}

/// Reads exactly `size` bytes at `offset`; false when the file ends first.
bool readAll(int fd, char* out, std::size_t size, std::uint64_t offset, const std::string& path) {
    while (size > 0) {
        ssize_t n = ::pread(fd, out, size, static_cast<off_t>(offset));
        if (n < 0) {
            if (errno == EINTR) continue;
            throwErrno(path);
        }
        if (n == 0) return false;
        out += n;
        size -= static_cast<std::size_t>(n);
        offset += static_cast<std::uint64_t>(n);
    }
    return true;
}

/// Hashes [from, upTo) of fd, at most maxBytes of it; returns the new position.
std::uint64_t hashRange(int fd, hpc::files::Sha256& sha, std::uint64_t from, std::uint64_t upTo, std::uint64_t maxBytes,
                        const std::string& path) {
    std::string buf(1 << 20, '\0');
    std::uint64_t end = std::min(upTo, from + maxBytes);
    while (from < end) {
        auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), end - from));
        if (!readAll(fd, buf.data(), n, from, path))
            throw Error(ErrorCode::BadRequest, displayPath(path) + " is shorter than expected (changed meanwhile?)");
        sha.update(buf.data(), n);
        from += n;
    }
    return from;
}

}  // namespace

std::string FilePolicy::describeAllowed() const {
    std::string out;
    for (const auto& d : allowed) out += (out.empty() ? "" : ", ") + d.string();
    return out.empty() ? "(unrestricted)" : out;
}

mode_t currentUmask() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("Umask:", 0) == 0) return static_cast<mode_t>(std::stoul(line.substr(6), nullptr, 8));
    return 022;
}

std::string parentOf(const std::string& path) {
    auto slash = path.rfind('/');
    return slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
}

std::string absolutePath(const FilePolicy& policy, const std::string& requested) {
    if (requested == "~") return policy.home;
    if (requested.rfind("~/", 0) == 0) return policy.home + requested.substr(1);
    if (!requested.empty() && requested.front() == '/') return requested;
    std::string base = policy.base.string();
    if (base.empty() || base.back() != '/') base += '/';
    return base + requested;
}

FileInfo toInfo(const struct stat& st) {
    FileInfo i;
    i.type = S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "dir" : S_ISLNK(st.st_mode) ? "symlink" : "other";
    i.size = static_cast<std::uint64_t>(st.st_size);
    i.mode = st.st_mode & 07777;
    i.mtime = toSeconds(st.st_mtim);
    i.atime = toSeconds(st.st_atim);
    return i;
}

json::object FileInfo::toJson() const {
    json::object o{{"type", type}, {"size", size}, {"mode", mode}, {"mtime", mtime}, {"atime", atime}};
    if (type == "symlink") hpc::files::putPath(o, "target", target);
    return o;
}

FileInfo statPath(const FilePolicy& policy, const std::string& path, std::string& resolved) {
    std::string abs = absolutePath(policy, path);
    struct stat st {};
    if (::stat(abs.c_str(), &st) != 0) throwErrno(abs);
    std::error_code ec;
    resolved = fs::canonical(abs, ec).string();
    if (ec) throw errnoError(ec.value(), abs);
    checkNotHidden(policy, resolved, abs);
    return toInfo(st);
}

Listing listDir(const FilePolicy& policy, const std::string& path, const std::string& after, std::size_t limit) {
    std::string abs = absolutePath(policy, path);
    UniqueFd fd(::open(abs.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) throwErrno(abs);
    Listing out;
    out.path = fdPath(fd.get(), abs);
    checkNotHidden(policy, out.path, abs);
    std::vector<std::string> names;
    {
        int copy = ::dup(fd.get());
        DIR* dir = copy >= 0 ? ::fdopendir(copy) : nullptr;
        if (!dir) {
            if (copy >= 0) ::close(copy);
            throwErrno(abs);
        }
        while (dirent* e = ::readdir(dir)) {
            std::string name = e->d_name;
            if (name != "." && name != ".." && name > after) names.push_back(std::move(name));
        }
        ::closedir(dir);
    }
    std::sort(names.begin(), names.end());
    for (const auto& name : names) {
        if (out.entries.size() == limit) {
            out.more = true;
            break;
        }
        struct stat st {};
        if (::fstatat(fd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone meanwhile
        ListEntry e{name, toInfo(st)};
        if (S_ISLNK(st.st_mode)) {
            char buf[PATH_MAX + 1];
            ssize_t n = ::readlinkat(fd.get(), name.c_str(), buf, PATH_MAX);
            if (n > 0) e.info.target.assign(buf, static_cast<std::size_t>(n));
        }
        out.entries.push_back(std::move(e));
    }
    return out;
}

bool makeDir(const FilePolicy& policy, const std::string& path, std::uint32_t mode, std::string& resolved) {
    std::string abs = absolutePath(policy, path);
    while (abs.size() > 1 && abs.back() == '/') abs.pop_back();
    Target t = openTarget(policy, abs, false);
    resolved = t.path;
    if (::mkdirat(t.dir.get(), t.name.c_str(), mode & 07777) == 0) return true;
    if (errno != EEXIST) throwErrno(abs);
    struct stat st {};
    if (::fstatat(t.dir.get(), t.name.c_str(), &st, 0) == 0 && S_ISDIR(st.st_mode)) return false;
    throw Error(ErrorCode::BadRequest, displayPath(abs) + " exists and is not a directory");
}

void setDirAttributes(const FilePolicy& policy, const std::string& path, std::optional<std::uint32_t> mode,
                      std::optional<double> atime, std::optional<double> mtime, std::string& resolved) {
    std::string abs = absolutePath(policy, path);
    while (abs.size() > 1 && abs.back() == '/') abs.pop_back();
    Target t = openTarget(policy, abs, false);
    resolved = t.path;
    UniqueFd fd(::openat(t.dir.get(), t.name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) {
        if (errno == ENOTDIR || errno == ELOOP)
            throw Error(ErrorCode::BadRequest, displayPath(abs) + " is not a directory");
        throwErrno(abs);
    }
    // A directory's set-group-id bit only passes its group on; set-user-id means nothing
    // on one, and is dropped as for files.
    if (mode && ::fchmod(fd.get(), *mode & 07777 & ~static_cast<std::uint32_t>(S_ISUID)) != 0) throwErrno(abs);
    if (atime || mtime) {
        timespec times[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
        if (atime) times[0] = toTimespec(*atime);
        if (mtime) times[1] = toTimespec(*mtime);
        if (::futimens(fd.get(), times) != 0) throwErrno(abs);
    }
}

void makeSymlink(const FilePolicy& policy, const std::string& path, const std::string& target, std::string& resolved) {
    if (target.empty()) throw Error(ErrorCode::BadRequest, "a symlink needs a target");
    std::string abs = absolutePath(policy, path);
    Target t = openTarget(policy, abs, false);
    resolved = t.path;
    if (!policy.allowed.empty() || !policy.hidden.empty()) {
        // Where the link leads, as far as it exists now: its existing
        // components with their own symlinks followed, the rest as written.
        std::error_code ec;
        fs::path leads =
            fs::weakly_canonical(target.front() == '/' ? fs::path(target) : fs::path(t.dirReal) / target, ec);
        if (ec) throw errnoError(ec.value(), abs);
        std::string shown = "the symlink " + displayPath(abs) + " -> " + displayPath(target);
        checkNotHidden(policy, leads.string(), shown);
        bool inside = policy.allowed.empty();
        for (const auto& a : policy.allowed) inside = inside || isWithin(leads, a);
        if (!inside)
            throw Error(ErrorCode::PathNotAllowed,
                        shown + " would point outside the allowed directories: " + policy.describeAllowed());
    }
    if (t.exists && S_ISDIR(t.st.st_mode)) throw errnoError(EISDIR, abs);
    // Made under a temporary name and renamed: an existing entry is replaced at once.
    std::string temp = t.name.size() <= 200 ? "." + t.name + ".hpc-link" : tempNameFor(t.name) + "-link";
    ::unlinkat(t.dir.get(), temp.c_str(), 0);
    if (::symlinkat(target.c_str(), t.dir.get(), temp.c_str()) != 0) throwErrno(abs);
    if (::renameat(t.dir.get(), temp.c_str(), t.dir.get(), t.name.c_str()) != 0) {
        int err = errno;
        ::unlinkat(t.dir.get(), temp.c_str(), 0);
        throw errnoError(err, abs);
    }
}

std::shared_ptr<Upload> openUpload(const FilePolicy& policy, const std::string& path, bool resume) {
    std::string abs = absolutePath(policy, path);
    Target t = openTarget(policy, abs, true);
    auto up = std::make_shared<Upload>();
    up->path = t.path;
    if (t.exists) {
        if (S_ISDIR(t.st.st_mode)) throw errnoError(EISDIR, t.path);
        if (!S_ISREG(t.st.st_mode))
            throw Error(ErrorCode::BadRequest, displayPath(t.path) + " exists and is not a regular file");
        up->existingMode = t.st.st_mode & 07777;
    }
    up->tempName = tempNameFor(t.name);
    if (resume) {
        UniqueFd fd(::openat(t.dir.get(), up->tempName.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
        struct stat st {};
        if (fd && ::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid()) {
            up->fd = std::move(fd);
            up->size = static_cast<std::uint64_t>(st.st_size);
        }
    }
    if (!up->fd) {
        if (::unlinkat(t.dir.get(), up->tempName.c_str(), 0) != 0 && errno != ENOENT)
            throw Error(ErrorCode::BadRequest,
                        displayPath(t.dirReal + "/" + up->tempName) +
                            " is in the way of the upload's temporary file: " + std::strerror(errno));
        up->fd = UniqueFd(
            ::openat(t.dir.get(), up->tempName.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (!up->fd) throwErrno(t.path);
    }
    up->dir = std::move(t.dir);
    up->name = t.name;
    return up;
}

bool hashSome(Upload& up, std::uint64_t maxBytes) {
    up.hashedUpTo = hashRange(up.fd.get(), up.sha, up.hashedUpTo, up.size, maxBytes, up.path);
    return up.hashedUpTo == up.size;
}

void appendUpload(Upload& up, const std::vector<std::string>& frames) {
    for (const auto& f : frames) {
        const char* data = f.data() + hpc::files::kFrameHeaderBytes;
        std::size_t n = f.size() - hpc::files::kFrameHeaderBytes;
        writeAll(up.fd.get(), data, n, up.size, up.path);
        up.sha.update(data, n);
        up.size += n;
        up.hashedUpTo = up.size;
    }
}

namespace {
/// Whether the temporary name still holds this upload's file: another upload
/// to the same target (the same file by another path, or another daemon on
/// a shared home) replaces it, and renaming by name would then put that
/// other file under the target.
bool stillOurs(const Upload& up) {
    struct stat mine {};
    struct stat named {};
    return ::fstat(up.fd.get(), &mine) == 0 &&
           ::fstatat(up.dir.get(), up.tempName.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 &&
           mine.st_dev == named.st_dev && mine.st_ino == named.st_ino;
}
}  // namespace

void commitUpload(Upload& up, const CommitOptions& o, mode_t umask) {
    if (o.size != up.size)
        throw Error(ErrorCode::BadRequest, displayPath(up.path) + ": size mismatch: " + std::to_string(up.size) +
                                               " bytes arrived, the agent sent " + std::to_string(o.size));
    if (o.sha256 != up.sha.hex())
        throw Error(ErrorCode::BadRequest,
                    displayPath(up.path) + ": checksum mismatch: the bytes that arrived are not the ones sent");
    // NFS reports a full quota at the latest here.
    if (::fsync(up.fd.get()) != 0) throwErrno(up.path);
    std::uint32_t mode = o.mode ? (o.preserve ? *o.mode : *o.mode & ~umask)
                                : up.existingMode.value_or(0666 & ~static_cast<std::uint32_t>(umask));
    mode &= ~static_cast<std::uint32_t>(S_ISUID | S_ISGID);  // never a set-id program from an agent
    if (::fchmod(up.fd.get(), mode) != 0) throwErrno(up.path);
    if (o.preserve && (o.mtime || o.atime)) {
        timespec times[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
        if (o.atime) times[0] = toTimespec(*o.atime);
        if (o.mtime) times[1] = toTimespec(*o.mtime);
        if (::futimens(up.fd.get(), times) != 0) throwErrno(up.path);
    }
    if (!stillOurs(up))
        throw Error(ErrorCode::Limit,
                    displayPath(up.path) + ": another upload to the same file replaced this one's temporary file");
    if (::renameat(up.dir.get(), up.tempName.c_str(), up.dir.get(), up.name.c_str()) != 0) throwErrno(up.path);
    ::fsync(up.dir.get());  // the rename itself, durable; best effort
}

void discardUpload(const Upload& up) {
    if (up.dir && stillOurs(up)) ::unlinkat(up.dir.get(), up.tempName.c_str(), 0);
}

std::shared_ptr<Download> openDownload(const FilePolicy& policy, const std::string& path, std::uint64_t prefix) {
    std::string abs = absolutePath(policy, path);
    auto d = std::make_shared<Download>();
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    d->fd = UniqueFd(::open(abs.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (!d->fd) throwErrno(abs);
    if (::fstat(d->fd.get(), &d->st) != 0) throwErrno(abs);
    if (S_ISDIR(d->st.st_mode))
        throw Error(ErrorCode::BadRequest, displayPath(abs) + " is a directory (copy it with -r)");
    if (!S_ISREG(d->st.st_mode)) throw Error(ErrorCode::BadRequest, displayPath(abs) + " is not a regular file");
    d->path = fdPath(d->fd.get(), abs);
    checkNotHidden(policy, d->path, abs);
    d->size = static_cast<std::uint64_t>(d->st.st_size);
    d->prefix = prefix <= d->size ? prefix : 0;
    return d;
}

bool hashPrefix(Download& d, std::uint64_t maxBytes) {
    d.hashedUpTo = hashRange(d.fd.get(), d.sha, d.hashedUpTo, d.prefix, maxBytes, d.path);
    return d.hashedUpTo == d.prefix;
}

std::vector<std::string> readDownload(Download& d, std::uint32_t channel, std::uint64_t maxBytes) {
    std::vector<std::string> frames;
    std::uint64_t left = std::min(maxBytes, d.size - d.offset);
    const std::string changed =
        displayPath(d.path) + " changed while it was being read; copy it again once it is stable";
    while (left > 0) {
        auto n = static_cast<std::size_t>(std::min<std::uint64_t>(left, hpc::files::kChunkBytes));
        std::string frame = hpc::files::makeDataFrame(channel, d.offset, n);
        char* data = frame.data() + hpc::files::kFrameHeaderBytes;
        if (!readAll(d.fd.get(), data, n, d.offset, d.path)) throw Error(ErrorCode::BadRequest, changed);
        d.sha.update(data, n);
        d.offset += n;
        left -= n;
        frames.push_back(std::move(frame));
    }
    if (d.offset == d.size) {
        struct stat now {};
        if (::fstat(d.fd.get(), &now) != 0) throwErrno(d.path);
        if (now.st_size != d.st.st_size || !sameTime(now.st_mtim, d.st.st_mtim) || !sameTime(now.st_ctim, d.st.st_ctim))
            throw Error(ErrorCode::BadRequest, changed);
    }
    return frames;
}

}  // namespace hpc::daemon::files
