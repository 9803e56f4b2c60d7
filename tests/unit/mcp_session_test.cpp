// The MCP core without a transport: JSON-RPC framing, the handshake, tool
// calls against a fake backend, cancellation, and bad input answered.
#include "mcp_session.hpp"
#include "errors.hpp"
#include "mcp_tools.hpp"

#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <vector>

namespace json = boost::json;
using namespace hpc;
using namespace hpc::mcp;
using namespace std::chrono_literals;

namespace {

/// Answers exec with what it was asked, and blocks "sleep" commands until
/// released or cancelled.
class FakeBackend : public Backend {
public:
    json::array listDaemons() override {
        return {json::object{{"daemon_id", "mila"},
                             {"connected", true},
                             {"hostname", "login-1"},
                             {"skill", {{"name", "mila-hpc"}, {"text", "# Mila\nUse sbatch."}}}}};
    }
    json::object request(const std::string& daemonId, const std::string& type, json::object payload,
                         const CallContext& ctx) override {
        if (daemonId != "mila") throw Error(ErrorCode::Unavailable, "daemon " + daemonId + " is not connected");
        if (type == "job.status" && payload.at("job_id") == "missing")
            throw Error(ErrorCode::NotFound, "no job missing");
        if (type == "exec" && payload.at("command").as_string() == "sleep") {
            std::unique_lock lock(m_lock);
            ++m_blocked;
            m_changed.notify_all();
            // A cancellation sets a flag and wakes no one: look again now and then.
            while (!m_release && !ctx.isCancelled()) m_changed.wait_for(lock, 5ms);
            --m_blocked;
            m_changed.notify_all();
            if (ctx.isCancelled()) throw Error(ErrorCode::Unavailable, "cancelled");
        }
        lastType = type;
        lastPayload = payload;
        return {{"exit_code", 0}, {"stdout", "out\n"}, {"stderr", ""}, {"duration_s", 0.5}};
    }
    json::object runCommand(const std::string& daemonId, const ExecSpec& spec, std::size_t maxOutputBytes,
                            const CallContext& ctx) override {
        lastMaxOutput = maxOutputBytes;
        return request(daemonId, "exec", spec.toPayload(), ctx);
    }
    std::optional<json::object> waitJob(const std::string&, const std::string& jobId, double,
                                        const CallContext& ctx) override {
        if (ctx.progress) ctx.progress(1, 2, "waiting");
        return json::object{{"job_id", jobId}, {"state", "COMPLETED"}, {"exit_code", 0}};
    }
    std::pair<std::string, json::object> shellOpen(const std::string&, unsigned, unsigned,
                                                   const std::optional<std::string>&) override {
        return {"sh-1", {{"pid", 42}}};
    }
    ShellOutput shellExchange(const std::string& session, const std::string& input, const ShellWait& wait,
                              const CallContext&) override {
        if (session != "sh-1") throw Error(ErrorCode::NotFound, "no shell " + session);
        ShellOutput out;
        out.data = "\x1b[1;32m$\x1b[0m " + input + "\r\n\xff";
        out.matched = wait.pattern.has_value();
        return out;
    }
    json::object writeFile(const std::string&, const std::string& path, std::string_view content,
                           std::optional<std::uint32_t>, const CallContext&) override {
        written = std::string(content);
        return {{"path", path}, {"size", content.size()}, {"sha256", "0"}};
    }
    void shellResize(const std::string&, unsigned, unsigned) override {}
    void shellClose(const std::string&) override {}
    void waitBlocked(int n) {
        std::unique_lock lock(m_lock);
        m_changed.wait(lock, [&] { return m_blocked == n; });
    }
    void release() {
        std::lock_guard lock(m_lock);
        m_release = true;
        m_changed.notify_all();
    }

