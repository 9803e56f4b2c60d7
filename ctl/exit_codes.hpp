#pragma once
/// hpc-daemonctl's exit codes (documented in docs/ctl.md and --help), one
/// table from the closed error set.

#include "errors.hpp"

namespace hpc::ctl {

enum ExitCode : int {
    kExitOk = 0,
    kExitFailure = 1,      ///< anything not listed below
    kExitUsage = 2,        ///< bad flags or arguments
    kExitNotRunning = 3,   ///< the daemon is not running
    kExitNotFound = 4,     ///< no such profile or daemon
    kExitUnreachable = 5,  ///< the platform cannot be reached
    kExitAuthFailed = 6,   ///< the platform refused the code, token or key
};

inline int exitCodeFor(ErrorCode code) {
    switch (code) {
        case ErrorCode::BadRequest:
            return kExitUsage;
        case ErrorCode::NotFound:
            return kExitNotFound;
        case ErrorCode::Unavailable:
        case ErrorCode::Timeout:
            return kExitUnreachable;
        case ErrorCode::Unauthorized:
        case ErrorCode::Limit:
            return kExitAuthFailed;
        default:
            return kExitFailure;
    }
}

/// The help text's exit code section.
inline constexpr const char* kExitCodeHelp =
    "Exit codes: 0 ok, 1 other failure, 2 usage, 3 daemon not running, 4 profile or daemon not found,\n"
    "5 platform unreachable, 6 authentication failed.";

}  // namespace hpc::ctl
