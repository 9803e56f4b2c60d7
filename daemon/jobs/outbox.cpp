#include "outbox.hpp"

#include "log.hpp"
#include "util.hpp"

#include <algorithm>

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace hpc::daemon {

Outbox::Outbox(asio::io_context& ioc, JobStore& jobs, std::string daemonId, Send send)
    : m_ioc(ioc), m_jobs(jobs), m_daemonId(std::move(daemonId)), m_send(std::move(send)), m_retry(ioc) {}

void Outbox::connected() {
    m_connected = true;
    m_inFlight.clear();  // answers to frames sent on the old link will not come
    m_backoff.reset();
    flush();
}

void Outbox::disconnected() {
    m_connected = false;
    m_inFlight.clear();
    m_retry.cancel();
}

void Outbox::flush() {
    if (!m_connected) return;
    std::vector<Callback> pending;
    try {
        pending = m_jobs.pendingCallbacks(m_daemonId);
    } catch (const std::exception& e) {
        log::error(std::string("cannot read the callback outbox: ") + e.what());
        armRetry();
        return;
    }
    auto now = Clock::now();
    for (auto& cb : pending) {
        bool sent = std::any_of(m_inFlight.begin(), m_inFlight.end(), [&](const auto& kv) {
            return kv.second.callbackId == cb.callbackId && now - kv.second.at < kAnswerTimeout;
        });
        if (sent) continue;
        std::erase_if(m_inFlight, [&](const auto& kv) { return kv.second.callbackId == cb.callbackId; });
        std::string id = "cb-" + std::to_string(m_nextId++);
        if (!m_send(protocol::makeMessage("job.completed", id, cb.payload))) break;  // link down or full
        const auto* ended = cb.payload.if_contains("ended_at");
        m_inFlight[id] =
            Sent{cb.callbackId, now, ended && ended->is_number() ? ended->to_number<double>() : nowEpochSeconds()};
        try {
            m_jobs.noteAttempt(cb.callbackId);
        } catch (const std::exception&) {
            // Only a counter for diagnosis.
        }
        log::debug("callback " + cb.callbackId + " for job " + cb.jobId + " sent (attempt " +
                   std::to_string(cb.attempts + 1) + ")");
    }
    if (!pending.empty()) armRetry();
}

void Outbox::armRetry() {
    auto delay = std::min<std::chrono::milliseconds>(m_backoff.next(), kAnswerTimeout);
    m_retry.expires_after(delay);
    m_retry.async_wait([this](boost::system::error_code ec) {
        if (!ec) flush();
    });
}

bool Outbox::onResponse(const protocol::Envelope& response) {
    auto it = m_inFlight.find(response.replyTo);
    if (it == m_inFlight.end()) return response.replyTo.rfind("cb-", 0) == 0;
    std::string callbackId = it->second.callbackId;
    double endedAt = it->second.endedAt;
    m_inFlight.erase(it);
    if (!response.ok) {
        log::warning("the platform did not accept callback " + callbackId + ": " + response.errorMessage +
                     "; it will be sent again");
        return true;
    }
    try {
        m_jobs.acknowledge(callbackId);
        log::info("callback " + callbackId + " acknowledged by the platform");
        if (m_onDelivered) m_onDelivered(nowEpochSeconds() - endedAt);
    } catch (const std::exception& e) {
        // Sent again later and dropped by the platform as a retry.
        logStoreFailure("cannot remove acknowledged callback " + callbackId, e);
    }
    if (m_inFlight.empty()) m_backoff.reset();
    return true;
}

}  // namespace hpc::daemon
