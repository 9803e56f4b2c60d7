// hpc-agent: the agent-side command line. See `hpc-agent --help`.
#include "util.hpp"
#include "agent_client.hpp"
#include "shell.hpp"

#include "errors.hpp"
#include "platform_client.hpp"

#include "backoff.hpp"

#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

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

std::string str(const json::object& o, const char* key) {
    auto* v = o.if_contains(key);
    if (!v || v->is_null()) return "-";
    if (v->is_string()) return std::string(v->get_string());
    return json::serialize(*v);
}

std::string readScript(const std::string& path) {
    std::ostringstream text;
    if (path == "-") {
        text << std::cin.rdbuf();
    } else {
        std::ifstream in(path, std::ios::binary);
        if (!in) throw Error(ErrorCode::BadRequest, "cannot read the script " + path);
        text << in.rdbuf();
    }
    if (text.str().empty()) throw Error(ErrorCode::BadRequest, "the script " + path + " is empty");
    return text.str();
}

/// One line for a callback: daemon, job, state, exit.
std::string describe(const agent::JobCallback& cb) {
    std::string how = cb.exitCode ? "exit " + std::to_string(*cb.exitCode)
                      : cb.signal ? "signal " + std::to_string(*cb.signal)
                                  : "no exit code";
    return cb.daemonId + " " + cb.jobId + " " + cb.state + " (" + how + ")";
}

constexpr int kExitWaitTimedOut = 254;

