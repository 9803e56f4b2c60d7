// Issue 21, "a full disk or quota loses nothing", for real: the daemon's
// state directory, or the relay's data directory, is a small tmpfs in a
// private mount namespace (this test process unshares it, so the relay, the
// daemon and everything they start share it and nothing outside sees it),
// filled by the test until ENOSPC.
#include "errors.hpp"
#include "harness.hpp"
#include "sqlite.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

std::string str(const json::object& o, const char* key) {
    auto* v = o.if_contains(key);
    return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

agent::ExecSpec command(const std::string& line) {
    agent::ExecSpec spec;
    spec.command = line;
    return spec;
}

double num(const json::object& o, const char* key) {
    auto* v = o.if_contains(key);
    return v && v->is_number() ? v->to_number<double>() : -1;
}

class DiskFullE2E : public ::testing::Test {
protected:
    /// The directory put on the small file system.
    virtual fs::path smallDisk() const = 0;

    void SetUp() override {
        if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root (the tests run as root here and in CI)";
        // This thread's mount namespace, inherited by every process the
        // harness starts from it; private, so the tmpfs stays in it.
        ASSERT_EQ(::unshare(CLONE_NEWNS), 0) << std::strerror(errno);
        ASSERT_EQ(::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0) << std::strerror(errno);
        m_state = m_h.home("d1");
        m_disk = smallDisk();
        fs::create_directories(m_disk);
        // Room for the database and its WAL, then filled by the test.
        ASSERT_EQ(::mount("tmpfs", m_disk.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0700"), 0)
            << std::strerror(errno);
        m_mounted = true;

        m_h.startRelay();
        m_work = m_h.dir() / "work";
        fs::create_directories(m_work);
        auto r = m_h.setupDaemon("d1", "full@example.org", {m_work.string()});
        ASSERT_EQ(r.status, 0) << r.err;
        m_token = m_h.login("full@example.org");
        m_h.startDaemon("d1", {"--reconnect-max-seconds", "2"}, {"LOCAL_MODE=1"});
        ASSERT_TRUE(m_h.waitConnected(m_token, "d1")) << m_h.daemonLog("d1");
        ASSERT_TRUE(m_h.waitLinkState("d1", "connected")) << m_h.daemonLog("d1");
        m_agent = m_h.agent(m_token);
        m_pid = m_h.daemonPid("d1");
    }

    void TearDown() override {
        m_agent.reset();
        m_h.stopDaemon("d1");
        m_h.stopRelay();
        if (m_mounted) ::umount2(m_disk.c_str(), MNT_DETACH);
    }

    /// Writes a file on the small disk until the file system refuses
    /// (ENOSPC); returns how much it took.
    std::uint64_t fill() {
        int fd = ::open(filler().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        EXPECT_GE(fd, 0) << std::strerror(errno);
        std::string block(std::size_t{64} * 1024, 'f');
        std::uint64_t total = 0;
        int err = 0;
        for (int i = 0; i < 100000; ++i) {  // 6 GiB at most: bounded even if the mount were not there
            ssize_t n = ::write(fd, block.data(), block.size());
            if (n < 0) {
                err = errno;
                break;
            }
            total += static_cast<std::uint64_t>(n);
        }
        ::close(fd);
        EXPECT_EQ(err, ENOSPC) << std::strerror(err);
        return total;
    }
    fs::path filler() const { return m_disk / "filler"; }

    /// An empty WAL, so the next write needs new blocks: on a real disk the
    /// WAL may still have room from before, which only delays the refusal.
    static void truncateWal(const fs::path& database) {
        auto db = sqlite::Db::open(database.string());
        db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
    }

    static std::string integrityCheck(const fs::path& database) {
        auto db = sqlite::Db::open(database.string());
        auto check = db.prepare("PRAGMA integrity_check");
        return check.step() ? check.text(0) : "no answer";
    }

    static std::size_t occurrences(const std::string& text, const std::string& what) {
        std::size_t n = 0;
        for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
        return n;
    }

    /// A job that runs until the test creates `go` in the work directory.
    std::string submitWaitingJob(int n) {
        agent::JobSpec spec;
        spec.script = "for i in $(seq 1 1200); do [ -e " + (m_work / "go").string() +
                      " ] && break; sleep 0.1; done\necho finished-" + std::to_string(n) + "\n";
        spec.cwd = m_work.string();
        return str(m_agent->submitJob("d1", spec), "job_id");
    }

    /// The error code and message of a request the daemon refused.
    std::pair<std::optional<ErrorCode>, std::string> refusal(const std::function<void()>& request) {
        try {
            request();
        } catch (const Error& e) {
            return {e.code(), e.what()};
        }
        return {std::nullopt, "accepted"};
    }

    json::object status() const { return m_h.daemonStatus("d1"); }
    /// d1's warning as the agent sees it: `hpc-agent daemons --json`.
    std::string listedWarning() const {
        auto r = runCommand(
            {Harness::binary("hpc-agent"), "daemons", "--json"}, "",
            {"HPC_AGENT_URL=" + m_h.url(), "HPC_AGENT_TOKEN=" + m_token.reveal(), "HPC_AGENT_CA=" + m_h.caFile()});
        json::error_code ec;
        auto v = json::parse(r.out, ec);
        if (!ec && v.is_array())
            for (const auto& d : v.as_array())
                if (d.as_object().at("daemon_id") == "d1") return std::string(d.at("warning").as_string());
        return "?";
    }
    bool daemonAlive() const { return ::kill(m_pid, 0) == 0 && m_h.daemonPid("d1") == m_pid; }

    Harness m_h;
    fs::path m_state;
    fs::path m_disk;
    fs::path m_work;
    bool m_mounted = false;
    Secret m_token;
    std::unique_ptr<agent::AgentClient> m_agent;
    pid_t m_pid = 0;
};

class DaemonStateFull : public DiskFullE2E {
protected:
    fs::path smallDisk() const override { return m_h.home("d1"); }
};

class RelayDataFull : public DiskFullE2E {
protected:
    fs::path smallDisk() const override { return m_h.dir() / "relay"; }
};

}  // namespace

TEST_F(DaemonStateFull, AFullStateDiskRefusesNewWorkKeepsRunningJobsAndRecoversWhenSpaceReturns) {
    // Before the fill: three jobs running, and a shell open.
    std::vector<std::string> jobs;
    jobs.reserve(3);
    for (int i = 0; i < 3; ++i) jobs.push_back(submitWaitingJob(i));
    agent::JobSpec sleeper;  // cancelled while the disk is full
    sleeper.script = "sleep 600\n";
    sleeper.cwd = m_work.string();
    std::string cancelled = str(m_agent->submitJob("d1", sleeper), "job_id");
    ASSERT_TRUE(m_h.waitStatus("d1", [](const json::object& s) { return num(s, "active_jobs") == 4; }))
        << m_h.daemonLog("d1");
    auto shell = m_agent->openPty("d1", agent::PtySpec{});
    double connectedSince = num(status(), "connected_since");
    ASSERT_GT(connectedSince, 0);

    truncateWal(m_state / "state.db");
    ASSERT_GT(fill(), 0u);

    // The jobs end while nothing can be written: their ends stay unrecorded,
    // the jobs stay live in the store, and the daemon knows the disk is full.
    std::ofstream(m_work / "go").put('\n');
    ASSERT_TRUE(m_h.waitStatus("d1", [](const json::object& s) {
        return num(s, "active_jobs") == 1 && str(s, "state_warning").find("disk full") != std::string::npos;
    })) << m_h.daemonLog("d1");
    // A cancel cannot be written, and still ends the job.
    EXPECT_NO_THROW(m_agent->cancelJob("d1", cancelled));
    ASSERT_TRUE(m_h.waitStatus("d1", [](const json::object& s) { return num(s, "active_jobs") == 0; }))
        << m_h.daemonLog("d1");
    for (const auto& id : jobs) EXPECT_EQ(str(m_agent->jobStatus("d1", id), "state"), "RUNNING") << id;
    EXPECT_EQ(num(status(), "pending_callbacks"), 0);

    // New work is refused with STORAGE_FULL, naming the state file.
    std::string stateFile = (m_state / "state.db").string();
    for (auto [what, request] : std::vector<std::pair<std::string, std::function<void()>>>{
             {"job.submit", [&] { submitWaitingJob(9); }},
             {"exec", [&] { m_agent->exec("d1", command("true")); }},
             {"pty.open", [&] { m_agent->openPty("d1", agent::PtySpec{}); }}}) {
        auto [code, message] = refusal(request);
        EXPECT_EQ(code, ErrorCode::StorageFull) << what << ": " << message;
        EXPECT_NE(message.find(stateFile), std::string::npos) << what << ": " << message;
        EXPECT_NE(message.find("full"), std::string::npos) << what << ": " << message;
    }

    // What needs no write is still served: reads, and the shell opened before.
    EXPECT_EQ(m_agent->listJobs("d1").size(), 4u);
    m_agent->ptyInput(shell.channel, "echo alive-$((6*7))\n");
    std::string output;
    ASSERT_TRUE(waitUntil(
        [&] {
            if (auto e = m_agent->nextPtyEvent(100ms); e && e->kind == agent::PtyEvent::Kind::Output) output += e->data;
            return output.find("alive-42") != std::string::npos;
        },
        20s))
        << output;
    auto s = status();
    EXPECT_EQ(str(s, "link_state"), "connected");
    EXPECT_EQ(num(s, "connected_since"), connectedSince) << "the link never dropped";
    EXPECT_NE(str(s, "state_warning").find(stateFile), std::string::npos) << str(s, "state_warning");
    // The platform shows it too: an agent sees that the daemon's disk is full.
    EXPECT_TRUE(waitUntil([&] { return listedWarning().find("disk full") != std::string::npos; }, 20s))
        << listedWarning();

    // Space returns: no restart, no command; the ends are recorded and every
    // callback is delivered, once.
    fs::remove(filler());
    for (std::size_t i = 0; i < jobs.size(); ++i) {
        auto cb = m_agent->waitForJob("d1", jobs[i], 60s);
        ASSERT_TRUE(cb) << "no callback for " << jobs[i] << "\n" << m_h.daemonLog("d1");
        EXPECT_EQ(cb->state, "COMPLETED");
        EXPECT_EQ(cb->exitCode, 0);
        EXPECT_NE(cb->stdoutTail.find("finished-" + std::to_string(i)), std::string::npos) << cb->stdoutTail;
    }
    auto cancelledCb = m_agent->waitForJob("d1", cancelled, 60s);
    ASSERT_TRUE(cancelledCb) << m_h.daemonLog("d1");
    EXPECT_EQ(cancelledCb->state, "CANCELLED");
    ASSERT_TRUE(m_h.waitStatus("d1", [](const json::object& st) {
        return str(st, "state_warning").empty() && num(st, "pending_callbacks") == 0;
    })) << m_h.daemonLog("d1");
    EXPECT_TRUE(waitUntil([&] { return listedWarning().empty(); }, 20s)) << listedWarning();
    for (const auto& id : jobs) {
        EXPECT_EQ(str(m_agent->jobStatus("d1", id), "state"), "COMPLETED") << id;
        EXPECT_EQ(m_agent->storedCallbacks("d1", id).size(), 1u) << id;
    }

    // New work is accepted again.
    EXPECT_EQ(m_agent->exec("d1", command("echo back")).out, "back\n");
    std::ofstream(m_work / "go").put('\n');
    std::string late = submitWaitingJob(3);
    auto cb = m_agent->waitForJob("d1", late, 60s);
    ASSERT_TRUE(cb) << m_h.daemonLog("d1");
    EXPECT_EQ(cb->state, "COMPLETED");

    // The daemon never exited nor reconnected, said it once, and the
    // database is sound.
    EXPECT_TRUE(daemonAlive());
    EXPECT_EQ(num(status(), "connected_since"), connectedSince);
    EXPECT_EQ(occurrences(m_h.daemonLog("d1"), "the disk or quota is full"), 1u) << m_h.daemonLog("d1");
    EXPECT_EQ(integrityCheck(stateFile), "ok");
}

TEST_F(RelayDataFull, AFullRelayDiskRefusesSignInsKeepsRoutingAndStoresTheCallbackOnceSpaceReturns) {
    std::string job = submitWaitingJob(0);
    ASSERT_TRUE(m_h.waitStatus("d1", [](const json::object& s) { return num(s, "active_jobs") == 1; }))
        << m_h.daemonLog("d1");
    double connectedSince = num(status(), "connected_since");
    pid_t relay = m_h.relayPid();
    fs::path relayDb = m_disk / "relay.db";
    truncateWal(relayDb);
    ASSERT_GT(fill(), 0u);

    // The job ends; the relay cannot store its callback and does not
    // acknowledge it, so the daemon keeps it in its outbox.
    std::ofstream(m_work / "go").put('\n');
    ASSERT_TRUE(m_h.waitStatus("d1", [](const json::object& s) {
        return num(s, "active_jobs") == 0 && num(s, "pending_callbacks") == 1;
    })) << m_h.daemonLog("d1");

    // A sign-in needs a write: refused with STORAGE_FULL (HTTP 507).
    auto [code, message] = refusal([&] { m_h.login("late@example.org"); });
    EXPECT_EQ(code, ErrorCode::StorageFull) << message;
    EXPECT_NE(message.find("full"), std::string::npos) << message;
    // Routing needs none: the agent's requests still reach the daemon.
    EXPECT_EQ(m_agent->exec("d1", command("echo routed")).out, "routed\n");
    EXPECT_EQ(str(m_agent->jobStatus("d1", job), "state"), "COMPLETED");
    EXPECT_TRUE(m_h.relayHealth().at("accepting").as_bool());

    // Space returns: the daemon's next try is stored and delivered, once.
    fs::remove(filler());
    auto cb = m_agent->waitForJob("d1", job, 60s);
    ASSERT_TRUE(cb) << m_h.daemonLog("d1") << m_h.relayLog();
    EXPECT_EQ(cb->state, "COMPLETED");
    EXPECT_NE(cb->stdoutTail.find("finished-0"), std::string::npos) << cb->stdoutTail;
    ASSERT_TRUE(m_h.waitStatus("d1", [](const json::object& s) { return num(s, "pending_callbacks") == 0; }))
        << m_h.daemonLog("d1");
    EXPECT_EQ(m_agent->storedCallbacks("d1", job).size(), 1u);
    EXPECT_NO_THROW(m_h.login("late@example.org"));

    // Neither process exited nor reconnected, the relay said it once, and
    // its database is sound.
    EXPECT_EQ(m_h.relayPid(), relay);
    EXPECT_TRUE(daemonAlive());
    EXPECT_EQ(num(status(), "connected_since"), connectedSince);
    EXPECT_EQ(occurrences(m_h.relayLog(), "the disk or quota is full"), 1u) << m_h.relayLog();
    EXPECT_EQ(integrityCheck(relayDb), "ok");
}
