#include "bus_pump.hpp"

#include "log.hpp"

#include <poll.h>
#include <sdbus-c++/IConnection.h>
#include <unistd.h>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <system_error>

namespace asio = boost::asio;

namespace hpc::daemon {

struct BusPump::Impl : std::enable_shared_from_this<BusPump::Impl> {
    Impl(asio::io_context& ioc, sdbus::IConnection& conn) : ioc(ioc), conn(conn), fd(ioc), timer(ioc) {}

    asio::io_context& ioc;
    sdbus::IConnection& conn;
    asio::posix::stream_descriptor fd;
    asio::steady_timer timer;
    std::uint64_t generation = 0;
    bool stopped = false;

    void process() {
        if (stopped) return;
        try {
            while (conn.processPendingRequest()) {
            }
        } catch (const std::exception& e) {
            log::error(std::string("D-Bus processing failed: ") + e.what());
        }
        arm();
    }

    void arm() {
        if (stopped) return;
        auto data = conn.getEventLoopPollData();
        // One wake-up of any kind re-runs process(); older waits are cancelled.
        std::uint64_t gen = ++generation;
        boost::system::error_code ignored;
        fd.cancel(ignored);
        timer.cancel();
        auto wake = [self = shared_from_this(), gen](boost::system::error_code ec) {
            if (ec == asio::error::operation_aborted || gen != self->generation) return;
            self->process();
        };
        fd.async_wait(asio::posix::descriptor_base::wait_read, wake);
        if (data.events & POLLOUT) fd.async_wait(asio::posix::descriptor_base::wait_write, wake);
        if (data.timeout_usec != UINT64_MAX) {
            // sd-bus gives an absolute CLOCK_MONOTONIC time; steady_clock is the same clock.
            timespec now{};
            ::clock_gettime(CLOCK_MONOTONIC, &now);
            std::uint64_t nowUsec = static_cast<std::uint64_t>(now.tv_sec) * 1000000 + now.tv_nsec / 1000;
            auto delay = data.timeout_usec > nowUsec ? data.timeout_usec - nowUsec : 0;
            timer.expires_after(std::chrono::microseconds(delay));
            timer.async_wait(wake);
        }
    }
};

BusPump::BusPump(asio::io_context& ioc, sdbus::IConnection& connection)
    : m_impl(std::make_shared<Impl>(ioc, connection)) {
    int dup = ::dup(connection.getEventLoopPollData().fd);
    if (dup < 0) throw std::system_error(errno, std::generic_category(), "dup of the D-Bus fd");
    m_impl->fd.assign(dup);
}

BusPump::~BusPump() {
    m_impl->stopped = true;
    boost::system::error_code ignored;
    m_impl->fd.cancel(ignored);
    m_impl->fd.close(ignored);
    // steady_timer::cancel has no error_code overload (deprecated) and throws
    // on a reactor error, which epoll's never reports; a destructor must not.
    try {
        m_impl->timer.cancel();
    } catch (const boost::system::system_error&) {
    }
}

void BusPump::start() { m_impl->process(); }

void BusPump::kick() {
    asio::post(m_impl->ioc, [impl = m_impl] { impl->process(); });
}

}  // namespace hpc::daemon
