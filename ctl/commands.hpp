#pragma once
/// hpc-daemonctl's commands: each adds its subcommand to the app and runs it.

#include <CLI/CLI.hpp>

#include <functional>

namespace hpc::ctl {

/// A registered command: run() is called when its subcommand was parsed and
/// returns the exit code.
struct Command {
    CLI::App* app = nullptr;
    std::function<int()> run;
};

Command addSetupCommand(CLI::App& parent);

}  // namespace hpc::ctl