    std::string lastType;
    json::object lastPayload;
    std::string written;
    std::size_t lastMaxOutput = 0;

private:
    std::mutex m_lock;
    std::condition_variable m_changed;
    int m_blocked = 0;
    bool m_release = false;
};

class McpSessionTest : public ::testing::Test {
protected:
    McpSessionTest()
        : m_session(
              m_backend, [this](const json::value& v) { onSend(v); }, options()) {}
    static SessionOptions options() {
        SessionOptions o;
        o.serverVersion = "test";
        o.maxMessageBytes = 4096;
        o.maxConcurrentCalls = 2;
        return o;
    }
    void onSend(const json::value& v) {
        std::lock_guard lock(m_lock);
        m_sent.push_back(v.as_object());
        m_changed.notify_all();
    }
    /// The next message sent, in order.
    json::object next() {
        std::unique_lock lock(m_lock);
        EXPECT_TRUE(m_changed.wait_for(lock, 10s, [&] { return m_read < m_sent.size(); })) << "nothing sent";
        if (m_read >= m_sent.size()) return {};
        return m_sent[m_read++];
    }
    std::size_t sent() {
        std::lock_guard lock(m_lock);
        return m_sent.size();
    }
    json::object call(int id, const std::string& tool, json::object args) {
        m_session.receive(json::serialize(json::object{
            {"jsonrpc", "2.0"},
            {"id", id},
            {"method", "tools/call"},
            {"params", {{"name", tool}, {"arguments", std::move(args)}, {"_meta", {{"progressToken", "p"}}}}}}));
        return next();
    }
    static int errorCode(const json::object& m) { return static_cast<int>(m.at("error").at("code").as_int64()); }

    FakeBackend m_backend;
    std::mutex m_lock;
    std::condition_variable m_changed;
    std::vector<json::object> m_sent;
    std::size_t m_read = 0;
    Session m_session;
};

}  // namespace

TEST_F(McpSessionTest, InitializeAgreesOnARevisionAndListsCapabilities) {
    m_session.receive(R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}})");
    auto r = next();
    EXPECT_EQ(r.at("id").as_int64(), 1);
    EXPECT_EQ(r.at("result").at("protocolVersion").as_string(), "2025-06-18");
    EXPECT_TRUE(r.at("result").at("capabilities").as_object().contains("tools"));
    // A revision not spoken here: the latest, for the client to judge.
    m_session.receive(R"({"jsonrpc":"2.0","id":"x","method":"initialize","params":{"protocolVersion":"1999-01-01"}})");
    EXPECT_EQ(next().at("result").at("protocolVersion").as_string(), "2025-11-25");
    m_session.receive(R"({"jsonrpc":"2.0","method":"notifications/initialized"})");
    EXPECT_TRUE(m_session.initialized());
    m_session.receive(R"({"jsonrpc":"2.0","id":2,"method":"ping"})");
    EXPECT_TRUE(next().at("result").as_object().empty()) << "a notification is not answered; the ping is";
}

TEST_F(McpSessionTest, BadInputGetsAJsonRpcErrorAndChangesNothing) {
    m_session.receive("{not json");
    auto r = next();
    EXPECT_EQ(errorCode(r), kParseError);
    EXPECT_TRUE(r.at("id").is_null());
    m_session.receive(R"([{"jsonrpc":"2.0","id":1,"method":"ping"}])");
    EXPECT_EQ(errorCode(next()), kInvalidRequest) << "batches";
    m_session.receive(R"({"jsonrpc":"1.0","id":3,"method":"ping"})");
    EXPECT_EQ(errorCode(next()), kInvalidRequest);
    m_session.receive(R"({"jsonrpc":"2.0","id":{"a":1},"method":"ping"})");
    EXPECT_EQ(errorCode(next()), kInvalidRequest);
    m_session.receive(R"({"jsonrpc":"2.0","id":4,"method":"nope"})");
    EXPECT_EQ(errorCode(next()), kMethodNotFound);
    m_session.receive(R"({"jsonrpc":"2.0","id":5,"method":"tools/call","params":[1]})");
    EXPECT_EQ(errorCode(next()), kInvalidParams);
    m_session.receive(R"({"jsonrpc":"2.0","id":6,"method":"logging/setLevel","params":{"level":"loud"}})");
    EXPECT_EQ(errorCode(next()), kInvalidParams);
    m_session.receive(std::string(5000, ' '));
    EXPECT_EQ(errorCode(next()), kInvalidRequest) << "over the size limit";
    EXPECT_EQ(errorCode(call(7, "run_command", {{"daemon", "mila"}, {"command", 5}})), kInvalidParams);
    EXPECT_EQ(errorCode(call(8, "run_command", {{"daemon", "mila"}, {"command", "x"}, {"timeout", 1}})), kInvalidParams)
        << "an unknown argument is refused, not ignored";
    EXPECT_EQ(errorCode(call(9, "run_command", {{"daemon", "mila"}, {"command", "x"}, {"timeout_s", -1}})),
              kInvalidParams);
    EXPECT_EQ(errorCode(call(10, "no_tool", {})), kInvalidParams);
    EXPECT_TRUE(m_backend.lastType.empty()) << "nothing reached the daemon";
    m_session.receive(R"({"jsonrpc":"2.0","method":"notifications/cancelled","params":"junk"})");
    m_session.receive(R"({"jsonrpc":"2.0","id":11,"method":"ping"})");
    EXPECT_EQ(next().at("id").as_int64(), 11) << "a bad notification is dropped without an answer";
}

