#pragma once
/// `hpc-agent shell DAEMON`: an interactive terminal on the daemon's machine,
/// like ssh: raw mode, the window size at start and on every resize, the
/// remote shell's exit status, and the local terminal restored on every way
/// out.

#include "agent_client.hpp"

#include <functional>
#include <memory>

namespace hpc::agent {

/// A new connection to the platform.
using ConnectAgent = std::function<std::unique_ptr<AgentClient>()>;

/// Runs the session: a new shell, or with `attach` the daemon's shell
/// session of that name (pty.attach, from the oldest output the daemon
/// kept). Returns the remote shell's exit status (128+N for signal N). When
/// the connection breaks, or the daemon's link does, it connects again and
/// attaches the session from the last byte it received, for up to a minute.
/// Throws hpc::Error when the session cannot be opened or is lost.
int runShell(const ConnectAgent& connect, const std::string& daemonId, PtySpec spec, const std::string& attach = {});

}  // namespace hpc::agent
