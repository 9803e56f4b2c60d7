#pragma once
/// The systemd notify protocol (sd_notify): READY once the store is open and
/// the bus name owned, STATUS with the link state, WATCHDOG from a loop timer,
/// STOPPING at shutdown, in either mode (a supervisor other than systemd, such
/// as the test harness, may ask for it). Does nothing when NOTIFY_SOCKET is unset.

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <string>

namespace hpc::daemon {

class Notifier {
public:
    explicit Notifier(boost::asio::io_context& ioc);
    /// True when a supervisor gave a notify socket (NOTIFY_SOCKET).
    bool active() const { return m_active; }
    void ready(const std::string& status);
    void status(const std::string& status);
    void stopping();

private:
    void armWatchdog();
    boost::asio::steady_timer m_watchdog;
    std::chrono::microseconds m_watchdogPeriod{0};
    bool m_active = false;
};

}  // namespace hpc::daemon
