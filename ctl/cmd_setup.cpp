// hpc-daemonctl setup: sign in, create an API key, store the profile and
// register the daemon with the platform.
#include "commands.hpp"
#include "daemon_client.hpp"
#include "exit_codes.hpp"
#include "prompter.hpp"
#include "skill_catalog.hpp"

#include "bus_name.hpp"

#include <activation_template.hpp>

#include "log.hpp"
#include "platform_client.hpp"
#include "proxy.hpp"
#include "scheduler_choice.hpp"
#include "store.hpp"
#include "util.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <memory>

namespace fs = std::filesystem;
namespace json = boost::json;

namespace hpc::ctl {
namespace {

struct SetupOptions {
    std::string email;
    std::string url;
    std::string daemonId;
    std::vector<std::string> allowedDirs;
    std::string caFile;
    std::string proxy;
    std::string clusterName;
    std::string skill;
    std::string jobDir;
    std::string instructions;
    bool noInterview = false;
    bool json = false;
};

std::string hostName() {
    char buf[256] = {};
    ::gethostname(buf, sizeof buf - 1);
    return buf;
}

std::string expandHome(const std::string& p) {
    if (p == "~" || p.rfind("~/", 0) == 0) {
        const char* home = std::getenv("HOME");
        return std::string(home ? home : "") + p.substr(1);
    }
    return p;
}

/// Makes `dir` absolute, creates it when missing, and resolves symlinks.
std::string prepareDir(const std::string& dir, const char* what) {
    fs::path p = fs::absolute(expandHome(dir));
    std::error_code ec;
    fs::create_directories(p, ec);
    if (ec)
        throw Error(ErrorCode::BadRequest,
                    std::string("cannot create ") + what + " " + p.string() + ": " + ec.message());
    if (!fs::is_directory(p))
        throw Error(ErrorCode::BadRequest, std::string(what) + " " + p.string() + " is not a directory");
    return fs::canonical(p).string();
}

std::string replaceAll(std::string text, const std::string& from, const std::string& to) {
    for (auto p = text.find(from); p != std::string::npos; p = text.find(from, p + to.size()))
        text.replace(p, from.size(), to);
    return text;
}

/// Writes the profile's D-Bus activation file, so calling the daemon's bus
/// name starts it. Returns its path.
fs::path writeActivationFile(const fs::path& home, const std::string& daemonId) {
    fs::path file = activationFile(daemonId);
    fs::create_directories(file.parent_path());
    std::string name = bus::busNameFor(daemonId);
    std::string exec = "/usr/bin/env HPC_DAEMON_HOME=" + home.string() + " " + daemonBinary() + " --daemon-id " +
                       daemonId + " --log-file " + (home / (daemonId + ".log")).string();
    std::string text = replaceAll(kActivationTemplate, "@NAME@", name);
    text = replaceAll(text, "@EXEC@", exec);
    text = replaceAll(text, "@UNIT@", unitName(daemonId));
    std::ofstream out(file, std::ios::trunc);
    out << text;
    if (!out) throw Error(ErrorCode::Internal, "cannot write " + file.string());
    return file;
}

class Progress {
public:
    explicit Progress(int total, bool quiet) : m_total(total), m_quiet(quiet) {}
    void step(const std::string& what) {
        if (!m_quiet) std::cerr << "[" << ++m_n << "/" << m_total << "] " << what << "\n";
    }

private:
    int m_total;
    int m_n = 0;
    bool m_quiet;
};

constexpr const char* kDisclaimer =
    "\nREMOTE CODE EXECUTION\n"
    "hpc-daemond lets AI agents run commands on this machine as you: shells, programs and batch jobs,\n"
    "with your files, your allocations and your credentials on this machine. Writes are confined to\n"
    "the allowed directories you choose next (and, where the kernel supports it, enforced by it);\n"
    "reads are not confined. You are responsible for what runs under your account, as with any\n"
    "tool you give access to it. Stop it at any time with: hpc-daemonctl stop\n";

std::string defaultWorkspace() {
    if (const char* scratch = std::getenv("SCRATCH"); scratch && *scratch)
        return (fs::path(scratch) / "tiptree-workspace").string();
    const char* home = std::getenv("HOME");
    return (fs::path(home ? home : "/") / "tiptree-workspace").string();
}

/// The interview's questions after sign-in: each skipped when its flag was
/// given or with --no-interview.
void interview(SetupOptions& o, Prompter& ask) {
    if (o.skill.empty()) {
        ask.say("\nWhat kind of machine is this? Agents get matching guidance.");
        for (std::size_t i = 0; i < kBuiltinSkills.size(); ++i)
            ask.say("  " + std::to_string(i + 1) + ". " + std::string(kBuiltinSkills[i].name) + ": " +
                    skillTitle(kBuiltinSkills[i]));
        ask.say("  or type a short description of this server");
        std::string answer = ask.ask("Skill", std::string(kBuiltinSkills[0].name));
        const auto* builtin = findBuiltinSkill(answer);
        o.skill = builtin ? std::string(builtin->name) : answer;
    }
    if (o.allowedDirs.empty()) {
        ask.say("\nAgents may write only inside the allowed directories (comma-separated; created if missing).");
        o.allowedDirs = splitList(ask.ask("Allowed directories", defaultWorkspace()));
    }
    if (o.jobDir.empty())
        o.jobDir = ask.ask("Working directory for jobs", o.allowedDirs.empty() ? "" : o.allowedDirs[0]);
    if (o.instructions.empty()) o.instructions = ask.ask("Instructions for agents (optional)");
    if (o.clusterName.empty()) o.clusterName = ask.ask("Cluster name shown to agents", hostName());
}

int runSetup(SetupOptions o) {
    Prompter ask;
    if (!o.noInterview) {
        if (o.email.empty()) o.email = ask.ask("Email address");
        if (o.url.empty()) o.url = ask.ask("Platform URL (https://...)");
    }
    if (o.email.empty() || o.url.empty()) throw Error(ErrorCode::BadRequest, "--email and --url are required");
    std::string urlError;
    auto url = parseUrl(o.url, &urlError);
    if (!url) throw Error(ErrorCode::BadRequest, "--url: " + urlError);
    if (!url->tls() && !isLoopbackHost(url->host))
        throw Error(ErrorCode::BadRequest, "--url must use https (plain http is allowed only to a loopback address)");
    std::string daemonId = o.daemonId.empty() ? hostName() : o.daemonId;
    if (!isValidDaemonId(daemonId))
        throw Error(
            ErrorCode::BadRequest,
            "daemon id \"" + daemonId + "\" is invalid: use 1-64 of A-Z a-z 0-9 . _ - (not starting with . or -)");
    std::string caFile;
    if (!o.caFile.empty()) {
        std::error_code ec;
        if (!fs::is_regular_file(o.caFile, ec))
            throw Error(ErrorCode::BadRequest, "--ca-file " + o.caFile + " is not a file");
        caFile = fs::canonical(o.caFile).string();
    }
    // Checked before any network call; the route is the one the daemon will take.
    std::string proxy = validateProxySetting(o.proxy);
    ProxyRoute route = resolveProxyRoute(proxy, *url);
    if (!o.skill.empty() && !findBuiltinSkill(o.skill) && o.skill.find(' ') == std::string::npos)
        throw Error(ErrorCode::BadRequest, "--skill " + o.skill + " is not a built-in skill (" + builtinSkillNames() +
                                               "); to describe a server in your own words use a phrase with spaces");
    if (!o.skill.empty()) registeredSkill(o.skill, o.instructions);  // over the limits: stop before the code

    // Open the store first: a store problem should stop us before the user
    // types a code.
    Store store = Store::open();
    net::PlatformClient platform(*url, net::ClientOptions{caFile, std::chrono::seconds(20), proxy});
    Progress progress(5, o.json);

    progress.step("Requesting a sign-in code for " + o.email + " from " + url->str() +
                  (route.proxy ? " " + route.describe() : std::string()));
    Secret signin = platform.requestCode(o.email);
    Secret code = ask.code(o.email);
    progress.step("Verifying the code");
    Secret access = platform.verifyCode(signin, code);
    if (o.noInterview) {
        if (!o.json) ask.say("(--no-interview: the remote code execution disclaimer is taken as accepted)");
    } else {
        ask.say(kDisclaimer);
        if (!ask.confirm("Do you accept?"))
            throw Error(ErrorCode::BadRequest, "setup cancelled: the disclaimer was not accepted; nothing was saved");
    }
    progress.step("Creating an API key for daemon " + daemonId);
    Profile profile;
    profile.apiKey = platform.createApiKey(access);
    if (!o.noInterview) interview(o, ask);
    if (o.skill.empty()) o.skill = std::string(kBuiltinSkills[0].name);
    skill::Skill skill = registeredSkill(o.skill, o.instructions);

    profile.daemonId = daemonId;
    profile.platformUrl = url->str();
    profile.caFile = caFile;
    profile.proxy = proxy;
    profile.clusterName = o.clusterName.empty() ? hostName() : o.clusterName;
    profile.skill = o.skill;
    profile.instructions = o.instructions;
    for (const auto& d : o.allowedDirs) profile.allowedDirs.push_back(prepareDir(d, "allowed directory"));
    if (profile.allowedDirs.empty())
        std::cerr
            << "\n*** WARNING: no allowed directories. Agents will be able to write ANYWHERE this user can. ***\n"
               "*** Re-run setup with --allowed-dirs DIR... to confine them.                              ***\n\n";
    if (!o.jobDir.empty())
        profile.jobWorkdir = prepareDir(o.jobDir, "job directory");
    else if (!profile.allowedDirs.empty())
        profile.jobWorkdir = profile.allowedDirs.front();

    progress.step("Saving profile " + daemonId + " in " + (store.dir() / Store::kFileName).string());
    store.saveProfile(profile);
    progress.step("Registering daemon " + daemonId + " with the platform");
    json::array dirs;
    for (const auto& d : profile.allowedDirs) dirs.emplace_back(d);
    json::object info{{"hostname", hostName()},
                      {"cluster_name", profile.clusterName},
                      {"skill", skill.toJson()},
                      {"allowed_dirs", dirs},
                      {"job_workdir", profile.jobWorkdir},
                      {"instructions", profile.instructions},
                      {"scheduler", chooseScheduler().backend},
                      {"version", HPC_VERSION}};
    bool created = platform.registerDaemon(profile.apiKey, daemonId, info);
    fs::path activation = writeActivationFile(store.dir(), daemonId);
    // The unit (started by hand, by D-Bus activation or after a reboot) gets
    // the environment this setup ran in: where sbatch is, LOCAL_MODE, the home.
    // Only where a user manager runs: elsewhere there is no unit to read it.
    fs::path environment;
    if (systemctlUser({"show-environment"}) == 0) environment = writeEnvironmentFile(Paths{store.dir(), daemonId});
    std::string reloaded;
    if (auto running = DaemonClient::find(store.dir(), daemonId))
        reloaded = running->reload() ? "reloaded (reconnected)" : "reloaded";

    if (o.json) {
        std::cout << json::serialize(json::object{{"daemon_id", daemonId},
                                                  {"platform_url", profile.platformUrl},
                                                  {"route", route.describe()},
                                                  {"allowed_dirs", dirs},
                                                  {"job_workdir", profile.jobWorkdir},
                                                  {"skill", profile.skill},
                                                  {"skill_version", skill.version},
                                                  {"registered", created ? "new" : "updated"},
                                                  {"activation_file", activation.string()},
                                                  {"environment_file", environment.string()},
                                                  {"scheduler", chooseScheduler().backend},
                                                  {"running_daemon", reloaded.empty() ? "not running" : reloaded}})
                  << "\n";
    } else {
        std::cout << "Daemon " << daemonId << " is " << (created ? "registered" : "updated") << " at "
                  << profile.platformUrl << ".\n";
        if (reloaded.empty())
            std::cout << "Start it with: hpc-daemonctl start --daemon-id " << daemonId << "\n";
        else
            std::cout << "The running daemon was " << reloaded << ".\n";
    }
    return kExitOk;
}

}  // namespace

Command addSetupCommand(CLI::App& parent) {
    auto o = std::make_shared<SetupOptions>();
    auto* app =
        parent.add_subcommand("setup", "Sign in, create an API key, save this daemon's profile and register it");
    app->footer(
        "The interview, in order: email and platform URL (unless given), the one-time code sent to the email\n"
        "(read from the terminal, or from standard input when it is not a terminal), the remote code execution\n"
        "disclaimer (must be accepted), API key creation, skill, allowed directories (default\n"
        "$SCRATCH/tiptree-workspace, else ~/tiptree-workspace; created), job directory, instructions, cluster\n"
        "name; then the profile is stored in $HPC_DAEMON_HOME/state.db (0600; default ~/.hpc_daemon), the daemon\n"
        "is registered with the platform, a D-Bus activation file is written, and a running daemon is reloaded.\n"
        "A flag given answers its question. Running setup again for the same --daemon-id updates that profile\n"
        "and its registration in place.\n\n"
        "Example:\n  hpc-daemonctl setup --no-interview --email me@example.org --url https://platform.example.org \\\n"
        "      --daemon-id mila --allowed-dirs ~/scratch/agent-work\n\n" +
        std::string(kExitCodeHelp));
    app->add_option("--email", o->email, "email address to sign in with");
    app->add_option("--url", o->url, "the platform's API address (https://...)");
    app->add_option("--daemon-id", o->daemonId, "name of this daemon (default: the hostname)");
    app->add_option("--allowed-dirs", o->allowedDirs,
                    "directories agents may write in (created if missing); none means unrestricted");
    app->add_option("--ca-file", o->caFile,
                    "CA certificate that signs the platform's certificate (default: system CAs)");
    app->add_option("--proxy", o->proxy,
                    "HTTP proxy to reach the platform through (http://[user:password@]host:port), or \"direct\"; "
                    "default: HTTPS_PROXY/ALL_PROXY and NO_PROXY of the daemon's environment");
    app->add_option("--cluster-name", o->clusterName, "cluster name shown to agents (default: the hostname)");
    app->add_option("--skill", o->skill,
                    "built-in skill (" + builtinSkillNames() +
                        "; see hpc-daemonctl skills) or a one-line description of this server; agents read its "
                        "text, with the instructions, from the platform");
    app->add_option("--job-dir", o->jobDir, "working directory for jobs (default: the first allowed directory)");
    app->add_option("--instructions", o->instructions,
                    "instructions for agents, registered after the skill's text (at most 64 KiB together)");
    app->add_flag("--no-interview", o->noInterview,
                  "ask nothing but the code: values come from flags, the disclaimer is taken as accepted");
    app->add_flag("--json", o->json, "print the result as JSON on stdout (progress lines are suppressed)");
    return Command{app, [o] { return runSetup(*o); }};
}

}  // namespace hpc::ctl
