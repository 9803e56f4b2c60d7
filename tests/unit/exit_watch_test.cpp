// ExitWatch on both paths: the pidfd (Linux >= 5.3) and, as on RHEL 8's
// 4.18 kernel, SIGCHLD for our children and a poll for processes we did not
// start. And spawn(): a child gets no descriptor of ours.

#include "exit_watch.hpp"
#include "process.hpp"

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <set>
#include <sstream>

using hpc::ExitStatus;
using hpc::SpawnOptions;
using hpc::Stdio;
using hpc::daemon::ExitWatch;

namespace {

pid_t start(std::vector<std::string> argv) {
    SpawnOptions o;
    o.argv = std::move(argv);
    o.out = Stdio::Null;
    return hpc::spawn(o).pid;
}

/// Runs the loop until `done` holds (bounded: a hang fails the test).
void runUntil(boost::asio::io_context& ioc, const bool& done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!done && std::chrono::steady_clock::now() < deadline) {
        ioc.restart();
        ioc.run_for(std::chrono::milliseconds(50));
    }
}

class ExitWatchBothWays : public ::testing::TestWithParam<bool> {
protected:
    void SetUp() override { ExitWatch::forceSignalFallback(GetParam()); }
    void TearDown() override { ExitWatch::forceSignalFallback(false); }
};

TEST_P(ExitWatchBothWays, ReapsOurChildAndReportsItsExitCode) {
    boost::asio::io_context ioc;
    pid_t pid = start({"sh", "-c", "exit 7"});
    bool called = false;
    std::optional<ExitStatus> got;
    ExitWatch::watch(ioc, pid, true, [&](std::optional<ExitStatus> s) {
        called = true;
        got = s;
    });
    runUntil(ioc, called);
    ASSERT_TRUE(called);
    ASSERT_TRUE(got && got->code);
    EXPECT_EQ(*got->code, 7);
    EXPECT_EQ(::waitpid(pid, nullptr, WNOHANG), -1) << "the child was not reaped";
}

TEST_P(ExitWatchBothWays, ReportsTheSignalThatKilledOurChild) {
    boost::asio::io_context ioc;
    pid_t pid = start({"sleep", "30"});
    bool called = false;
    std::optional<ExitStatus> got;
    ExitWatch::watch(ioc, pid, true, [&](std::optional<ExitStatus> s) {
        called = true;
        got = s;
    });
    ::kill(pid, SIGKILL);
    runUntil(ioc, called);
    ASSERT_TRUE(called);
    ASSERT_TRUE(got && got->signal);
    EXPECT_EQ(*got->signal, SIGKILL);
}

TEST_P(ExitWatchBothWays, FollowsManyChildrenEndingAtOnce) {
    boost::asio::io_context ioc;
    std::map<pid_t, int> codes;
    for (int i = 0; i < 20; ++i) {
        pid_t pid = start({"sh", "-c", "exit " + std::to_string(i)});
        ExitWatch::watch(ioc, pid, true,
                         [&codes, pid](std::optional<ExitStatus> s) { codes[pid] = s && s->code ? *s->code : -1; });
    }
    bool all = false;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!all && std::chrono::steady_clock::now() < deadline) {
        ioc.restart();
        ioc.run_for(std::chrono::milliseconds(50));
        all = codes.size() == 20;
    }
    ASSERT_EQ(codes.size(), 20u);
    std::set<int> seen;
    for (auto& [pid, code] : codes) seen.insert(code);
    EXPECT_EQ(seen.size(), 20u);
    EXPECT_EQ(*seen.begin(), 0);
    EXPECT_EQ(*seen.rbegin(), 19);
}

TEST_P(ExitWatchBothWays, NoticesTheEndOfAProcessItMustNotReap) {
    // A process we did not start (a job re-adopted after a restart) is
    // watched without reaping; a zombie counts as ended.
    boost::asio::io_context ioc;
    pid_t pid = start({"sleep", "0.2"});
    bool called = false;
    std::optional<ExitStatus> got = ExitStatus{};
    ExitWatch::watch(ioc, pid, false, [&](std::optional<ExitStatus> s) {
        called = true;
        got = s;
    });
    runUntil(ioc, called);
    ASSERT_TRUE(called);
    EXPECT_FALSE(got.has_value()) << "no status for a process that is not ours";
    int raw = 0;
    EXPECT_EQ(::waitpid(pid, &raw, 0), pid) << "it was reaped, though not ours to reap";
}

TEST_P(ExitWatchBothWays, ACancelledWatchIsNeverCalled) {
    boost::asio::io_context ioc;
    pid_t pid = start({"sh", "-c", "exit 0"});
    bool called = false;
    auto token = ExitWatch::watch(ioc, pid, true, [&](std::optional<ExitStatus>) { called = true; });
    ExitWatch::cancel(ioc, token);
    bool other = false;
    pid_t second = start({"sh", "-c", "exit 0"});
    ExitWatch::watch(ioc, second, true, [&](std::optional<ExitStatus>) { other = true; });
    runUntil(ioc, other);
    EXPECT_TRUE(other);
    EXPECT_FALSE(called);
    ::waitpid(pid, nullptr, 0);
}

INSTANTIATE_TEST_SUITE_P(PidfdAndSigchld, ExitWatchBothWays, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Sigchld" : "Pidfd"; });

/// The descriptor numbers `ls /proc/self/fd` sees in a child.
std::set<int> childDescriptors(const std::vector<std::pair<int, int>>& extra) {
    SpawnOptions o;
    o.argv = {"ls", "/proc/self/fd"};
    o.out = Stdio::Pipe;
    o.extraFds = extra;
    auto child = hpc::spawn(o);
    std::string out;
    char buf[512];
    ssize_t n;
    ::fcntl(child.stdoutFd.get(), F_SETFL, 0);  // blocking: read to EOF
    while ((n = ::read(child.stdoutFd.get(), buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
    ::waitpid(child.pid, nullptr, 0);
    std::set<int> fds;
    std::istringstream in(out);
    for (int fd; in >> fd;) fds.insert(fd);
    return fds;
}

TEST(Spawn, ChildGetsNoDescriptorOfOursEvenWithoutCloseOnExec) {
    int leaked = ::open("/dev/null", O_RDONLY);  // no O_CLOEXEC, as a careless library would
    ASSERT_GE(leaked, 0);
    int high = ::dup2(leaked, 200);
    ASSERT_EQ(high, 200);
    auto fds = childDescriptors({});
    ::close(leaked);
    ::close(high);
    // 0-2, and ls's own handle on /proc/self/fd.
    EXPECT_EQ(fds, (std::set<int>{0, 1, 2, 3}));
}

TEST(Spawn, ChildKeepsTheDescriptorsItIsHanded) {
    int handed = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(handed, 0);
    auto fds = childDescriptors({{handed, 7}});
    ::close(handed);
    EXPECT_EQ(fds, (std::set<int>{0, 1, 2, 3, 7}));
}

}  // namespace
