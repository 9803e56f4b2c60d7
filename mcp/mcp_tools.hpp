#pragma once
/// The tools, resources and prompts an MCP session offers, over a Backend:
/// every transport shares them (docs/mcp.md lists each with its schema).

#include "mcp_session.hpp"

#include <boost/json.hpp>

#include <optional>
#include <string>

namespace hpc::mcp {

/// tools/list's `tools`: name, title, description, inputSchema,
/// outputSchema and annotations of each.
const boost::json::array& toolList();

/// Runs one tool: a CallToolResult ({content, structuredContent, isError}).
/// A failure of the tool (daemon offline, path not allowed, job unknown)
/// is an isError result naming the cause; arguments that do not fit the
/// schema throw RpcFailure(kInvalidParams), as does an unknown tool.
boost::json::object callTool(Backend& backend, const std::string& name, const boost::json::object& arguments,
                             const CallContext& ctx);

/// A terminal's output as plain text: escape sequences (colours, cursor
/// moves, titles) and carriage returns before newlines removed, other
/// control bytes but tab and newline dropped, and bytes that are not UTF-8
/// replaced by U+FFFD, so it is a valid JSON string.
std::string terminalText(std::string_view raw);

/// A JSON-RPC error a handler raises.
struct RpcFailure {
    int code;
    std::string message;
};

/// resources/list: each daemon's skill, `hpc://daemons/{id}/skill`.
boost::json::object listResources(Backend& backend);
/// resources/templates/list.
boost::json::object resourceTemplates();
/// A job's resource, `hpc://daemons/{daemon}/jobs/{job_id}`.
struct JobUri {
    std::string daemon;
    std::string jobId;
};
/// nullopt when `uri` is not a job's resource.
std::optional<JobUri> parseJobUri(const std::string& uri);
/// resources/read. Throws RpcFailure(kResourceNotFound) for an unknown URI.
boost::json::object readResource(Backend& backend, const std::string& uri);
/// prompts/list and prompts/get: `use_cluster`, the daemon's skill as a
/// first message.
boost::json::object listPrompts();
boost::json::object getPrompt(Backend& backend, const std::string& name, const boost::json::object& arguments);

}  // namespace hpc::mcp
