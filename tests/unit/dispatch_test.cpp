#include "dispatch.hpp"

#include "exec_stream.hpp"

#include "errors.hpp"
#include "file_wire.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <boost/asio/io_context.hpp>

#include <filesystem>

using namespace hpc;
using namespace hpc::daemon;
namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

class DispatchTest : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/hpc-dispatch-XXXXXX";
        ASSERT_TRUE(::mkdtemp(tmpl));
        m_root = tmpl;
        fs::create_directories(m_root / "allowed" / "sub");
        fs::create_directories(m_root / "outside");
        fs::create_directory_symlink(m_root / "outside", m_root / "allowed" / "escape");
        m_dispatch = std::make_unique<Dispatcher>(m_exec, AllowedDirs({(m_root / "allowed").string()}), "/tmp",
                                                  [this](std::string t) { m_sent.push_back(std::move(t)); });
    }
    void TearDown() override { fs::remove_all(m_root); }

    protocol::Envelope lastReply() {
        EXPECT_FALSE(m_sent.empty());
        auto r = protocol::parse(m_sent.back(), protocol::kMaxResponseBytes);
        return std::get<protocol::Envelope>(r);
    }
    ErrorCode errorFor(const json::object& payload) {
        m_dispatch->onText(protocol::makeMessage("exec", "x", payload));
        auto r = lastReply();
        EXPECT_FALSE(r.ok) << json::serialize(payload);
        return r.errorCode;
    }

    fs::path m_root;
    boost::asio::io_context m_ioc;
    ExecService m_exec{m_ioc};
    std::vector<std::string> m_sent;
    std::unique_ptr<Dispatcher> m_dispatch;
};

}  // namespace

TEST_F(DispatchTest, RunsAnExecInTheFirstAllowedDirectoryByDefault) {
    m_dispatch->onText(protocol::makeMessage("exec", "e1", {{"argv", json::array{"pwd"}}}));
    m_ioc.run_for(10s);
    auto r = lastReply();
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.replyTo, "e1");
    EXPECT_EQ(r.result.at("stdout").as_string(), fs::canonical(m_root / "allowed").string() + "\n");
    EXPECT_EQ(r.result.at("exit_code").as_int64(), 0);
}

TEST_F(DispatchTest, RunsAShellCommandLine) {
    m_dispatch->onText(protocol::makeMessage("exec", "e2", {{"command", "echo a && echo b | tr b c"}, {"cwd", "sub"}}));
    m_ioc.run_for(10s);
    auto r = lastReply();
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.result.at("stdout").as_string(), "a\nc\n");
}

TEST_F(DispatchTest, SendsNonUtf8OutputAsBase64) {
    m_dispatch->onText(protocol::makeMessage("exec", "e3", {{"command", "printf '\\377\\376'"}}));
    m_ioc.run_for(10s);
    auto r = lastReply();
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.result.at("stdout_encoding").as_string(), "base64");
    EXPECT_EQ(r.result.at("stdout").as_string(), "//4=");
}

TEST_F(DispatchTest, RefusesAWorkingDirectoryOutsideTheAllowedOnes) {
    EXPECT_EQ(errorFor({{"argv", json::array{"pwd"}}, {"cwd", "/etc"}}), ErrorCode::PathNotAllowed);
    EXPECT_EQ(errorFor({{"argv", json::array{"pwd"}}, {"cwd", "../outside"}}), ErrorCode::PathNotAllowed);
    EXPECT_EQ(errorFor({{"argv", json::array{"pwd"}}, {"cwd", "escape"}}), ErrorCode::PathNotAllowed)
        << "a symlink out of the allowed directory is followed before the check";
    EXPECT_EQ(errorFor({{"argv", json::array{"pwd"}}, {"cwd", "missing"}}), ErrorCode::NotFound);
    EXPECT_EQ(m_exec.running(), 0u) << "nothing was started";
}

