// ChildProcess, the one helper behind exec, PTY shells and local jobs:
// start, how it ended, a failure to start as an error code, the group kill.

#include "child_process.hpp"

#include "errors.hpp"
#include "exit_watch.hpp"

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <vector>

using hpc::Error;
using hpc::ErrorCode;
using hpc::ExitStatus;
using hpc::SpawnOptions;
using hpc::Stdio;
using hpc::daemon::ChildProcess;
using hpc::daemon::ExitWatch;
using namespace std::chrono_literals;

namespace {

SpawnOptions options(std::vector<std::string> argv) {
    SpawnOptions o;
    o.argv = std::move(argv);
    o.out = Stdio::Null;
    o.err = Stdio::Null;
    return o;
}

/// Gone, or a zombie nobody reaped yet: it runs no more.
bool ended(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text;
    if (!std::getline(stat, text)) return true;
    auto close = text.rfind(')');
    return close != std::string::npos && close + 2 < text.size() && text[close + 2] == 'Z';
}

class ChildProcessTest : public ::testing::Test {
protected:
    /// Runs the loop until `done` holds (bounded: a hang fails the test).
    bool runUntil(const std::function<bool()>& done) {
        auto deadline = std::chrono::steady_clock::now() + 30s;
        while (!done() && std::chrono::steady_clock::now() < deadline) {
            m_ioc.restart();
            m_ioc.run_for(20ms);
        }
        return done();
    }

    /// Starts `argv` and records how it ends in m_status / m_ended.
    std::shared_ptr<ChildProcess> start(SpawnOptions o,
                                        ChildProcess::ProgramOf whose = ChildProcess::ProgramOf::Agent) {
        return ChildProcess::start(
            m_ioc, std::move(o), "the test program",
            [this](std::optional<ExitStatus> status) {
                m_status = status;
                m_ended = true;
            },
            whose);
    }

    ErrorCode startFailure(SpawnOptions o, ChildProcess::ProgramOf whose) {
        try {
            start(std::move(o), whose);
        } catch (const Error& e) {
            return e.code();
        }
        ADD_FAILURE() << "it started";
        return ErrorCode::Internal;
    }

    boost::asio::io_context m_ioc;
    std::optional<ExitStatus> m_status;
    bool m_ended = false;
};

class ChildProcessBothWays : public ChildProcessTest, public ::testing::WithParamInterface<bool> {
protected:
    void SetUp() override { ExitWatch::forceSignalFallback(GetParam()); }
    void TearDown() override { ExitWatch::forceSignalFallback(false); }
};

}  // namespace

TEST_P(ChildProcessBothWays, ReportsTheExitCodeOfWhatItStarted) {
    auto child = start(options({"sh", "-c", "exit 7"}));
    EXPECT_TRUE(child->running());
    ASSERT_TRUE(runUntil([this] { return m_ended; }));
    ASSERT_TRUE(m_status && m_status->code);
    EXPECT_EQ(*m_status->code, 7);
    EXPECT_FALSE(child->running());
    EXPECT_EQ(::waitpid(child->pid(), nullptr, WNOHANG), -1) << "the child was not reaped";
}

TEST_P(ChildProcessBothWays, ReportsTheSignalSentToItsGroup) {
    auto child = start(options({"sleep", "30"}));
    child->signalGroup(SIGUSR1);
    ASSERT_TRUE(runUntil([this] { return m_ended; }));
    ASSERT_TRUE(m_status && m_status->signal);
    EXPECT_EQ(*m_status->signal, SIGUSR1);
    EXPECT_FALSE(m_status->code);
}

