#pragma once
/// A job's directory, `<job_workdir>/.hpc-daemon/jobs/<job_id>/`: the
/// agent's script, the wrapper that runs it and records its exit status in
/// `exit_status` (so completion is known even where the scheduler has
/// forgotten the job), and the job's `stdout` and `stderr`.

#include "job_store.hpp"

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

/// `text` as one single-quoted shell word.
std::string shellQuote(std::string_view text);

}  // namespace hpc::daemon
