#include "notify.hpp"

#include "log.hpp"

#include <systemd/sd-daemon.h>

#include <cstdlib>

namespace hpc::daemon {

Notifier::Notifier(boost::asio::io_context& ioc) : m_watchdog(ioc) {
    const char* socket = std::getenv("NOTIFY_SOCKET");
    m_active = socket && *socket;
    std::uint64_t usec = 0;
    if (m_active && sd_watchdog_enabled(0, &usec) > 0 && usec > 0) m_watchdogPeriod = std::chrono::microseconds(usec);
}

void Notifier::ready(const std::string& text) {
    if (!m_active) return;
    sd_notify(0, ("READY=1\nSTATUS=" + text).c_str());
    if (m_watchdogPeriod.count() > 0) {
        log::info("watchdog enabled: every " + std::to_string(m_watchdogPeriod.count() / 1000) + " ms");
        armWatchdog();
    }
}

void Notifier::status(const std::string& text) {
    if (m_active) sd_notify(0, ("STATUS=" + text).c_str());
}

void Notifier::stopping() {
    if (!m_active) return;
    m_watchdog.cancel();
    sd_notify(0, "STOPPING=1");
}

void Notifier::armWatchdog() {
    // Kick at half the period: a blocked loop misses two kicks and is restarted.
    m_watchdog.expires_after(m_watchdogPeriod / 2);
    m_watchdog.async_wait([this](boost::system::error_code ec) {
        if (ec) return;
        sd_notify(0, "WATCHDOG=1");
        armWatchdog();
    });
}

}  // namespace hpc::daemon
