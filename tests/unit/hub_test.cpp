#include "hub.hpp"
#include "api.hpp"
#include "file_wire.hpp"
#include "harness.hpp"
#include "protocol.hpp"
#include "relay_db.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

using namespace hpc;
using namespace hpc::relay;
namespace json = boost::json;

namespace {

/// A connection that records what it was sent.
struct RecordingPeer : Peer {
    std::vector<std::string> sent;
    std::vector<std::string> binary;
    bool closed = false;
    void sendText(std::string text) override { sent.push_back(std::move(text)); }
    void sendBinary(std::string data) override { binary.push_back(std::move(data)); }
    void close(std::string_view) override { closed = true; }
    protocol::Envelope last() const {
        auto r = protocol::parse(sent.back(), protocol::kMaxResponseBytes);
        return std::get<protocol::Envelope>(r);
    }
};

class HubTest : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/hpc-hub-XXXXXX";
        ASSERT_TRUE(::mkdtemp(tmpl));
        m_dir = tmpl;
        m_db = std::make_unique<RelayDb>(m_dir + "/relay.db");
        m_hub = std::make_unique<Hub>(*m_db);
    }
    void TearDown() override { std::filesystem::remove_all(m_dir); }

    std::string m_dir;
    std::unique_ptr<RelayDb> m_db;
    std::unique_ptr<Hub> m_hub;
    Principal m_alice{1, 10, "access", {}, std::nullopt};
    Principal m_bob{2, 20, "access", {}, std::nullopt};
};

}  // namespace

TEST_F(HubTest, ForwardsARequestWithTheAgentsIdentityAndRoutesTheResponseBack) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    m_hub->onAgentText(m_alice, agent,
                       R"({"v":1,"type":"exec","id":"mine","daemon_id":"d1","payload":{"argv":["x"]}})");
    ASSERT_EQ(daemon->sent.size(), 1u);
    auto fwd = daemon->last();
    EXPECT_EQ(fwd.type, "exec");
    EXPECT_NE(fwd.id, "mine") << "the relay uses its own ids towards the daemon";
    EXPECT_EQ(fwd.agent.at("id").as_string(), "cred-10");
    EXPECT_EQ(fwd.agent.at("user").as_string(), "1");
    m_hub->onDaemonText(1, "d1", daemon, protocol::makeOk(fwd.id, {{"exit_code", 0}}));
    ASSERT_EQ(agent->sent.size(), 1u);
    auto res = agent->last();
    EXPECT_TRUE(res.ok);
    EXPECT_EQ(res.replyTo, "mine");
    EXPECT_EQ(m_hub->pendingCount(), 0u);
}

TEST_F(HubTest, AnswersUnavailableAtOnceForADaemonThatIsNotConnected) {
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->onAgentText(m_alice, agent, R"({"v":1,"type":"exec","id":"q","daemon_id":"nobody"})");
    ASSERT_EQ(agent->sent.size(), 1u);
    EXPECT_EQ(agent->last().errorCode, ErrorCode::Unavailable);
    EXPECT_EQ(agent->last().replyTo, "q");
}

TEST_F(HubTest, NeverRoutesToAnotherUsersDaemon) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "shared-name", daemon);
    m_hub->onAgentText(m_bob, agent, R"({"v":1,"type":"exec","id":"q","daemon_id":"shared-name"})");
    EXPECT_TRUE(daemon->sent.empty());
    EXPECT_EQ(agent->last().errorCode, ErrorCode::Unavailable);
}

TEST_F(HubTest, ASecondConnectionOfTheSameDaemonReplacesTheFirst) {
    auto first = std::make_shared<RecordingPeer>();
    auto second = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", first);
    m_hub->onAgentText(m_alice, agent, R"({"v":1,"type":"exec","id":"old","daemon_id":"d1"})");
    m_hub->attachDaemon(1, "d1", second);
    EXPECT_TRUE(first->closed);
    ASSERT_EQ(agent->sent.size(), 1u) << "the request in flight on the old link is failed, not left hanging";
    EXPECT_EQ(agent->last().errorCode, ErrorCode::Unavailable);
    m_hub->detachDaemon(1, "d1", first.get());  // the old link's late close must not unregister the new one
    EXPECT_TRUE(m_hub->connectedSince(1, "d1"));
    m_hub->onAgentText(m_alice, agent, R"({"v":1,"type":"exec","id":"new","daemon_id":"d1"})");
    EXPECT_EQ(second->sent.size(), 1u);
}

TEST_F(HubTest, FailsRequestsInFlightWhenTheDaemonDisconnects) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    m_hub->onAgentText(m_alice, agent, R"({"v":1,"type":"exec","id":"q","daemon_id":"d1"})");
    m_hub->detachDaemon(1, "d1", daemon.get());
    EXPECT_EQ(agent->last().errorCode, ErrorCode::Unavailable);
    EXPECT_FALSE(m_hub->connectedSince(1, "d1"));
    EXPECT_EQ(m_hub->pendingCount(), 0u);
}

TEST_F(HubTest, AnswersMalformedAgentFramesWithAProtocolError) {
    auto agent = std::make_shared<RecordingPeer>();
    for (const char* bad : {"nonsense", "[]", R"({"v":9,"type":"exec","id":"a"})", R"({"v":1,"type":"exec","id":"a"})",
                            R"({"v":1,"type":"exec","id":"a","daemon_id":"../x"})"}) {
        m_hub->onAgentText(m_alice, agent, bad);
        ASSERT_FALSE(agent->sent.empty()) << bad;
        auto e = agent->last();
        EXPECT_FALSE(e.ok) << bad;
        EXPECT_EQ(e.errorCode, ErrorCode::BadRequest) << bad;
    }
}

