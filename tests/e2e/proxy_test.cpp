// Behind an HTTP proxy (issue 14 item 1): the daemon's link, setup and
// hpc-agent reach the relay through a real tinyproxy on 127.0.0.1 with HTTP
// CONNECT. tinyproxy makes its outgoing connections from 127.0.0.2, so the
// relay's side of every connection (in /proc/net/tcp) says whether it came
// through the proxy or straight from a client on 127.0.0.1.
#include "proxy.hpp"
#include "errors.hpp"
#include "harness.hpp"
#include "tiny_proxy.hpp"

#include <gtest/gtest.h>

#include <fstream>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

class Proxy : public ::testing::Test {
protected:
    void SetUp() override { ASSERT_NO_FATAL_FAILURE(h.startRelay()); }
    std::string target() const { return "127.0.0.1:" + std::to_string(h.port()); }
    std::string tokenFile(const Secret& token) {
        auto file = h.dir() / "token";
        std::ofstream(file) << token.reveal() << "\n";
        return file.string();
    }
    CommandResult agentExec(const std::string& daemonId, const Secret& token, const std::vector<std::string>& extra,
                            const std::vector<std::string>& env, const std::string& command) {
        std::vector<std::string> argv = {Harness::binary("hpc-agent"),
                                         "exec",
                                         daemonId,
                                         "--url",
                                         h.url(),
                                         "--ca-file",
                                         h.caFile(),
                                         "--token-file",
                                         tokenFile(token)};
        argv.insert(argv.end(), extra.begin(), extra.end());
        argv.insert(argv.end(), {"-c", command});
        return runCommand(argv, {}, env, 60s);
    }
    std::vector<std::string> setupArgv(const std::string& daemonId, const std::string& email) {
        return {Harness::binary("hpc-daemonctl"),
                "setup",
                "--no-interview",
                "--email",
                email,
                "--url",
                h.url(),
                "--daemon-id",
                daemonId,
                "--ca-file",
                h.caFile(),
                "--allowed-dirs",
                h.dir().string()};
    }
    std::vector<std::string> homeEnv(const std::string& daemonId, std::vector<std::string> env = {}) {
        auto base = h.baseEnv();
        env.insert(env.begin(), base.begin(), base.end());
        env.push_back("HPC_DAEMON_HOME=" + h.home(daemonId).string());
        return env;
    }
    Harness h;
};

}  // namespace

// ---------------------------------------------------------------- the rules

TEST(NoProxy, MatchesHostsDomainsAddressesAndRangesAsCurlDoes) {
    EXPECT_TRUE(noProxyMatches("*", "anything.example", "443"));
    EXPECT_TRUE(noProxyMatches("example.org", "example.org", "443"));
    EXPECT_TRUE(noProxyMatches("example.org", "api.example.org", "443"));
    EXPECT_TRUE(noProxyMatches(".example.org", "api.example.org", "443"));
    EXPECT_TRUE(noProxyMatches(".example.org", "example.org", "443"));
    EXPECT_FALSE(noProxyMatches("example.org", "notexample.org", "443"));
    EXPECT_TRUE(noProxyMatches("localhost, 127.0.0.1 ,cluster.local", "127.0.0.1", "8443"));
    EXPECT_TRUE(noProxyMatches("EXAMPLE.org", "Api.Example.ORG.", "443"));
    EXPECT_TRUE(noProxyMatches("10.0.0.0/8", "10.20.30.40", "443"));
    EXPECT_FALSE(noProxyMatches("10.0.0.0/8", "11.0.0.1", "443"));
    EXPECT_TRUE(noProxyMatches("::1", "::1", "443"));
    EXPECT_TRUE(noProxyMatches("[fd00::]/8", "fd12::1", "443"));
    EXPECT_TRUE(noProxyMatches("platform.example.org:8443", "platform.example.org", "8443"));
    EXPECT_FALSE(noProxyMatches("platform.example.org:8443", "platform.example.org", "443"));
    EXPECT_FALSE(noProxyMatches("", "example.org", "443"));
    EXPECT_FALSE(noProxyMatches("127.0.0.2", "127.0.0.1", "443"));
}

