// A command through MCP (`hpc-agent mcp` on stdio, `hpc-agent mcp --listen`
// over streamable HTTP, and the relay's /mcp over HTTPS; tool run_command)
// beside the same command through the hpc-agent library (exec), on one relay
// and daemon on 127.0.0.1, in interleaved rounds; then 50 tool calls at once
// in one MCP session beside 50 execs in flight on one connection; then the
// memory of idle HTTP sessions, in `--listen` and in the relay. Prints
// figures; asserts nothing about time.
//
// usage: mcp_bench [calls per round=200] [rounds=5]
#include "harness.hpp"
#include "proc_stats.hpp"

#include "protocol.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/json.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <stdexcept>
#include <variant>

using namespace hpc;
using namespace hpc::test;
using Clock = std::chrono::steady_clock;
namespace json = boost::json;
namespace asio = boost::asio;
namespace http = boost::beast::http;

extern char** environ;

namespace {

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(static_cast<double>(v.size()) * p))];
}

double median(std::vector<double> v) { return percentile(std::move(v), 0.5); }

/// hpc-agent mcp as a child, spoken to line by line.
class McpChild {
public:
    McpChild(const std::vector<std::string>& env) {
        int in[2], out[2];
        if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, in[0], 0);
        posix_spawn_file_actions_adddup2(&fa, out[1], 1);
        std::string bin = Harness::binary("hpc-agent");
        std::vector<std::string> envs = env;
        for (char** e = environ; *e; ++e) envs.emplace_back(*e);
        std::vector<char*> argv{bin.data(), const_cast<char*>("mcp"), nullptr};
        std::vector<char*> envp;
        envp.reserve(envs.size() + 1);
        for (auto& e : envs) envp.push_back(e.data());
        envp.push_back(nullptr);
        if (posix_spawn(&m_pid, bin.c_str(), &fa, nullptr, argv.data(), envp.data()) != 0)
            throw std::runtime_error("cannot start hpc-agent mcp");
        posix_spawn_file_actions_destroy(&fa);
        ::close(in[0]);
        ::close(out[1]);
        m_in = in[1];
        m_out = out[0];
    }
    ~McpChild() {
        ::close(m_in);  // end of input: the server exits
        int status = 0;
        ::waitpid(m_pid, &status, 0);
        ::close(m_out);
    }
    pid_t pid() const { return m_pid; }

    void send(const json::value& msg) {
        std::string line = json::serialize(msg) + "\n";
        for (std::size_t done = 0; done < line.size();) {
            auto n = ::write(m_in, line.data() + done, line.size() - done);
            if (n <= 0) throw std::runtime_error("hpc-agent mcp closed its input");
            done += static_cast<std::size_t>(n);
        }
    }
    /// The next message it printed.
    json::object next() {
        for (;;) {
            if (auto nl = m_buffer.find('\n'); nl != std::string::npos) {
                auto v = json::parse(std::string_view(m_buffer).substr(0, nl));
                m_buffer.erase(0, nl + 1);
                return v.as_object();
            }
            pollfd p{m_out, POLLIN, 0};
            if (::poll(&p, 1, 60000) <= 0) throw std::runtime_error("hpc-agent mcp said nothing for 60 s");
            char buf[65536];
            auto n = ::read(m_out, buf, sizeof buf);
            if (n <= 0) throw std::runtime_error("hpc-agent mcp exited");
            m_buffer.append(buf, static_cast<std::size_t>(n));
        }
    }
    json::object call(std::int64_t id, const std::string& method, json::object params) {
        send(json::object{{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}});
        auto r = next();
        if (!r.contains("result")) throw std::runtime_error("error: " + json::serialize(r));
        return r.at("result").as_object();
    }

private:
    pid_t m_pid = -1;
    int m_in = -1, m_out = -1;
    std::string m_buffer;
};

