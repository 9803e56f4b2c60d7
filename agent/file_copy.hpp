#pragma once
/// Copying files between this machine and daemons with scp's conventions
/// (`hpc-agent cp`, and the library call behind it): several sources into
/// a directory, directories with -r (modes kept, symlinks copied as
/// symlinks), -p for times, "-" for stdin or stdout.
///
/// A download is written to a temporary name beside its target and renamed
/// once its SHA-256 matches, as the daemon does for an upload, so a failure
/// never leaves a partial file under the final name. When the connection or
/// the daemon goes away mid-transfer, the copy connects again with backoff
/// and resumes from the bytes already there (checked by their SHA-256).

#include "agent_client.hpp"
#include "errors.hpp"
#include "file_transfer.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hpc::agent {

struct CopyOptions {
    bool recursive = false;
    bool preserve = false;  ///< modes exactly, and the times of files
    /// Continue transfers an earlier run left behind (the daemon's or this
    /// machine's partial file), rather than starting them again.
    bool resume = false;
    std::optional<std::uint64_t> window;
    /// Reconnections per transfer when the link breaks.
    int retries = 10;
    std::chrono::milliseconds retryBase{500};
    std::chrono::milliseconds retryCap{std::chrono::seconds(8)};
};

/// One file, directory or symlink: copied, or why not.
struct CopyItem {
    std::string source;
    std::string target;
    std::string type;  ///< "file", "dir", "symlink"
    std::uint64_t bytes = 0;
    double seconds = 0;
    std::string sha256;
    std::uint64_t resumedFrom = 0;
    bool ok = true;
    ErrorCode code = ErrorCode::Internal;
    std::string error;
};

struct CopyCallbacks {
    /// A file's bytes so far (`name` as shown to a person), often.
    std::function<void(const std::string& name, std::uint64_t done, std::optional<std::uint64_t> total)> progress;
    /// Each item once finished, copied or failed.
    std::function<void(const CopyItem& item)> done;
    /// The link broke; the copy connects again after `delay`.
    std::function<void(const std::string& why, std::chrono::milliseconds delay)> retrying;
    /// Polled between frames: true stops the copy (Ctrl-C).
    std::function<bool()> interrupted;
};

/// One side of a copy: a daemon's path, or a local one ("-": stdin/stdout).
struct CopyEndpoint {
    std::string daemonId;  ///< empty: local
    std::string path;
    bool remote() const { return !daemonId.empty(); }
};

/// Parses "DAEMON:PATH" as scp does: a daemon id (never holding '/' or ':')
/// before the first colon; anything else is a local path ("./a:b" for a
/// local name with a colon).
CopyEndpoint parseEndpoint(const std::string& arg);

class Copier {
public:
    using Connect = std::function<std::unique_ptr<AgentClient>()>;

    Copier(Connect connect, CopyOptions options, CopyCallbacks callbacks = {});

    /// Copies every source to `target`: all local and a remote target, or
    /// all remote and a local one. Several sources need a target that is a
    /// directory. Failures of single items are recorded and the rest goes
    /// on; throws hpc::Error only for what stops everything (bad arguments,
    /// no connection at all).
    void copy(const std::vector<CopyEndpoint>& sources, const CopyEndpoint& target);

    const std::vector<CopyItem>& items() const { return m_items; }
    /// True when every item was copied.
    bool ok() const;

private:
    AgentClient& client();
    /// Runs `step` on a connection; when it breaks (Unavailable), connects
    /// again with backoff and runs it again with the attempt number, up to
    /// `retries` times.
    template <class T>
    T withRetries(const std::function<T(AgentClient&, int attempt)>& step, int retries);
    FileClient files(AgentClient& c, const std::string& daemonId);

    void upload(const std::string& local, const std::string& daemonId, const std::string& remote, bool topLevel);
    void uploadFile(const std::string& local, const std::string& daemonId, const std::string& remote);
    void uploadStdin(const std::string& daemonId, const std::string& remote);
    void download(const std::string& daemonId, const RemoteEntry& entry, const std::string& remote,
                  const std::string& local);
    void downloadFile(const std::string& daemonId, const std::string& remote, const std::string& local);
    void downloadStdout(const std::string& daemonId, const std::string& remote);
    std::optional<RemoteEntry> remoteStat(const std::string& daemonId, const std::string& path);
    void record(CopyItem item);
    void fail(const std::string& source, const std::string& target, const std::string& type, const Error& e);
    Progress progressFor(const std::string& name) const;

    Connect m_connect;
    CopyOptions m_options;
    CopyCallbacks m_callbacks;
    std::unique_ptr<AgentClient> m_client;
    bool m_connectedOnce = false;
    std::vector<CopyItem> m_items;
    mode_t m_umask = 022;
};

}  // namespace hpc::agent
