#include "file_copy.hpp"

#include "backoff.hpp"
#include "fd.hpp"
#include "util.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <thread>

using Clock = std::chrono::steady_clock;
using hpc::files::displayPath;
using hpc::files::toSeconds;
using hpc::files::toTimespec;

namespace hpc::agent {
namespace {

std::string baseName(std::string p) {
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    auto slash = p.rfind('/');
    return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string parentOf(const std::string& p) {
    auto slash = p.rfind('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : p.substr(0, slash);
}

std::string join(const std::string& dir, const std::string& name) {
    if (dir.empty()) return name;
    return dir.back() == '/' ? dir + name : dir + "/" + name;
}

/// A name a daemon sends in a listing must stay one entry of the directory
/// it was listed in (no "..", no "/"): else a daemon could write anywhere.
bool safeName(const std::string& n) {
    return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos && n.find('\0') == std::string::npos;
}

Error localError(const std::string& path, const std::string& what) {
    int err = errno;
    ErrorCode code = err == ENOENT || err == ENOTDIR  ? ErrorCode::NotFound
                     : err == EACCES || err == EPERM  ? ErrorCode::PathNotAllowed
                     : err == ENOSPC || err == EDQUOT ? ErrorCode::StorageFull
                     : err == EISDIR || err == EEXIST ? ErrorCode::BadRequest
                                                      : ErrorCode::Internal;
    return Error(code, displayPath(path) + ": " + what + ": " + std::strerror(err));
}

/// A directory or symlink made.
CopyItem made(std::string source, std::string target, std::string type) {
    CopyItem item;
    item.source = std::move(source);
    item.target = std::move(target);
    item.type = std::move(type);
    return item;
}

/// A file that arrived.
CopyItem copied(std::string source, std::string target, const TransferResult& r, Clock::time_point t0) {
    CopyItem item;
    item.source = std::move(source);
    item.target = std::move(target);
    item.type = "file";
    item.bytes = r.size;
    item.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    item.sha256 = r.sha256;
    item.resumedFrom = r.resumedFrom;
    return item;
}

std::vector<std::string> localEntries(const std::string& dir) {
    DIR* d = ::opendir(dir.c_str());
    if (!d) throw localError(dir, "cannot list");
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(std::move(n));
    }
    ::closedir(d);
    std::sort(names.begin(), names.end());
    return names;
}

}  // namespace

CopyEndpoint parseEndpoint(const std::string& arg) {
    auto colon = arg.find(':');
    if (colon == std::string::npos || colon == 0) return {"", arg};
    std::string id = arg.substr(0, colon);
    if (id.find('/') != std::string::npos || !isValidDaemonId(id)) return {"", arg};
    std::string path = arg.substr(colon + 1);
    return {id, path.empty() ? "." : path};
}

Copier::Copier(Connect connect, CopyOptions options, CopyCallbacks callbacks)
    : m_connect(std::move(connect)), m_options(options), m_callbacks(std::move(callbacks)) {
    m_umask = ::umask(0);
    ::umask(m_umask);
}

bool Copier::ok() const {
    return std::all_of(m_items.begin(), m_items.end(), [](const CopyItem& i) { return i.ok; });
}

AgentClient& Copier::client() {
    if (!m_client) {
        m_client = m_connect();
        m_connectedOnce = true;
    }
    return *m_client;
}

FileClient Copier::files(AgentClient& c, const std::string& daemonId) {
    FileClient f(c, daemonId);
    f.setInterrupted(m_callbacks.interrupted);
    return f;
}

template <class T>
T Copier::withRetries(const std::function<T(AgentClient&, int attempt)>& step, int retries) {
    Backoff backoff(m_options.retryBase, m_options.retryCap);
    for (int attempt = 0;; ++attempt) {
        try {
            return step(client(), attempt);
        } catch (const Error& e) {
            bool interrupted = m_callbacks.interrupted && m_callbacks.interrupted();
            // A first connection that fails is an error at once: a wrong URL is not a blip.
            // Unavailable: the link broke, or the daemon is away; Limit: it is busy. Both pass.
            bool passes = e.code() == ErrorCode::Unavailable || e.code() == ErrorCode::Limit;
            if (!passes || attempt >= retries || interrupted || !m_connectedOnce) throw;
            m_client.reset();
            auto delay = backoff.next();
            if (m_callbacks.retrying) m_callbacks.retrying(e.what(), delay);
            std::this_thread::sleep_for(delay);
        }
    }
}

void Copier::record(CopyItem item) {
    if (m_callbacks.done) m_callbacks.done(item);
    m_items.push_back(std::move(item));
}

void Copier::fail(const std::string& source, const std::string& target, const std::string& type, const Error& e) {
    CopyItem item;
    item.source = source;
    item.target = target;
    item.type = type;
    item.ok = false;
    item.code = e.code();
    item.error = e.what();
    record(std::move(item));
}

Progress Copier::progressFor(const std::string& name) const {
    if (!m_callbacks.progress) return {};
    return [cb = m_callbacks.progress, name](std::uint64_t done, std::optional<std::uint64_t> total) {
        cb(name, done, total);
    };
}

std::optional<RemoteEntry> Copier::remoteStat(const std::string& daemonId, const std::string& path) {
    return withRetries<std::optional<RemoteEntry>>(
        [&](AgentClient& c, int) -> std::optional<RemoteEntry> {
            try {
                return files(c, daemonId).stat(path);
            } catch (const Error& e) {
                if (e.code() == ErrorCode::NotFound) return std::nullopt;
                throw;
            }
        },
        m_options.retries);
}

void Copier::copy(const std::vector<CopyEndpoint>& sources, const CopyEndpoint& target) {
    if (sources.empty()) throw Error(ErrorCode::BadRequest, "nothing to copy");
    const bool up = target.remote();
    for (const auto& s : sources) {
        if (s.remote() && up)
            throw Error(ErrorCode::BadRequest,
                        "copying from one daemon to another is not supported: copy through here");
        if (!s.remote() && !up)
            throw Error(ErrorCode::BadRequest, "neither side is on a daemon (DAEMON:PATH): use cp for local copies");
    }
    const bool needDir = sources.size() > 1 || target.path.back() == '/';
    if (up) {
        auto entry = remoteStat(target.daemonId, target.path);
        bool intoDir = entry && entry->type == "dir";
        if (needDir && !intoDir)
            throw Error(ErrorCode::BadRequest,
                        target.daemonId + ":" + displayPath(target.path) + " is not a directory on the daemon");
        for (const auto& s : sources) {
            if (s.path == "-") {
                if (intoDir)
                    fail("-", target.daemonId + ":" + target.path, "file",
                         Error(ErrorCode::BadRequest,
                               "standard input needs a file name as its target, not a directory"));
                else
                    uploadStdin(target.daemonId, target.path);
                continue;
            }
            upload(s.path, target.daemonId, intoDir ? join(target.path, baseName(s.path)) : target.path, true);
        }
        return;
    }
    if (target.path == "-") {
        if (sources.size() != 1) throw Error(ErrorCode::BadRequest, "standard output takes one file");
        downloadStdout(sources[0].daemonId, sources[0].path);
        return;
    }
    struct stat st {};
    bool intoDir = ::stat(target.path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    if (needDir && !intoDir) throw Error(ErrorCode::BadRequest, displayPath(target.path) + " is not a directory");
    for (const auto& s : sources) {
        std::string shown = s.daemonId + ":" + s.path;
        std::optional<RemoteEntry> entry;
        try {
            entry = remoteStat(s.daemonId, s.path);
            if (!entry) throw Error(ErrorCode::NotFound, shown + ": no such file or directory");
        } catch (const Error& e) {
            if (e.code() == ErrorCode::Unauthorized) throw;
            fail(shown, target.path, "file", e);
            continue;
        }
        std::string name = baseName(s.path);
        if (!safeName(name)) name = baseName(entry->path);
        download(s.daemonId, *entry, entry->path, intoDir ? join(target.path, name) : target.path);
    }
}

// ---- to a daemon ----

void Copier::upload(const std::string& local, const std::string& daemonId, const std::string& remote, bool topLevel) {
    const std::string shownTarget = daemonId + ":" + remote;
    struct stat st {};
    // Symlinks named on the command line are followed, as cp and scp do;
    // inside a tree they are copied as symlinks.
    if ((topLevel ? ::stat(local.c_str(), &st) : ::lstat(local.c_str(), &st)) != 0)
        return fail(local, shownTarget, "file", localError(local, "cannot read"));
    if (S_ISREG(st.st_mode)) return uploadFile(local, daemonId, remote);
    try {
        if (S_ISDIR(st.st_mode)) {
            if (!m_options.recursive)
                throw Error(ErrorCode::BadRequest, displayPath(local) + " is a directory (copy it with -r)");
            // Owner rwx while its content is copied in, whatever its mode.
            auto mode = (st.st_mode & 07777) | 0700;
            withRetries<bool>([&](AgentClient& c, int) { return files(c, daemonId).mkdir(remote, mode); },
                              m_options.retries);
            record(made(local, shownTarget, "dir"));
            for (const auto& name : localEntries(local)) upload(join(local, name), daemonId, join(remote, name), false);
            if (m_options.preserve) {
                // Its exact mode and times once its content is in (adding to it changed them).
                withRetries<bool>(
                    [&](AgentClient& c, int) {
                        files(c, daemonId)
                            .setattr(remote, st.st_mode & 07777, toSeconds(st.st_atim), toSeconds(st.st_mtim));
                        return true;
                    },
                    m_options.retries);
            }
        } else if (S_ISLNK(st.st_mode)) {
            char buf[PATH_MAX + 1];
            ssize_t n = ::readlink(local.c_str(), buf, PATH_MAX);
            if (n <= 0) throw localError(local, "cannot read the symlink");
            std::string target(buf, static_cast<std::size_t>(n));
            withRetries<bool>(
                [&](AgentClient& c, int) {
                    files(c, daemonId).symlink(remote, target);
                    return true;
                },
                m_options.retries);
            record(made(local, shownTarget, "symlink"));
        } else {
            throw Error(ErrorCode::BadRequest,
                        displayPath(local) + " is not a regular file, a directory or a symlink: skipped");
        }
    } catch (const Error& e) {
        if (e.code() == ErrorCode::Unauthorized) throw;
        fail(local, shownTarget, S_ISDIR(st.st_mode) ? "dir" : S_ISLNK(st.st_mode) ? "symlink" : "file", e);
    }
}

void Copier::uploadFile(const std::string& local, const std::string& daemonId, const std::string& remote) {
    const std::string shownTarget = daemonId + ":" + remote;
    auto t0 = Clock::now();
    try {
        UniqueFd fd(::open(local.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
        struct stat st {};
        if (!fd || ::fstat(fd.get(), &st) != 0) throw localError(local, "cannot read");
        UploadSource src{fd.get(), true, static_cast<std::uint64_t>(st.st_size), nullptr};
        src.changed = [fd = fd.get(), st] {
            struct stat now {};
            return ::fstat(fd, &now) != 0 || now.st_size != st.st_size || now.st_mtim.tv_sec != st.st_mtim.tv_sec ||
                   now.st_mtim.tv_nsec != st.st_mtim.tv_nsec || now.st_ctim.tv_sec != st.st_ctim.tv_sec ||
                   now.st_ctim.tv_nsec != st.st_ctim.tv_nsec;
        };
        hpc::files::PutSpec spec;
        spec.path = remote;
        spec.size = static_cast<std::int64_t>(st.st_size);
        spec.mode = st.st_mode & 07777;
        spec.preserve = m_options.preserve;
        if (m_options.preserve) {
            spec.mtime = toSeconds(st.st_mtim);
            spec.atime = toSeconds(st.st_atim);
        }
        spec.resume = m_options.resume;
        spec.window = m_options.window;
        auto r = withRetries<TransferResult>(
            [&](AgentClient& c, int attempt) {
                auto s = spec;
                s.resume = s.resume || attempt > 0;  // after a broken link, go on from what arrived
                return files(c, daemonId).put(s, src, progressFor(local));
            },
            m_options.retries);
        record(copied(local, daemonId + ":" + r.path, r, t0));
    } catch (const Error& e) {
        if (e.code() == ErrorCode::Unauthorized) throw;
        fail(local, shownTarget, "file", e);
    }
}

void Copier::uploadStdin(const std::string& daemonId, const std::string& remote) {
    auto t0 = Clock::now();
    try {
        UploadSource src{STDIN_FILENO, false, std::nullopt, nullptr};
        hpc::files::PutSpec spec;
        spec.path = remote;
        spec.window = m_options.window;
        // What was read from a pipe cannot be read again: no retry.
        auto r = withRetries<TransferResult>(
            [&](AgentClient& c, int) { return files(c, daemonId).put(spec, src, progressFor("(stdin)")); }, 0);
        record(copied("-", daemonId + ":" + r.path, r, t0));
    } catch (const Error& e) {
        if (e.code() == ErrorCode::Unauthorized) throw;
        fail("-", daemonId + ":" + remote, "file", e);
    }
}

// ---- from a daemon ----

void Copier::download(const std::string& daemonId, const RemoteEntry& entry, const std::string& remote,
                      const std::string& local) {
    const std::string shown = daemonId + ":" + remote;
    if (entry.type == "file") return downloadFile(daemonId, remote, local);
    try {
        if (entry.type == "symlink") {
            struct stat st {};
            if (::lstat(local.c_str(), &st) == 0) {
                if (S_ISDIR(st.st_mode)) throw Error(ErrorCode::BadRequest, displayPath(local) + " is a directory");
                if (::unlink(local.c_str()) != 0) throw localError(local, "cannot replace");
            }
            if (::symlink(entry.target.c_str(), local.c_str()) != 0)
                throw localError(local, "cannot create the symlink");
            return record(made(shown, local, "symlink"));
        }
        if (entry.type != "dir")
            throw Error(ErrorCode::BadRequest, shown + " is not a regular file, a directory or a symlink: skipped");
        if (!m_options.recursive) throw Error(ErrorCode::BadRequest, shown + " is a directory (copy it with -r)");
        if (::mkdir(local.c_str(), 0700) != 0) {
            struct stat st {};
            // Never into a symlink in its place: the tree stays below the target.
            if (errno != EEXIST || ::lstat(local.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
                throw localError(local, "cannot create the directory");
        }
        auto entries = withRetries<std::vector<RemoteEntry>>(
            [&](AgentClient& c, int) { return files(c, daemonId).list(remote); }, m_options.retries);
        record(made(shown, local, "dir"));
        for (const auto& e : entries) {
            if (!safeName(e.name)) {
                fail(shown + "/" + displayPath(e.name), local, e.type,
                     Error(ErrorCode::BadRequest, "the daemon listed an unsafe name: skipped"));
                continue;
            }
            download(daemonId, e, join(remote, e.name), join(local, e.name));
        }
        // Its mode (and times) once its content is in.
        mode_t mode =
            (m_options.preserve ? entry.mode : entry.mode & ~m_umask) & ~static_cast<mode_t>(S_ISUID | S_ISGID);
        if (::chmod(local.c_str(), mode) != 0) throw localError(local, "cannot set its mode");
        if (m_options.preserve) {
            timespec times[2] = {toTimespec(entry.atime), toTimespec(entry.mtime)};
            ::utimensat(AT_FDCWD, local.c_str(), times, AT_SYMLINK_NOFOLLOW);
        }
    } catch (const Error& e) {
        if (e.code() == ErrorCode::Unauthorized) throw;
        fail(shown, local, entry.type, e);
    }
}

void Copier::downloadFile(const std::string& daemonId, const std::string& remote, const std::string& local) {
    const std::string shown = daemonId + ":" + remote;
    const std::string temp = join(parentOf(local), hpc::files::tempNameFor(baseName(local)));
    auto t0 = Clock::now();
    DownloadSink sink;
    UniqueFd fd;
    try {
        struct stat st {};
        if (::stat(local.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
            throw Error(ErrorCode::BadRequest, displayPath(local) + " is a directory");
        if (m_options.resume) {
            fd = UniqueFd(::open(temp.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
            if (fd && ::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) &&
                hashFilePrefix(fd.get(), static_cast<std::uint64_t>(st.st_size), sink.haveSha256)) {
                sink.have = static_cast<std::uint64_t>(st.st_size);
            } else {
                fd.reset();
                sink.haveSha256.reset();
            }
        }
        if (!fd) {
            if (::unlink(temp.c_str()) != 0 && errno != ENOENT) throw localError(temp, "cannot replace");
            fd = UniqueFd(::open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
            if (!fd) throw localError(temp, "cannot create");
        }
        sink.fd = fd.get();
        hpc::files::GetSpec spec;
        spec.path = remote;
        spec.window = m_options.window;
        auto r = withRetries<TransferResult>(
            [&](AgentClient& c, int) { return files(c, daemonId).get(spec, sink, progressFor(shown)); },
            m_options.retries);
        if (::fsync(fd.get()) != 0) throw localError(temp, "cannot write");
        mode_t mode =
            (m_options.preserve ? r.remote.mode : r.remote.mode & ~m_umask) & ~static_cast<mode_t>(S_ISUID | S_ISGID);
        if (::fchmod(fd.get(), mode) != 0) throw localError(temp, "cannot set its mode");
        if (m_options.preserve) {
            timespec times[2] = {toTimespec(r.remote.atime), toTimespec(r.remote.mtime)};
            if (::futimens(fd.get(), times) != 0) throw localError(temp, "cannot set its times");
        }
        if (::rename(temp.c_str(), local.c_str()) != 0)
            throw localError(local, "cannot rename the finished file into place");
        record(copied(shown, local, r, t0));
    } catch (const Error& e) {
        if (e.code() == ErrorCode::Unauthorized) throw;
        bool interrupted = m_callbacks.interrupted && m_callbacks.interrupted();
        bool keep = fd && sink.have > 0 && !interrupted &&
                    (e.code() == ErrorCode::Unavailable || e.code() == ErrorCode::Timeout);
        if (fd && !keep) ::unlink(temp.c_str());
        fail(shown, local, "file",
             keep ? Error(e.code(), std::string(e.what()) + "; the " + std::to_string(sink.have) +
                                        " bytes received are kept: run again with --resume to go on")
                  : e);
    }
}

void Copier::downloadStdout(const std::string& daemonId, const std::string& remote) {
    const std::string shown = daemonId + ":" + remote;
    auto t0 = Clock::now();
    try {
        DownloadSink sink;
        sink.fd = STDOUT_FILENO;
        sink.seekable = false;
        hpc::files::GetSpec spec;
        spec.path = remote;
        spec.window = m_options.window;
        // A retry goes on after the bytes already written (the daemon checks them).
        auto r = withRetries<TransferResult>(
            [&](AgentClient& c, int) { return files(c, daemonId).get(spec, sink, progressFor(shown)); },
            m_options.retries);
        record(copied(shown, "-", r, t0));
    } catch (const Error& e) {
        if (e.code() == ErrorCode::Unauthorized) throw;
        fail(shown, "-", "file", e);
    }
}

}  // namespace hpc::agent
