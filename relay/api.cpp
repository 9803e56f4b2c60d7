#include "api.hpp"

#include "log.hpp"
#include "skill.hpp"
#include "util.hpp"

#include <sys/random.h>

#include <algorithm>

namespace json = boost::json;

namespace hpc::relay {
namespace {

ApiResponse reply(int status, const json::object& body) { return {status, json::serialize(body)}; }

ApiResponse success(std::string message, json::object payload, int status = 200) {
    return reply(status, {{"status", "success"}, {"message", std::move(message)}, {"payload", std::move(payload)}});
}

/// A route asked with a method it does not take. The wire code stays
/// BAD_REQUEST (the closed set has no code for it); HTTP says 405, which is
/// what curl users and proxies expect.
ApiResponse wrongMethod(std::string message) {
    constexpr int kMethodNotAllowed = 405;
    auto r = errorResponse(ErrorCode::BadRequest, std::move(message));
    r.status = kMethodNotAllowed;
    return r;
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
        {"hostname", json::kind::string},    {"cluster_name", json::kind::string}, {"allowed_dirs", json::kind::array},
        {"job_workdir", json::kind::string}, {"instructions", json::kind::string}, {"scheduler", json::kind::string},
        {"version", json::kind::string},
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
    // A string (a name, from older clients) or {name, version, text}.
    if (auto* s = o.if_contains("skill"); s && !s->is_null()) why = skill::problem(*s);
    return why.empty();
}

}  // namespace

std::string errorMessageOf(const ApiResponse& answer) {
    json::error_code ec;
    auto v = json::parse(answer.body, ec);
    if (!ec && v.is_object())
        if (auto* m = v.get_object().if_contains("message"); m && m->is_string()) return std::string(m->get_string());
    return "HTTP " + std::to_string(answer.status);
}

bool isPlainHost(std::string_view host) {
    return !host.empty() && host.size() <= 255 && std::all_of(host.begin(), host.end(), [](unsigned char c) {
        return std::isalnum(c) || c == '.' || c == '-' || c == ':' || c == '[' || c == ']';
    });
}

ApiResponse errorResponse(ErrorCode code, std::string message) {
    return reply(toHttpStatus(code),
                 {{"status", "error"}, {"code", toProtocolCode(code)}, {"message", std::move(message)}});
}

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
        if (path == "/health" && r.method == "GET") return health();
        if (path == "/otp/signin") return r.method == "POST" ? signin(r) : wrongMethod("use POST");
        if (path == "/auth/otp/signin/verify") return r.method == "POST" ? verify(r) : wrongMethod("use POST");
        if (path == "/auth/api-keys") return r.method == "POST" ? createApiKey(r) : wrongMethod("use POST");
        if (path == "/auth/revoke") return r.method == "POST" ? revoke(r) : wrongMethod("use POST");
        if (path == "/auth/whoami") return r.method == "GET" ? whoami(r) : wrongMethod("use GET");
        if (path == "/auth/agents") return r.method == "GET" ? agents(r) : wrongMethod("use GET");
        if (auto answer = oauth(r, path)) return std::move(*answer);
        static constexpr std::string_view kDaemons = "/hpc/daemons";
        static constexpr std::string_view kRotate = "/rotate-key";
        if (path == kDaemons) return daemons(r, {});
        if (path.rfind(std::string(kDaemons) + "/", 0) == 0) {
            std::string id = path.substr(kDaemons.size() + 1);
            bool rotate =
                id.size() > kRotate.size() && id.compare(id.size() - kRotate.size(), kRotate.size(), kRotate) == 0;
            if (rotate) id.resize(id.size() - kRotate.size());
            if (!isValidDaemonId(id))
                return errorResponse(ErrorCode::BadRequest, "daemon ids are 1-64 characters of A-Z a-z 0-9 . _ -");
            if (rotate) return r.method == "POST" ? rotateKey(r, id) : wrongMethod("use POST");
            return daemons(r, id);
        }
        return errorResponse(ErrorCode::NotFound, "no route " + printable(r.method) + " " + printable(path));
    } catch (const std::exception& e) {
        // A code from the closed set answers with its own status (a full
        // disk: 507); anything else is a bug, its detail for the log only.
        auto* known = dynamic_cast<const Error*>(&e);
        if (known && known->code() != ErrorCode::Internal) return errorResponse(known->code(), e.what());
        log::error("internal error on " + printable(r.method) + " " + printable(path) + ": " + e.what());
        return errorResponse(ErrorCode::Internal, "internal error");
    }
}

