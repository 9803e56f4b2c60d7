#include "file_transfer.hpp"

#include "errors.hpp"
#include "protocol.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using hpc::files::displayPath;

namespace hpc::agent {
namespace {

/// How long a transfer waits for the daemon (credit, bytes) before giving up.
constexpr auto kIdle = std::chrono::seconds(120);
/// Requests that may first hash a large partial file, or sync one.
constexpr auto kSlowRequest = std::chrono::minutes(30);

std::uint64_t u64(const json::object& o, const char* key) {
    return static_cast<std::uint64_t>(
        protocol::optInt(o, key, 0, std::numeric_limits<std::int64_t>::max()).value_or(0));
}

Error localError(const std::string& what) {
    int err = errno;
    ErrorCode code = err == ENOSPC || err == EDQUOT    ? ErrorCode::StorageFull
                     : err == EACCES || err == EPERM   ? ErrorCode::PathNotAllowed
                     : err == ENOENT || err == ENOTDIR ? ErrorCode::NotFound
                                                       : ErrorCode::Internal;
    return Error(code, what + ": " + std::strerror(err));
}

/// Fills `out` with up to `size` bytes (fewer only at the end of the source).
std::size_t readSome(const UploadSource& src, char* out, std::size_t size, std::uint64_t offset) {
    std::size_t got = 0;
    while (got < size) {
        ssize_t n = src.seekable ? ::pread(src.fd, out + got, size - got, static_cast<off_t>(offset + got))
                                 : ::read(src.fd, out + got, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw localError("reading the local file");
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    return got;
}

void writeAllTo(const DownloadSink& sink, const char* data, std::size_t size, std::uint64_t offset) {
    while (size > 0) {
        ssize_t n =
            sink.seekable ? ::pwrite(sink.fd, data, size, static_cast<off_t>(offset)) : ::write(sink.fd, data, size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw localError("writing the local file");
        data += n;
        size -= static_cast<std::size_t>(n);
        offset += static_cast<std::uint64_t>(n);
    }
}

}  // namespace

bool hashFilePrefix(int fd, std::uint64_t size, hpc::files::Sha256& sha) {
    std::string buf(1 << 20, '\0');
    std::uint64_t at = 0;
    while (at < size) {
        auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size - at));
        ssize_t n = ::pread(fd, buf.data(), want, static_cast<off_t>(at));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw localError("reading the local file");
        if (n == 0) return false;
        sha.update(buf.data(), static_cast<std::size_t>(n));
        at += static_cast<std::uint64_t>(n);
    }
    return true;
}

RemoteEntry RemoteEntry::fromJson(const json::object& o) {
    RemoteEntry e;
    e.path = hpc::files::optPath(o, "path").value_or("");
    e.name = hpc::files::optPath(o, "name").value_or("");
    e.type = protocol::optString(o, "type", 16).value_or("");
    e.size = u64(o, "size");
    e.mode = static_cast<std::uint32_t>(protocol::optInt(o, "mode", 0, 07777).value_or(0));
    e.mtime = protocol::optNumber(o, "mtime", -1e12, 1e12).value_or(0);
    e.atime = protocol::optNumber(o, "atime", -1e12, 1e12).value_or(0);
    e.target = hpc::files::optPath(o, "target").value_or("");
    return e;
}

struct FileClient::Incoming {
    std::uint64_t granted = 0;  ///< upload: the offset we may send up to
    bool ended = false;         ///< download: file.end arrived
    std::uint64_t endSize = 0;
    std::string endSha256;
    std::set<std::string> acks;  ///< ids of our file.ack requests
};

json::object FileClient::request(const std::string& type, json::object payload) {
    return m_client.request(m_daemon, type, std::move(payload), kSlowRequest);
}

RemoteEntry FileClient::stat(const std::string& path) {
    json::object p;
    hpc::files::putPath(p, "path", path);
    return RemoteEntry::fromJson(request("file.stat", std::move(p)));
}

std::vector<RemoteEntry> FileClient::list(const std::string& path) {
    std::vector<RemoteEntry> out;
    std::string after;
    for (;;) {
        json::object p;
        hpc::files::putPath(p, "path", path);
        if (!after.empty()) hpc::files::putPath(p, "after", after);
        auto r = request("file.list", std::move(p));
        const auto* entries = r.if_contains("entries");
        if (!entries || !entries->is_array()) throw Error(ErrorCode::Internal, "file.list answered without entries");
        for (const auto& e : entries->get_array())
            if (e.is_object()) out.push_back(RemoteEntry::fromJson(e.get_object()));
        if (!protocol::optBool(r, "more").value_or(false) || out.empty()) return out;
        after = out.back().name;
    }
}

bool FileClient::mkdir(const std::string& path, std::uint32_t mode) {
    json::object p{{"mode", mode}};
    hpc::files::putPath(p, "path", path);
    return protocol::optBool(request("file.mkdir", std::move(p)), "created").value_or(false);
}

void FileClient::setattr(const std::string& path, std::uint32_t mode, double atime, double mtime) {
    json::object p{{"mode", mode}, {"atime", atime}, {"mtime", mtime}};
    hpc::files::putPath(p, "path", path);
    request("file.setattr", std::move(p));
}

void FileClient::symlink(const std::string& path, const std::string& target) {
    json::object p;
    hpc::files::putPath(p, "path", path);
    hpc::files::putPath(p, "target", target);
    request("file.symlink", std::move(p));
}

void FileClient::cancel(std::uint32_t channel) {
    try {
        m_client.request(m_daemon, "file.cancel", {{"channel", channel}}, std::chrono::seconds(30));
    } catch (const Error&) {
        // Gone already (ended, or the connection broke): nothing left to stop.
    }
}

void FileClient::checkInterrupted(std::uint32_t channel) {
    if (!m_interrupted || !m_interrupted()) return;
    cancel(channel);
    throw Error(ErrorCode::Unavailable, "interrupted");
}

void FileClient::onFrame(const net::WsFrame& frame, std::uint32_t channel, Incoming& in) {
    if (frame.binary) return;
    auto parsed = protocol::parse(frame.data, protocol::kMaxResponseBytes);
    auto* env = std::get_if<protocol::Envelope>(&parsed);
    if (!env) return;
    // Answers to our acks, and the platform's word on frames that crossed the
    // end of a channel, say nothing the channel's own end does not.
    if (env->isResponse()) {
        in.acks.erase(env->replyTo);
        return;
    }
    if (env->type != "file.ack" && env->type != "file.end") return;
    if (protocol::optInt(env->payload, "channel", 0, UINT32_MAX).value_or(0) != channel) return;
    if (env->type == "file.ack") {
        in.granted += u64(env->payload, "bytes");
        return;
    }
    if (auto error = protocol::optString(env->payload, "error")) {
        auto code = errorCodeFromProtocol(protocol::optString(env->payload, "code", 32).value_or(""));
        throw Error(code.value_or(ErrorCode::Internal), *error);
    }
    in.ended = true;
    in.endSize = u64(env->payload, "size");
    in.endSha256 = protocol::optString(env->payload, "sha256", 64).value_or("");
}

TransferResult FileClient::put(hpc::files::PutSpec spec, UploadSource& src, const Progress& progress) {
    auto r = request("file.put", spec.toPayload());
    auto channel = static_cast<std::uint32_t>(protocol::optInt(r, "channel", 1, UINT32_MAX).value_or(0));
    if (!channel) throw Error(ErrorCode::Internal, "file.put answered without a channel");
    TransferResult out;
    out.path = hpc::files::optPath(r, "path").value_or(spec.path);
    std::uint64_t pos = u64(r, "offset");
    hpc::files::Sha256 sha;
    if (pos > 0) {
        // Go on only from bytes that are the same as ours.
        std::string theirs = protocol::optString(r, "prefix_sha256", 64).value_or("");
        bool same =
            src.seekable && (!src.size || pos <= *src.size) && hashFilePrefix(src.fd, pos, sha) && sha.hex() == theirs;
        if (!same) {
            cancel(channel);
            spec.resume = false;
            return put(std::move(spec), src, progress);
        }
        out.resumedFrom = pos;
    }
    Incoming in;
    in.granted = pos + u64(r, "credit");
    if (progress) progress(pos, src.size);
    for (;;) {
        checkInterrupted(channel);
        while (auto f = m_client.nextFrame(0ms)) onFrame(*f, channel, in);
        if (pos >= in.granted) {
            auto waitUntil = Clock::now() + kIdle;
            while (pos >= in.granted) {
                checkInterrupted(channel);
                if (Clock::now() > waitUntil)
                    throw Error(ErrorCode::Timeout, "the daemon took no more bytes of " + displayPath(out.path) +
                                                        " for " + std::to_string(kIdle.count()) + " s");
                if (auto f = m_client.nextFrame(250ms)) onFrame(*f, channel, in);
            }
        }
        auto want = static_cast<std::size_t>(std::min<std::uint64_t>(hpc::files::kChunkBytes, in.granted - pos));
        std::string frame = hpc::files::makeDataFrame(channel, pos, want);
        std::size_t got = readSome(src, frame.data() + hpc::files::kFrameHeaderBytes, want, pos);
        if (got == 0) break;
        frame.resize(hpc::files::kFrameHeaderBytes + got);
        sha.update(frame.data() + hpc::files::kFrameHeaderBytes, got);
        m_client.ws().sendBinary(frame);
        pos += got;
        if (progress) progress(pos, src.size);
    }
    if (src.changed && src.changed()) {
        cancel(channel);
        throw Error(ErrorCode::BadRequest,
                    "the local file changed while it was being read; copy it again once it is stable");
    }
    out.size = pos;
    out.sha256 = sha.hex();
    auto c = m_client.request(m_daemon, "file.commit", {{"channel", channel}, {"size", pos}, {"sha256", out.sha256}},
                              kSlowRequest);
    if (protocol::optString(c, "sha256", 64).value_or("") != out.sha256)
        throw Error(ErrorCode::Internal, "the daemon confirmed a different checksum for " + displayPath(out.path));
    out.path = hpc::files::optPath(c, "path").value_or(out.path);
    return out;
}

TransferResult FileClient::get(hpc::files::GetSpec spec, DownloadSink& sink, const Progress& progress) {
    if (sink.have) {
        spec.offset = sink.have;
        spec.prefixSha256 = sink.haveSha256.hex();
    }
    auto r = request("file.get", spec.toPayload());
    auto channel = static_cast<std::uint32_t>(protocol::optInt(r, "channel", 1, UINT32_MAX).value_or(0));
    if (!channel) throw Error(ErrorCode::Internal, "file.get answered without a channel");
    TransferResult out;
    out.remote = RemoteEntry::fromJson(r);
    out.remote.type = "file";
    out.path = out.remote.path;
    std::uint64_t pos = u64(r, "offset");
    if (pos != sink.have) {
        // The daemon's file does not begin with what we have: start over.
        if (pos != 0 || !sink.seekable) {
            cancel(channel);
            throw Error(ErrorCode::BadRequest, displayPath(out.path) + " changed since the part already received");
        }
        if (::ftruncate(sink.fd, 0) != 0) throw localError("truncating the partial file");
        sink.haveSha256.reset();
        sink.have = 0;
    }
    out.resumedFrom = pos;
    const std::uint64_t ackEvery = spec.window.value_or(hpc::files::kDefaultWindow) / 4;
    std::uint64_t unacked = 0;
    Incoming in;
    if (progress) progress(pos, out.remote.size);
    auto lastHeard = Clock::now();
    while (!in.ended) {
        checkInterrupted(channel);
        auto f = m_client.nextFrame(250ms);
        if (!f) {
            if (Clock::now() - lastHeard > kIdle)
                throw Error(ErrorCode::Timeout, "no bytes of " + displayPath(out.path) + " came for " +
                                                    std::to_string(kIdle.count()) + " s");
            continue;
        }
        lastHeard = Clock::now();
        if (!f->binary) {
            onFrame(*f, channel, in);
            continue;
        }
        auto d = hpc::files::decodeDataFrame(f->data);
        if (!d || d->channel != channel) continue;
        if (d->offset != pos) {
            cancel(channel);
            throw Error(ErrorCode::Internal, "bytes of " + displayPath(out.path) + " came out of order");
        }
        writeAllTo(sink, d->data.data(), d->data.size(), pos);
        sink.haveSha256.update(d->data);
        pos += d->data.size();
        sink.have = pos;
        unacked += d->data.size();
        if (unacked >= ackEvery) {
            protocol::Envelope ack;
            ack.type = "file.ack";
            ack.id = m_client.nextId();
            ack.daemonId = m_daemon;
            ack.payload = {{"channel", channel}, {"bytes", unacked}};
            in.acks.insert(ack.id);
            m_client.ws().sendText(protocol::serialize(ack));
            unacked = 0;
        }
        if (progress) progress(pos, out.remote.size);
    }
    out.size = pos;
    out.sha256 = sink.haveSha256.hex();
    if (in.endSize != pos || in.endSha256 != out.sha256)
        throw Error(ErrorCode::BadRequest, "checksum mismatch on " + displayPath(out.path) + ": " +
                                               std::to_string(pos) + " bytes with sha256 " + out.sha256 +
                                               " arrived, the daemon sent " + std::to_string(in.endSize) +
                                               " with sha256 " + in.endSha256);
    return out;
}

}  // namespace hpc::agent