/// Runs `body` on a connection; when a connection that was up breaks (a
/// relay restart, a network blip), connects again with backoff and runs it
/// again. A first connection that fails is an error at once (a wrong URL
/// should not look like a wait). Past `deadline`, returns `timeoutCode`.
int runReconnecting(const Common& c, std::optional<std::chrono::steady_clock::time_point> deadline, int timeoutCode,
                    const std::function<int(agent::AgentClient&)>& body) {
    Backoff backoff(std::chrono::seconds(1), std::chrono::seconds(30), std::chrono::milliseconds(500));
    bool connectedOnce = false;
    for (;;) {
        try {
            auto client = agent::AgentClient::connect(agentOptions(c));
            connectedOnce = true;
            backoff.reset();
            return body(*client);
        } catch (const Error& e) {
            if (e.code() != ErrorCode::Unavailable || !connectedOnce) throw;
            auto delay = backoff.next();
            if (deadline && std::chrono::steady_clock::now() + delay >= *deadline) return timeoutCode;
            std::cerr << "hpc-agent: " << e.what() << "; reconnecting in " << delay.count() << " ms\n";
            std::this_thread::sleep_for(delay);
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    hpc::adoptProgramName(argc > 0 ? argv[0] : nullptr);
    CLI::App app{
        "hpc-agent: run commands on machines served by hpc-daemond, through the platform.\n"
        "The platform URL, token and CA come from --url/--token-file/--ca-file or HPC_AGENT_URL,\n"
        "HPC_AGENT_TOKEN, HPC_AGENT_CA. (There is no --token flag: a token on a command line is visible\n"
        "to every user of the machine.)"};
    app.set_version_flag("--version", "hpc-agent " HPC_VERSION);
    app.footer("Exit status: exec returns the remote command's status (128+N for signal N); wait returns 0 for a "
               "COMPLETED job, 1 for any other final state, 254 on --timeout; 255 means hpc-agent itself failed.");
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

    // ---- jobs ----
    std::string jobDaemon, jobId;
    bool jobJson = false;
    auto* submit = app.add_subcommand(
        "submit", "Submit a batch job: hpc-agent submit DAEMON SCRIPT [-- SBATCH-OPTIONS...]; prints the job id");
    std::string scriptPath, jobName, jobCwd, contextJson;
    std::vector<std::string> sbatchArgs, jobEnv;
    double timeLimit = 0;
    submit->add_option("daemon", jobDaemon, "daemon id")->required();
    submit->add_option("script", scriptPath, "the job's script (\"-\": standard input)")->required();
    submit->add_option("sbatch", sbatchArgs, "options for sbatch after -- (SLURM daemons only; long options as --name=value)");
    submit->add_option("--name", jobName, "job name");
    submit->add_option("--cwd", jobCwd, "working directory (default: the daemon's first allowed directory)");
    submit->add_option("--time-limit", timeLimit, "seconds after which the job is stopped (TIMEOUT); SLURM rounds up to minutes")
        ->check(CLI::PositiveNumber);
    submit->add_option("--env", jobEnv, "NAME=value for the job's environment (repeatable)");
    submit->add_option("--context", contextJson, "JSON returned with the job's callback");
    submit->add_flag("--json", jobJson, "print the full result as JSON");
    addCommon(submit, common);

    auto* jobs = app.add_subcommand("jobs", "List your jobs on a daemon, newest first");
    int jobsLimit = 100;
    jobs->add_option("daemon", jobDaemon, "daemon id")->required();
    jobs->add_option("--limit", jobsLimit, "at most this many")->check(CLI::Range(1, 10000))->capture_default_str();
    jobs->add_flag("--json", jobJson, "print JSON");
    addCommon(jobs, common);

    auto* status = app.add_subcommand("status", "Show one of your jobs with the end of its output");
    status->add_option("daemon", jobDaemon, "daemon id")->required();
    status->add_option("job", jobId, "job id")->required();
    status->add_flag("--json", jobJson, "print JSON");
    addCommon(status, common);

    auto* cancel = app.add_subcommand("cancel", "Cancel one of your jobs (scancel, or TERM then KILL for local jobs)");
    cancel->add_option("daemon", jobDaemon, "daemon id")->required();
    cancel->add_option("job", jobId, "job id")->required();
    addCommon(cancel, common);

    auto* waitCmd = app.add_subcommand(
        "wait", "Block until a job's callback arrives (at once if it already has); prints its state and output tails");
    double waitTimeout = 0;
    waitCmd->add_option("daemon", jobDaemon, "daemon id")->required();
    waitCmd->add_option("job", jobId, "job id")->required();
    waitCmd->add_option("--timeout", waitTimeout, "give up after this many seconds (default: wait forever)")
        ->check(CLI::PositiveNumber);
    waitCmd->add_flag("--json", jobJson, "print the callback as JSON");
    waitCmd->footer("A connection that breaks (a platform restart, a network blip) is made again with backoff; the "
                    "callback is kept by the platform meanwhile.\n"
                    "Exit status: 0 when the job COMPLETED, 1 when it ended in any other state, 254 when --timeout "
                    "passed first, 255 when hpc-agent failed.");
    addCommon(waitCmd, common);

    auto* events = app.add_subcommand(
        "events", "Print job callbacks as they arrive (those missed while offline first), one JSON object a line");
    int eventCount = 0;
    double eventTimeout = 0;
    bool noAck = false;
    events->add_option("--count", eventCount, "stop after this many")->check(CLI::PositiveNumber);
    events->add_option("--timeout", eventTimeout, "stop after this many seconds without one")->check(CLI::PositiveNumber);
    events->add_flag("--no-ack", noAck, "do not acknowledge them (they are sent again next time)");
    addCommon(events, common);

    CLI11_PARSE(app, argc, argv);
    try {
        if (submit->parsed()) {
            agent::JobSpec spec;
            spec.script = readScript(scriptPath);
            if (!jobName.empty()) spec.name = jobName;
            if (!jobCwd.empty()) spec.cwd = jobCwd;
            if (timeLimit > 0) spec.timeLimitSeconds = timeLimit;
            spec.sbatchArgs = sbatchArgs;
            for (const auto& e : jobEnv) {
                auto eq = e.find('=');
                if (eq == std::string::npos || eq == 0) throw Error(ErrorCode::BadRequest, "--env needs NAME=value");
                spec.env.emplace_back(e.substr(0, eq), e.substr(eq + 1));
            }
            if (!contextJson.empty()) {
                json::error_code ec;
                spec.context = json::parse(contextJson, ec);
                if (ec) throw Error(ErrorCode::BadRequest, "--context is not JSON: " + ec.message());
            }
            auto client = agent::AgentClient::connect(agentOptions(common));
            auto r = client->submitJob(jobDaemon, spec);
            if (jobJson)
                std::cout << json::serialize(r) << "\n";
            else
                std::cout << str(r, "job_id") << "\n";
            return 0;
        }
        if (jobs->parsed()) {
            auto client = agent::AgentClient::connect(agentOptions(common));
            auto list = client->listJobs(jobDaemon, jobsLimit);
            if (jobJson) {
                std::cout << json::serialize(list) << "\n";
                return 0;
            }
            std::printf("%-18s %-10s %-5s %-8s %-10s %s\n", "JOB", "STATE", "EXIT", "BACKEND", "SCHED-ID", "NAME");
            for (const auto& v : list) {
                const auto& o = v.as_object();
                std::printf("%-18s %-10s %-5s %-8s %-10s %s\n", str(o, "job_id").c_str(), str(o, "state").c_str(),
                            str(o, "exit_code").c_str(), str(o, "backend").c_str(), str(o, "scheduler_id").c_str(),
                            str(o, "name").c_str());
            }
            return 0;
        }
        if (status->parsed()) {
            auto client = agent::AgentClient::connect(agentOptions(common));
            auto r = client->jobStatus(jobDaemon, jobId);
            if (jobJson) {
                std::cout << json::serialize(r) << "\n";
                return 0;
            }
            auto cb = agent::JobCallback::fromPayload(jobDaemon, r);
            std::cout << str(r, "job_id") << " " << str(r, "state") << " exit " << str(r, "exit_code") << " ("
                      << str(r, "backend") << " " << str(r, "scheduler_id") << ")\n"
                      << "stdout: " << str(r, "stdout_path") << "\n" << cb.stdoutTail
                      << (cb.stdoutTail.empty() || cb.stdoutTail.back() == '\n' ? "" : "\n")
                      << "stderr: " << str(r, "stderr_path") << "\n" << cb.stderrTail;
            return 0;
        }
        if (cancel->parsed()) {
            auto client = agent::AgentClient::connect(agentOptions(common));
            auto r = client->cancelJob(jobDaemon, jobId);
            std::cerr << "cancel requested for " << jobId << " (it was " << str(r, "state") << ")\n";
            return 0;
        }
        if (waitCmd->parsed()) {
            std::optional<std::chrono::steady_clock::time_point> deadline;
            if (waitTimeout > 0)
                deadline = std::chrono::steady_clock::now() +
                           std::chrono::milliseconds(static_cast<long long>(waitTimeout * 1000));
            std::optional<agent::JobCallback> cb;
            int status = runReconnecting(common, deadline, kExitWaitTimedOut, [&](agent::AgentClient& client) {
                auto left = deadline ? std::chrono::duration_cast<std::chrono::milliseconds>(
                                           *deadline - std::chrono::steady_clock::now())
                                     : std::chrono::milliseconds(std::chrono::hours(24 * 365));
                cb = client.waitForJob(jobDaemon, jobId, std::max(left, std::chrono::milliseconds(0)));
                if (cb) client.ackCallback(cb->callbackId);
                return cb ? 0 : kExitWaitTimedOut;
            });
            if (!cb) {
                std::cerr << "hpc-agent: no callback for " << jobId << " yet\n";
                return status;
            }
            if (jobJson) {
                std::cout << json::serialize(cb->raw) << "\n";
            } else {
                std::cout << describe(*cb) << "\n" << cb->stdoutTail << std::flush;
                std::cerr << cb->stderrTail << std::flush;
            }
            return cb->state == "COMPLETED" ? 0 : 1;
        }
        if (events->parsed()) {
            auto limit = eventTimeout > 0 ? std::chrono::milliseconds(static_cast<long long>(eventTimeout * 1000))
                                          : std::chrono::milliseconds(std::chrono::hours(24 * 365));
            std::set<std::string> printed;  // across reconnections: an unacknowledged one comes again
            return runReconnecting(common, std::nullopt, 0, [&](agent::AgentClient& client) {
                while (eventCount == 0 || printed.size() < static_cast<std::size_t>(eventCount)) {
                    auto cb = client.nextCallback(limit);
                    if (!cb) return 0;
                    if (printed.insert(cb->callbackId).second) {
                        json::object line = cb->raw;
                        line["daemon_id"] = cb->daemonId;
                        std::cout << json::serialize(line) << "\n" << std::flush;
                    }
                    if (!noAck) client.ackCallback(cb->callbackId);
                }
                return 0;
            });
        }
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
