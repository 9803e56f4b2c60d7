#pragma once
/// The closed error set shared by every part of hpc-daemon.
///
/// One enum, one table: the protocol code (wire), the D-Bus error name and the
/// HTTP status. Anything that is not one of these becomes Internal at
/// the boundary, with the detail logged, never sent.

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace hpc {

enum class ErrorCode {
    BadRequest,
    UnknownType,
    NotFound,
    PathNotAllowed,
    NotOwner,
    Limit,
    Timeout,
    Unavailable,
    Unauthorized,
    StorageFull,
    Internal,
};

/// The wire code, e.g. "PATH_NOT_ALLOWED".
std::string_view toProtocolCode(ErrorCode code);
/// The D-Bus error name, e.g. "org.tiptree.HpcDaemon.Error.PathNotAllowed".
std::string_view toDbusName(ErrorCode code);
/// The HTTP status the relay answers an error with, e.g. 403 for PathNotAllowed.
int toHttpStatus(ErrorCode code);
/// Parses a wire code; nullopt when it is not in the closed set.
std::optional<ErrorCode> errorCodeFromProtocol(std::string_view code);
/// Parses a D-Bus error name; nullopt when it is not one of ours.
std::optional<ErrorCode> errorCodeFromDbusName(std::string_view name);

/// An error with a code from the closed set and a message fit to show a user.
class Error : public std::runtime_error {
public:
    Error(ErrorCode code, const std::string& message) : std::runtime_error(message), m_code(code) {}
    ErrorCode code() const noexcept { return m_code; }

private:
    ErrorCode m_code;
};

}  // namespace hpc
