// hpc-agent login: an email code exchanged for an access token.
#include "commands.hpp"

#include "errors.hpp"
#include "platform_client.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <iostream>
#include <memory>

namespace hpc::agent {
namespace {

struct LoginOptions {
    PlatformOptions platform;
    std::string email;
    std::string tokenOut;
};

int runLogin(const LoginOptions& o) {
    net::PlatformClient platform(
        platformUrl(o.platform),
        net::ClientOptions{caFile(o.platform), std::chrono::seconds(15), proxySetting(o.platform)});
    Secret signin = platform.requestCode(o.email);
    if (::isatty(STDIN_FILENO)) std::cerr << "Enter the code sent to " << o.email << ": " << std::flush;
    std::string code;
    if (!std::getline(std::cin, code) || code.empty()) throw Error(ErrorCode::BadRequest, "no code on standard input");
    Secret access = platform.verifyCode(signin, Secret(code));
    if (o.tokenOut.empty()) {
        std::cout << access.reveal() << "\n";
        return 0;
    }
    int fd = ::open(o.tokenOut.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) throw Error(ErrorCode::BadRequest, "cannot write " + o.tokenOut);
    std::string line = access.reveal() + "\n";
    bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    ::close(fd);
    if (!ok) throw Error(ErrorCode::Internal, "short write to " + o.tokenOut);
    std::cerr << "token written to " << o.tokenOut << "\n";
    return 0;
}

}  // namespace

Command addLoginCommand(CLI::App& parent) {
    auto o = std::make_shared<LoginOptions>();
    auto* app = parent.add_subcommand("login", "Sign in with an email code and print an access token");
    app->add_option("--email", o->email, "email address")->required();
    app->add_option("--write-token", o->tokenOut, "write the token to this file (0600) instead of stdout");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runLogin(*o); }};
}

}  // namespace hpc::agent
