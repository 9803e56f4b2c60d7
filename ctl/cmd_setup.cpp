// hpc-daemonctl setup: sign in, create an API key, store the profile and
// register the daemon with the platform.
#include "commands.hpp"
#include "daemon_client.hpp"
#include "exit_codes.hpp"

#include "bus_name.hpp"

#include <activation_template.hpp>

#include "log.hpp"
#include "platform_client.hpp"
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
    std::string clusterName;
    std::string skill = "generic-slurm";
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
    if (ec) throw Error(ErrorCode::BadRequest, std::string("cannot create ") + what + " " + p.string() + ": " + ec.message());
    if (!fs::is_directory(p)) throw Error(ErrorCode::BadRequest, std::string(what) + " " + p.string() + " is not a directory");
    return fs::canonical(p).string();
}

Secret readCode(const std::string& email) {
    bool tty = ::isatty(STDIN_FILENO);
    if (tty) std::cerr << "Enter the code sent to " << email << ": " << std::flush;
    std::string line;
    if (!std::getline(std::cin, line)) throw Error(ErrorCode::BadRequest, "no sign-in code on standard input");
    auto b = line.find_first_not_of(" \t\r");
    auto e = line.find_last_not_of(" \t\r");
    if (b == std::string::npos) throw Error(ErrorCode::BadRequest, "the sign-in code is empty");
    return Secret(line.substr(b, e - b + 1));
}

std::string replaceAll(std::string text, const std::string& from, const std::string& to) {
    for (auto p = text.find(from); p != std::string::npos; p = text.find(from, p + to.size())) text.replace(p, from.size(), to);
    return text;
}

