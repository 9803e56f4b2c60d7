// Job mode end to end: hpc-agent → hpc-relay → hpc-daemond over TLS, with
// jobs run by a real single-node SLURM cluster (started by the ctest fixture
// through scripts/slurm-cluster.sh) and by the local backend. Each lifecycle
// test runs once per backend.
#include "errors.hpp"
#include "harness.hpp"

#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

std::string slurmConf() { return std::string(HPC_SLURM_DIR) + "/etc/slurm.conf"; }

std::string str(const json::object& o, const char* key) {
    auto* v = o.if_contains(key);
    return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

class Jobs : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        if (slurm() && !fs::exists(slurmConf()))
            GTEST_SKIP() << "no test SLURM cluster (scripts/slurm-cluster.sh start needs root)";
        m_h.startRelay();
        m_work = m_h.dir() / "work";
        fs::create_directories(m_work);
        // SLURM jobs run as the user through slurmd: the work tree must be reachable.
        fs::permissions(m_h.dir(), fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
        ASSERT_EQ(m_h.setupDaemon("j", "j@example.org", {m_work.string()}).status, 0);
        m_token = m_h.login("j@example.org");
        beforeDaemonStart();
        startDaemon();
        m_agent = m_h.agent(m_token);
    }

    bool slurm() const { return GetParam() == "slurm"; }
    virtual void beforeDaemonStart() {}

    std::vector<std::string> daemonEnv() const {
        std::vector<std::string> env = m_extraEnv;
        env.push_back(slurm() ? "SLURM_CONF=" + slurmConf() : "LOCAL_MODE=1");
        if (!m_pathPrefix.empty()) env.push_back("PATH=" + m_pathPrefix + ":" + std::getenv("PATH"));
        return env;
    }

    void startDaemon() {
        m_h.startDaemon("j", {"--job-poll-min-seconds", "1", "--job-poll-max-seconds", "2"}, daemonEnv());
        ASSERT_TRUE(m_h.waitConnected(m_token, "j")) << m_h.daemonLog("j");
    }

    json::object submit(const std::string& script, std::optional<json::value> context = std::nullopt) {
        agent::JobSpec spec;
        spec.script = script;
        spec.context = std::move(context);
        return m_agent->submitJob("j", spec);
    }

    agent::JobCallback waitFor(const std::string& jobId, std::chrono::seconds limit = 60s) {
        auto cb = m_agent->waitForJob("j", jobId, limit);
        if (!cb) throw std::runtime_error("no callback for " + jobId + "\n" + m_h.daemonLog("j"));
        return *cb;
    }

    std::string stateOf(const std::string& jobId) { return str(m_agent->jobStatus("j", jobId), "state"); }

    bool waitState(const std::string& jobId, const std::string& state) {
        return waitUntil(
            [&] {
                std::this_thread::sleep_for(100ms);
                return stateOf(jobId) == state;
            },
            60s);
    }

    Harness m_h;
    fs::path m_work;
    Secret m_token;
    std::string m_pathPrefix;
    std::vector<std::string> m_extraEnv;
    std::unique_ptr<agent::AgentClient> m_agent;
};

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
    ASSERT_TRUE(waitUntil([&] { return m_h.daemonLog("j").find("acknowledged by the platform") != std::string::npos; }, 10s));
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
    // The same user signed in again: another credential, another agent.
    auto other = m_h.agent(m_h.login("j@example.org"));
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
    startDaemon();
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
    startDaemon();  // the job is still running: re-adopted, not settled early
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(cb.stdoutTail, "done\n");
}

TEST_P(Jobs, ACallbackMadeWhileTheRelayIsDownArrivesWhenItReturns) {
    auto id = str(submit("sleep 2\necho finished\n"), "job_id");
    m_h.stopRelay();
    ASSERT_TRUE(waitUntil([&] { return fs::exists(m_work / ".hpc-daemon/jobs" / id / "exit_status"); }, 60s));
    ASSERT_TRUE(waitUntil([&] { return m_h.daemonLog("j").find("callback") != std::string::npos &&
                                       m_h.daemonLog("j").find("queued") != std::string::npos; }, 30s));
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

TEST_P(LocalJobs, ATimeLimitEndsTheJobAsTimeout) {
    agent::JobSpec spec;
    spec.script = "echo start\nsleep 60\n";
    spec.timeLimitSeconds = 1;
    auto id = str(m_agent->submitJob("j", spec), "job_id");
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "TIMEOUT");
    EXPECT_EQ(cb.stdoutTail, "start\n");
}