TEST_F(DispatchTest, RefusesMalformedExecPayloads) {
    EXPECT_EQ(errorFor({}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"argv", json::array{"a"}}, {"command", "b"}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"argv", "ls"}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"argv", json::array{}}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"argv", json::array{1}}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", ""}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", "true"}, {"timeout_s", -1}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", "true"}, {"timeout_s", "5"}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", "true"}, {"max_output_bytes", 1e12}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", "true"}, {"env", json::object{{"BAD NAME", "x"}}}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", "true"}, {"env", json::object{{"OK", 1}}}}), ErrorCode::BadRequest);
    // A NUL would cut the value short at execve: refused, not truncated.
    EXPECT_EQ(errorFor({{"command", "true"}, {"env", json::object{{"OK", std::string("a\0b", 3)}}}}),
              ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", "true"}, {"stdin", 5}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"argv", json::array{"/no/such/program"}}}), ErrorCode::NotFound);
}

TEST_F(DispatchTest, RefusesStreamFieldsThatDoNotGoTogether) {
    EXPECT_EQ(errorFor({{"command", "true"}, {"stream_stdin", true}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", "true"}, {"credit", 65536}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", "true"}, {"stream", true}, {"stdin", "x"}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", "true"}, {"stream", true}, {"max_output_bytes", 10}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", "true"}, {"stream", true}, {"credit", 1}}), ErrorCode::BadRequest);
    EXPECT_EQ(errorFor({{"command", "true"}, {"stream", "yes"}}), ErrorCode::BadRequest);
    EXPECT_EQ(m_exec.running(), 0u) << "nothing was started";
}

TEST_F(DispatchTest, StreamsAnExecsOutputAsTaggedFramesAndEndsWithItsStatus) {
    std::vector<std::string> frames;
    m_exec.streams().setSenders(
        [this](std::string t) {
            m_sent.push_back(std::move(t));
            return true;
        },
        [&frames](std::string f) {
            frames.push_back(std::move(f));
            return true;
        });
    m_dispatch->onText(protocol::makeMessage(
        "exec", "s1", {{"command", "tr a b; echo err >&2; exit 4"}, {"stream", true}, {"stream_stdin", true}}));
    auto opened = lastReply();
    ASSERT_TRUE(opened.ok) << opened.errorMessage;
    auto channel = opened.result.at("channel").to_number<std::uint32_t>();
    EXPECT_GT(opened.result.at("stdin_credit").to_number<std::uint64_t>(), 0u);
    EXPECT_EQ(m_exec.running(), 1u);
    std::string input = protocol::makeExecFrame(channel, protocol::ExecStream::Stdin, 3);
    input.replace(protocol::kExecFrameHeaderBytes, 3, "aaa");
    m_dispatch->onBinary(input);
    m_dispatch->onText(protocol::makeMessage("exec.eof", "s2", {{"channel", channel}}));
    EXPECT_TRUE(lastReply().ok);
    auto ended = [this] { return !m_sent.empty() && lastReply().type == "exec.end"; };
    for (auto deadline = std::chrono::steady_clock::now() + 10s;
         !ended() && std::chrono::steady_clock::now() < deadline;)
        m_ioc.run_one_for(100ms);
    ASSERT_TRUE(ended());
    std::string out, err;
    for (const auto& f : frames) {
        auto e = protocol::decodeExecFrame(std::span<const char>(f.data(), f.size()));
        ASSERT_TRUE(e && e->channel == channel);
        (e->stream == 1 ? out : err).append(e->data.data(), e->data.size());
    }
    EXPECT_EQ(out, "bbb");
    EXPECT_EQ(err, "err\n");
    auto end = lastReply().payload;
    EXPECT_EQ(end.at("exit_code").as_int64(), 4);
    EXPECT_EQ(end.at("stdout_bytes").as_int64(), 3);
    EXPECT_EQ(end.at("stdin_bytes").as_int64(), 3);
    EXPECT_FALSE(end.contains("error"));
    EXPECT_EQ(m_exec.running(), 0u);
    // The channel has ended: acting on it is NOT_FOUND, late bytes are dropped without a word.
    m_dispatch->onText(protocol::makeMessage("exec.eof", "s3", {{"channel", channel}}));
    EXPECT_EQ(lastReply().errorCode, ErrorCode::NotFound);
    auto before = m_sent.size();
    m_dispatch->onBinary(input);
    EXPECT_EQ(m_sent.size(), before);
}