/// One MCP session over streamable HTTP, on a kept-alive connection:
/// http://127.0.0.1:PORT/mcp, or https:// verified with `caFile` and
/// authenticated with `bearer`.
class McpHttp {
public:
    explicit McpHttp(const std::string& url, const std::string& caFile = {}, const std::string& bearer = {})
        : m_bearer(bearer) {
        bool tls = url.rfind("https://", 0) == 0;
        auto start = url.find("://") + 3;
        auto hostPort = url.substr(start, url.find('/', start) - start);
        m_host = hostPort;
        auto colon = hostPort.rfind(':');
        asio::ip::tcp::resolver resolver(m_ioc);
        auto endpoints = resolver.resolve(hostPort.substr(0, colon), hostPort.substr(colon + 1));
        if (tls) {
            m_tls.load_verify_file(caFile);
            auto& stream = m_stream.emplace<Tls>(m_ioc, m_tls);
            stream.set_verify_mode(asio::ssl::verify_peer);
            asio::connect(stream.next_layer(), endpoints);
            stream.handshake(asio::ssl::stream_base::client);
        } else {
            asio::connect(std::get<asio::ip::tcp::socket>(m_stream), endpoints);
        }
        post(json::object{{"jsonrpc", "2.0"},
                          {"id", 0},
                          {"method", "initialize"},
                          {"params",
                           {{"protocolVersion", "2025-11-25"},
                            {"capabilities", json::object{}},
                            {"clientInfo", {{"name", "mcp_bench"}, {"version", "1"}}}}}});
        post(json::object{{"jsonrpc", "2.0"}, {"method", "notifications/initialized"}});
    }
    /// A request's result (the answer comes as JSON: no progress is asked for).
    json::object call(std::int64_t id, const std::string& method, json::object params) {
        auto r = post(json::object{{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}});
        if (!r.contains("result")) throw std::runtime_error("error: " + json::serialize(r));
        return r.at("result").as_object();
    }

private:
    using Tls = boost::beast::ssl_stream<asio::ip::tcp::socket>;

    json::object post(const json::object& msg) {
        http::request<http::string_body> req{http::verb::post, "/mcp", 11};
        req.set(http::field::host, m_host);
        req.set(http::field::content_type, "application/json");
        req.set(http::field::accept, "application/json, text/event-stream");
        if (!m_bearer.empty()) req.set(http::field::authorization, "Bearer " + m_bearer);
        if (!m_session.empty()) req.set("Mcp-Session-Id", m_session);
        req.body() = json::serialize(msg);
        req.prepare_payload();
        http::response<http::string_body> res;
        std::visit(
            [&](auto& stream) {
                http::write(stream, req);
                http::read(stream, m_buffer, res);
            },
            m_stream);
        if (auto id = res["Mcp-Session-Id"]; !id.empty()) m_session = std::string(id);
        if (res.result_int() == 202) return {};
        if (res.result_int() != 200) throw std::runtime_error("HTTP " + std::to_string(res.result_int()));
        return json::parse(res.body()).as_object();
    }

    asio::io_context m_ioc;
    asio::ssl::context m_tls{asio::ssl::context::tls_client};
    std::variant<asio::ip::tcp::socket, Tls> m_stream{std::in_place_index<0>, m_ioc};
    boost::beast::flat_buffer m_buffer;
    std::string m_host, m_session, m_bearer;
};

json::object runTrue() { return {{"name", "run_command"}, {"arguments", {{"daemon", "bench"}, {"command", "true"}}}}; }

}  // namespace