TEST(ProxyRoute, ComesFromTheSettingThenTheEnvironmentAsCurlReadsIt) {
    Url platform = *parseUrl("https://platform.example.org");
    std::map<std::string, std::string> vars;
    EnvLookup env = [&](const char* name) -> const char* {
        auto it = vars.find(name);
        return it == vars.end() ? nullptr : it->second.c_str();
    };
    EXPECT_EQ(resolveProxyRoute("", platform, env).describe(), "direct");
    vars["HTTPS_PROXY"] = "http://upper:3128";
    vars["ALL_PROXY"] = "http://all:3128";
    EXPECT_EQ(resolveProxyRoute("", platform, env).describe(), "via proxy http://upper:3128 (HTTPS_PROXY)");
    vars["https_proxy"] = "lower:8080";
    EXPECT_EQ(resolveProxyRoute("", platform, env).describe(), "via proxy http://lower:8080 (https_proxy)");
    EXPECT_EQ(resolveProxyRoute("http://explicit", platform, env).describe(),
              "via proxy http://explicit:1080 (--proxy)");
    EXPECT_EQ(resolveProxyRoute("direct", platform, env).describe(), "direct (--proxy direct)");
    vars["NO_PROXY"] = ".example.org";
    EXPECT_EQ(resolveProxyRoute("", platform, env).describe(), "direct (NO_PROXY)");
    vars.erase("NO_PROXY");
    vars.erase("https_proxy");
    vars.erase("HTTPS_PROXY");
    EXPECT_EQ(resolveProxyRoute("", platform, env).describe(), "via proxy http://all:3128 (ALL_PROXY)");
    // A configured proxy that cannot be used is an error, never "go direct".
    vars["ALL_PROXY"] = "socks5://all:1080";
    EXPECT_THROW(resolveProxyRoute("", platform, env), Error);
    EXPECT_THROW(resolveProxyRoute("https://secure-proxy:443", platform, env), Error);
}

TEST(ProxyUrl, KeepsCredentialsOutOfWhatIsShown) {
    auto p = parseProxyUrl("http://al%40ice:pa%3Ass@proxy.example.org:3128");
    EXPECT_EQ(p.user, "al@ice");
    EXPECT_EQ(p.password.reveal(), "pa:ss");
    EXPECT_EQ(p.display(), "http://proxy.example.org:3128");
    EXPECT_EQ(p.authorization().reveal(), "Basic " + base64Encode("al@ice:pa:ss"));
    try {
        parseProxyUrl("http://alice:hunter2@proxy:notaport");
        ADD_FAILURE() << "a bad port was accepted";
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()).find("hunter2"), std::string::npos) << e.what();
    }
}

// ------------------------------------------------------- through tinyproxy

TEST_F(Proxy, SetupTheDaemonsLinkAndHpcAgentAllGoThroughIt) {
    TinyProxy proxy(h.dir() / "proxy");
    // setup: every HTTP call through the proxy, and the proxy kept in the profile.
    auto setup = h.setupDaemon("p", "p@example.org", {h.dir().string()}, {"--proxy", proxy.url()});
    ASSERT_EQ(setup.status, 0) << setup.err;
    int afterSetup = proxy.connects(target());
    EXPECT_GE(afterSetup, 4) << "sign-in, verify, API key and registration each tunnel";
    h.editProfile("p", [&](Profile& p) { EXPECT_EQ(p.proxy, proxy.url()); });

    h.startDaemon("p");
    ASSERT_TRUE(h.waitLinkState("p", "connected")) << h.daemonLog("p");
    EXPECT_GT(proxy.connects(target()), afterSetup);
    auto status = h.daemonStatus("p");
    EXPECT_EQ(status.at("route").as_string(), "via proxy " + proxy.url() + " (--proxy)");
    // The relay's only connection is the one from the proxy: none came direct.
    auto peers = peersOf(h.port());
    EXPECT_EQ(peers["127.0.0.2"], 1);
    EXPECT_EQ(peers["127.0.0.1"], 0);

    // hpc-agent: --proxy, and HTTPS_PROXY from the environment.
    Secret token = h.login("p@example.org");
    int before = proxy.connects(target());
    auto flag = agentExec("p", token, {"--proxy", proxy.url()}, {}, "echo via-flag");
    EXPECT_EQ(flag.status, 0) << flag.err;
    EXPECT_EQ(flag.out, "via-flag\n");
    auto env = agentExec("p", token, {}, {"HTTPS_PROXY=" + proxy.url()}, "echo via-env");
    EXPECT_EQ(env.status, 0) << env.err;
    EXPECT_EQ(env.out, "via-env\n");
    EXPECT_EQ(proxy.connects(target()), before + 2);
}

