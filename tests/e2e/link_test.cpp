// The daemon's link (common/net/link.cpp) against a real relay over TLS: a
// message handler that throws loses that message, never the link.
#include "link.hpp"
#include "harness.hpp"
#include "protocol.hpp"
#include "store.hpp"

#include <gtest/gtest.h>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;

TEST(Link, AHandlerThatThrowsLosesItsMessageNotTheLink) {
    Harness h;
    ASSERT_NO_FATAL_FAILURE(h.startRelay());
    ASSERT_EQ(h.setupDaemon("l", "l@example.org", {h.dir().string()}).status, 0);
    Profile profile;
    h.editProfile("l", [&](Profile& p) { profile = p; });
    Secret token = h.login("l@example.org");

    net::LinkConfig config;
    config.url = *parseUrl(profile.platformUrl);
    config.daemonId = "l";
    config.apiKey = profile.apiKey;
    config.caFile = profile.caFile;
    boost::asio::io_context ioc;
    std::unique_ptr<net::Link> link;
    std::atomic<int> received{0};
    std::mutex mutex;
    std::vector<net::LinkState> states;
    net::LinkHandlers handlers;
    handlers.onText = [&](std::string_view text) {
        auto parsed = protocol::parse(text);
        auto* env = std::get_if<protocol::Envelope>(&parsed);
        if (!env || env->type != "test.echo") return;
        if (++received == 1) throw std::runtime_error("a handler's bug (injected)");
        link->sendText(protocol::makeOk(env->id, {{"echo", env->payload}}));
    };
    handlers.onState = [&](net::LinkState s) {
        std::lock_guard lock(mutex);
        states.push_back(s);
    };
    link = std::make_unique<net::Link>(ioc, config, handlers);
    link->start();
    std::thread loop([&] { ioc.run(); });
    auto stopLoop = [&] {
        boost::asio::post(ioc, [&] { link->stop(); });
        boost::asio::post(ioc, [&] { ioc.stop(); });
        loop.join();
    };

    if (!h.waitConnected(token, "l")) {
        stopLoop();
        FAIL() << "the link did not connect";
    }
    auto agent = h.agent(token);
    // The first request's handler throws: no answer, so the agent times out.
    EXPECT_THROW(agent->request("l", "test.echo", {{"n", 1}}, 2s), Error);
    // The link carries on: the next one is answered on the same connection.
    boost::json::object answer;
    EXPECT_NO_THROW(answer = agent->request("l", "test.echo", {{"n", 2}}, 20s));
    EXPECT_EQ(boost::json::serialize(answer), R"({"echo":{"n":2}})");
    EXPECT_EQ(received.load(), 2);
    stopLoop();
    std::lock_guard lock(mutex);
    EXPECT_EQ(std::count(states.begin(), states.end(), net::LinkState::Connected), 1) << "reconnected";
    EXPECT_EQ(std::count(states.begin(), states.end(), net::LinkState::Backoff), 0) << "the link failed";
}
