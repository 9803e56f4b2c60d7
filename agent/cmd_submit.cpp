// hpc-agent submit: a batch job from a script; prints its id.
#include "commands.hpp"

#include "errors.hpp"

#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

namespace hpc::agent {
namespace {

struct SubmitOptions {
    PlatformOptions platform;
    std::string daemonId;
    std::string scriptPath;
    std::vector<std::string> sbatchArgs;
    std::string name;
    std::string cwd;
    double timeLimit = 0;
    std::vector<std::string> env;
    std::string contextJson;
    bool asJson = false;
};

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

int runSubmit(const SubmitOptions& o) {
    JobSpec spec;
    spec.script = readScript(o.scriptPath);
    if (!o.name.empty()) spec.name = o.name;
    if (!o.cwd.empty()) spec.cwd = o.cwd;
    if (o.timeLimit > 0) spec.timeLimitSeconds = o.timeLimit;
    spec.sbatchArgs = o.sbatchArgs;
    for (const auto& e : o.env) {
        auto eq = e.find('=');
        if (eq == std::string::npos || eq == 0) throw Error(ErrorCode::BadRequest, "--env needs NAME=value");
        spec.env.emplace_back(e.substr(0, eq), e.substr(eq + 1));
    }
    if (!o.contextJson.empty()) {
        boost::json::error_code ec;
        spec.context = boost::json::parse(o.contextJson, ec);
        if (ec) throw Error(ErrorCode::BadRequest, "--context is not JSON: " + ec.message());
    }
    JobSpec::fromPayload(spec.toPayload());  // the daemon's own checks and messages, before connecting
    auto client = AgentClient::connect(agentOptions(o.platform));
    auto r = client->submitJob(o.daemonId, spec);
    if (o.asJson)
        std::cout << boost::json::serialize(r) << "\n";
    else
        std::cout << fieldText(r, "job_id") << "\n";
    return 0;
}

}  // namespace

Command addSubmitCommand(CLI::App& parent) {
    auto o = std::make_shared<SubmitOptions>();
    auto* app = parent.add_subcommand(
        "submit", "Submit a batch job: hpc-agent submit DAEMON SCRIPT [-- SBATCH-OPTIONS...]; prints the job id");
    app->add_option("daemon", o->daemonId, "daemon id")->required();
    app->add_option("script", o->scriptPath, "the job's script (\"-\": standard input)")->required();
    app->add_option("sbatch", o->sbatchArgs,
                    "options for sbatch after -- (SLURM daemons only; long options as --name=value)");
    app->add_option("--name", o->name, "job name");
    app->add_option("--cwd", o->cwd, "working directory (default: the daemon's first allowed directory)");
    app->add_option("--time-limit", o->timeLimit,
                    "seconds after which the job is stopped (TIMEOUT); SLURM rounds up to minutes")
        ->check(CLI::PositiveNumber);
    app->add_option("--env", o->env, "NAME=value for the job's environment (repeatable)");
    app->add_option("--context", o->contextJson, "JSON returned with the job's callback");
    app->add_flag("--json", o->asJson, "print the full result as JSON");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runSubmit(*o); }};
}

}  // namespace hpc::agent
