// hpc-relay at its limits, as a real process: out of descriptors, sign-in
// delivery commands, and requests no daemon could read.
#include "harness.hpp"

#include "errors.hpp"
#include "protocol.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <thread>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

/// A blocking TCP connection to 127.0.0.1:port with 5 s timeouts; -1 on failure.
UniqueFd connectTo(int port) {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    timeval tv{5, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return UniqueFd();
    return fd;
}

/// Sends one keep-alive HTTP request and returns the status code (0 when no
/// complete answer came within the socket's timeout), and the answer's body
/// in `answer` when given.
int httpCall(int fd, const std::string& method, const std::string& path, const std::string& body = {},
             std::string* answer = nullptr) {
    std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
                      "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) return 0;
    std::string in;
    char buf[4096];
    for (;;) {
        auto end = in.find("\r\n\r\n");
        if (end != std::string::npos) {
            auto cl = in.find("Content-Length: ");
            std::size_t length = cl == std::string::npos ? 0 : std::stoul(in.substr(cl + 16));
            if (in.size() >= end + 4 + length) {
                if (answer) *answer = in.substr(end + 4, length);
                return std::stoi(in.substr(9, 3));
            }
        }
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return 0;
        in.append(buf, static_cast<std::size_t>(n));
    }
}

/// CPU time (user + system) of a process, in clock ticks.
long cpuTicks(pid_t pid) {
    std::string stat = readFile("/proc/" + std::to_string(pid) + "/stat");
    std::istringstream rest(stat.substr(stat.rfind(')') + 2));
    std::string field;
    long utime = 0, stime = 0;
    // Fields 3..13 after "pid (comm)", then utime (14) and stime (15).
    for (int i = 3; i <= 13; ++i) rest >> field;
    rest >> utime >> stime;
    return utime + stime;
}

/// Children of `parent` (running or zombie), from /proc.
std::vector<std::string> childrenOf(pid_t parent) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator("/proc")) {
        std::string name = e.path().filename();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::string stat = readFile(e.path() / "stat");
        auto close = stat.rfind(')');
        if (close == std::string::npos) continue;
        std::istringstream rest(stat.substr(close + 2));
        std::string state;
        pid_t ppid = 0;
        rest >> state >> ppid;
        if (ppid == parent) out.push_back(name + " " + state);
    }
    return out;
}

/// A plain-HTTP relay on 127.0.0.1 started through prlimit (so its
/// descriptor limit is the test's), with a sign-in delivery command that
/// appends each email to a file.
class RelayProcess {
public:
    RelayProcess(const fs::path& dir, const std::string& nofile) : m_dir(dir) {
        fs::create_directories(dir);
        SpawnOptions o;
        o.argv = {"prlimit",
                  "--nofile=" + nofile,
                  "--",
                  Harness::binary("hpc-relay"),
                  "--listen",
                  "127.0.0.1",
                  "--port",
                  "0",
                  "--insecure-http",
                  "--ready-fd",
                  "3",
                  "--data-dir",
                  (dir / "data").string(),
                  "--otp-command",
                  "echo \"$HPC_OTP_EMAIL\" >> " + (dir / "sent").string()};
        o.outputFile = (dir / "relay.log").string();
        auto ready = spawnReady(o, 3, 60s, o.outputFile);
        m_relay = std::move(ready.child);
        m_port = std::stoi(ready.line);
    }
    int port() const { return m_port; }
    pid_t pid() const { return m_relay.pid(); }
    std::string log() const { return readFile(m_dir / "relay.log"); }
    std::size_t codesSent() const {
        std::ifstream in(m_dir / "sent");
        std::size_t n = 0;
        for (std::string line; std::getline(in, line);) ++n;
        return n;
    }

private:
    fs::path m_dir;
    ChildGuard m_relay;
    int m_port = 0;
};

class RelayLimits : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/hpc-relay-limits-XXXXXX";
        ASSERT_TRUE(::mkdtemp(tmpl));
        m_dir = tmpl;
    }
    void TearDown() override { fs::remove_all(m_dir); }
    fs::path m_dir;
};

}  // namespace

TEST_F(RelayLimits, OutOfDescriptorsTheRelayBacksOffAndKeepsServingItsConnections) {
    RelayProcess relay(m_dir / "relay", "32:64");
    EXPECT_NE(readFile("/proc/" + std::to_string(relay.pid()) + "/limits").find("Max open files            64"),
              std::string::npos)
        << "the soft limit is raised to the hard one at start";

    auto kept = connectTo(relay.port());
    ASSERT_TRUE(kept);
    // GET /health on the connection the relay already has: whether it accepts new ones.
    auto health = [&kept] {
        std::string answer;
        EXPECT_EQ(httpCall(kept.get(), "GET", "/health", {}, &answer), 200);
        return answer.empty() ? json::object() : json::parse(answer).at("payload").as_object();
    };
    ASSERT_TRUE(health().at("accepting").as_bool());

    // More connections than the relay has descriptors: the kernel completes
    // them all (the listen backlog), the relay can accept only some.
    std::vector<UniqueFd> flood;
    for (int i = 0; i < 200; ++i) {
        auto fd = connectTo(relay.port());
        ASSERT_TRUE(fd) << "connect " << i;
        flood.push_back(std::move(fd));
    }
    json::object out;
    ASSERT_TRUE(waitUntil(
        [&] {
            out = health();
            return out.contains("accepting") && !out.at("accepting").as_bool();
        },
        20s))
        << json::serialize(out) << "\n"
        << relay.log();
    EXPECT_NE(out.at("accept_problem").as_string().subview().find("open files"), std::string::npos)
        << json::serialize(out);

    // A relay that retried accept at once would burn a core here; measure its
    // CPU time (not the wall clock) while the established connection is used.
    long before = cpuTicks(relay.pid());
    auto windowEnd = std::chrono::steady_clock::now() + 2s;
    int answered = 0;
    while (std::chrono::steady_clock::now() < windowEnd) {
        ASSERT_EQ(httpCall(kept.get(), "GET", "/health"), 200) << "an open connection is still served";
        ++answered;
        std::this_thread::sleep_for(100ms);  // paces the checks within the window; waits for nothing
    }
    long used = cpuTicks(relay.pid()) - before;
    long ticksPerSecond = ::sysconf(_SC_CLK_TCK);
    std::cout << "relay CPU while out of descriptors: " << used << " of " << 2 * ticksPerSecond
              << " ticks in a 2 s window, " << answered << " health checks answered\n";
    EXPECT_LT(used, ticksPerSecond / 4) << "relay used " << used
                                        << " ticks of CPU in a 2 s window while out of "
                                           "descriptors ("
                                        << answered << " health checks answered)";

    flood.clear();
    EXPECT_TRUE(waitUntil(
        [&] {
            auto fresh = connectTo(relay.port());
            return fresh && httpCall(fresh.get(), "GET", "/health") == 200;
        },
        20s))
        << "new connections are served once descriptors are free again\n"
        << relay.log();
    EXPECT_TRUE(health().at("accepting").as_bool());
    EXPECT_EQ(health().at("accept_problem").as_string(), "");
}