TEST_F(Proxy, TheEnvironmentsProxyWithCredentialsCarriesTheLinkAndNeverShowsThePassword) {
    TinyProxy proxy(h.dir() / "proxy", "BasicAuth alice s3cret-Pw");
    std::string withCredentials = "http://alice:s3cret-Pw@127.0.0.1:" + std::to_string(proxy.port());
    std::vector<std::string> env = {"HTTPS_PROXY=" + withCredentials};
    auto setup = h.runTypingCode(setupArgv("c", "c@example.org"), homeEnv("c", env), "c@example.org");
    ASSERT_EQ(setup.status, 0) << setup.err;
    EXPECT_EQ(setup.out.find("s3cret"), std::string::npos);
    EXPECT_EQ(setup.err.find("s3cret"), std::string::npos);

    h.startDaemon("c", {}, env);
    ASSERT_TRUE(h.waitLinkState("c", "connected")) << h.daemonLog("c");
    auto peers = peersOf(h.port());
    EXPECT_EQ(peers["127.0.0.2"], 1);
    EXPECT_EQ(peers["127.0.0.1"], 0);
    auto status = json::serialize(h.daemonStatus("c"));
    EXPECT_NE(status.find("via proxy " + proxy.url() + " (HTTPS_PROXY)"), std::string::npos) << status;
    EXPECT_EQ(status.find("s3cret"), std::string::npos) << status;
    EXPECT_EQ(status.find("alice"), std::string::npos) << status;
    auto log = h.daemonLog("c");
    EXPECT_NE(log.find(proxy.url()), std::string::npos) << "the route is logged";
    EXPECT_EQ(log.find("s3cret"), std::string::npos) << log;
    EXPECT_EQ(readFile("/proc/" + std::to_string(h.daemonPid("c")) + "/cmdline").find("s3cret"), std::string::npos);

    // Without the password the proxy answers 407: a clear error, no secret in it.
    Secret token = h.login("c@example.org");
    auto refused = agentExec("c", token, {"--proxy", proxy.url()}, {}, "true");
    EXPECT_EQ(refused.status, 255);
    EXPECT_NE(refused.err.find("HTTP 407"), std::string::npos) << refused.err;
    auto wrong =
        agentExec("c", token, {"--proxy", "http://alice:wrong@127.0.0.1:" + std::to_string(proxy.port())}, {}, "true");
    EXPECT_EQ(wrong.status, 255);
    EXPECT_NE(wrong.err.find("did not accept the user and password"), std::string::npos) << wrong.err;
    EXPECT_EQ(wrong.err.find("wrong"), std::string::npos) << wrong.err;
    auto right = agentExec("c", token, {}, env, "echo ok");
    EXPECT_EQ(right.status, 0) << right.err;
    EXPECT_EQ(right.out, "ok\n");
}

TEST_F(Proxy, ADeadProxyIsAClearErrorAndTheLinkNeverGoesDirect) {
    ASSERT_EQ(h.setupDaemon("d", "d@example.org", {h.dir().string()}).status, 0);
    int dead = freeLoopbackPort();
    std::string deadUrl = "http://127.0.0.1:" + std::to_string(dead);
    std::vector<std::string> env = {"HTTPS_PROXY=" + deadUrl};
    h.startDaemon("d", {}, env);
    ASSERT_TRUE(h.waitLinkState("d", "backoff")) << h.daemonLog("d");
    // It keeps retrying through the proxy and never reaches the relay.
    Secret token = h.login("d@example.org");
    EXPECT_FALSE(h.waitConnected(token, "d", 2s));
    EXPECT_EQ(peersOf(h.port())["127.0.0.1"], 0);
    EXPECT_EQ(std::string(h.daemonStatus("d").at("link_state").as_string()), "backoff");
    auto log = h.daemonLog("d");
    EXPECT_NE(log.find("via proxy " + deadUrl + ": connect to the proxy"), std::string::npos) << log;
    auto count = [&log](const std::string& needle) {
        int n = 0;
        for (auto p = log.find(needle); p != std::string::npos; p = log.find(needle, p + 1)) ++n;
        return n;
    };
    EXPECT_GE(count("connect to the proxy: Connection refused"), 2) << "it retried through the proxy";
    EXPECT_EQ(count("warning: cannot connect"), 1) << "one warning per cause, the retries at debug level";

    // setup and hpc-agent say the same.
    // setup fails before it asks for a code.
    auto setup = runCommand(setupArgv("d2", "d@example.org"), {}, homeEnv("d2", env), 60s);
    EXPECT_NE(setup.status, 0);
    EXPECT_NE(setup.err.find("via proxy " + deadUrl + ": connect to the proxy failed"), std::string::npos) << setup.err;
    auto agent = agentExec("d", token, {}, env, "true");
    EXPECT_EQ(agent.status, 255);
    EXPECT_NE(agent.err.find("via proxy " + deadUrl + ": connect to the proxy failed"), std::string::npos) << agent.err;
}

