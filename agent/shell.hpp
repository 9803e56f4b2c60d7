#pragma once
/// `hpc-agent shell DAEMON`: an interactive terminal on the daemon's machine,
/// like ssh: raw mode, the window size at start and on every resize, the
/// remote shell's exit status, and the local terminal restored on every way
/// out.

#include "agent_client.hpp"

namespace hpc::agent {

/// Runs the session; returns the remote shell's exit status (128+N for
/// signal N). Throws hpc::Error when the session cannot be opened or is lost.
int runShell(AgentClient& client, const std::string& daemonId, PtySpec spec);

}  // namespace hpc::agent
