#include "file_wire.hpp"

#include "errors.hpp"
#include "protocol.hpp"
#include "util.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace json = boost::json;

namespace hpc::files {
namespace {

void putHeader(char* out, std::uint32_t channel, std::uint64_t offset) {
    for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((channel >> (24 - 8 * i)) & 0xff);
    for (int i = 0; i < 8; ++i) out[4 + i] = static_cast<char>((offset >> (56 - 8 * i)) & 0xff);
}

std::optional<std::uint64_t> optUnsigned(const json::object& o, std::string_view key, std::int64_t min,
                                         std::int64_t max) {
    auto v = protocol::optInt(o, key, min, max);
    if (!v) return std::nullopt;
    return static_cast<std::uint64_t>(*v);
}

}  // namespace

std::string makeDataFrame(std::uint32_t channel, std::uint64_t offset, std::size_t size) {
    std::string frame(kFrameHeaderBytes + size, '\0');
    putHeader(frame.data(), channel, offset);
    return frame;
}

std::string encodeDataFrame(std::uint32_t channel, std::uint64_t offset, std::string_view data) {
    std::string frame;
    frame.reserve(kFrameHeaderBytes + data.size());
    frame.resize(kFrameHeaderBytes);
    putHeader(frame.data(), channel, offset);
    frame.append(data);
    return frame;
}

std::optional<DataFrame> decodeDataFrame(std::string_view frame) {
    if (frame.size() < kFrameHeaderBytes) return std::nullopt;
    auto b = [&](std::size_t i) { return static_cast<std::uint64_t>(static_cast<unsigned char>(frame[i])); };
    DataFrame f;
    f.channel = static_cast<std::uint32_t>((b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3));
    for (std::size_t i = 4; i < kFrameHeaderBytes; ++i) f.offset = (f.offset << 8) | b(i);
    f.data = frame.substr(kFrameHeaderBytes);
    return f;
}

void putPath(json::object& o, std::string_view key, std::string_view path) {
    if (isValidUtf8(path)) {
        o[key] = path;
        return;
    }
    o[key] = base64Encode(path);
    o[std::string(key) + "_encoding"] = "base64";
}

std::optional<std::string> optPath(const json::object& o, std::string_view key) {
    std::string name(key);
    auto raw = protocol::optString(o, key, kMaxPathBytes * 4 / 3 + 4);
    if (!raw) return std::nullopt;
    auto encoding = protocol::optString(o, name + "_encoding", 16).value_or("utf-8");
    std::string path;
    if (encoding == "base64") {
        auto decoded = base64Decode(*raw);
        if (!decoded) throw Error(ErrorCode::BadRequest, "\"" + name + "\" is not valid base64");
        path = std::move(*decoded);
    } else if (encoding == "utf-8") {
        path = std::move(*raw);
    } else {
        throw Error(ErrorCode::BadRequest, "\"" + name + "_encoding\" must be \"utf-8\" or \"base64\"");
    }
    if (path.size() > kMaxPathBytes)
        throw Error(ErrorCode::BadRequest,
                    "\"" + name + "\" is longer than " + std::to_string(kMaxPathBytes) + " bytes");
    if (path.find('\0') != std::string::npos)
        throw Error(ErrorCode::BadRequest, "\"" + name + "\" contains a NUL byte");
    return path;
}

std::string displayPath(std::string_view path) {
    std::string out;
    std::size_t i = 0;
    while (i < path.size()) {
        auto c = static_cast<unsigned char>(path[i]);
        std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        if (len > 1 && i + len <= path.size() && isValidUtf8(path.substr(i, len))) {
            out.append(path.substr(i, len));
            i += len;
            continue;
        }
        if (len == 1 && c >= 0x20 && c != 0x7f && c != '\\') {
            out.push_back(static_cast<char>(c));
        } else {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", c);
            out += hex;
        }
        ++i;
    }
    return out;
}

json::object PutSpec::toPayload() const {
    json::object p;
    putPath(p, "path", path);
    if (size) p["size"] = *size;
    if (mode) p["mode"] = *mode;
    if (mtime) p["mtime"] = *mtime;
    if (atime) p["atime"] = *atime;
    if (preserve) p["preserve"] = true;
    if (resume) p["resume"] = true;
    if (window) p["window"] = *window;
    return p;
}

PutSpec PutSpec::fromPayload(const json::object& p) {
    PutSpec s;
    auto path = optPath(p, "path");
    if (!path || path->empty()) throw Error(ErrorCode::BadRequest, "file.put needs \"path\"");
    s.path = std::move(*path);
    s.size = protocol::optInt(p, "size", 0, kMaxFileBytes);
    if (auto mode = protocol::optInt(p, "mode", 0, 07777)) s.mode = static_cast<std::uint32_t>(*mode);
    s.mtime = protocol::optNumber(p, "mtime", -1e11, 1e11);
    s.atime = protocol::optNumber(p, "atime", -1e11, 1e11);
    s.preserve = protocol::optBool(p, "preserve").value_or(false);
    s.resume = protocol::optBool(p, "resume").value_or(false);
    s.window = optUnsigned(p, "window", static_cast<std::int64_t>(kMinWindow), static_cast<std::int64_t>(kMaxWindow));
    return s;
}

json::object GetSpec::toPayload() const {
    json::object p;
    putPath(p, "path", path);
    if (offset) {
        p["offset"] = offset;
        p["prefix_sha256"] = prefixSha256;
    }
    if (window) p["window"] = *window;
    return p;
}

GetSpec GetSpec::fromPayload(const json::object& p) {
    GetSpec s;
    auto path = optPath(p, "path");
    if (!path || path->empty()) throw Error(ErrorCode::BadRequest, "file.get needs \"path\"");
    s.path = std::move(*path);
    s.offset = optUnsigned(p, "offset", 0, kMaxFileBytes).value_or(0);
    s.prefixSha256 = protocol::optString(p, "prefix_sha256", 64).value_or("");
    if (s.offset && !isSha256Hex(s.prefixSha256))
        throw Error(ErrorCode::BadRequest,
                    "\"offset\" needs \"prefix_sha256\": the SHA-256 of the bytes already there");
    s.window = optUnsigned(p, "window", static_cast<std::int64_t>(kMinWindow), static_cast<std::int64_t>(kMaxWindow));
    return s;
}

std::string tempNameFor(const std::string& name) {
    if (name.size() <= 200) return "." + name + ".hpc-part";
    Sha256 sha;
    sha.update(name);
    return ".hpc-part-" + sha.hex().substr(0, 16);
}

double toSeconds(const struct timespec& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) / 1e9;
}

