#include "exec.hpp"

#include "errors.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <boost/asio/io_context.hpp>

#include <fstream>
#include <optional>

using namespace hpc;
using namespace hpc::daemon;
using namespace std::chrono_literals;

namespace {

class ExecTest : public ::testing::Test {
protected:
    ExecResult run(ExecRequest req) {
        std::optional<ExecResult> result;
        m_exec.start(std::move(req), [&result](ExecResult r) { result = std::move(r); });
        m_ioc.run_for(30s);
        m_ioc.restart();
        EXPECT_TRUE(result) << "the command did not finish";
        return result.value_or(ExecResult{});
    }
    static ExecRequest sh(const std::string& script) {
        ExecRequest r;
        r.argv = {"/bin/sh", "-c", script};
        r.cwd = "/tmp";
        return r;
    }

    boost::asio::io_context m_ioc;
    ExecService m_exec{m_ioc};
};

bool alive(pid_t pid) { return ::kill(pid, 0) == 0; }

}  // namespace

TEST_F(ExecTest, CapturesStdoutStderrAndTheExitCode) {
    auto r = run(sh("echo out; echo err >&2; exit 7"));
    EXPECT_EQ(r.out, "out\n");
    EXPECT_EQ(r.err, "err\n");
    ASSERT_TRUE(r.exitCode);
    EXPECT_EQ(*r.exitCode, 7);
    EXPECT_FALSE(r.signal);
    EXPECT_FALSE(r.timedOut);
}

TEST_F(ExecTest, ReportsASignalDeath) {
    auto r = run(sh("kill -SEGV $$"));
    EXPECT_FALSE(r.exitCode);
    ASSERT_TRUE(r.signal);
    EXPECT_EQ(*r.signal, SIGSEGV);
}

TEST_F(ExecTest, RunsInTheGivenDirectoryWithTheGivenEnvironment) {
    auto req = sh("pwd; echo \"$HPC_X\"");
    req.cwd = "/usr";
    req.env = {"HPC_X=value with spaces"};
    auto r = run(req);
    EXPECT_EQ(r.out, "/usr\nvalue with spaces\n");
}

TEST_F(ExecTest, FeedsStdinThenEof) {
    auto req = sh("wc -c");
    req.stdinData = std::string(200000, 'x');  // more than a pipe holds
    auto r = run(req);
    EXPECT_EQ(r.out.substr(r.out.find_first_not_of(' ')), "200000\n");
}

TEST_F(ExecTest, StdinIsEmptyWhenNoneIsGiven) {
    auto r = run(sh("cat; echo done"));
    EXPECT_EQ(r.out, "done\n");
}

TEST_F(ExecTest, TruncatesOutputAtTheCapAndSaysSo) {
    auto req = sh("head -c 300000 /dev/zero | tr '\\0' a; echo tail >&2");
    req.maxOutputBytes = 1000;
    auto r = run(req);
    EXPECT_EQ(r.out.size(), 1000u);
    EXPECT_TRUE(r.outTruncated);
    EXPECT_FALSE(r.errTruncated);
    EXPECT_EQ(r.err, "tail\n");
    EXPECT_EQ(*r.exitCode, 0) << "the command ran to its end although its output was capped";
}

TEST_F(ExecTest, TimeoutKillsTheWholeProcessGroup) {
    std::string pidFile = "/tmp/hpc-exec-test-" + std::to_string(::getpid());
    // The grandchild ignores TERM: only the KILL after the grace period ends it.
    auto req = sh("(trap '' TERM; sleep 60) & echo $! > " + pidFile + "; sleep 60");
    req.timeout = 300ms;
    req.killGrace = 300ms;
    auto r = run(req);
    EXPECT_TRUE(r.timedOut);
    ASSERT_TRUE(r.signal);
    EXPECT_EQ(*r.signal, SIGTERM);
    pid_t grandchild = 0;
    std::ifstream(pidFile) >> grandchild;
    ASSERT_GT(grandchild, 0);
    // Let the grace timer fire.
    m_ioc.run_for(1s);
    bool gone = false;
    for (int i = 0; i < 200 && !gone; ++i) {
        gone = !alive(grandchild);
        if (!gone) std::this_thread::sleep_for(10ms);
    }
    EXPECT_TRUE(gone) << "grandchild " << grandchild << " survived the timeout";
    std::remove(pidFile.c_str());
}

TEST_F(ExecTest, ManyCommandsRunAtOnce) {
    int done = 0;
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 20; ++i)
        m_exec.start(sh("sleep 0.5; echo " + std::to_string(i)), [&done](const ExecResult& r) {
            if (r.exitCode == 0) ++done;
        });
    EXPECT_EQ(m_exec.running(), 20u);
    m_ioc.run_for(30s);
    EXPECT_EQ(done, 20);
    // Twenty half-second sleeps in sequence would take ten seconds.
    EXPECT_LT(std::chrono::steady_clock::now() - start, 8s);
}

TEST_F(ExecTest, AMissingProgramIsNotFound) {
    ExecRequest req;
    req.argv = {"/no/such/program"};
    req.cwd = "/tmp";
    try {
        m_exec.start(req, [](const ExecResult&) {});
        FAIL();
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::NotFound);
    }
    EXPECT_EQ(m_exec.running(), 0u);
}

TEST_F(ExecTest, RefusesMoreThanTheConcurrencyLimit) {
    ExecService small(m_ioc, 2);
    small.start(sh("sleep 5"), [](const ExecResult&) {});
    small.start(sh("sleep 5"), [](const ExecResult&) {});
    try {
        small.start(sh("true"), [](const ExecResult&) {});
        FAIL();
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Limit);
    }
    small.killAll();
    m_ioc.run_for(2s);
    EXPECT_EQ(small.running(), 0u);
}