INSTANTIATE_TEST_SUITE_P(PidfdAndSigchld, ChildProcessBothWays, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Sigchld" : "Pidfd"; });

TEST_F(ChildProcessTest, LeadsItsOwnSessionAndHandsOverItsPipes) {
    auto o = options({"sh", "-c", "cut -d' ' -f6 /proc/$$/stat"});
    o.newSession = false;  // always a session of its own, whatever the caller says
    o.out = Stdio::Pipe;
    auto child = start(o);
    ASSERT_TRUE(runUntil([this] { return m_ended; }));
    hpc::UniqueFd out = std::move(child->pipes().stdoutFd);
    ASSERT_TRUE(out);
    char buf[64] = {};
    ASSERT_GT(::read(out.get(), buf, sizeof buf - 1), 0);
    EXPECT_EQ(std::stoi(buf), child->pid());
}

TEST_F(ChildProcessTest, TerminateKillsAGrandchildThatIgnoresTermAfterTheGrace) {
    auto o = options({"sh", "-c", "(trap '' TERM; exec sleep 60) & echo $!; wait"});
    o.out = Stdio::Pipe;
    auto child = start(o);
    int out = child->pipes().stdoutFd.get();
    ::fcntl(out, F_SETFL, 0);  // blocking: the line comes at once
    char buf[32] = {};
    ASSERT_GT(::read(out, buf, sizeof buf - 1), 0);
    pid_t grandchild = std::stoi(buf);
    ASSERT_GT(grandchild, 0);

    child->terminate(200ms);
    ASSERT_TRUE(runUntil([this] { return m_ended; }));
    ASSERT_TRUE(m_status && m_status->signal);
    EXPECT_EQ(*m_status->signal, SIGTERM) << "TERM ended the leader";
    EXPECT_TRUE(runUntil([grandchild] { return ended(grandchild); }))
        << "grandchild " << grandchild << " outlived the KILL to the group";
}

TEST_F(ChildProcessTest, SignalsReachTheHookTooAndKillComesAfterTheGraceEvenWhenTheLeaderHasGone) {
    auto child = start(options({"sleep", "30"}));
    std::vector<int> hooked;
    child->alsoSignal([&hooked](int sig) { hooked.push_back(sig); });
    child->terminate(100ms);
    EXPECT_EQ(hooked, std::vector<int>{SIGTERM});
    ASSERT_TRUE(runUntil([&hooked] { return hooked.size() == 2; }));
    EXPECT_TRUE(m_ended);
    EXPECT_EQ(hooked, (std::vector<int>{SIGTERM, SIGKILL}));
}

TEST_F(ChildProcessTest, KillDropsTheKillStillDueFromTerminate) {
    auto child = start(options({"sleep", "30"}));
    std::vector<int> hooked;
    child->alsoSignal([&hooked](int sig) { hooked.push_back(sig); });
    child->terminate(100ms);
    child->kill();
    ASSERT_TRUE(runUntil([this] { return m_ended; }));
    m_ioc.restart();
    m_ioc.run_for(300ms);  // past the grace: nothing more is sent
    EXPECT_EQ(hooked, (std::vector<int>{SIGTERM, SIGKILL}));
}

TEST_F(ChildProcessTest, AMissingProgramIsNotFoundForAnAgentAndInternalForTheDaemon) {
    EXPECT_EQ(startFailure(options({"/no/such/program"}), ChildProcess::ProgramOf::Agent), ErrorCode::NotFound);
    EXPECT_EQ(startFailure(options({"/no/such/program"}), ChildProcess::ProgramOf::Daemon), ErrorCode::Internal);
}

TEST_F(ChildProcessTest, AProgramThatMayNotBeRunIsABadRequest) {
    std::string path = "/tmp/hpc-child-process-test-" + std::to_string(::getpid());
    std::ofstream(path) << "#!/bin/sh\n";
    ::chmod(path.c_str(), 0644);  // no execute bit: EACCES even for root
    EXPECT_EQ(startFailure(options({path}), ChildProcess::ProgramOf::Agent), ErrorCode::BadRequest);
    std::remove(path.c_str());
}

TEST_F(ChildProcessTest, FollowsAProcessItDidNotStartWithoutReapingIt) {
    auto o = options({"sleep", "0.2"});
    pid_t pid = hpc::spawn(o).pid;
    auto child = ChildProcess::follow(m_ioc, pid, "a process", [this](std::optional<ExitStatus> status) {
        m_status = status;
        m_ended = true;
    });
    ASSERT_TRUE(runUntil([this] { return m_ended; }));
    EXPECT_FALSE(m_status.has_value()) << "no status for a process that is not ours";
    EXPECT_EQ(::waitpid(pid, nullptr, 0), pid) << "it was reaped, though not ours to reap";
}

TEST_F(ChildProcessTest, FollowingAProcessAlreadyGoneReportsItsEndOnTheNextTurn) {
    pid_t pid = hpc::spawn(options({"true"})).pid;
    ::waitpid(pid, nullptr, 0);
    auto child = ChildProcess::follow(m_ioc, pid, "a process", [this](std::optional<ExitStatus>) { m_ended = true; });
    EXPECT_FALSE(m_ended) << "called from within follow()";
    EXPECT_TRUE(runUntil([this] { return m_ended; }));
}

TEST_F(ChildProcessTest, ReleaseLeavesItRunningAndNeverReportsItsEnd) {
    auto child = start(options({"sleep", "30"}));
    pid_t pid = child->pid();
    child->release();
    EXPECT_FALSE(child->running());
    m_ioc.restart();
    m_ioc.run_for(100ms);
    EXPECT_EQ(::kill(pid, 0), 0) << "released, it was signalled";
    ::kill(pid, SIGKILL);
    EXPECT_EQ(::waitpid(pid, nullptr, 0), pid);
    m_ioc.restart();
    m_ioc.run_for(100ms);
    EXPECT_FALSE(m_ended);
}
