// Kernel-enforced confinement of exec: with Landlock, nothing a command does
// (shell redirections, coreutils, interpreters, symlinks) writes outside the
// allowed directories; inside them everything works. Without Landlock the
// same writes go through, which shows it is the kernel layer that blocks them.
#include "harness.hpp"

#include <gtest/gtest.h>
#include <linux/landlock.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

class Confinement : public ::testing::TestWithParam<bool> {
protected:
    void SetUp() override {
        if (GetParam() && !landlockAvailable()) GTEST_SKIP() << "this kernel has no Landlock";
        m_h.startRelay();
        m_work = m_h.dir() / "allowed";
        m_out = m_h.dir() / "outside";
        fs::create_directories(m_out);
        std::ofstream(m_out / "existing") << "original";
        ASSERT_EQ(m_h.setupDaemon("g", "g@example.org", {m_work.string()}).status, 0);
        std::vector<std::string> extra;
        if (!GetParam()) extra.push_back("--no-landlock");
        m_h.startDaemon("g", extra);
        auto token = m_h.login("g@example.org");
        ASSERT_TRUE(m_h.waitConnected(token, "g"));
        m_agent = m_h.agent(token);
        m_work = fs::canonical(m_work);
        std::ofstream(m_work / "in") << "inside";
    }

    static bool landlockAvailable() {
        return ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION) > 0;
    }

    agent::ExecOutcome run(const std::string& script) {
        agent::ExecSpec spec;
        spec.command = script;
        return m_agent->exec("g", spec, 30s);
    }

    std::string O(const std::string& name) const { return (m_out / name).string(); }
    std::string W(const std::string& name) const { return (m_work / name).string(); }

    Harness m_h;
    fs::path m_work, m_out;
    std::unique_ptr<agent::AgentClient> m_agent;
};

}  // namespace

TEST_P(Confinement, WritesOutsideTheAllowedDirectoriesChangeNothing) {
    const bool landlock = GetParam();
    std::string home = std::getenv("HOME") ? std::getenv("HOME") : "/root";
    std::string homeFile = home + "/hpc-guard-test-" + std::to_string(::getpid());
    std::string tmpFile = "/tmp/hpc-guard-test-" + std::to_string(::getpid());
    std::vector<std::string> escapes = {
        "echo x > " + O("redirect"),
        "echo x >> " + O("existing"),
        "echo x 2> " + O("stderr-redirect") + " >&2",
        "echo x &> " + O("both-redirect"),
        "touch " + O("touched"),
        "mkdir " + O("dir"),
        "mkdir -p " + O("deep/er/dir"),
        "rm -f " + O("existing"),
        "mv " + O("existing") + " " + W("stolen"),
        "cp " + W("in") + " " + O("copy"),
        "cp -r " + m_work.string() + " " + O("tree"),
        "ln -s " + m_work.string() + " " + O("link"),
        "echo x | tee " + O("teed"),
        "echo x | tee -a " + O("existing"),
        "truncate -s 0 " + O("existing"),
        "python3 -c \"open('" + O("py") + "', 'w').write('x')\"",
        "perl -e 'open(F, \">" + O("pl") + "\") or die \"$!\"; print F \"x\"'",
        "dd if=/dev/zero of=" + O("dd") + " bs=1 count=1",
        "sh -c 'cat > " + O("cat") + "' < /dev/null",
        "bash -c 'echo x > " + O("bash") + "'",
        "cd " + m_out.string() + " && echo x > relative",
        "cd " + m_work.string() + " && echo x > ../outside/dotdot",
        "ln -s " + m_out.string() + " " + W("escape") + " && echo x > " + W("escape/via-symlink"),
        "echo x > '" + O("quoted name with spaces") + "'",
        "echo x > " + homeFile,
        "echo x > " + tmpFile,
    };
    std::string before = snapshotTree(m_out);
    for (const auto& e : escapes) run(e);
    std::string after = snapshotTree(m_out);
    bool homeWritten = fs::exists(homeFile), tmpWritten = fs::exists(tmpFile);
    fs::remove(homeFile);
    fs::remove(tmpFile);
    if (landlock) {
        EXPECT_EQ(after, before) << "something escaped the allowed directory";
        EXPECT_FALSE(homeWritten);
        EXPECT_FALSE(tmpWritten);
    } else {
        // Only the working-directory check: the same commands do write.
        EXPECT_NE(after, before);
        EXPECT_TRUE(homeWritten);
    }
}

TEST_P(Confinement, EverythingWorksInsideTheAllowedDirectory) {
    struct Case {
        std::string script;
        std::string expectOut;
    };
    std::vector<Case> cases = {
        {"echo x > " + W("a") + " && cat " + W("a"), "x\n"},
        {"echo y >> " + W("a") + " && cat " + W("a"), "x\ny\n"},
        {"mkdir -p " + W("sub/deeper") + " && touch " + W("sub/deeper/t") + " && ls " + W("sub/deeper"), "t\n"},
        {"mv " + W("a") + " " + W("sub/a2") + " && cat " + W("sub/a2"), "x\ny\n"},
        {"cp -r " + W("sub") + " " + W("sub-copy") + " && ls " + W("sub-copy"), "a2\ndeeper\n"},
        {"rm -r " + W("sub-copy") + " && test ! -e " + W("sub-copy") + " && echo gone", "gone\n"},
        {"python3 -c \"open('" + W("py") + "', 'w').write('p')\" && cat " + W("py"), "p"},
        {"dd if=/dev/zero of=" + W("dd") + " bs=1 count=3 2>/dev/null && wc -c < " + W("dd"), "3\n"},
        {"echo rel > relative && cat relative", "rel\n"},
        {"echo t > \"$TMPDIR/t\" && cat \"$TMPDIR/t\"", "t\n"},
        {"echo to-null > /dev/null && echo ok", "ok\n"},
        {"head -c 5 /etc/passwd | wc -c", "5\n"},
        {"ln -s " + W("in") + " " + W("inlink") + " && cat " + W("inlink"), "inside"},
    };
    for (const auto& c : cases) {
        auto r = run(c.script);
        EXPECT_EQ(r.exitCode, 0) << c.script << "\n" << r.err;
        EXPECT_EQ(r.out, c.expectOut) << c.script;
    }
}

TEST_P(Confinement, StatusReportsTheActiveLayers) {
    auto r = runCommand({Harness::binary("hpc-daemonctl"), "status", "--json", "--daemon-id", "g"}, {},
                        {"HPC_DAEMON_HOME=" + m_h.home("g").string()});
    ASSERT_EQ(r.status, 0) << r.err;
    bool hasLandlock = r.out.find("landlock (ABI") != std::string::npos;
    EXPECT_EQ(hasLandlock, GetParam()) << r.out;
    EXPECT_NE(r.out.find("cwd-check"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(WithAndWithoutLandlock, Confinement, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "Landlock" : "CwdCheckOnly"; });
