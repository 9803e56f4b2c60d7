// Job mode end to end: hpc-agent → hpc-relay → hpc-daemond over TLS, with
// jobs run by a real single-node SLURM cluster (started by the ctest fixture
// through scripts/slurm-cluster.sh) and by the local backend. Each lifecycle
// test runs once per backend; SLURM-only tests are in slurm_jobs_test.cpp.
#include "jobs_fixture.hpp"

#include <fcntl.h>
#include <signal.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>

using namespace hpc;
using namespace hpc::test;
using namespace hpc::test::jobs;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

TEST_P(Jobs, ACompletedJobCallsBackOnceWithItsOutputAndContext) {
    auto r = submit("#!/bin/bash\necho hello from $HPC_JOB_ID\necho oops >&2\n", json::object{{"ticket", 42}});
    std::string id = str(r, "job_id");
    ASSERT_FALSE(id.empty());
    EXPECT_EQ(str(r, "backend"), GetParam());
    EXPECT_FALSE(str(r, "scheduler_id").empty());
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(cb.exitCode, 0);
    EXPECT_EQ(cb.stdoutTail, "hello from " + id + "\n");
    EXPECT_EQ(cb.stderrTail, "oops\n");
    EXPECT_EQ(cb.raw.at("context").at("ticket").as_int64(), 42);
    EXPECT_EQ(cb.daemonId, "j");
    // The job's directory holds the script, the wrapper, the output and the exit status.
    fs::path dir = fs::path(str(r, "stdout_path")).parent_path();
    EXPECT_EQ(dir.parent_path().parent_path().filename(), ".hpc-daemon");
    EXPECT_EQ(readFile(dir / "exit_status"), "0\n");
    EXPECT_TRUE(fs::exists(dir / "script"));
    EXPECT_EQ(stateOf(id), "COMPLETED");
    // Exactly one callback reached the platform, and the daemon's outbox is empty once acknowledged.
    EXPECT_EQ(m_agent->storedCallbacks("j", id).size(), 1u);
    EXPECT_TRUE(m_h.waitStatus(
        "j", [](const json::object& s) { return s.at("pending_callbacks").to_number<int>() == 0; }, 10s));
}

TEST_P(Jobs, AJobSeesOnlyItsOwnDescriptors) {
    if (slurm()) GTEST_SKIP() << "slurmd, not the daemon, starts a SLURM job's processes";
    auto id = str(submit("ls -l /proc/$$/fd\n"), "job_id");
    auto cb = waitFor(id);
    ASSERT_EQ(cb.state, "COMPLETED") << cb.stderrTail;
    auto fds = parseFdListing(cb.stdoutTail);
    ASSERT_FALSE(fds.empty()) << cb.stdoutTail;
    // 0-2 and 255 (bash holds its script there).
    for (auto& [fd, target] : fds) {
        EXPECT_TRUE(fd <= 2 || fd == 255) << fd << " -> " << target;
        EXPECT_EQ(target.find("socket:"), std::string::npos) << cb.stdoutTail;
    }
}

TEST_P(Jobs, ExitThreeIsFailedWithCodeThree) {
    auto id = str(submit("echo about to fail\nexit 3\n"), "job_id");
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "FAILED");
    EXPECT_EQ(cb.exitCode, 3);
    EXPECT_EQ(cb.stdoutTail, "about to fail\n");
}

TEST_P(Jobs, CancelEndsTheJobAsCancelledWithACallback) {
    auto id = str(submit("echo started\nsleep 120\necho never\n"), "job_id");
    ASSERT_TRUE(waitState(id, "RUNNING"));
    ASSERT_TRUE(waitUntil([&] { return readFile(m_work / ".hpc-daemon/jobs" / id / "stdout") == "started\n"; }, 30s));
    auto r = m_agent->cancelJob("j", id);
    EXPECT_TRUE(r.at("cancel_requested").as_bool());
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "CANCELLED");
    EXPECT_EQ(cb.stdoutTail, "started\n");
    // Cancelling again is harmless.
    EXPECT_NO_THROW(m_agent->cancelJob("j", id));
}

