#pragma once
/// Which HTTP proxy (if any) a connection to the platform goes through, as
/// curl decides it: an explicit setting first ("--proxy URL", or "direct" /
/// "none"), else https_proxy / HTTPS_PROXY (http_proxy for an http://
/// platform), else all_proxy / ALL_PROXY; no_proxy / NO_PROXY exempts hosts.
/// No networking here: the CONNECT itself is in net/proxy_tunnel.hpp.

#include "secret.hpp"
#include "util.hpp"

#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace hpc {

/// An http:// proxy, with its credentials kept apart from what may be shown.
struct ProxyEndpoint {
    std::string host;  ///< without brackets for IPv6
    std::string port;  ///< always set (curl's default: 1080)
    std::string user;  ///< percent-decoded; empty: no credentials
    Secret password;   ///< percent-decoded
    bool hasCredentials() const { return !user.empty() || !password.empty(); }
    /// "http://host:port": what logs, status and errors show (never the
    /// credentials).
    std::string display() const;
    /// The Proxy-Authorization header's value ("Basic ..."); empty without
    /// credentials.
    Secret authorization() const;
};

/// Parses a proxy URL: "http://[user:pass@]host[:port]" or "host:port" (as
/// curl, no scheme means http). Throws hpc::Error(BadRequest) naming the
/// problem, never the credentials: https:// and socks proxies are refused
/// (not supported), as is anything that is not a proxy URL.
ProxyEndpoint parseProxyUrl(std::string_view text, std::string_view source = "the proxy URL");

/// True for an explicit setting that means "no proxy": "direct", "none".
bool isDirectSetting(std::string_view setting);

/// Validates what `--proxy` takes ("", "direct", "none" or a proxy URL) and
/// returns it as it should be stored. Throws hpc::Error(BadRequest).
std::string validateProxySetting(std::string_view setting);

/// True when `noProxy` (a no_proxy value) exempts `host`: "*" matches every
/// host; otherwise comma- or space-separated entries, each a domain that
/// matches itself and its subdomains (a leading '.' is ignored), an IP
/// address, or (as curl 7.86 and newer) an IP range in CIDR notation. As
/// curl, the port of the target is ignored; an entry "host:port" matches
/// only that port.
bool noProxyMatches(std::string_view noProxy, std::string_view host, std::string_view port);

/// How one connection reaches the platform.
struct ProxyRoute {
    std::optional<ProxyEndpoint> proxy;  ///< nullopt: direct
    /// Where the decision came from: "--proxy", "HTTPS_PROXY", "no_proxy",
    /// ... ("" when nothing is configured).
    std::string source;
    /// "via proxy http://h:p (HTTPS_PROXY)", "direct (NO_PROXY)",
    /// "direct (--proxy direct)", "direct": for logs and status.
    std::string describe() const;
};

using EnvLookup = std::function<const char*(const char*)>;

/// The route to `target`. `setting` is the explicit choice ("" for the
/// environment, "direct"/"none", or a proxy URL); `env` reads the
/// environment (std::getenv by default). Throws hpc::Error(BadRequest) when
/// the proxy that applies is not a usable URL: a configured proxy is never
/// silently skipped.
ProxyRoute resolveProxyRoute(std::string_view setting, const Url& target, const EnvLookup& env = {});

/// The proxy variables this process has, "NAME=value", for handing on to a
/// service (values may hold credentials: write them only to private files).
std::vector<std::string> proxyEnvironment(const EnvLookup& env = {});

}  // namespace hpc