TEST_F(McpSessionTest, ToolsBecomeDaemonRequestsAndFailuresAreResultsNamingTheCause) {
    auto r = call(1, "run_command", {{"daemon", "mila"}, {"command", "make"}, {"cwd", "src"}, {"timeout_s", 60}});
    auto& result = r.at("result").as_object();
    EXPECT_FALSE(result.at("isError").as_bool());
    EXPECT_EQ(result.at("structuredContent").at("stdout").as_string(), "out\n");
    EXPECT_EQ(m_backend.lastType, "exec");
    EXPECT_EQ(m_backend.lastPayload.at("command").as_string(), "make");
    EXPECT_EQ(m_backend.lastPayload.at("cwd").as_string(), "src");
    EXPECT_EQ(m_backend.lastMaxOutput, 1u << 20) << "each stream is kept up to 1 MiB";
    auto offline = call(2, "run_command", {{"daemon", "elsewhere"}, {"command", "true"}});
    EXPECT_TRUE(offline.at("result").at("isError").as_bool());
    std::string text(offline.at("result").at("content").at(0).at("text").as_string());
    EXPECT_NE(text.find("UNAVAILABLE"), std::string::npos) << text;
    // wait_job's progress reaches the client with the call's token.
    auto progress = call(3, "wait_job", {{"daemon", "mila"}, {"job_id", "7"}});
    EXPECT_EQ(progress.at("method").as_string(), "notifications/progress");
    EXPECT_EQ(progress.at("params").at("progressToken").as_string(), "p");
    auto waited = next();
    EXPECT_TRUE(waited.at("result").at("structuredContent").at("ended").as_bool());
}

TEST_F(McpSessionTest, CallsRunSideBySideUpToTheLimitAndACancelledOneIsNotAnswered) {
    auto sleep = [&](int id) {
        m_session.receive(json::serialize(json::object{
            {"jsonrpc", "2.0"},
            {"id", id},
            {"method", "tools/call"},
            {"params", {{"name", "run_command"}, {"arguments", {{"daemon", "mila"}, {"command", "sleep"}}}}}}));
    };
    sleep(1);
    sleep(2);
    m_backend.waitBlocked(2);
    EXPECT_EQ(m_session.running(), 2u);
    sleep(3);
    auto refused = next();
    EXPECT_EQ(refused.at("id").as_int64(), 3);
    EXPECT_EQ(errorCode(refused), kInternalError) << "over the concurrent-call limit";
    m_session.receive(R"({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}})");
    m_backend.waitBlocked(1);
    m_backend.release();
    auto answered = next();
    EXPECT_EQ(answered.at("id").as_int64(), 2);
    EXPECT_TRUE(m_session.shutdown(10s));
    EXPECT_EQ(sent(), 2u) << "call 1 was cancelled: no answer";
}

