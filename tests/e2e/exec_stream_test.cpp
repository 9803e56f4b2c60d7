// exec end to end (issue 22 item 4): hpc-agent exec streams stdout, stderr
// and stdin through hpc-relay and hpc-daemond over TLS, any bytes of any
// size; --json keeps the capped result. One relay and one daemon serve every
// test here.
#include "harness.hpp"

#include "errors.hpp"
#include "protocol.hpp"

#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

/// A number from /proc/PID/FILE's "KEY: value" line (VmRSS in kB, wchar in bytes); -1 when absent.
long long procField(pid_t pid, const std::string& file, const std::string& key) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/" + file);
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
    return -1;
}

class ExecStreamTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        s_h = new Harness();
        s_h->startRelay();
        s_work = s_h->dir() / "work";
        fs::create_directories(s_work);
        auto r = s_h->setupDaemon("x", "exec@example.org", {s_work.string()});
        ASSERT_EQ(r.status, 0) << r.err;
        s_h->startDaemon("x");
        s_token = new Secret(s_h->login("exec@example.org"));
        ASSERT_TRUE(s_h->waitConnected(*s_token, "x")) << s_h->daemonLog("x");
    }
    static void TearDownTestSuite() {
        delete s_token;
        delete s_h;
        s_h = nullptr;
    }
    void SetUp() override { ASSERT_TRUE(s_h->waitConnected(*s_token, "x")) << s_h->daemonLog("x"); }

    static std::vector<std::string> env() {
        return {"HPC_AGENT_URL=" + s_h->url(), "HPC_AGENT_TOKEN=" + s_token->reveal(), "HPC_AGENT_CA=" + s_h->caFile()};
    }
    static CommandResult agentExec(std::vector<std::string> args) {
        args.insert(args.begin(), {Harness::binary("hpc-agent"), "exec", "x"});
        return runCommand(args, "", env(), 120s);
    }
    /// hpc-agent exec x ARGS < a file holding `input` (any size).
    static CommandResult agentExecWithInput(const std::string& args, const std::string& input) {
        fs::path file = s_h->dir() / "input";
        writeBytes(file, input);
        return runCommand({"sh", "-c", Harness::binary("hpc-agent") + " exec x " + args + " < '" + file.string() + "'"},
                          "", env(), 120s);
    }
    /// Opens a streamed exec by hand: its answer ({channel, pid, stdin_credit}).
    static json::object openStream(agent::AgentClient& c, json::object payload) {
        payload["stream"] = true;
        return c.request("x", "exec", std::move(payload));
    }
    /// Reads frames until the channel's exec.end, granting credit back for
    /// each; counts the output bytes.
    static json::object readToEnd(agent::AgentClient& c, std::uint32_t channel, std::uint64_t* outBytes = nullptr) {
        while (auto f = c.nextFrame(60s)) {
            if (f->binary) {
                auto e = protocol::decodeExecFrame(std::span<const char>(f->data.data(), f->data.size()));
                if (!e || e->channel != channel) continue;
                if (outBytes) *outBytes += e->data.size();
                c.ptyAck("x", channel, e->data.size());
                continue;
            }
            auto parsed = protocol::parse(f->data, protocol::kMaxResponseBytes);
            auto* env = std::get_if<protocol::Envelope>(&parsed);
            if (env && env->type == "exec.end" && env->payload.at("channel").to_number<std::uint32_t>() == channel)
                return env->payload;
        }
        ADD_FAILURE() << "no exec.end for channel " << channel;
        return {};
    }

    static inline Harness* s_h = nullptr;
    static inline Secret* s_token = nullptr;
    static inline fs::path s_work;
};

}  // namespace

TEST_F(ExecStreamTest, StreamsMegabytesOfBinaryOutputWholeWithStderrApartAndTheExitCode) {
    // The command keeps a copy of what it printed: the bytes that arrived are compared with it.
    auto r = agentExec({"--", "sh", "-c", "head -c 8M /dev/urandom | tee out.bin; echo oops >&2; exit 3"});
    EXPECT_EQ(r.status, 3) << r.err;
    EXPECT_EQ(r.err, "oops\n");
    ASSERT_EQ(r.out.size(), 8u << 20);
    EXPECT_EQ(sha256(r.out), sha256(readFile(s_work / "out.bin")));
    // A signal is the status a shell gives it.
    r = agentExec({"--", "sh", "-c", "kill -TERM $$"});
    EXPECT_EQ(r.status, 128 + SIGTERM) << r.err;
}

TEST_F(ExecStreamTest, StreamsStdinOfAnySizeAndAnyBytes) {
    std::string input = binaryData(8 << 20, 41);
    auto r = agentExecWithInput("--stdin -- sha256sum", input);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out.substr(0, 64), sha256(input));
    // A command that does not read its stdin still ends, with its own status.
    r = agentExecWithInput("--stdin -- sh -c 'exit 5'", input);
    EXPECT_EQ(r.status, 5) << r.err;
}

TEST_F(ExecStreamTest, JsonKeepsTheCappedResultAndACutOutputFailsUnlessAllowed) {
    auto r = agentExec({"--json", "--", "head", "-c", "5M", "/dev/zero"});
    EXPECT_EQ(r.status, 253) << r.err;
    EXPECT_NE(r.err.find("cut at"), std::string::npos) << r.err;
    EXPECT_TRUE(json::parse(r.out).as_object().at("stdout_truncated").as_bool());
    r = agentExec({"--json", "--allow-truncated", "--", "head", "-c", "5M", "/dev/zero"});
    EXPECT_EQ(r.status, 0) << r.err;
    // Binary stdin within the request limit; larger input is a sentence, before anything is sent.
    std::string input = binaryData(4000, 43);
    r = agentExecWithInput("--json --stdin -- sha256sum", input);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(std::string(json::parse(r.out).as_object().at("stdout").as_string()).substr(0, 64), sha256(input));
    r = agentExecWithInput("--json --stdin -- wc -c", binaryData(2 << 20, 47));
    EXPECT_EQ(r.status, 255);
    EXPECT_NE(r.err.find("leave out --json"), std::string::npos) << r.err;
}

