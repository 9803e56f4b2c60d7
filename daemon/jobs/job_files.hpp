#pragma once
/// A job's directory, `<job_workdir>/.hpc-daemon/jobs/<job_id>/`: the
/// agent's script, the wrapper that runs it and records its exit status in
/// `exit_status` (so completion is known even where the scheduler has
/// forgotten the job), and the job's `stdout` and `stderr`.

#include "job_store.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace hpc::daemon {

/// Creates the job's directory (0700) with `script` and the wrapper. For
/// SLURM the script's leading `#SBATCH` lines are copied into the wrapper
/// (sbatch reads them only from the file it is given); local wrappers write
/// their pid to `pid` and send their own output to the job's files. Throws
/// std::system_error (its code the errno: ENOSPC, EDQUOT, …).
void writeJobFiles(const JobRecord& job, std::string_view script, bool slurm);

/// Settles a job from its exit-status file: COMPLETED (0) or FAILED with the
/// code; without the file, CANCELLED when a cancel was asked for, else FAILED
/// with `noFileReason`. Returns whether the file was there. Reads the job
/// directory: call it off the loop (JobDirIo).
bool settleFromExitFile(JobRecord& job, const std::string& noFileReason);

/// The last `maxBytes` of a file ("" when it cannot be read, or is not a
/// regular file: a symlink or FIFO the job made is not followed).
std::string readTail(const std::string& path, std::size_t maxBytes);

/// Up to the last `maxBytes` of a regular file the job may have written
/// ("" when missing or not a regular file; symlinks are not followed);
/// `startOut` gets the offset read from.
std::string readJobFile(const std::string& path, std::size_t maxBytes, std::size_t* startOut = nullptr);

/// Part of a job's output file, read by readJobOutput.
struct JobOutputSlice {
    enum class File {
        Missing,     ///< not there (yet): reads as empty
        Regular,     ///< the job's own regular file
        NotRegular,  ///< a symlink, FIFO, directory… in its place: never read
    } file = File::Missing;
    std::uint64_t size = 0;  ///< the file's size when it was read
    std::string data;        ///< from the offset asked, at most maxBytes
};

/// Up to `maxBytes` of the file `name` in the job's directory `dir`, from
/// byte `offset`. Neither the directory nor the file is followed through a
/// symlink (one in their place is NotRegular), and only a regular file is
/// read. Throws std::system_error for any other failure (EACCES, EIO…).
/// Blocks on the file system: call it off the loop (JobDirIo).
JobOutputSlice readJobOutput(const std::string& dir, const std::string& name, std::uint64_t offset,
                             std::size_t maxBytes);

/// What removing a pruned job's directory did.
struct JobDirRemoval {
    bool removed = false;    ///< the directory is gone (removed by this call)
    std::int64_t bytes = 0;  ///< the size of the files removed
    std::string error;       ///< why not all of it went (refused, already gone, not removable)
};

/// Removes the directory of a job whose row was pruned. `dir` is taken
/// exactly as recorded and must be absolute, without `.`, `..` or empty
/// components, and end in `/.hpc-daemon/jobs/<jobId>`; anything else is
/// refused with nothing touched. From the job directory's workdir (which may
/// be a symlink the user chose) `.hpc-daemon` and `jobs` are opened with
/// O_NOFOLLOW, and the tree below is removed with openat/unlinkat under those
/// descriptors: a symlink in it is removed, never followed, a path swapped
/// meanwhile cannot lead out, nothing on another file system (a mount inside)
/// is entered, and at most 64 levels are descended. Never throws. Blocks on
/// the file system: call it off the loop (JobDirIo).
JobDirRemoval removeJobDir(const std::string& dir, const std::string& jobId);

/// `text` as one single-quoted shell word.
std::string shellQuote(std::string_view text);

}  // namespace hpc::daemon
