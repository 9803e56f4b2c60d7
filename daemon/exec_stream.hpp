#pragma once
/// Streamed commands: `exec` with `"stream": true` (docs/protocol.md §4.3).
///
/// The answer opens a channel. The command's stdout and stderr go out as
/// binary frames tagged by stream (protocol::makeExecFrame) under one output
/// credit that the agent grants back with `pty.ack`, as for a shell: with no
/// credit the pipes are not read, they fill, and the command blocks, so a slow
/// agent holds the command, never the daemon's memory. With `stream_stdin`
/// the agent sends stdin as frames within a window the daemon grants back
/// (`exec.ack`) as it writes them to the command, then `exec.eof`. The channel
/// ends with `exec.end` (the buffered result's fields, without the output).
/// Timeout, kill grace and confinement are the buffered exec's; a closed
/// channel, a gone agent or a dropped link kill the command's process group.

#include "exec.hpp"

#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>

namespace hpc::daemon {

class ExecStreams {
public:
    /// Sends a text frame (an event); false when the link cannot take it.
    using SendText = std::function<bool(std::string text)>;
    /// Sends a binary frame built by the caller; false as SendText.
    using SendFrame = std::function<bool(std::string frame)>;
    /// Called once when a command has ended (for the audit log and the log).
    using Ended = std::function<void(const ExecResult& result)>;

    /// Their channels, in the daemon's one channel space (shells count up
    /// from 1, transfers from 0x40000000, job outputs from 0x80000000).
    static constexpr std::uint32_t kFirstChannel = 0x20000000u;
    static constexpr std::uint32_t kLastChannel = 0x3fffffffu;
    static constexpr std::size_t kMaxStreams = 32;
    static constexpr std::uint64_t kDefaultCredit = 1 << 20;
    /// Stdin bytes the daemon holds for a command at most (the agent's window).
    static constexpr std::uint64_t kStdinWindow = 1 << 20;
    /// The largest stdin frame taken (bytes after the header).
    static constexpr std::size_t kMaxFrameBytes = 1 << 20;
    /// The most read from a pipe at once (and so the largest output frame).
    static constexpr std::size_t kReadBytes = 64 * 1024;

    struct Opened {
        std::uint32_t channel = 0;
        int pid = 0;
        std::uint64_t stdinCredit = 0;  ///< 0 without stream_stdin
    };

    explicit ExecStreams(boost::asio::io_context& ioc);
    ~ExecStreams();
    ExecStreams(const ExecStreams&) = delete;
    ExecStreams& operator=(const ExecStreams&) = delete;

    void setSenders(SendText text, SendFrame frame);

    /// Starts `request` (its stdinData is ignored) for `agentId`. The caller
    /// sends the answer before returning to the loop: frames follow it.
    /// Throws hpc::Error: Limit, Unavailable (no link to send on), and
    /// ChildProcess::start's.
    Opened open(ExecRequest request, std::uint64_t credit, bool streamStdin, const std::string& agentId, Ended ended);

    bool owns(std::uint32_t channel) const { return m_runs.count(channel) != 0; }
    /// Ended lately (the last 1024): bytes still in flight for it are dropped.
    bool recentlyEnded(std::uint32_t channel) const;
    /// A binary frame on one of its channels. A frame the protocol does not
    /// allow (not stdin, empty, too long, beyond the window, after exec.eof)
    /// ends the stream: the command is killed and exec.end says why.
    void onFrame(std::span<const char> frame);
    /// `pty.ack`: more output credit. Throws hpc::Error(NotFound, NotOwner).
    void ack(std::uint32_t channel, std::uint64_t bytes, const std::string& agentId);
    /// `exec.eof`: stdin ends once what was sent is written. Throws
    /// hpc::Error(NotFound, NotOwner, BadRequest when stdin is not streamed).
    void eof(std::uint32_t channel, const std::string& agentId);
    /// `pty.close`: SIGTERM to the command's group, SIGKILL after its kill
    /// grace; output still flows until exec.end. Throws as ack.
    void close(std::uint32_t channel, const std::string& agentId);
    /// The agent has gone (`pty.detach`): the command is killed, no word sent.
    void detach(std::uint32_t channel);
    /// The link went down: every command is killed (the platform has told
    /// their agents).
    void closeAll();
    std::size_t count() const { return m_runs.size(); }

private:
    class Run;
    friend class Run;
    Run& owned(std::uint32_t channel, const std::string& agentId);
    void forget(std::uint32_t channel);

    boost::asio::io_context& m_ioc;
    SendText m_sendText;
    SendFrame m_sendFrame;
    std::map<std::uint32_t, std::shared_ptr<Run>> m_runs;
    std::uint32_t m_nextChannel = kFirstChannel;
    std::deque<std::uint32_t> m_ended;
};

}  // namespace hpc::daemon
