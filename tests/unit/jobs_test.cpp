// The job pieces that need no scheduler: SLURM state words, sbatch argument
// checks, the job's files, the store's jobs and outbox, and the outbox's
// delivery rules.
#include "jobs/job_files.hpp"
#include "jobs/job_store.hpp"
#include "jobs/outbox.hpp"
#include "jobs/scheduler.hpp"

#include "errors.hpp"
#include "harness.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <boost/asio/io_context.hpp>

#include <filesystem>
#include <fstream>
#include <set>

using namespace hpc;
using namespace hpc::daemon;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace hpc {
// Failures name the state, not its number.
void PrintTo(JobState state, std::ostream* os) { *os << toWireName(state); }
}  // namespace hpc

namespace {

class JobsUnit : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/hpc-jobs-XXXXXX";
        ASSERT_TRUE(::mkdtemp(tmpl));
        m_dir = tmpl;
    }
    void TearDown() override { fs::remove_all(m_dir); }

    JobRecord job(const std::string& id) {
        JobRecord j;
        j.jobId = id;
        j.daemonId = "d";
        j.agentId = "cred-1";
        j.backend = "local";
        j.dir = (m_dir / "jobs" / id).string();
        j.cwd = m_dir.string();
        j.submittedAt = 1;
        return j;
    }

    fs::path m_dir;
};

TEST(SlurmStates, MapToOurStates) {
    EXPECT_EQ(mapSlurmState("COMPLETED"), JobState::Completed);
    EXPECT_EQ(mapSlurmState("CANCELLED by 1001"), JobState::Cancelled);
    EXPECT_EQ(mapSlurmState("CANCELLED+"), JobState::Cancelled);
    EXPECT_EQ(mapSlurmState(" TIMEOUT\n"), JobState::Timeout);
    EXPECT_EQ(mapSlurmState("OUT_OF_MEMORY"), JobState::OutOfMemory);
    EXPECT_EQ(mapSlurmState("NODE_FAIL"), JobState::NodeFail);
    EXPECT_EQ(mapSlurmState("BOOT_FAIL"), JobState::NodeFail);
    EXPECT_EQ(mapSlurmState("PREEMPTED"), JobState::Preempted);
    // Requeued jobs are followed, not reported as ended.
    EXPECT_EQ(mapSlurmState("REQUEUED"), JobState::Pending);
    EXPECT_EQ(mapSlurmState("COMPLETING"), JobState::Running);
    EXPECT_EQ(mapSlurmState("CONFIGURING"), JobState::Pending);
    EXPECT_EQ(mapSlurmState("WHATEVER"), std::nullopt);
    EXPECT_EQ(mapSlurmState("SUBMITTING"), std::nullopt) << "ours, not Slurm's";
}

