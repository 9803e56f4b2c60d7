#include "state_keeper.hpp"

#include "log.hpp"
#include "util.hpp"

#include <boost/asio/post.hpp>

#include <algorithm>
#include <ctime>

namespace asio = boost::asio;

namespace hpc::daemon {
namespace {

std::string isoTime(double epochSeconds) {
    std::time_t t = static_cast<std::time_t>(epochSeconds);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
    return buf;
}

}  // namespace

StateKeeper::StateKeeper(asio::io_context& ioc, Store& store, std::string daemonId)
    : m_ioc(ioc),
      m_store(store),
      m_daemonId(std::move(daemonId)),
      m_pruner(store, m_daemonId),
      m_timer(ioc),
      m_probe(ioc) {
    // Told from inside a failing statement: act on the next turn of the loop.
    m_store.health().setListener(
        [this](bool full) { asio::post(m_ioc, [this, full] { full ? onFull() : onWritable(); }); });
    if (m_store.health().full()) onFull();
}

StateKeeper::~StateKeeper() { m_store.health().setListener({}); }

std::string StateKeeper::warning() const {
    const auto& health = m_store.health();
    if (!health.full()) return m_warning;
    std::string w = "disk full since " + isoTime(health.fullSince()) + ": " + health.message();
    return m_warning.empty() ? w : w + "; " + m_warning;
}

void StateKeeper::noteWarning() {
    std::string now = warning();
    if (now == m_toldWarning) return;
    m_toldWarning = now;
    if (m_onWarning) m_onWarning(now);
}

void StateKeeper::onFull() {
    noteWarning();
    if (!m_store.health().full() || m_probing || m_stopped) return;
    m_probing = true;
    m_probeDelay = std::chrono::milliseconds(500);
    armProbe();
}

void StateKeeper::armProbe() {
    m_probe.expires_after(m_probeDelay);
    m_probe.async_wait([this](boost::system::error_code ec) {
        if (ec || m_stopped) return;
        if (m_store.probeSpace(true)) return;  // onWritable comes through the listener
        m_probeDelay = std::min<std::chrono::milliseconds>(m_probeDelay * 2, kMaxProbeInterval);
        armProbe();
    });
}

void StateKeeper::onWritable() {
    if (m_store.health().full() || m_stopped) return;
    m_probing = false;
    m_probe.cancel();
    noteWarning();
    if (m_onWritable) m_onWritable();
    if (!busy()) startPass();
}
std::chrono::milliseconds StateKeeper::interval() const {
    auto shortest = std::min(m_settings.auditRetention, m_settings.jobRetention);
    auto tenth = std::chrono::duration_cast<std::chrono::milliseconds>(shortest) / 10;
    return std::clamp<std::chrono::milliseconds>(tenth, std::chrono::seconds(1), std::chrono::minutes(10));
}

void StateKeeper::apply(const Settings& settings) {
    m_settings = settings;
    log::setRotation(settings.logMaxBytes, Settings::kLogFiles);
    m_stopped = false;
    if (busy()) {
        m_passQueued = true;  // the running pass has the old settings
        return;
    }
    startPass();
}

void StateKeeper::stop() {
    m_stopped = true;
    m_timer.cancel();
    m_probe.cancel();
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
            // the store has said so; other errors once; try again later.
            if (!m_failing && !sqlite::isDiskFull(e))
                log::warning(std::string("pruning state.db failed, will retry: ") + e.what());
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
    noteWarning();
    auto dirs = m_pruner.takeJobDirs();
    if (dirs.empty() || !m_removeJobDirs) {
        publish(r);
        return;
    }
    // The rows are gone for good: their directories go too, off the loop.
    m_removingDirs = true;
    m_removeJobDirs(std::move(dirs), [this, report = r](std::int64_t removed, std::int64_t bytes) mutable {
        m_removingDirs = false;
        report.jobDirs = removed;
        report.jobDirBytes = bytes;
        m_jobDirsRemoved += removed;
        m_jobDirBytesRemoved += bytes;
        publish(report);
    });
}

void StateKeeper::publish(const PruneReport& report) {
    m_last = report;
    if (report.auditRows > 0 || report.jobs > 0) log::info("state.db pruned: " + report.summary());
    if (m_stopped) return;
    if (m_passQueued)
        startPass();
    else
        arm();
}

void StateKeeper::arm() {
    if (m_stopped) return;
    m_timer.expires_after(interval());
    m_timer.async_wait([this](boost::system::error_code ec) {
        if (ec || m_stopped || busy()) return;
        if (m_store.health().full())
            arm();  // nothing can be deleted without room for the WAL; space back starts a pass
        else
            startPass();
    });
}

}  // namespace hpc::daemon
