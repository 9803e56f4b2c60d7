// The platform options every hpc-agent command takes, and what they resolve to.
#include "commands.hpp"

#include "errors.hpp"
#include "proxy.hpp"

#include <cstdlib>
#include <fstream>

namespace hpc::agent {
namespace {

std::string envOr(const char* name, const std::string& current) {
    if (!current.empty()) return current;
    const char* v = std::getenv(name);
    return v ? v : "";
}

Secret token(const PlatformOptions& o) {
    if (!o.tokenFile.empty()) {
        std::ifstream in(o.tokenFile);
        std::string t;
        if (!in || !std::getline(in, t) || t.empty())
            throw Error(ErrorCode::BadRequest, "cannot read a token from " + o.tokenFile);
        return Secret(t);
    }
    const char* t = std::getenv("HPC_AGENT_TOKEN");
    if (!t || !*t)
        throw Error(ErrorCode::BadRequest, "no token: set HPC_AGENT_TOKEN or pass --token-file (see hpc-agent login)");
    return Secret(t);
}

}  // namespace

void addPlatformOptions(CLI::App* app, PlatformOptions& o) {
    app->add_option("--url", o.url, "platform URL (or HPC_AGENT_URL)");
    app->add_option("--token-file", o.tokenFile, "file holding the access token (or HPC_AGENT_TOKEN)");
    app->add_option("--ca-file", o.caFile, "CA certificate of the platform (or HPC_AGENT_CA; default: system CAs)");
    app->add_option("--proxy", o.proxy,
                    "HTTP proxy (http://[user:password@]host:port) or \"direct\" (or HPC_AGENT_PROXY; default: "
                    "HTTPS_PROXY/ALL_PROXY and NO_PROXY)");
}

Url platformUrl(const PlatformOptions& o) {
    std::string text = envOr("HPC_AGENT_URL", o.url);
    if (text.empty()) throw Error(ErrorCode::BadRequest, "no platform URL: pass --url or set HPC_AGENT_URL");
    std::string err;
    auto u = parseUrl(text, &err);
    if (!u) throw Error(ErrorCode::BadRequest, "bad platform URL: " + err);
    return *u;
}

std::string caFile(const PlatformOptions& o) { return envOr("HPC_AGENT_CA", o.caFile); }

std::string proxySetting(const PlatformOptions& o) { return validateProxySetting(envOr("HPC_AGENT_PROXY", o.proxy)); }

AgentOptions agentOptions(const PlatformOptions& o) {
    AgentOptions a{platformUrl(o), token(o), caFile(o)};
    a.proxy = proxySetting(o);
    return a;
}

}  // namespace hpc::agent
