#pragma once
/// The MCP tools' backend in hpc-agent: the platform's HTTP routes and agent
/// connections (one per running call, pooled), and persistent shells, each
/// on a connection and a thread of its own that keeps reading (so the
/// platform's keep-alive pings are answered between calls).

#include "agent_client.hpp"
#include "mcp_session.hpp"

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace hpc::agent {

/// How a backend reaches the platform: over the network (hpc-agent), or
/// inside the relay's own process (its /mcp endpoint).
struct PlatformAccess {
    /// A new agent connection. Throws hpc::Error (Unauthorized, Unavailable).
    std::function<std::unique_ptr<AgentClient>()> connect;
    /// The user's daemons (GET /hpc/daemons).
    std::function<boost::json::array()> listDaemons;
    /// Through the platform's URL with these options.
    static PlatformAccess remote(AgentOptions options);
};

class PlatformBackend final : public mcp::Backend {
public:
    explicit PlatformBackend(PlatformAccess access) : m_access(std::move(access)) {}
    explicit PlatformBackend(AgentOptions options) : m_access(PlatformAccess::remote(std::move(options))) {}
    /// Hangs up every shell still open.
    ~PlatformBackend() override;

    boost::json::array listDaemons() override;
    boost::json::object request(const std::string& daemonId, const std::string& type, boost::json::object payload,
                                const mcp::CallContext& ctx) override;
    boost::json::object runCommand(const std::string& daemonId, const ExecSpec& spec, std::size_t maxOutputBytes,
                                   const mcp::CallContext& ctx) override;
    std::optional<boost::json::object> waitJob(const std::string& daemonId, const std::string& jobId,
                                               double timeoutSeconds, const mcp::CallContext& ctx) override;
    boost::json::object writeFile(const std::string& daemonId, const std::string& path, std::string_view content,
                                  std::optional<std::uint32_t> mode, const mcp::CallContext& ctx) override;
    std::pair<std::string, boost::json::object> shellOpen(const std::string& daemonId, unsigned cols, unsigned rows,
                                                          const std::optional<std::string>& cwd) override;
    mcp::ShellOutput shellExchange(const std::string& session, const std::string& input, const mcp::ShellWait& wait,
                                   const mcp::CallContext& ctx) override;
    void shellResize(const std::string& session, unsigned cols, unsigned rows) override;
    void shellClose(const std::string& session) override;

    static constexpr std::size_t kMaxShells = 16;
    /// Output kept between reads; beyond it the shell is held back (no credit).
    static constexpr std::size_t kShellBuffer = 1 << 20;

private:
    class Shell;
    template <class F>
    auto withConnection(F&& f) -> decltype(f(std::declval<AgentClient&>()));
    std::shared_ptr<Shell> shell(const std::string& session);

    static constexpr std::size_t kMaxIdle = 8;
    struct Idle {
        std::unique_ptr<AgentClient> client;
        std::chrono::steady_clock::time_point since;
    };
    PlatformAccess m_access;
    std::mutex m_lock;
    std::vector<Idle> m_idle;
    std::map<std::string, std::shared_ptr<Shell>> m_shells;
    std::uint64_t m_shellSeq = 0;
};

}  // namespace hpc::agent
