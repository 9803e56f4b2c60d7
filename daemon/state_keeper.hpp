#pragma once
/// Keeps the state file bounded while the daemon runs (issue 21): a prune
/// pass at start, on a timer and whenever the settings change, done as short
/// batches (common/retention.hpp), each its own turn of the event loop, so
/// shells and links are served between them.
///
/// And gets the daemon through a full disk or quota: while the store is full
/// (Store::health()) it probes for space on a timer, and once space is back
/// it has what waited written (setOnWritable: the job ends that could not be
/// recorded, the outbox) and a prune pass runs.

#include "retention.hpp"
#include "settings.hpp"
#include "store.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace hpc::daemon {

class StateKeeper {
public:
    StateKeeper(boost::asio::io_context& ioc, Store& store, std::string daemonId);
    ~StateKeeper();
    StateKeeper(const StateKeeper&) = delete;
    StateKeeper& operator=(const StateKeeper&) = delete;

    /// (Re)applies settings and starts a pass now (or right after the one
    /// running). Also sets the log file's rotation size.
    void apply(const Settings& settings);
    void stop();

    const Settings& settings() const { return m_settings; }
    /// state.db and its WAL on disk, now.
    std::int64_t stateBytes() const { return m_pruner.fileBytes(); }
    /// The last finished pass, if any.
    const std::optional<PruneReport>& lastPrune() const { return m_last; }
    /// Set while the disk or quota is full, or the size cap forces pruning
    /// inside retention (or cannot be met): a sentence for status.
    std::string warning() const;

    /// Removes the directories of the jobs a pass deleted (off the loop) and
    /// calls back with how many went and their bytes; the pass's report
    /// (lastPrune) is published once it has.
    using JobDirRemover =
        std::function<void(std::vector<PrunedJobDir>, std::function<void(std::int64_t, std::int64_t)>)>;
    void setJobDirRemover(JobDirRemover remover) { m_removeJobDirs = std::move(remover); }
    /// Job directories removed since the daemon started, and their bytes.
    std::int64_t jobDirsRemoved() const { return m_jobDirsRemoved; }
    std::int64_t jobDirBytesRemoved() const { return m_jobDirBytesRemoved; }

    /// Told with warning() each time it changes ("" when it clears), on the
    /// loop: the daemon passes it on to the platform.
    void setOnWarning(std::function<void(const std::string&)> onWarning) { m_onWarning = std::move(onWarning); }

    /// Told once the store is writable again after a full disk or quota.
    void setOnWritable(std::function<void()> onWritable) { m_onWritable = std::move(onWritable); }
    /// How often a full store is probed for space, at most.
    static constexpr std::chrono::seconds kMaxProbeInterval{5};
    /// How long between passes: a tenth of the shortest retention, within
    /// [1 s, 10 min], so short retentions (tests, strict sites) stay close.
    std::chrono::milliseconds interval() const;

private:
    void startPass();
    /// A pass runs, or its job directories are being removed.
    bool busy() const { return m_pruner.active() || m_removingDirs; }
    void stepSoon();
    void finishPass();
    /// The pass and its job directories are done: report, then the next pass.
    void publish(const PruneReport& report);
    void arm();
    void onFull();
    void onWritable();
    void armProbe();
    /// Tells setOnWarning's listener when warning() differs from what it was last told.
    void noteWarning();

    boost::asio::io_context& m_ioc;
    Store& m_store;
    std::string m_daemonId;
    Settings m_settings;
    StatePruner m_pruner;
    boost::asio::steady_timer m_timer;
    std::optional<PruneReport> m_last;
    std::string m_warning;
    bool m_passQueued = false;
    bool m_removingDirs = false;  ///< the last pass's job directories are being removed
    JobDirRemover m_removeJobDirs;
    std::int64_t m_jobDirsRemoved = 0;
    std::int64_t m_jobDirBytesRemoved = 0;
    bool m_stopped = false;
    bool m_failing = false;  ///< the last pass failed: log the next failure at debug only
    boost::asio::steady_timer m_probe;
    std::chrono::milliseconds m_probeDelay{0};
    bool m_probing = false;
    std::function<void()> m_onWritable;
    std::function<void(const std::string&)> m_onWarning;
    std::string m_toldWarning;
};

}  // namespace hpc::daemon
