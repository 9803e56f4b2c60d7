// Job mode against the real SLURM cluster only: one squeue per cycle for 50
// jobs, time limits, jobs the scheduler forgot, requeues, submissions cut
// short, an unprivileged user's jobs, and a controller outage.
#include "jobs_fixture.hpp"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <set>

using namespace hpc;
using namespace hpc::test;
using namespace hpc::test::jobs;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

TEST_P(SlurmJobs, FiftyJobsAreFollowedWithOneSqueuePerCycle) {
    std::vector<std::string> ids;
    ids.reserve(50);
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
    for (auto pos = log.find("monitor cycle"); pos != std::string::npos; pos = log.find("monitor cycle", pos + 1))
        ++cycles;
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
            auto out = slurmCommand({"scontrol", "show", "job", schedulerId});
            return out.status != 0 && out.err.find("Invalid job id") != std::string::npos;
        },
        200s, 1s));
    ASSERT_NO_FATAL_FAILURE(startDaemon());
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

TEST_P(SlurmJobs, AnSbatchThatTimesOutIsResolvedFromTheQueue) {
    // sbatch submits, then hangs past the daemon's limit and is killed.
    fs::path slow = m_h.dir() / "hanging-sbatch";
    writeExecutable(slow / "sbatch", "#!/bin/sh\n/usr/bin/sbatch \"$@\"\nsleep 30\n");
    m_h.killDaemon("j");
    m_pathPrefix = slow.string() + ":" + m_pathPrefix;
    m_h.startDaemon(
        "j", {"--job-poll-min-seconds", "1", "--job-poll-max-seconds", "2", "--slurm-command-timeout-seconds", "2"},
        daemonEnv());
    ASSERT_TRUE(m_h.waitConnected(m_token, "j"));
    m_agent = m_h.agent(m_token);
    agent::JobSpec spec;
    spec.script = "echo ran >> runs.txt\n";
    auto r = m_agent->submitJob("j", spec);
    EXPECT_EQ(str(r, "state"), "SUBMITTING");
    EXPECT_EQ(str(r, "scheduler_id"), "");
    auto cb = waitFor(str(r, "job_id"));
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(readFile(m_work / "runs.txt"), "ran\n");
    EXPECT_NE(m_h.daemonLog("j").find("whose submission was not confirmed is in the queue"), std::string::npos);
}

TEST_P(SlurmJobs, ADaemonKilledWhileSbatchRunsFindsTheJobInsteadOfSubmittingItAgain) {
    // An sbatch that submits, then is slow to answer.
    fs::path slow = m_h.dir() / "slow-sbatch";
    writeExecutable(slow / "sbatch", "#!/bin/sh\n/usr/bin/sbatch \"$@\"\nrc=$?\nsleep 4\nexit $rc\n");
    m_h.killDaemon("j");
    std::string wrappers = m_pathPrefix;
    m_pathPrefix = slow.string() + ":" + wrappers;
    ASSERT_NO_FATAL_FAILURE(startDaemon());
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
            return slurmCommand({"squeue", "--me", "--noheader", "--states=all", "--format=%k"})
                       .out.find("hpc-daemon:" + id) != std::string::npos;
        },
        30s, 200ms));
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    m_agent = m_h.agent(m_token);
    auto cb = waitFor(id);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(readFile(m_work / "runs.txt"), "ran\n");
    EXPECT_NE(m_h.daemonLog("j").find("whose submission was not confirmed is in the queue"), std::string::npos);
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
    struct stat st {};
    ASSERT_EQ(::stat((m_work / "mine").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, ::getpwnam(kUser)->pw_uid);
}

INSTANTIATE_TEST_SUITE_P(Slurm, UnprivilegedSlurmJobs, ::testing::Values("slurm"),
                         [](const auto& info) { return info.param; });

/// Stops the cluster's controller: ctest runs this suite alone (RUN_SERIAL),
/// and the controller is started again however the test ends.
class SlurmControllerDown : public SlurmJobs {
protected:
    void TearDown() override {
        if (m_stopped)
            runCommand({std::string(HPC_SOURCE_DIR) + "/scripts/slurm-cluster.sh", "start-controller", HPC_SLURM_DIR});
    }
    void controller(bool up) {
        auto r = runCommand({std::string(HPC_SOURCE_DIR) + "/scripts/slurm-cluster.sh",
                             up ? "start-controller" : "stop-controller", HPC_SLURM_DIR},
                            {}, {}, 60s);
        ASSERT_EQ(r.status, 0) << r.err;
        m_stopped = !up;
    }
    bool m_stopped = false;
};

TEST_P(SlurmControllerDown, NoJobIsReportedEndedWhileTheControllerIsDown) {
    auto id = str(submit("sleep 12\necho survived\n"), "job_id");
    ASSERT_TRUE(waitState(id, "RUNNING"));
    ASSERT_NO_FATAL_FAILURE(controller(false));
    // Several monitor cycles fail meanwhile; the job stays RUNNING, no callback.
    std::size_t before = calls("squeue").size();
    ASSERT_TRUE(waitUntil([&] { return calls("squeue").size() >= before + 3; }, 60s));
    m_agent = m_h.agent(m_token);  // the old connection sat unread past the relay's idle limit
    EXPECT_EQ(stateOf(id), "RUNNING");
    EXPECT_FALSE(m_agent->nextCallback(1s).has_value());
    EXPECT_NE(m_h.daemonLog("j").find("squeue failed"), std::string::npos);
    ASSERT_NO_FATAL_FAILURE(controller(true));
    auto cb = waitFor(id, 120s);
    EXPECT_EQ(cb.state, "COMPLETED");
    EXPECT_EQ(cb.stdoutTail, "survived\n");
}

INSTANTIATE_TEST_SUITE_P(Slurm, SlurmControllerDown, ::testing::Values("slurm"),
                         [](const auto& info) { return info.param; });

}  // namespace
