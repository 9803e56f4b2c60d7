// The systemd side: the unit passes systemd-analyze, and the daemon speaks
// the notify protocol to a socket the test binds.
#include "harness.hpp"

#include "fd.hpp"

#include "http_client.hpp"
#include "util.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

/// A notify socket of the test's own (NOTIFY_SOCKET), as systemd's would be.
class NotifySocket {
public:
    explicit NotifySocket(const fs::path& path) : m_path(path) {
        m_fd = UniqueFd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
        if (!m_fd || ::bind(m_fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
            throw std::runtime_error("cannot bind " + path.string());
        timeval tv{0, 100000};
        ::setsockopt(m_fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    std::string env() const { return "NOTIFY_SOCKET=" + m_path.string(); }
    /// Waits until a message containing `what` has come.
    bool heard(const std::string& what, std::chrono::milliseconds timeout = 10s) {
        return waitUntil(
            [&] {
                char buf[4096];
                if (ssize_t n = ::recv(m_fd.get(), buf, sizeof buf, 0); n > 0)
                    m_messages.append(buf, static_cast<std::size_t>(n)).append("\n");
                return m_messages.find(what) != std::string::npos;
            },
            timeout);
    }
    const std::string& messages() const { return m_messages; }

private:
    fs::path m_path;
    UniqueFd m_fd;
    std::string m_messages;
};

}  // namespace

TEST(SystemdUnit, PassesSystemdAnalyzeVerifyWithoutAWarning) {
    Harness h;
    auto dir = h.dir() / "units";
    fs::create_directories(dir);
    fs::copy_file(HPC_UNIT_FILE, dir / "hpc-daemon@.service");
    fs::create_symlink(dir / "hpc-daemon@.service", dir / "hpc-daemon@lab-1.service");
    fs::create_directories(h.dir() / "run");
    auto r =
        runCommand({"systemd-analyze", "--user", "verify", "--man=no", (dir / "hpc-daemon@lab-1.service").string()}, {},
                   {"HOME=" + h.dir().string(), "XDG_RUNTIME_DIR=" + (h.dir() / "run").string()});
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.err, "") << "systemd-analyze only warns about bad keys";
}

TEST(SystemdUnit, KeepsJobsAliveAcrossRestartsAndRunsAsNotify) {
    std::ifstream in(HPC_UNIT_FILE);
    std::string unit((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(unit.find("Type=notify"), std::string::npos);
    EXPECT_NE(unit.find("KillMode=process"), std::string::npos);
    EXPECT_NE(unit.find("Restart=on-failure"), std::string::npos);
    EXPECT_NE(unit.find("WatchdogSec="), std::string::npos);
    EXPECT_NE(unit.find("--daemon-id %I"), std::string::npos);
}

TEST(SystemdNotify, SendsReadyStatusWatchdogAndStopping) {
    Harness h;
    h.startRelay();
    ASSERT_EQ(h.setupDaemon("n1", "n@example.org", {(h.dir() / "w").string()}).status, 0);
    NotifySocket notify(h.dir() / "notify.sock");
    SpawnOptions o;
    o.argv = {Harness::binary("hpc-daemond"), "--daemon-id", "n1", "--bus-address", "none"};
    o.envOverrides = {"HPC_DAEMON_HOME=" + h.home("n1").string(), notify.env(), "WATCHDOG_USEC=200000"};
    o.outputFile = (h.dir() / "notify-daemon.log").string();
    o.dieWithParent = true;  // nothing the test starts outlives it
    ChildGuard daemon(spawn(o).pid);

    EXPECT_TRUE(notify.heard("READY=1"));
    EXPECT_TRUE(notify.heard("STATUS=link connected"));
    EXPECT_TRUE(notify.heard("WATCHDOG=1"));
    daemon.signal(SIGTERM);
    EXPECT_TRUE(notify.heard("STOPPING=1"));
    auto status = daemon.waitFor(10s);
    ASSERT_TRUE(status);
    EXPECT_EQ(status->code, 0);
}

// Issue 16 item 6: the relay as an organisation's system service.
TEST(SystemdUnit, TheRelaysSystemUnitPassesSystemdAnalyzeVerify) {
    Harness h;
    auto unit = h.dir() / "hpc-relay.service";
    fs::copy_file(HPC_RELAY_UNIT_FILE, unit);
    auto r = runCommand({"systemd-analyze", "verify", "--man=no", unit.string()});
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.err, "") << "systemd-analyze only warns about bad keys";
    std::string text = readFile(unit);
    EXPECT_NE(text.find("Type=notify"), std::string::npos);
    EXPECT_NE(text.find("ExecStart=" + Harness::binary("hpc-relay") + " "), std::string::npos) << text;
}

TEST(SystemdNotify, TheRelayIsReadyOnceItListensAndSaysWhenItStops) {
    Harness h;
    NotifySocket notify(h.dir() / "relay-notify.sock");
    SpawnOptions o;
    o.argv = {Harness::binary("hpc-relay"),
              "--port",
              "0",
              "--insecure-http",
              "--port-file",
              (h.dir() / "relay.port").string(),
              "--data-dir",
              (h.dir() / "relay-data").string(),
              "--otp-file",
              (h.dir() / "codes.txt").string()};
    o.envOverrides = {notify.env()};
    o.outputFile = (h.dir() / "notify-relay.log").string();
    o.dieWithParent = true;
    ChildGuard relay(spawn(o).pid);
    ASSERT_TRUE(notify.heard("READY=1", 15s)) << readFile(h.dir() / "notify-relay.log");
    // Ready means listening: the first request is answered.
    int port = std::stoi(readFile(h.dir() / "relay.port"));
    auto health = net::httpRequest(*parseUrl("http://127.0.0.1:" + std::to_string(port)), "GET", "/health", "", "");
    EXPECT_EQ(health.status, 200) << health.body;
    relay.signal(SIGTERM);
    EXPECT_TRUE(notify.heard("STOPPING=1")) << notify.messages();
    auto status = relay.waitFor(10s);
    ASSERT_TRUE(status);
    EXPECT_EQ(status->code, 0);
}
