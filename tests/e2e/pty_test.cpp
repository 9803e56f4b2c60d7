// PTY sessions end to end over TLS: agent -> hpc-relay -> hpc-daemond -> a
// real shell on a real pseudo-terminal.
#include "harness.hpp"

#include "errors.hpp"
#include "relay_db.hpp"
#include "store.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <termios.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

long rssKiB(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return 0;
}

/// The name of the program in the foreground of `pid`'s terminal (its
/// foreground process group's leader), "" when there is none.
std::string foregroundProgram(pid_t pid) {
    std::string stat = readFile("/proc/" + std::to_string(pid) + "/stat");
    auto close = stat.rfind(')');
    if (close == std::string::npos) return {};
    // After "pid (comm)": state, ppid, pgrp, session, tty_nr, tpgid.
    std::istringstream rest(stat.substr(close + 2));
    std::string state;
    long ppid = 0, pgrp = 0, session = 0, tty = 0, tpgid = 0;
    if (!(rest >> state >> ppid >> pgrp >> session >> tty >> tpgid) || tpgid <= 0) return {};
    std::string comm = readFile("/proc/" + std::to_string(tpgid) + "/comm");
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    return comm;
}

/// hpc-agent shell on a terminal of the test's own, as a person's would be.
class AgentTerminal {
public:
    AgentTerminal(const Harness& h, const Secret& token, const std::string& daemonId, unsigned cols, unsigned rows) {
        m_master = UniqueFd(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
        if (!m_master || ::grantpt(m_master.get()) != 0 || ::unlockpt(m_master.get()) != 0)
            throw std::runtime_error("no PTY for hpc-agent");
        UniqueFd slave(::open(::ptsname(m_master.get()), O_RDWR | O_NOCTTY | O_CLOEXEC));
        resize(cols, rows);
        ::tcgetattr(slave.get(), &m_initial);
        SpawnOptions o;
        o.argv = {Harness::binary("hpc-agent"), "shell", daemonId};
        o.envOverrides = {"HPC_AGENT_URL=" + h.url(), "HPC_AGENT_TOKEN=" + token.reveal(), "HPC_AGENT_CA=" + h.caFile(),
                          "TERM=dumb"};
        o.controllingTerminal = slave.get();
        o.dieWithParent = true;  // nothing the test starts outlives it
        m_process = ChildGuard(spawn(o).pid);
    }

    /// Sets the window size (SIGWINCH to hpc-agent).
    void resize(unsigned cols, unsigned rows) {
        winsize ws{};
        ws.ws_col = static_cast<unsigned short>(cols);
        ws.ws_row = static_cast<unsigned short>(rows);
        ::ioctl(m_master.get(), TIOCSWINSZ, &ws);
    }
    void type(const std::string& s) {
        ASSERT_EQ(::write(m_master.get(), s.data(), s.size()), static_cast<ssize_t>(s.size()));
    }
    /// Reads what hpc-agent shows until `needle` is on the screen.
    bool readFor(const std::string& needle, std::chrono::milliseconds timeout = 15s) {
        return waitUntil(
            [&] {
                char buf[4096];
                pollfd p{m_master.get(), POLLIN, 0};
                while (::poll(&p, 1, 20) > 0) {
                    ssize_t n = ::read(m_master.get(), buf, sizeof buf);
                    if (n <= 0) break;
                    m_screen.append(buf, static_cast<std::size_t>(n));
                }
                return m_screen.find(needle) != std::string::npos;
            },
            timeout);
    }
    const std::string& screen() const { return m_screen; }
    ChildGuard& process() { return m_process; }
    /// Whether the terminal's line mode and echo are as they were before hpc-agent started.
    bool restored() const {
        termios now{};
        ::tcgetattr(m_master.get(), &now);
        return (now.c_lflag & (ICANON | ECHO)) == (m_initial.c_lflag & (ICANON | ECHO));
    }

private:
    UniqueFd m_master;
    termios m_initial{};
    std::string m_screen;
    ChildGuard m_process;
};

class PtyTest : public ::testing::Test {
protected:
    void SetUp() override {
        m_h.startRelay();
        m_work = m_h.dir() / "work";
        ASSERT_EQ(m_h.setupDaemon("p", "p@example.org", {m_work.string()}).status, 0);
    }

