#pragma once
/// File transfer on the wire (docs/protocol.md §4.7), shared by the daemon
/// and the agent: the binary frame of a transfer channel, paths that may be
/// any bytes, the `file.put` and `file.get` requests with one to/from pair,
/// and SHA-256.

#include <boost/json.hpp>

#include <ctime>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace hpc::files {

/// Channel (u32 BE) and offset (u64 BE) before the bytes.
inline constexpr std::size_t kFrameHeaderBytes = 12;
/// What each side puts in one frame: large enough that the per-frame cost of
/// the platform and the peers stays out of the way, small enough to keep
/// memory flat.
inline constexpr std::size_t kChunkBytes = 256 * 1024;
/// The most one frame may carry.
inline constexpr std::size_t kMaxFrameData = 1 << 20;
inline constexpr std::uint64_t kMinWindow = 64 * 1024;
inline constexpr std::uint64_t kDefaultWindow = 4 << 20;
inline constexpr std::uint64_t kMaxWindow = 16 << 20;
inline constexpr std::size_t kMaxPathBytes = 4096;
/// Entries per file.list answer.
inline constexpr std::size_t kMaxListEntries = 2000;
/// Offsets and sizes fit a double (JSON numbers).
inline constexpr std::int64_t kMaxFileBytes = 1LL << 53;

struct DataFrame {
    std::uint32_t channel = 0;
    std::uint64_t offset = 0;
    std::string_view data;
};

/// A frame with its header filled and `size` bytes of room after it, for a
/// reader to fill in place (no copy between the file and the socket).
std::string makeDataFrame(std::uint32_t channel, std::uint64_t offset, std::size_t size);
std::string encodeDataFrame(std::uint32_t channel, std::uint64_t offset, std::string_view data);
/// nullopt when the frame is shorter than its header.
std::optional<DataFrame> decodeDataFrame(std::string_view frame);

/// Puts a path (any bytes) under `key`: as is when it is UTF-8, else base64
/// with `key`_encoding "base64".
void putPath(boost::json::object& o, std::string_view key, std::string_view path);
/// Reads what putPath wrote. Throws hpc::Error(BadRequest) naming the field
/// for a wrong type, bad base64, a NUL byte or more than kMaxPathBytes.
std::optional<std::string> optPath(const boost::json::object& o, std::string_view key);

/// A path as a person reads it in a message: bytes that are not printable
/// UTF-8 (a newline, an invalid byte) escaped as \xNN.
std::string displayPath(std::string_view path);

/// An upload request.
struct PutSpec {
    std::string path;
    std::optional<std::int64_t> size;
    std::optional<std::uint32_t> mode;
    std::optional<double> mtime, atime;
    bool preserve = false;
    bool resume = false;
    std::optional<std::uint64_t> window;

    boost::json::object toPayload() const;
    /// Throws hpc::Error(BadRequest) naming the field.
    static PutSpec fromPayload(const boost::json::object& payload);
};

/// A download request.
struct GetSpec {
    std::string path;
    std::uint64_t offset = 0;
    std::string prefixSha256;  ///< with offset: the SHA-256 of the bytes the agent has
    std::optional<std::uint64_t> window;

    boost::json::object toPayload() const;
    /// Throws hpc::Error(BadRequest) naming the field.
    static GetSpec fromPayload(const boost::json::object& payload);
};

/// The temporary name an upload (on the daemon) or a download (on the
/// agent) is written under, beside the target's `name`, until it is
/// complete: ".NAME.hpc-part", or for a long name ".hpc-part-<hash>".
std::string tempNameFor(const std::string& name);

/// Epoch seconds as the protocol sends times, for utimensat/futimens.
struct timespec toTimespec(double seconds);
/// A stat time as the protocol sends it: epoch seconds.
double toSeconds(const struct timespec& t);

/// True for 64 lowercase hex digits.
bool isSha256Hex(std::string_view s);

/// Incremental SHA-256 (OpenSSL). Move-only; one thread at a time.
class Sha256 {
public:
    Sha256();
    ~Sha256();
    Sha256(Sha256&&) noexcept;
    Sha256& operator=(Sha256&&) noexcept;
    void update(const void* data, std::size_t size);
    void update(std::string_view data) { update(data.data(), data.size()); }
    /// Lowercase hex of what was hashed so far; the hash can go on after.
    std::string hex() const;
    void reset();

private:
    struct Ctx;
    std::unique_ptr<Ctx> m_ctx;
};

}  // namespace hpc::files
