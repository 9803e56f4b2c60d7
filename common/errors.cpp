#include "errors.hpp"

#include <array>

namespace hpc {
namespace {

struct ErrorRow {
    ErrorCode code;
    std::string_view protocol;
    std::string_view dbus;
    int http;  ///< the HTTP status the relay answers with
};

constexpr std::array kErrorTable{
    ErrorRow{ErrorCode::BadRequest, "BAD_REQUEST", "org.tiptree.HpcDaemon.Error.BadRequest", 400},
    ErrorRow{ErrorCode::UnknownType, "UNKNOWN_TYPE", "org.tiptree.HpcDaemon.Error.UnknownType", 400},
    ErrorRow{ErrorCode::NotFound, "NOT_FOUND", "org.tiptree.HpcDaemon.Error.NotFound", 404},
    ErrorRow{ErrorCode::PathNotAllowed, "PATH_NOT_ALLOWED", "org.tiptree.HpcDaemon.Error.PathNotAllowed", 403},
    ErrorRow{ErrorCode::NotOwner, "NOT_OWNER", "org.tiptree.HpcDaemon.Error.NotOwner", 403},
    ErrorRow{ErrorCode::Limit, "LIMIT", "org.tiptree.HpcDaemon.Error.Limit", 429},
    ErrorRow{ErrorCode::Timeout, "TIMEOUT", "org.tiptree.HpcDaemon.Error.Timeout", 504},
    ErrorRow{ErrorCode::Unavailable, "UNAVAILABLE", "org.tiptree.HpcDaemon.Error.Unavailable", 503},
    ErrorRow{ErrorCode::Unauthorized, "UNAUTHORIZED", "org.tiptree.HpcDaemon.Error.Unauthorized", 401},
    ErrorRow{ErrorCode::StorageFull, "STORAGE_FULL", "org.tiptree.HpcDaemon.Error.StorageFull", 507},
    ErrorRow{ErrorCode::Internal, "INTERNAL", "org.tiptree.HpcDaemon.Error.Internal", 500},
};

const ErrorRow& row(ErrorCode code) {
    for (const auto& r : kErrorTable)
        if (r.code == code) return r;
    return kErrorTable.back();
}

}  // namespace

std::string_view toProtocolCode(ErrorCode code) { return row(code).protocol; }
std::string_view toDbusName(ErrorCode code) { return row(code).dbus; }
int toHttpStatus(ErrorCode code) { return row(code).http; }

std::optional<ErrorCode> errorCodeFromProtocol(std::string_view code) {
    for (const auto& r : kErrorTable)
        if (r.protocol == code) return r.code;
    return std::nullopt;
}

std::optional<ErrorCode> errorCodeFromDbusName(std::string_view name) {
    for (const auto& r : kErrorTable)
        if (r.dbus == name) return r.code;
    return std::nullopt;
}

}  // namespace hpc
