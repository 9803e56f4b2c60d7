// The D-Bus interface through the generated proxy, on a private dbus-daemon.
#include "bus/bus_service.hpp"
#include "bus_name.hpp"
#include "errors.hpp"
#include "harness.hpp"

#include <gtest/gtest.h>
#include <hpc_daemon_proxy.h>
#include <sdbus-c++/sdbus-c++.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <atomic>
#include <future>
#include <mutex>
#include <thread>

using namespace hpc;
using namespace hpc::daemon;
using namespace std::chrono_literals;

namespace {

// NOLINTNEXTLINE(cppcoreguidelines-virtual-class-destructor): final: never a base class (clang-tidy 15+ exempts it)
class TestProxy final : public sdbus::ProxyInterfaces<org::tiptree::HpcDaemon_proxy> {
public:
    TestProxy(std::unique_ptr<sdbus::IConnection> connection, std::string name)
        : ProxyInterfaces(std::move(connection), std::move(name), bus::kObjectPath) {
        registerProxy();
    }
    ~TestProxy() { unregisterProxy(); }
    std::vector<std::string> states() {
        std::lock_guard lock(m_mutex);
        return m_states;
    }
    using ProxyInterfaces::getProxy;

private:
    void onLinkStateChanged(const std::string& state) override {
        std::lock_guard lock(m_mutex);
        m_states.push_back(state);
    }
    void onJobChanged(const std::string& jobId, const std::string& state) override {
        std::lock_guard lock(m_mutex);
        m_jobs.push_back(jobId + " " + state);
    }

public:
    std::vector<std::string> jobs() {
        std::lock_guard lock(m_mutex);
        return m_jobs;
    }

private:
    std::vector<std::string> m_jobs;
    std::mutex m_mutex;
    std::vector<std::string> m_states;
};

/// A BusService served from an io_context on its own thread, as the daemon's
/// loop would, with controls that record what they were asked.
class BusServiceTest : public ::testing::Test {
protected:
    void SetUp() override {
        m_h.startSessionBus();
        m_status.daemonId = "login-1.mila";
        m_status.version = "9.9";
        m_status.pid = 42;
        m_status.mode = "nohup";
        m_status.linkState = "connecting";
        m_status.platformUrl = "https://platform.example.org:443";
        m_status.scheduler = "local";
        m_status.allowedDirs = {"/scratch/a"};
        m_status.runningExecs = 3;
        m_status.metrics = {{"execs", 5}, {"jobs.COMPLETED", 2}, {"reconnects", 1}};
        Controls controls;
        controls.status = [this] { return m_status; };
        controls.stop = [this] { ++m_stops; };
        controls.drain = [this](std::chrono::milliseconds limit) { m_drainLimitMs = limit.count(); };
        controls.reload = [this]() -> bool {
            if (m_reloadFails) throw Error(ErrorCode::NotFound, "profile login-1.mila was removed");
            return true;
        };
        m_service = std::make_unique<BusService>(m_ioc, m_h.sessionBusAddress(), "login-1.mila", std::move(controls));
        m_thread = std::thread([this] { m_ioc.run(); });
        m_proxy = std::make_unique<TestProxy>(sdbus::createSessionBusConnectionWithAddress(m_h.sessionBusAddress()),
                                              bus::busNameFor("login-1.mila"));
    }
    void TearDown() override {
        m_proxy.reset();
        std::promise<void> done;
        boost::asio::post(m_ioc, [&] {
            m_service.reset();
            done.set_value();
        });
        done.get_future().wait();
        m_work.reset();
        m_ioc.stop();
        m_thread.join();
    }

    test::Harness m_h;
    boost::asio::io_context m_ioc;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> m_work{m_ioc.get_executor()};
    DaemonStatus m_status;
    std::atomic<int> m_stops{0};
    std::atomic<long long> m_drainLimitMs{-1};
    std::atomic<bool> m_reloadFails{false};
    std::unique_ptr<BusService> m_service;
    std::thread m_thread;
    std::unique_ptr<TestProxy> m_proxy;
};

}  // namespace

TEST(BusName, EscapesDotsDashesAndLeadingDigits) {
    EXPECT_EQ(bus::escapeLabel("mila"), "mila");
    EXPECT_EQ(bus::escapeLabel("login-1.mila"), "login_2d1_2emila");
    EXPECT_EQ(bus::escapeLabel("9lives"), "_39lives");
    EXPECT_EQ(bus::escapeLabel("a_b"), "a_5fb");
    EXPECT_NE(bus::escapeLabel("a_2d"), bus::escapeLabel("a-")) << "escaping is injective";
    EXPECT_EQ(bus::busNameFor("x.y"), "org.tiptree.HpcDaemon.x_2ey");
}