    void start(const std::vector<std::string>& extra = {}) {
        m_h.startDaemon("p", extra);
        m_token = m_h.login("p@example.org");
        ASSERT_TRUE(m_h.waitConnected(m_token, "p"));
        m_agent = m_h.agent(m_token);
    }

    agent::PtyHandle open(unsigned cols = 80, unsigned rows = 24) {
        agent::PtySpec spec;
        spec.cols = cols;
        spec.rows = rows;
        spec.shell = "/bin/bash";
        spec.env = {{"PS1", "$ "}};
        return m_agent->openPty("p", spec);
    }

    /// Reads the channel's output (granting credit as it goes) until `done`
    /// holds for everything read, the shell exits, or the timeout passes.
    std::string readUntil(std::uint32_t channel, const std::function<bool(const std::string&)>& done,
                          std::chrono::milliseconds timeout = 20s, std::optional<agent::PtyEvent>* exit = nullptr) {
        std::string all;
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!done(all) && std::chrono::steady_clock::now() < deadline) {
            auto e = m_agent->nextPtyEvent(200ms);
            if (!e || e->channel != channel) continue;
            if (e->kind == agent::PtyEvent::Kind::Exit) {
                if (exit) *exit = e;
                break;
            }
            all += e->data;
            m_agent->ptyAck("p", channel, e->data.size());
        }
        return all;
    }

    static std::function<bool(const std::string&)> contains(const std::string& needle) {
        return [needle](const std::string& s) { return s.find(needle) != std::string::npos; };
    }

    Harness m_h;
    fs::path m_work;
    Secret m_token;
    std::unique_ptr<agent::AgentClient> m_agent;
};

}  // namespace

TEST_F(PtyTest, RunsCommandsInAShellInTheAllowedDirectory) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto pty = open();
    EXPECT_GT(pty.pid, 0);
    m_agent->ptyInput(pty.channel, "echo hello-$((40+2)); pwd\r");
    auto out = readUntil(pty.channel, contains(fs::canonical(m_work).string() + "\r\n"));
    EXPECT_NE(out.find("hello-42"), std::string::npos) << out;
    EXPECT_NE(out.find(fs::canonical(m_work).string()), std::string::npos) << out;
}

TEST_F(PtyTest, FiftyMegabytesArriveByteExact) {
    ASSERT_NO_FATAL_FAILURE(start());
    agent::ExecSpec make;
    make.command = "head -c 37500000 /dev/urandom | base64 -w 0 > data.b64 && sha256sum data.b64 | cut -d' ' -f1";
    auto made = m_agent->exec("p", make, 60s);
    ASSERT_EQ(made.exitCode, 0) << made.err;
    std::string expected = made.out.substr(0, 64);
    auto pty = open();
    // Raw output (no \n -> \r\n), no echo; \x02 and \x03 are not base64.
    m_agent->ptyInput(pty.channel, "stty raw -echo; printf '\\002'; cat data.b64; printf '\\003'; stty sane\r");
    auto out = readUntil(pty.channel, contains("\x03"), 120s);
    auto begin = out.find('\x02');
    auto end = out.find('\x03', begin == std::string::npos ? 0 : begin);
    ASSERT_NE(begin, std::string::npos);
    ASSERT_NE(end, std::string::npos);
    std::string data = out.substr(begin + 1, end - begin - 1);
    EXPECT_EQ(data.size(), 50000000u);
    EXPECT_EQ(relay::sha256Hex(data), expected);
}

