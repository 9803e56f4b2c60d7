#pragma once
/// Keeps the state file bounded while the daemon runs (issue 21): a prune
/// pass at start, on a timer and whenever the settings change, done as short
/// batches (common/retention.hpp), each its own turn of the event loop, so
/// shells and links are served between them.

#include "retention.hpp"
#include "settings.hpp"
#include "store.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <optional>
#include <string>

namespace hpc::daemon {

class StateKeeper {
public:
    StateKeeper(boost::asio::io_context& ioc, Store& store, std::string daemonId);

    /// (Re)applies settings and starts a pass now (or right after the one
    /// running). Also sets the log file's rotation size.
    void apply(const Settings& settings);
    void stop();

    const Settings& settings() const { return m_settings; }
    /// state.db and its WAL on disk, now.
    std::int64_t stateBytes() const { return m_pruner.fileBytes(); }
    /// The last finished pass, if any.
    const std::optional<PruneReport>& lastPrune() const { return m_last; }
    /// Set while the size cap forces pruning inside retention (or cannot be
    /// met): a sentence for status and the log.
    const std::string& warning() const { return m_warning; }
    /// How long between passes: a tenth of the shortest retention, within
    /// [1 s, 10 min], so short retentions (tests, strict sites) stay close.
    std::chrono::milliseconds interval() const;

private:
    void startPass();
    void stepSoon();
    void finishPass();
    void arm();

    boost::asio::io_context& m_ioc;
    Store& m_store;
    std::string m_daemonId;
    Settings m_settings;
    StatePruner m_pruner;
    boost::asio::steady_timer m_timer;
    std::optional<PruneReport> m_last;
    std::string m_warning;
    bool m_passQueued = false;
    bool m_stopped = false;
    bool m_failing = false;  ///< the last pass failed: log the next failure at debug only
};

}  // namespace hpc::daemon