TEST_P(Jobs, OnlyTheSubmitterSeesAndCancelsItsJob) {
    auto id = str(submit("sleep 30\n"), "job_id");
    // The same user signed in again as another agent identity.
    auto other = m_h.agent(m_h.login("j@example.org", "other"));
    try {
        other->cancelJob("j", id);
        FAIL() << "another agent cancelled the job";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::NotOwner);
    }
    try {
        other->jobStatus("j", id);
        FAIL() << "another agent read the job";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::NotOwner);
    }
    EXPECT_TRUE(other->listJobs("j").empty());
    ASSERT_EQ(m_agent->listJobs("j").size(), 1u);
    m_agent->cancelJob("j", id);
    EXPECT_EQ(waitFor(id).state, "CANCELLED");
}

TEST_P(Jobs, BadSubmissionsAreRefusedWithClearErrors) {
    auto expectCode = [&](json::object payload, ErrorCode code, const std::string& words) {
        try {
            m_agent->request("j", "job.submit", std::move(payload), 60s);
            ADD_FAILURE() << "accepted: " << words;
        } catch (const Error& e) {
            EXPECT_EQ(e.code(), code) << e.what();
            EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
        }
    };
    expectCode({}, ErrorCode::BadRequest, "\"script\" is required");
    expectCode({{"script", 7}}, ErrorCode::BadRequest, "script");
    expectCode({{"script", "true"}, {"cwd", "/etc"}}, ErrorCode::PathNotAllowed, "/etc");
    expectCode({{"script", "true"}, {"env", {{"1BAD", "x"}}}}, ErrorCode::BadRequest, "1BAD");
    expectCode({{"script", "true"}, {"time_limit", -1}}, ErrorCode::BadRequest, "time_limit");
    expectCode({{"script", "true"}, {"callback", "x"}}, ErrorCode::BadRequest, "callback");
    if (slurm()) {
        // A word sbatch would take as the script, an option the daemon owns.
        expectCode({{"script", "true"}, {"sbatch_args", {"/tmp/other.sh"}}}, ErrorCode::BadRequest, "not an option");
        expectCode({{"script", "true"}, {"sbatch_args", {"--output=/tmp/x"}}}, ErrorCode::BadRequest, "--output");
        expectCode({{"script", "true"}, {"sbatch_args", {"--hold", "x"}}}, ErrorCode::BadRequest, "not an option");
        // The scheduler's own words come back.
        expectCode({{"script", "true"}, {"sbatch_args", {"--partition=nosuchpartition"}}}, ErrorCode::BadRequest,
                   "invalid partition");
    } else {
        expectCode({{"script", "true"}, {"sbatch_args", {"-p", "x"}}}, ErrorCode::BadRequest, "SLURM");
    }
    // Nothing of the above left a live job behind, and the link is up.
    for (const auto& j : m_agent->listJobs("j")) EXPECT_NE(j.at("state").as_string(), "RUNNING");
    EXPECT_EQ(waitFor(str(submit("true\n"), "job_id")).state, "COMPLETED");
}

TEST_P(Jobs, ADaemonKilledMidJobDeliversExactlyOneCallbackAfterRestart) {
    auto id = str(submit("echo ran >> runs.txt\nsleep 4\nexit 5\n"), "job_id");
    ASSERT_TRUE(waitState(id, "RUNNING"));
    m_h.killDaemon("j");
    // The job ends while no daemon watches it.
    ASSERT_TRUE(waitUntil([&] { return fs::exists(m_work / ".hpc-daemon/jobs" / id / "exit_status"); }, 60s));
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "FAILED");
    EXPECT_EQ(cb.exitCode, 5);
    EXPECT_EQ(readFile(m_work / "runs.txt"), "ran\n");  // not submitted twice
    // No second callback arrives, and the platform holds exactly one.
    EXPECT_FALSE(m_agent->nextCallback(2s).has_value());
    EXPECT_EQ(m_agent->storedCallbacks("j", id).size(), 1u);
}

TEST_P(Jobs, ARunningJobIsFollowedAgainAfterADaemonRestart) {
    auto id = str(submit("sleep 3\necho done\n"), "job_id");
    ASSERT_TRUE(waitState(id, "RUNNING"));
    m_h.killDaemon("j");
    ASSERT_NO_FATAL_FAILURE(startDaemon());  // the job is still running: re-adopted, not settled early
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(cb.stdoutTail, "done\n");
}