TEST_P(LocalJobs, JobsAreConfinedToTheAllowedDirectories) {
    fs::path outside = m_h.dir() / "outside";
    fs::create_directories(outside);
    auto id = str(submit("echo in > inside.txt\necho out > " + (outside / "x").string() + "\n"), "job_id");
    auto cb = waitFor(id);
    EXPECT_EQ(readFile(m_work / "inside.txt"), "in\n");
    if (m_h.daemonLog("j").find("confined by landlock") == std::string::npos) GTEST_SKIP() << "no Landlock here";
    EXPECT_FALSE(fs::exists(outside / "x"));
    EXPECT_EQ(cb.state, "FAILED");
    EXPECT_NE(cb.stderrTail.find("Permission denied"), std::string::npos) << cb.stderrTail;
}

TEST_P(LocalJobs, UnderSystemdEachJobGetsItsOwnScope) {
    // A stand-in for systemd-run that records its arguments (inside the
    // allowed directory: it runs confined) and, like the real one with
    // --scope, runs the command in the same process.
    fs::path bin = m_h.dir() / "fake-systemd";
    fs::create_directories(bin);
    std::ofstream(bin / "systemd-run") << "#!/bin/sh\necho \"$*\" >> " << (m_work / "systemd-run.calls").string()
                                       << "\nwhile [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n";
    fs::permissions(bin / "systemd-run", fs::perms::owner_all);
    m_h.killDaemon("j");
    m_pathPrefix = bin.string();
    m_extraEnv = {"INVOCATION_ID=0123456789abcdef0123456789abcdef"};  // what systemd sets for its services
    startDaemon();
    m_agent = m_h.agent(m_token);
    auto id = str(submit("echo scoped\n"), "job_id");
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(cb.stdoutTail, "scoped\n");
    EXPECT_EQ(readFile(m_work / "systemd-run.calls"),
              "--user --scope --quiet --collect --unit=hpc-job-" + id + " -- /bin/bash " +
                  (m_work / ".hpc-daemon/jobs" / id / "wrapper").string() + "\n");
}

INSTANTIATE_TEST_SUITE_P(Local, LocalJobs, ::testing::Values("local"), [](const auto& info) { return info.param; });

// ---- SLURM only ----

/// Every squeue, scontrol and sacct call the daemon makes goes through a
/// wrapper that logs it and runs the real program.
class SlurmJobs : public Jobs {
protected:
    void SetUp() override {
        fs::path bin = m_h.dir() / "slurm-wrappers";
        fs::create_directories(bin);
        for (const char* tool : {"squeue", "scontrol", "sacct"}) {
            std::ofstream(bin / tool) << "#!/bin/sh\necho \"$*\" >> " << (m_h.dir() / (std::string(tool) + ".calls")).string()
                                      << "\nexec /usr/bin/" << tool << " \"$@\"\n";
            fs::permissions(bin / tool, fs::perms::owner_all);
        }
        m_pathPrefix = bin.string();
        Jobs::SetUp();
    }

    std::vector<std::string> calls(const std::string& tool) const {
        std::vector<std::string> out;
        std::istringstream in(readFile(m_h.dir() / (tool + ".calls")));
        for (std::string line; std::getline(in, line);) out.push_back(line);
        return out;
    }

    CommandResult slurmCommand(std::vector<std::string> argv) {
        return runCommand(argv, {}, {"SLURM_CONF=" + slurmConf()}, 30s);
    }
};