TEST_F(McpSessionTest, ShellOutputComesAsPlainValidText) {
    auto opened = call(1, "shell_open", {{"daemon", "mila"}});
    EXPECT_EQ(opened.at("result").at("structuredContent").at("session").as_string(), "sh-1");
    auto sent = call(2, "shell_send", {{"session", "sh-1"}, {"input", "ls"}, {"wait_for", "\\$ $"}});
    auto& out = sent.at("result").at("structuredContent").as_object();
    EXPECT_EQ(out.at("output").as_string(), "$ ls\n\xEF\xBF\xBD") << "escapes and CR gone, a stray byte replaced";
    EXPECT_TRUE(out.at("matched").as_bool());
    EXPECT_EQ(errorCode(call(3, "shell_send", {{"session", "sh-1"}, {"input", "x"}, {"wait_for", "("}})),
              kInvalidParams)
        << "a pattern that is not a regular expression";
    EXPECT_TRUE(call(4, "shell_read", {{"session", "sh-9"}}).at("result").at("isError").as_bool());
    EXPECT_EQ(terminalText("a\x1b]0;title\ab\x1b(Bc\x01\td"), "abc\td");
}

TEST_F(McpSessionTest, WriteFileTakesTextOrBase64) {
    auto r = call(1, "write_file", {{"daemon", "mila"}, {"path", "a"}, {"content", "/w=="}, {"encoding", "base64"}});
    EXPECT_FALSE(r.at("result").at("isError").as_bool());
    EXPECT_EQ(m_backend.written, "\xff");
    EXPECT_EQ(errorCode(call(2, "write_file",
                             {{"daemon", "mila"}, {"path", "a"}, {"content", "%%"}, {"encoding", "base64"}})),
              kInvalidParams);
}

TEST_F(McpSessionTest, SkillsAreResourcesAndPrompts) {
    m_session.receive(R"({"jsonrpc":"2.0","id":1,"method":"resources/list"})");
    auto list = next();
    EXPECT_EQ(list.at("result").at("resources").at(0).at("uri").as_string(), "hpc://daemons/mila/skill");
    m_session.receive(
        R"({"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"hpc://daemons/mila/skill"}})");
    EXPECT_EQ(next().at("result").at("contents").at(0).at("text").as_string(), "# Mila\nUse sbatch.");
    m_session.receive(R"({"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"hpc://daemons/x/skill"}})");
    EXPECT_EQ(errorCode(next()), kResourceNotFound);
    m_session.receive(
        R"({"jsonrpc":"2.0","id":4,"method":"prompts/get","params":{"name":"use_cluster","arguments":{"daemon":"mila"}}})");
    std::string text(next().at("result").at("messages").at(0).at("content").at("text").as_string());
    EXPECT_NE(text.find("Use sbatch."), std::string::npos) << text;
}

TEST_F(McpSessionTest, ASubscribedJobsEndIsNotifiedOnceAndOnlyJobsCanBeSubscribed) {
    const std::string uri = "hpc://daemons/mila/jobs/7";
    m_session.receive(R"({"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":")" + uri + R"("}})");
    // The answer and the notification (the fake job has ended already), in either order.
    std::vector<json::object> got{next(), next()};
    auto answered = std::count_if(got.begin(), got.end(), [](const json::object& m) {
        return m.contains("id") && m.at("id") == 1 && m.at("result").as_object().empty();
    });
    auto updated = std::count_if(got.begin(), got.end(), [&](const json::object& m) {
        return m.contains("method") && m.at("method") == "notifications/resources/updated" &&
               m.at("params").at("uri") == json::value(uri);
    });
    EXPECT_EQ(answered, 1);
    EXPECT_EQ(updated, 1);
    m_session.receive(
        R"({"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"hpc://daemons/mila/skill"}})");
    EXPECT_EQ(errorCode(next()), kInvalidParams) << "a skill does not change";
    m_session.receive(
        R"({"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"hpc://daemons/mila/jobs/missing"}})");
    EXPECT_EQ(errorCode(next()), kResourceNotFound);
    m_session.receive(
        R"({"jsonrpc":"2.0","id":4,"method":"resources/subscribe","params":{"uri":"hpc://daemons/mila/jobs/a/../b"}})");
    EXPECT_EQ(errorCode(next()), kInvalidParams);
    m_session.receive(R"({"jsonrpc":"2.0","id":5,"method":"resources/templates/list"})");
    auto templates = next().at("result").at("resourceTemplates").as_array();
    EXPECT_TRUE(std::any_of(templates.begin(), templates.end(), [](const json::value& t) {
        return t.at("uriTemplate") == "hpc://daemons/{daemon}/jobs/{job_id}";
    }));
    EXPECT_EQ(m_session.running(), 0u) << "the watch ended with its notification";
}