TEST_P(Jobs, ACallbackMadeWhileTheRelayIsDownArrivesWhenItReturns) {
    auto id = str(submit("sleep 2\necho finished\n"), "job_id");
    m_h.stopRelay();
    ASSERT_TRUE(waitUntil([&] { return fs::exists(m_work / ".hpc-daemon/jobs" / id / "exit_status"); }, 60s));
    ASSERT_TRUE(m_h.waitStatus(
        "j", [](const json::object& s) { return s.at("pending_callbacks").to_number<int>() == 1; }, 30s))
        << m_h.daemonLog("j");
    // The user sees it waiting.
    std::vector<std::string> ctlEnv = m_h.baseEnv();
    ctlEnv.push_back("HPC_DAEMON_HOME=" + m_h.home("j").string());
    auto pending = [&] {
        auto st = runCommand({Harness::binary("hpc-daemonctl"), "status", "--json"}, {}, ctlEnv, 30s);
        return json::parse(st.out).at("pending_callbacks").as_int64();
    };
    EXPECT_EQ(pending(), 1);
    m_h.startRelay();
    ASSERT_TRUE(m_h.waitConnected(m_token, "j"));
    // The agent was offline too: it gets the callback when it connects.
    m_agent = m_h.agent(m_token);
    auto cb = m_agent->nextCallback(30s);
    ASSERT_TRUE(cb.has_value()) << m_h.daemonLog("j");
    EXPECT_EQ(cb->jobId, id);
    EXPECT_EQ(cb->state, "COMPLETED");
    m_agent->ackCallback(cb->callbackId);
    // Acknowledged: a new connection does not get it again, but wait still finds it.
    m_agent = m_h.agent(m_token);
    EXPECT_FALSE(m_agent->nextCallback(1s).has_value());
    EXPECT_EQ(waitFor(id).callbackId, cb->callbackId);
    EXPECT_EQ(pending(), 0);
}

TEST_P(Jobs, WaitRidesOutAPlatformRestart) {
    auto id = str(submit("sleep 4\necho late\n"), "job_id");
    SpawnOptions o;
    o.argv = {Harness::binary("hpc-agent"), "wait", "j", id, "--timeout", "120"};
    o.envOverrides = m_h.baseEnv();
    o.envOverrides.insert(o.envOverrides.end(), {"HPC_AGENT_URL=" + m_h.url(), "HPC_AGENT_CA=" + m_h.caFile(),
                                                 "HPC_AGENT_TOKEN=" + m_token.reveal()});
    fs::path out = m_h.dir() / "wait.out";
    o.outputFile = out.string();
    auto agentsConnected = [&] { return m_h.relayHealth().at("agents_connected").as_int64(); };
    auto before = agentsConnected();
    o.dieWithParent = true;  // nothing the test starts outlives it
    ChildGuard waiter(spawn(o).pid);
    ASSERT_TRUE(waitUntil([&] { return agentsConnected() > before; }, 30s));
    m_h.stopRelay();
    // The job ends while the platform is away: its callback waits in the daemon.
    ASSERT_TRUE(m_h.waitStatus(
        "j", [](const json::object& s) { return s.at("pending_callbacks").to_number<std::int64_t>() >= 1; }, 60s))
        << m_h.daemonLog("j");
    m_h.startRelay();
    auto status = waiter.waitFor(90s);
    ASSERT_TRUE(status.has_value()) << readFile(out);
    EXPECT_EQ(status->code, 0) << readFile(out);
    EXPECT_NE(readFile(out).find("reconnecting"), std::string::npos) << readFile(out);
    EXPECT_NE(readFile(out).find(id + " COMPLETED"), std::string::npos) << readFile(out);
    EXPECT_NE(readFile(out).find("late"), std::string::npos);
}

