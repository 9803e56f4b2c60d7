// Following a job's output (job.logs, hpc-agent logs) end to end: the agent
// library and the CLI through a real relay to a daemon whose jobs run on the
// test SLURM cluster or locally.
#include "jobs_fixture.hpp"

#include <fcntl.h>

using namespace hpc;
using namespace hpc::test;
using namespace hpc::test::jobs;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

class JobLogs : public Jobs {
protected:
    agent::JobLogsSpec spec(const std::string& jobId, std::uint64_t from = 0, bool follow = false) {
        agent::JobLogsSpec s;
        s.jobId = jobId;
        s.fromByte = from;
        s.follow = follow;
        return s;
    }

    /// The whole stream as one string, and its end.
    std::pair<std::string, agent::PtyEvent> stream(const agent::JobLogsSpec& s) {
        std::string out;
        auto end = m_agent->streamJobLogs("j", s, [&out](std::string_view d) { out.append(d); });
        return {out, end};
    }

    fs::path jobDir(const std::string& id) const { return m_work / ".hpc-daemon/jobs" / id; }

    ErrorCode refusal(const agent::JobLogsSpec& s, agent::AgentClient* client = nullptr) {
        try {
            (client ? client : m_agent.get())->openJobLogs("j", s);
        } catch (const Error& e) {
            return e.code();
        }
        ADD_FAILURE() << "job.logs for " << s.jobId << " was accepted";
        return ErrorCode::Internal;
    }
};

/// What the follow test's job writes: lines over about two seconds, then
/// bytes that are not text.
const std::string kLines = [] {
    std::string s;
    for (int i = 1; i <= 20; ++i) s += "line " + std::to_string(i) + "\n";
    return s + std::string("\x00\xff\xfe end", 7);
}();

TEST_P(JobLogs, FollowingGetsEveryByteInOrderAndEndsWhenTheJobEnds) {
    auto id = str(submit("for i in $(seq 1 20); do echo \"line $i\"; sleep 0.1; done\n"
                         "printf '\\000\\377\\376 end'\necho to-stderr >&2\nexit 3\n"),
                  "job_id");
    // Asked at once: the job may not have started, nor its file exist.
    auto [out, end] = stream(spec(id, 0, true));
    EXPECT_EQ(out, kLines);
    EXPECT_EQ(end.kind, agent::PtyEvent::Kind::LogsEnd);
    EXPECT_EQ(end.error, "");
    EXPECT_EQ(end.state, "FAILED");
    EXPECT_EQ(end.exitCode, 3);
    EXPECT_EQ(end.endByte, kLines.size());
    // stderr, once the job has ended: what is there, then the end.
    auto err = spec(id);
    err.stderrStream = true;
    auto [errOut, errEnd] = stream(err);
    EXPECT_EQ(errOut, "to-stderr\n");
    EXPECT_EQ(errEnd.state, "FAILED");
}

INSTANTIATE_TEST_SUITE_P(Backends, JobLogs, ::testing::Values("local", "slurm"),
                         [](const auto& info) { return info.param; });

class LocalJobLogs : public JobLogs {};

TEST_P(LocalJobLogs, FromByteResumesExactlyWhereAStreamWasLeft) {
    auto id = str(submit("for i in $(seq 1 30); do echo \"row $i\"; sleep 0.05; done\n"), "job_id");
    // Take the first bytes of a followed stream, then close it.
    auto first = m_agent->openJobLogs("j", spec(id, 0, true));
    std::string head;
    while (head.size() < 20) {
        auto e = m_agent->nextPtyEvent(10s);
        ASSERT_TRUE(e.has_value());
        ASSERT_EQ(e->kind, agent::PtyEvent::Kind::Output);
        head += e->data;
    }
    m_agent->closeJobLogs("j", first.channel);
    for (auto e = m_agent->nextPtyEvent(10s); e; e = m_agent->nextPtyEvent(10s)) {
        if (e->kind == agent::PtyEvent::Kind::LogsEnd) {
            EXPECT_EQ(e->endByte, head.size());
            EXPECT_EQ(e->error, "");
            break;
        }
        head += e->data;
    }
    // The rest, from the next byte: together exactly the job's output.
    auto [rest, end] = stream(spec(id, head.size(), true));
    EXPECT_EQ(end.state, "COMPLETED");
    std::string all = readFile(jobDir(id) / "stdout");
    EXPECT_EQ(head + rest, all);
    // Once ended: any offset up to the end, and none past it.
    EXPECT_EQ(stream(spec(id, 7)).first, all.substr(7));
    EXPECT_EQ(stream(spec(id, all.size())).first, "");
    EXPECT_EQ(refusal(spec(id, all.size() + 1)), ErrorCode::BadRequest);
}

