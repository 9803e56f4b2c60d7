#pragma once
// One step of file work on a JobDirIo worker, for FileService's files: the
// step's value, or the error it threw with its code kept (JobDirIo reports
// only a message), or TIMEOUT when it did not come back in time.

#include "errors.hpp"
#include "jobs/job_dir_io.hpp"

#include <optional>
#include <string>

namespace hpc::daemon {

/// A worker step's outcome: its value, or the error it threw (or TIMEOUT
/// when it did not come back within the deadline).
template <class T>
struct Step {
    std::optional<T> value;
    ErrorCode code = ErrorCode::Internal;
    std::string message;
};

/// Runs `work` (it must touch only what it captured) and gives `done` its
/// Step on the loop.
template <class T, class Work, class Done>
void runStep(JobDirIo& io, std::string what, Work work, Done done) {
    io.run<Step<T>>(
        std::move(what),
        [work = std::move(work)]() -> Step<T> {
            Step<T> s;
            try {
                s.value = work();
            } catch (const Error& e) {
                s.code = e.code();
                s.message = e.what();
            } catch (const std::exception& e) {
                s.code = ErrorCode::Internal;
                s.message = e.what();
            }
            return s;
        },
        [done = std::move(done)](std::optional<Step<T>> s, const std::string& error) mutable {
            if (!s) {
                Step<T> timedOut;
                timedOut.code = ErrorCode::Timeout;
                timedOut.message = error;
                return done(std::move(timedOut));
            }
            done(std::move(*s));
        });
}

}  // namespace hpc::daemon