// The daemon holds bulk output to send it in large frames: the end of a
// burst must still arrive when the program then falls silent.
TEST_F(PtyTest, TheEndOfABurstArrivesWhenTheProgramFallsSilent) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto pty = open();
    // The marker is printed from pieces, so the echoed command line does not hold it.
    m_agent->ptyInput(pty.channel, "head -c 3000000 /dev/zero | base64; printf 'TAIL-%s' MARK; sleep 300\r");
    auto out = readUntil(pty.channel, contains("TAIL-MARK"), 60s);
    auto tail = out.find("TAIL-MARK");
    ASSERT_NE(tail, std::string::npos) << "the burst's last bytes stayed in the daemon";
    // Between the echoed command line and the marker: 3 MB of zeros in
    // base64, 4,000,000 'A's (in lines of 76), none lost or repeated.
    // (The shell may show the typed line twice: the terminal's echo, then its editor's.)
    auto from = out.find('\n', out.rfind("sleep 300", tail));
    ASSERT_LT(from, tail);
    EXPECT_EQ(std::count(out.begin() + static_cast<std::ptrdiff_t>(from),
                         out.begin() + static_cast<std::ptrdiff_t>(tail), 'A'),
              4000000);
    m_agent->ptyClose("p", pty.channel, SIGKILL);
}

// A login node's soft limit of open files is often 1024, and each shell is
// descriptors in the daemon: the daemon takes what the hard limit allows,
// and the programs in its shells still get the account's own limit. The
// number of shells is the max_shells setting.
TEST_F(PtyTest, ShellsOutnumberALowOpenFileLimitAndTheirProgramsKeepIt) {
    struct rlimit saved {};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
    if (saved.rlim_max < 1024) GTEST_SKIP() << "the hard limit of open files here is " << saved.rlim_max;
    std::vector<std::string> env = m_h.baseEnv();
    env.insert(env.end(),
               {"HPC_DAEMON_HOME=" + m_h.home("p").string(), "DBUS_SESSION_BUS_ADDRESS=", "XDG_RUNTIME_DIR="});
    auto set = runCommand({Harness::binary("hpc-daemonctl"), "config", "set", "max_shells", "60"}, {}, env);
    ASSERT_EQ(set.status, 0) << set.err;
    struct rlimit low = saved;
    low.rlim_cur = 64;  // the daemon inherits it
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
    start();
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
    if (HasFatalFailure()) return;
    std::vector<agent::PtyHandle> shells;
    for (int i = 0; i < 60; ++i) ASSERT_NO_THROW(shells.push_back(open())) << "shell " << i + 1;
    // Printed from pieces, so the echoed command line does not hold it.
    m_agent->ptyInput(shells.back().channel, "echo L''IMIT=$(ulimit -n).\r");
    auto out = readUntil(shells.back().channel, [](const std::string& o) {
        auto at = o.find("LIMIT=");
        return at != std::string::npos && o.find("\r\n", at) != std::string::npos;
    });
    EXPECT_NE(out.find("LIMIT=64.\r\n"), std::string::npos) << out;
    for (const auto& shell : shells) m_agent->ptyClose("p", shell.channel, SIGKILL);
}

TEST_F(PtyTest, AShellSeesOnlyItsOwnDescriptors) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto pty = open();
    m_agent->ptyInput(pty.channel, "ls -l /proc/$$/fd; echo END-OF-$((1+1))\r");
    auto out = readUntil(pty.channel, contains("END-OF-2"));
    auto fds = parseFdListing(out);
    ASSERT_FALSE(fds.empty()) << out;
    // The terminal (0-2, and 255 where bash keeps it) and the audit pipe the
    // daemon hands over, nothing else.
    for (auto& [fd, target] : fds) {
        EXPECT_TRUE(fd <= 2 || fd == 255 || target.rfind("pipe:", 0) == 0) << fd << " -> " << target;
        EXPECT_EQ(target.find("socket:"), std::string::npos) << out;
    }
    EXPECT_LE(fds.size(), 5u) << out;
}

