#pragma once
/// `file.*` (docs/protocol.md §4.7): paths checked against the allowed
/// directories, and transfers that stream a file's bytes over a channel.
///
/// Everything that touches a user's files runs on JobDirIo workers (an
/// instance of its own) under its deadline (home and scratch directories are on NFS or Lustre); this
/// class, on the loop, keeps at most one such step in flight per transfer,
/// so a transfer's writes and reads happen in order. Memory stays bounded
/// by the transfer windows: an upload grants credit back only for bytes
/// written, a download reads only what its credit allows, and the windows
/// of all transfers together stay under kWindowBudget, below the link's
/// and the platform's queues.

#include "files/file_ops.hpp"
#include "jobs/job_dir_io.hpp"
#include "protocol.hpp"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace hpc::daemon {

class FileService {
public:
    using Reply = std::function<void(std::string text)>;
    /// Sends an event or a binary frame; false when the link cannot take it.
    using Send = std::function<bool(std::string frame)>;
    /// One audit row: agent, command ("put /x (12 bytes, sha256 …)"), the
    /// directory it concerns, and 0 or 1.
    using Audit =
        std::function<void(const std::string& agent, const std::string& command, const std::string& dir, int status)>;

    /// Transfer channels are numbered from here (shells count up from 1,
    /// job outputs from 0x80000000: one channel space on the wire).
    static constexpr std::uint32_t kFirstChannel = 0x40000000u;
    static constexpr std::uint32_t kLastChannel = 0x7fffffffu;
    static constexpr std::size_t kMaxTransfers = 16;
    static constexpr std::uint64_t kWindowBudget = 32 << 20;
    /// What one read of a download takes from the file (and holds).
    static constexpr std::uint64_t kReadBytes = 1 << 20;
    /// What one step hashes of a file already there (resume), so each step
    /// stays well within the I/O deadline.
    static constexpr std::uint64_t kHashStepBytes = 256 << 20;

    /// `deadline`: how long one step of file work may take (a read, a
    /// write, an open) before its request or transfer fails with TIMEOUT.
    FileService(boost::asio::io_context& ioc, std::chrono::milliseconds deadline, Send sendText, Send sendBinary);
    ~FileService();
    FileService(const FileService&) = delete;
    FileService& operator=(const FileService&) = delete;

    void setPolicy(files::FilePolicy policy) { m_policy = std::move(policy); }
    void setAudit(Audit audit) { m_audit = std::move(audit); }

    /// Handles a `file.*` request; false when `env.type` is not one. Throws
    /// hpc::Error for a bad payload before anything starts; every other
    /// answer (perhaps later) goes through `reply`.
    bool handle(const protocol::Envelope& env, const std::string& agentId, const Reply& reply);
    bool owns(std::uint32_t channel) const { return m_transfers.count(channel) != 0; }
    /// Whether a binary frame for `channel` is one of a transfer that has
    /// ended recently (frames still in flight then): dropped quietly.
    bool recentlyEnded(std::uint32_t channel) const { return m_ended.count(channel) != 0; }
    /// A binary frame of an upload. Throws hpc::Error(NotFound, BadRequest).
    void onFrame(std::string_view frame);
    /// The agent has gone (`pty.detach`): the transfer stops; an upload's
    /// temporary file stays for a resume.
    void detach(std::uint32_t channel);
    /// The link went down: every transfer stops as on detach.
    void closeAll();
    std::size_t count() const { return m_transfers.size(); }

private:
    struct Transfer;
    void simple(const protocol::Envelope& env, const std::string& agentId, const Reply& reply);
    void put(const protocol::Envelope& env, const std::string& agentId, const Reply& reply);
    void get(const protocol::Envelope& env, const std::string& agentId, const Reply& reply);
    Transfer& owned(const protocol::Envelope& env, const std::string& agentId);
    Transfer& start(const std::string& agentId, bool upload, std::uint64_t window, const std::string& requestId,
                    const Reply& reply);
    /// Resume: hashes what is already there, one step at a time, then answers.
    void hashThenAnswer(std::uint32_t channel);
    void answerPut(Transfer& t);
    void answerGet(Transfer& t);
    void writeNext(std::uint32_t channel);
    void maybeCommit(std::uint32_t channel);
    void readNext(std::uint32_t channel);
    void grant(Transfer& t, bool force);
    /// Ends a transfer on the daemon's side: an upload's temporary file is
    /// removed, then the agent told: its request's error answer when it has
    /// not been answered yet (or file.commit's), else `file.end`.
    void fail(Transfer& t, ErrorCode code, const std::string& message);
    /// Forgets a transfer (its channel's late frames are then dropped).
    void forget(std::uint32_t channel);
    /// In a worker step's answer: the transfer, or null when it was
    /// forgotten meanwhile (its target is then free for another upload).
    Transfer* settled(std::uint32_t channel);
    void audit(const Transfer& t, int status, const std::string& detail);
    /// Removes an upload's temporary file, then runs `then` (on the loop).
    void discard(const std::shared_ptr<files::Upload>& upload, std::function<void()> then);
    std::uint64_t windowsInUse() const;

    JobDirIo m_io;  ///< its own workers: transfers never wait behind job-directory work, nor it behind them
    Send m_sendText;
    Send m_sendBinary;
    Audit m_audit;
    files::FilePolicy m_policy;
    std::map<std::uint32_t, std::unique_ptr<Transfer>> m_transfers;
    std::set<std::string> m_uploading;  ///< targets of uploads running now
    /// Targets of forgotten uploads whose last step is still on a worker.
    std::map<std::uint32_t, std::vector<std::string>> m_draining;
    std::set<std::uint32_t> m_ended;  ///< recently ended channels
    std::deque<std::uint32_t> m_endedOrder;
    std::uint32_t m_nextChannel = kFirstChannel;
};

}  // namespace hpc::daemon
