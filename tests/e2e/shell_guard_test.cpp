// The guardrail escape suite, in a real interactive bash on a PTY through the
// whole system: blocked actions change nothing on disk (and the wrappers say
// why in one line), allowed ones succeed. Run once with only the advisory
// wrappers and once with Landlock as well; cases only the kernel can stop
// (interpreters, programs called directly) run with Landlock only.
#include "harness.hpp"

#include <gtest/gtest.h>
#include <linux/landlock.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

struct Case {
    std::string command;
    bool kernelOnly = false;  ///< wrappers cannot see it
};

class ShellGuard : public ::testing::TestWithParam<bool> {
protected:
    void SetUp() override {
        bool landlock = GetParam();
        if (landlock && ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION) <= 0)
            GTEST_SKIP() << "this kernel has no Landlock";
        m_h.startRelay();
        ASSERT_EQ(m_h.setupDaemon("sg", "sg@example.org", {(m_h.dir() / "allowed").string()}).status, 0);
        m_w = fs::canonical(m_h.dir() / "allowed");
        m_o = m_h.dir() / "outside";
        fs::create_directories(m_o / "emptydir");
        std::ofstream(m_o / "existing") << "original";
        std::ofstream(m_w / "in") << "inside";
        // These layers alone: the mount namespace is tested in guard_test.
        std::vector<std::string> extra = {"--pty-detach-grace-seconds", "1", "--no-mount-namespace"};
        if (!landlock) extra.push_back("--no-landlock");
        m_h.startDaemon("sg", extra);
        auto token = m_h.login("sg@example.org");
        ASSERT_TRUE(m_h.waitConnected(token, "sg"));
        m_agent = m_h.agent(token);
        agent::PtySpec spec;
        spec.shell = "/bin/bash";
        spec.credit = 16 << 20;
        m_pty = m_agent->openPty("sg", spec);
    }

    /// Runs one line in the shell; returns what it printed and its status.
    std::pair<std::string, int> run(const std::string& line) {
        static const std::regex done("@@rc=([0-9]+)@@");
        std::string marker = "; echo \"@@rc=$?@@\"\r";
        m_agent->ptyInput(m_pty.channel, line + marker);
        std::string out;
        std::smatch m;
        auto deadline = std::chrono::steady_clock::now() + 20s;
        while (!std::regex_search(out, m, done) && std::chrono::steady_clock::now() < deadline) {
            auto e = m_agent->nextPtyEvent(200ms);
            if (e && e->kind == agent::PtyEvent::Kind::Output) out += e->data;
        }
        return {out, m.empty() ? -1 : std::stoi(m[1])};
    }

    std::string W(const std::string& n) const { return (m_w / n).string(); }
    std::string O(const std::string& n) const { return (m_o / n).string(); }

    Harness m_h;
    fs::path m_w, m_o;
    std::unique_ptr<agent::AgentClient> m_agent;
    agent::PtyHandle m_pty;
};

}  // namespace

