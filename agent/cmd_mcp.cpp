// hpc-agent mcp: an MCP server on stdio for a local agent process
// (`claude mcp add hpc -- hpc-agent mcp`), with the platform connection as
// its backend. docs/mcp.md.
#include "commands.hpp"

#include "errors.hpp"
#include "log.hpp"
#include "mcp_session.hpp"
#include "platform_client.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace json = boost::json;
using namespace std::chrono_literals;

namespace hpc::agent {
namespace {

/// The tools' backend: connections to the platform's agent endpoint, one
/// per running call, kept for the next call when it ended well.
class PlatformBackend final : public mcp::Backend {
public:
    explicit PlatformBackend(AgentOptions options) : m_options(std::move(options)) {}

    json::array listDaemons() override {
        net::PlatformClient platform(m_options.url,
                                     net::ClientOptions{m_options.caFile, std::chrono::seconds(15), m_options.proxy});
        return platform.listDaemons(m_options.token);
    }

    json::object request(const std::string& daemonId, const std::string& type, json::object payload,
                         const mcp::CallContext&) override {
        return withConnection(
            [&](AgentClient& c) { return c.request(daemonId, type, std::move(payload), std::chrono::hours(24 * 7)); });
    }

    std::optional<json::object> waitJob(const std::string& daemonId, const std::string& jobId, double timeoutSeconds,
                                        const mcp::CallContext& ctx) override {
        auto start = std::chrono::steady_clock::now();
        auto deadline = start + std::chrono::milliseconds(static_cast<std::int64_t>(timeoutSeconds * 1000));
        auto lastProgress = start;
        // Every 10 s, or five times over a shorter wait.
        auto progressEvery = std::clamp<std::chrono::steady_clock::duration>(
            std::chrono::milliseconds(static_cast<std::int64_t>(timeoutSeconds * 200)), 1s, 10s);
        return withConnection([&](AgentClient& c) -> std::optional<json::object> {
            // In short slices, so that a cancellation is seen and progress reported.
            for (;;) {
                auto now = std::chrono::steady_clock::now();
                if (ctx.isCancelled() || now >= deadline) return std::nullopt;
                auto slice = std::min<std::chrono::steady_clock::duration>(deadline - now, 1s);
                auto cb = c.waitForJob(daemonId, jobId, std::chrono::duration_cast<std::chrono::milliseconds>(slice));
                if (cb) {
                    c.ackCallback(cb->callbackId);
                    return cb->raw;
                }
                now = std::chrono::steady_clock::now();
                if (ctx.progress && now - lastProgress >= progressEvery) {
                    lastProgress = now;
                    double waited = std::chrono::duration<double>(now - start).count();
                    ctx.progress(waited, timeoutSeconds, "job " + jobId + " has not ended yet");
                }
            }
        });
    }

private:
    template <class F>
    auto withConnection(F&& f) -> decltype(f(std::declval<AgentClient&>())) {
        std::unique_ptr<AgentClient> c;
        {
            std::lock_guard lock(m_lock);
            // The platform closes a connection that answered no ping for its
            // idle limit (60 s by default; frames are read only inside calls).
            auto now = std::chrono::steady_clock::now();
            std::erase_if(m_idle, [&](const Idle& i) { return now - i.since > kMaxIdleTime; });
            if (!m_idle.empty()) {
                c = std::move(m_idle.back().client);
                m_idle.pop_back();
            }
        }
        if (!c) c = AgentClient::connect(m_options);
        auto result = f(*c);  // a broken connection throws, and is not kept
        std::lock_guard lock(m_lock);
        if (m_idle.size() < kMaxIdle) m_idle.push_back({std::move(c), std::chrono::steady_clock::now()});
        return result;
    }

    static constexpr std::size_t kMaxIdle = 8;
    static constexpr auto kMaxIdleTime = 20s;
    struct Idle {
        std::unique_ptr<AgentClient> client;
        std::chrono::steady_clock::time_point since;
    };
    AgentOptions m_options;
    std::mutex m_lock;
    std::vector<Idle> m_idle;
};

struct McpOptions {
    PlatformOptions platform;
};

int runMcp(const McpOptions& o) {
    // stdout carries the protocol: every word for a person goes to stderr.
    PlatformBackend backend(agentOptions(o.platform));
    mcp::SessionOptions options;
    options.serverVersion = HPC_VERSION;
    mcp::Session session(
        backend,
        [](const json::value& msg) {
            std::string line = json::serialize(msg);
            line += '\n';
            std::fwrite(line.data(), 1, line.size(), stdout);
            std::fflush(stdout);
        },
        options);
    std::string line;
    while (std::getline(std::cin, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        session.receive(line);
    }
    // The client closed stdin: it is gone. Calls still running are cancelled;
    // one that cannot be interrupted (a command running to its timeout) does
    // not hold the process.
    if (!session.shutdown(5s)) std::quick_exit(0);
    return 0;
}

}  // namespace

Command addMcpCommand(CLI::App& parent) {
    auto o = std::make_shared<McpOptions>();
    auto* app = parent.add_subcommand("mcp", "Serve the Model Context Protocol on stdio, for an AI agent");
    app->footer(
        "Speaks MCP (JSON-RPC 2.0, revisions 2025-11-25, 2025-06-18 and 2025-03-26) on standard input and output, "
        "one message per line, for an agent that starts it as a local server:\n"
        "  claude mcp add hpc -- hpc-agent mcp\n"
        "Tools: list_daemons, run_command, submit_job, job_status, list_jobs, cancel_job, wait_job. Resources: each "
        "daemon's skill, hpc://daemons/{daemon}/skill; prompt use_cluster. The platform URL and token come from the "
        "same options and environment as the other commands (HPC_AGENT_URL, HPC_AGENT_TOKEN). See docs/mcp.md.");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runMcp(*o); }};
}

}  // namespace hpc::agent
