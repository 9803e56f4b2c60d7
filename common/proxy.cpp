#include "proxy.hpp"

#include "errors.hpp"
#include "util.hpp"

#include <arpa/inet.h>

#include <cctype>
#include <cstdlib>
#include <cstring>

namespace hpc {
namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return std::string(s);
}

bool validPort(std::string_view p) {
    if (p.empty() || p.size() > 5) return false;
    for (char c : p)
        if (c < '0' || c > '9') return false;
    int n = std::stoi(std::string(p));
    return n > 0 && n <= 65535;
}

/// Splits "host", "host:port", "[v6]" or "[v6]:port". False when malformed.
bool splitHostPort(std::string_view authority, std::string& host, std::string& port) {
    host.clear();
    port.clear();
    if (!authority.empty() && authority.front() == '[') {
        auto close = authority.find(']');
        if (close == std::string_view::npos) return false;
        host = std::string(authority.substr(1, close - 1));
        auto after = authority.substr(close + 1);
        if (after.empty()) return true;
        if (after.front() != ':') return false;
        port = std::string(after.substr(1));
        return true;
    }
    auto colon = authority.find(':');
    if (colon != std::string_view::npos && authority.find(':', colon + 1) != std::string_view::npos) {
        host = std::string(authority);  // a bare IPv6 address
        return true;
    }
    host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = std::string(authority.substr(colon + 1));
    return true;
}

/// Whether `host` (an IP literal) is in `entry` (an IP or a CIDR range).
/// nullopt when `entry` is not an address at all.
std::optional<bool> ipMatches(const std::string& entry, const std::string& host) {
    std::string addr = entry;
    int bits = -1;
    if (auto slash = entry.find('/'); slash != std::string::npos) {
        addr = entry.substr(0, slash);
        std::string b = entry.substr(slash + 1);
        if (b.empty() || b.size() > 3 || b.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
        bits = std::stoi(b);
    }
    unsigned char e[16], h[16];
    int family = 0;
    std::size_t len = 0;
    if (::inet_pton(AF_INET, addr.c_str(), e) == 1) {
        family = AF_INET;
        len = 4;
    } else if (::inet_pton(AF_INET6, addr.c_str(), e) == 1) {
        family = AF_INET6;
        len = 16;
    } else {
        return std::nullopt;
    }
    if (::inet_pton(family, host.c_str(), h) != 1) return false;
    if (bits < 0) bits = static_cast<int>(len * 8);
    if (bits > static_cast<int>(len * 8)) return false;
    std::size_t full = static_cast<std::size_t>(bits) / 8;
    if (std::memcmp(e, h, full) != 0) return false;
    int rest = bits % 8;
    if (rest == 0) return true;
    unsigned char mask = static_cast<unsigned char>(0xff << (8 - rest));
    return (e[full] & mask) == (h[full] & mask);
}

const char* lookup(const EnvLookup& env, const char* name) {
    const char* v = env ? env(name) : std::getenv(name);
    return v && *v ? v : nullptr;
}

}  // namespace

std::string ProxyEndpoint::display() const {
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    return "http://" + h + ":" + port;
}

Secret ProxyEndpoint::authorization() const {
    if (!hasCredentials()) return Secret();
    return Secret("Basic " + base64Encode(user + ":" + password.reveal()));
}

bool isDirectSetting(std::string_view setting) {
    auto s = lower(trim(setting));
    return s == "direct" || s == "none";
}

ProxyEndpoint parseProxyUrl(std::string_view textIn, std::string_view source) {
    std::string text = trim(textIn);
    std::string where(source);
    auto bad = [&](const std::string& why) { return Error(ErrorCode::BadRequest, where + " " + why); };
    std::string_view rest = text;
    if (auto sep = rest.find("://"); sep != std::string_view::npos) {
        std::string scheme = lower(rest.substr(0, sep));
        if (scheme == "https")
            throw bad(
                "is an https:// proxy, which is not supported: use its http:// address (the tunnel to the "
                "platform is TLS either way)");
        if (scheme.rfind("socks", 0) == 0)
            throw bad("is a " + scheme + ":// proxy, which is not supported: use an HTTP proxy (http://host:port)");
        if (scheme != "http") throw bad("has the scheme " + scheme + "://; a proxy URL starts with http://");
        rest.remove_prefix(sep + 3);
    }
    if (auto slash = rest.find('/'); slash != std::string_view::npos) {
        if (rest.substr(slash).find_first_not_of('/') != std::string_view::npos)
            throw bad("has a path; a proxy URL is http://[user:password@]host[:port]");
        rest = rest.substr(0, slash);
    }
    ProxyEndpoint p;
    if (auto at = rest.rfind('@'); at != std::string_view::npos) {
        std::string_view userinfo = rest.substr(0, at);
        rest.remove_prefix(at + 1);
        auto colon = userinfo.find(':');
        auto user = percentDecode(userinfo.substr(0, colon));
        auto pass = colon == std::string_view::npos ? std::optional<std::string>("")
                                                    : percentDecode(userinfo.substr(colon + 1));
        if (!user || !pass) throw bad("has a malformed %-escape in its user or password");
        p.user = *user;
        p.password = Secret(*pass);
    }
    if (!splitHostPort(rest, p.host, p.port) || p.host.empty()) throw bad("has no host");
    for (char c : p.host)
        if (std::isspace(static_cast<unsigned char>(c)) || c == '@' || c == '/' || c == '?' || c == '#')
            throw bad("has a malformed host");
    if (p.port.empty()) p.port = "1080";
    if (!validPort(p.port)) throw bad("has a bad port (1-65535)");
    return p;
}