TEST_F(HubTest, AnswersANumberTooLargeForADoubleItselfAndFreesTheSlot) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    m_hub->onAgentText(
        m_alice, agent,
        R"({"v":1,"type":"exec","id":"big","daemon_id":"d1","payload":{"argv":["x"],"timeout_s":1e999}})");
    ASSERT_EQ(agent->sent.size(), 1u);
    EXPECT_EQ(agent->last().errorCode, ErrorCode::BadRequest);
    EXPECT_EQ(agent->last().replyTo, "big");
    EXPECT_TRUE(daemon->sent.empty()) << "nothing the daemon could not read is forwarded";
    EXPECT_EQ(m_hub->pendingCount(), 0u);
}

TEST_F(HubTest, AnswersTheAgentWhenTheDaemonRefusesAFrameWithoutItsId) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    m_hub->onAgentText(m_alice, agent, R"({"v":1,"type":"exec","id":"mine","daemon_id":"d1","payload":{}})");
    ASSERT_EQ(m_hub->pendingCount(), 1u);
    m_hub->onDaemonText(1, "d1", daemon, protocol::makeError({}, ErrorCode::BadRequest, "not valid JSON"));
    ASSERT_EQ(agent->sent.size(), 1u);
    EXPECT_EQ(agent->last().errorCode, ErrorCode::BadRequest);
    EXPECT_EQ(agent->last().replyTo, "mine");
    EXPECT_EQ(m_hub->pendingCount(), 0u);
}

TEST_F(HubTest, DoesNotGuessWhoseFrameTheDaemonRefusedWhenSeveralAreInFlight) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    m_hub->onAgentText(m_alice, agent, R"({"v":1,"type":"exec","id":"a","daemon_id":"d1","payload":{}})");
    m_hub->onAgentText(m_alice, agent, R"({"v":1,"type":"exec","id":"b","daemon_id":"d1","payload":{}})");
    m_hub->onDaemonText(1, "d1", daemon, protocol::makeError({}, ErrorCode::BadRequest, "not valid JSON"));
    EXPECT_TRUE(agent->sent.empty());
    EXPECT_EQ(m_hub->pendingCount(), 2u);
}

TEST_F(HubTest, ARequestThatGrowsPastTheLimitWhenAddressedIsAnsweredHere) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    std::string head = R"({"v":1,"type":"exec","id":"huge","daemon_id":"d1","payload":{"s":")";
    std::string tail = R"("}})";
    std::string text = head + std::string(protocol::kMaxEnvelopeBytes - head.size() - tail.size(), 'x') + tail;
    ASSERT_EQ(text.size(), protocol::kMaxEnvelopeBytes);
    m_hub->onAgentText(m_alice, agent, text);
    ASSERT_EQ(agent->sent.size(), 1u);
    EXPECT_EQ(agent->last().errorCode, ErrorCode::BadRequest);
    EXPECT_EQ(agent->last().replyTo, "huge");
    EXPECT_TRUE(daemon->sent.empty());
    EXPECT_EQ(m_hub->pendingCount(), 0u);
}

TEST_F(HubTest, AcknowledgesCallbacksAndFlagsRetriesAsDuplicates) {
    auto daemon = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    std::string msg = R"({"v":1,"type":"job.completed","id":"c1","payload":{"callback_id":"cb-7","job_id":"j"}})";
    m_hub->onDaemonText(1, "d1", daemon, msg);
    EXPECT_TRUE(daemon->last().ok);
    EXPECT_FALSE(daemon->last().result.at("duplicate").as_bool());
    m_hub->onDaemonText(1, "d1", daemon, msg);
    EXPECT_TRUE(daemon->last().result.at("duplicate").as_bool());
    CallbackQuery q;
    q.daemonId = "d1";
    EXPECT_EQ(m_db->callbacks(1, q).size(), 1u);
}

TEST_F(HubTest, ACallbackThatCannotBeStoredIsRefusedNotAcknowledged) {
    auto daemon = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    // A full disk: SQLite refuses to grow the file (as with ENOSPC).
    auto& raw = m_db->rawDb();
    raw.exec("PRAGMA max_page_count = " + std::to_string(raw.queryInt("PRAGMA page_count")));
    std::string big(std::size_t{64} * 1024, 'x');
    std::string msg =
        R"({"v":1,"type":"job.completed","id":"c1","payload":{"callback_id":"cb-8","job_id":"j","pad":")" + big +
        R"("}})";
    m_hub->onDaemonText(1, "d1", daemon, msg);
    ASSERT_FALSE(daemon->sent.empty());
    EXPECT_FALSE(daemon->last().ok);
    EXPECT_EQ(daemon->last().errorCode, ErrorCode::StorageFull) << daemon->last().errorMessage;
    // Space is back: the daemon's retry is stored and acknowledged.
    raw.exec("PRAGMA max_page_count = 1073741823");
    m_hub->onDaemonText(1, "d1", daemon, msg);
    EXPECT_TRUE(daemon->last().ok);
    EXPECT_FALSE(daemon->last().result.at("duplicate").as_bool());
}

