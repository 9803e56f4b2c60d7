#include "files/file_service.hpp"

#include "files/file_step.hpp"

#include "errors.hpp"
#include "log.hpp"

#include <algorithm>
#include <vector>

namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using hpc::files::displayPath;

namespace hpc::daemon {
namespace {

constexpr std::size_t kRememberEnded = 256;

std::uint32_t channelOf(const json::object& p) {
    auto c = protocol::optInt(p, "channel", 1, UINT32_MAX);
    if (!c) throw Error(ErrorCode::BadRequest, "\"channel\" is required");
    return static_cast<std::uint32_t>(*c);
}

std::string rate(std::uint64_t bytes, double secs) {
    if (secs <= 0) return "";
    return " (" + std::to_string(static_cast<long long>(static_cast<double>(bytes) / secs / 1e6)) + " MB/s)";
}

}  // namespace

struct FileService::Transfer {
    std::uint32_t channel = 0;
    std::string agentId;
    bool upload = true;
    std::uint64_t window = 0;
    std::string path;  ///< resolved once open; the request's until then
    std::string requestId;
    Reply reply;  ///< until file.put or file.get is answered
    Clock::time_point started = Clock::now();
    bool busy = false;  ///< a worker step is in flight
    // Upload.
    hpc::files::PutSpec spec;
    std::string lexical;  ///< the target as requested, absolute
    std::shared_ptr<files::Upload> up;
    std::vector<std::string> pending;  ///< frames received, not written yet
    std::uint64_t pendingBytes = 0;
    std::uint64_t received = 0;  ///< the next offset expected
    std::uint64_t granted = 0;   ///< the offset the agent may send up to
    std::uint64_t unacked = 0;   ///< written, not granted back yet
    std::optional<files::CommitOptions> commit;
    std::string commitId;
    Reply commitReply;
    std::uint64_t ackSeq = 0;
    // Download.
    std::shared_ptr<files::Download> down;
    std::string prefixSha256;
    std::uint64_t credit = 0;
    std::uint64_t firstOffset = 0;
};

FileService::FileService(boost::asio::io_context& ioc, std::chrono::milliseconds deadline, Send sendText,
                         Send sendBinary)
    : m_io(ioc, deadline, 4, "the file system"), m_sendText(std::move(sendText)), m_sendBinary(std::move(sendBinary)) {}

FileService::~FileService() = default;

bool FileService::handle(const protocol::Envelope& env, const std::string& agentId, const Reply& reply) {
    const auto& type = env.type;
    if (type == "pty.detach") {
        // The platform's word that a transfer's agent has gone (as for a shell's).
        auto c = protocol::optInt(env.payload, "channel", 1, UINT32_MAX);
        if (!c || !owns(static_cast<std::uint32_t>(*c))) return false;
        detach(static_cast<std::uint32_t>(*c));
        return true;
    }
    if (type.rfind("file.", 0) != 0) return false;
    if (type == "file.stat" || type == "file.list" || type == "file.mkdir" || type == "file.setattr" ||
        type == "file.symlink") {
        simple(env, agentId, reply);
    } else if (type == "file.put") {
        put(env, agentId, reply);
    } else if (type == "file.get") {
        get(env, agentId, reply);
    } else if (type == "file.ack") {
        Transfer& t = owned(env, agentId);
        if (t.upload)
            throw Error(ErrorCode::BadRequest, "channel " + std::to_string(t.channel) +
                                                   " is an upload: the daemon grants its credit, not the agent");
        auto bytes = protocol::optInt(env.payload, "bytes", 1, 1LL << 30);
        if (!bytes) throw Error(ErrorCode::BadRequest, "file.ack needs \"bytes\"");
        t.credit = std::min(t.credit + static_cast<std::uint64_t>(*bytes), t.window);
        reply(protocol::makeOk(env.id));
        readNext(t.channel);
    } else if (type == "file.commit") {
        Transfer& t = owned(env, agentId);
        if (!t.upload) throw Error(ErrorCode::BadRequest, "file.commit ends an upload; this channel is a download");
        if (t.commit || t.reply)
            throw Error(ErrorCode::BadRequest, "file.commit came twice, or before file.put's answer");
        auto size = protocol::optInt(env.payload, "size", 0, hpc::files::kMaxFileBytes);
        auto sha = protocol::optString(env.payload, "sha256", 64);
        if (!size || !sha || !hpc::files::isSha256Hex(*sha))
            throw Error(ErrorCode::BadRequest,
                        "file.commit needs \"size\" and \"sha256\" (64 lowercase hex digits) of the whole file");
        files::CommitOptions c;
        c.size = static_cast<std::uint64_t>(*size);
        c.sha256 = *sha;
        c.mode = t.spec.mode;
        c.preserve = t.spec.preserve;
        c.mtime = t.spec.mtime;
        c.atime = t.spec.atime;
        t.commit = std::move(c);
        t.commitId = env.id;
        t.commitReply = reply;
        maybeCommit(t.channel);
    } else if (type == "file.cancel") {
        Transfer& t = owned(env, agentId);
        log::info("file " + std::string(t.upload ? "put " : "get ") + displayPath(t.path) + " on channel " +
                  std::to_string(t.channel) + " cancelled by " + agentId);
        audit(t, 1, "cancelled");
        auto up = t.up;
        forget(t.channel);
        auto answer = [reply, text = protocol::makeOk(env.id)] { reply(text); };
        if (up)
            discard(up, answer);
        else
            answer();
    } else {
        return false;
    }
    return true;
}

FileService::Transfer& FileService::start(const std::string& agentId, bool upload, std::uint64_t window,
                                          const std::string& requestId, const Reply& reply) {
    if (m_transfers.size() >= kMaxTransfers)
        throw Error(ErrorCode::Limit, "this daemon already runs " + std::to_string(m_transfers.size()) +
                                          " file transfers (the limit is " + std::to_string(kMaxTransfers) + ")");
    if (windowsInUse() + window > kWindowBudget)
        throw Error(ErrorCode::Limit, "the transfers running on this daemon use its " +
                                          std::to_string(kWindowBudget >> 20) +
                                          " MiB of windows; try again when one ends, or ask for a smaller window");
    std::uint32_t channel = m_nextChannel;
    while (m_transfers.count(channel) || m_ended.count(channel))
        channel = channel == kLastChannel ? kFirstChannel : channel + 1;
    m_nextChannel = channel == kLastChannel ? kFirstChannel : channel + 1;
    auto t = std::make_unique<Transfer>();
    t->channel = channel;
    t->agentId = agentId;
    t->upload = upload;
    t->window = window;
    t->requestId = requestId;
    t->reply = reply;
    return *m_transfers.emplace(channel, std::move(t)).first->second;
}

FileService::Transfer& FileService::owned(const protocol::Envelope& env, const std::string& agentId) {
    std::uint32_t channel = channelOf(env.payload);
    auto it = m_transfers.find(channel);
    if (it == m_transfers.end())
        throw Error(ErrorCode::NotFound, "channel " + std::to_string(channel) +
                                             (m_ended.count(channel) ? " has ended" : " is not an open transfer"));
    if (it->second->agentId != agentId)
        throw Error(ErrorCode::NotOwner, "channel " + std::to_string(channel) + " belongs to another agent");
    return *it->second;
}

std::uint64_t FileService::windowsInUse() const {
    std::uint64_t sum = 0;
    for (const auto& [c, t] : m_transfers) sum += t->window;
    return sum;
}

void FileService::put(const protocol::Envelope& env, const std::string& agentId, const Reply& reply) {
    auto spec = hpc::files::PutSpec::fromPayload(env.payload);
    std::string lexical = files::absolutePath(m_policy, spec.path);
    if (m_uploading.count(lexical))
        throw Error(ErrorCode::Limit, "another upload to " + displayPath(lexical) + " is running");
    Transfer& t = start(agentId, true, spec.window.value_or(hpc::files::kDefaultWindow), env.id, reply);
    t.spec = spec;
    t.lexical = lexical;
    t.path = lexical;
    m_uploading.insert(lexical);
    std::uint32_t channel = t.channel;
    t.busy = true;
    runStep<std::shared_ptr<files::Upload>>(
        m_io, "opening " + displayPath(lexical) + " for an upload",
        [policy = m_policy, path = spec.path, resume = spec.resume] { return files::openUpload(policy, path, resume); },
        [this, channel](Step<std::shared_ptr<files::Upload>> s) {
            Transfer* live = settled(channel);
            if (!live) return;
            Transfer& t = *live;
            t.busy = false;
            if (!s.value) return fail(t, s.code, s.message);
            t.up = *s.value;
            t.path = t.up->path;
            if (t.path != t.lexical && m_uploading.count(t.path)) {
                t.up.reset();  // the other upload's temporary file: not ours to remove
                return fail(t, ErrorCode::Limit, "another upload to " + displayPath(t.path) + " is running");
            }
            m_uploading.insert(t.path);
            if (t.up->size > 0)
                hashThenAnswer(channel);
            else
                answerPut(t);
        });
}

void FileService::get(const protocol::Envelope& env, const std::string& agentId, const Reply& reply) {
    auto spec = hpc::files::GetSpec::fromPayload(env.payload);
    Transfer& t = start(agentId, false, spec.window.value_or(hpc::files::kDefaultWindow), env.id, reply);
    t.path = files::absolutePath(m_policy, spec.path);
    t.prefixSha256 = spec.prefixSha256;
    std::uint32_t channel = t.channel;
    t.busy = true;
    runStep<std::shared_ptr<files::Download>>(
        m_io, "opening " + displayPath(t.path) + " for a download",
        [policy = m_policy, path = spec.path, offset = spec.offset] {
            return files::openDownload(policy, path, offset);
        },
        [this, channel](Step<std::shared_ptr<files::Download>> s) {
            Transfer* live = settled(channel);
            if (!live) return;
            Transfer& t = *live;
            t.busy = false;
            if (!s.value) return fail(t, s.code, s.message);
            t.down = *s.value;
            t.path = t.down->path;
            if (t.down->prefix > 0)
                hashThenAnswer(channel);
            else
                answerGet(t);
        });
}

void FileService::hashThenAnswer(std::uint32_t channel) {
    Transfer& t = *m_transfers.at(channel);
    t.busy = true;
    runStep<bool>(
        m_io, "checking the bytes of " + displayPath(t.path) + " already there",
        [up = t.up, down = t.down] {
            return up ? files::hashSome(*up, kHashStepBytes) : files::hashPrefix(*down, kHashStepBytes);
        },
        [this, channel](Step<bool> s) {
            Transfer* live = settled(channel);
            if (!live) return;
            Transfer& t = *live;
            t.busy = false;
            if (!s.value) return fail(t, s.code, s.message);
            if (!*s.value) return hashThenAnswer(channel);
            if (t.up) return answerPut(t);
            // A download resumes only from bytes the agent has right.
            auto& d = *t.down;
            if (d.sha.hex() == t.prefixSha256) {
                d.offset = d.prefix;
            } else {
                d.sha.reset();
                d.hashedUpTo = 0;
                d.offset = 0;
            }
            answerGet(t);
        });
}

void FileService::answerPut(Transfer& t) {
    t.received = t.up->size;
    t.granted = t.received + t.window;
    json::object r{{"channel", t.channel}, {"offset", t.received}, {"credit", t.window}};
    hpc::files::putPath(r, "path", t.path);
    if (t.received > 0) r["prefix_sha256"] = t.up->sha.hex();
    log::info("file put " + displayPath(t.path) + " from " + t.agentId + " on channel " + std::to_string(t.channel) +
              (t.received ? ", resuming at byte " + std::to_string(t.received) : std::string()));
    std::exchange(t.reply, nullptr)(protocol::makeOk(t.requestId, std::move(r)));
}

void FileService::answerGet(Transfer& t) {
    const auto& d = *t.down;
    t.credit = t.window;
    t.firstOffset = d.offset;
    auto r = files::toInfo(d.st).toJson();
    r.erase("type");
    r["channel"] = t.channel;
    r["offset"] = d.offset;
    hpc::files::putPath(r, "path", t.path);
    log::info("file get " + displayPath(t.path) + " to " + t.agentId + " on channel " + std::to_string(t.channel) +
              ", " + std::to_string(d.size) + " bytes" +
              (d.offset ? ", resuming at byte " + std::to_string(d.offset) : std::string()));
    std::exchange(t.reply, nullptr)(protocol::makeOk(t.requestId, std::move(r)));
    readNext(t.channel);
}

void FileService::onFrame(std::string_view frame) {
    auto f = hpc::files::decodeDataFrame(frame);
    if (!f) throw Error(ErrorCode::BadRequest, "a file transfer frame needs a 12-byte header (channel, offset)");
    auto it = m_transfers.find(f->channel);
    if (it == m_transfers.end())
        throw Error(ErrorCode::NotFound, "channel " + std::to_string(f->channel) + " is not open");
    Transfer& t = *it->second;
    std::string bad;
    if (!t.upload)
        bad = "is a download: it takes no bytes from the agent";
    else if (t.reply)
        bad = "got bytes before file.put was answered";
    else if (t.commit)
        bad = "got bytes after file.commit";
    else if (f->data.empty() || f->data.size() > hpc::files::kMaxFrameData)
        bad = "got a frame of " + std::to_string(f->data.size()) + " bytes (1 B to 1 MiB)";
    else if (f->offset != t.received)
        bad = "got bytes at offset " + std::to_string(f->offset) + ", expected " + std::to_string(t.received);
    else if (t.received + f->data.size() > t.granted)
        bad = "got bytes beyond its credit (up to offset " + std::to_string(t.granted) + ")";
    if (!bad.empty()) return fail(t, ErrorCode::BadRequest, "channel " + std::to_string(t.channel) + " " + bad);
    t.received += f->data.size();
    t.pendingBytes += f->data.size();
    t.pending.emplace_back(frame);
    writeNext(t.channel);
}

void FileService::writeNext(std::uint32_t channel) {
    Transfer& t = *m_transfers.at(channel);
    if (t.busy) return;
    if (t.pending.empty()) return maybeCommit(channel);
    auto frames = std::make_shared<std::vector<std::string>>(std::move(t.pending));
    t.pending.clear();
    std::uint64_t bytes = std::exchange(t.pendingBytes, 0);
    t.busy = true;
    runStep<bool>(
        m_io, "writing " + displayPath(t.path),
        [up = t.up, frames] {
            files::appendUpload(*up, *frames);
            return true;
        },
        [this, channel, bytes](const Step<bool>& s) {
            Transfer* live = settled(channel);
            if (!live) return;
            Transfer& t = *live;
            t.busy = false;
            if (!s.value) return fail(t, s.code, s.message);
            t.unacked += bytes;
            grant(t, t.pending.empty());
            writeNext(channel);
        });
}

void FileService::grant(Transfer& t, bool force) {
    if (t.unacked == 0 || (!force && t.unacked < t.window / 4)) return;
    json::object p{{"channel", t.channel}, {"bytes", t.unacked}};
    m_sendText(protocol::makeMessage("file.ack", "fack-" + std::to_string(t.channel) + "-" + std::to_string(++t.ackSeq),
                                     std::move(p)));
    t.granted += t.unacked;
    t.unacked = 0;
}

void FileService::maybeCommit(std::uint32_t channel) {
    Transfer& t = *m_transfers.at(channel);
    if (!t.commit || t.busy || !t.pending.empty()) return;
    t.busy = true;
    runStep<bool>(
        m_io, "finishing the upload of " + displayPath(t.path),
        [up = t.up, options = *t.commit, umask = m_policy.umask] {
            files::commitUpload(*up, options, umask);
            return true;
        },
        [this, channel](const Step<bool>& s) {
            Transfer* live = settled(channel);
            if (!live) return;
            Transfer& t = *live;
            t.busy = false;
            if (!s.value) return fail(t, s.code, s.message);
            double secs = std::chrono::duration<double>(Clock::now() - t.started).count();
            std::string sha = t.commit->sha256;
            log::info("file put " + displayPath(t.path) + " from " + t.agentId + ": " + std::to_string(t.up->size) +
                      " bytes in " + std::to_string(secs).substr(0, 6) + " s" + rate(t.up->size, secs) + ", sha256 " +
                      sha);
            audit(t, 0, std::to_string(t.up->size) + " bytes, sha256 " + sha);
            json::object r{{"size", t.up->size}, {"sha256", sha}};
            hpc::files::putPath(r, "path", t.path);
            auto reply = std::exchange(t.commitReply, nullptr);
            std::string id = t.commitId;
            forget(channel);
            reply(protocol::makeOk(id, std::move(r)));
        });
}

void FileService::readNext(std::uint32_t channel) {
    auto it = m_transfers.find(channel);
    if (it == m_transfers.end()) return;
    Transfer& t = *it->second;
    if (t.busy || t.reply) return;
    const auto& d = *t.down;
    bool atEnd = d.offset >= d.size;
    if (!atEnd && t.credit == 0) return;
    std::uint64_t want = atEnd ? 0 : std::min(t.credit, kReadBytes);
    t.busy = true;
    runStep<std::vector<std::string>>(
        m_io, "reading " + displayPath(t.path),
        [down = t.down, channel, want] { return files::readDownload(*down, channel, want); },
        [this, channel](Step<std::vector<std::string>> s) {
            Transfer* live = settled(channel);
            if (!live) return;
            Transfer& t = *live;
            t.busy = false;
            if (!s.value) return fail(t, s.code, s.message);
            for (auto& frame : *s.value) {
                std::uint64_t n = frame.size() - hpc::files::kFrameHeaderBytes;
                if (!m_sendBinary(std::move(frame)))
                    return fail(t, ErrorCode::Unavailable,
                                "the link to the platform could not take the bytes of " + displayPath(t.path));
                t.credit -= std::min(t.credit, n);
            }
            const auto& d = *t.down;
            if (d.offset < d.size) return readNext(channel);
            double secs = std::chrono::duration<double>(Clock::now() - t.started).count();
            std::string sha = d.sha.hex();
            log::info("file get " + displayPath(t.path) + " to " + t.agentId + ": " +
                      std::to_string(d.size - t.firstOffset) + " bytes in " + std::to_string(secs).substr(0, 6) + " s" +
                      rate(d.size - t.firstOffset, secs) + ", sha256 " + sha);
            audit(t, 0, std::to_string(d.size) + " bytes, sha256 " + sha);
            m_sendText(protocol::makeMessage("file.end", "fend-" + std::to_string(channel),
                                             {{"channel", channel}, {"size", d.size}, {"sha256", sha}}));
            forget(channel);
        });
}

void FileService::fail(Transfer& t, ErrorCode code, const std::string& message) {
    log::warning("file " + std::string(t.upload ? "put " : "get ") + displayPath(t.path) + " for " + t.agentId +
                 " on channel " + std::to_string(t.channel) + " failed: " + message);
    std::function<void()> tell;
    if (t.reply) {
        tell = [reply = std::exchange(t.reply, nullptr), text = protocol::makeError(t.requestId, code, message)] {
            reply(text);
        };
    } else if (t.commitReply) {
        tell = [reply = std::exchange(t.commitReply, nullptr), text = protocol::makeError(t.commitId, code, message)] {
            reply(text);
        };
    } else {
        tell = [send = m_sendText,
                text = protocol::makeMessage(
                    "file.end", "fend-" + std::to_string(t.channel),
                    {{"channel", t.channel}, {"error", message}, {"code", std::string(toProtocolCode(code))}})] {
            send(text);
        };
    }
    audit(t, 1, message);
    auto up = t.up;
    forget(t.channel);
    // What was written is gone before the agent hears why.
    if (up)
        discard(up, std::move(tell));
    else
        tell();
}

void FileService::discard(const std::shared_ptr<files::Upload>& upload, std::function<void()> then) {
    runStep<bool>(
        m_io, "removing the temporary file of " + displayPath(upload->path),
        [upload] {
            files::discardUpload(*upload);
            return true;
        },
        [then = std::move(then)](const Step<bool>&) {
            if (then) then();
        });
}

void FileService::audit(const Transfer& t, int status, const std::string& detail) {
    if (!m_audit) return;
    std::string what = std::string(t.upload ? "put " : "get ") + displayPath(t.path);
    m_audit(t.agentId, what + (status == 0 ? " (" + detail + ")" : ": " + detail), files::parentOf(t.path), status);
}

void FileService::forget(std::uint32_t channel) {
    auto it = m_transfers.find(channel);
    if (it == m_transfers.end()) return;
    const Transfer& t = *it->second;
    std::vector<std::string> targets{t.lexical};
    if (t.up) targets.push_back(t.path);
    // A step still running on a worker may write to the target's temporary
    // file: another upload to it waits until that step is back.
    if (t.busy)
        m_draining[channel] = targets;
    else
        for (const auto& target : targets) m_uploading.erase(target);
    m_transfers.erase(it);
    m_ended.insert(channel);
    m_endedOrder.push_back(channel);
    if (m_endedOrder.size() > kRememberEnded) {
        m_ended.erase(m_endedOrder.front());
        m_endedOrder.pop_front();
    }
}

FileService::Transfer* FileService::settled(std::uint32_t channel) {
    auto it = m_transfers.find(channel);
    if (it != m_transfers.end()) return it->second.get();
    if (auto d = m_draining.find(channel); d != m_draining.end()) {
        for (const auto& target : d->second) m_uploading.erase(target);
        m_draining.erase(d);
    }
    return nullptr;
}

void FileService::detach(std::uint32_t channel) {
    auto it = m_transfers.find(channel);
    if (it == m_transfers.end()) return;
    Transfer& t = *it->second;
    log::info("file " + std::string(t.upload ? "put " : "get ") + displayPath(t.path) + " on channel " +
              std::to_string(channel) + ": its agent has gone" +
              (t.upload ? " (the partial file stays for a resume)" : ""));
    audit(t, 1, "interrupted: the agent disconnected");
    forget(channel);
}

void FileService::closeAll() {
    while (!m_transfers.empty()) {
        Transfer& t = *m_transfers.begin()->second;
        audit(t, 1, "interrupted: the link to the platform went down");
        forget(t.channel);
    }
}

}  // namespace hpc::daemon