TEST_P(Jobs, TheAgentCliSubmitsListsAndWaits) {
    std::vector<std::string> env = m_h.baseEnv();
    env.push_back("HPC_AGENT_URL=" + m_h.url());
    env.push_back("HPC_AGENT_CA=" + m_h.caFile());
    env.push_back("HPC_AGENT_TOKEN=" + m_token.reveal());
    auto agentCli = [&](std::vector<std::string> args, const std::string& input = {}) {
        args.insert(args.begin(), Harness::binary("hpc-agent"));
        return runCommand(args, input, env, 90s);
    };
    auto sub = agentCli({"submit", "j", "-", "--name", "cli-job", "--context", "{\"k\":1}"}, "echo from cli\nexit 4\n");
    ASSERT_EQ(sub.status, 0) << sub.err;
    std::string id = sub.out.substr(0, sub.out.find('\n'));
    auto waited = agentCli({"wait", "j", id, "--timeout", "60"});
    EXPECT_EQ(waited.status, 1) << waited.err;
    EXPECT_NE(waited.out.find(id + " FAILED (exit 4)"), std::string::npos) << waited.out;
    EXPECT_NE(waited.out.find("from cli"), std::string::npos);
    auto jobs = agentCli({"jobs", "j"});
    EXPECT_EQ(jobs.status, 0);
    EXPECT_NE(jobs.out.find(id), std::string::npos);
    EXPECT_NE(jobs.out.find("cli-job"), std::string::npos);
    auto st = agentCli({"status", "j", id, "--json"});
    EXPECT_EQ(json::parse(st.out).at("exit_code").as_int64(), 4);
    auto missing = agentCli({"status", "j", "jnosuchjob"});
    EXPECT_EQ(missing.status, 255);
    EXPECT_NE(missing.err.find("no job jnosuchjob"), std::string::npos);
    // The user's view, over D-Bus: every agent's jobs.
    std::vector<std::string> ctlEnv = m_h.baseEnv();
    ctlEnv.push_back("HPC_DAEMON_HOME=" + m_h.home("j").string());
    auto ctl = runCommand({Harness::binary("hpc-daemonctl"), "jobs", "--json"}, {}, ctlEnv, 30s);
    ASSERT_EQ(ctl.status, 0) << ctl.err;
    auto listed = json::parse(ctl.out).as_array();
    ASSERT_EQ(listed.size(), 1u);
    EXPECT_EQ(str(listed[0].as_object(), "job_id"), id);
    EXPECT_EQ(str(listed[0].as_object(), "state"), "FAILED");
    EXPECT_EQ(listed[0].at("exit_code").as_int64(), 4);
    EXPECT_EQ(str(listed[0].as_object(), "backend"), GetParam());
    auto table = runCommand({Harness::binary("hpc-daemonctl"), "jobs"}, {}, ctlEnv, 30s);
    EXPECT_NE(table.out.find("cli-job"), std::string::npos) << table.out;
    // The script is in the audit log, under the job's id.
    auto audit = runCommand({Harness::binary("hpc-daemonctl"), "audit", "--json"}, {}, ctlEnv, 30s);
    auto entries = json::parse(audit.out).as_array();
    ASSERT_FALSE(entries.empty()) << audit.err;
    EXPECT_EQ(str(entries.back().as_object(), "session"), "job:" + id);
    EXPECT_EQ(str(entries.back().as_object(), "command"), "echo from cli\nexit 4\n");
    auto auditText = runCommand({Harness::binary("hpc-daemonctl"), "audit"}, {}, ctlEnv, 30s);
    EXPECT_NE(auditText.out.find("job:" + id + "  submitted"), std::string::npos) << auditText.out;
    // events: the second job's callback, as one JSON line.
    auto id2 = str(submit("true\n"), "job_id");
    auto ev = agentCli({"events", "--count", "1", "--timeout", "60"});
    EXPECT_EQ(ev.status, 0);
    EXPECT_EQ(str(json::parse(ev.out).as_object(), "job_id"), id2);
}

INSTANTIATE_TEST_SUITE_P(Backends, Jobs, ::testing::Values("local", "slurm"),
                         [](const auto& info) { return info.param; });

// ---- local only ----

class LocalJobs : public Jobs {};

/// Whether `pid` has ended (gone, or a zombie not yet reaped).
bool ended(pid_t pid) {
    if (::kill(pid, 0) != 0) return true;
    std::string stat = readFile("/proc/" + std::to_string(pid) + "/stat");
    auto close = stat.rfind(')');
    return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z';
}