TEST_P(SlurmJobs, FiftyJobsAreFollowedWithOneSqueuePerCycle) {
    std::vector<std::string> ids;
    for (int i = 0; i < 50; ++i) ids.push_back(str(submit("sleep 2\necho job " + std::to_string(i) + "\n"), "job_id"));
    std::set<std::string> states;
    for (const auto& id : ids) states.insert(waitFor(id, 120s).state);
    EXPECT_EQ(states, std::set<std::string>{"COMPLETED"});
    auto squeues = calls("squeue");
    ASSERT_FALSE(squeues.empty());
    // Every call asks for all of the user's jobs at once, never for one job.
    for (const auto& c : squeues) {
        EXPECT_EQ(c.rfind("--me --noheader --states=all --Format=", 0), 0u) << c;
        EXPECT_EQ(c.find("--jobs"), std::string::npos) << c;
    }
    // Jobs that end while in the queue are settled from that call alone.
    EXPECT_TRUE(calls("scontrol").empty());
    // One call per monitor cycle: the daemon counted its cycles in its log.
    std::string log = m_h.daemonLog("j");
    std::size_t cycles = 0;
    for (auto pos = log.find("monitor cycle"); pos != std::string::npos; pos = log.find("monitor cycle", pos + 1)) ++cycles;
    EXPECT_EQ(squeues.size(), cycles);
    EXPECT_LT(squeues.size(), 50u) << "as many squeue calls as jobs";
    EXPECT_NE(log.find("monitor cycle: 50 jobs"), std::string::npos);
}

TEST_P(SlurmJobs, AOneMinuteLimitEndsAsTimeout) {
    agent::JobSpec spec;
    spec.script = "echo start\nsleep 600\n";
    spec.timeLimitSeconds = 60;
    auto id = str(m_agent->submitJob("j", spec), "job_id");
    auto cb = waitFor(id, 240s);
    EXPECT_EQ(cb.state, "TIMEOUT");
    EXPECT_EQ(cb.stdoutTail, "start\n");
}

TEST_P(SlurmJobs, AJobTheSchedulerForgotIsSettledFromItsExitFile) {
    auto r = submit("exit 7\n");
    std::string id = str(r, "job_id"), schedulerId = str(r, "scheduler_id");
    m_h.killDaemon("j");
    // The cluster keeps finished jobs for MinJobAge (10 s here), then forgets them.
    ASSERT_TRUE(waitUntil(
        [&] {
            std::this_thread::sleep_for(1s);
            auto out = slurmCommand({"scontrol", "show", "job", schedulerId});
            return out.status != 0 && out.err.find("Invalid job id") != std::string::npos;
        },
        200s));
    startDaemon();
    m_agent = m_h.agent(m_token);  // the old connection sat unread past the relay's idle limit
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "FAILED");
    EXPECT_EQ(cb.exitCode, 7);
    EXPECT_NE(m_h.daemonLog("j").find("forgotten by the scheduler"), std::string::npos);
}

TEST_P(SlurmJobs, ARequeuedJobIsFollowedNotReportedAsEnded) {
    auto r = submit("echo run $SLURM_RESTART_COUNT >> runs.txt\nsleep 3\n");
    std::string id = str(r, "job_id"), schedulerId = str(r, "scheduler_id");
    ASSERT_TRUE(waitState(id, "RUNNING"));
    // What preemption with requeue does: the run is killed, the job queued again.
    auto requeue = slurmCommand({"scontrol", "requeue", schedulerId});
    ASSERT_EQ(requeue.status, 0) << requeue.err;
    ASSERT_TRUE(waitState(id, "PENDING"));
    EXPECT_FALSE(m_agent->nextCallback(3s).has_value()) << "a requeued job was reported as ended";
    EXPECT_EQ(stateOf(id), "PENDING");
    // SLURM holds a requeued job for two minutes; let it start now.
    auto release = slurmCommand({"scontrol", "update", "JobId=" + schedulerId, "StartTime=now"});
    ASSERT_EQ(release.status, 0) << release.err;
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(readFile(m_work / "runs.txt"), "run\nrun 1\n");
    EXPECT_FALSE(m_agent->nextCallback(2s).has_value());
}

