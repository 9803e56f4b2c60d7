// hpc-agent mcp: an MCP server on stdio for a local agent process
// (`claude mcp add hpc -- hpc-agent mcp`), with the platform connection as
// its backend. docs/mcp.md.
#include "commands.hpp"

#include "errors.hpp"
#include "log.hpp"
#include "mcp_backend.hpp"
#include "mcp_http.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
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
    std::string listen;  ///< [HOST:]PORT: streamable HTTP instead of stdio
    std::string httpTokenFile;
    bool noHttpAuth = false;
    int readyFd = -1;
};

int runHttp(const McpOptions& o, mcp::SessionOptions sessionOptions) {
    McpHttpOptions h;
    h.session = std::move(sessionOptions);
    h.readyFd = o.readyFd;
    auto colon = o.listen.rfind(':');
    std::string port = colon == std::string::npos ? o.listen : o.listen.substr(colon + 1);
    if (colon != std::string::npos) h.host = o.listen.substr(0, colon);
    if (h.host.size() > 2 && h.host.front() == '[' && h.host.back() == ']')
        h.host = h.host.substr(1, h.host.size() - 2);
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
        std::stoul(port) > 65535)
        throw Error(ErrorCode::BadRequest, "--listen takes [HOST:]PORT, e.g. 127.0.0.1:8765; not " + o.listen);
    h.port = static_cast<unsigned short>(std::stoul(port));
    if (o.noHttpAuth == !o.httpTokenFile.empty())
        throw Error(ErrorCode::BadRequest,
                    "--listen needs --http-token-file FILE (clients send its content as a bearer token) or "
                    "--no-http-auth (any process of any user on this machine may then use your token)");
    if (!o.httpTokenFile.empty()) {
        std::ifstream in(o.httpTokenFile);
        std::string token;
        if (!in || !std::getline(in, token) || token.size() < 16)
            throw Error(ErrorCode::BadRequest, "--http-token-file " + o.httpTokenFile +
                                                   ": cannot read a token of at least 16 characters from it");
        h.bearer = Secret(std::move(token));
    }
    auto agent = agentOptions(o.platform);
    return serveMcpHttp(h, [agent] { return std::make_unique<PlatformBackend>(agent); });
}

int runMcp(const McpOptions& o) {
    mcp::SessionOptions options;
    options.serverVersion = HPC_VERSION;
    if (!o.listen.empty()) return runHttp(o, std::move(options));
    // stdout carries the protocol: every word for a person goes to stderr.
    PlatformBackend backend(agentOptions(o.platform));
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
    auto* app =
        parent.add_subcommand("mcp", "Serve the Model Context Protocol (stdio, or HTTP on loopback) for an AI agent");
    app->footer(
        "Speaks MCP (JSON-RPC 2.0, revisions 2025-11-25, 2025-06-18 and 2025-03-26) on standard input and output, "
        "one message per line, for an agent that starts it as a local server:\n"
        "  claude mcp add hpc -- hpc-agent mcp\n"
        "or, with --listen, over MCP's streamable HTTP transport on a loopback address, for an agent that connects "
        "to a URL (one endpoint, /mcp; Host and Origin must be loopback names):\n"
        "  hpc-agent mcp --listen 127.0.0.1:8765 --http-token-file ~/.hpc-mcp-token\n"
        "Tools: list_daemons, run_command, shell_open, shell_send, shell_read, shell_resize, shell_close, read_file, "
        "write_file, submit_job, job_status, list_jobs, cancel_job, wait_job. Resources: each "
        "daemon's skill, hpc://daemons/{daemon}/skill, and each job, hpc://daemons/{daemon}/jobs/{job_id} (subscribe "
        "to be told when it ends); prompt use_cluster. The platform URL and token come from the "
        "same options and environment as the other commands (HPC_AGENT_URL, HPC_AGENT_TOKEN). See docs/mcp.md.");
    app->add_option("--listen", o->listen,
                    "serve MCP's streamable HTTP transport at http://HOST:PORT/mcp instead of stdio; HOST is "
                    "127.0.0.1 (the default), localhost or ::1, never another address; PORT 0 picks a free one");
    app->add_option("--http-token-file", o->httpTokenFile,
                    "with --listen: HTTP clients must send this file's first line (16 characters or more) as "
                    "\"Authorization: Bearer TOKEN\"");
    app->add_flag("--no-http-auth", o->noHttpAuth,
                  "with --listen: no bearer token; any local process may then act with your platform token");
    app->add_option("--ready-fd", o->readyFd,
                    "with --listen: write the endpoint's URL and a newline to this inherited descriptor once "
                    "listening, then close it")
        ->check(CLI::NonNegativeNumber);
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runMcp(*o); }};
}

}  // namespace hpc::agent
