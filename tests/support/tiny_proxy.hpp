#pragma once
/// A real HTTP proxy for tests and benchmarks: tinyproxy (Debian's
/// tinyproxy-bin) in the foreground as a child of this process, on a free
/// port of 127.0.0.1, with a config written now. It makes its outgoing
/// connections from 127.0.0.2, so the far end can tell a proxied connection
/// from a direct one, and logs every request to a file.

#include "fd.hpp"
#include "harness.hpp"
#include "process.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

namespace hpc::test {

/// A port nothing listens on right now (bound, read, closed).
inline int freeLoopbackPort() {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("bind failed");
    socklen_t len = sizeof a;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
    return ntohs(a.sin_port);
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
inline bool acceptsConnections(int port) {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return ::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
}

/// Established TCP connections whose local end is 127.0.0.1:`port` (a
/// server's side), counted by the peer's address ("127.0.0.1", "127.0.0.2").
inline std::map<std::string, int> peersOf(int port) {
    std::map<std::string, int> peers;
    std::ifstream in("/proc/net/tcp");
    std::string line;
    std::getline(in, line);
    char want[16];
    std::snprintf(want, sizeof want, "0100007F:%04X", port);
    while (std::getline(in, line)) {
        std::istringstream f(line);
        std::string slot, local, remote, state;
        f >> slot >> local >> remote >> state;
        if (local != want || state != "01") continue;  // 01: ESTABLISHED
        in_addr addr{};
        addr.s_addr = static_cast<in_addr_t>(std::stoul(remote.substr(0, 8), nullptr, 16));
        char text[INET_ADDRSTRLEN];
        ::inet_ntop(AF_INET, &addr, text, sizeof text);
        ++peers[text];
    }
    return peers;
}

/// Starts a server on a free port of 127.0.0.1: `prepare(port)` writes its
/// configuration and says how to run it; another port is tried when it does
/// not listen within 10 s (someone took the port first). Its output goes to
/// `output`. Throws std::runtime_error naming `what` when it never listens.
inline ChildGuard startOnFreePort(int& port, const std::function<SpawnOptions(int)>& prepare, const std::string& what,
                                  const std::filesystem::path& output) {
    using namespace std::chrono_literals;
    for (int attempt = 0; attempt < 5; ++attempt) {
        port = freeLoopbackPort();
        SpawnOptions o = prepare(port);
        o.outputFile = output.string();
        o.dieWithParent = true;
        ChildGuard child(spawn(o).pid);
        bool exited = false;
        waitUntil([&] { return acceptsConnections(port) || (exited = child.poll().has_value()); }, 10s);
        if (!exited && acceptsConnections(port)) return child;
        child.terminate();
    }
    throw std::runtime_error(what + " did not start: " + readFile(output));
}

class TinyProxy {
public:
    /// Starts it in `dir`; `extraConfig` lines go at the end of its config
    /// ("BasicAuth user password", "ConnectPort 443"). Throws
    /// std::runtime_error when it does not listen in 10 s.
    explicit TinyProxy(const std::filesystem::path& dir, const std::string& extraConfig = {}) : m_dir(dir) {
        std::filesystem::create_directories(dir);
        // Port 0 is not a tinyproxy setting: a free port is chosen for it.
        m_child = startOnFreePort(
            m_port,
            [&](int port) {
                std::ofstream conf(dir / "tinyproxy.conf");
                conf << "Port " << port << "\nListen 127.0.0.1\nBind 127.0.0.2\nTimeout 600\n"
                     << "LogFile \"" << log().string() << "\"\nLogLevel Connect\nMaxClients 100\n"
                     << extraConfig << "\n";
                SpawnOptions o;
                o.argv = {"tinyproxy", "-d", "-c", (dir / "tinyproxy.conf").string()};
                return o;
            },
            "tinyproxy", dir / "tinyproxy.out");
    }
    void stop() { m_child.terminate(); }
    pid_t pid() const { return m_child.pid(); }
    int port() const { return m_port; }
    std::string url() const { return "http://127.0.0.1:" + std::to_string(m_port); }
    std::filesystem::path log() const { return m_dir / "tinyproxy.log"; }
    /// CONNECT requests the proxy has logged for `target` (host:port).
    int connects(const std::string& target) const {
        std::istringstream in(readFile(log()));
        std::string line;
        int n = 0;
        while (std::getline(in, line))
            if (line.find("Request") != std::string::npos && line.find("CONNECT " + target + " ") != std::string::npos)
                ++n;
        return n;
    }

private:
    std::filesystem::path m_dir;
    int m_port = 0;
    ChildGuard m_child;
};

}  // namespace hpc::test