TEST_F(DispatchTest, AnswersEveryMalformedFrameAndKeepsGoing) {
    for (const char* bad : {"", "garbage", "[]", R"({"v":1})", R"({"v":3,"type":"exec","id":"a"})",
                            R"({"v":1,"type":"exec"})", R"({"v":1,"type":"exec","id":"a","payload":7})"}) {
        std::size_t before = m_sent.size();
        m_dispatch->onText(bad);
        ASSERT_EQ(m_sent.size(), before + 1) << "no answer to " << bad;
        EXPECT_EQ(lastReply().errorCode, ErrorCode::BadRequest) << bad;
    }
    m_dispatch->onText(protocol::makeMessage("ping", "p"));
    EXPECT_EQ(lastReply().type, "pong");
}

TEST_F(DispatchTest, AnswersAFrameItCannotParseUnderTheIdItCouldRead) {
    // The platform can then answer the agent's request instead of holding it.
    for (const char* bad : {R"({"v":1,"type":"exec","id":"n1","payload":{"argv":["true"],"timeout_s":1e999}})",
                            R"({"v":1,"type":"exec","id":"n1","payload":{"argv":["true"],"timeout_s":Infinity}})",
                            R"({"v":1,"type":"exec","id":"n1","payload":{"argv":["true"],)"}) {
        std::size_t before = m_sent.size();
        m_dispatch->onText(bad);
        ASSERT_EQ(m_sent.size(), before + 1) << "no answer to " << bad;
        EXPECT_EQ(lastReply().errorCode, ErrorCode::BadRequest) << bad;
        EXPECT_EQ(lastReply().replyTo, "n1") << bad;
    }
}

TEST_F(DispatchTest, AnswersAnUnknownTypeWithUnknownType) {
    m_dispatch->onText(protocol::makeMessage("job.frobnicate", "u1"));
    auto r = lastReply();
    EXPECT_EQ(r.errorCode, ErrorCode::UnknownType);
    EXPECT_EQ(r.replyTo, "u1");
}

TEST_F(DispatchTest, AnswersABinaryFrameForNoOpenChannel) {
    m_dispatch->onBinary(std::string("\0\0\0\1hi", 6));
    EXPECT_EQ(lastReply().errorCode, ErrorCode::NotFound);
    m_dispatch->onBinary("ab");
    EXPECT_EQ(lastReply().errorCode, ErrorCode::BadRequest);
}

TEST(AllowedDirectories, UnrestrictedWhenNoneAreConfigured) {
    AllowedDirs none({});
    EXPECT_TRUE(none.unrestricted());
    EXPECT_TRUE(none.allows("/etc"));
    EXPECT_EQ(none.resolveCwd(std::nullopt, "/usr"), "/usr");
}