TEST_F(PtyTest, SttySizeShowsTheOpenedAndTheResizedSize) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto pty = open(100, 30);
    m_agent->ptyInput(pty.channel, "stty size\r");
    EXPECT_NE(readUntil(pty.channel, contains("30 100")).find("30 100"), std::string::npos);
    m_agent->ptyResize("p", pty.channel, 132, 43);
    m_agent->ptyInput(pty.channel, "stty size\r");
    EXPECT_NE(readUntil(pty.channel, contains("43 132")).find("43 132"), std::string::npos);
}

TEST_F(PtyTest, CtrlCReachesTheForegroundProgram) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto pty = open();
    m_agent->ptyInput(pty.channel, "sleep 100; echo after-sleep\r");
    ASSERT_TRUE(waitUntil([&] { return foregroundProgram(pty.pid) == "sleep"; }, 10s))
        << "sleep never ran in the foreground of the shell's terminal";
    m_agent->ptyInput(pty.channel, "\x03");
    m_agent->ptyInput(pty.channel, "echo rc=$?\r");
    auto out = readUntil(pty.channel, contains("rc=130"), 10s);
    EXPECT_NE(out.find("rc=130"), std::string::npos) << out;
    EXPECT_EQ(out.find("\nafter-sleep"), std::string::npos) << "the interrupted list must not continue";
}

TEST_F(PtyTest, ReportsExitCodesAndSignalExits) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto a = open();
    m_agent->ptyInput(a.channel, "exit 7\r");
    std::optional<agent::PtyEvent> exit;
    readUntil(
        a.channel, [](const std::string&) { return false; }, 10s, &exit);
    ASSERT_TRUE(exit);
    EXPECT_EQ(exit->exitCode, 7);
    auto b = open();
    m_agent->ptyInput(b.channel, "kill -KILL $$\r");
    exit.reset();
    readUntil(
        b.channel, [](const std::string&) { return false; }, 10s, &exit);
    ASSERT_TRUE(exit);
    EXPECT_FALSE(exit->exitCode);
    EXPECT_EQ(exit->signal, SIGKILL);
    // A resize after the exit is harmless (the channel is gone).
    EXPECT_THROW(m_agent->ptyResize("p", b.channel, 10, 10), Error);
}

TEST_F(PtyTest, WithoutCreditTheProgramBlocksAndTheDaemonDoesNotGrow) {
    ASSERT_NO_FATAL_FAILURE(start());
    agent::PtySpec spec;
    spec.shell = "/bin/bash";
    spec.credit = std::uint64_t{64} * 1024;
    auto pty = m_agent->openPty("p", spec);
    m_agent->ptyInput(pty.channel, "yes hpc-flow-control-test | head -c 300000000 > /dev/stdout; echo DONE\r");
    // Take what the initial credit allows, grant nothing more.
    std::size_t received = 0;
    for (int i = 0; i < 50; ++i) {
        auto e = m_agent->nextPtyEvent(100ms);
        if (e && e->kind == agent::PtyEvent::Kind::Output) received += e->data.size();
    }
    EXPECT_LE(received, 64u * 1024) << "the daemon sent more than the credit";
    pid_t daemon = m_h.daemonPid("p");
    long before = rssKiB(daemon);
    // Lets time pass on purpose (waits for nothing): the program keeps
    // writing meanwhile, and a daemon that buffered it would grow.
    std::this_thread::sleep_for(2s);
    long after = rssKiB(daemon);
    EXPECT_LT(after - before, 2048) << "daemon RSS grew from " << before << " to " << after << " KiB while stalled";
    // Credit returns: output flows again.
    m_agent->ptyAck("p", pty.channel, 8 << 20);
    std::size_t more = 0, frames = 0;
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (more < (4u << 20) && std::chrono::steady_clock::now() < deadline) {
        auto e = m_agent->nextPtyEvent(200ms);
        if (e && e->kind == agent::PtyEvent::Kind::Output) {
            more += e->data.size();
            ++frames;
        }
    }
    EXPECT_GE(more, 4u << 20);
    // A read returns at most one line-discipline buffer (4 KiB); output in
    // bulk is gathered into larger frames.
    ASSERT_GT(frames, 0u);
    EXPECT_GT(more / frames, 4096u) << "bulk output was sent one read at a time: " << frames << " frames";
    m_agent->ptyClose("p", pty.channel, SIGKILL);
}

