// The relay's metrics registry and its text rendering, who may scrape it, and
// the daemon's counters.
#include "metrics.hpp"
#include "harness.hpp"

#include "daemon_metrics.hpp"

#include <gtest/gtest.h>

using namespace hpc;
using hpc::test::metricValue;

TEST(RelayMetrics, HistogramBucketsAreCumulativeAndEndInACountedInf) {
    relay::RelayMetrics m;
    auto exec = m.requestSlot("exec");
    m.requestAnswered(exec, 0.0004);
    m.requestAnswered(exec, 0.003);
    m.requestAnswered(exec, 400);  // above every bound
    auto text = m.render({});
    const std::string h = "hpc_relay_request_duration_seconds";
    EXPECT_EQ(metricValue(text, h + R"(_bucket{type="exec",le="0.0005"})"), 1);
    EXPECT_EQ(metricValue(text, h + R"(_bucket{type="exec",le="0.005"})"), 2);
    EXPECT_EQ(metricValue(text, h + R"(_bucket{type="exec",le="300"})"), 2);
    EXPECT_EQ(metricValue(text, h + R"(_bucket{type="exec",le="+Inf"})"), 3);
    EXPECT_EQ(metricValue(text, h + R"(_count{type="exec"})"), 3);
    EXPECT_NEAR(*metricValue(text, h + R"(_sum{type="exec"})"), 400.0034, 1e-9);
}

TEST(RelayMetrics, RequestTypesBeyondTheLimitCountAsOther) {
    relay::RelayMetrics m;
    for (std::size_t i = 0; i < 2 * relay::RelayMetrics::kMaxLabelValues; ++i)
        m.requestAnswered(m.requestSlot("t" + std::string(i / 26 + 1, static_cast<char>('a' + i % 26))), 0.01);
    auto text = m.render({});
    std::size_t series = 0;
    for (auto p = text.find("hpc_relay_request_duration_seconds_count{"); p != std::string::npos;
         p = text.find("hpc_relay_request_duration_seconds_count{", p + 1))
        ++series;
    EXPECT_EQ(series, relay::RelayMetrics::kMaxLabelValues);
    EXPECT_EQ(metricValue(text, R"(hpc_relay_request_duration_seconds_count{type="other"})"),
              2 * relay::RelayMetrics::kMaxLabelValues - (relay::RelayMetrics::kMaxLabelValues - 1));
}

TEST(RelayMetrics, CountsSignInsAndErrorsByTheCodeInTheAnswer) {
    relay::RelayMetrics m;
    m.httpAnswered("POST", "/auth/otp/signin/verify", 200, R"({"access_token":"x"})", 0.01);
    m.httpAnswered("POST", "/auth/otp/signin/verify", 401,
                   R"({"status":"error","code":"UNAUTHORIZED","message":"wrong code"})", 0.01);
    m.httpAnswered("GET", "/hpc/daemons/login-1/nothing-here", 404,
                   R"({"status":"error","code":"NOT_FOUND","message":"no route"})", 0.002);
    m.httpAnswered("PUT", "/hpc/daemons/login-1", 500, "not json", 0.002);
    auto text = m.render({});
    EXPECT_EQ(metricValue(text, R"(hpc_relay_signins_total{result="success"})"), 1);
    EXPECT_EQ(metricValue(text, R"(hpc_relay_signins_total{result="failure"})"), 1);
    EXPECT_EQ(metricValue(text, R"(hpc_relay_errors_total{code="UNAUTHORIZED",origin="relay"})"), 1);
    EXPECT_EQ(metricValue(text, R"(hpc_relay_errors_total{code="NOT_FOUND",origin="relay"})"), 1);
    EXPECT_EQ(metricValue(text, R"(hpc_relay_errors_total{code="INTERNAL",origin="relay"})"), 1);
    EXPECT_EQ(metricValue(text, R"(hpc_relay_errors_total{code="NOT_FOUND",origin="daemon"})"), 0);
    EXPECT_EQ(metricValue(text, R"(hpc_relay_http_requests_total{route="/hpc/daemons/{id}",status="500"})"), 1);
    EXPECT_EQ(
        metricValue(text, R"(hpc_relay_http_requests_total{route="/hpc/daemons/{id}/nothing-here",status="404"})"), 1);
}

TEST(RelayMetrics, HttpRoutesHideIdsAndKeepLabelsFew) {
    EXPECT_EQ(relay::httpRoute("/hpc/daemons/login-1.mila?x=1"), "/hpc/daemons/{id}");
    EXPECT_EQ(relay::httpRoute("/hpc/daemons/login-1.mila/rotate-key"), "/hpc/daemons/{id}/rotate-key");
    EXPECT_EQ(relay::httpRoute("/hpc/daemons/"), "/hpc/daemons");
    EXPECT_EQ(relay::httpRoute("/metrics/"), "/metrics");
    EXPECT_EQ(relay::httpRoute("/hpc/daemons/a/B%22"), "other");
    EXPECT_EQ(relay::httpRoute("/etc/passwd"), "other");
    relay::RelayMetrics m;
    for (int i = 0; i < 200; ++i)
        m.httpAnswered("GET",
                       "/hpc/daemons/d/" + std::string(static_cast<std::size_t>(i % 30 + 1), 'a') +
                           std::string(static_cast<std::size_t>(i / 30 + 1), 'b'),
                       404, "", 0.001);
    auto text = m.render({});
    std::size_t series = 0;
    for (auto p = text.find("hpc_relay_http_request_duration_seconds_count{"); p != std::string::npos;
         p = text.find("hpc_relay_http_request_duration_seconds_count{", p + 1))
        ++series;
    EXPECT_LE(series, relay::RelayMetrics::kMaxLabelValues + 1);
}