namespace {

/// The dispatcher with file transfers attached, on a real file system.
class FileDispatchTest : public DispatchTest {
protected:
    void SetUp() override {
        DispatchTest::SetUp();
        auto send = [this](std::string t) {
            m_sent.push_back(std::move(t));
            return true;
        };
        m_files = std::make_unique<FileService>(m_ioc, 10s, send, send);
        daemon::files::FilePolicy policy;
        policy.allowed = {fs::canonical(m_root / "allowed")};
        policy.base = policy.allowed.front();
        m_files->setPolicy(policy);
        m_dispatch->attachFiles(*m_files);
    }
    /// Runs the loop (answers come from worker threads, into a loop that may
    /// have run out of work) until `done` holds; false after 5 s.
    bool runUntil(const std::function<bool()>& done) {
        for (int i = 0; i < 500; ++i) {
            if (done()) return true;
            m_ioc.restart();
            m_ioc.run_for(10ms);
        }
        return done();
    }
    /// Sends a request and returns its answer.
    protocol::Envelope ask(const std::string& type, json::object payload) {
        std::string id = "q" + std::to_string(++m_seq);
        m_dispatch->onText(protocol::makeMessage(type, id, std::move(payload)));
        std::optional<protocol::Envelope> answer;
        bool answered = runUntil([&] {
            for (const auto& text : m_sent) {
                auto r = protocol::parse(text, protocol::kMaxResponseBytes);
                auto* env = std::get_if<protocol::Envelope>(&r);
                if (env && env->isResponse() && env->replyTo == id) answer = *env;
            }
            return answer.has_value();
        });
        EXPECT_TRUE(answered) << type << " got no answer";
        return answer.value_or(protocol::Envelope{});
    }
    std::unique_ptr<FileService> m_files;
    int m_seq = 0;
};

}  // namespace

TEST_F(FileDispatchTest, AnUploadOpensAChannelTakesItsBytesAndCommitsOnlyAMatchingChecksum) {
    auto put = ask("file.put", {{"path", "sub/f.bin"}});
    ASSERT_TRUE(put.ok) << put.errorMessage;
    auto channel = static_cast<std::uint32_t>(put.result.at("channel").as_int64());
    EXPECT_GE(channel, FileService::kFirstChannel);
    m_dispatch->onBinary(hpc::files::encodeDataFrame(channel, 0, std::string("\0\xff", 2)));
    hpc::files::Sha256 sha;
    sha.update(std::string("\0\xff", 2));
    auto wrong = ask("file.commit", {{"channel", channel}, {"size", 2}, {"sha256", std::string(64, '0')}});
    EXPECT_EQ(wrong.errorCode, ErrorCode::BadRequest);
    EXPECT_FALSE(fs::exists(m_root / "allowed" / "sub" / "f.bin"));
    // Again, right this time; a gap in the offsets ends a transfer at once.
    put = ask("file.put", {{"path", "sub/f.bin"}});
    channel = static_cast<std::uint32_t>(put.result.at("channel").as_int64());
    m_dispatch->onBinary(hpc::files::encodeDataFrame(channel, 0, std::string("\0\xff", 2)));
    auto ok = ask("file.commit", {{"channel", channel}, {"size", 2}, {"sha256", sha.hex()}});
    ASSERT_TRUE(ok.ok) << ok.errorMessage;
    EXPECT_EQ(fs::file_size(m_root / "allowed" / "sub" / "f.bin"), 2u);
    put = ask("file.put", {{"path", "sub/g.bin"}});
    channel = static_cast<std::uint32_t>(put.result.at("channel").as_int64());
    m_dispatch->onBinary(hpc::files::encodeDataFrame(channel, 5, "x"));
    // The bad frame's file.end comes once the temporary file is removed.
    EXPECT_TRUE(runUntil([&] { return lastReply().type == "file.end"; }));
    auto end = lastReply();
    EXPECT_EQ(end.type, "file.end");
    EXPECT_NE(end.payload.at("error").as_string().find("offset 5"), std::string::npos);
}

TEST_F(FileDispatchTest, ADrainingDaemonRefusesNewTransfersButNotTheRunningOnes) {
    auto put = ask("file.put", {{"path", "running"}});
    ASSERT_TRUE(put.ok);
    m_dispatch->setDraining(true);
    EXPECT_EQ(ask("file.put", {{"path", "new"}}).errorCode, ErrorCode::Unavailable);
    EXPECT_EQ(ask("file.get", {{"path", "running"}}).errorCode, ErrorCode::Unavailable);
    auto cancel = ask("file.cancel", {{"channel", put.result.at("channel")}});
    EXPECT_TRUE(cancel.ok) << cancel.errorMessage;
}