TEST_F(ExecStreamTest, ASlowReaderHoldsTheCommandAtItsWindowNotTheDaemonsMemory) {
    auto c = s_h->agent(*s_token);
    long long rssBefore = procField(s_h->daemonPid("x"), "status", "VmRSS");
    constexpr std::uint64_t kWindow = std::uint64_t{64} * 1024;
    constexpr std::uint64_t kTotal = 32 << 20;
    auto opened =
        openStream(*c, {{"argv", json::array{"head", "-c", std::to_string(kTotal), "/dev/zero"}}, {"credit", kWindow}});
    auto channel = opened.at("channel").to_number<std::uint32_t>();
    auto pid = static_cast<pid_t>(opened.at("pid").as_int64());
    // Nothing is acknowledged: the command blocks on its full pipe once the window is sent.
    ASSERT_TRUE(waitUntil(
        [&] { return readFile("/proc/" + std::to_string(pid) + "/wchan").find("pipe_write") != std::string::npos; },
        20s));
    long long written = procField(pid, "io", "wchar");
    EXPECT_GT(written, 0);
    EXPECT_LT(written, 1 << 20) << "the command ran ahead of its window";
    EXPECT_LT(procField(s_h->daemonPid("x"), "status", "VmRSS") - rssBefore, 16 * 1024) << "kB";
    // The window arrived, and no more.
    std::uint64_t got = 0;
    while (got < kWindow) {
        auto f = c->nextFrame(20s);
        ASSERT_TRUE(f);
        auto e = protocol::decodeExecFrame(std::span<const char>(f->data.data(), f->data.size()));
        ASSERT_TRUE(f->binary && e && e->channel == channel && e->stream == 1);
        got += e->data.size();
    }
    EXPECT_EQ(got, kWindow);
    // Credit granted back as it is read: the rest flows, and the end counts every byte.
    c->ptyAck("x", channel, kWindow);
    auto end = readToEnd(*c, channel, &got);
    EXPECT_EQ(got, kTotal);
    EXPECT_EQ(end.at("stdout_bytes").to_number<std::uint64_t>(), kTotal);
    EXPECT_EQ(end.at("exit_code").as_int64(), 0);
}

TEST_F(ExecStreamTest, AFrameTheProtocolDoesNotAllowEndsTheStreamWithAProtocolError) {
    auto c = s_h->agent(*s_token);
    // Output sent the wrong way: only stdin goes to the daemon.
    auto opened = openStream(*c, {{"argv", json::array{"cat"}}, {"stream_stdin", true}});
    auto channel = opened.at("channel").to_number<std::uint32_t>();
    c->ws().sendBinary(protocol::makeExecFrame(channel, protocol::ExecStream::Stdout, 10));
    auto end = readToEnd(*c, channel);
    EXPECT_EQ(end.at("code").as_string(), "BAD_REQUEST");
    EXPECT_NE(std::string(end.at("error").as_string()).find("only stdin"), std::string::npos);
    EXPECT_EQ(end.at("signal").as_int64(), SIGKILL);
    // A frame over the size limit, then stdin beyond the window granted.
    opened = openStream(*c, {{"argv", json::array{"cat"}}, {"stream_stdin", true}});
    channel = opened.at("channel").to_number<std::uint32_t>();
    c->ws().sendBinary(protocol::makeExecFrame(channel, protocol::ExecStream::Stdin, (1 << 20) + 1));
    EXPECT_NE(std::string(readToEnd(*c, channel).at("error").as_string()).find("over the limit"), std::string::npos);
    opened = openStream(*c, {{"argv", json::array{"sleep", "60"}}, {"stream_stdin", true}});
    channel = opened.at("channel").to_number<std::uint32_t>();
    auto window = opened.at("stdin_credit").to_number<std::uint64_t>();
    c->ws().sendBinary(protocol::makeExecFrame(channel, protocol::ExecStream::Stdin, window));
    c->ws().sendBinary(protocol::makeExecFrame(channel, protocol::ExecStream::Stdin, 1));
    end = readToEnd(*c, channel);
    EXPECT_EQ(end.at("code").as_string(), "BAD_REQUEST");
    EXPECT_NE(std::string(end.at("error").as_string()).find("beyond its window"), std::string::npos);
    // A request on the channel once it has ended: NOT_FOUND. The daemon carries on.
    try {
        c->request("x", "exec.eof", {{"channel", channel}});
        ADD_FAILURE() << "exec.eof on an ended channel was accepted";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::NotFound) << e.what();
    }
    auto r = agentExec({"--", "echo", "still here"});
    EXPECT_EQ(r.out, "still here\n") << r.err;
}

TEST_F(ExecStreamTest, AnAgentThatGoesAwayTakesItsCommandWithIt) {
    pid_t pid = 0;
    {
        auto c = s_h->agent(*s_token);
        auto opened = openStream(*c, {{"argv", json::array{"sleep", "600"}}});
        pid = static_cast<pid_t>(opened.at("pid").as_int64());
        ASSERT_EQ(::kill(pid, 0), 0);
    }  // the connection closes
    EXPECT_TRUE(waitUntil([pid] { return ::kill(pid, 0) != 0; }, 20s)) << s_h->daemonLog("x");
}