TEST_F(Proxy, NoProxyForTheRelaysAddressGoesDirect) {
    ASSERT_EQ(h.setupDaemon("n", "n@example.org", {h.dir().string()}).status, 0);
    int dead = freeLoopbackPort();
    std::vector<std::string> env = {"HTTPS_PROXY=http://127.0.0.1:" + std::to_string(dead), "NO_PROXY=127.0.0.1"};
    h.startDaemon("n", {}, env);
    ASSERT_TRUE(h.waitLinkState("n", "connected")) << h.daemonLog("n");
    EXPECT_EQ(std::string(h.daemonStatus("n").at("route").as_string()), "direct (NO_PROXY)");
    EXPECT_EQ(peersOf(h.port())["127.0.0.1"], 1);
    Secret token = h.login("n@example.org");
    auto agent = agentExec("n", token, {}, env, "echo direct");
    EXPECT_EQ(agent.status, 0) << agent.err;
    EXPECT_EQ(agent.out, "direct\n");
}

TEST_F(Proxy, AProfileSetToDirectIgnoresTheEnvironmentsProxy) {
    ASSERT_EQ(h.setupDaemon("x", "x@example.org", {h.dir().string()}, {"--proxy", "direct"}).status, 0);
    int dead = freeLoopbackPort();
    h.startDaemon("x", {}, {"HTTPS_PROXY=http://127.0.0.1:" + std::to_string(dead)});
    ASSERT_TRUE(h.waitLinkState("x", "connected")) << h.daemonLog("x");
    EXPECT_EQ(std::string(h.daemonStatus("x").at("route").as_string()), "direct (--proxy direct)");
}

TEST_F(Proxy, AProxyThatForbidsThePlatformsPortIsAClearErrorForTheLinkAndTheAgent) {
    // tinyproxy answers 403 to a CONNECT to a port its ConnectPort lines do not list.
    TinyProxy proxy(h.dir() / "proxy", "ConnectPort 443");
    ASSERT_EQ(h.setupDaemon("f", "f@example.org", {h.dir().string()}).status, 0);
    h.startDaemon("f", {}, {"HTTPS_PROXY=" + proxy.url()});
    ASSERT_TRUE(h.waitLinkState("f", "backoff")) << h.daemonLog("f");
    Secret token = h.login("f@example.org");
    EXPECT_FALSE(h.waitConnected(token, "f", 1s));
    EXPECT_EQ(peersOf(h.port())["127.0.0.1"], 0);
    EXPECT_NE(h.daemonLog("f").find("refused the tunnel to " + target() + " (HTTP 403"), std::string::npos)
        << h.daemonLog("f");
    auto agent = agentExec("f", token, {"--proxy", proxy.url()}, {}, "true");
    EXPECT_EQ(agent.status, 255);
    EXPECT_NE(agent.err.find("HTTP 403"), std::string::npos) << agent.err;
    EXPECT_NE(agent.err.find("its rules forbid this destination or port"), std::string::npos) << agent.err;
}

TEST_F(Proxy, AProxyOfAKindItCannotUseEndsTheDaemonWithASentenceInsteadOfGoingDirect) {
    ASSERT_EQ(h.setupDaemon("s", "s@example.org", {h.dir().string()}).status, 0);
    // It is ready (store open, bus name owned) before it builds its link; then it exits.
    h.startDaemon("s", {}, {"ALL_PROXY=socks5://user:hunter2@127.0.0.1:1080"});
    auto stat = "/proc/" + std::to_string(h.daemonPid("s")) + "/stat";
    EXPECT_TRUE(waitUntil(
        [&] {
            auto text = readFile(stat);
            auto close = text.rfind(')');
            return close == std::string::npos || text.substr(close + 2, 1) == "Z";
        },
        10s))
        << "the daemon did not exit";
    auto log = h.daemonLog("s");
    EXPECT_NE(log.find("ALL_PROXY is a socks5:// proxy, which is not supported"), std::string::npos) << log;
    EXPECT_EQ(log.find("hunter2"), std::string::npos) << log;
    EXPECT_EQ(peersOf(h.port())["127.0.0.1"], 0);
}
