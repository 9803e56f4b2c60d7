#pragma once
/// A process the daemon starts (a command, a shell, a local job) or follows
/// (a local job adopted after a restart), on the daemon's io_context: its
/// start, a failure to start as an hpc::Error, its end reported once on the
/// loop (ExitWatch: a pidfd, or SIGCHLD where the kernel has none), and
/// signals to its whole process group, TERM then KILL after a grace.

#include "process.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <sys/types.h>

namespace hpc::daemon {

/// Used on the loop's thread only. It keeps itself alive while it is
/// followed and while a KILL is due, whoever else holds it.
class ChildProcess : public std::enable_shared_from_this<ChildProcess> {
public:
    /// How it ended: the wait status for our child, nothing for a process
    /// we only follow (or a status lost to another reaper).
    using OnExit = std::function<void(std::optional<ExitStatus>)>;
    /// Whose program it is decides what a failure to start it means: an
    /// agent's (a missing or forbidden program is the agent's NotFound or
    /// BadRequest) or the daemon's own (any failure is Internal).
    enum class ProgramOf { Agent, Daemon };

    /// Starts `options` as the leader of a new session (so of its own
    /// process group: newSession is always set) and follows it. `onExit`
    /// runs once, on the loop, never from within this call. `name` ("the
    /// command", "job 42") is for error messages and logs. Throws
    /// hpc::Error: NotFound (ENOENT) or BadRequest (EACCES) for an agent's
    /// program, Internal for anything else.
    static std::shared_ptr<ChildProcess> start(boost::asio::io_context& ioc, SpawnOptions options, std::string name,
                                               OnExit onExit, ProgramOf whose = ProgramOf::Agent);
    /// Follows `pid`, a process group leader that is not our child (not
    /// reaped: `onExit` gets nothing). When it is already gone, `onExit` is
    /// called on the next turn of the loop. Never throws.
    static std::shared_ptr<ChildProcess> follow(boost::asio::io_context& ioc, pid_t pid, std::string name,
                                                OnExit onExit);

    pid_t pid() const { return m_pid; }
    /// Until its end has been seen (or release()).
    bool running() const { return m_watch.has_value(); }
    /// The parent's ends of the pipes asked for in SpawnOptions (started
    /// processes only); take them with std::move.
    SpawnedProcess& pipes() { return m_pipes; }

    /// Also called, with the same signal, whenever the group is signalled:
    /// for what holds processes that left the group (a job's systemd scope).
    void alsoSignal(std::function<void(int sig)> hook) { m_alsoSignal = std::move(hook); }
    /// Sends `sig` to the process group, whether or not its leader has
    /// ended (what it left behind is still in the group; the group's id is
    /// not reused while any member lives).
    void signalGroup(int sig);
    /// TERM to the group now and KILL after `grace`, unless kill() comes
    /// first. A second call starts the grace again.
    void terminate(std::chrono::milliseconds grace);
    /// KILL to the group now; a pending KILL of terminate() is dropped.
    void kill();
    /// Stops following without a signal: the process runs on (a local job
    /// outlives the daemon) and `onExit` is never called.
    void release();

private:
    ChildProcess(boost::asio::io_context& ioc, pid_t pid, std::string name, OnExit onExit);
    void watch(bool ourChild);
    void exited(std::optional<ExitStatus> status);

    boost::asio::io_context& m_ioc;
    pid_t m_pid;
    std::string m_name;
    OnExit m_onExit;
    SpawnedProcess m_pipes;
    std::function<void(int)> m_alsoSignal;
    std::optional<std::uint64_t> m_watch;  ///< the ExitWatch token while it is followed
    boost::asio::steady_timer m_grace;
};

}  // namespace hpc::daemon