TEST_F(RelayLimits, SignInDeliveryCommandsLeaveNoChildBehind) {
    RelayProcess relay(m_dir / "relay", "1024:1024");
    auto conn = connectTo(relay.port());
    ASSERT_TRUE(conn);
    for (int i = 0; i < 5; ++i)
        ASSERT_EQ(httpCall(conn.get(), "POST", "/otp/signin",
                           json::serialize(json::object{{"email", "user" + std::to_string(i) + "@example.org"}})),
                  200);
    ASSERT_TRUE(waitUntil([&] { return relay.codesSent() == 5; }, 20s)) << "the delivery command ran for each";
    std::vector<std::string> left;
    EXPECT_TRUE(waitUntil(
        [&] {
            left = childrenOf(relay.pid());
            return left.empty();
        },
        10s))
        << "children of the relay still there (pid state): " << ::testing::PrintToString(left);
}

TEST_F(RelayLimits, OneClientIsRefusedCodesPastItsLimitAcrossAddresses) {
    RelayProcess relay(m_dir / "relay", "1024:1024");
    auto conn = connectTo(relay.port());
    ASSERT_TRUE(conn);
    int granted = 0;
    int status = 200;
    while (status == 200 && granted <= 100) {
        status = httpCall(conn.get(), "POST", "/otp/signin",
                          json::serialize(json::object{{"email", "v" + std::to_string(granted) + "@example.org"}}));
        if (status == 200) ++granted;
    }
    EXPECT_EQ(status, 429);
    EXPECT_EQ(granted, 20) << "the default per-client limit";
    // A new connection (another port) is the same client.
    auto again = connectTo(relay.port());
    EXPECT_EQ(httpCall(again.get(), "POST", "/otp/signin", R"({"email":"other@example.org"})"), 429);
}

/// Agent requests that carry a number no daemon could read back.
class RelayAnswers : public ::testing::Test {
protected:
    void SetUp() override {
        m_h = std::make_unique<Harness>();
        m_h->startRelay();
        auto r = m_h->setupDaemon("d1", "alice@example.org", {(m_h->dir() / "work").string()});
        ASSERT_EQ(r.status, 0) << r.err;
        m_h->startDaemon("d1", {"--heartbeat-seconds", "0.5"});
        m_token = m_h->login("alice@example.org");
        ASSERT_TRUE(m_h->waitConnected(m_token, "d1")) << m_h->daemonLog("d1");
        m_agent = m_h->agent(m_token);
    }
    std::unique_ptr<Harness> m_h;
    Secret m_token;
    std::unique_ptr<agent::AgentClient> m_agent;
};

TEST_F(RelayAnswers, ARequestWithANumberADoubleCannotHoldIsRefusedAtOnceAndHoldsNoSlot) {
    // More such requests than an agent may have in flight: if any held its
    // slot, the exec after them would get LIMIT.
    constexpr int kRequests = 4200;
    for (int i = 0; i < kRequests; ++i) {
        std::string id = "big" + std::to_string(i);
        // Every other one is 1e999 (JSON, but infinity as a double); the rest
        // spell Infinity, which is not JSON at all.
        m_agent->ws().sendText(R"({"v":1,"type":"exec","id":")" + id +
                               R"(","daemon_id":"d1","payload":{"argv":["true"],"timeout_s":)" +
                               (i % 2 ? "Infinity" : "1e999") + "}}");
    }
    for (int i = 0; i < kRequests; ++i) {
        auto frame = m_agent->ws().read(20s);
        ASSERT_TRUE(frame) << "no answer to request " << i;
        auto parsed = protocol::parse(frame->data, protocol::kMaxResponseBytes);
        ASSERT_TRUE(std::holds_alternative<protocol::Envelope>(parsed)) << frame->data;
        const auto& env = std::get<protocol::Envelope>(parsed);
        ASSERT_FALSE(env.ok) << frame->data;
        EXPECT_EQ(env.errorCode, ErrorCode::BadRequest) << frame->data;
        ASSERT_EQ(env.replyTo, "big" + std::to_string(i)) << frame->data;
    }
    agent::ExecSpec spec;
    spec.argv = {"echo", "still here"};
    auto out = m_agent->exec("d1", spec, 30s);
    EXPECT_EQ(out.exitCode, 0);
    EXPECT_EQ(out.out, "still here\n");
}