TEST_F(HubTest, DeliversCallbacksToTheSubmitterUntilItAcknowledges) {
    auto daemon = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    auto submitter = std::make_shared<RecordingPeer>(), other = std::make_shared<RecordingPeer>();
    m_hub->attachAgent(Principal{1, 5, "access", {}, std::nullopt}, submitter);
    m_hub->attachAgent(Principal{1, 6, "access", {}, std::nullopt}, other);
    std::string msg =
        R"({"v":1,"type":"job.completed","id":"c1","payload":{"callback_id":"cb-1","job_id":"j1","agent_id":"cred-5","state":"COMPLETED"}})";
    m_hub->onDaemonText(1, "d1", daemon, msg);
    ASSERT_EQ(submitter->sent.size(), 1u);
    EXPECT_EQ(submitter->last().type, "job.completed");
    EXPECT_EQ(submitter->last().daemonId, "d1");
    EXPECT_EQ(submitter->last().payload.at("callback_id").as_string(), "cb-1");
    EXPECT_TRUE(other->sent.empty()) << "another agent got the callback";
    // A retry from the daemon is not delivered again.
    m_hub->onDaemonText(1, "d1", daemon, msg);
    EXPECT_EQ(submitter->sent.size(), 1u);
    // Reconnecting without acknowledging: sent again.
    m_hub->detachAgent(submitter.get());
    auto again = std::make_shared<RecordingPeer>();
    m_hub->attachAgent(Principal{1, 5, "access", {}, std::nullopt}, again);
    ASSERT_EQ(again->sent.size(), 1u);
    // Only the addressee may acknowledge it.
    m_hub->onAgentText(Principal{1, 6, "access", {}, std::nullopt}, other,
                       R"({"v":1,"type":"callback.ack","id":"k","payload":{"callback_id":"cb-1"}})");
    EXPECT_EQ(other->last().errorCode, ErrorCode::NotFound);
    m_hub->onAgentText(Principal{1, 5, "access", {}, std::nullopt}, again,
                       R"({"v":1,"type":"callback.ack","id":"k","payload":{"callback_id":"cb-1"}})");
    EXPECT_TRUE(again->last().ok);
    auto third = std::make_shared<RecordingPeer>();
    m_hub->attachAgent(Principal{1, 5, "access", {}, std::nullopt}, third);
    EXPECT_TRUE(third->sent.empty());
    // Still listed (acknowledged) for wait.
    m_hub->onAgentText(Principal{1, 5, "access", {}, std::nullopt}, third,
                       R"({"v":1,"type":"callback.list","id":"l","daemon_id":"d1","payload":{"job_id":"j1"}})");
    auto list = third->last().result.at("callbacks").as_array();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_TRUE(list[0].at("acked").as_bool());
    m_hub->onAgentText(Principal{1, 5, "access", {}, std::nullopt}, third,
                       R"({"v":1,"type":"callback.ack","id":"k","payload":{}})");
    EXPECT_EQ(third->last().errorCode, ErrorCode::BadRequest);
}

TEST_F(HubTest, TellsADaemonWhichTypesThePlatformDoesNotHandle) {
    auto daemon = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    m_hub->onDaemonText(1, "d1", daemon, R"({"v":1,"type":"wat","id":"z"})");
    EXPECT_EQ(daemon->last().errorCode, ErrorCode::UnknownType);
    m_hub->onDaemonText(1, "d1", daemon, R"({"v":1,"type":"ping","id":"p"})");
    EXPECT_EQ(daemon->last().type, "pong");
}

namespace {

/// Opens a PTY through the hub: returns the agent's channel number.
std::uint32_t openPty(Hub& hub, const Principal& who, const std::shared_ptr<RecordingPeer>& agent,
                      const std::shared_ptr<RecordingPeer>& daemon, std::uint32_t daemonChannel) {
    hub.onAgentText(who, agent, R"({"v":1,"type":"pty.open","id":"o","daemon_id":"d1","payload":{}})");
    auto fwd = daemon->last();
    hub.onDaemonText(1, "d1", daemon, protocol::makeOk(fwd.id, {{"channel", daemonChannel}, {"pid", 5}}));
    return static_cast<std::uint32_t>(agent->last().result.at("channel").as_int64());
}

}  // namespace

TEST_F(HubTest, RoutesPtyBytesBothWaysUnderItsOwnChannelNumbers) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    auto mine = openPty(*m_hub, m_alice, agent, daemon, 77);
    m_hub->onAgentBinary(agent, protocol::encodeChannelFrame(mine, "ls\r"));
    ASSERT_EQ(daemon->binary.size(), 1u);
    EXPECT_EQ(daemon->binary[0], protocol::encodeChannelFrame(77, "ls\r"));
    m_hub->onDaemonBinary(1, "d1", protocol::encodeChannelFrame(77, "out"));
    ASSERT_EQ(agent->binary.size(), 1u);
    EXPECT_EQ(agent->binary[0], protocol::encodeChannelFrame(mine, "out"));
    // pty.ack and friends are rewritten to the daemon's number too.
    m_hub->onAgentText(m_alice, agent,
                       R"({"v":1,"type":"pty.ack","id":"k","daemon_id":"d1","payload":{"channel":)" +
                           std::to_string(mine) + R"(,"bytes":100}})");
    EXPECT_EQ(daemon->last().payload.at("channel").as_int64(), 77);
    // pty.exit closes the route.
    m_hub->onDaemonText(1, "d1", daemon, protocol::makeMessage("pty.exit", "x", {{"channel", 77}, {"exit_code", 0}}));
    EXPECT_EQ(agent->last().type, "pty.exit");
    EXPECT_EQ(agent->last().payload.at("channel").as_int64(), mine);
    EXPECT_EQ(m_hub->channelCount(), 0u);
}

