#pragma once
/// `file.*` requests of one daemon on one agent connection
/// (docs/protocol.md §4.7): stat, list, mkdir, symlink, and the transfers,
/// which stream a descriptor's bytes to the daemon or the daemon's bytes to
/// a descriptor under the credit windows, checked by SHA-256 on both sides.
/// Local files (temporary names, modes, retries) are file_copy.hpp's.

#include "agent_client.hpp"
#include "file_wire.hpp"

#include <boost/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace hpc::agent {

/// What file.stat or a file.list entry says of a remote path.
struct RemoteEntry {
    std::string path;  ///< file.stat: resolved; listing: empty
    std::string name;  ///< listing: the entry's name
    std::string type;  ///< "file", "dir", "symlink", "other"
    std::uint64_t size = 0;
    std::uint32_t mode = 0;
    double mtime = 0, atime = 0;
    std::string target;  ///< a symlink's content
    static RemoteEntry fromJson(const boost::json::object& o);
};

/// Bytes of the file done so far (a resumed prefix included), and its size
/// when known.
using Progress = std::function<void(std::uint64_t done, std::optional<std::uint64_t> total)>;

struct TransferResult {
    std::string path;  ///< the remote file, as the daemon resolved it
    std::uint64_t size = 0;
    std::string sha256;
    std::uint64_t resumedFrom = 0;  ///< bytes that were already there
    RemoteEntry remote;             ///< a download's source: mode and times
};

/// A local source for an upload.
struct UploadSource {
    int fd = -1;
    bool seekable = true;  ///< a regular file: read with pread, resumable
    std::optional<std::uint64_t> size;
    /// Asked after the last byte: true when the source changed while it was
    /// read (its size or times), which fails the upload instead of
    /// committing a mixture.
    std::function<bool()> changed;
};

/// A local sink for a download, with what is already in it.
struct DownloadSink {
    int fd = -1;
    bool seekable = true;           ///< a regular file: can be truncated to start again
    std::uint64_t have = 0;         ///< bytes already there (resume)
    hpc::files::Sha256 haveSha256;  ///< of those bytes
};

/// The SHA-256 of the first `size` bytes of a file (added to `sha`); false
/// when it is shorter.
bool hashFilePrefix(int fd, std::uint64_t size, hpc::files::Sha256& sha);

class FileClient {
public:
    FileClient(AgentClient& client, std::string daemonId) : m_client(client), m_daemon(std::move(daemonId)) {}

    /// Checked between frames: true makes the transfer stop (file.cancel)
    /// and throw hpc::Error(Unavailable, "interrupted").
    void setInterrupted(std::function<bool()> interrupted) { m_interrupted = std::move(interrupted); }

    /// Each throws hpc::Error with the daemon's code and message.
    RemoteEntry stat(const std::string& path);
    /// Every entry, paging through long directories.
    std::vector<RemoteEntry> list(const std::string& path);
    /// True when it was created, false when the directory existed.
    bool mkdir(const std::string& path, std::uint32_t mode);
    /// A directory's exact mode and times (cp -p, once its content is in).
    void setattr(const std::string& path, std::uint32_t mode, double atime, double mtime);
    void symlink(const std::string& path, const std::string& target);

    /// Sends the source's bytes (from its start, or from where an earlier
    /// upload stopped when spec.resume and the bytes there match) and
    /// commits. Throws hpc::Error: Unavailable when the connection or the
    /// daemon went away (retry with resume), BadRequest when the source
    /// changed while it was read, the daemon's errors otherwise.
    TransferResult put(hpc::files::PutSpec spec, UploadSource& source, const Progress& progress);
    /// Receives the file into the sink (after what it has, when the daemon
    /// finds those bytes the same) and checks its SHA-256. Throws as put.
    TransferResult get(hpc::files::GetSpec spec, DownloadSink& sink, const Progress& progress);

private:
    boost::json::object request(const std::string& type, boost::json::object payload);
    void cancel(std::uint32_t channel);
    /// Handles one frame that arrived during a transfer on `channel`:
    /// credit (upload), or the end. Throws for the channel's error end.
    struct Incoming;
    void onFrame(const net::WsFrame& frame, std::uint32_t channel, Incoming& in);
    void checkInterrupted(std::uint32_t channel);

    AgentClient& m_client;
    std::string m_daemon;
    std::function<bool()> m_interrupted;
};

}  // namespace hpc::agent
