// hpc-agent mcp: an MCP server on stdio for a local agent process
// (`claude mcp add hpc -- hpc-agent mcp`), with the platform connection as
// its backend. docs/mcp.md.
#include "commands.hpp"

#include "errors.hpp"
#include "log.hpp"
#include "mcp_backend.hpp"

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
        "Tools: list_daemons, run_command, shell_open, shell_send, shell_read, shell_resize, shell_close, read_file, "
        "write_file, submit_job, job_status, list_jobs, cancel_job, wait_job. Resources: each "
        "daemon's skill, hpc://daemons/{daemon}/skill; prompt use_cluster. The platform URL and token come from the "
        "same options and environment as the other commands (HPC_AGENT_URL, HPC_AGENT_TOKEN). See docs/mcp.md.");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runMcp(*o); }};
}

}  // namespace hpc::agent