TEST_F(HubTest, AnAgentCannotWriteToAnotherAgentsChannel) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto owner = std::make_shared<RecordingPeer>();
    auto other = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    auto mine = openPty(*m_hub, m_alice, owner, daemon, 3);
    m_hub->onAgentBinary(other, protocol::encodeChannelFrame(mine, "rm -rf ~\r"));
    EXPECT_TRUE(daemon->binary.empty());
    EXPECT_EQ(other->last().errorCode, ErrorCode::NotFound);
    m_hub->onAgentText(
        m_alice, other,
        R"({"v":1,"type":"pty.close","id":"c","daemon_id":"d1","payload":{"channel":)" + std::to_string(mine) + "}}");
    EXPECT_EQ(other->last().errorCode, ErrorCode::NotFound);
}

TEST_F(HubTest, AnAgentsDisconnectDetachesItsShells) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    openPty(*m_hub, m_alice, agent, daemon, 9);
    m_hub->detachAgent(agent.get());
    EXPECT_EQ(daemon->last().type, "pty.detach");
    EXPECT_EQ(daemon->last().payload.at("channel").as_int64(), 9);
    EXPECT_EQ(m_hub->channelCount(), 0u);
}

TEST_F(HubTest, ADaemonsDisconnectEndsItsChannelsForTheAgent) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    auto mine = openPty(*m_hub, m_alice, agent, daemon, 9);
    m_hub->detachDaemon(1, "d1", daemon.get());
    EXPECT_EQ(agent->last().type, "pty.exit");
    EXPECT_EQ(agent->last().payload.at("channel").as_int64(), mine);
    EXPECT_EQ(m_hub->channelCount(), 0u);
}

TEST_F(HubTest, RoutesAJobsOutputStreamAsAChannelAndEndsItWithJobLogsEnd) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    m_hub->onAgentText(m_alice, agent,
                       R"({"v":1,"type":"job.logs","id":"l","daemon_id":"d1","payload":{"job_id":"j1"}})");
    m_hub->onDaemonText(1, "d1", daemon, protocol::makeOk(daemon->last().id, {{"channel", 0x80000001u}}));
    auto mine = static_cast<std::uint32_t>(agent->last().result.at("channel").as_int64());
    m_hub->onDaemonBinary(1, "d1", protocol::encodeChannelFrame(0x80000001u, std::string("\0\xff", 2)));
    ASSERT_EQ(agent->binary.size(), 1u);
    EXPECT_EQ(agent->binary[0], protocol::encodeChannelFrame(mine, std::string("\0\xff", 2)));
    // Credit and job.logs.close reach the daemon under its own number.
    m_hub->onAgentText(m_alice, agent,
                       R"({"v":1,"type":"pty.ack","id":"k","daemon_id":"d1","payload":{"channel":)" +
                           std::to_string(mine) + R"(,"bytes":2}})");
    EXPECT_EQ(daemon->last().payload.at("channel").as_int64(), 0x80000001u);
    m_hub->onAgentText(m_alice, agent,
                       R"({"v":1,"type":"job.logs.close","id":"c","daemon_id":"d1","payload":{"channel":)" +
                           std::to_string(mine) + "}}");
    EXPECT_EQ(daemon->last().type, "job.logs.close");
    EXPECT_EQ(daemon->last().payload.at("channel").as_int64(), 0x80000001u);
    // Another agent cannot close it.
    auto other = std::make_shared<RecordingPeer>();
    m_hub->onAgentText(m_alice, other,
                       R"({"v":1,"type":"job.logs.close","id":"c","daemon_id":"d1","payload":{"channel":)" +
                           std::to_string(mine) + "}}");
    EXPECT_EQ(other->last().errorCode, ErrorCode::NotFound);
    // job.logs.end closes the route.
    m_hub->onDaemonText(1, "d1", daemon,
                        protocol::makeMessage("job.logs.end", "e", {{"channel", 0x80000001u}, {"end_byte", 2}}));
    EXPECT_EQ(agent->last().type, "job.logs.end");
    EXPECT_EQ(agent->last().payload.at("channel").as_int64(), mine);
    EXPECT_EQ(m_hub->channelCount(), 0u);
    // A daemon that goes away ends its streams with job.logs.end and an error.
    m_hub->onAgentText(m_alice, agent,
                       R"({"v":1,"type":"job.logs","id":"l2","daemon_id":"d1","payload":{"job_id":"j1"}})");
    m_hub->onDaemonText(1, "d1", daemon, protocol::makeOk(daemon->last().id, {{"channel", 0x80000002u}}));
    m_hub->detachDaemon(1, "d1", daemon.get());
    EXPECT_EQ(agent->last().type, "job.logs.end");
    EXPECT_FALSE(agent->last().payload.at("error").as_string().empty());
    EXPECT_EQ(m_hub->channelCount(), 0u);
}

