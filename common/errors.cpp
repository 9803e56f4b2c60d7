#include "errors.hpp"

#include <array>

namespace hpc {
namespace {

struct ErrorRow {
    ErrorCode code;
    std::string_view protocol;
    std::string_view dbus;
};

constexpr std::array kErrorTable{
    ErrorRow{ErrorCode::BadRequest, "BAD_REQUEST", "org.tiptree.HpcDaemon.Error.BadRequest"},
    ErrorRow{ErrorCode::UnknownType, "UNKNOWN_TYPE", "org.tiptree.HpcDaemon.Error.UnknownType"},
    ErrorRow{ErrorCode::NotFound, "NOT_FOUND", "org.tiptree.HpcDaemon.Error.NotFound"},
    ErrorRow{ErrorCode::PathNotAllowed, "PATH_NOT_ALLOWED", "org.tiptree.HpcDaemon.Error.PathNotAllowed"},
    ErrorRow{ErrorCode::NotOwner, "NOT_OWNER", "org.tiptree.HpcDaemon.Error.NotOwner"},
    ErrorRow{ErrorCode::Limit, "LIMIT", "org.tiptree.HpcDaemon.Error.Limit"},
    ErrorRow{ErrorCode::Timeout, "TIMEOUT", "org.tiptree.HpcDaemon.Error.Timeout"},
    ErrorRow{ErrorCode::Unavailable, "UNAVAILABLE", "org.tiptree.HpcDaemon.Error.Unavailable"},
    ErrorRow{ErrorCode::Unauthorized, "UNAUTHORIZED", "org.tiptree.HpcDaemon.Error.Unauthorized"},
    ErrorRow{ErrorCode::StorageFull, "STORAGE_FULL", "org.tiptree.HpcDaemon.Error.StorageFull"},
    ErrorRow{ErrorCode::Internal, "INTERNAL", "org.tiptree.HpcDaemon.Error.Internal"},
};

const ErrorRow& row(ErrorCode code) {
    for (const auto& r : kErrorTable)
        if (r.code == code) return r;
    return kErrorTable.back();
}

}  // namespace

std::string_view toProtocolCode(ErrorCode code) { return row(code).protocol; }
std::string_view toDbusName(ErrorCode code) { return row(code).dbus; }

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