/// Writes the profile's D-Bus activation file, so calling the daemon's bus
/// name starts it. Returns its path.
fs::path writeActivationFile(const fs::path& home, const std::string& daemonId) {
    const char* xdg = std::getenv("XDG_DATA_HOME");
    const char* userHome = std::getenv("HOME");
    fs::path dataHome = xdg && *xdg ? fs::path(xdg) : fs::path(userHome ? userHome : "/") / ".local" / "share";
    fs::path dir = dataHome / "dbus-1" / "services";
    fs::create_directories(dir);
    std::string name = bus::busNameFor(daemonId);
    std::string exec = "/usr/bin/env HPC_DAEMON_HOME=" + home.string() + " " + daemonBinary() + " --daemon-id " +
                       daemonId + " --log-file " + (home / (daemonId + ".log")).string();
    std::string text = replaceAll(kActivationTemplate, "@NAME@", name);
    text = replaceAll(text, "@EXEC@", exec);
    text = replaceAll(text, "@UNIT@", unitName(daemonId));
    fs::path file = dir / (name + ".service");
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

int runSetup(const SetupOptions& o) {
    if (!o.noInterview)
        throw Error(ErrorCode::BadRequest,
                    "this version of setup runs without the interview only: pass --no-interview with --email, "
                    "--url and --allowed-dirs");
    if (o.email.empty() || o.url.empty()) throw Error(ErrorCode::BadRequest, "--email and --url are required");
    std::string urlError;
    auto url = parseUrl(o.url, &urlError);
    if (!url) throw Error(ErrorCode::BadRequest, "--url: " + urlError);
    if (!url->tls() && !isLoopbackHost(url->host))
        throw Error(ErrorCode::BadRequest, "--url must use https (plain http is allowed only to a loopback address)");
    std::string daemonId = o.daemonId.empty() ? hostName() : o.daemonId;
    if (!isValidDaemonId(daemonId))
        throw Error(ErrorCode::BadRequest, "daemon id \"" + daemonId +
                                               "\" is invalid: use 1-64 of A-Z a-z 0-9 . _ - (not starting with . or -)");

    Profile profile;
    profile.daemonId = daemonId;
    profile.platformUrl = url->str();
    profile.clusterName = o.clusterName.empty() ? hostName() : o.clusterName;
    profile.skill = o.skill;
    profile.instructions = o.instructions;
    if (!o.caFile.empty()) {
        std::error_code ec;
        if (!fs::is_regular_file(o.caFile, ec)) throw Error(ErrorCode::BadRequest, "--ca-file " + o.caFile + " is not a file");
        profile.caFile = fs::canonical(o.caFile).string();
    }
    for (const auto& d : o.allowedDirs) profile.allowedDirs.push_back(prepareDir(d, "allowed directory"));
    if (profile.allowedDirs.empty())
        std::cerr << "\n*** WARNING: no --allowed-dirs given. Agents will be able to write ANYWHERE this user can. ***\n"
                     "*** Re-run setup with --allowed-dirs DIR... to confine them.                              ***\n\n";
    if (!o.jobDir.empty())
        profile.jobWorkdir = prepareDir(o.jobDir, "job directory");
    else if (!profile.allowedDirs.empty())
        profile.jobWorkdir = profile.allowedDirs.front();

    // Open the store first: a store problem should stop us before the user
    // types a code.
    Store store = Store::open();
    net::PlatformClient platform(*url, net::ClientOptions{profile.caFile, std::chrono::seconds(20)});
    Progress progress(5, o.json);

    progress.step("Requesting a sign-in code for " + o.email + " from " + url->str());
    Secret signin = platform.requestCode(o.email);
    Secret code = readCode(o.email);
    progress.step("Verifying the code");
    Secret access = platform.verifyCode(signin, code);
    progress.step("Creating an API key for daemon " + daemonId);
    profile.apiKey = platform.createApiKey(access);
    progress.step("Saving profile " + daemonId + " in " + (store.dir() / Store::kFileName).string());
    store.saveProfile(profile);
    progress.step("Registering daemon " + daemonId + " with the platform");
    json::array dirs;
    for (const auto& d : profile.allowedDirs) dirs.emplace_back(d);
    json::object info{{"hostname", hostName()},          {"cluster_name", profile.clusterName},
                      {"skill", profile.skill},          {"allowed_dirs", dirs},
                      {"job_workdir", profile.jobWorkdir}, {"instructions", profile.instructions},
                      {"scheduler", ::access("/usr/bin/sbatch", X_OK) == 0 ? "slurm" : "local"},
                      {"version", HPC_VERSION}};
    bool created = platform.registerDaemon(profile.apiKey, daemonId, info);
    fs::path activation = writeActivationFile(store.dir(), daemonId);
    std::string reloaded;
    if (auto running = DaemonClient::find(store.dir(), daemonId))
        reloaded = running->reload() ? "reloaded (reconnected)" : "reloaded";

    if (o.json) {
        std::cout << json::serialize(json::object{{"daemon_id", daemonId},
                                                  {"platform_url", profile.platformUrl},
                                                  {"allowed_dirs", dirs},
                                                  {"job_workdir", profile.jobWorkdir},
                                                  {"registered", created ? "new" : "updated"},
                                                  {"activation_file", activation.string()},
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
    auto* app = parent.add_subcommand("setup", "Sign in, create an API key, save this daemon's profile and register it");
    app->footer(
        "Signs in with a one-time code sent to --email (the code is read from the terminal, or from standard\n"
        "input when it is not a terminal), creates an API key, stores the profile in $HPC_DAEMON_HOME/state.db\n"
        "(0600; default ~/.hpc_daemon) and registers the daemon with the platform. Running setup again for the\n"
        "same --daemon-id updates that profile and its registration.\n\n"
        "Example:\n  hpc-daemonctl setup --no-interview --email me@example.org --url https://platform.example.org \\\n"
        "      --daemon-id mila --allowed-dirs ~/scratch/agent-work\n\n" +
        std::string(kExitCodeHelp));
    app->add_option("--email", o->email, "email address to sign in with");
    app->add_option("--url", o->url, "the platform's API address (https://...)");
    app->add_option("--daemon-id", o->daemonId, "name of this daemon (default: the hostname)");
    app->add_option("--allowed-dirs", o->allowedDirs,
                    "directories agents may write in (created if missing); none means unrestricted");
    app->add_option("--ca-file", o->caFile, "CA certificate that signs the platform's certificate (default: system CAs)");
    app->add_option("--cluster-name", o->clusterName, "cluster name shown to agents (default: the hostname)");
    app->add_option("--skill", o->skill, "built-in skill name or a description of this server")->capture_default_str();
    app->add_option("--job-dir", o->jobDir, "working directory for jobs (default: the first allowed directory)");
    app->add_option("--instructions", o->instructions, "extra instructions for agents");
    app->add_flag("--no-interview", o->noInterview, "take everything from flags; only the code is read");
    app->add_flag("--json", o->json, "print the result as JSON on stdout (progress lines are suppressed)");
    return Command{app, [o] { return runSetup(*o); }};
}

}  // namespace hpc::ctl
