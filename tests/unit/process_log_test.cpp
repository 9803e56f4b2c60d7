#include "log.hpp"
#include "process.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

using namespace hpc;
using namespace std::chrono_literals;

namespace {

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

/// Captures what log lines go to stderr while it lives.
class StderrCapture {
public:
    StderrCapture() {
        m_path = "/tmp/hpc-stderr-" + std::to_string(::getpid());
        m_saved = ::dup(2);
        int fd = ::open(m_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ::dup2(fd, 2);
        ::close(fd);
    }
    std::string finish() {
        ::dup2(m_saved, 2);
        ::close(m_saved);
        auto text = slurp(m_path);
        std::remove(m_path.c_str());
        return text;
    }

private:
    std::string m_path;
    int m_saved;
};

}  // namespace

TEST(Logging, WritesTimestampedLinesToAPrivateFile) {
    std::string path = "/tmp/hpc-log-test-" + std::to_string(::getpid());
    log::init(path, log::Level::Info);
    log::info("hello\nworld");
    log::debug("hidden");
    log::init();
    auto text = slurp(path);
    EXPECT_TRUE(std::regex_search(text, std::regex(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info: hello world\n$)")))
        << text;
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    std::remove(path.c_str());
}

TEST(Logging, UsesJournalPriorityPrefixesUnderSystemd) {
    ::setenv("JOURNAL_STREAM", "8:1234", 1);
    StderrCapture capture;
    log::init();
    log::error("bad");
    log::warning("careful");
    log::info("fyi");
    auto text = capture.finish();
    ::unsetenv("JOURNAL_STREAM");
    log::init();
    EXPECT_EQ(text, "<3>bad\n<4>careful\n<6>fyi\n");
}

TEST(Processes, SpawnsWithPipesInTheGivenDirectory) {
    SpawnOptions o;
    o.argv = {"sh", "-c", "pwd; echo $HPC_T >&2"};
    o.cwd = "/usr";
    o.envOverrides = {"HPC_T=x"};
    o.out = Stdio::Pipe;
    o.err = Stdio::Pipe;
    auto p = spawn(o);
    ChildGuard guard(p.pid);
    auto status = guard.waitFor(10s);
    ASSERT_TRUE(status);
    EXPECT_EQ(status->code, 0);
    char buf[64] = {};
    ASSERT_GT(::read(p.stdoutFd.get(), buf, sizeof buf - 1), 0);
    EXPECT_STREQ(buf, "/usr\n");
}

TEST(Processes, AMissingProgramThrowsEnoent) {
    SpawnOptions o;
    o.argv = {"/nonexistent/program"};
    try {
        spawn(o);
        FAIL();
    } catch (const std::system_error& e) {
        EXPECT_EQ(e.code().value(), ENOENT);
    }
}

TEST(Processes, AChildThatMustDieWithItsParentDoesSoEvenAfterSigkill) {
    // We adopt orphans, so the child comes back to us when its parent dies.
    ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    pid_t parent = ::fork();
    ASSERT_GE(parent, 0);
    if (parent == 0) {
        SpawnOptions o;
        o.argv = {"sleep", "60"};
        o.dieWithParent = true;
        pid_t child = spawn(o).pid;
        (void)::write(fds[1], &child, sizeof child);
        ::pause();  // until killed
        ::_exit(0);
    }
    pid_t child = 0;
    ASSERT_EQ(::read(fds[0], &child, sizeof child), static_cast<ssize_t>(sizeof child));
    ::close(fds[0]);
    ::close(fds[1]);
    ::kill(parent, SIGKILL);
    ASSERT_EQ(::waitpid(parent, nullptr, 0), parent);
    int status = 0;
    pid_t reaped = 0;
    for (int i = 0; i < 500 && reaped == 0; ++i) {
        reaped = ::waitpid(child, &status, WNOHANG);
        if (reaped == 0) std::this_thread::sleep_for(10ms);
    }
    ::prctl(PR_SET_CHILD_SUBREAPER, 0);
    ASSERT_EQ(reaped, child) << "the child outlived its parent";
    EXPECT_TRUE(WIFSIGNALED(status));
    EXPECT_EQ(WTERMSIG(status), SIGTERM);
}

TEST(Processes, TheGuardKillsTheWholeGroupWhenItGoes) {
    std::string pidFile = "/tmp/hpc-guard-" + std::to_string(::getpid());
    pid_t grandchild = 0;
    {
        SpawnOptions o;
        o.argv = {"sh", "-c", "sleep 60 & echo $! > " + pidFile + "; wait"};
        ChildGuard guard(spawn(o).pid);
        ASSERT_TRUE([&] {
            for (int i = 0; i < 500; ++i) {
                std::ifstream(pidFile) >> grandchild;
                if (grandchild > 0) return true;
                std::this_thread::sleep_for(10ms);
            }
            return false;
        }());
    }
    bool gone = false;
    for (int i = 0; i < 500 && !gone; ++i) {
        gone = ::kill(grandchild, 0) != 0;
        if (!gone) std::this_thread::sleep_for(10ms);
    }
    EXPECT_TRUE(gone);
    std::remove(pidFile.c_str());
}