TEST_F(HubTest, RoutesAStreamedExecAsAChannelUntilItsEnd) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    constexpr std::uint32_t kTheirs = 0x20000001u;
    auto open = [&] {
        m_hub->onAgentText(
            m_alice, agent,
            R"({"v":1,"type":"exec","id":"s","daemon_id":"d1","payload":{"argv":["cat"],"stream":true}})");
        m_hub->onDaemonText(1, "d1", daemon, protocol::makeOk(daemon->last().id, {{"channel", kTheirs}, {"pid", 7}}));
        return static_cast<std::uint32_t>(agent->last().result.at("channel").as_int64());
    };
    std::uint32_t mine = open();
    EXPECT_EQ(m_hub->channelCount(), 1u);
    // Stdin and output frames go through untouched but for the channel.
    m_hub->onAgentBinary(agent, protocol::makeExecFrame(mine, protocol::ExecStream::Stdin, 3));
    ASSERT_EQ(daemon->binary.size(), 1u);
    EXPECT_EQ(daemon->binary[0], protocol::makeExecFrame(kTheirs, protocol::ExecStream::Stdin, 3));
    m_hub->onDaemonBinary(1, "d1", protocol::makeExecFrame(kTheirs, protocol::ExecStream::Stderr, 2));
    ASSERT_EQ(agent->binary.size(), 1u);
    EXPECT_EQ(agent->binary[0], protocol::makeExecFrame(mine, protocol::ExecStream::Stderr, 2));
    // exec.eof goes to the daemon's channel; exec.ack comes back on the agent's and keeps it.
    m_hub->onAgentText(
        m_alice, agent,
        R"({"v":1,"type":"exec.eof","id":"e","daemon_id":"d1","payload":{"channel":)" + std::to_string(mine) + "}}");
    EXPECT_EQ(daemon->last().type, "exec.eof");
    EXPECT_EQ(daemon->last().payload.at("channel").as_int64(), kTheirs);
    m_hub->onDaemonText(1, "d1", daemon, protocol::makeMessage("exec.ack", "a", {{"channel", kTheirs}, {"bytes", 3}}));
    EXPECT_EQ(agent->last().type, "exec.ack");
    EXPECT_EQ(agent->last().payload.at("channel").as_int64(), mine);
    // exec.end ends it; a daemon that goes away ends the next with UNAVAILABLE.
    m_hub->onDaemonText(1, "d1", daemon,
                        protocol::makeMessage("exec.end", "x", {{"channel", kTheirs}, {"exit_code", 0}}));
    EXPECT_EQ(agent->last().type, "exec.end");
    EXPECT_EQ(agent->last().payload.at("channel").as_int64(), mine);
    EXPECT_EQ(m_hub->channelCount(), 0u);
    mine = open();
    m_hub->detachDaemon(1, "d1", daemon.get());
    EXPECT_EQ(agent->last().type, "exec.end");
    EXPECT_EQ(agent->last().payload.at("code").as_string(), "UNAVAILABLE");
    EXPECT_EQ(agent->last().payload.at("channel").as_int64(), mine);
}

TEST_F(HubTest, KeepsADaemonsLatestWarningShowsItAndForgetsItWhenTheDaemonLeaves) {
    // A user with a registered daemon, as GET /hpc/daemons sees them.
    auto token = m_db->startSignin("a@example.org", Secret("123456"));
    ASSERT_TRUE(token);
    std::int64_t user = 0;
    ASSERT_EQ(m_db->verifyCode(*token, Secret("123456"), user), VerifyOutcome::Ok);
    // Not a structured binding: the lambda below captures it (clang 14 cannot).
    Secret key = m_db->issueCredential(user, "access", 3600.0).second;
    m_db->putDaemon(user, "d1", {{"hostname", "login-1"}});
    Api api(*m_db, *m_hub, [](const std::string&, const Secret&) {});
    auto listed = [&] {
        auto r = api.handle({"GET", "/hpc/daemons", "Bearer " + key.reveal(), "", "test"});
        EXPECT_EQ(r.status, 200) << r.body;
        return json::parse(r.body).at("payload").at("daemons").at(0).as_object();
    };
    auto daemon = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(user, "d1", daemon);
    EXPECT_EQ(listed().at("warning").as_string(), "");

    auto warn = [&](const std::string& id, json::object payload) {
        m_hub->onDaemonText(user, "d1", daemon,
                            json::serialize(json::object{
                                {"v", 1}, {"type", "daemon.warning"}, {"id", id}, {"payload", std::move(payload)}}));
        return daemon->last();
    };
    auto ok = warn("w1", {{"warning", "state.db reached state_max_bytes (256KiB)"}});
    EXPECT_TRUE(ok.ok);
    EXPECT_EQ(ok.replyTo, "w1");
    EXPECT_EQ(m_hub->warning(user, "d1"), "state.db reached state_max_bytes (256KiB)");
    EXPECT_EQ(listed().at("warning").as_string(), "state.db reached state_max_bytes (256KiB)");
    EXPECT_EQ(m_hub->warning(user + 1, "d1"), "") << "another user's daemon of the same name";

    // Bad payloads: BAD_REQUEST, and the warning kept is the last good one.
    for (const auto& bad : std::vector<json::object>{{},
                                                     {{"warning", nullptr}},
                                                     {{"warning", 42}},
                                                     {{"warning", json::array{"x"}}},
                                                     {{"warning", std::string(Hub::kMaxWarningBytes + 1, 'w')}}}) {
        auto refused = warn("bad", bad);
        EXPECT_FALSE(refused.ok) << json::serialize(bad);
        EXPECT_EQ(refused.errorCode, ErrorCode::BadRequest) << json::serialize(bad);
        EXPECT_EQ(refused.replyTo, "bad");
    }
    EXPECT_EQ(m_hub->warning(user, "d1"), "state.db reached state_max_bytes (256KiB)");
    EXPECT_TRUE(warn("w2", {{"warning", std::string(Hub::kMaxWarningBytes, 'w')}}).ok) << "up to the limit";
    EXPECT_EQ(m_hub->warning(user, "d1").size(), Hub::kMaxWarningBytes);

    EXPECT_TRUE(warn("w3", {{"warning", ""}}).ok);
    EXPECT_EQ(listed().at("warning").as_string(), "") << "cleared";

    warn("w4", {{"warning", "disk full"}});
    m_hub->detachDaemon(user, "d1", daemon.get());
    EXPECT_EQ(listed().at("warning").as_string(), "") << "forgotten with the connection";
    EXPECT_FALSE(listed().at("connected").as_bool());
    auto again = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(user, "d1", again);
    EXPECT_EQ(m_hub->warning(user, "d1"), "") << "a new connection starts without one";
}

