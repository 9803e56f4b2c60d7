// hpc-agent: the agent-side command line. See `hpc-agent --help`.
#include "agent_client.hpp"
#include "shell.hpp"

#include "errors.hpp"
#include "platform_client.hpp"

#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

using namespace hpc;
namespace json = boost::json;

namespace {

/// Exit status for failures of hpc-agent itself (like ssh's 255), so they
/// cannot be mistaken for the remote command's own status.
constexpr int kExitAgentError = 255;

struct Common {
    std::string url;
    std::string tokenFile;
    std::string caFile;
};

std::string envOr(const char* name, const std::string& current) {
    if (!current.empty()) return current;
    const char* v = std::getenv(name);
    return v ? v : "";
}

Url platformUrl(const Common& c) {
    std::string text = envOr("HPC_AGENT_URL", c.url);
    if (text.empty()) throw Error(ErrorCode::BadRequest, "no platform URL: pass --url or set HPC_AGENT_URL");
    std::string err;
    auto u = parseUrl(text, &err);
    if (!u) throw Error(ErrorCode::BadRequest, "bad platform URL: " + err);
    return *u;
}

Secret token(const Common& c) {
    if (!c.tokenFile.empty()) {
        std::ifstream in(c.tokenFile);
        std::string t;
        if (!in || !std::getline(in, t) || t.empty())
            throw Error(ErrorCode::BadRequest, "cannot read a token from " + c.tokenFile);
        return Secret(t);
    }
    const char* t = std::getenv("HPC_AGENT_TOKEN");
    if (!t || !*t)
        throw Error(ErrorCode::BadRequest, "no token: set HPC_AGENT_TOKEN or pass --token-file (see hpc-agent login)");
    return Secret(t);
}

agent::AgentOptions agentOptions(const Common& c) {
    return agent::AgentOptions{platformUrl(c), token(c), envOr("HPC_AGENT_CA", c.caFile)};
}

void addCommon(CLI::App* app, Common& c) {
    app->add_option("--url", c.url, "platform URL (or HPC_AGENT_URL)");
    app->add_option("--token-file", c.tokenFile, "file holding the access token (or HPC_AGENT_TOKEN)");
    app->add_option("--ca-file", c.caFile, "CA certificate of the platform (or HPC_AGENT_CA; default: system CAs)");
}

int runLogin(const Common& c, const std::string& email, const std::string& tokenOut) {
    net::PlatformClient platform(platformUrl(c), net::ClientOptions{envOr("HPC_AGENT_CA", c.caFile)});
    Secret signin = platform.requestCode(email);
    if (::isatty(STDIN_FILENO)) std::cerr << "Enter the code sent to " << email << ": " << std::flush;
    std::string code;
    if (!std::getline(std::cin, code) || code.empty()) throw Error(ErrorCode::BadRequest, "no code on standard input");
    Secret access = platform.verifyCode(signin, Secret(code));
    if (tokenOut.empty()) {
        std::cout << access.reveal() << "\n";
        return 0;
    }
    int fd = ::open(tokenOut.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) throw Error(ErrorCode::BadRequest, "cannot write " + tokenOut);
    std::string line = access.reveal() + "\n";
    bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    ::close(fd);
    if (!ok) throw Error(ErrorCode::Internal, "short write to " + tokenOut);
    std::cerr << "token written to " << tokenOut << "\n";
    return 0;
}

int runDaemons(const Common& c, bool asJson) {
    auto opts = agentOptions(c);
    net::PlatformClient platform(opts.url, net::ClientOptions{opts.caFile});
    auto list = platform.listDaemons(opts.token);
    if (asJson) {
        std::cout << json::serialize(list) << "\n";
        return 0;
    }
    std::printf("%-24s %-10s %-20s %s\n", "DAEMON", "STATE", "CLUSTER", "HOST");
    for (const auto& d : list) {
        const auto& o = d.as_object();
        auto str = [&](const char* k) {
            auto* v = o.if_contains(k);
            return v && v->is_string() ? std::string(v->get_string()) : std::string("-");
        };
        bool up = o.if_contains("connected") && o.at("connected").is_bool() && o.at("connected").get_bool();
        std::printf("%-24s %-10s %-20s %s\n", str("daemon_id").c_str(), up ? "connected" : "offline",
                    str("cluster_name").c_str(), str("hostname").c_str());
    }
    return 0;
}

int runExec(const Common& c, const std::string& daemonId, agent::ExecSpec spec, bool passStdin, bool asJson) {
    if (passStdin) {
        std::string data((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
        spec.stdinData = std::move(data);
    }
    auto client = agent::AgentClient::connect(agentOptions(c));
    double wait = spec.timeoutSeconds.value_or(300) + 60;
    auto outcome = client->exec(daemonId, spec, std::chrono::milliseconds(static_cast<long long>(wait * 1000)));
    if (asJson) {
        std::cout << json::serialize(outcome.raw) << "\n";
    } else {
        std::cout << outcome.out << std::flush;
        std::cerr << outcome.err << std::flush;
        if (outcome.outTruncated || outcome.errTruncated) std::cerr << "hpc-agent: output was truncated\n";
        if (outcome.timedOut) std::cerr << "hpc-agent: the command timed out and was killed\n";
    }
    return outcome.shellStatus();
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "hpc-agent: run commands on machines served by hpc-daemond, through the platform.\n"
        "The platform URL, token and CA come from --url/--token-file/--ca-file or HPC_AGENT_URL,\n"
        "HPC_AGENT_TOKEN, HPC_AGENT_CA. (There is no --token flag: a token on a command line is visible\n"
        "to every user of the machine.)"};
    app.footer("Exit status: exec returns the remote command's status (128+N for signal N); 255 means hpc-agent "
               "itself failed.");
    app.require_subcommand(1);
    Common common;

    auto* login = app.add_subcommand("login", "Sign in with an email code and print an access token");
    std::string email, tokenOut;
    login->add_option("--email", email, "email address")->required();
    login->add_option("--write-token", tokenOut, "write the token to this file (0600) instead of stdout");
    addCommon(login, common);

    auto* daemons = app.add_subcommand("daemons", "List your daemons and whether they are connected");
    bool daemonsJson = false;
    daemons->add_flag("--json", daemonsJson, "print JSON");
    addCommon(daemons, common);

    auto* exec = app.add_subcommand("exec", "Run a command on a daemon's machine: hpc-agent exec DAEMON -- CMD [ARGS...]");
    std::string daemonId, cwd, shell;
    std::vector<std::string> cmd;
    double timeout = 0;
    bool passStdin = false, execJson = false;
    exec->add_option("daemon", daemonId, "daemon id")->required();
    exec->add_option("cmd", cmd, "command and arguments (after --)");
    exec->add_option("--shell,-c", shell, "run this shell command line instead of an argv");
    exec->add_option("--cwd", cwd, "working directory (default: the daemon's first allowed directory)");
    exec->add_option("--timeout", timeout, "seconds before the command's process group is killed (default 300)")
        ->check(CLI::PositiveNumber);
    exec->add_flag("--stdin", passStdin, "send this program's standard input to the command");
    exec->add_flag("--json", execJson, "print the full result as JSON");
    addCommon(exec, common);

    auto* shellCmd = app.add_subcommand("shell", "An interactive shell on a daemon's machine, like ssh: hpc-agent shell DAEMON");
    std::string shellDaemon, shellCwd, shellProgram;
    shellCmd->add_option("daemon", shellDaemon, "daemon id")->required();
    shellCmd->add_option("--cwd", shellCwd, "starting directory (default: the daemon's first allowed directory)");
    shellCmd->add_option("--shell", shellProgram, "the shell to run (default: the daemon user's $SHELL, else bash)");
    shellCmd->footer("The terminal is put in raw mode and restored on exit; its size follows the window. "
                     "Exits with the remote shell's status.");
    addCommon(shellCmd, common);

    CLI11_PARSE(app, argc, argv);
    try {
        if (shellCmd->parsed()) {
            agent::PtySpec spec;
            if (!shellCwd.empty()) spec.cwd = shellCwd;
            if (!shellProgram.empty()) spec.shell = shellProgram;
            if (const char* term = std::getenv("TERM")) spec.env.emplace_back("TERM", term);
            auto client = agent::AgentClient::connect(agentOptions(common));
            return agent::runShell(*client, shellDaemon, spec);
        }
        if (login->parsed()) return runLogin(common, email, tokenOut);
        if (daemons->parsed()) return runDaemons(common, daemonsJson);
        agent::ExecSpec spec;
        if (!shell.empty() && !cmd.empty()) throw Error(ErrorCode::BadRequest, "give a command after -- or --shell, not both");
        if (shell.empty() && cmd.empty()) throw Error(ErrorCode::BadRequest, "no command: hpc-agent exec DAEMON -- CMD...");
        spec.command = shell;
        spec.argv = cmd;
        if (!cwd.empty()) spec.cwd = cwd;
        if (timeout > 0) spec.timeoutSeconds = timeout;
        return runExec(common, daemonId, std::move(spec), passStdin, execJson);
    } catch (const Error& e) {
        std::cerr << "hpc-agent: " << e.what() << "\n";
        return kExitAgentError;
    } catch (const std::exception& e) {
        std::cerr << "hpc-agent: " << e.what() << "\n";
        return kExitAgentError;
    }
}