TEST_F(PtyTest, TheSessionLimitIsEnforcedWithAClearError) {
    m_h.editProfile("p", [](Profile& p) { p.maxSessions = 2; });
    ASSERT_NO_FATAL_FAILURE(start());
    open();
    open();
    try {
        open();
        FAIL() << "a third shell opened";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Limit);
        EXPECT_NE(std::string(e.what()).find("limit is 2"), std::string::npos) << e.what();
    }
}

TEST_F(PtyTest, AnAgentsDisconnectClosesItsShellsAfterTheGracePeriod) {
    ASSERT_NO_FATAL_FAILURE(start({"--pty-detach-grace-seconds", "1"}));
    auto pty = open();
    ASSERT_GT(pty.pid, 0);
    EXPECT_EQ(::kill(pty.pid, 0), 0);
    m_agent.reset();  // the agent goes away
    EXPECT_TRUE(waitUntil([&] { return ::kill(pty.pid, 0) != 0; }, 15s))
        << "shell " << pty.pid << " outlived its agent";
}

TEST_F(PtyTest, ShellsAreConfinedByLandlockToo) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto pty = open();
    auto outside = m_h.dir() / "outside-pty";
    fs::create_directories(outside);
    m_agent->ptyInput(pty.channel, "echo x > " + (outside / "f").string() + "; echo rc=$?\r");
    auto out = readUntil(pty.channel, contains("rc="));
    EXPECT_FALSE(fs::exists(outside / "f")) << out;
}

TEST_F(PtyTest, AgentShellIsAnInteractiveTerminalLikeSsh) {
    ASSERT_NO_FATAL_FAILURE(start());
    AgentTerminal term(m_h, m_token, "p", 91, 27);
    term.type("stty size\r");
    EXPECT_TRUE(term.readFor("27 91")) << term.screen();
    term.resize(120, 50);  // SIGWINCH to hpc-agent, which sends pty.resize
    // The new size reaches the remote terminal some time later: ask it until it has it.
    EXPECT_TRUE(waitUntil(
        [&] {
            term.type("stty size\r");
            return term.readFor("50 120", 1s);
        },
        15s))
        << term.screen();
    term.type("exit 5\r");
    auto status = term.process().waitFor(15s);
    ASSERT_TRUE(status);
    EXPECT_EQ(status->code, 5) << term.screen();
    EXPECT_TRUE(term.restored()) << "the terminal was not restored";
}

TEST_F(PtyTest, ShellLinesAreInTheAuditLog) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto pty = open();
    m_agent->ptyInput(pty.channel, "echo audited-line\r");
    readUntil(pty.channel, contains("audited-line\r\n"));
    m_agent->ptyInput(pty.channel, "false\r");
    m_agent->ptyInput(pty.channel, "echo done-$((6*7))\r");
    readUntil(pty.channel, contains("done-42\r\n"));
    std::vector<std::string> env = {"HPC_DAEMON_HOME=" + m_h.home("p").string()};
    std::string out;
    ASSERT_TRUE(waitUntil(
        [&] {
            out = runCommand({Harness::binary("hpc-daemonctl"), "audit", "--json"}, {}, env).out;
            return out.find("done-$((6*7))") != std::string::npos;
        },
        10s))
        << out;
    auto entries = boost::json::parse(out).as_array();
    ASSERT_EQ(entries.size(), 3u) << out;
    EXPECT_EQ(entries[0].at("command").as_string(), "echo audited-line");
    EXPECT_EQ(entries[0].at("exit_code").as_int64(), 0);
    EXPECT_EQ(entries[0].at("session").as_string(), "pty:1") << "the daemon's own number for its first shell";
    EXPECT_EQ(entries[0].at("cwd").as_string(), fs::canonical(m_work).string());
    EXPECT_EQ(entries[1].at("command").as_string(), "false");
    EXPECT_EQ(entries[1].at("exit_code").as_int64(), 1);
}

