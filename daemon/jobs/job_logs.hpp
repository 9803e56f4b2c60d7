#pragma once
/// `job.logs`: a job's stdout or stderr sent to its agent from a byte offset,
/// once or followed while the job runs (docs/protocol.md §4.5).
///
/// A stream is a channel like a shell's: its bytes go out as binary frames
/// under the same credit as PTY output (`pty.ack`), so an agent that reads
/// slowly holds the stream to its window, never the daemon's memory. The file
/// is read off the loop (JobDirIo: job directories are on NFS or Lustre), one
/// slice at a time, each opening it afresh: only the job's own regular file,
/// never through a symlink, and a writer's close on another node is seen
/// (NFS close-to-open). A followed stream with nothing new polls the file,
/// more slowly while it stays quiet, and ends once the job's final state is
/// recorded and every byte written before it has been sent.

#include "errors.hpp"
#include "job_dir_io.hpp"
#include "job_store.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace hpc::daemon {

struct JobOutputSlice;

class JobLogs {
public:
    using Reply = std::function<void(std::string text)>;
    /// Sends an event; false when the link cannot take it.
    using SendText = std::function<bool(std::string text)>;
    /// Sends bytes of a channel as a binary frame; false when the link cannot take them.
    using SendData = std::function<bool(std::uint32_t channel, const char* data, std::size_t size)>;

    /// Log channels are numbered from here; shells count up from 1, and both
    /// share the daemon's one channel space on the wire.
    static constexpr std::uint32_t kFirstChannel = 0x80000000u;
    static constexpr std::size_t kMaxStreams = 64;
    /// The most read from the file at once (and so held per stream).
    static constexpr std::size_t kSliceBytes = 256 * 1024;
    static constexpr std::int64_t kDefaultCredit = 1 << 20;
    static constexpr std::int64_t kMaxCredit = 64 << 20;
    static constexpr std::int64_t kMaxOffset = 1LL << 53;  ///< fits a double
    static constexpr std::chrono::milliseconds kPollMin{200};
    static constexpr std::chrono::milliseconds kPollMax{2000};

    JobLogs(boost::asio::io_context& ioc, JobDirIo& io, JobStore& jobs, std::string daemonId, SendText sendText);
    ~JobLogs();
    JobLogs(const JobLogs&) = delete;
    JobLogs& operator=(const JobLogs&) = delete;

    void setDataSender(SendData send) { m_sendData = std::move(send); }

    /// `job.logs` for `job`, whose owner the caller has checked. Throws
    /// hpc::Error (BadRequest for the payload, Limit) before anything starts;
    /// otherwise answers through `reply` once the first slice is read (an
    /// error then: PathNotAllowed, Timeout, BadRequest for an offset past
    /// the end of an ended job's output), and streams after that answer.
    void open(const JobRecord& job, const boost::json::object& payload, const std::string& requestId,
              const std::string& agentId, Reply reply);
    bool owns(std::uint32_t channel) const { return m_streams.count(channel) != 0; }
    /// More credit (`pty.ack` on a log channel). Throws hpc::Error(NotFound, NotOwner).
    void ack(std::uint32_t channel, std::uint64_t bytes, const std::string& agentId);
    /// `job.logs.close`: ends the stream now, with its `job.logs.end`.
    /// Throws hpc::Error(NotFound, NotOwner).
    void close(std::uint32_t channel, const std::string& agentId);
    /// The agent has gone (`pty.detach`): the stream ends without a word.
    void detach(std::uint32_t channel);
    /// The link went down: every stream ends without a word (the platform
    /// has told their agents, who resume from their last byte).
    void closeAll();
    /// The job's final state is recorded: its followed streams read what is
    /// left now rather than at their next poll.
    void jobEnded(const std::string& jobId);
    std::size_t count() const { return m_streams.size(); }

private:
    struct Stream;
    void pump(std::uint32_t channel);
    void onSlice(std::uint32_t channel, bool finalBefore, std::optional<JobOutputSlice> slice,
                 const std::string& error);
    /// Answers the request with an error, or ends an answered stream with it.
    void fail(Stream& s, ErrorCode code, const std::string& message);
    /// Sends `job.logs.end` (with `error` when not empty) and forgets the stream.
    void end(Stream& s, const std::string& error);
    Stream& owned(std::uint32_t channel, const std::string& agentId);
    /// False when the store could not be read (the job then counts as running).
    bool lookup(const std::string& jobId, std::optional<JobRecord>& job);

    boost::asio::io_context& m_ioc;
    JobDirIo& m_io;
    JobStore& m_jobs;
    std::string m_daemonId;
    SendText m_sendText;
    SendData m_sendData;
    std::map<std::uint32_t, std::unique_ptr<Stream>> m_streams;
    std::uint32_t m_nextChannel = kFirstChannel;
};

}  // namespace hpc::daemon