ApiResponse Api::health() const {
    return success("ok", {{"version", HPC_VERSION},
                          {"accepting", m_acceptProblem.empty()},
                          {"accept_problem", m_acceptProblem},
                          {"agents_connected", m_hub.agentCount()},
                          {"daemons_connected", m_hub.daemonCount()}});
}

ApiResponse Api::signin(const ApiRequest& r) {
    auto body = bodyObject(r);
    if (!body) return errorResponse(ErrorCode::BadRequest, "body must be a JSON object {\"email\": ...}");
    std::string email = stringField(*body, "email");
    auto started = startSignin(email, r.remote);
    if (auto* refused = std::get_if<ApiResponse>(&started)) return std::move(*refused);
    return success("a sign-in code was sent to " + email, {{"token", std::get<Secret>(started).reveal()}});
}

std::variant<Secret, ApiResponse> Api::startSignin(const std::string& email, const std::string& remote) {
    if (!plausibleEmail(email)) return errorResponse(ErrorCode::BadRequest, "\"email\" must be an email address");
    if (!admitSignin(remote)) {
        log::warning("sign-in code refused to " + remote + ": over its limit of " +
                     std::to_string(m_signinLimitPerClient) + " per 10 minutes");
        return errorResponse(ErrorCode::Limit, "too many sign-in codes requested from this address; wait 10 minutes");
    }
    Secret code = sixDigitCode();
    auto token = m_db.startSignin(email, code);
    if (!token) return errorResponse(ErrorCode::Limit, "too many sign-in codes requested; wait 10 minutes");
    m_sender(email, code);
    log::info("sign-in code sent to " + email);
    return std::move(*token);
}

std::variant<std::int64_t, ApiResponse> Api::checkCode(const Secret& token, const Secret& code,
                                                       VerifyOutcome* outcome) {
    std::int64_t userId = 0;
    auto verdict = m_db.verifyCode(token, code, userId);
    if (outcome) *outcome = verdict;
    switch (verdict) {
        case VerifyOutcome::Ok:
            return userId;
        case VerifyOutcome::WrongCode:
            return errorResponse(ErrorCode::Unauthorized, "wrong code");
        case VerifyOutcome::Expired:
            return errorResponse(ErrorCode::Unauthorized, "the code has expired; request a new one");
        case VerifyOutcome::TooManyAttempts:
            return errorResponse(ErrorCode::Limit, "too many wrong codes; request a new one");
        case VerifyOutcome::UnknownToken:
            break;
    }
    return errorResponse(ErrorCode::Unauthorized, "unknown or already used sign-in; request a new code");
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
    if (!body) return errorResponse(ErrorCode::BadRequest, "body must be a JSON object {\"token\", \"otp\"}");
    Secret token(stringField(*body, "token"));
    Secret otp(stringField(*body, "otp"));
    if (token.empty() || otp.empty()) return errorResponse(ErrorCode::BadRequest, "\"token\" and \"otp\" are required");
    // Checked before the code is spent on it.
    std::string agent = body->contains("agent") ? stringField(*body, "agent") : std::string(RelayDb::kDefaultAgent);
    if (!isValidDaemonId(agent))
        return errorResponse(ErrorCode::BadRequest,
                             "\"agent\" names are 1-64 characters of A-Z a-z 0-9 . _ - (not starting with . or -)");
    auto checked = checkCode(token, otp);
    if (auto* refused = std::get_if<ApiResponse>(&checked)) return std::move(*refused);
    auto userId = std::get<std::int64_t>(checked);
    auto [id, access] = m_db.issueAccessToken(userId, agent);
    log::info("user " + std::to_string(userId) + " signed in as agent " + agent + " (credential " + std::to_string(id) +
              ")");
    return reply(200, {{"access_token", access.reveal()},
                       {"token_type", "bearer"},
                       {"expires_in", static_cast<std::int64_t>(RelayDb::kAccessTokenLifetime)},
                       {"agent", agent}});
}

