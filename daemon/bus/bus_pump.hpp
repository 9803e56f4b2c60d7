#pragma once
/// Drives an sd-bus connection from the daemon's io_context: no second event
/// loop thread. Waits on the bus fd (read, and write when sd-bus has output)
/// and sd-bus's own timeout, then processes everything pending and re-arms.

#include <boost/asio/io_context.hpp>

#include <memory>

namespace sdbus {
class IConnection;
}

namespace hpc::daemon {

class BusPump {
public:
    /// Throws std::system_error when the bus fd cannot be duplicated.
    BusPump(boost::asio::io_context& ioc, sdbus::IConnection& connection);
    ~BusPump();
    /// Processes what is pending now and starts waiting.
    void start();
    /// Call after something queued outgoing messages (a signal) outside a
    /// bus callback, so they are flushed promptly.
    void kick();

    struct Impl;

private:
    std::shared_ptr<Impl> m_impl;
};

}  // namespace hpc::daemon
