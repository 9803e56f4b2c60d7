#include "state_keeper.hpp"

#include "log.hpp"
#include "util.hpp"

#include <boost/asio/post.hpp>

#include <algorithm>

namespace asio = boost::asio;

namespace hpc::daemon {

StateKeeper::StateKeeper(asio::io_context& ioc, Store& store, std::string daemonId)
    : m_ioc(ioc), m_store(store), m_daemonId(std::move(daemonId)), m_pruner(store, m_daemonId), m_timer(ioc) {}

std::chrono::milliseconds StateKeeper::interval() const {
    auto shortest = std::min(m_settings.auditRetention, m_settings.jobRetention);
    auto tenth = std::chrono::duration_cast<std::chrono::milliseconds>(shortest) / 10;
    return std::clamp<std::chrono::milliseconds>(tenth, std::chrono::seconds(1), std::chrono::minutes(10));
}

void StateKeeper::apply(const Settings& settings) {
    m_settings = settings;
    log::setRotation(settings.logMaxBytes, Settings::kLogFiles);
    m_stopped = false;
    if (m_pruner.active()) {
        m_passQueued = true;  // the running pass has the old settings
        return;
    }
    startPass();
}

void StateKeeper::stop() {
    m_stopped = true;
    m_timer.cancel();
}

void StateKeeper::startPass() {
    m_timer.cancel();
    m_passQueued = false;
    m_pruner.begin(m_settings, nowEpochSeconds());
    stepSoon();
}

void StateKeeper::stepSoon() {
    asio::post(m_ioc, [this] {
        if (m_stopped) return;
        bool more = false;
        try {
            more = m_pruner.step();
        } catch (const std::exception& e) {
            // A full disk makes deletes fail too (the WAL must grow first):
            // say it once, and try again at the next pass.
            if (!m_failing) log::warning(std::string("pruning state.db failed, will retry: ") + e.what());
            m_failing = true;
            arm();
            return;
        }
        if (more)
            stepSoon();
        else
            finishPass();
    });
}

void StateKeeper::finishPass() {
    m_failing = false;
    const PruneReport& r = m_pruner.report();
    m_last = r;
    if (r.auditRows > 0 || r.jobs > 0) log::info("state.db pruned: " + r.summary());
    std::string cap = formatSize(m_settings.stateMaxBytes);
    if (r.capForced()) {
        m_warning = "state.db reached state_max_bytes (" + cap + "): " + std::to_string(r.capAuditRows) +
                    " audit rows and " + std::to_string(r.capJobs) +
                    " jobs were removed before their retention ended; raise it with hpc-daemonctl config set "
                    "state_max_bytes SIZE, or shorten audit_retention/job_retention";
        log::warning(m_warning);
    } else if (r.overCapWithNothingPrunable) {
        std::string w = "state.db is over state_max_bytes (" + cap +
                        ") with only live jobs and unacknowledged callbacks left, which are never pruned";
        if (w != m_warning) log::warning(w);
        m_warning = w;
    } else {
        m_warning.clear();
    }
    if (m_passQueued)
        startPass();
    else
        arm();
}

void StateKeeper::arm() {
    if (m_stopped) return;
    m_timer.expires_after(interval());
    m_timer.async_wait([this](boost::system::error_code ec) {
        if (!ec && !m_stopped && !m_pruner.active()) startPass();
    });
}

}  // namespace hpc::daemon