TEST(RelayMetrics, GaugesAreRenderedAsGivenAndPendingCallbacksOnlyWhenKnown) {
    relay::RelayMetrics m;
    relay::RelayGauges g;
    g.agents = 3;
    g.daemons = 2;
    g.channelsOpen = 5;
    EXPECT_EQ(m.render(g).find("hpc_relay_callbacks_pending"), std::string::npos);
    g.callbacksPending = 7;
    auto text = m.render(g);
    EXPECT_EQ(metricValue(text, R"(hpc_relay_connections{kind="agent"})"), 3);
    EXPECT_EQ(metricValue(text, R"(hpc_relay_connections{kind="daemon"})"), 2);
    EXPECT_EQ(metricValue(text, "hpc_relay_channels_open"), 5);
    EXPECT_EQ(metricValue(text, "hpc_relay_callbacks_pending"), 7);
}

TEST(MetricsAccess, LoopbackOnlyWithoutATokenAndTheTokenFromEveryoneWithOne) {
    relay::MetricsAccess open;
    EXPECT_EQ(relay::checkScrape(open, true, ""), std::nullopt);
    EXPECT_EQ(relay::checkScrape(open, false, ""), ErrorCode::NotOwner);
    relay::MetricsAccess off;
    off.enabled = false;
    EXPECT_EQ(relay::checkScrape(off, true, ""), ErrorCode::NotFound);
    relay::MetricsAccess token;
    token.token = Secret("0123456789abcdef");
    EXPECT_EQ(relay::checkScrape(token, true, ""), ErrorCode::Unauthorized);
    EXPECT_EQ(relay::checkScrape(token, false, "Bearer 0123456789abcdeX"), ErrorCode::Unauthorized);
    EXPECT_EQ(relay::checkScrape(token, false, "Bearer 0123456789abcdef0"), ErrorCode::Unauthorized);
    EXPECT_EQ(relay::checkScrape(token, false, "Basic 0123456789abcdef"), ErrorCode::Unauthorized);
    EXPECT_EQ(relay::checkScrape(token, false, "Bearer 0123456789abcdef"), std::nullopt);
}

TEST(DaemonMetrics, CountsReconnectsFinalJobsExecsAndCallbackLatency) {
    daemon::DaemonMetrics m;
    m.linkConnected();
    EXPECT_EQ(m.snapshot(0).at("reconnects"), 0u) << "the first connection is not a reconnect";
    m.linkConnected();
    m.linkConnected();
    m.jobChanged(JobState::Running);
    m.jobChanged(JobState::Completed);
    m.jobChanged(JobState::Failed);
    m.jobChanged(JobState::Completed);
    m.execEnded(0);
    m.execEnded(137);
    m.callbackDelivered(0.25);
    m.callbackDelivered(1.5);
    m.callbackDelivered(-3);  // a clock step back is not a negative latency
    auto c = m.snapshot(4);
    EXPECT_EQ(c.at("reconnects"), 2u);
    EXPECT_EQ(c.at("jobs.COMPLETED"), 2u);
    EXPECT_EQ(c.at("jobs.FAILED"), 1u);
    EXPECT_EQ(c.at("jobs.PREEMPTED"), 0u);
    EXPECT_FALSE(c.contains("jobs.RUNNING"));
    EXPECT_EQ(c.at("execs"), 2u);
    EXPECT_EQ(c.at("execs_failed"), 1u);
    EXPECT_EQ(c.at("shells"), 4u);
    EXPECT_EQ(c.at("callbacks_delivered"), 3u);
    EXPECT_EQ(c.at("callback_latency_ms_sum"), 1750u);
    EXPECT_EQ(c.at("callback_latency_ms_max"), 1500u);
}

TEST(DaemonMetrics, MessageTypesAreCountedByNameUpToALimit) {
    daemon::DaemonMetrics m;
    m.message("exec");
    m.message("exec");
    m.message("response");
    for (std::size_t i = 0; i < daemon::DaemonMetrics::kMaxMessageTypes + 10; ++i)
        m.message("t" + std::string(i / 26 + 1, static_cast<char>('a' + i % 26)));
    auto c = m.snapshot(0);
    EXPECT_EQ(c.at("messages.exec"), 2u);
    EXPECT_EQ(c.at("messages.response"), 1u);
    std::size_t named = 0;
    for (const auto& [k, v] : c) named += k.starts_with("messages.") ? 1 : 0;
    EXPECT_LE(named, daemon::DaemonMetrics::kMaxMessageTypes + 1);
    EXPECT_GE(c.at("messages.other"), 11u);
}
