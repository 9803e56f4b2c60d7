// hpc-agent daemons: the user's daemons, whether they are connected, and
// what a connected one warns of; --show: one daemon's details and the skill
// its owner registered, which an agent reads before it works there.
#include "commands.hpp"

#include "platform_client.hpp"
#include "util.hpp"

#include <cstdio>
#include <iostream>
#include <memory>

namespace hpc::agent {
namespace {

struct DaemonsOptions {
    PlatformOptions platform;
    std::string show;
    bool asJson = false;
};

/// Text from the platform goes to a terminal: no escape sequences.
std::string terminalSafe(std::string text) {
    for (char& c : text)
        if ((static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') || c == 0x7f) c = '?';
    return text;
}

std::string stringField(const boost::json::object& o, const char* key) {
    auto* v = o.if_contains(key);
    return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

bool isConnected(const boost::json::object& o) {
    auto* v = o.if_contains("connected");
    return v && v->is_bool() && v->get_bool();
}

int showDaemon(net::PlatformClient& platform, const Secret& token, const std::string& daemonId, bool asJson) {
    if (!isValidDaemonId(daemonId))
        throw Error(ErrorCode::BadRequest, "--show: daemon ids are 1-64 characters of A-Z a-z 0-9 . _ -");
    auto d = platform.getDaemon(token, daemonId);
    if (asJson) {
        std::cout << boost::json::serialize(d) << "\n";
        return 0;
    }
    std::string dirs;
    if (auto* a = d.if_contains("allowed_dirs"); a && a->is_array())
        for (const auto& dir : a->get_array())
            if (dir.is_string()) dirs += (dirs.empty() ? "" : " ") + std::string(dir.get_string());
    std::string skill = stringField(d, "skill");
    std::string version = stringField(d, "skill_version");
    std::string text = stringField(d, "skill_text");
    auto line = [](const char* label, const std::string& value) {
        std::printf("%-15s %s\n", label, terminalSafe(value.empty() ? "-" : value).c_str());
    };
    line("daemon:", daemonId);
    line("state:", isConnected(d) ? "connected" : "offline");
    line("cluster:", stringField(d, "cluster_name"));
    line("host:", stringField(d, "hostname"));
    line("scheduler:", stringField(d, "scheduler"));
    line("allowed dirs:", dirs.empty() ? "unrestricted" : dirs);
    line("job workdir:", stringField(d, "job_workdir"));
    line("daemon version:", stringField(d, "version"));
    line("skill:", skill + (version.empty() ? "" : " (" + version + ")"));
    if (auto w = stringField(d, "warning"); !w.empty()) line("WARNING:", w);
    std::printf("\n");
    if (!text.empty()) {
        std::cout << terminalSafe(text) << (text.back() == '\n' ? "" : "\n");
        return 0;
    }
    // Registered by a client that sent the skill's name only.
    std::cout << "(No skill text was registered for this daemon: its setup predates skill texts. Running\n"
                 "hpc-daemonctl setup again on its machine registers it.)\n";
    if (auto instructions = stringField(d, "instructions"); !instructions.empty())
        std::cout << "\nInstructions from this machine's owner:\n\n" << terminalSafe(instructions) << "\n";
    return 0;
}

int runDaemons(const DaemonsOptions& o) {
    auto opts = agentOptions(o.platform);
    net::PlatformClient platform(opts.url, net::ClientOptions{opts.caFile, std::chrono::seconds(15), opts.proxy});
    if (!o.show.empty()) return showDaemon(platform, opts.token, o.show, o.asJson);
    auto list = platform.listDaemons(opts.token);
    if (o.asJson) {
        std::cout << boost::json::serialize(list) << "\n";
        return 0;
    }
    std::printf("%-24s %-10s %-20s %s\n", "DAEMON", "STATE", "CLUSTER", "HOST");
    for (const auto& d : list) {
        const auto& obj = d.as_object();
        auto str = [&](const char* k) {
            auto* v = obj.if_contains(k);
            return v && v->is_string() ? std::string(v->get_string()) : std::string("-");
        };
        std::printf("%-24s %-10s %-20s %s\n", str("daemon_id").c_str(), isConnected(obj) ? "connected" : "offline",
                    str("cluster_name").c_str(), str("hostname").c_str());
        // The daemon's own warning: its state cut short by its size cap, or its disk full.
        if (auto* w = obj.if_contains("warning"); w && w->is_string() && !w->get_string().empty())
            std::printf("  WARNING: %s\n", std::string(w->get_string()).c_str());
    }
    return 0;
}

}  // namespace

Command addDaemonsCommand(CLI::App& parent) {
    auto o = std::make_shared<DaemonsOptions>();
    auto* app = parent.add_subcommand("daemons", "List your daemons and whether they are connected, or show one");
    app->footer(
        "With --show DAEMON: the daemon's details (state, cluster, host, scheduler, allowed directories, job\n"
        "directory) and then its skill: the guidance its owner registered with hpc-daemonctl setup (a built-in\n"
        "skill such as mila-hpc, or the owner's description of the machine), followed by the owner's\n"
        "instructions. Read it before working on that machine. --json prints the platform's registration as\n"
        "is (docs/protocol.md, section 1.4), the text in \"skill_text\" and its version in \"skill_version\".\n\n"
        "Examples:\n  hpc-agent daemons\n  hpc-agent daemons --show mila\n  hpc-agent daemons --show mila --json");
    app->add_option("--show", o->show, "print one daemon's details and its skill text");
    app->add_flag("--json", o->asJson, "print JSON");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runDaemons(*o); }};
}

}  // namespace hpc::agent