TEST_P(ShellGuard, BlockedActionsChangeNothingOutsideTheAllowedDirectory) {
    const bool landlock = GetParam();
    std::string home = std::getenv("HOME") ? std::getenv("HOME") : "/root";
    std::string homeFile = home + "/hpc-shell-guard-" + std::to_string(::getpid());
    std::vector<Case> cases = {
        {"echo x > " + O("redirect")},
        {"echo x >> " + O("existing")},
        {"ls /nonexistent 2> " + O("stderr")},
        {"echo x &> " + O("both")},
        {"echo x >| " + O("clobber")},
        {"echo x > '" + O("single quoted name") + "'"},
        {"echo x > \"" + O("double quoted name") + "\""},
        {"echo x > " + homeFile},
        {"echo x > ~/hpc-shell-guard-tilde"},
        {"echo x > ../outside/dotdot"},
        {"touch " + O("touched")},
        {"touch " + homeFile + "-touch"},
        {"mkdir " + O("dir")},
        {"mkdir -p " + O("deep/er")},
        {"mkdir \"" + O("spaced dir") + "\""},
        {"rm " + O("existing")},
        {"rm -f " + O("existing")},
        {"rmdir " + O("emptydir")},
        {"mv " + O("existing") + " " + W("stolen")},
        {"mv " + W("in") + " " + O("")},
        {"cp " + W("in") + " " + O("copy")},
        {"cp -r " + m_w.string() + " " + O("tree")},
        {"cp -t " + m_o.string() + " " + W("in")},
        {"echo x | tee " + O("teed")},
        {"echo x | tee -a " + O("existing")},
        {"cd " + m_o.string() + " && echo x > relative"},
        {"cd .. && touch escaped-via-cd"},
        {"pushd " + m_o.string() + " && touch pushed"},
        {"ln -sfn " + m_o.string() + " " + W("escape") + " && echo x > " + W("escape/via-symlink")},
        {"touch " + W("escape/touch-via-symlink")},
        // Only the kernel stops these.
        {"python3 -c \"open('" + O("py") + "', 'w').write('x')\"", true},
        {"perl -e 'open(F, \">" + O("pl") + "\") or die; print F 1'", true},
        {"dd if=/dev/zero of=" + O("dd") + " bs=1 count=1", true},
        {"sh -c 'echo x > " + O("sh") + "'", true},
        {"bash -c 'echo x > " + O("bash") + "'", true},
        {"command touch " + O("command-touch"), true},
        {"/usr/bin/env touch " + O("env-touch"), true},
        {"install -m 644 /dev/null " + O("installed"), true},
    };
    std::string before = snapshotTree(m_o);
    int checked = 0;
    for (const auto& c : cases) {
        if (c.kernelOnly && !landlock) continue;
        auto [out, rc] = run(c.command);
        ++checked;
        EXPECT_EQ(snapshotTree(m_o), before) << "escaped: " << c.command << "\n" << out;
        before = snapshotTree(m_o);  // report each escape once
        if (!c.kernelOnly) {
            EXPECT_NE(out.find("hpc-daemon: blocked"), std::string::npos) << "no explanation for: " << c.command << "\n"
                                                                          << out;
        }
    }
    EXPECT_FALSE(fs::exists(homeFile));
    EXPECT_FALSE(fs::exists(homeFile + "-touch"));
    EXPECT_FALSE(fs::exists(m_h.dir() / "escaped-via-cd"));
    EXPECT_FALSE(fs::exists(home + "/hpc-shell-guard-tilde"));
    fs::remove(home + "/hpc-shell-guard-tilde");
    EXPECT_EQ(checked, landlock ? 38 : 30);
}

TEST_P(ShellGuard, AllowedActionsSucceed) {
    std::vector<std::pair<std::string, std::string>> cases = {
        {"echo x > " + W("a"), W("a")},
        {"echo y >> " + W("a"), W("a")},
        {"mkdir -p " + W("s/t"), W("s/t")},
        {"touch " + W("s/t/f"), W("s/t/f")},
        {"mv " + W("a") + " " + W("s/a2"), W("s/a2")},
        {"cp " + W("s/a2") + " " + W("copy"), W("copy")},
        {"cp -r " + W("s") + " " + W("s2"), W("s2/a2")},
        {"echo x | tee " + W("teed") + " > /dev/null", W("teed")},
        {"cd " + W("s") + " && echo rel > r && cd ..", W("s/r")},
        {"pushd " + W("s") + " > /dev/null && touch pushed && popd > /dev/null", W("s/pushed")},
        {"python3 -c \"open('" + W("py") + "', 'w').write('p')\"", W("py")},
        {"ls /etc > " + W("listing"), W("listing")},
        {"echo 'quoted name' > '" + W("with space") + "'", W("with space")},
        {"ln -s " + W("in") + " " + W("inlink") + " && cat " + W("inlink") + " > " + W("fromlink"), W("fromlink")},
    };
    for (const auto& [command, made] : cases) {
        auto [out, rc] = run(command);
        EXPECT_EQ(rc, 0) << command << "\n" << out;
        EXPECT_TRUE(fs::exists(made)) << command << "\n" << out;
        EXPECT_EQ(out.find("hpc-daemon: blocked"), std::string::npos) << command << "\n" << out;
    }
    auto [out, rc] = run("rm -r " + W("s2"));
    EXPECT_EQ(rc, 0) << out;
    EXPECT_FALSE(fs::exists(W("s2")));
    for (const char* device : {"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty"}) {
        auto [devOut, devRc] = run(std::string("echo fine > ") + device);
        EXPECT_EQ(devRc, 0) << device << "\n" << devOut;
        EXPECT_EQ(devOut.find("hpc-daemon: blocked"), std::string::npos) << device << "\n" << devOut;
    }
}

INSTANTIATE_TEST_SUITE_P(Layers, ShellGuard, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "WrappersAndLandlock" : "WrappersOnly"; });