TEST_F(BusServiceTest, GetStatusReturnsEveryDocumentedKey) {
    auto s = m_proxy->GetStatus();
    for (const char* key : {"daemon_id",
                            "version",
                            "pid",
                            "mode",
                            "mode_reason",
                            "link_state",
                            "connected_since",
                            "link_problem",
                            "platform_url",
                            "scheduler",
                            "allowed_dirs",
                            "guard_layers",
                            "process_watch",
                            "running_execs",
                            "active_sessions",
                            "active_jobs",
                            "pending_callbacks",
                            "draining",
                            "bus_address",
                            "started_at",
                            "last_prune_job_dirs",
                            "last_prune_job_dir_bytes",
                            "job_dirs_removed",
                            "job_dir_bytes_removed",
                            "metrics"})
        EXPECT_TRUE(s.count(key)) << key;
    EXPECT_EQ(s["daemon_id"].get<std::string>(), "login-1.mila");
    EXPECT_EQ(s["pid"].get<uint32_t>(), 42u);
    EXPECT_EQ(s["allowed_dirs"].get<std::vector<std::string>>(), std::vector<std::string>{"/scratch/a"});
    EXPECT_EQ(s["running_execs"].get<uint32_t>(), 3u);
    EXPECT_EQ((s["metrics"].get<std::map<std::string, uint64_t>>()), m_status.metrics);
}

TEST_F(BusServiceTest, PropertiesMirrorTheStatus) {
    EXPECT_EQ(m_proxy->DaemonId(), "login-1.mila");
    EXPECT_EQ(m_proxy->Version(), "9.9");
    EXPECT_EQ(m_proxy->LinkState(), "connecting");
    EXPECT_EQ(m_proxy->ConnectedSince(), 0.0);
    EXPECT_EQ(m_proxy->PlatformUrl(), "https://platform.example.org:443");
    EXPECT_EQ(m_proxy->Scheduler(), "local");
    EXPECT_EQ(m_proxy->Mode(), "nohup");
    EXPECT_EQ(m_proxy->RunningExecs(), 3u);
    EXPECT_EQ(m_proxy->ActiveSessions(), 0u);
    EXPECT_EQ(m_proxy->ActiveJobs(), 0u);
    EXPECT_FALSE(m_proxy->Draining());
    EXPECT_EQ(m_proxy->Metrics(), m_status.metrics);
}

TEST_F(BusServiceTest, StopAndReloadReachTheCore) {
    m_proxy->Stop();
    EXPECT_EQ(m_stops.load(), 1);
    EXPECT_TRUE(m_proxy->Reload());
}

TEST_F(BusServiceTest, DrainReachesTheCoreWithItsLimitAndRefusesABadOne) {
    m_proxy->Drain(2.5);
    EXPECT_EQ(m_drainLimitMs.load(), 2500);
    try {
        m_proxy->Drain(-1);
        FAIL();
    } catch (const sdbus::Error& e) {
        EXPECT_EQ(e.getName(), "org.tiptree.HpcDaemon.Error.BadRequest");
    }
    EXPECT_EQ(m_drainLimitMs.load(), 2500);  // unchanged by the bad call
}

TEST_F(BusServiceTest, CoreErrorsArriveAsNamedErrors) {
    m_reloadFails = true;
    try {
        m_proxy->Reload();
        FAIL();
    } catch (const sdbus::Error& e) {
        EXPECT_EQ(e.getName(), "org.tiptree.HpcDaemon.Error.NotFound");
        EXPECT_NE(e.getMessage().find("was removed"), std::string::npos);
    }
}

TEST_F(BusServiceTest, ListsAreEmptyUntilSessionsAndJobsExist) {
    EXPECT_TRUE(m_proxy->ListSessions().empty());
    EXPECT_TRUE(m_proxy->ListJobs().empty());
}

TEST_F(BusServiceTest, JobChangesAreSignalledAndListed) {
    m_proxy->getProxy().finishRegistration();
    boost::asio::post(m_ioc, [this] { m_service->jobChanged("j1", JobState::Running); });
    EXPECT_TRUE(test::waitUntil([&] { return !m_proxy->jobs().empty(); }, 5s));
    ASSERT_FALSE(m_proxy->jobs().empty());
    EXPECT_EQ(m_proxy->jobs().back(), "j1 RUNNING");
}

TEST_F(BusServiceTest, LinkStateChangesAreSignalled) {
    std::atomic<int> changed{0};
    m_proxy->getProxy()
        .uponSignal("PropertiesChanged")
        .onInterface("org.freedesktop.DBus.Properties")
        .call([&changed](const std::string& iface, const std::map<std::string, sdbus::Variant>& values,
                         const std::vector<std::string>& invalidated) {
            bool named = values.count("LinkState") ||
                         std::find(invalidated.begin(), invalidated.end(), "LinkState") != invalidated.end();
            if (iface == bus::kInterface && named) ++changed;
        });
    m_proxy->getProxy().finishRegistration();
    m_status.linkState = "connected";
    boost::asio::post(m_ioc, [this] { m_service->linkStateChanged("connected"); });
    EXPECT_TRUE(test::waitUntil([&] { return !m_proxy->states().empty() && changed > 0; }, 5s));
    ASSERT_FALSE(m_proxy->states().empty());
    EXPECT_EQ(m_proxy->states().back(), "connected");
    EXPECT_EQ(m_proxy->LinkState(), "connected");
}

TEST_F(BusServiceTest, ASecondInstanceOfTheSameDaemonIsRefused) {
    boost::asio::io_context other;
    try {
        BusService second(other, m_h.sessionBusAddress(), "login-1.mila", Controls{});
        FAIL() << "two instances owned one name";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Limit);
        EXPECT_NE(std::string(e.what()).find("already running"), std::string::npos);
    }
}
