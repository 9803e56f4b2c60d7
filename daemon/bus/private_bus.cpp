#include "private_bus.hpp"

#include "bus_name.hpp"
#include "log.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <stdexcept>
#include <thread>

namespace fs = std::filesystem;

namespace hpc::daemon {

PrivateBus::PrivateBus(const fs::path& home, const std::string& daemonId)
    : m_socket(bus::privateBusSocket(home, daemonId)),
      m_config(home / (daemonId + ".bus.conf")),
      m_address(bus::privateBusAddress(home, daemonId)) {
    std::error_code ec;
    fs::remove(m_socket, ec);  // a stale socket from a killed daemon
    {
        // dbus-daemon lets only its own user connect to a bus that is not a
        // system bus; anyone connected may call anything, as on a session bus.
        std::ofstream conf(m_config, std::ios::trunc);
        conf << "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig>\n  <type>session</type>\n  <listen>unix:path="
             << m_socket.string()
             << "</listen>\n  <auth>EXTERNAL</auth>\n"
                "  <policy context=\"default\">\n    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
                "    <allow eavesdrop=\"true\"/>\n    <allow own=\"*\"/>\n  </policy>\n</busconfig>\n";
        if (!conf) throw std::runtime_error("cannot write " + m_config.string());
    }
    ::chmod(m_config.c_str(), 0600);
    SpawnOptions o;
    o.argv = {"dbus-daemon", "--config-file=" + m_config.string(), "--nofork", "--nopidfile"};
    o.out = Stdio::Null;
    o.err = Stdio::Inherit;
    o.dieWithParent = true;  // a daemon killed with SIGKILL must not leave its bus behind
    try {
        m_child = ChildGuard(spawn(o).pid);
    } catch (const std::exception& e) {
        throw std::runtime_error(std::string("cannot start dbus-daemon for the private bus: ") + e.what() +
                                 " (install the dbus package)");
    }
    for (int i = 0; i < 500; ++i) {
        if (fs::exists(m_socket, ec)) {
            ::chmod(m_socket.c_str(), 0600);
            log::info("private D-Bus at " + m_socket.string());
            return;
        }
        if (!m_child.running() || m_child.poll()) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    throw std::runtime_error("the private dbus-daemon did not create " + m_socket.string());
}

PrivateBus::~PrivateBus() {
    m_child.terminate(std::chrono::milliseconds(1000));
    std::error_code ec;
    fs::remove(m_socket, ec);
    fs::remove(m_config, ec);
}

}  // namespace hpc::daemon