TEST_P(LocalJobs, ACancelEndsWhatTheJobLeftBehind) {
    // Without a systemd scope (nohup mode): a daemonized child (setsid) and a
    // double-forked one escape the job's process group.
    auto id = str(submit("setsid sleep 1000 </dev/null >/dev/null 2>&1 &\necho $! > leftover1\n"
                         "( sleep 1001 </dev/null >/dev/null 2>&1 & echo $! > leftover2 )\n"
                         "echo started\nsleep 1000\n"),
                  "job_id");
    pid_t left1 = 0, left2 = 0;
    ASSERT_TRUE(waitUntil(
        [&] {
            try {
                left1 = std::stoi(readFile(m_work / "leftover1"));
                left2 = std::stoi(readFile(m_work / "leftover2"));
            } catch (const std::exception&) {
                return false;
            }
            return left1 > 0 && left2 > 0;
        },
        30s));
    m_agent->cancelJob("j", id);
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "CANCELLED");
    EXPECT_TRUE(waitUntil([&] { return ended(left1) && ended(left2); }, 20s))
        << "left behind: " << left1 << " " << left2;
    if (!ended(left1)) ::kill(left1, SIGKILL);
    if (!ended(left2)) ::kill(left2, SIGKILL);
}

TEST_P(LocalJobs, AJobThatEndsTakesWhatItLeftBehindWithIt) {
    auto id = str(submit("setsid sleep 1000 </dev/null >/dev/null 2>&1 &\necho $! > leftover\necho done\n"), "job_id");
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "COMPLETED");
    pid_t left = std::stoi(readFile(m_work / "leftover"));
    // The callback comes once the job's reaper has ended everything.
    EXPECT_TRUE(ended(left)) << "left behind: " << left;
    if (!ended(left)) ::kill(left, SIGKILL);
}

TEST_P(LocalJobs, ATimeLimitEndsTheJobAsTimeout) {
    agent::JobSpec spec;
    spec.script = "echo start\nsleep 60\n";
    spec.timeLimitSeconds = 1;
    auto id = str(m_agent->submitJob("j", spec), "job_id");
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "TIMEOUT");
    EXPECT_EQ(cb.stdoutTail, "start\n");
}

TEST_P(LocalJobs, AJobWhosePidNeverReachedTheStoreIsFoundByItsPidFile) {
    auto id = str(submit("sleep 8\necho done\n"), "job_id");
    ASSERT_TRUE(waitState(id, "RUNNING"));
    m_h.killDaemon("j");
    // As if the daemon had been killed between starting the job and recording it.
    {
        auto db = sqlite::Db::open((m_h.home("j") / Store::kFileName).string());
        auto st = db.prepare(
            "UPDATE jobs SET state = 'SUBMITTING', pid = 0, pid_start = 0, scheduler_id = '', "
            "started_at = 0 WHERE job_id = ?1");
        st.bind(1, id);
        st.run();
        ASSERT_EQ(db.changes(), 1);
    }
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    // Followed again (not reported FAILED while it runs), then ends as it should.
    ASSERT_TRUE(waitState(id, "RUNNING"));
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(cb.stdoutTail, "done\n");
    EXPECT_FALSE(m_agent->nextCallback(2s).has_value());
}

TEST_P(LocalJobs, JobsAreConfinedToTheAllowedDirectories) {
    fs::path outside = m_h.dir() / "outside";
    fs::create_directories(outside);
    auto id = str(submit("echo in > inside.txt\necho out > " + (outside / "x").string() + "\n"), "job_id");
    auto cb = waitFor(id);
    EXPECT_EQ(readFile(m_work / "inside.txt"), "in\n");
    std::vector<std::string> ctlEnv = m_h.baseEnv();
    ctlEnv.push_back("HPC_DAEMON_HOME=" + m_h.home("j").string());
    auto st = runCommand({Harness::binary("hpc-daemonctl"), "status", "--json", "--daemon-id", "j"}, {}, ctlEnv, 30s);
    ASSERT_EQ(st.status, 0) << st.err;
    bool landlock = st.out.find("landlock (ABI") != std::string::npos;
    bool mountNamespace = st.out.find("mount-namespace") != std::string::npos;
    if (!landlock && !mountNamespace) GTEST_SKIP() << "no kernel confinement layer here: " << st.out;
    EXPECT_FALSE(fs::exists(outside / "x"));
    EXPECT_EQ(cb.state, "FAILED");
    // Landlock says EACCES; the read-only mount of the namespace, EROFS.
    EXPECT_NE(cb.stderrTail.find(mountNamespace ? "Read-only file system" : "Permission denied"), std::string::npos)
        << cb.stderrTail;
}