std::string validateProxySetting(std::string_view setting) {
    std::string s = trim(setting);
    if (s.empty()) return s;
    if (isDirectSetting(s)) return "direct";
    parseProxyUrl(s, "--proxy");
    return s;
}

bool noProxyMatches(std::string_view noProxy, std::string_view hostIn, std::string_view port) {
    std::string list = trim(noProxy);
    if (list == "*") return true;
    std::string host = lower(hostIn);
    if (!host.empty() && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    while (!host.empty() && host.back() == '.') host.pop_back();
    std::size_t i = 0;
    while (i < list.size()) {
        std::size_t end = list.find_first_of(", \t", i);
        if (end == std::string::npos) end = list.size();
        std::string entry = lower(list.substr(i, end - i));
        i = end + 1;
        if (entry.empty()) continue;
        if (entry == "*") return true;
        // "[fd00::]/8" and "[::1]" are an address in brackets; "[::1]:443" has a port.
        if (entry.front() == '[') {
            auto close = entry.find(']');
            if (close != std::string::npos && (close + 1 == entry.size() || entry[close + 1] == '/'))
                entry = entry.substr(1, close - 1) + entry.substr(close + 1);
        }
        // An IP address or range first: "::1" or "fe80::/10" has colons
        // that are not a port.
        if (auto ip = ipMatches(entry, host); ip.has_value()) {
            if (*ip) return true;
            continue;
        }
        std::string name, entryPort;
        if (!splitHostPort(entry, name, entryPort)) continue;
        if (!entryPort.empty() && entryPort != port) continue;
        if (auto ip = ipMatches(name, host); ip.has_value()) {
            if (*ip) return true;
            continue;
        }
        if (!name.empty() && name.front() == '.') name.erase(0, 1);
        while (!name.empty() && name.back() == '.') name.pop_back();
        if (name.empty()) continue;
        if (host == name) return true;
        if (host.size() > name.size() && host.compare(host.size() - name.size(), name.size(), name) == 0 &&
            host[host.size() - name.size() - 1] == '.')
            return true;
    }
    return false;
}

std::string ProxyRoute::describe() const {
    if (proxy) return "via proxy " + proxy->display() + " (" + source + ")";
    return source.empty() ? "direct" : "direct (" + source + ")";
}

ProxyRoute resolveProxyRoute(std::string_view setting, const Url& target, const EnvLookup& env) {
    ProxyRoute route;
    std::string s = trim(setting);
    if (isDirectSetting(s)) {
        route.source = "--proxy direct";
        return route;
    }
    std::string proxyText, source;
    if (!s.empty()) {
        proxyText = s;
        source = "--proxy";
    } else {
        // As curl: the lower-case name first; HTTP_PROXY in capitals is not
        // read (a CGI program gets it from a request header).
        std::vector<const char*> names;
        if (target.tls())
            names = {"https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"};
        else
            names = {"http_proxy", "all_proxy", "ALL_PROXY"};
        for (const char* name : names)
            if (const char* v = lookup(env, name)) {
                proxyText = v;
                source = name;
                break;
            }
        if (proxyText.empty()) return route;
    }
    for (const char* name : {"no_proxy", "NO_PROXY"})
        if (const char* v = lookup(env, name)) {
            if (noProxyMatches(v, target.host, target.port)) {
                route.source = name;
                return route;
            }
            break;
        }
    route.proxy = parseProxyUrl(proxyText, source == "--proxy" ? "--proxy" : source);
    route.source = source;
    return route;
}

std::vector<std::string> proxyEnvironment(const EnvLookup& env) {
    std::vector<std::string> out;
    for (const char* name :
         {"https_proxy", "HTTPS_PROXY", "http_proxy", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"})
        if (const char* v = lookup(env, name)) out.push_back(std::string(name) + "=" + v);
    return out;
}

}  // namespace hpc
