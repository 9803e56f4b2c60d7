#include "platform_client.hpp"

#include "errors.hpp"

#include <optional>

namespace json = boost::json;

namespace hpc::net {
namespace {

std::string field(const json::object& o, std::string_view key, const std::string& route) {
    if (auto* v = o.if_contains(key); v && v->is_string() && !v->get_string().empty())
        return std::string(v->get_string());
    throw Error(ErrorCode::Unavailable, "the platform's reply to " + route + " has no \"" + std::string(key) + "\"");
}

}  // namespace

json::object PlatformClient::call(const std::string& method, const std::string& path, const json::object* body,
                                  const Secret& bearer) {
    auto res =
        httpRequest(m_base, method, path, body ? json::serialize(*body) : std::string(), bearer.reveal(), m_options);
    json::value v = res.json();
    std::string message;
    if (v.is_object())
        if (auto* m = v.get_object().if_contains("message"); m && m->is_string()) message = m->get_string();
    if (res.status >= 200 && res.status < 300) {
        if (!v.is_object())
            throw Error(ErrorCode::Unavailable, m_base.str() + path + " did not answer with JSON: is " + m_base.str() +
                                                    " the platform's API address?");
        return v.get_object();
    }
    std::string where = method + " " + m_base.str() + path;
    if (res.status == 404 && !v.is_object())
        throw Error(ErrorCode::NotFound, m_base.str() + " has no " + path +
                                             " route (HTTP 404): is this the platform's "
                                             "API address rather than its web site?");
    if (message.empty()) message = "HTTP " + std::to_string(res.status);
    // The relay names its error (a full disk: STORAGE_FULL with 507); a
    // platform that gives only the status is read by the status.
    std::optional<ErrorCode> named;
    if (v.is_object())
        if (auto* c = v.get_object().if_contains("code"); c && c->is_string())
            named = errorCodeFromProtocol(c->get_string());
    switch (res.status) {
        case 400:
            throw Error(named.value_or(ErrorCode::BadRequest), where + " refused the request: " + message);
        case 401:
        case 403:
            throw Error(named.value_or(ErrorCode::Unauthorized), where + ": " + message);
        case 404:
            throw Error(named.value_or(ErrorCode::NotFound), where + ": " + message);
        case 429:
            throw Error(named.value_or(ErrorCode::Limit), where + ": " + message);
        default:
            throw Error(named.value_or(ErrorCode::Unavailable), where + " failed: " + message);
    }
}

Secret PlatformClient::requestCode(const std::string& email) {
    json::object body{{"email", email}};
    auto r = call("POST", "/otp/signin", &body, Secret());
    auto* payload = r.if_contains("payload");
    if (!payload || !payload->is_object())
        throw Error(ErrorCode::Unavailable, "the platform's reply to /otp/signin has no payload: is " + m_base.str() +
                                                " the platform's API address?");
    return Secret(field(payload->get_object(), "token", "/otp/signin"));
}

AccessGrant PlatformClient::signIn(const Secret& signinToken, const Secret& code, const std::string& agent) {
    json::object body{{"token", signinToken.reveal()}, {"otp", code.reveal()}};
    if (!agent.empty()) body["agent"] = agent;
    auto r = call("POST", "/auth/otp/signin/verify", &body, Secret());
    AccessGrant grant;
    grant.accessToken = Secret(field(r, "access_token", "/auth/otp/signin/verify"));
    if (auto* a = r.if_contains("agent"); a && a->is_string()) grant.agent = a->get_string();
    if (auto* e = r.if_contains("expires_in"); e && e->is_int64()) grant.expiresIn = e->get_int64();
    return grant;
}

json::object PlatformClient::whoami(const Secret& bearer) {
    auto r = call("GET", "/auth/whoami", nullptr, bearer);
    if (auto* p = r.if_contains("payload"); p && p->is_object()) return p->get_object();
    throw Error(ErrorCode::Unavailable, "the platform's reply to /auth/whoami has no payload");
}

json::array PlatformClient::listAgents(const Secret& bearer) {
    auto r = call("GET", "/auth/agents", nullptr, bearer);
    if (auto* p = r.if_contains("payload"); p && p->is_object())
        if (auto* a = p->get_object().if_contains("agents"); a && a->is_array()) return a->get_array();
    throw Error(ErrorCode::Unavailable, "the platform's reply to /auth/agents has no agent list");
}

Secret PlatformClient::createApiKey(const Secret& accessToken) {
    json::object body{{"name", "hpc-daemon"}};
    auto r = call("POST", "/auth/api-keys", &body, accessToken);
    return Secret(field(r, "api_key", "/auth/api-keys"));
}

bool PlatformClient::registerDaemon(const Secret& apiKey, const std::string& daemonId, const json::object& info) {
    auto r = call("PUT", "/hpc/daemons/" + daemonId, &info, apiKey);
    if (auto* p = r.if_contains("payload"); p && p->is_object())
        if (auto* c = p->get_object().if_contains("created"); c && c->is_bool()) return c->get_bool();
    return false;
}

json::array PlatformClient::listDaemons(const Secret& bearer) {
    auto r = call("GET", "/hpc/daemons", nullptr, bearer);
    if (auto* p = r.if_contains("payload"); p && p->is_object())
        if (auto* d = p->get_object().if_contains("daemons"); d && d->is_array()) return d->get_array();
    throw Error(ErrorCode::Unavailable, "the platform's reply to /hpc/daemons has no daemon list");
}

json::object PlatformClient::getDaemon(const Secret& bearer, const std::string& daemonId) {
    std::string route = "/hpc/daemons/" + daemonId;
    auto r = call("GET", route, nullptr, bearer);
    if (auto* p = r.if_contains("payload"); p && p->is_object()) return p->get_object();
    throw Error(ErrorCode::Unavailable, "the platform's reply to " + route + " has no payload");
}

Secret PlatformClient::rotateDaemonKey(const Secret& apiKey, const std::string& daemonId) {
    std::string route = "/hpc/daemons/" + daemonId + "/rotate-key";
    auto r = call("POST", route, nullptr, apiKey);
    auto* payload = r.if_contains("payload");
    if (!payload || !payload->is_object())
        throw Error(ErrorCode::Unavailable, "the platform's reply to " + route + " has no payload");
    return Secret(field(payload->get_object(), "api_key", route));
}

std::int64_t PlatformClient::deleteDaemon(const Secret& bearer, const std::string& daemonId) {
    auto r = call("DELETE", "/hpc/daemons/" + daemonId, nullptr, bearer);
    if (auto* p = r.if_contains("payload"); p && p->is_object())
        if (auto* n = p->get_object().if_contains("revoked_keys"); n && n->is_int64()) return n->get_int64();
    return 0;
}

void PlatformClient::revoke(const Secret& bearer) { call("POST", "/auth/revoke", nullptr, bearer); }

}  // namespace hpc::net