TEST_P(LocalJobs, UnderSystemdEachJobGetsItsOwnScope) {
    // A stand-in for systemd-run that records its arguments (inside the
    // allowed directory: it runs confined) and, like the real one with
    // --scope, runs the command in the same process.
    fs::path bin = m_h.dir() / "fake-systemd";
    writeExecutable(bin / "systemd-run", "#!/bin/sh\necho \"$*\" >> " + (m_work / "systemd-run.calls").string() +
                                             "\nwhile [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n");
    m_h.killDaemon("j");
    m_pathPrefix = bin.string();
    m_extraEnv = {"INVOCATION_ID=0123456789abcdef0123456789abcdef"};  // what systemd sets for its services
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    m_agent = m_h.agent(m_token);
    auto id = str(submit("echo scoped\n"), "job_id");
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(cb.stdoutTail, "scoped\n");
    // The scope first (systemd-run talks to the user manager outside the
    // confinement), then whatever confines the job, then the wrapper.
    std::string calls = readFile(m_work / "systemd-run.calls");
    std::string scope = "--user --scope --quiet --collect --unit=hpc-job-" + id + " -- ";
    std::string wrapper = " /bin/bash " + (m_work / ".hpc-daemon/jobs" / id / "wrapper").string() + "\n";
    EXPECT_EQ(calls.rfind(scope, 0), 0u) << calls;
    ASSERT_GE(calls.size(), wrapper.size());
    EXPECT_EQ(calls.substr(calls.size() - wrapper.size()), wrapper) << calls;
    EXPECT_EQ(calls.find("--unit", scope.size()), std::string::npos) << "one scope: " << calls;
}

/// A file whose every open for reading blocks until the lease is given up,
/// as a file on a hung NFS server does: a write lease that ignores breaks.
class StalledFile {
public:
    explicit StalledFile(const fs::path& path) {
        ::signal(SIGIO, SIG_IGN);  // the kernel's lease-break notice
        fs::remove(path);          // the job's own open descriptor keeps the old file
        m_fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (m_fd < 0) return;
        if (::write(m_fd, "held\n", 5) == 5 && ::fcntl(m_fd, F_SETLEASE, F_WRLCK) == 0) m_held = true;
    }
    ~StalledFile() { release(); }
    bool held() const { return m_held; }
    void release() {
        if (m_fd >= 0) ::close(m_fd);  // gives the lease up: the blocked opens go on
        m_fd = -1;
    }

private:
    int m_fd = -1;
    bool m_held = false;
};