TEST_P(LocalJobLogs, FiveMegabytesStreamWithinTheCreditWindow) {
    auto id = str(submit("head -c 5000000 /dev/urandom\n"), "job_id");
    EXPECT_EQ(waitFor(id).state, "COMPLETED");
    constexpr std::uint64_t kWindow = std::uint64_t{64} * 1024;
    auto s = spec(id);
    s.credit = kWindow;
    auto handle = m_agent->openJobLogs("j", s);
    EXPECT_EQ(handle.size, 5000000u);
    // Without acks, the window arrives and then nothing more: wait for the
    // window (however slow the machine), then give a surplus time to show.
    std::string got;
    ASSERT_TRUE(waitUntil(
        [&] {
            if (auto e = m_agent->nextPtyEvent(100ms)) got += e->data;
            return got.size() >= kWindow;
        },
        60s))
        << got.size();
    for (auto e = m_agent->nextPtyEvent(1s); e; e = m_agent->nextPtyEvent(1s)) got += e->data;
    EXPECT_EQ(got.size(), kWindow);
    // Then credit as it is read; what is unacknowledged never exceeds the window.
    std::uint64_t unacked = got.size();
    m_agent->ptyAck("j", handle.channel, unacked);
    unacked = 0;
    std::optional<agent::PtyEvent> end;
    while (!end) {
        auto e = m_agent->nextPtyEvent(30s);
        ASSERT_TRUE(e.has_value()) << "the stream stalled at byte " << got.size();
        if (e->kind == agent::PtyEvent::Kind::LogsEnd) {
            end = e;
            break;
        }
        got += e->data;
        unacked += e->data.size();
        ASSERT_LE(unacked, kWindow);
        if (unacked >= kWindow / 2) {
            m_agent->ptyAck("j", handle.channel, unacked);
            unacked = 0;
        }
    }
    EXPECT_EQ(end->endByte, 5000000u);
    EXPECT_TRUE(got == readFile(jobDir(id) / "stdout")) << "the bytes differ";
}

TEST_P(LocalJobLogs, ASymlinkInPlaceOfTheOutputIsNeverFollowed) {
    fs::path secret = m_h.dir() / "secret";
    std::ofstream(secret) << "not for the agent\n";
    auto id =
        str(submit("rm -f \"$HPC_JOB_DIR/stdout\"\nln -s " + secret.string() + " \"$HPC_JOB_DIR/stdout\"\n"), "job_id");
    EXPECT_EQ(waitFor(id).state, "COMPLETED");
    ASSERT_TRUE(fs::is_symlink(jobDir(id) / "stdout"));
    try {
        m_agent->openJobLogs("j", spec(id));
        FAIL() << "a symlink was followed";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::PathNotAllowed);
        EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
    }
}

