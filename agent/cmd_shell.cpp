// hpc-agent shell: an interactive terminal on a daemon's machine (shell.cpp).
#include "commands.hpp"

#include "shell.hpp"

#include <cstdlib>
#include <memory>

namespace hpc::agent {
namespace {

struct ShellOptions {
    PlatformOptions platform;
    std::string daemonId;
    std::string cwd;
    std::string program;
    std::string attach;
};

int runShellCommand(const ShellOptions& o) {
    PtySpec spec;
    if (!o.cwd.empty()) spec.cwd = o.cwd;
    if (!o.program.empty()) spec.shell = o.program;
    if (const char* term = std::getenv("TERM")) spec.env.emplace_back("TERM", term);
    return runShell([&o] { return AgentClient::connect(agentOptions(o.platform)); }, o.daemonId, spec, o.attach);
}

}  // namespace

Command addShellCommand(CLI::App& parent) {
    auto o = std::make_shared<ShellOptions>();
    auto* app =
        parent.add_subcommand("shell", "An interactive shell on a daemon's machine, like ssh: hpc-agent shell DAEMON");
    app->add_option("daemon", o->daemonId, "daemon id")->required();
    app->add_option("--cwd", o->cwd, "starting directory (default: the daemon's first allowed directory)");
    app->add_option("--shell", o->program, "the shell to run (default: the daemon user's $SHELL, else bash)");
    app->add_option("--attach", o->attach,
                    "take up the shell session SESSION of yours instead of starting one (its output the daemon "
                    "kept comes first)")
        ->type_name("SESSION");
    app->footer(
        "The terminal is put in raw mode and restored on exit; its size follows the window. "
        "Exits with the remote shell's status.\n"
        "When the connection breaks (or the platform restarts, or the daemon's own link drops), the shell goes on "
        "running on the daemon for its grace period (30 s by default), and hpc-agent shell connects again and "
        "takes it up where it left off, byte for byte, for up to a minute; after that it prints the "
        "`hpc-agent shell --attach SESSION DAEMON` that takes it up by hand.");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runShellCommand(*o); }};
}

}  // namespace hpc::agent
