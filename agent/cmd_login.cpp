// hpc-agent login: an email code exchanged for an access token of an agent identity.
#include "commands.hpp"

#include "errors.hpp"
#include "platform_client.hpp"
#include "util.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <iostream>
#include <memory>

namespace hpc::agent {
namespace {

struct LoginOptions {
    PlatformOptions platform;
    std::string email;
    std::string agent = "default";
    std::string tokenOut;
    bool asJson = false;
};

void writeToken(const std::string& path, const Secret& token) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) throw Error(ErrorCode::BadRequest, "cannot write " + path);
    std::string line = token.reveal() + "\n";
    bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    ::close(fd);
    if (!ok) throw Error(ErrorCode::Internal, "short write to " + path);
}

int runLogin(const LoginOptions& o) {
    if (!isValidDaemonId(o.agent))
        throw Error(ErrorCode::BadRequest,
                    "--agent: names are 1-64 characters of A-Z a-z 0-9 . _ - (not starting with . or -)");
    net::PlatformClient platform(
        platformUrl(o.platform),
        net::ClientOptions{caFile(o.platform), std::chrono::seconds(15), proxySetting(o.platform)});
    Secret signin = platform.requestCode(o.email);
    if (::isatty(STDIN_FILENO)) std::cerr << "Enter the code sent to " << o.email << ": " << std::flush;
    std::string code;
    if (!std::getline(std::cin, code) || code.empty()) throw Error(ErrorCode::BadRequest, "no code on standard input");
    auto grant = platform.signIn(signin, Secret(code), o.agent);
    if (!o.tokenOut.empty()) writeToken(o.tokenOut, grant.accessToken);
    if (o.asJson) {
        boost::json::object out{{"agent", grant.agent}, {"email", o.email}, {"expires_in", grant.expiresIn}};
        if (o.tokenOut.empty())
            out["access_token"] = grant.accessToken.reveal();
        else
            out["token_file"] = o.tokenOut;
        std::cout << boost::json::serialize(out) << "\n";
        return 0;
    }
    if (o.tokenOut.empty()) std::cout << grant.accessToken.reveal() << "\n";
    std::cerr << "signed in as agent " << (grant.agent.empty() ? "(not named by the platform)" : grant.agent)
              << (o.tokenOut.empty() ? "" : "; token written to " + o.tokenOut) << "\n";
    return 0;
}

}  // namespace

Command addLoginCommand(CLI::App& parent) {
    auto o = std::make_shared<LoginOptions>();
    auto* app = parent.add_subcommand("login", "Sign in with an email code and print an access token");
    app->add_option("--email", o->email, "email address")->required();
    app->add_option("--agent", o->agent,
                    "the agent identity the token is for, created when new (default: \"default\")");
    app->add_option("--write-token", o->tokenOut, "write the token to this file (0600) instead of stdout");
    app->add_flag("--json", o->asJson, "print {agent, email, expires_in, and access_token or token_file} as JSON");
    app->footer(
        "Jobs, their callbacks and events belong to the agent identity, not to the token: a token expires "
        "after 7 days, and signing in again with the same --agent NAME gives a new token that sees, waits on "
        "and cancels the same jobs. Use different names for agents that must not touch each other's jobs.\n"
        "Names are 1-64 characters of A-Z a-z 0-9 . _ -. Tokens from before identities existed each became an "
        "identity named cred-<id> (see hpc-agent whoami --list); sign in with that name to keep their jobs.");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runLogin(*o); }};
}

}  // namespace hpc::agent
