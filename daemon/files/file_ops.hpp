#pragma once
/// The file work behind `file.*` (docs/protocol.md §4.7), as blocking calls
/// for JobDirIo's workers: never called on the daemon's loop (user
/// directories are on NFS or Lustre).
///
/// Writes are confined without trusting a path twice: the directory that is
/// to hold the entry is opened once, where that descriptor really is is read
/// back from the kernel (/proc/self/fd) and checked against the allowed
/// directories, and everything after (temporary file, rename, mode, times)
/// is done relative to it. Reads go wherever the user can read, except the
/// daemon's own state and the user's runtime directory. Every failure throws
/// hpc::Error with a code from the closed set and a message naming the path.

#include "fd.hpp"
#include "file_wire.hpp"

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hpc::daemon::files {

/// Where file requests may read and write.
struct FilePolicy {
    std::vector<std::filesystem::path> allowed;  ///< resolved; empty: writes anywhere
    std::vector<std::filesystem::path> hidden;   ///< never read nor written (state, runtime dirs)
    std::filesystem::path base;                  ///< where relative paths start
    std::string home;                            ///< for "~"
    mode_t umask = 022;

    /// "a, b" for messages.
    std::string describeAllowed() const;
};

/// The daemon's umask, read without changing it (/proc/self/status).
mode_t currentUmask();

/// The directory part of an absolute path ("/" for "/x").
std::string parentOf(const std::string& path);

/// The absolute path a request's path names ("~", "~/x", relative to
/// policy.base). Lexical: nothing is resolved yet.
std::string absolutePath(const FilePolicy& policy, const std::string& requested);

struct FileInfo {
    std::string type;  ///< "file", "dir", "symlink", "other"
    std::uint64_t size = 0;
    std::uint32_t mode = 0;  ///< st_mode & 07777
    double mtime = 0, atime = 0;
    std::string target;  ///< a symlink's content (listings)
    boost::json::object toJson() const;
};
FileInfo toInfo(const struct stat& st);

/// file.stat: follows symlinks. Returns the resolved path in `resolved`.
FileInfo statPath(const FilePolicy& policy, const std::string& path, std::string& resolved);

struct ListEntry {
    std::string name;
    FileInfo info;
};
struct Listing {
    std::string path;  ///< resolved
    std::vector<ListEntry> entries;
    bool more = false;
};
/// file.list: entries sorted by name, after `after`, at most `limit`.
Listing listDir(const FilePolicy& policy, const std::string& path, const std::string& after, std::size_t limit);

/// file.mkdir: returns whether it was created (false: it existed).
bool makeDir(const FilePolicy& policy, const std::string& path, std::uint32_t mode, std::string& resolved);
/// file.setattr: sets a directory's mode (set-user-id dropped) and times,
/// not following a symlink. Returns the resolved path in `resolved`.
void setDirAttributes(const FilePolicy& policy, const std::string& path, std::optional<std::uint32_t> mode,
                      std::optional<double> atime, std::optional<double> mtime, std::string& resolved);
/// file.symlink: creates or replaces a symlink; the target must resolve
/// inside the allowed directories when there are any.
void makeSymlink(const FilePolicy& policy, const std::string& path, const std::string& target, std::string& resolved);

/// An upload's temporary file, open in its checked directory.
struct Upload {
    UniqueFd dir;
    std::string name;      ///< the target's name in dir
    std::string tempName;  ///< the temporary file's name in dir
    std::string path;      ///< the target, resolved, for answers and logs
    UniqueFd fd;
    std::uint64_t size = 0;  ///< bytes in the temporary file
    hpc::files::Sha256 sha;  ///< of those bytes, once hashed (hashedUpTo == size)
    std::uint64_t hashedUpTo = 0;
    std::optional<std::uint32_t> existingMode;  ///< the replaced file's
};

/// Checks the target and opens its temporary file: a new one, or with
/// `resume` the one an earlier upload left (its bytes still to be hashed:
/// hashSome). Throws hpc::Error.
std::shared_ptr<Upload> openUpload(const FilePolicy& policy, const std::string& path, bool resume);
/// Hashes up to `maxBytes` more of what the file already holds; returns
/// true when all of it is hashed.
bool hashSome(Upload& upload, std::uint64_t maxBytes);
/// Appends data frames' bytes, in order. Throws hpc::Error (StorageFull
/// for ENOSPC and EDQUOT).
void appendUpload(Upload& upload, const std::vector<std::string>& frames);

struct CommitOptions {
    std::uint64_t size = 0;
    std::string sha256;
    std::optional<std::uint32_t> mode;
    bool preserve = false;
    std::optional<double> mtime, atime;
};
/// Verifies size and checksum, syncs, sets mode and times, renames the
/// temporary file over the target. Throws hpc::Error (BadRequest for a
/// mismatch); the caller removes the temporary file then.
void commitUpload(Upload& upload, const CommitOptions& options, mode_t umask);
/// Removes the temporary file (best effort).
void discardUpload(const Upload& upload);

/// A download's source, open.
struct Download {
    UniqueFd fd;
    std::string path;  ///< resolved
    struct stat st {};
    std::uint64_t size = 0;
    std::uint64_t offset = 0;  ///< the next byte to send
    std::uint64_t prefix = 0;  ///< resume: bytes the agent says it has
    hpc::files::Sha256 sha;    ///< of the bytes before `offset` (and of the prefix while checking it)
    std::uint64_t hashedUpTo = 0;
};

/// Opens a regular file for file.get. Throws hpc::Error.
std::shared_ptr<Download> openDownload(const FilePolicy& policy, const std::string& path, std::uint64_t prefix);
/// Resume: hashes up to `maxBytes` more of the prefix; true when done.
bool hashPrefix(Download& download, std::uint64_t maxBytes);
/// Reads up to `maxBytes` from download.offset into ready data frames of
/// `channel` (each at most kChunkBytes), advancing the offset and the
/// hash. At the end of the file, checks that it did not change since it
/// was opened. Throws hpc::Error.
std::vector<std::string> readDownload(Download& download, std::uint32_t channel, std::uint64_t maxBytes);

}  // namespace hpc::daemon::files