TEST_F(HubTest, HealthShowsTheConnectionsAndWhetherTheRelayAcceptsNewOnes) {
    Api api(*m_db, *m_hub, [](const std::string&, const Secret&) {});
    auto health = [&api] {
        auto r = api.handle({"GET", "/health", "", "", "test"});
        EXPECT_EQ(r.status, 200) << r.body;
        return json::parse(r.body).at("payload").as_object();
    };
    EXPECT_TRUE(health().at("accepting").as_bool());
    EXPECT_EQ(health().at("accept_problem").as_string(), "");
    EXPECT_EQ(health().at("agents_connected").as_int64(), 0);
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    m_hub->attachAgent(m_alice, agent);
    auto bobsAgent = std::make_shared<RecordingPeer>();
    m_hub->attachAgent(m_bob, bobsAgent);
    EXPECT_EQ(health().at("agents_connected").as_int64(), 2);
    EXPECT_EQ(health().at("daemons_connected").as_int64(), 1);
    m_hub->detachAgent(agent.get());
    m_hub->detachDaemon(1, "d1", daemon.get());
    EXPECT_EQ(health().at("agents_connected").as_int64(), 1);
    EXPECT_EQ(health().at("daemons_connected").as_int64(), 0);

    api.setAcceptProblem("Too many open files");
    EXPECT_FALSE(health().at("accepting").as_bool());
    EXPECT_EQ(health().at("accept_problem").as_string(), "Too many open files");
    api.setAcceptProblem({});
    EXPECT_TRUE(health().at("accepting").as_bool());
}

TEST_F(HubTest, RoutesAFileTransferAsAChannelUntilItsCommitAnswerOrItsEnd) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    auto open = [&](const char* id) {
        m_hub->onAgentText(
            m_alice, agent,
            std::string(R"({"v":1,"type":"file.put","id":")") + id + R"(","daemon_id":"d1","payload":{"path":"x"}})");
        m_hub->onDaemonText(1, "d1", daemon, protocol::makeOk(daemon->last().id, {{"channel", 0x40000001u}}));
        return static_cast<std::uint32_t>(agent->last().result.at("channel").as_int64());
    };
    auto onChannel = [&](const char* type, std::uint32_t channel, const char* extra = "") {
        m_hub->onAgentText(m_alice, agent,
                           std::string(R"({"v":1,"type":")") + type + R"(","id":"q","daemon_id":"d1","payload":{)" +
                               extra + R"("channel":)" + std::to_string(channel) + "}}");
    };
    std::uint32_t mine = open("p");
    // The bytes, untouched but for the channel: no JSON on the way.
    std::string frame = files::encodeDataFrame(mine, 0, std::string("\0\x01\xff", 3));
    m_hub->onAgentBinary(agent, frame);
    ASSERT_EQ(daemon->binary.size(), 1u);
    EXPECT_EQ(daemon->binary[0], files::encodeDataFrame(0x40000001u, 0, std::string("\0\x01\xff", 3)));
    // Credit from the daemon keeps the channel; the commit's answer ends it.
    m_hub->onDaemonText(1, "d1", daemon,
                        protocol::makeMessage("file.ack", "a", {{"channel", 0x40000001u}, {"bytes", 3}}));
    EXPECT_EQ(agent->last().type, "file.ack");
    EXPECT_EQ(agent->last().payload.at("channel").as_int64(), mine);
    onChannel("file.commit", mine, R"("size":3,"sha256":"x",)");
    EXPECT_EQ(daemon->last().payload.at("channel").as_int64(), 0x40000001u);
    EXPECT_EQ(m_hub->channelCount(), 1u);
    m_hub->onDaemonText(1, "d1", daemon, protocol::makeOk(daemon->last().id, {{"size", 3}}));
    EXPECT_EQ(m_hub->channelCount(), 0u);
    onChannel("file.ack", mine, R"("bytes":1,)");
    EXPECT_EQ(agent->last().errorCode, ErrorCode::NotFound);
    // file.end ends one too; a daemon that goes away ends the rest with UNAVAILABLE.
    mine = open("p2");
    m_hub->onDaemonText(1, "d1", daemon,
                        protocol::makeMessage("file.end", "e", {{"channel", 0x40000001u}, {"error", "disk full"}}));
    EXPECT_EQ(agent->last().type, "file.end");
    EXPECT_EQ(m_hub->channelCount(), 0u);
    // Bytes the agent sent before it saw the end are dropped without a word.
    auto before = agent->sent.size();
    m_hub->onAgentBinary(agent, files::encodeDataFrame(mine, 0, "late"));
    EXPECT_EQ(agent->sent.size(), before);
    m_hub->onAgentBinary(agent, files::encodeDataFrame(mine + 1000, 0, "never open"));
    EXPECT_EQ(agent->last().errorCode, ErrorCode::NotFound);
    mine = open("p3");
    m_hub->detachDaemon(1, "d1", daemon.get());
    EXPECT_EQ(agent->last().type, "file.end");
    EXPECT_EQ(agent->last().payload.at("code").as_string(), "UNAVAILABLE");
    EXPECT_EQ(agent->last().payload.at("channel").as_int64(), mine);
}

TEST_F(HubTest, CountsConnectionsRoutedMessagesAndRequestLatencyByType) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    auto other = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    m_hub->attachAgent(m_alice, agent);
    m_hub->attachAgent(m_bob, other);
    m_hub->onAgentText(m_alice, agent, R"({"v":1,"type":"exec","id":"a","daemon_id":"d1","payload":{}})");
    auto fwd = daemon->last();
    auto text = m_hub->renderMetrics();
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_connections{kind="agent"})"), 2);
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_connections{kind="daemon"})"), 1);
    EXPECT_EQ(test::metricValue(text, "hpc_relay_requests_in_flight"), 1);
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_messages_routed_total{direction="to_daemon",frame="text"})"), 1);
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_bytes_routed_total{direction="to_daemon",frame="text"})"),
              static_cast<double>(daemon->sent.back().size()));
    m_hub->onDaemonText(1, "d1", daemon, protocol::makeError(fwd.id, ErrorCode::PathNotAllowed, "no"));
    m_hub->onAgentText(m_alice, agent, R"({"v":1,"type":"exec","id":"b","daemon_id":"gone"})");
    m_hub->detachAgent(other.get());
    text = m_hub->renderMetrics();
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_connections{kind="agent"})"), 1);
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_connections_total{kind="agent"})"), 2);
    EXPECT_EQ(test::metricValue(text, "hpc_relay_requests_in_flight"), 0);
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_messages_routed_total{direction="to_agent",frame="text"})"), 1);
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_request_duration_seconds_count{type="exec"})"), 1);
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_errors_total{code="PATH_NOT_ALLOWED",origin="daemon"})"), 1);
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_errors_total{code="UNAVAILABLE",origin="relay"})"), 1);
}

