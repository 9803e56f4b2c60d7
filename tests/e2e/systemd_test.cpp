// The systemd side: the unit passes systemd-analyze, and the daemon speaks
// the notify protocol to a socket the test binds.
#include "harness.hpp"

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
    auto socketPath = h.dir() / "notify.sock";
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socketPath.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    timeval tv{0, 100000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    SpawnOptions o;
    o.argv = {Harness::binary("hpc-daemond"), "--daemon-id", "n1", "--bus-address", "none"};
    o.envOverrides = {"HPC_DAEMON_HOME=" + h.home("n1").string(), "NOTIFY_SOCKET=" + socketPath.string(),
                      "WATCHDOG_USEC=200000"};
    o.outputFile = (h.dir() / "notify-daemon.log").string();
    o.dieWithParent = true;  // nothing the test starts outlives it
    ChildGuard daemon(spawn(o).pid);

    std::vector<std::string> messages;
    auto receive = [&] {
        char buf[4096];
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n > 0) messages.emplace_back(buf, static_cast<std::size_t>(n));
    };
    auto seen = [&](const std::string& what) {
        for (const auto& m : messages)
            if (m.find(what) != std::string::npos) return true;
        return false;
    };
    EXPECT_TRUE(waitUntil(
        [&] {
            receive();
            return seen("READY=1");
        },
        10s));
    EXPECT_TRUE(waitUntil(
        [&] {
            receive();
            return seen("STATUS=link connected");
        },
        10s));
    EXPECT_TRUE(waitUntil(
        [&] {
            receive();
            return seen("WATCHDOG=1");
        },
        10s));
    daemon.signal(SIGTERM);
    EXPECT_TRUE(waitUntil(
        [&] {
            receive();
            return seen("STOPPING=1");
        },
        10s));
    auto status = daemon.waitFor(10s);
    ASSERT_TRUE(status);
    EXPECT_EQ(status->code, 0);
    ::close(fd);
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
    auto socketPath = h.dir() / "relay-notify.sock";
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socketPath.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    timeval tv{0, 100000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

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
    o.envOverrides = {"NOTIFY_SOCKET=" + socketPath.string()};
    o.outputFile = (h.dir() / "notify-relay.log").string();
    o.dieWithParent = true;
    ChildGuard relay(spawn(o).pid);
    std::string messages;
    auto heard = [&](const std::string& what) {
        return waitUntil(
            [&] {
                char buf[4096];
                if (ssize_t n = ::recv(fd, buf, sizeof buf, 0); n > 0)
                    messages.append(buf, static_cast<std::size_t>(n));
                return messages.find(what) != std::string::npos;
            },
            15s);
    };
    ASSERT_TRUE(heard("READY=1")) << readFile(h.dir() / "notify-relay.log");
    // Ready means listening: the first request is answered.
    int port = std::stoi(readFile(h.dir() / "relay.port"));
    auto health = net::httpRequest(*parseUrl("http://127.0.0.1:" + std::to_string(port)), "GET", "/health", "", "");
    EXPECT_EQ(health.status, 200) << health.body;
    relay.signal(SIGTERM);
    EXPECT_TRUE(heard("STOPPING=1")) << messages;
    auto status = relay.waitFor(10s);
    ASSERT_TRUE(status);
    EXPECT_EQ(status->code, 0);
    ::close(fd);
}
