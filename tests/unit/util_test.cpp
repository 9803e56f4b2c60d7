#include "util.hpp"

#include <gtest/gtest.h>

using namespace hpc;

TEST(Url, ParsesHttpsWithDefaultPort) {
    auto u = parseUrl("https://platform.example.org/api/");
    ASSERT_TRUE(u);
    EXPECT_EQ(u->host, "platform.example.org");
    EXPECT_EQ(u->port, "443");
    EXPECT_EQ(u->path, "/api");
    EXPECT_TRUE(u->tls());
}

TEST(Url, ParsesIpv6AndExplicitPorts) {
    auto u = parseUrl("wss://[::1]:8443");
    ASSERT_TRUE(u);
    EXPECT_EQ(u->host, "::1");
    EXPECT_EQ(u->port, "8443");
    EXPECT_EQ(u->str(), "https://[::1]:8443");
}

TEST(Url, RefusesWhatIsNotAPlatformUrl) {
    std::string err;
    EXPECT_FALSE(parseUrl("platform.example.org", &err));
    EXPECT_NE(err.find("https://"), std::string::npos);
    EXPECT_FALSE(parseUrl("ftp://x"));
    EXPECT_FALSE(parseUrl("https://"));
    EXPECT_FALSE(parseUrl("https://user:pw@host"));
    EXPECT_FALSE(parseUrl("https://host:99999"));
    EXPECT_FALSE(parseUrl("https://host:abc"));
}

TEST(DaemonId, AcceptsDotsDashesAndLeadingDigits) {
    EXPECT_TRUE(isValidDaemonId("mila"));
    EXPECT_TRUE(isValidDaemonId("login-1.mila.quebec"));
    EXPECT_TRUE(isValidDaemonId("9lives_x"));
    EXPECT_FALSE(isValidDaemonId(""));
    EXPECT_FALSE(isValidDaemonId(".hidden"));
    EXPECT_FALSE(isValidDaemonId("-x"));
    EXPECT_FALSE(isValidDaemonId("a/b"));
    EXPECT_FALSE(isValidDaemonId("a b"));
    EXPECT_FALSE(isValidDaemonId(std::string(65, 'a')));
}

TEST(Paths, WithinMatchesWholeComponentsOnly) {
    EXPECT_TRUE(isWithin("/scratch/work", "/scratch/work"));
    EXPECT_TRUE(isWithin("/scratch/work/a/b", "/scratch/work"));
    EXPECT_FALSE(isWithin("/scratch/workshop", "/scratch/work"));
    EXPECT_FALSE(isWithin("/scratch", "/scratch/work"));
    EXPECT_TRUE(isWithin("/scratch/work/", "/scratch/work/"));
}

TEST(Hosts, KnowsLoopbackAndIpLiterals) {
    EXPECT_TRUE(isLoopbackHost("127.0.0.1"));
    EXPECT_TRUE(isLoopbackHost("127.5.5.5"));
    EXPECT_TRUE(isLoopbackHost("::1"));
    EXPECT_TRUE(isLoopbackHost("localhost"));
    EXPECT_FALSE(isLoopbackHost("10.0.0.1"));
    EXPECT_TRUE(isIpLiteral("10.0.0.1"));
    EXPECT_TRUE(isIpLiteral("::1"));
    EXPECT_FALSE(isIpLiteral("example.org"));
}

TEST(Utf8, TellsValidFromInvalid) {
    EXPECT_TRUE(isValidUtf8("plain"));
    EXPECT_TRUE(isValidUtf8("\xc3\xa9t\xc3\xa9"));
    EXPECT_FALSE(isValidUtf8("\xff"));
    EXPECT_FALSE(isValidUtf8("\xc3"));
    EXPECT_FALSE(isValidUtf8("\xc0\xaf"));      // overlong
    EXPECT_FALSE(isValidUtf8("\xed\xa0\x80"));  // surrogate
}

TEST(Base64, RoundTripsEveryLength) {
    std::string data;
    for (int i = 0; i < 300; ++i) {
        data.push_back(static_cast<char>(i * 37));
        auto enc = base64Encode(data);
        auto dec = base64Decode(enc);
        ASSERT_TRUE(dec);
        EXPECT_EQ(*dec, data);
    }
    EXPECT_EQ(base64Encode("foob"), "Zm9vYg==");
    EXPECT_FALSE(base64Decode("abc"));
    EXPECT_FALSE(base64Decode("ab=c"));
}

TEST(Random, GivesDistinctHexStrings) {
    auto a = randomHex(16), b = randomHex(16);
    EXPECT_EQ(a.size(), 32u);
    EXPECT_NE(a, b);
    EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
}