ApiResponse Api::refuseBearer(const std::string& authorization, const std::string& needed) {
    static constexpr std::string_view kPrefix = "Bearer ";
    std::optional<double> expired;
    if (authorization.rfind(kPrefix, 0) == 0) expired = m_db.expiredAt(Secret(authorization.substr(kPrefix.size())));
    if (!expired) return errorResponse(ErrorCode::Unauthorized, needed);
    auto hours = static_cast<long long>((nowEpochSeconds() - *expired) / 3600);
    return errorResponse(ErrorCode::Unauthorized,
                         "this access token expired " + (hours > 0 ? std::to_string(hours) + " h ago" : "just now") +
                             "; sign in again (hpc-agent login --agent NAME): a new token of the same agent keeps "
                             "its jobs");
}

ApiResponse Api::whoami(const ApiRequest& r) {
    auto who = authenticate(r.authorization);
    if (!who) return refuseBearer(r.authorization, "a valid bearer token or API key is required");
    json::object p{{"user_id", who->userId},
                   {"email", m_db.email(who->userId)},
                   {"kind", who->kind},
                   {"credential_id", who->credentialId},
                   {"agent", who->agent},
                   {"agent_id", agentIdOf(*who)},
                   {"expires_at", who->expiresAt ? json::value(*who->expiresAt) : json::value(nullptr)}};
    return success("ok", std::move(p));
}

ApiResponse Api::agents(const ApiRequest& r) {
    auto who = authenticate(r.authorization);
    if (!who) return refuseBearer(r.authorization, "a valid bearer token or API key is required");
    json::array list;
    for (const auto& a : m_db.agents(who->userId))
        list.push_back(json::object{{"name", a.name}, {"created_at", a.createdAt}, {"valid_tokens", a.validTokens}});
    return success("ok", {{"agents", std::move(list)}});
}

ApiResponse Api::createApiKey(const ApiRequest& r) {
    auto who = authenticate(r.authorization);
    if (!who || who->kind != "access")
        return errorResponse(ErrorCode::Unauthorized, "an access token from sign-in is required");
    auto [id, key] = m_db.issueCredential(who->userId, "api_key", std::nullopt);
    log::info("user " + std::to_string(who->userId) + " created API key " + std::to_string(id));
    return reply(201,
                 {{"id", id}, {"api_key", key.reveal()}, {"created_at", nowEpochSeconds()}, {"expires_at", nullptr}});
}

ApiResponse Api::revoke(const ApiRequest& r) {
    auto who = authenticate(r.authorization);
    if (!who) return refuseBearer(r.authorization, "a valid bearer token or API key is required");
    m_db.revokeCredential(who->credentialId);
    log::info("user " + std::to_string(who->userId) + " revoked " + (who->kind == "api_key" ? "API key " : "token ") +
              std::to_string(who->credentialId));
    m_hub.dropCredential(who->credentialId, "this credential was revoked");
    return reply(200, {{"revoked", true}, {"id", who->credentialId}, {"kind", who->kind}});
}

ApiResponse Api::rotateKey(const ApiRequest& r, const std::string& daemonId) {
    auto who = authenticate(r.authorization);
    if (!who) return errorResponse(ErrorCode::Unauthorized, "a valid bearer token or API key is required");
    if (!m_db.daemon(who->userId, daemonId)) return errorResponse(ErrorCode::NotFound, "no daemon " + daemonId);
    if (!mayActFor(*who, daemonId, false))
        return errorResponse(ErrorCode::NotOwner, "this API key is not daemon " + daemonId + "'s");
    auto [id, key] = m_db.rotateDaemonKey(who->userId, daemonId, *who);
    log::info("daemon " + daemonId + " (user " + std::to_string(who->userId) + ") got a new API key " +
              std::to_string(id) + "; the previous one is revoked when the daemon connects with it");
    return success("a new API key for daemon " + daemonId,
                   {{"daemon_id", daemonId}, {"id", id}, {"api_key", key.reveal()}, {"created_at", nowEpochSeconds()}},
                   201);
}