TEST_F(HubTest, CountsCallbacksStoredRetriedSentAndPending) {
    auto daemon = std::make_shared<RecordingPeer>();
    auto agent = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    m_hub->attachAgent(m_alice, agent);
    std::string completed =
        R"({"v":1,"type":"job.completed","id":"c1","payload":{"callback_id":"cb1","job_id":"j1","agent_id":"cred-10"}})";
    m_hub->onDaemonText(1, "d1", daemon, completed);
    m_hub->onDaemonText(1, "d1", daemon, completed);  // a retry
    auto text = m_hub->renderMetrics();
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_callbacks_received_total{result="stored"})"), 1);
    EXPECT_EQ(test::metricValue(text, R"(hpc_relay_callbacks_received_total{result="duplicate"})"), 1);
    EXPECT_EQ(test::metricValue(text, "hpc_relay_callbacks_sent_total"), 1);
    EXPECT_EQ(test::metricValue(text, "hpc_relay_callbacks_pending"), 1);
    m_hub->onAgentText(m_alice, agent, R"({"v":1,"type":"callback.ack","id":"k","payload":{"callback_id":"cb1"}})");
    ASSERT_TRUE(agent->last().ok);
    EXPECT_EQ(test::metricValue(m_hub->renderMetrics(), "hpc_relay_callbacks_pending"), 0);
}

namespace {
/// Another instance, as far as a hub can tell: the links it was asked to open.
struct FakeCluster : Cluster {
    explicit FakeCluster(std::string self) : me(std::move(self)) {}
    const std::string& self() const override { return me; }
    std::shared_ptr<Peer> open(const std::string& instance, std::int64_t, const std::string&) override {
        opened.push_back(instance);
        link = std::make_shared<RecordingPeer>();
        return link;
    }
    std::string me;
    std::vector<std::string> opened;
    std::shared_ptr<RecordingPeer> link;
};
}  // namespace