TEST_P(LocalJobs, AJobDirectoryThatDoesNotAnswerStallsNothingElse) {
    m_h.killDaemon("j");
    m_extraArgs = {"--job-io-timeout-seconds", "2"};
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    m_agent = m_h.agent(m_token);
    auto submitted = submit("echo started\nsleep 600\n");
    auto id = str(submitted, "job_id");
    ASSERT_TRUE(waitState(id, "RUNNING"));
    double connectedSince = m_h.daemonStatus("j").at("connected_since").to_number<double>();

    StalledFile stalled(str(submitted, "stdout_path"));
    if (!stalled.held()) GTEST_SKIP() << "no file leases on this file system: " << std::strerror(errno);

    // job.status needs the stalled file: answered at the deadline, without the tail.
    auto status = m_agent->jobStatus("j", id);
    EXPECT_EQ(str(status, "state"), "RUNNING");
    EXPECT_EQ(str(status, "stdout_tail"), "");
    EXPECT_NE(str(status, "tail_error").find("did not answer within 2 s"), std::string::npos)
        << boost::json::serialize(status);

    // With that read still blocked: commands, shells and D-Bus answer, and
    // the link never dropped.
    agent::ExecSpec echo;
    echo.command = "echo alive";
    EXPECT_EQ(m_agent->exec("j", echo).out, "alive\n");
    auto pty = m_agent->openPty("j", agent::PtySpec{});
    m_agent->ptyInput(pty.channel, "echo shell-$((40+2))\r");
    std::string shell;
    EXPECT_TRUE(waitUntil(
        [&] {
            if (auto e = m_agent->nextPtyEvent(200ms); e && e->kind == agent::PtyEvent::Kind::Output) {
                shell += e->data;
                m_agent->ptyAck("j", pty.channel, e->data.size());
            }
            return shell.find("shell-42") != std::string::npos;
        },
        20s))
        << shell;
    m_agent->ptyClose("j", pty.channel);
    auto bus = m_h.daemonStatus("j");
    EXPECT_EQ(str(bus, "link_state"), "connected");
    EXPECT_EQ(bus.at("connected_since").to_number<double>(), connectedSince);

    // The job's end is recorded and called back though its output cannot be read.
    m_agent->cancelJob("j", id);
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "CANCELLED");
    EXPECT_NE(str(cb.raw, "tail_error").find("did not answer"), std::string::npos) << boost::json::serialize(cb.raw);

    // Once the file answers again, so does job.status.
    stalled.release();
    EXPECT_EQ(str(m_agent->jobStatus("j", id), "stdout_tail"), "held\n");
}

INSTANTIATE_TEST_SUITE_P(Local, LocalJobs, ::testing::Values("local"), [](const auto& info) { return info.param; });

// ---- graceful drain (hpc-daemonctl stop --drain) ----

class DrainJobs : public LocalJobs {
protected:
    /// hpc-daemonctl for the fixture's daemon, in nohup mode on its private bus.
    CommandResult ctl(std::vector<std::string> args) const {
        args.insert(args.begin(), Harness::binary("hpc-daemonctl"));
        std::vector<std::string> env = m_h.baseEnv();
        env.push_back("HPC_DAEMON_HOME=" + m_h.home("j").string());
        env.push_back("HPC_DAEMONCTL_MODE=nohup");
        env.push_back("DBUS_SESSION_BUS_ADDRESS=");
        env.push_back("XDG_RUNTIME_DIR=");
        return runCommand(args, {}, env);
    }

    /// An exec on its own connection (the test's agent stays free meanwhile).
    std::future<agent::ExecOutcome> execInBackground(const std::string& command) {
        m_execAgent = m_h.agent(m_token);
        agent::ExecSpec spec;
        spec.command = command;
        spec.cwd = m_work.string();
        return std::async(std::launch::async,
                          [agent = m_execAgent.get(), spec] { return agent->exec("j", spec, 60s); });
    }

    template <typename F>
    void expectDrainingRefusal(const char* what, F&& request) {
        try {
            request();
            ADD_FAILURE() << what << " was accepted while draining";
        } catch (const Error& e) {
            EXPECT_EQ(e.code(), ErrorCode::Unavailable) << what << ": " << e.what();
            EXPECT_NE(std::string(e.what()).find("draining"), std::string::npos) << what << ": " << e.what();
        }
    }

    std::unique_ptr<agent::AgentClient> m_execAgent;
};