TEST_F(PtyTest, AnIdleShellIsHungUpAfterTheProfilesTimeout) {
    m_h.editProfile("p", [](Profile& p) { p.idleTimeoutSeconds = 2; });
    ASSERT_NO_FATAL_FAILURE(start());
    auto pty = open();
    // Activity keeps it open past the timeout...
    for (int i = 0; i < 3; ++i) {
        m_agent->ptyInput(pty.channel, "echo tick-" + std::to_string(i) + "\r");
        readUntil(pty.channel, contains("tick-" + std::to_string(i) + "\r\n"), 5s);
        // Lets time pass on purpose (waits for nothing): three seconds of use
        // in all, past the two-second timeout.
        std::this_thread::sleep_for(1s);
    }
    EXPECT_EQ(::kill(pty.pid, 0), 0) << "hung up while in use";
    // ...silence ends it.
    std::optional<agent::PtyEvent> exit;
    readUntil(
        pty.channel, [](const std::string&) { return false; }, 15s, &exit);
    ASSERT_TRUE(exit);
    EXPECT_EQ(exit->signal, SIGHUP);
}

// Issue 16 item 3: a shell outlives its platform. The relay is killed (-9)
// while the shell streams; a new relay process comes up, the daemon
// reconnects, and the agent attaches the session from the last byte it had.
TEST_F(PtyTest, AShellOutlivesARelayKilledMidStreamAndAttachesAgainByteExact) {
    ASSERT_NO_FATAL_FAILURE(start({"--reconnect-max-seconds", "1"}));
    auto pty = open();
    ASSERT_FALSE(pty.session.empty());
    // About two seconds of numbered lines, then a marker.
    m_agent->ptyInput(pty.channel,
                      "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo line-$i; [ $((i % 100)) = 0 ] && sleep 0.05; "
                      "done; echo END-$((6*7))\r");
    std::string before = readUntil(pty.channel, contains("line-400\r\n"));
    ASSERT_NE(before.find("line-400\r\n"), std::string::npos) << before;
    m_agent.reset();
    m_h.killRelay();
    m_h.startRelay();
    ASSERT_TRUE(m_h.waitConnected(m_token, "p")) << m_h.daemonLog("p");
    m_agent = m_h.agent(m_token);
    auto again = m_agent->attachPty("p", pty.session, before.size());
    EXPECT_EQ(again.fromByte, before.size()) << "nothing was lost: the daemon kept what was not acknowledged";
    EXPECT_EQ(again.pid, pty.pid);
    std::string after = readUntil(again.channel, contains("END-42"), 60s);
    ASSERT_NE(after.find("END-42"), std::string::npos) << after.substr(0, 300);
    auto numbers = numbersAfter(before + after, "line-");
    ASSERT_EQ(numbers.size(), 3000u);
    for (int i = 0; i < 3000; ++i) ASSERT_EQ(numbers[static_cast<std::size_t>(i)], i + 1) << "at line " << i + 1;
    // And the shell carries on.
    m_agent->ptyInput(again.channel, "echo still-$((2*3))\r");
    EXPECT_NE(readUntil(again.channel, contains("still-6")).find("still-6"), std::string::npos);
}

