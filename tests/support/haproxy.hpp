#pragma once
/// A real TCP load balancer for tests and benchmarks: HAProxy (Debian's
/// haproxy) in the foreground as a child of this process, on a free port of
/// 127.0.0.1, in front of relay instances on 127.0.0.1. TLS passes through
/// (mode tcp): the instances share one certificate. `balance first` sends
/// every connection to the first instance that is up, as an organisation's
/// active/standby pair would; health checks every 200 ms mark a dead one
/// down at once.

#include "tiny_proxy.hpp"

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace hpc::test {

class HaProxy {
public:
    /// Whether the program is there (the tests that need it skip otherwise).
    static bool available() { return runCommand({"sh", "-c", "command -v haproxy"}).status == 0; }

    /// Starts it in `dir` in front of `backendPorts`, in that order. Throws
    /// std::runtime_error when it does not listen in 10 s.
    HaProxy(const std::filesystem::path& dir, const std::vector<int>& backendPorts) : m_dir(dir) {
        std::filesystem::create_directories(dir);
        m_child = startOnFreePort(
            m_port,
            [&](int port) {
                std::ofstream conf(dir / "haproxy.cfg");
                conf << "global\n    maxconn 8000\n"
                     << "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 1h\n"
                     << "    timeout server 1h\n    retries 2\n    option redispatch\n"
                     << "frontend relays\n    bind 127.0.0.1:" << port << "\n    default_backend relays\n"
                     << "backend relays\n    balance first\n";
                for (std::size_t i = 0; i < backendPorts.size(); ++i)
                    conf << "    server r" << i << " 127.0.0.1:" << backendPorts[i]
                         << " check inter 200ms fall 1 rise 1\n";
                SpawnOptions o;
                o.argv = {"haproxy", "-db", "-f", (dir / "haproxy.cfg").string()};
                return o;
            },
            "haproxy", dir / "haproxy.out");
    }
    int port() const { return m_port; }
    pid_t pid() const { return m_child.pid(); }
    std::string url() const { return "https://127.0.0.1:" + std::to_string(m_port); }

private:
    std::filesystem::path m_dir;
    int m_port = 0;
    ChildGuard m_child;
};

}  // namespace hpc::test
