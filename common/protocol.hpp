#pragma once
/// Protocol v1 envelopes: parse, validate, serialize (docs/protocol.md).
///
/// Every text frame on a WebSocket is one envelope. Parsing never throws:
/// bad input yields a ProtocolError that the receiver sends back as an error
/// response, keeping the connection up.

#include "errors.hpp"

#include <boost/json.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace hpc::protocol {

inline constexpr int kVersion = 1;
/// Largest request or event a peer must accept; larger ones are refused unread.
inline constexpr std::size_t kMaxEnvelopeBytes = 1 << 20;
/// Largest response (an exec result carries output): 16 MiB.
inline constexpr std::size_t kMaxResponseBytes = 16 << 20;
inline constexpr std::size_t kMaxIdLength = 128;
inline constexpr std::size_t kMaxTypeLength = 64;

/// One message. `type == "response"` carries replyTo/ok/result|error instead
/// of id/payload.
struct Envelope {
    int v = kVersion;
    std::string type;
    std::string id;
    /// Agent → platform: which daemon the request is for.
    std::string daemonId;
    /// Platform → daemon: who sent the request (opaque to the daemon).
    boost::json::object agent;
    boost::json::object payload;
    // Responses only.
    std::string replyTo;
    bool ok = false;
    boost::json::object result;
    ErrorCode errorCode = ErrorCode::Internal;
    std::string errorMessage;

    bool isResponse() const { return type == "response"; }
};

/// Why a frame was refused. replyTo is the frame's id when it could be read,
/// so the sender can match the error to its request.
struct ProtocolError {
    ErrorCode code;
    std::string message;
    std::string replyTo;
};

using ParseResult = std::variant<Envelope, ProtocolError>;

/// Parses and validates one text frame. Checks, in order: size (maxBytes:
/// kMaxResponseBytes where responses are expected), JSON object,
/// `v` (an integer equal to kVersion), `type`, then `id` (every message but a
/// response) or `reply_to`/`ok`/`result`/`error` (a response), and the types
/// of `payload`, `daemon_id`, `agent`. Unknown top-level fields are ignored.
ParseResult parse(std::string_view text, std::size_t maxBytes = kMaxEnvelopeBytes);

std::string serialize(const Envelope& envelope);

/// A request or event.
std::string makeMessage(std::string_view type, std::string_view id, boost::json::object payload = {});
std::string makeOk(std::string_view replyTo, boost::json::object result = {});
std::string makeError(std::string_view replyTo, ErrorCode code, std::string_view message);
inline std::string makeError(const ProtocolError& e) { return makeError(e.replyTo, e.code, e.message); }

// ---- binary frames: 4-byte big-endian channel, then raw bytes ----

struct ChannelFrame {
    std::uint32_t channel;
    std::span<const char> data;
};

/// Builds a binary frame. Returns the header + data bytes.
std::string encodeChannelFrame(std::uint32_t channel, std::string_view data);
/// nullopt when the frame is shorter than its 4-byte header.
std::optional<ChannelFrame> decodeChannelFrame(std::span<const char> frame);

// ---- a streamed exec's frames: a channel frame whose first byte says the stream ----

enum class ExecStream : std::uint8_t { Stdin = 0, Stdout = 1, Stderr = 2 };
inline constexpr std::size_t kExecFrameHeaderBytes = 5;

struct ExecFrame {
    std::uint32_t channel;
    std::uint8_t stream;  ///< as sent: the receiver checks it is an ExecStream it takes
    std::span<const char> data;
};

/// A frame of `dataBytes` zero bytes after its header, for the caller to fill
/// in place (a read goes straight into it: no copy).
std::string makeExecFrame(std::uint32_t channel, ExecStream stream, std::size_t dataBytes);
/// nullopt when the frame is shorter than its 5-byte header.
std::optional<ExecFrame> decodeExecFrame(std::span<const char> frame);

// ---- payload field helpers: throw hpc::Error(BadRequest) naming the field ----

std::optional<std::string> optString(const boost::json::object& o, std::string_view key, std::size_t maxLen = 1 << 20);
std::optional<std::int64_t> optInt(const boost::json::object& o, std::string_view key, std::int64_t min,
                                   std::int64_t max);
std::optional<double> optNumber(const boost::json::object& o, std::string_view key, double min, double max);
std::optional<bool> optBool(const boost::json::object& o, std::string_view key);

/// Environment variables as (name, value).
using EnvVars = std::vector<std::pair<std::string, std::string>>;

/// An optional object of environment variables. Throws
/// hpc::Error(BadRequest) for a bad name, or a value that is not a string or
/// holds a NUL byte.
EnvVars optEnvVars(const boost::json::object& o, std::string_view key);
/// The same as "NAME=value" entries, as execve takes them.
std::vector<std::string> optEnv(const boost::json::object& o, std::string_view key);
/// "NAME=value" entries.
std::vector<std::string> envEntries(const EnvVars& env);
/// Puts `env` under `key` as an object; nothing when it is empty.
void putEnv(boost::json::object& o, std::string_view key, const EnvVars& env);

/// Puts bytes under `name` with `name`_encoding: the text itself when it is
/// UTF-8 (JSON strings must be), else base64.
void putBytes(boost::json::object& o, std::string_view name, std::string_view data);

}  // namespace hpc::protocol