TEST_P(SlurmJobs, ADaemonKilledWhileSbatchRunsFindsTheJobInsteadOfSubmittingItAgain) {
    // An sbatch that submits, then is slow to answer.
    fs::path slow = m_h.dir() / "slow-sbatch";
    fs::create_directories(slow);
    std::ofstream(slow / "sbatch") << "#!/bin/sh\n/usr/bin/sbatch \"$@\"\nrc=$?\nsleep 4\nexit $rc\n";
    fs::permissions(slow / "sbatch", fs::perms::owner_all);
    m_h.killDaemon("j");
    std::string wrappers = m_pathPrefix;
    m_pathPrefix = slow.string() + ":" + wrappers;
    startDaemon();
    m_agent = m_h.agent(m_token);
    agent::JobSpec spec;
    spec.script = "echo ran >> runs.txt\n";
    EXPECT_THROW(m_agent->submitJob("j", spec, 1500ms), Error);  // no answer yet: sbatch is sleeping
    auto jobs = m_agent->listJobs("j");
    ASSERT_EQ(jobs.size(), 1u);
    std::string id = str(jobs[0].as_object(), "job_id");
    EXPECT_EQ(str(jobs[0].as_object(), "state"), "SUBMITTING");
    m_h.killDaemon("j");
    m_pathPrefix = wrappers;
    // The orphaned sbatch has submitted it (the job may have run already).
    ASSERT_TRUE(waitUntil(
        [&] {
            std::this_thread::sleep_for(200ms);
            return slurmCommand({"squeue", "--me", "--noheader", "--states=all", "--format=%k"}).out.find("hpc-daemon:" + id) !=
                   std::string::npos;
        },
        30s));
    startDaemon();
    m_agent = m_h.agent(m_token);
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(readFile(m_work / "runs.txt"), "ran\n");
    EXPECT_NE(m_h.daemonLog("j").find("was submitted before the daemon stopped"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Slurm, SlurmJobs, ::testing::Values("slurm"), [](const auto& info) { return info.param; });

/// The daemon, and so its jobs, run as an unprivileged user.
class UnprivilegedSlurmJobs : public SlurmJobs {
protected:
    void SetUp() override {
        if (::getuid() != 0 || ::getpwnam(kUser) == nullptr)
            GTEST_SKIP() << "needs root and the account " << kUser << " (made by the cluster fixture)";
        m_h.setDaemonUser(kUser);
        SlurmJobs::SetUp();
    }
    void beforeDaemonStart() override {
        const passwd* pw = ::getpwnam(kUser);
        ASSERT_EQ(::chown(m_work.c_str(), pw->pw_uid, pw->pw_gid), 0);
    }
    static constexpr const char* kUser = "hpc-jobuser";
};

TEST_P(UnprivilegedSlurmJobs, AJobRunsAsTheDaemonsUser) {
    auto id = str(submit("id -un\ntouch mine\n"), "job_id");
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "COMPLETED") << cb.stderrTail;
    EXPECT_EQ(cb.stdoutTail, std::string(kUser) + "\n");
    struct stat st{};
    ASSERT_EQ(::stat((m_work / "mine").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, ::getpwnam(kUser)->pw_uid);
}

INSTANTIATE_TEST_SUITE_P(Slurm, UnprivilegedSlurmJobs, ::testing::Values("slurm"), [](const auto& info) { return info.param; });

/// Stops the cluster's controller: ctest runs this suite alone (RUN_SERIAL),
/// and the controller is started again however the test ends.
class SlurmControllerDown : public SlurmJobs {
protected:
    void TearDown() override {
        if (m_stopped) runCommand({std::string(HPC_SOURCE_DIR) + "/scripts/slurm-cluster.sh", "start-controller", HPC_SLURM_DIR});
    }
    void controller(bool up) {
        auto r = runCommand({std::string(HPC_SOURCE_DIR) + "/scripts/slurm-cluster.sh",
                             up ? "start-controller" : "stop-controller", HPC_SLURM_DIR}, {}, {}, 60s);
        ASSERT_EQ(r.status, 0) << r.err;
        m_stopped = !up;
    }
    bool m_stopped = false;
};

TEST_P(SlurmControllerDown, NoJobIsReportedEndedWhileTheControllerIsDown) {
    auto id = str(submit("sleep 12\necho survived\n"), "job_id");
    ASSERT_TRUE(waitState(id, "RUNNING"));
    controller(false);
    // Several monitor cycles fail meanwhile; the job stays RUNNING, no callback.
    std::size_t before = calls("squeue").size();
    ASSERT_TRUE(waitUntil([&] { return calls("squeue").size() >= before + 3; }, 60s));
    m_agent = m_h.agent(m_token);  // the old connection sat unread past the relay's idle limit
    EXPECT_EQ(stateOf(id), "RUNNING");
    EXPECT_FALSE(m_agent->nextCallback(1s).has_value());
    EXPECT_NE(m_h.daemonLog("j").find("squeue failed"), std::string::npos);
    controller(true);
    auto cb = waitFor(id, 120s);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(cb.stdoutTail, "survived\n");
}

INSTANTIATE_TEST_SUITE_P(Slurm, SlurmControllerDown, ::testing::Values("slurm"), [](const auto& info) { return info.param; });

}  // namespace
