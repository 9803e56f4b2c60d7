#include "private_bus.hpp"

#include "bus_name.hpp"
#include "log.hpp"
#include "util.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace hpc::daemon {

/// Generous: a saturated login node can take seconds to start a process.
constexpr std::chrono::seconds kStartTimeout{30};

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
    std::string program = findInPath("dbus-daemon");
    if (program.empty()) program = bundledProgram("libexec/dbus-daemon");
    if (program.empty())
        throw std::runtime_error(
            "no dbus-daemon for the private bus: install the dbus package, or run the "
            "release, which carries one");
    // dbus-daemon writes its address to this pipe once it listens: that, not
    // the socket file appearing, is when clients can connect.
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
    UniqueFd readEnd(fds[0]), writeEnd(fds[1]);
    constexpr int kAddressFd = 3;
    SpawnOptions o;
    o.argv = {program, "--config-file=" + m_config.string(), "--nofork", "--nopidfile",
              "--print-address=" + std::to_string(kAddressFd)};
    o.out = Stdio::Null;
    o.err = Stdio::Inherit;
    o.extraFds = {{writeEnd.get(), kAddressFd}};
    o.dieWithParent = true;  // a daemon killed with SIGKILL must not leave its bus behind
    try {
        m_child = ChildGuard(spawn(o).pid);
    } catch (const std::exception& e) {
        throw std::runtime_error(std::string("cannot start ") + program + " for the private bus: " + e.what());
    }
    writeEnd.reset();
    std::string printed;
    auto deadline = std::chrono::steady_clock::now() + kStartTimeout;
    while (printed.find('\n') == std::string::npos) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0)
            throw std::runtime_error("the private dbus-daemon did not start within " +
                                     std::to_string(kStartTimeout.count()) + " s");
        pollfd p{readEnd.get(), POLLIN, 0};
        int r = ::poll(&p, 1, static_cast<int>(left.count()));
        if (r < 0 && errno == EINTR) continue;
        char buf[512];
        ssize_t n = r > 0 ? ::read(readEnd.get(), buf, sizeof buf) : 0;
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 && r > 0) {
            auto status = m_child.waitFor(std::chrono::milliseconds(1000));
            throw std::runtime_error(
                "the private dbus-daemon exited before listening" +
                (status && status->code ? " (exit status " + std::to_string(*status->code) + ")" : std::string()));
        }
        if (n > 0) printed.append(buf, static_cast<std::size_t>(n));
    }
    ::chmod(m_socket.c_str(), 0600);
    log::info("private D-Bus at " + m_socket.string());
}

PrivateBus::~PrivateBus() {
    m_child.terminate(std::chrono::milliseconds(1000));
    std::error_code ec;
    fs::remove(m_socket, ec);
    fs::remove(m_config, ec);
}

}  // namespace hpc::daemon