int main(int argc, char** argv) try {
    std::size_t perRound = argc > 1 ? std::stoul(argv[1]) : 200;
    std::size_t rounds = argc > 2 ? std::stoul(argv[2]) : 5;
    Harness h;
    h.setRelayArgs({"--signin-limit", "0"});  // a user per 16 idle sessions signs in
    h.startRelay();
    auto work = h.dir() / "work";
    auto setup = h.setupDaemon("bench", "bench@example.org", {work.string()});
    if (setup.status != 0) throw std::runtime_error("setup failed: " + setup.err);
    h.startDaemon("bench");
    auto token = h.login("bench@example.org");
    if (!h.waitConnected(token, "bench")) throw std::runtime_error("the daemon did not connect");

    auto client = h.agent(token);
    agent::ExecSpec spec;
    spec.command = "true";  // as run_command sends it: bash -c
    McpChild mcp({"HPC_AGENT_URL=" + h.url(), "HPC_AGENT_TOKEN=" + token.reveal(), "HPC_AGENT_CA=" + h.caFile()});
    SpawnOptions listen;
    listen.argv = {Harness::binary("hpc-agent"), "mcp", "--listen", "127.0.0.1:0", "--no-http-auth", "--ready-fd", "3"};
    listen.envOverrides = {"HPC_AGENT_URL=" + h.url(), "HPC_AGENT_TOKEN=" + token.reveal(),
                           "HPC_AGENT_CA=" + h.caFile()};
    listen.outputFile = (h.dir() / "mcp-http.log").string();
    auto server = spawnReady(listen, 3, std::chrono::seconds(60), h.dir() / "mcp-http.log");
    std::string url = server.line.substr(0, server.line.find('\n'));
    McpHttp web(url);
    McpHttp relay(h.url() + "/mcp", h.caFile(), token.reveal());
    std::int64_t id = 0;
    mcp.call(++id, "initialize",
             {{"protocolVersion", "2025-06-18"},
              {"capabilities", json::object{}},
              {"clientInfo", {{"name", "mcp_bench"}, {"version", "1"}}}});
    mcp.send(json::object{{"jsonrpc", "2.0"}, {"method", "notifications/initialized"}});
    for (int i = 0; i < 50; ++i) {  // warm up both paths
        client->exec("bench", spec);
        if (mcp.call(++id, "tools/call", runTrue()).at("isError").as_bool() ||
            web.call(++id, "tools/call", runTrue()).at("isError").as_bool() ||
            relay.call(++id, "tools/call", runTrue()).at("isError").as_bool())
            throw std::runtime_error("run_command failed");
    }

    // Interleaved rounds: the machine's load hits both paths alike.
    std::vector<double> execAll, mcpAll, webAll, relayAll, execRoundP50, mcpRoundP50, webRoundP50, relayRoundP50;
    for (std::size_t r = 0; r < rounds; ++r) {
        std::vector<double> e, m, w, x;
        for (std::size_t i = 0; i < perRound; ++i) {
            auto t0 = Clock::now();
            client->exec("bench", spec);
            e.push_back(ms(Clock::now() - t0));
        }
        for (std::size_t i = 0; i < perRound; ++i) {
            auto t0 = Clock::now();
            mcp.call(++id, "tools/call", runTrue());
            m.push_back(ms(Clock::now() - t0));
        }
        for (std::size_t i = 0; i < perRound; ++i) {
            auto t0 = Clock::now();
            web.call(++id, "tools/call", runTrue());
            w.push_back(ms(Clock::now() - t0));
        }
        for (std::size_t i = 0; i < perRound; ++i) {
            auto t0 = Clock::now();
            relay.call(++id, "tools/call", runTrue());
            x.push_back(ms(Clock::now() - t0));
        }
        relayRoundP50.push_back(median(x));
        relayAll.insert(relayAll.end(), x.begin(), x.end());
        execRoundP50.push_back(median(e));
        mcpRoundP50.push_back(median(m));
        webRoundP50.push_back(median(w));
        execAll.insert(execAll.end(), e.begin(), e.end());
        mcpAll.insert(mcpAll.end(), m.begin(), m.end());
        webAll.insert(webAll.end(), w.begin(), w.end());
    }

    // 50 at once: tool calls in one MCP session, beside execs in flight on one connection.
    constexpr int kConcurrent = 50;
    std::vector<double> mcpBurst, execBurst;
    double mcpBurstWall = 0, execBurstWall = 0;
    {
        std::map<std::int64_t, Clock::time_point> sent;
        auto t0 = Clock::now();
        for (int i = 0; i < kConcurrent; ++i) {
            sent[++id] = Clock::now();
            mcp.send(json::object{{"jsonrpc", "2.0"}, {"id", id}, {"method", "tools/call"}, {"params", runTrue()}});
        }
        for (int i = 0; i < kConcurrent; ++i) {
            auto r = mcp.next();
            if (!r.contains("result") || r.at("result").at("isError").as_bool())
                throw std::runtime_error("a concurrent call failed: " + json::serialize(r));
            mcpBurst.push_back(ms(Clock::now() - sent.at(r.at("id").as_int64())));
        }
        mcpBurstWall = ms(Clock::now() - t0);
    }
    {
        std::map<std::string, Clock::time_point> sent;
        auto t0 = Clock::now();
        for (int i = 0; i < kConcurrent; ++i) {
            protocol::Envelope e;
            e.type = "exec";
            e.id = "burst" + std::to_string(i);
            e.daemonId = "bench";
            e.payload = spec.toPayload();
            sent[e.id] = Clock::now();
            client->ws().sendText(protocol::serialize(e));
        }
        for (int i = 0; i < kConcurrent; ++i) {
            auto f = client->ws().read(std::chrono::seconds(60));
            if (!f) throw std::runtime_error("the execs in flight stalled");
            auto env = std::get<protocol::Envelope>(protocol::parse(f->data, protocol::kMaxResponseBytes));
            if (!env.ok) throw std::runtime_error("exec failed: " + env.errorMessage);
            execBurst.push_back(ms(Clock::now() - sent.at(env.replyTo)));
        }
        execBurstWall = ms(Clock::now() - t0);
    }
    auto mcpStats = procStats(mcp.pid());

    // Idle HTTP sessions: what each holds in the server (initialized, nothing running).
    constexpr int kIdleSessions = 15;  // beside `web`: the server's 16
    auto before = procStats(server.child.pid());
    std::vector<std::unique_ptr<McpHttp>> idle;
    idle.reserve(kIdleSessions);
    for (int i = 0; i < kIdleSessions; ++i) idle.push_back(std::make_unique<McpHttp>(url));
    auto after = procStats(server.child.pid());
    // And in the relay: sessions of several users (16 each at most), each
    // opened on a connection that is then closed.
    constexpr int kRelaySessions = 256, kPerAgent = 16;
    auto relayBefore = procStats(h.relayPid());
    for (int agentNo = 0; agentNo < kRelaySessions / kPerAgent; ++agentNo) {
        auto agentToken = h.login("idle" + std::to_string(agentNo) + "@example.org");
        for (int i = 0; i < kPerAgent; ++i) McpHttp(h.url() + "/mcp", h.caFile(), agentToken.reveal());
    }
    auto relayAfter = procStats(h.relayPid());

    std::string load;
    std::getline(std::ifstream("/proc/loadavg"), load);
    std::printf("load average %s\n", load.c_str());
    std::printf("`true` through hpc-agent -> relay -> daemon, %zu rounds of %zu calls each way, interleaved\n\n",
                rounds, perRound);
    std::printf("| path | p50 ms | p99 ms | median of round p50s |\n|---|---|---|---|\n");
    std::printf("| hpc-agent library (exec) | %.3f | %.3f | %.3f |\n", median(execAll), percentile(execAll, 0.99),
                median(execRoundP50));
    std::printf("| MCP stdio (run_command) | %.3f | %.3f | %.3f |\n", median(mcpAll), percentile(mcpAll, 0.99),
                median(mcpRoundP50));
    std::printf("| MCP streamable HTTP (--listen) | %.3f | %.3f | %.3f |\n", median(webAll), percentile(webAll, 0.99),
                median(webRoundP50));
    std::printf("| MCP through the relay (/mcp, HTTPS) | %.3f | %.3f | %.3f |\n", median(relayAll),
                percentile(relayAll, 0.99), median(relayRoundP50));
    std::printf("\nMCP overhead at p50: stdio %.3f ms, HTTP %.3f ms, relay /mcp %.3f ms\n\n",
                median(mcpRoundP50) - median(execRoundP50), median(webRoundP50) - median(execRoundP50),
                median(relayRoundP50) - median(execRoundP50));
    std::printf("%d at once | wall ms | p50 ms | p99 ms |\n|---|---|---|---|\n", kConcurrent);
    std::printf("| MCP stdio, one session | %.1f | %.1f | %.1f |\n", mcpBurstWall, median(mcpBurst),
                percentile(mcpBurst, 0.99));
    std::printf("| hpc-agent library, one connection | %.1f | %.1f | %.1f |\n", execBurstWall, median(execBurst),
                percentile(execBurst, 0.99));
    std::printf("\nhpc-agent mcp after the burst: RSS %.1f MiB, private %.1f MiB, CPU %.2f s\n",
                static_cast<double>(mcpStats.rssKiB) / 1024.0, static_cast<double>(mcpStats.privateKiB) / 1024.0,
                mcpStats.cpuSeconds);
    std::printf(
        "hpc-agent mcp --listen: RSS %.1f MiB with 1 session, %.1f MiB with %d more idle ones (%.0f KiB each)\n",
        static_cast<double>(before.rssKiB) / 1024.0, static_cast<double>(after.rssKiB) / 1024.0, kIdleSessions,
        static_cast<double>(after.rssKiB - before.rssKiB) / kIdleSessions);
    std::printf("hpc-relay: RSS %.1f MiB, %.1f MiB with %d more idle /mcp sessions (%.1f KiB each)\n",
                static_cast<double>(relayBefore.rssKiB) / 1024.0, static_cast<double>(relayAfter.rssKiB) / 1024.0,
                kRelaySessions, static_cast<double>(relayAfter.rssKiB - relayBefore.rssKiB) / kRelaySessions);
    return 0;
} catch (const std::exception& e) {
    std::cerr << "mcp_bench: " << e.what() << "\n";
    return 1;
}