TEST_P(LocalJobLogs, AnUnknownJobAnotherAgentsJobAndBadRequestsAreRefused) {
    // Runs until cancelled: the followed channel below must still be open
    // when it is closed (an ended job's stream ends, and closes, by itself).
    auto id = str(submit("echo mine\nsleep 600\n"), "job_id");
    EXPECT_EQ(refusal(spec("jnosuchjob")), ErrorCode::NotFound);
    auto other = m_h.agent(m_h.login("j@example.org", "other"));
    EXPECT_EQ(refusal(spec(id), other.get()), ErrorCode::NotOwner);
    auto expectBad = [&](const json::object& payload) {
        try {
            m_agent->request("j", "job.logs", payload, 60s);
            ADD_FAILURE() << "accepted: " << json::serialize(payload);
        } catch (const Error& e) {
            EXPECT_EQ(e.code(), ErrorCode::BadRequest) << json::serialize(payload) << ": " << e.what();
        }
    };
    expectBad({{"job_id", id}, {"stream", "exit_status"}});
    expectBad({{"job_id", id}, {"from_byte", -1}});
    expectBad({{"job_id", id}, {"from_byte", "10"}});
    expectBad({{"job_id", id}, {"credit", 0}});
    expectBad({{"job_id", id}, {"follow", "yes"}});
    expectBad({{"stream", "stdout"}});
    // Another agent's channel is not there for it.
    auto handle = m_agent->openJobLogs("j", spec(id, 0, true));
    EXPECT_THROW(other->closeJobLogs("j", handle.channel), Error);
    m_agent->closeJobLogs("j", handle.channel);
    m_agent->cancelJob("j", id);
}

TEST_P(LocalJobLogs, TheCliFollowsAcrossADaemonRestartAndResumesWhereItWas) {
    auto id =
        str(submit("for i in $(seq 1 40); do echo \"tick $i\"; sleep 0.1; done\necho oops >&2\nexit 2\n"), "job_id");
    std::vector<std::string> env = m_h.baseEnv();
    env.insert(env.end(),
               {"HPC_AGENT_URL=" + m_h.url(), "HPC_AGENT_CA=" + m_h.caFile(), "HPC_AGENT_TOKEN=" + m_token.reveal()});
    // The job's bytes on stdout, hpc-agent's own words on stderr.
    fs::path out = m_h.dir() / "logs.out", said = m_h.dir() / "logs.err";
    SpawnOptions o;
    o.argv = {"/bin/sh", "-c", "exec \"$@\" 2>" + said.string(), "sh", Harness::binary("hpc-agent"), "logs", "j",
              id,        "-f"};
    o.envOverrides = env;
    o.outputFile = out.string();
    o.dieWithParent = true;
    ChildGuard follower(spawn(o).pid);
    ASSERT_TRUE(waitUntil([&] { return readFile(out).find("tick 5\n") != std::string::npos; }, 30s));
    m_h.killDaemon("j");
    ASSERT_NO_FATAL_FAILURE(startDaemon());
    auto status = follower.waitFor(60s);
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(status->code, 1) << "a FAILED job: " << readFile(said);
    // Every byte once, in order, across the restart.
    std::string expected = readFile(jobDir(id) / "stdout");
    EXPECT_EQ(readFile(out), expected);
    EXPECT_NE(readFile(said).find("reconnecting"), std::string::npos) << readFile(said);
    // Without -f, from a byte, and stderr: printed at once, status 0.
    auto cli = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {Harness::binary("hpc-agent"), "logs", "j", id});
        return runCommand(args, {}, env, 60s);
    };
    auto from = cli({"--from-byte", "7"});
    EXPECT_EQ(from.status, 0) << from.err;
    EXPECT_EQ(from.out, expected.substr(7));
    auto err = cli({"--stderr"});
    EXPECT_EQ(err.out, "oops\n");
    auto unknown = runCommand({Harness::binary("hpc-agent"), "logs", "j", "jnosuchjob"}, {}, env, 60s);
    EXPECT_EQ(unknown.status, 255);
    EXPECT_NE(unknown.err.find("no job jnosuchjob"), std::string::npos) << unknown.err;
}

INSTANTIATE_TEST_SUITE_P(Local, LocalJobLogs, ::testing::Values("local"), [](const auto& info) { return info.param; });

}  // namespace
