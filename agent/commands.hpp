#pragma once
/// hpc-agent's commands, one file each: each adds its subcommand to the app
/// and runs it. Also what several of them share: the platform options, and
/// connecting again for the commands that wait.

#include "agent_client.hpp"

#include <CLI/CLI.hpp>

#include <boost/json.hpp>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace hpc::agent {

/// Exit status for failures of hpc-agent itself (like ssh's 255), so they
/// cannot be mistaken for the remote command's own status.
constexpr int kExitAgentError = 255;
/// `wait` gave up at its --timeout.
constexpr int kExitWaitTimedOut = 254;
/// `exec`'s output was cut at the result's limit (without --allow-truncated).
constexpr int kExitOutputTruncated = 253;

/// A registered command: run() is called when its subcommand was parsed and
/// returns the exit code; it throws hpc::Error (or any exception) on failure.
struct Command {
    CLI::App* app = nullptr;
    std::function<int()> run;
};

Command addLoginCommand(CLI::App& parent);
Command addLogoutCommand(CLI::App& parent);
Command addDaemonsCommand(CLI::App& parent);
Command addExecCommand(CLI::App& parent);
Command addShellCommand(CLI::App& parent);
Command addSubmitCommand(CLI::App& parent);
Command addJobsCommand(CLI::App& parent);
Command addStatusCommand(CLI::App& parent);
Command addCancelCommand(CLI::App& parent);
Command addWaitCommand(CLI::App& parent);
Command addEventsCommand(CLI::App& parent);
Command addLogsCommand(CLI::App& parent);
Command addCpCommand(CLI::App& parent);
Command addMcpCommand(CLI::App& parent);
Command addWhoamiCommand(CLI::App& parent);

/// Writes all of `data` (any bytes, as it came, unbuffered) to `fd`: a
/// job's or a command's output. Throws hpc::Error(Internal) when it cannot.
void writeOutput(int fd, std::string_view data);

/// --url, --token-file, --ca-file, --proxy, each with its environment variable.
struct PlatformOptions {
    std::string url;
    std::string tokenFile;
    std::string caFile;
    std::string proxy;
};

/// Adds the platform options to a subcommand, after its own.
void addPlatformOptions(CLI::App* app, PlatformOptions& options);
/// The platform URL. Throws hpc::Error(BadRequest) when missing or malformed.
Url platformUrl(const PlatformOptions& options);
/// The CA file to verify the platform with; empty: the system CAs.
std::string caFile(const PlatformOptions& options);
/// The proxy setting (--proxy, else HPC_AGENT_PROXY, else "": HTTPS_PROXY and
/// NO_PROXY decide). Throws hpc::Error(BadRequest) when it is not a proxy URL.
std::string proxySetting(const PlatformOptions& options);
/// URL, token and CA for AgentClient::connect. Throws hpc::Error(BadRequest)
/// when the URL or the token is missing or unreadable.
AgentOptions agentOptions(const PlatformOptions& options);

/// Runs `body` on a connection; when a connection that was up breaks (a
/// relay restart, a network blip), connects again with backoff and runs it
/// again. A first connection is tried three times (about 2 s), as a relay
/// failing over can cut a handshake short, then is an error (a wrong URL
/// should not look like a wait). Past `deadline`, returns `timeoutCode`.
int runReconnecting(const PlatformOptions& options, std::optional<std::chrono::steady_clock::time_point> deadline,
                    int timeoutCode, const std::function<int(AgentClient&)>& body);

/// A field of a daemon's answer as text: "-" when absent or null, JSON when
/// not a string.
inline std::string fieldText(const boost::json::object& o, const char* key) {
    auto* v = o.if_contains(key);
    if (!v || v->is_null()) return "-";
    if (v->is_string()) return std::string(v->get_string());
    return boost::json::serialize(*v);
}

}  // namespace hpc::agent