TEST(JobStates, EveryStateHasOneWireNameThatReadsBack) {
    std::set<std::string_view> names, finals;
    for (int i = 0; i <= static_cast<int>(JobState::Preempted); ++i) {
        auto state = static_cast<JobState>(i);
        EXPECT_EQ(jobStateFromWireName(toWireName(state)), state) << toWireName(state);
        names.insert(toWireName(state));
        if (isFinal(state)) finals.insert(toWireName(state));
    }
    EXPECT_EQ(names.size(), static_cast<std::size_t>(JobState::Preempted) + 1);
    EXPECT_EQ(finals, (std::set<std::string_view>{"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                                                  "NODE_FAIL", "PREEMPTED"}));
    EXPECT_EQ(finalStatesSqlList(),
              "('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'OUT_OF_MEMORY', 'NODE_FAIL', 'PREEMPTED')");
    EXPECT_EQ(jobStateFromWireName("completed"), std::nullopt);
    EXPECT_EQ(jobStateFromWireName(""), std::nullopt);
}

TEST(SlurmAnswers, SacctRowsSettleAJobWithWhoCancelledIt) {
    JobRecord job;
    job.schedulerId = "154";
    // The allocation's row; a step row or another job's row is ignored.
    std::string out =
        "153|FAILED|3:0|2026-11-30T00:35:04|2026-11-30T00:35:04|NonZeroExitCode\n"
        "154|CANCELLED by 1001|0:15|2026-11-30T00:35:14|2026-11-30T00:35:16|None\n";
    ASSERT_TRUE(applySacct(job, out));
    EXPECT_EQ(job.state, JobState::Cancelled);
    EXPECT_EQ(job.reason, "CANCELLED by 1001");
    EXPECT_EQ(job.signal, 15);
    EXPECT_FALSE(job.exitCode.has_value());
    EXPECT_GT(job.endedAt, job.startedAt);
    JobRecord failed;
    failed.schedulerId = "153";
    ASSERT_TRUE(applySacct(failed, out));
    EXPECT_EQ(failed.state, JobState::Failed);
    EXPECT_EQ(failed.exitCode, 3);
    EXPECT_EQ(failed.reason, "NonZeroExitCode");
    // Still running in the database, or not there: not settled.
    JobRecord running;
    running.schedulerId = "155";
    EXPECT_FALSE(applySacct(running, "155|RUNNING|0:0|2026-11-30T00:35:14|Unknown|None\n"));
    EXPECT_FALSE(applySacct(running, ""));
    EXPECT_EQ(running.state, JobState::Submitting);
}

TEST(SlurmAnswers, ScontrolLinesSettleFinalJobsOnly) {
    JobRecord job;
    std::string timeout =
        "JobId=9 JobName=wrapper UserId=root(0) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) ExitCode=0:15 "
        "RunTime=00:01:14 TimeLimit=00:01:00 StartTime=2026-11-30T00:10:00 EndTime=2026-11-30T00:11:14";
    EXPECT_EQ(applyScontrol(job, timeout), JobState::Timeout);
    EXPECT_EQ(job.state, JobState::Timeout);
    EXPECT_EQ(job.reason, "TimeLimit");
    EXPECT_EQ(job.signal, 15);
    EXPECT_DOUBLE_EQ(job.endedAt - job.startedAt, 74);
    JobRecord requeued;
    EXPECT_EQ(applyScontrol(requeued, "JobId=10 JobState=REQUEUED Reason=BeginTime ExitCode=0:0"), JobState::Pending);
    EXPECT_EQ(requeued.state, JobState::Submitting);  // followed, not ended
    JobRecord failed;
    EXPECT_EQ(applyScontrol(failed, "JobId=11 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0"), JobState::Failed);
    EXPECT_EQ(failed.exitCode, 3);
}

TEST(SbatchArgs, OnlyOptionsTheDaemonDoesNotOwn) {
    EXPECT_NO_THROW(
        SlurmScheduler::validateArgs({"--partition=debug", "-p", "debug", "--hold", "-N", "1", "--mem=1G"}));
    EXPECT_NO_THROW(SlurmScheduler::validateArgs({"-J", "a name; rm -rf /"}));  // argv, never a shell
    for (std::vector<std::string> bad : std::vector<std::vector<std::string>>{{"/tmp/other.sh"},
                                                                              {"--hold", "x"},
                                                                              {"--output=/tmp/o"},
                                                                              {"-o", "/tmp/o"},
                                                                              {"--wrap=id"},
                                                                              {"--chdir=/"},
                                                                              {"-D/"},
                                                                              {"--array=1-3"},
                                                                              {"--wait"},
                                                                              {"-p"},
                                                                              {"--x\n"},
                                                                              {std::string("--a\0b", 5)}})
        EXPECT_THROW(SlurmScheduler::validateArgs(bad), Error) << bad.front();
}

TEST_F(JobsUnit, TheWrapperRunsTheScriptAndRecordsItsExitStatus) {
    auto j = job("j1");
    writeJobFiles(j, "#!/bin/bash\n#SBATCH --mem=1G\n# comment\n#SBATCH -c 2\necho hi\n#SBATCH --ignored\n", true);
    std::string wrapper = test::readFile(j.dir + "/wrapper");
    EXPECT_NE(wrapper.find("#SBATCH --mem=1G\n#SBATCH -c 2\n"), std::string::npos) << wrapper;
    EXPECT_EQ(wrapper.find("--ignored"), std::string::npos);
    struct stat st {};
    ASSERT_EQ(::stat(j.dir.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);

    EXPECT_EQ(wrapper.find("/pid"), std::string::npos) << "a SLURM wrapper runs elsewhere; its pid means nothing here";

    auto local = job("it's \"quoted\" $dir");
    writeJobFiles(local, "echo out; echo err >&2; echo $PPID > " + shellQuote(local.dir + "/script-pid") + "; exit 6\n",
                  false);
    auto r = test::runCommand({"/bin/bash", local.dir + "/wrapper"});
    EXPECT_EQ(r.status, 6);
    // The wrapper recorded its own pid: the script's parent.
    EXPECT_EQ(test::readFile(local.pidPath()), test::readFile(local.dir + "/script-pid"));
    EXPECT_FALSE(fs::exists(local.dir + "/pid.tmp"));
    EXPECT_EQ(test::readFile(local.stdoutPath()), "out\n");
    EXPECT_EQ(test::readFile(local.stderrPath()), "err\n");
    EXPECT_TRUE(settleFromExitFile(local, "none"));
    EXPECT_EQ(local.state, JobState::Failed);
    EXPECT_EQ(local.exitCode, 6);
}

TEST_F(JobsUnit, WithoutAnExitFileAJobIsCancelledOrFailed) {
    auto j = job("j2");
    EXPECT_FALSE(settleFromExitFile(j, "vanished"));
    EXPECT_EQ(j.state, JobState::Failed);
    EXPECT_EQ(j.reason, "vanished");
    auto c = job("j3");
    c.cancelRequested = true;
    EXPECT_FALSE(settleFromExitFile(c, "vanished"));
    EXPECT_EQ(c.state, JobState::Cancelled);
}

TEST_F(JobsUnit, TailsStartOnACharacterBoundary) {
    std::ofstream(m_dir / "f") << "abc\xc3\xa9z";
    EXPECT_EQ(readTail((m_dir / "f").string(), 2), "z");
    EXPECT_EQ(readTail((m_dir / "f").string(), 3), "\xc3\xa9z");
    EXPECT_EQ(readTail((m_dir / "nothing").string(), 3), "");
}

TEST_F(JobsUnit, JobOutputIsReadInSlicesOnlyFromTheJobsOwnRegularFile) {
    fs::path job = m_dir / "j1";
    fs::create_directories(job);
    std::ofstream(job / "stdout") << std::string("ab\0\xff", 4) << "cd";
    auto slice = readJobOutput(job.string(), "stdout", 1, 3);
    EXPECT_EQ(slice.file, JobOutputSlice::File::Regular);
    EXPECT_EQ(slice.size, 6u);
    EXPECT_EQ(slice.data, std::string("b\0\xff", 3));
    EXPECT_EQ(readJobOutput(job.string(), "stdout", 6, 3).data, "");
    EXPECT_EQ(readJobOutput(job.string(), "stdout", 9, 3).size, 6u);
    EXPECT_EQ(readJobOutput(job.string(), "stderr", 0, 3).file, JobOutputSlice::File::Missing);
    EXPECT_EQ(readJobOutput((m_dir / "nojob").string(), "stdout", 0, 3).file, JobOutputSlice::File::Missing);
    // Planted by the job: a symlink to a file it may not show, a FIFO, its directory swapped for a symlink.
    std::ofstream(m_dir / "secret") << "secret";
    fs::create_symlink(m_dir / "secret", job / "stderr");
    auto refused = readJobOutput(job.string(), "stderr", 0, 100);
    EXPECT_EQ(refused.file, JobOutputSlice::File::NotRegular);
    EXPECT_EQ(refused.data, "");
    ASSERT_EQ(::mkfifo((job / "fifo").c_str(), 0600), 0);
    EXPECT_EQ(readJobOutput(job.string(), "fifo", 0, 100).file, JobOutputSlice::File::NotRegular);
    fs::create_directories(m_dir / "elsewhere");
    std::ofstream(m_dir / "elsewhere" / "stdout") << "secret";
    fs::create_directory_symlink(m_dir / "elsewhere", m_dir / "j2");
    EXPECT_EQ(readJobOutput((m_dir / "j2").string(), "stdout", 0, 100).file, JobOutputSlice::File::NotRegular);
}

TEST_F(JobsUnit, RemovingAPrunedJobsDirectoryNeverFollowsASymlinkOutOfIt) {
    fs::path outside = m_dir / "outside";
    fs::create_directories(outside / "keep");
    std::ofstream(outside / "precious") << "the user's own work";
    std::ofstream(outside / "keep" / "more") << "more";
    fs::path dir = m_dir / "work" / ".hpc-daemon" / "jobs" / "j1";
    fs::create_directories(dir / "sub" / "deeper");
    std::ofstream(dir / "stdout") << std::string(1000, 'o');
    std::ofstream(dir / "sub" / "deeper" / "result") << std::string(24, 'r');
    // Planted by the job: links out of its directory, to a directory and a file.
    fs::create_directory_symlink(outside, dir / "escape");
    fs::create_directory_symlink(outside, dir / "sub" / "escape");
    fs::create_symlink(outside / "precious", dir / "stderr");

    auto r = removeJobDir(dir.string(), "j1");
    EXPECT_TRUE(r.removed) << r.error;
    EXPECT_GE(r.bytes, 1024);
    EXPECT_FALSE(fs::exists(fs::symlink_status(dir)));
    EXPECT_TRUE(fs::exists(dir.parent_path())) << "only the job's own directory goes";
    EXPECT_EQ(test::readFile((outside / "precious").string()), "the user's own work");
    EXPECT_EQ(test::readFile((outside / "keep" / "more").string()), "more");

    auto again = removeJobDir(dir.string(), "j1");
    EXPECT_FALSE(again.removed) << "gone already";
    EXPECT_FALSE(again.error.empty());
}

TEST_F(JobsUnit, ARecordedDirectoryThatIsNotAJobsOwnIsRefused) {
    fs::path work = m_dir / "work";
    fs::path dir = work / ".hpc-daemon" / "jobs" / "j1";
    fs::create_directories(dir);
    std::ofstream(dir / "stdout") << "out";
    fs::create_directories(work / "data" / "j1");
    std::ofstream(work / "data" / "j1" / "results") << "results";
    // Another workdir whose .hpc-daemon is a symlink to the first one's.
    fs::create_directories(m_dir / "other");
    fs::create_directory_symlink(work / ".hpc-daemon", m_dir / "other" / ".hpc-daemon");

    for (const auto& [path, id] : std::vector<std::pair<std::string, std::string>>{
             {(work / "data" / "j1").string(), "j1"},                                  // not under .hpc-daemon/jobs
             {dir.string(), "j2"},                                                     // another job's id
             {dir.string() + "/", "j1"},                                               // not exactly as recorded
             {(work / ".hpc-daemon" / "jobs" / ".." / "jobs" / "j1").string(), "j1"},  // ..
             {(work / "." / ".hpc-daemon" / "jobs" / "j1").string(), "j1"},            // .
             {".hpc-daemon/jobs/j1", "j1"},                                            // relative
             {(work / ".hpc-daemon" / "jobs" / "..").string(), ".."},
             {(work / ".hpc-daemon" / "jobs").string() + "/", ""},
             {(m_dir / "other" / ".hpc-daemon" / "jobs" / "j1").string(), "j1"}}) {  // through a symlink
        auto r = removeJobDir(path, id);
        EXPECT_FALSE(r.removed) << path;
        EXPECT_FALSE(r.error.empty()) << path;
    }
    EXPECT_EQ(test::readFile((dir / "stdout").string()), "out");
    EXPECT_EQ(test::readFile((work / "data" / "j1" / "results").string()), "results");
    EXPECT_TRUE(removeJobDir(dir.string(), "j1").removed) << "the job's own path, as recorded, does go";
}

TEST_F(JobsUnit, AFinalStateAndItsCallbackAreWrittenOnceTogether) {
    auto store = Store::open(m_dir / "home");
    JobStore jobs(store);
    auto j = job("j4");
    jobs.insert(j);
    EXPECT_EQ(jobs.live("d").size(), 1u);
    j.state = JobState::Completed;
    j.exitCode = 0;
    EXPECT_TRUE(jobs.finish(j, {{"job_id", "j4"}}, "cb-a"));
    // A second settlement of the same job (a race, a restart) adds nothing.
    EXPECT_FALSE(jobs.finish(j, {{"job_id", "j4"}}, "cb-b"));
    EXPECT_TRUE(jobs.live("d").empty());
    auto pending = jobs.pendingCallbacks("d");
    ASSERT_EQ(pending.size(), 1u);
    EXPECT_EQ(pending[0].callbackId, "cb-a");
    EXPECT_EQ(jobs.pendingCallbackCount("d"), 1u);
    EXPECT_EQ(jobs.pendingCallbackCount("other"), 0u);
    // update() cannot move a final job back.
    j.state = JobState::Running;
    jobs.update(j);
    EXPECT_EQ(jobs.get("d", "j4")->state, JobState::Completed);
    // The column holds the wire name, as it did before the enum.
    auto column = store.db().prepare("SELECT state FROM jobs WHERE job_id = 'j4'");
    ASSERT_TRUE(column.step());
    EXPECT_EQ(column.text(0), "COMPLETED");
    jobs.acknowledge("cb-a");
    EXPECT_TRUE(jobs.pendingCallbacks("d").empty());
}

TEST_F(JobsUnit, AStateTheStoreDoesNotKnowReadsAsFailedNotAsALiveJob) {
    auto store = Store::open(m_dir / "home");
    JobStore jobs(store);
    jobs.insert(job("j5"));
    store.db().exec("UPDATE jobs SET state = 'EXPLODED' WHERE job_id = 'j5'");
    auto read = jobs.get("d", "j5");
    ASSERT_TRUE(read);
    EXPECT_EQ(read->state, JobState::Failed);
    EXPECT_NE(read->reason.find("EXPLODED"), std::string::npos) << read->reason;
}

TEST_F(JobsUnit, TheOutboxResendsUntilAcknowledgedAndOnEveryReconnect) {
    auto store = Store::open(m_dir / "home");
    JobStore jobs(store);
    for (const char* id : {"ja", "jb"}) {
        auto j = job(id);
        jobs.insert(j);
        j.state = JobState::Completed;
        jobs.finish(j, {{"job_id", id}, {"callback_id", std::string("cb-") + id}}, std::string("cb-") + id);
    }
    boost::asio::io_context ioc;
    std::vector<protocol::Envelope> sent;
    bool linkUp = false;
    Outbox outbox(ioc, jobs, "d", [&](const std::string& text) {
        if (!linkUp) return false;
        sent.push_back(std::get<protocol::Envelope>(protocol::parse(text)));
        return true;
    });
    outbox.kick();  // not connected: nothing goes
    EXPECT_TRUE(sent.empty());
    linkUp = true;
    outbox.connected();
    ASSERT_EQ(sent.size(), 2u);
    EXPECT_EQ(sent[0].type, "job.completed");
    EXPECT_EQ(sent[0].payload.at("job_id").as_string(), "ja");  // in the order they were written
    EXPECT_EQ(sent[1].payload.at("job_id").as_string(), "jb");
    // An error answer leaves the row; a success removes it.
    auto answer = [&](const protocol::Envelope& req, bool ok) {
        auto text = ok ? protocol::makeOk(req.id, {{"duplicate", false}})
                       : protocol::makeError(req.id, ErrorCode::Internal, "try later");
        return outbox.onResponse(std::get<protocol::Envelope>(protocol::parse(text)));
    };
    EXPECT_TRUE(answer(sent[0], true));
    EXPECT_TRUE(answer(sent[1], false));
    auto pending = jobs.pendingCallbacks("d");
    ASSERT_EQ(pending.size(), 1u);
    EXPECT_EQ(pending[0].callbackId, "cb-jb");
    // Retried after a backoff delay without any new event.
    sent.clear();
    ioc.run_for(std::chrono::seconds(3));
    ASSERT_FALSE(sent.empty());
    EXPECT_EQ(sent[0].payload.at("job_id").as_string(), "jb");
    // A reconnect sends it again at once (the old link's answers are void).
    outbox.disconnected();
    sent.clear();
    outbox.connected();
    ASSERT_EQ(sent.size(), 1u);
    protocol::Envelope stray;
    stray.id = "x7";
    EXPECT_FALSE(answer(stray, true)) << "an unrelated response was taken for a callback's";
    EXPECT_TRUE(answer(sent[0], true));
    EXPECT_TRUE(jobs.pendingCallbacks("d").empty());
}

}  // namespace