TEST_F(PtyTest, OnlyTheAgentThatOpenedAShellMayAttachIt) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto pty = open();
    auto other = m_h.agent(m_h.login("p@example.org", "another-agent"));
    auto refusal = [&](const std::string& session) {
        try {
            other->attachPty("p", session, std::nullopt);
        } catch (const Error& e) {
            return e.code();
        }
        return ErrorCode::Internal;
    };
    EXPECT_EQ(refusal(pty.session), ErrorCode::NotOwner);
    EXPECT_EQ(refusal(std::to_string(pty.channel) + "-00000000"), ErrorCode::NotFound) << "a guessed name";
    EXPECT_EQ(refusal("nonsense"), ErrorCode::NotFound);
    // The owner's attach from a second connection takes the channel from the first.
    auto second = m_h.agent(m_token);
    auto taken = second->attachPty("p", pty.session, std::nullopt);
    std::optional<agent::PtyEvent> lost;
    readUntil(
        pty.channel, [](const std::string&) { return false; }, 10s, &lost);
    ASSERT_TRUE(lost);
    EXPECT_EQ(lost->errorCode, "NOT_OWNER") << lost->error;
    second->ptyInput(taken.channel, "echo mine-$((3*3))\r");
    std::string out;
    EXPECT_TRUE(waitUntil(
        [&] {
            if (auto e = second->nextPtyEvent(200ms); e && e->channel == taken.channel) out += e->data;
            return out.find("mine-9") != std::string::npos;
        },
        20s))
        << out;
}

TEST_F(PtyTest, AShellThatEndsWhileDetachedGivesItsLastOutputAndStatusToTheAgentThatAttaches) {
    ASSERT_NO_FATAL_FAILURE(start({"--pty-detach-grace-seconds", "30"}));
    auto pty = open();
    m_agent->ptyInput(pty.channel, "echo ready; sleep 1; echo bye-$((6*7)); exit 3\r");
    std::string before = readUntil(pty.channel, contains("ready\r\n"));
    m_agent.reset();  // gone while the shell finishes
    ASSERT_TRUE(waitUntil([&] { return ::kill(pty.pid, 0) != 0; }, 20s)) << "the shell did not exit";
    m_agent = m_h.agent(m_token);
    auto again = m_agent->attachPty("p", pty.session, before.size());
    std::optional<agent::PtyEvent> exit;
    std::string after = readUntil(
        again.channel, [](const std::string&) { return false; }, 20s, &exit);
    EXPECT_NE(after.find("bye-42"), std::string::npos) << after;
    ASSERT_TRUE(exit);
    EXPECT_TRUE(exit->error.empty()) << exit->error;
    EXPECT_EQ(exit->exitCode, 3);
    // Delivered: the session is gone now.
    EXPECT_THROW(m_agent->attachPty("p", pty.session, std::nullopt), Error);
}

TEST_F(PtyTest, AfterTheGracePeriodTheSessionCannotBeAttached) {
    ASSERT_NO_FATAL_FAILURE(start({"--pty-detach-grace-seconds", "1"}));
    auto pty = open();
    m_agent.reset();
    ASSERT_TRUE(waitUntil([&] { return ::kill(pty.pid, 0) != 0; }, 15s));
    m_agent = m_h.agent(m_token);
    try {
        m_agent->attachPty("p", pty.session, std::nullopt);
        ADD_FAILURE() << "a session hung up after its grace period was attached";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::NotFound) << e.what();
    }
}

TEST_F(PtyTest, AgentShellCarriesOnThroughARelayRestart) {
    ASSERT_NO_FATAL_FAILURE(start({"--reconnect-max-seconds", "1"}));
    AgentTerminal term(m_h, m_token, "p", 80, 24);
    term.type("x=first; echo one-$((1+1))\r");
    ASSERT_TRUE(term.readFor("one-2")) << term.screen();
    m_h.killRelay();
    m_h.startRelay();
    // Typed while hpc-agent attaches again: read once it has; the shell is the same one ($x).
    term.type("echo two-$((2+2))-$x\r");
    EXPECT_TRUE(term.readFor("two-4-first", 90s)) << term.screen();
    term.type("exit 7\r");
    auto status = term.process().waitFor(30s);
    ASSERT_TRUE(status) << term.screen();
    EXPECT_EQ(status->code, 7) << term.screen();
}