// Issue 16 item 2: two hubs on one database. The daemon is connected to A;
// B's agent reaches it through a link B opens to A, which A trusts for the
// agent's name; the answer comes back the same way, and a callback A stores
// reaches B's agent once.
TEST_F(HubTest, AnAgentOnAnotherInstanceReachesTheDaemonThroughALink) {
    FakeCluster atA("wss://a"), atB("wss://b");
    RelayDb dbB(m_dir + "/relay.db");
    Hub b(dbB);
    m_hub->setCluster(&atA);
    b.setCluster(&atB);
    auto daemon = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon);
    EXPECT_TRUE(b.connectedSince(1, "d1")) << "B lists the daemon A holds as connected";
    EXPECT_FALSE(b.connectedHere(1, "d1"));
    EXPECT_EQ(b.daemonCount(), 0u);

    auto agent = std::make_shared<RecordingPeer>();
    b.attachAgent(m_alice, agent);
    b.onAgentText(m_alice, agent, R"({"v":1,"type":"exec","id":"mine","daemon_id":"d1","payload":{"argv":["x"]}})");
    ASSERT_EQ(atB.opened, std::vector<std::string>{"wss://a"});
    ASSERT_EQ(atB.link->sent.size(), 1u);
    EXPECT_EQ(atB.link->last().agent.at("id").as_string(), "cred-10");

    // At A, the link's end.
    auto linkAtA = std::make_shared<RecordingPeer>();
    ASSERT_TRUE(m_hub->attachInstance(1, "d1", linkAtA));
    EXPECT_FALSE(m_hub->attachInstance(1, "d2", linkAtA)) << "not connected to A";
    m_hub->onInstanceText(1, "d1", linkAtA, atB.link->sent.back());
    ASSERT_EQ(daemon->sent.size(), 1u);
    auto fwd = daemon->last();
    EXPECT_EQ(fwd.agent.at("id").as_string(), "cred-10");
    EXPECT_EQ(fwd.agent.at("user").as_string(), "1");
    m_hub->onDaemonText(1, "d1", daemon, protocol::makeOk(fwd.id, {{"exit_code", 0}}));
    ASSERT_EQ(linkAtA->sent.size(), 1u);
    b.onDaemonText(1, "d1", atB.link, linkAtA->sent.back());
    ASSERT_EQ(agent->sent.size(), 1u);
    EXPECT_EQ(agent->last().replyTo, "mine");
    EXPECT_TRUE(agent->last().ok);

    // A request on a link must name its agent, and be for the link's daemon.
    m_hub->onInstanceText(1, "d1", linkAtA, R"({"v":1,"type":"exec","id":"x","daemon_id":"d1"})");
    EXPECT_EQ(linkAtA->last().errorCode, ErrorCode::BadRequest);
    m_hub->onInstanceText(1, "d1", linkAtA,
                          R"({"v":1,"type":"exec","id":"y","daemon_id":"d2","agent":{"id":"a","kind":"access"}})");
    EXPECT_EQ(linkAtA->last().errorCode, ErrorCode::BadRequest);
    EXPECT_EQ(daemon->sent.size(), 1u) << "neither reached the daemon";

    // A callback A stores comes to B's agent on B's next tick, once.
    m_hub->onDaemonText(
        1, "d1", daemon,
        R"({"v":1,"type":"job.completed","id":"c1","payload":{"callback_id":"cb-1","job_id":"j1","agent_id":"cred-10"}})");
    std::size_t before = agent->sent.size();
    b.clusterTick();
    ASSERT_EQ(agent->sent.size(), before + 1);
    EXPECT_EQ(agent->last().type, "job.completed");
    b.clusterTick();
    EXPECT_EQ(agent->sent.size(), before + 1);
    // An agent that connects now is sent it on attaching, and not again by the tick.
    auto later = std::make_shared<RecordingPeer>();
    b.attachAgent(m_alice, later);
    m_hub->onDaemonText(
        1, "d1", daemon,
        R"({"v":1,"type":"job.completed","id":"c2","payload":{"callback_id":"cb-2","job_id":"j2","agent_id":"cred-10"}})");
    auto third = std::make_shared<RecordingPeer>();
    b.attachAgent(m_alice, third);
    EXPECT_EQ(third->sent.size(), 2u) << "both, unacknowledged";
    b.clusterTick();
    EXPECT_EQ(third->sent.size(), 2u) << "cb-2 came twice";
    EXPECT_EQ(later->sent.size(), 2u) << "cb-1 on attaching, cb-2 from the tick";

    // The daemon leaves A: A closes the link, and B forgets it was there.
    m_hub->detachDaemon(1, "d1", daemon.get());
    EXPECT_TRUE(linkAtA->closed);
    EXPECT_FALSE(b.connectedSince(1, "d1"));
    m_hub->setCluster(nullptr);
    b.setCluster(nullptr);
}

// A credential revoked, or a registration deleted, through one instance
// closes the connections another instance holds with it on that one's next tick.
TEST_F(HubTest, ARevocationOnOneInstanceClosesConnectionsOnTheOthers) {
    FakeCluster atA("wss://a"), atB("wss://b");
    RelayDb dbB(m_dir + "/relay.db");
    Hub b(dbB);
    m_hub->setCluster(&atA);
    b.setCluster(&atB);
    auto daemon = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", daemon, 7);
    auto agent = std::make_shared<RecordingPeer>(), other = std::make_shared<RecordingPeer>();
    m_hub->attachAgent(m_alice, agent);
    m_hub->attachAgent(Principal{1, 11, "access", {}, std::nullopt}, other);
    b.dropCredential(10, "this credential was revoked");
    EXPECT_FALSE(agent->closed) << "not before A's tick";
    m_hub->clusterTick();
    EXPECT_TRUE(agent->closed);
    EXPECT_FALSE(other->closed) << "another credential's connection";
    EXPECT_FALSE(daemon->closed);
    b.dropDaemon(1, "d1", "this daemon was unregistered");
    m_hub->clusterTick();
    EXPECT_TRUE(daemon->closed);
    EXPECT_EQ(m_hub->daemonCount(), 0u);
    // Applied once: a later tick changes nothing.
    auto again = std::make_shared<RecordingPeer>();
    m_hub->attachDaemon(1, "d1", again, 7);
    m_hub->clusterTick();
    EXPECT_FALSE(again->closed);
    // B does not apply its own.
    auto atBAgent = std::make_shared<RecordingPeer>();
    b.attachAgent(Principal{1, 12, "access", {}, std::nullopt}, atBAgent);
    b.clusterTick();
    EXPECT_FALSE(atBAgent->closed);
    m_hub->setCluster(nullptr);
    EXPECT_FALSE(b.connectedSince(1, "d1")) << "A left the cluster: its daemons are connected nowhere";
    b.setCluster(nullptr);
}
