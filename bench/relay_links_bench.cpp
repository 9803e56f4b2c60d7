// How many idle daemon links one hpc-relay process holds in 1 GiB: N daemons
// (each registered with its own API key) open their TLS WebSocket to the
// relay and stay idle; the relay's RSS before and after gives the memory per
// link, and its CPU over a quiet window what idle links cost. Beside it, the
// same links through a real HAProxy in TCP mode (the balancer of
// docs/relay.md), whose RSS per connection is the peer figure: what a
// mature C proxy spends holding one such connection (without TLS state,
// which passes through it).
//
//   relay_links_bench [LINKS] [QUIET_SECONDS]     (default 3000, 10)
#include "haproxy.hpp"
#include "harness.hpp"
#include "proc_stats.hpp"

#include "platform_client.hpp"
#include "process.hpp"
#include "util.hpp"
#include "ws_client.hpp"

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;

int main(int argc, char** argv) try {
    int links = argc > 1 ? std::stoi(argv[1]) : 3000;
    int quiet = argc > 2 ? std::stoi(argv[2]) : 10;
    raiseOpenFileLimit();
    Harness h;
    // Links must stay idle for the whole run: no keep-alive closes them.
    h.setRelayArgs({"--ws-idle-seconds", "3600"});
    h.startRelay();
    HaProxy lb(h.dir() / "haproxy", {h.port()});
    std::printf("relay_links_bench: %d idle daemon links, each its own registration and API key\n", links);
    std::printf("load average at start: ");
    std::fflush(stdout);
    std::system("cut -d' ' -f1-3 /proc/loadavg");

    // Registrations, as hpc-daemonctl setup makes them.
    Secret access = h.login("links@example.org");
    net::ClientOptions options{h.caFile(), std::chrono::seconds(30)};
    net::PlatformClient platform(*parseUrl(h.url()), options);
    std::vector<Secret> keys;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < links; ++i) {
        keys.push_back(platform.createApiKey(access));
        platform.registerDaemon(keys.back(), "d" + std::to_string(i), {{"hostname", "bench"}});
    }
    std::printf("  registered %d daemons in %.1f s\n", links,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

    auto measure = [&](const char* label, const std::string& url, pid_t extra, const char* extraName) {
        auto mib = [](long kib) { return static_cast<double>(kib) / 1024.0; };
        long before = procStats(h.relayPid()).rssKiB;
        long extraBefore = extra ? procStats(extra).rssKiB : 0;
        std::vector<std::unique_ptr<net::WsClient>> open;
        open.reserve(static_cast<std::size_t>(links));
        auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < links; ++i)
            open.push_back(net::WsClient::connect(*parseUrl(url), "/hpc/daemons/d" + std::to_string(i) + "/ws",
                                                  keys[static_cast<std::size_t>(i)].reveal(), options));
        double connectS = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        // Every link is in the relay's table before the figures are read.
        waitUntil([&] { return platform.listDaemons(access).size() == static_cast<std::size_t>(links); }, 60s);
        std::this_thread::sleep_for(1s);
        long after = procStats(h.relayPid()).rssKiB;
        long extraAfter = extra ? procStats(extra).rssKiB : 0;
        double cpu0 = procStats(h.relayPid()).cpuSeconds;
        std::this_thread::sleep_for(std::chrono::seconds(quiet));
        double cpu = procStats(h.relayPid()).cpuSeconds - cpu0;
        double perLink = static_cast<double>(after - before) / links;
        std::printf("\n%s: %d links opened in %.1f s (%.0f/s)\n", label, links, connectS, links / connectS);
        // The second time, the relay's allocator hands out the memory the
        // first links gave back: its RSS says nothing new.
        if (!extra)
            std::printf("  hpc-relay RSS %.1f MiB -> %.1f MiB: %.1f KiB per link, %.0f links per GiB\n", mib(before),
                        mib(after), perLink, perLink > 0 ? 1024.0 * 1024.0 / perLink : 0);
        std::printf("  hpc-relay CPU while the links idle: %.2f%% of a core over %d s\n", 100.0 * cpu / quiet, quiet);
        if (extra) {
            double extraPer = static_cast<double>(extraAfter - extraBefore) / links;
            std::printf("  %s RSS %.1f MiB -> %.1f MiB: %.1f KiB per connection (the peer: TCP only, no TLS state)\n",
                        extraName, mib(extraBefore), mib(extraAfter), extraPer);
        }
        for (auto& c : open) c->close();
        open.clear();
        // The relay notices every close before the next measurement.
        waitUntil(
            [&] {
                for (const auto& d : platform.listDaemons(access))
                    if (d.as_object().at("connected").as_bool()) return false;
                return true;
            },
            60s);
    };
    measure("direct", h.url(), 0, nullptr);
    measure("through haproxy (mode tcp)", lb.url(), lb.pid(), "haproxy");
    return 0;
} catch (const std::exception& e) {
    std::cerr << "relay_links_bench: " << e.what() << "\n";
    return 1;
}