struct timespec toTimespec(double seconds) {
    timespec t{};
    double whole = std::floor(seconds);
    t.tv_sec = static_cast<time_t>(whole);
    t.tv_nsec = std::clamp(static_cast<long>((seconds - whole) * 1e9), 0L, 999999999L);
    return t;
}

bool isSha256Hex(std::string_view s) {
    if (s.size() != 64) return false;
    for (char c : s)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

struct Sha256::Ctx {
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : m_ctx(std::make_unique<Ctx>()) { reset(); }
Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::reset() {
    if (!m_ctx->md || EVP_DigestInit_ex(m_ctx->md, EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("SHA-256 is not available");
}

void Sha256::update(const void* data, std::size_t size) {
    if (size && EVP_DigestUpdate(m_ctx->md, data, size) != 1) throw std::runtime_error("SHA-256 update failed");
}

std::string Sha256::hex() const {
    Ctx copy;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!copy.md || EVP_MD_CTX_copy_ex(copy.md, m_ctx->md) != 1 || EVP_DigestFinal_ex(copy.md, digest, &len) != 1)
        throw std::runtime_error("SHA-256 final failed");
    static const char* kHex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < len; ++i) {
        out.push_back(kHex[digest[i] >> 4]);
        out.push_back(kHex[digest[i] & 0xf]);
    }
    return out;
}

}  // namespace hpc::files
