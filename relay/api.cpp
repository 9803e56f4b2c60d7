#include "api.hpp"

#include "log.hpp"
#include "util.hpp"

#include <sys/random.h>

#include <algorithm>

namespace json = boost::json;

namespace hpc::relay {
namespace {

ApiResponse reply(int status, json::object body) { return {status, json::serialize(body)}; }

ApiResponse success(std::string message, json::object payload, int status = 200) {
    return reply(status, {{"status", "success"}, {"message", std::move(message)}, {"payload", std::move(payload)}});
}

ApiResponse failure(int status, std::string_view code, std::string message) {
    return reply(status, {{"status", "error"}, {"code", code}, {"message", std::move(message)}});
}

std::optional<json::object> bodyObject(const ApiRequest& r) {
    json::error_code ec;
    auto v = json::parse(r.body, ec);
    if (ec || !v.is_object()) return std::nullopt;
    return v.get_object();
}

std::string stringField(const json::object& o, std::string_view key) {
    auto* v = o.if_contains(key);
    return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

/// Request text quoted back in a message: JSON strings must be UTF-8, and a
/// log line must stay one line.
std::string printable(std::string_view s) {
    std::string out;
    for (char c : s.substr(0, 200)) out.push_back(c >= 0x20 && c <= 0x7e ? c : '?');
    return out;
}

bool plausibleEmail(const std::string& e) {
    auto at = e.find('@');
    return e.size() <= 254 && isValidUtf8(e) &&
           std::none_of(e.begin(), e.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }) &&
           at != std::string::npos && at > 0 && at + 1 < e.size() &&
           e.find_first_of(" \t\r\n<>\"'") == std::string::npos && e.find('@', at + 1) == std::string::npos;
}

Secret sixDigitCode() {
    std::uint32_t n = 0;
    while (::getrandom(&n, sizeof n, 0) != sizeof n) {
    }
    std::string code = std::to_string(n % 1000000);
    return Secret(std::string(6 - code.size(), '0') + code);
}

/// Fields a daemon registration may carry, each with its JSON kind.
bool validRegistration(const json::object& o, std::string& why) {
    static const std::pair<std::string_view, json::kind> kFields[] = {
        {"hostname", json::kind::string},      {"cluster_name", json::kind::string},
        {"skill", json::kind::string},         {"allowed_dirs", json::kind::array},
        {"job_workdir", json::kind::string},   {"instructions", json::kind::string},
        {"scheduler", json::kind::string},     {"version", json::kind::string},
    };
    for (const auto& [name, kind] : kFields) {
        auto* v = o.if_contains(name);
        if (v && !v->is_null() && v->kind() != kind) {
            why = "\"" + std::string(name) + "\" has the wrong type";
            return false;
        }
    }
    if (auto* dirs = o.if_contains("allowed_dirs"); dirs && dirs->is_array())
        for (const auto& d : dirs->get_array())
            if (!d.is_string()) {
                why = "\"allowed_dirs\" must be an array of strings";
                return false;
            }
    return true;
}

}  // namespace

std::optional<Principal> Api::authenticate(const std::string& authorization) {
    static constexpr std::string_view kPrefix = "Bearer ";
    if (authorization.size() <= kPrefix.size() || authorization.compare(0, kPrefix.size(), kPrefix) != 0)
        return std::nullopt;
    return m_db.authenticate(Secret(authorization.substr(kPrefix.size())));
}

ApiResponse Api::handle(const ApiRequest& r) {
    m_db.maybePrune(nowEpochSeconds());  // at most once per interval; never throws
    std::string path = r.target.substr(0, r.target.find('?'));
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    try {
        if (path == "/health" && r.method == "GET") return success("ok", {{"version", HPC_VERSION}});
        if (path == "/otp/signin") return r.method == "POST" ? signin(r) : failure(405, "BAD_REQUEST", "use POST");
        if (path == "/auth/otp/signin/verify")
            return r.method == "POST" ? verify(r) : failure(405, "BAD_REQUEST", "use POST");
        if (path == "/auth/api-keys")
            return r.method == "POST" ? createApiKey(r) : failure(405, "BAD_REQUEST", "use POST");
        static constexpr std::string_view kDaemons = "/hpc/daemons";
        if (path == kDaemons) return daemons(r, {});
        if (path.rfind(std::string(kDaemons) + "/", 0) == 0) {
            std::string id = path.substr(kDaemons.size() + 1);
            if (!isValidDaemonId(id))
                return failure(400, "BAD_REQUEST", "daemon ids are 1-64 characters of A-Z a-z 0-9 . _ -");
            return daemons(r, id);
        }
        return failure(404, "NOT_FOUND", "no route " + printable(r.method) + " " + printable(path));
    } catch (const std::exception& e) {
        log::error("internal error on " + printable(r.method) + " " + printable(path) + ": " + e.what());
        return failure(500, "INTERNAL", "internal error");
    }
}

ApiResponse Api::signin(const ApiRequest& r) {
    auto body = bodyObject(r);
    if (!body) return failure(400, "BAD_REQUEST", "body must be a JSON object {\"email\": ...}");
    std::string email = stringField(*body, "email");
    if (!plausibleEmail(email)) return failure(400, "BAD_REQUEST", "\"email\" must be an email address");
    if (!admitSignin(r.remote)) {
        log::warning("sign-in code refused to " + r.remote + ": over its limit of " +
                     std::to_string(m_signinLimitPerClient) + " per 10 minutes");
        return failure(429, "LIMIT", "too many sign-in codes requested from this address; wait 10 minutes");
    }
    Secret code = sixDigitCode();
    auto token = m_db.startSignin(email, code);
    if (!token) return failure(429, "LIMIT", "too many sign-in codes requested; wait 10 minutes");
    m_sender(email, code);
    log::info("sign-in code sent to " + email);
    return success("a sign-in code was sent to " + email, {{"token", token->reveal()}});
}

bool Api::admitSignin(const std::string& remote) {
    if (m_signinLimitPerClient == 0) return true;
    // "address:port" (IPv6 too): the port changes with every connection.
    std::string client = remote.substr(0, remote.rfind(':'));
    double now = nowEpochSeconds();
    double horizon = now - RelayDb::kCodeLifetime;
    auto expire = [horizon](std::deque<double>& times) {
        while (!times.empty() && times.front() <= horizon) times.pop_front();
    };
    if (m_signinsByClient.size() > 4096)
        for (auto it = m_signinsByClient.begin(); it != m_signinsByClient.end();) {
            expire(it->second);
            it = it->second.empty() ? m_signinsByClient.erase(it) : std::next(it);
        }
    auto& times = m_signinsByClient[client];
    expire(times);
    if (times.size() >= m_signinLimitPerClient) return false;
    times.push_back(now);
    return true;
}

ApiResponse Api::verify(const ApiRequest& r) {
    auto body = bodyObject(r);
    if (!body) return failure(400, "BAD_REQUEST", "body must be a JSON object {\"token\", \"otp\"}");
    Secret token(stringField(*body, "token"));
    Secret otp(stringField(*body, "otp"));
    if (token.empty() || otp.empty()) return failure(400, "BAD_REQUEST", "\"token\" and \"otp\" are required");
    std::int64_t userId = 0;
    switch (m_db.verifyCode(token, otp, userId)) {
        case VerifyOutcome::Ok: break;
        case VerifyOutcome::WrongCode: return failure(401, "UNAUTHORIZED", "wrong code");
        case VerifyOutcome::Expired: return failure(401, "UNAUTHORIZED", "the code has expired; request a new one");
        case VerifyOutcome::TooManyAttempts:
            return failure(429, "LIMIT", "too many wrong codes; request a new one");
        case VerifyOutcome::UnknownToken:
            return failure(401, "UNAUTHORIZED", "unknown or already used sign-in; request a new code");
    }
    auto [id, access] = m_db.issueCredential(userId, "access", RelayDb::kAccessTokenLifetime);
    log::info("user " + std::to_string(userId) + " signed in (credential " + std::to_string(id) + ")");
    return reply(200, {{"access_token", access.reveal()},
                       {"token_type", "bearer"},
                       {"expires_in", static_cast<std::int64_t>(RelayDb::kAccessTokenLifetime)}});
}

ApiResponse Api::createApiKey(const ApiRequest& r) {
    auto who = authenticate(r.authorization);
    if (!who || who->kind != "access")
        return failure(401, "UNAUTHORIZED", "an access token from sign-in is required");
    auto [id, key] = m_db.issueCredential(who->userId, "api_key", std::nullopt);
    log::info("user " + std::to_string(who->userId) + " created API key " + std::to_string(id));
    return reply(201, {{"id", id}, {"api_key", key.reveal()}, {"created_at", nowEpochSeconds()}, {"expires_at", nullptr}});
}

json::object Api::describe(std::int64_t userId, const Registration& reg) const {
    json::object o = reg.info;
    o["daemon_id"] = reg.daemonId;
    o["created_at"] = reg.createdAt;
    o["updated_at"] = reg.updatedAt;
    auto since = m_hub.connectedSince(userId, reg.daemonId);
    o["connected"] = since.has_value();
    o["connected_since"] = since ? json::value(*since) : json::value(nullptr);
    return o;
}

ApiResponse Api::daemons(const ApiRequest& r, const std::string& daemonId) {
    auto who = authenticate(r.authorization);
    if (!who) return failure(401, "UNAUTHORIZED", "a valid bearer token or API key is required");
    if (daemonId.empty()) {
        if (r.method != "GET") return failure(405, "BAD_REQUEST", "use GET on /hpc/daemons");
        json::array list;
        for (const auto& reg : m_db.daemons(who->userId)) list.push_back(describe(who->userId, reg));
        return success("ok", {{"daemons", std::move(list)}});
    }
    if (r.method == "GET") {
        auto reg = m_db.daemon(who->userId, daemonId);
        if (!reg) return failure(404, "NOT_FOUND", "no daemon " + daemonId);
        return success("ok", describe(who->userId, *reg));
    }
    if (r.method == "PUT") {
        auto body = bodyObject(r);
        if (!body) return failure(400, "BAD_REQUEST", "body must be a JSON object");
        std::string why;
        if (!validRegistration(*body, why)) return failure(400, "BAD_REQUEST", why);
        bool created = m_db.putDaemon(who->userId, daemonId, *body);
        log::info("daemon " + daemonId + " (user " + std::to_string(who->userId) + ") " +
                  (created ? "registered" : "registration updated"));
        return success(created ? "registered" : "updated", {{"daemon_id", daemonId}, {"created", created}},
                       created ? 201 : 200);
    }
    if (r.method == "DELETE") {
        if (!m_db.deleteDaemon(who->userId, daemonId)) return failure(404, "NOT_FOUND", "no daemon " + daemonId);
        log::info("daemon " + daemonId + " (user " + std::to_string(who->userId) + ") unregistered");
        return success("deleted", {{"daemon_id", daemonId}});
    }
    return failure(405, "BAD_REQUEST", "use GET, PUT or DELETE on /hpc/daemons/{id}");
}

}  // namespace hpc::relay
