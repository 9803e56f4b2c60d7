#pragma once
/// hpc-daemonctl's commands: each adds its subcommand to the app and runs it.

#include "service_manager.hpp"
#include "store.hpp"

#include <CLI/CLI.hpp>

#include <chrono>
#include <functional>
#include <iostream>
#include <optional>

namespace hpc::ctl {

/// A registered command: run() is called when its subcommand was parsed and
/// returns the exit code.
struct Command {
    CLI::App* app = nullptr;
    std::function<int()> run;
};

Command addSetupCommand(CLI::App& parent);
Command addStartCommand(CLI::App& parent);
Command addStopCommand(CLI::App& parent);
Command addRestartCommand(CLI::App& parent);
Command addStatusCommand(CLI::App& parent);
Command addListCommand(CLI::App& parent);
Command addLogsCommand(CLI::App& parent);
Command addAuditCommand(CLI::App& parent);
Command addJobsCommand(CLI::App& parent);
Command addConfigCommand(CLI::App& parent);
Command addRotateKeyCommand(CLI::App& parent);
Command addRemoveCommand(CLI::App& parent);
Command addSkillsCommand(CLI::App& parent);

/// The profile a command acts on (--daemon-id, or the only one) and its files.
struct Target {
    Profile profile;
    Paths paths;
};
/// Throws hpc::Error(NotFound) naming the profiles when the choice is unclear.
Target resolveTarget(const std::string& daemonId);

/// "2026-11-30 01:58:39" (UTC) for epoch seconds; "-" for 0 or less.
std::string utcTime(double epoch);

/// Starts the daemon in the mode decideMode() picks and waits until it
/// answers on D-Bus. Prints what it did. Returns the exit code.
int startDaemon(const Target& target);
/// Stops the daemon and waits until it is gone; what it did goes to
/// `report`, problems to stderr. Returns the exit code.
int stopDaemon(const Target& target, std::ostream& report = std::cout,
               std::optional<std::chrono::seconds> drainLimit = std::nullopt);

}  // namespace hpc::ctl