bool Api::mayActFor(const Principal& who, const std::string& daemonId, bool claim) {
    if (who.kind != "api_key") return true;
    if (isRegistered(who.userId, daemonId)) {
        auto bound = m_db.boundKey(who.userId, daemonId);  // none: registered before keys were bound
        if (!bound || *bound == who.credentialId || m_db.isSuperseded(who.userId, daemonId, who.credentialId))
            return true;
    }
    return claim && m_db.isUnbound(who.userId, who.credentialId);
}

json::object Api::describe(std::int64_t userId, const Registration& reg) const {
    json::object o = reg.info;
    o["daemon_id"] = reg.daemonId;
    o["created_at"] = reg.createdAt;
    o["updated_at"] = reg.updatedAt;
    o["skill_version"] = reg.skillVersion;
    auto since = m_hub.connectedSince(userId, reg.daemonId);
    o["connected"] = since.has_value();
    o["connected_since"] = since ? json::value(*since) : json::value(nullptr);
    // What the daemon warns of (its state cut short by state_max_bytes, a
    // full disk): "" when nothing, or when it is not connected.
    o["warning"] = m_hub.warning(userId, reg.daemonId);
    return o;
}

ApiResponse Api::daemons(const ApiRequest& r, const std::string& daemonId) {
    auto who = authenticate(r.authorization);
    if (!who) return errorResponse(ErrorCode::Unauthorized, "a valid bearer token or API key is required");
    if (daemonId.empty()) {
        if (r.method != "GET") return wrongMethod("use GET on /hpc/daemons");
        json::array list;
        for (const auto& reg : m_db.daemons(who->userId)) list.push_back(describe(who->userId, reg));
        return success("ok", {{"daemons", std::move(list)}});
    }
    if (r.method == "GET") {
        auto reg = m_db.daemon(who->userId, daemonId);
        if (!reg) return errorResponse(ErrorCode::NotFound, "no daemon " + daemonId);
        auto o = describe(who->userId, *reg);
        o["skill_text"] = reg->skillText;  // only here: a list of daemons stays small
        return success("ok", std::move(o));
    }
    if (r.method == "PUT") {
        auto body = bodyObject(r);
        if (!body) return errorResponse(ErrorCode::BadRequest, "body must be a JSON object");
        std::string why;
        if (!validRegistration(*body, why)) return errorResponse(ErrorCode::BadRequest, why);
        if (!mayActFor(*who, daemonId, true))
            return errorResponse(ErrorCode::NotOwner, "this API key is not daemon " + daemonId + "'s");
        bool created = m_db.putDaemon(who->userId, daemonId, *body, who->kind == "api_key" ? who->credentialId : 0);
        log::info("daemon " + daemonId + " (user " + std::to_string(who->userId) + ") " +
                  (created ? "registered" : "registration updated"));
        return success(created ? "registered" : "updated", {{"daemon_id", daemonId}, {"created", created}},
                       created ? 201 : 200);
    }
    if (r.method == "DELETE") {
        if (isRegistered(who->userId, daemonId) && !mayActFor(*who, daemonId, false))
            return errorResponse(ErrorCode::NotOwner, "this API key is not daemon " + daemonId + "'s");
        auto revoked = m_db.deleteDaemon(who->userId, daemonId);
        if (!revoked) return errorResponse(ErrorCode::NotFound, "no daemon " + daemonId);
        log::info("daemon " + daemonId + " (user " + std::to_string(who->userId) + ") unregistered; " +
                  std::to_string(revoked->size()) + " API key(s) revoked");
        m_hub.dropDaemon(who->userId, daemonId, "this daemon was unregistered");
        for (auto id : *revoked) m_hub.dropCredential(id, "this API key was revoked");
        return success("deleted",
                       {{"daemon_id", daemonId}, {"revoked_keys", static_cast<std::int64_t>(revoked->size())}});
    }
    return wrongMethod("use GET, PUT or DELETE on /hpc/daemons/{id}");
}

}  // namespace hpc::relay
