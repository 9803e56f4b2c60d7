#include "job_logs.hpp"

#include "job_files.hpp"
#include "log.hpp"
#include "protocol.hpp"

#include <algorithm>
#include <vector>

namespace asio = boost::asio;
namespace json = boost::json;

namespace hpc::daemon {

struct JobLogs::Stream {
    Stream(asio::io_context& ioc) : poll(ioc) {}

    std::uint32_t channel = 0;
    std::string agentId;
    std::string jobId;
    std::string dir;
    std::string name;  ///< "stdout" or "stderr"
    bool follow = false;
    std::uint64_t fromByte = 0;
    std::uint64_t offset = 0;            ///< the next byte to send
    std::optional<std::uint64_t> endAt;  ///< without follow: the file's size when first read
    std::uint64_t credit = 0;
    bool reading = false;   ///< a slice is being read
    bool sawFinal = false;  ///< the job's final state was recorded before the last read began
    std::string requestId;  ///< until answered
    Reply reply;            ///< until answered
    asio::steady_timer poll;
    std::chrono::milliseconds pollDelay = kPollMin;
};

JobLogs::JobLogs(asio::io_context& ioc, JobDirIo& io, JobStore& jobs, std::string daemonId, SendText sendText)
    : m_ioc(ioc), m_io(io), m_jobs(jobs), m_daemonId(std::move(daemonId)), m_sendText(std::move(sendText)) {}

JobLogs::~JobLogs() { closeAll(); }

void JobLogs::open(const JobRecord& job, const json::object& payload, const std::string& requestId,
                   const std::string& agentId, Reply reply) {
    std::string name = protocol::optString(payload, "stream", 16).value_or("stdout");
    if (name != "stdout" && name != "stderr")
        throw Error(ErrorCode::BadRequest, "\"stream\" must be \"stdout\" or \"stderr\"");
    auto fromByte = protocol::optInt(payload, "from_byte", 0, kMaxOffset).value_or(0);
    bool follow = protocol::optBool(payload, "follow").value_or(false);
    auto credit = protocol::optInt(payload, "credit", 1, kMaxCredit).value_or(kDefaultCredit);
    if (m_streams.size() >= kMaxStreams)
        throw Error(ErrorCode::Limit, "this daemon already sends " + std::to_string(m_streams.size()) +
                                          " job outputs (the limit is " + std::to_string(kMaxStreams) + ")");
    if (!m_sendData) throw Error(ErrorCode::Unavailable, "this daemon cannot send job output now");
    auto s = std::make_unique<Stream>(m_ioc);
    s->channel = m_nextChannel++;
    if (m_nextChannel == 0) m_nextChannel = kFirstChannel;  // after 2^31 streams: never two alive at once
    s->agentId = agentId;
    s->jobId = job.jobId;
    s->dir = job.dir;
    s->name = name;
    s->follow = follow;
    s->fromByte = s->offset = static_cast<std::uint64_t>(fromByte);
    s->credit = static_cast<std::uint64_t>(credit);
    s->sawFinal = job.final();
    s->requestId = requestId;
    s->reply = std::move(reply);
    std::uint32_t channel = s->channel;
    m_streams.emplace(channel, std::move(s));
    pump(channel);
}

void JobLogs::pump(std::uint32_t channel) {
    auto it = m_streams.find(channel);
    if (it == m_streams.end()) return;
    Stream& s = *it->second;
    if (s.reading || s.credit == 0) return;
    if (s.endAt && s.offset >= *s.endAt) {
        end(s, "");
        return;
    }
    s.poll.cancel();
    std::uint64_t want = std::min<std::uint64_t>(kSliceBytes, s.credit);
    if (s.endAt) want = std::min(want, *s.endAt - s.offset);
    s.reading = true;
    m_io.run<JobOutputSlice>(
        "reading the " + s.name + " of job " + s.jobId,
        [dir = s.dir, name = s.name, offset = s.offset, want] {
            return readJobOutput(dir, name, offset, static_cast<std::size_t>(want));
        },
        [this, channel, finalBefore = s.sawFinal](std::optional<JobOutputSlice> slice, const std::string& error) {
            onSlice(channel, finalBefore, std::move(slice), error);
        });
}

void JobLogs::onSlice(std::uint32_t channel, bool finalBefore, std::optional<JobOutputSlice> slice,
                      const std::string& error) {
    auto it = m_streams.find(channel);
    if (it == m_streams.end()) return;  // closed meanwhile
    Stream& s = *it->second;
    s.reading = false;
    if (!slice) return fail(s, ErrorCode::Timeout, error);
    if (slice->file == JobOutputSlice::File::NotRegular)
        return fail(s, ErrorCode::PathNotAllowed,
                    "the " + s.name + " of job " + s.jobId +
                        " is not a regular file: a symlink, FIFO or directory in its place is not followed");
    if (s.reply) {
        if (finalBefore && s.offset > slice->size)
            return fail(s, ErrorCode::BadRequest,
                        "\"from_byte\" " + std::to_string(s.offset) + " is past the end of the " + s.name + " of job " +
                            s.jobId + ", which has ended (" + std::to_string(slice->size) + " bytes)");
        if (!s.follow) s.endAt = std::max(slice->size, s.offset);
        json::object result{{"channel", s.channel},    {"job_id", s.jobId},   {"stream", s.name},
                            {"from_byte", s.fromByte}, {"size", slice->size}, {"follow", s.follow}};
        std::exchange(s.reply, nullptr)(protocol::makeOk(s.requestId, std::move(result)));
        log::info("job " + s.jobId + ": its " + s.name + " goes to " + s.agentId + " on channel " +
                  std::to_string(s.channel) + " from byte " + std::to_string(s.fromByte) +
                  (s.follow ? ", followed" : ""));
    }
    if (!slice->data.empty()) {
        if (!m_sendData(s.channel, slice->data.data(), slice->data.size()))
            return end(s, "the link to the platform could not take the output (down, or its queue is full)");
        s.offset += slice->data.size();
        s.credit -= slice->data.size();
        s.pollDelay = kPollMin;
        return pump(channel);
    }
    // Nothing new at s.offset.
    if (!s.follow) return end(s, "");
    if (finalBefore) {
        // Everything written before the job's end was recorded has been sent.
        if (s.offset > slice->size)
            return end(s, "the " + s.name + " of job " + s.jobId + " is shorter than byte " + std::to_string(s.offset) +
                              " (the job truncated it?)");
        return end(s, "");
    }
    std::optional<JobRecord> job;
    if (lookup(s.jobId, job) && !job) return end(s, "job " + s.jobId + " is no longer in this daemon's store");
    if (job && job->final()) {
        s.sawFinal = true;  // one more read takes what was written before the end
        return pump(channel);
    }
    s.poll.expires_after(s.pollDelay);
    s.pollDelay = std::min(s.pollDelay * 2, kPollMax);
    s.poll.async_wait([this, channel](boost::system::error_code ec) {
        if (!ec) pump(channel);
    });
}

void JobLogs::fail(Stream& s, ErrorCode code, const std::string& message) {
    if (!s.reply) return end(s, message);
    log::info("job " + s.jobId + ": its " + s.name + " was refused to " + s.agentId + ": " + message);
    auto reply = std::exchange(s.reply, nullptr);
    std::string requestId = s.requestId;
    m_streams.erase(s.channel);
    reply(protocol::makeError(requestId, code, message));
}

void JobLogs::end(Stream& s, const std::string& error) {
    if (s.reply) return fail(s, ErrorCode::Unavailable, error.empty() ? "closed before it started" : error);
    json::object p{{"channel", s.channel}, {"job_id", s.jobId}, {"stream", s.name}, {"end_byte", s.offset}};
    if (std::optional<JobRecord> job; lookup(s.jobId, job) && job) {
        p["state"] = toWireName(job->state);
        p["exit_code"] = job->exitCode ? json::value(*job->exitCode) : json::value(nullptr);
        p["signal"] = job->signal ? json::value(*job->signal) : json::value(nullptr);
    }
    if (!error.empty()) p["error"] = error;
    std::string line = "job " + s.jobId + ": its " + s.name + " to " + s.agentId + " on channel " +
                       std::to_string(s.channel) + " ended at byte " + std::to_string(s.offset);
    if (error.empty())
        log::info(line);
    else
        log::warning(line + ": " + error);
    std::string event = protocol::makeMessage("job.logs.end", "logs-end-" + std::to_string(s.channel), std::move(p));
    m_streams.erase(s.channel);
    if (m_sendText) m_sendText(std::move(event));
}

JobLogs::Stream& JobLogs::owned(std::uint32_t channel, const std::string& agentId) {
    auto it = m_streams.find(channel);
    if (it == m_streams.end()) throw Error(ErrorCode::NotFound, "channel " + std::to_string(channel) + " is not open");
    if (it->second->agentId != agentId)
        throw Error(ErrorCode::NotOwner, "channel " + std::to_string(channel) + " belongs to another agent");
    return *it->second;
}

void JobLogs::ack(std::uint32_t channel, std::uint64_t bytes, const std::string& agentId) {
    Stream& s = owned(channel, agentId);
    s.credit = std::min<std::uint64_t>(s.credit + bytes, kMaxCredit);
    pump(channel);
}

void JobLogs::close(std::uint32_t channel, const std::string& agentId) { end(owned(channel, agentId), ""); }

void JobLogs::detach(std::uint32_t channel) {
    if (m_streams.erase(channel)) log::debug("channel " + std::to_string(channel) + ": its agent has gone");
}

void JobLogs::closeAll() { m_streams.clear(); }

void JobLogs::jobEnded(const std::string& jobId) {
    std::vector<std::uint32_t> waiting;
    for (const auto& [channel, s] : m_streams)
        if (s->jobId == jobId && s->follow && !s->reading && !s->reply) waiting.push_back(channel);
    for (auto channel : waiting) pump(channel);
}

bool JobLogs::lookup(const std::string& jobId, std::optional<JobRecord>& job) {
    try {
        job = m_jobs.get(m_daemonId, jobId);
        return true;
    } catch (const std::exception& e) {
        log::debug("cannot look up job " + jobId + ": " + e.what());
        return false;
    }
}

}  // namespace hpc::daemon
