// What an HTTP proxy costs (issue 14 item 1): exec round trip and PTY
// stream through tinyproxy (CONNECT tunnels for the agent and for the
// daemon's link) beside the direct path, in one run, the two taking turns.
// Prints figures; asserts nothing about time.
#include "harness.hpp"
#include "proc_stats.hpp"
#include "tiny_proxy.hpp"

#include <algorithm>
#include <cstdio>
#include <iostream>

using namespace hpc;
using namespace hpc::test;
using Clock = std::chrono::steady_clock;

namespace {

double percentile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

struct Path {
    std::string name;
    std::string daemonId;
    std::unique_ptr<agent::AgentClient> client;
    std::vector<double> execMs;
    std::vector<double> streamMbps;
    std::vector<double> echoUs;
};

void execRound(Path& p, std::size_t n) {
    agent::ExecSpec spec;
    spec.argv = {"true"};
    for (std::size_t i = 0; i < n; ++i) {
        auto t0 = Clock::now();
        p.client->exec(p.daemonId, spec);
        p.execMs.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
}

void streamRound(Path& p, const std::string& megabytes) {
    agent::PtySpec spec;
    spec.shell = "/bin/sh";
    spec.credit = 4 << 20;
    auto pty = p.client->openPty(p.daemonId, spec);
    auto t0 = Clock::now();
    p.client->ptyInput(pty.channel, "exec sh -c 'head -c " + megabytes + "M /dev/zero | base64'\r");
    std::size_t bytes = 0, unacked = 0;
    while (true) {
        auto e = p.client->nextPtyEvent(std::chrono::seconds(30));
        if (!e) throw std::runtime_error("the stream stalled on " + p.name);
        if (e->channel != pty.channel) continue;
        if (e->kind == agent::PtyEvent::Kind::Exit) break;
        bytes += e->data.size();
        unacked += e->data.size();
        if (unacked >= spec.credit / 4) {
            p.client->ptyAck(p.daemonId, pty.channel, unacked);
            unacked = 0;
        }
    }
    p.streamMbps.push_back(static_cast<double>(bytes) / 1e6 / std::chrono::duration<double>(Clock::now() - t0).count());
}

void echoRound(Path& p, int n) {
    agent::PtySpec spec;
    spec.shell = "/bin/sh";
    spec.credit = 4 << 20;
    auto pty = p.client->openPty(p.daemonId, spec);
    p.client->ptyInput(pty.channel, "exec sh -c 'stty raw -echo; cat'\r");
    auto settle = Clock::now() + std::chrono::milliseconds(500);
    while (Clock::now() < settle) p.client->nextPtyEvent(std::chrono::milliseconds(50));
    for (int i = 0; i < n; ++i) {
        auto t0 = Clock::now();
        p.client->ptyInput(pty.channel, "x");
        while (true) {
            auto e = p.client->nextPtyEvent(std::chrono::seconds(5));
            if (!e) throw std::runtime_error("no echo on " + p.name);
            if (e->kind == agent::PtyEvent::Kind::Output && e->channel == pty.channel) break;
        }
        p.echoUs.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    p.client->ptyClose(p.daemonId, pty.channel);
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t execs = argc > 1 ? std::stoul(argv[1]) : 1000;
    std::string megabytes = argc > 2 ? argv[2] : "50";
    int rounds = argc > 3 ? std::max(1, std::stoi(argv[3])) : 4;
    int echoes = 1000;
    Harness h;
    h.startRelay();
    TinyProxy proxy(h.dir() / "proxy");
    auto work = (h.dir() / "w").string();
    // Both daemons under one user: each path is agent -> relay -> daemon;
    // "via proxy" tunnels both the agent's and the daemon's connection.
    if (h.setupDaemon("direct", "bench@example.org", {work}, {"--proxy", "direct"}).status != 0 ||
        h.setupDaemon("proxied", "bench@example.org", {work}, {"--proxy", proxy.url()}).status != 0) {
        std::cerr << "setup failed\n";
        return 1;
    }
    h.startDaemon("direct");
    h.startDaemon("proxied");
    auto token = h.login("bench@example.org");
    if (!h.waitConnected(token, "direct") || !h.waitConnected(token, "proxied")) {
        std::cerr << "a daemon did not connect\n" << h.daemonLog("proxied");
        return 1;
    }
    auto options = [&](const std::string& proxySetting) {
        agent::AgentOptions o{*parseUrl(h.url()), token, h.caFile()};
        o.proxy = proxySetting;
        return o;
    };
    std::vector<Path> paths(2);
    paths[0].name = "direct";
    paths[0].daemonId = "direct";
    paths[0].client = agent::AgentClient::connect(options("direct"));
    paths[1].name = "via tinyproxy (agent and daemon)";
    paths[1].daemonId = "proxied";
    paths[1].client = agent::AgentClient::connect(options(proxy.url()));
    for (auto& p : paths) {
        execRound(p, 50);  // warm up
        p.execMs.clear();
    }
    double proxyCpu0 = procStats(proxy.pid()).cpuSeconds;
    for (int r = 0; r < rounds; ++r)
        for (auto& p : paths) {
            execRound(p, execs / static_cast<std::size_t>(rounds));
            streamRound(p, megabytes);
            echoRound(p, echoes / rounds);
        }
    double proxyCpu = procStats(proxy.pid()).cpuSeconds - proxyCpu0;

    std::printf(
        "\nexec of `true` and a PTY stream (head -c %sM /dev/zero | base64), 127.0.0.1, TLS;\n"
        "%d rounds, the paths taking turns; stream: median of the rounds\n\n",
        megabytes.c_str(), rounds);
    std::printf("%-36s %8s %10s %10s %12s %12s %12s\n", "path", "execs", "p50 ms", "p99 ms", "stream MB/s",
                "echo p50 us", "echo p99 us");
    for (auto& p : paths)
        std::printf("%-36s %8zu %10.3f %10.3f %12.1f %12.1f %12.1f\n", p.name.c_str(), p.execMs.size(),
                    percentile(p.execMs, 0.5), percentile(p.execMs, 0.99), percentile(p.streamMbps, 0.5),
                    percentile(p.echoUs, 0.5), percentile(p.echoUs, 0.99));
    std::printf("\nratios (proxy / direct): exec p50 %.2fx, stream %.2fx, echo p50 %.2fx\n",
                percentile(paths[1].execMs, 0.5) / percentile(paths[0].execMs, 0.5),
                percentile(paths[1].streamMbps, 0.5) / percentile(paths[0].streamMbps, 0.5),
                percentile(paths[1].echoUs, 0.5) / percentile(paths[0].echoUs, 0.5));
    std::printf("tinyproxy CPU for the whole run: %.2f s; CONNECTs it logged: %d\n", proxyCpu,
                proxy.connects("127.0.0.1:" + std::to_string(h.port())));
    return 0;
}