TEST_P(DrainJobs, ADrainLetsACommandFinishRefusesNewWorkAndLeavesJobsRunning) {
    // Both wait for the test: the job until the daemon is gone, the command until the refusals are seen.
    // Bounded (2 min) so that nothing outlives a test that fails before the go files are written.
    auto job = str(submit("for i in $(seq 1200); do [ -e job-go ] && break; sleep 0.1; done\necho done\n"), "job_id");
    ASSERT_TRUE(waitState(job, "RUNNING"));
    auto running =
        execInBackground("for i in $(seq 2400); do [ -e exec-go ] && break; sleep 0.05; done; echo finished; exit 7");
    ASSERT_TRUE(m_h.waitStatus("j", [](const json::object& s) { return s.at("running_execs").to_number<int>() == 1; }));

    auto stop = std::async(std::launch::async, [this] { return ctl({"stop", "--drain", "--drain-timeout", "60s"}); });
    ASSERT_TRUE(m_h.waitStatus("j", [](const json::object& s) { return s.at("draining").as_bool(); }))
        << m_h.daemonLog("j");
    auto status = ctl({"status"});
    EXPECT_NE(status.out.find("draining"), std::string::npos) << status.out;
    auto statusJson = json::parse(ctl({"status", "--json"}).out).as_object();
    EXPECT_TRUE(statusJson.at("draining").as_bool());

    agent::ExecSpec exec;
    exec.command = "true";
    expectDrainingRefusal("exec", [&] { m_agent->exec("j", exec); });
    expectDrainingRefusal("pty.open", [&] { m_agent->openPty("j", agent::PtySpec{}); });
    expectDrainingRefusal("job.submit", [&] { submit("true\n"); });
    EXPECT_EQ(stateOf(job), "RUNNING");  // questions about jobs are still answered

    std::ofstream(m_work / "exec-go").close();
    auto outcome = running.get();
    EXPECT_EQ(outcome.exitCode, 7);
    EXPECT_EQ(outcome.out, "finished\n");
    auto stopped = stop.get();
    EXPECT_EQ(stopped.status, 0) << stopped.err;
    EXPECT_NE(stopped.out.find("after draining"), std::string::npos) << stopped.out << stopped.err;

    // The job outlived the daemon; the next start follows it to its callback.
    std::ofstream(m_work / "job-go").close();
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    auto cb = waitFor(job);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(cb.stdoutTail, "done\n");
}

TEST_P(DrainJobs, TheDrainTimeoutKillsACommandThatRunsTooLong) {
    auto running = execInBackground("sleep 600");
    ASSERT_TRUE(m_h.waitStatus("j", [](const json::object& s) { return s.at("running_execs").to_number<int>() == 1; }));
    auto stopped = ctl({"stop", "--drain", "--drain-timeout", "1s"});
    EXPECT_EQ(stopped.status, 0) << stopped.err;
    EXPECT_NE(stopped.out.find("after draining"), std::string::npos) << stopped.out << stopped.err;
    // The command did not get its 600 s: it was killed, or the daemon went away under it.
    try {
        auto outcome = running.get();
        EXPECT_FALSE(outcome.exitCode.has_value());
        EXPECT_TRUE(outcome.signal.has_value());
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Unavailable) << e.what();
    }
}

TEST_P(DrainJobs, DrainTimeoutWithoutDrainIsRefused) {
    auto r = ctl({"stop", "--drain-timeout", "1s"});
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("--drain"), std::string::npos) << r.err;
    EXPECT_FALSE(m_h.daemonStatus("j").at("draining").as_bool());
}

class SigtermDrainJobs : public DrainJobs {
protected:
    void beforeDaemonStart() override { m_extraArgs = {"--sigterm-drain-seconds", "60"}; }
};

TEST_P(SigtermDrainJobs, SigtermDrainsWhenTheDaemonIsStartedToDoSo) {
    auto running =
        execInBackground("for i in $(seq 2400); do [ -e exec-go ] && break; sleep 0.05; done; echo finished");
    ASSERT_TRUE(m_h.waitStatus("j", [](const json::object& s) { return s.at("running_execs").to_number<int>() == 1; }));
    const pid_t pid = m_h.daemonPid("j");
    ASSERT_EQ(::kill(pid, SIGTERM), 0);
    ASSERT_TRUE(m_h.waitStatus("j", [](const json::object& s) { return s.at("draining").as_bool(); }))
        << m_h.daemonLog("j");
    std::ofstream(m_work / "exec-go").close();
    auto outcome = running.get();
    EXPECT_EQ(outcome.exitCode, 0);
    EXPECT_EQ(outcome.out, "finished\n");
    EXPECT_TRUE(waitUntil([&] { return ended(pid); }, 30s)) << m_h.daemonLog("j");
}

INSTANTIATE_TEST_SUITE_P(Local, SigtermDrainJobs, ::testing::Values("local"),
                         [](const auto& info) { return info.param; });

INSTANTIATE_TEST_SUITE_P(Local, DrainJobs, ::testing::Values("local"), [](const auto& info) { return info.param; });

}  // namespace
