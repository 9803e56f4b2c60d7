// The MCP authorization flow: OAuth 2.1 with PKCE (S256), protected-resource
// and authorization-server metadata (RFC 9728, RFC 8414), dynamic client
// registration (RFC 7591) and revocation (RFC 7009), with the email code as
// the sign-in. A client (a hosted agent platform) ends with an access token
// of the user's agent identity, as `hpc-agent login` does, and a refresh
// token rotated on each use. docs/mcp.md.
#include "api.hpp"

#include "log.hpp"
#include "util.hpp"

#include <openssl/sha.h>

#include <algorithm>
#include <array>
#include <map>

namespace json = boost::json;

namespace hpc::relay {
namespace {

constexpr double kCodeSeconds = 300;              ///< an authorization code, from sign-in to token
constexpr double kRefreshSeconds = 30 * 86400.0;  ///< a refresh token
constexpr std::size_t kMaxRedirectUris = 10;
constexpr std::size_t kMaxUriBytes = 2000;

ApiResponse jsonAnswer(int status, const json::object& body) {
    ApiResponse r{status, json::serialize(body)};
    r.headers = {{"Cache-Control", "no-store"}};
    return r;
}

/// An OAuth error answer (RFC 6749 §5.2).
ApiResponse oauthError(int status, const std::string& error, const std::string& description) {
    return jsonAnswer(status, {{"error", error}, {"error_description", description}});
}

/// application/x-www-form-urlencoded (a body, or a query): the first value of each name.
std::map<std::string, std::string> parseForm(std::string_view text) {
    std::map<std::string, std::string> out;
    // '+' is a space; a field with a broken %-escape is taken as empty.
    auto decode = [](std::string_view s) {
        std::string spaced(s);
        std::replace(spaced.begin(), spaced.end(), '+', ' ');
        return percentDecode(spaced).value_or(std::string());
    };
    while (!text.empty()) {
        auto amp = text.find('&');
        auto pair = text.substr(0, amp);
        text = amp == std::string_view::npos ? std::string_view() : text.substr(amp + 1);
        auto eq = pair.find('=');
        auto name = decode(pair.substr(0, eq));
        if (!name.empty())
            out.try_emplace(name, eq == std::string_view::npos ? std::string() : decode(pair.substr(eq + 1)));
    }
    return out;
}

std::string urlEncode(std::string_view s) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out.push_back(static_cast<char>(c));
        } else {
            out.push_back('%');
            out.push_back(kHex[c >> 4]);
            out.push_back(kHex[c & 15]);
        }
    }
    return out;
}

std::string htmlEscape(std::string_view s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&quot;";
                break;
            case '\'':
                out += "&#39;";
                break;
            default:
                out.push_back(c);
        }
    }
    return out;
}

/// BASE64URL(SHA-256(verifier)), PKCE's S256 (RFC 7636 §4.2).
std::string s256(const std::string& verifier) {
    std::array<unsigned char, SHA256_DIGEST_LENGTH> digest{};
    SHA256(reinterpret_cast<const unsigned char*>(verifier.data()), verifier.size(), digest.data());
    std::string b64 = base64Encode(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
    std::replace(b64.begin(), b64.end(), '+', '-');
    std::replace(b64.begin(), b64.end(), '/', '_');
    while (!b64.empty() && b64.back() == '=') b64.pop_back();
    return b64;
}

bool validVerifier(const std::string& v) {
    return v.size() >= 43 && v.size() <= 128 && std::all_of(v.begin(), v.end(), [](unsigned char c) {
               return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
           });
}

/// A redirect URI a client may register: https, http to this machine's
/// loopback (a native client), or a private-use scheme; never one that runs
/// code in a browser, and without a fragment (OAuth 2.1 §2.3).
bool validRedirect(const std::string& uri) {
    auto colon = uri.find(':');
    if (uri.size() > kMaxUriBytes || colon == std::string::npos || colon == 0 || uri.find('#') != std::string::npos ||
        !isValidUtf8(uri) || std::any_of(uri.begin(), uri.end(), [](unsigned char c) { return c <= 0x20; }))
        return false;
    std::string scheme = uri.substr(0, colon);
    std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
    if (!std::isalpha(static_cast<unsigned char>(scheme[0])) ||
        !std::all_of(scheme.begin(), scheme.end(),
                     [](unsigned char c) { return std::isalnum(c) || c == '+' || c == '-' || c == '.'; }))
        return false;
    if (scheme == "javascript" || scheme == "data" || scheme == "vbscript" || scheme == "file") return false;
    if (scheme != "http" && scheme != "https") return true;
    if (uri.compare(colon, 3, "://") != 0) return false;
    auto hostStart = colon + 3;
    auto hostEnd = uri.find_first_of("/?", hostStart);
    std::string host = uri.substr(hostStart, hostEnd == std::string::npos ? std::string::npos : hostEnd - hostStart);
    if (host.empty() || host.find('@') != std::string::npos) return false;
    if (scheme == "https") return true;
    auto name = host.starts_with('[') ? host.substr(0, host.find(']') + 1) : host.substr(0, host.find(':'));
    return name == "localhost" || name == "127.0.0.1" || name == "[::1]";
}

std::string withQuery(const std::string& uri, const std::vector<std::pair<std::string, std::string>>& params) {
    std::string out = uri;
    char sep = uri.find('?') == std::string::npos ? '?' : '&';
    for (const auto& [k, v] : params) {
        if (v.empty()) continue;
        out += sep + k + "=" + urlEncode(v);
        sep = '&';
    }
    return out;
}

ApiResponse redirect(const std::string& location) {
    ApiResponse r{302, ""};
    r.contentType = "text/plain";
    r.headers = {{"Location", location}, {"Cache-Control", "no-store"}};
    return r;
}

/// A page that runs no script and may not be framed.
ApiResponse htmlAnswer(int status, std::string body) {
    ApiResponse r{status, std::move(body)};
    r.contentType = "text/html; charset=utf-8";
    r.headers = {{"Cache-Control", "no-store"},
                 {"Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"},
                 {"X-Frame-Options", "DENY"},
                 {"Referrer-Policy", "no-referrer"}};
    return r;
}

/// The OAuth parameters the sign-in page carries from step to step.
constexpr std::array<std::string_view, 7> kCarried = {"client_id", "redirect_uri",          "state",         "scope",
                                                      "resource",  "code_challenge_method", "code_challenge"};

/// The sign-in page: step 1 asks for the email, step 2 for the code.
ApiResponse page(int status, const std::map<std::string, std::string>& params, const std::string& clientName,
                 const std::string& message, const std::string& email = {}, const std::string& signin = {}) {
    std::string hidden;
    for (auto name : kCarried)
        if (auto it = params.find(std::string(name)); it != params.end())
            hidden +=
                "<input type=\"hidden\" name=\"" + std::string(name) + "\" value=\"" + htmlEscape(it->second) + "\">\n";
    std::string body =
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in to hpc-relay</title>"
        "<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}input{font-size:1.1em}"
        ".error{color:#a00}</style></head><body>\n<h1>Sign in</h1>\n<p><b>" +
        htmlEscape(clientName) +
        "</b> asks to act as one of your agents on your daemons (commands, shells, files and jobs, within the "
        "directories each daemon allows).</p>\n";
    if (!message.empty()) body += "<p class=\"error\">" + htmlEscape(message) + "</p>\n";
    body += "<form method=\"post\" action=\"/oauth/authorize\">\n" + hidden;
    if (signin.empty()) {
        body +=
            "<input type=\"hidden\" name=\"step\" value=\"email\">\n<label>Email <input type=\"email\" name=\"email\" "
            "required autofocus value=\"" +
            htmlEscape(email) + "\"></label>\n<button type=\"submit\">Send me a code</button>\n";
    } else {
        body +=
            "<input type=\"hidden\" name=\"step\" value=\"code\">\n<input type=\"hidden\" name=\"signin\" value=\"" +
            htmlEscape(signin) + "\">\n<input type=\"hidden\" name=\"email\" value=\"" + htmlEscape(email) +
            "\">\n<p>A code was sent to " + htmlEscape(email) +
            ".</p>\n<label>Code <input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" "
            "required autofocus></label><br>\n<label>As agent <input name=\"agent\" value=\"default\"></label>\n"
            "<button type=\"submit\">Sign in</button>\n";
    }
    body += "</form>\n</body></html>\n";
    return htmlAnswer(status, std::move(body));
}

ApiResponse errorPage(int status, const std::string& message) {
    return htmlAnswer(status,
                      "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>hpc-relay</title>"
                      "</head><body><h1>This sign-in cannot go on</h1><p>" +
                          htmlEscape(message) + "</p></body></html>\n");
}

}  // namespace

std::optional<ApiResponse> Api::oauth(const ApiRequest& r, const std::string& path) {
    auto get = [&](auto answer) -> ApiResponse {
        if (r.method != "GET") return errorResponse(ErrorCode::BadRequest, "use GET");
        return answer();
    };
    if (path == "/.well-known/oauth-protected-resource" || path == "/.well-known/oauth-protected-resource/mcp")
        return get([&] {
            return jsonAnswer(200, {{"resource", r.base + "/mcp"},
                                    {"authorization_servers", json::array{json::value(r.base)}},
                                    {"bearer_methods_supported", {"header"}},
                                    {"scopes_supported", {"hpc"}},
                                    {"resource_name", "hpc-relay MCP"}});
        });
    if (path == "/.well-known/oauth-authorization-server")
        return get([&] {
            return jsonAnswer(200, {{"issuer", r.base},
                                    {"authorization_endpoint", r.base + "/oauth/authorize"},
                                    {"token_endpoint", r.base + "/oauth/token"},
                                    {"registration_endpoint", r.base + "/oauth/register"},
                                    {"revocation_endpoint", r.base + "/oauth/revoke"},
                                    {"response_types_supported", {"code"}},
                                    {"grant_types_supported", {"authorization_code", "refresh_token"}},
                                    {"code_challenge_methods_supported", {"S256"}},
                                    {"token_endpoint_auth_methods_supported", {"none"}},
                                    {"revocation_endpoint_auth_methods_supported", {"none"}},
                                    {"scopes_supported", {"hpc"}}});
        });
    auto post = [&](ApiResponse (Api::*handler)(const ApiRequest&)) -> ApiResponse {
        if (r.method != "POST") return oauthError(405, "invalid_request", "use POST");
        return (this->*handler)(r);
    };
    if (path == "/oauth/register") return post(&Api::oauthRegister);
    if (path == "/oauth/token") return post(&Api::oauthToken);
    if (path == "/oauth/revoke") return post(&Api::oauthRevoke);
    if (path == "/oauth/authorize") {
        if (r.method != "GET" && r.method != "POST") return errorPage(405, "use GET or POST");
        return oauthAuthorize(r);
    }
    return std::nullopt;
}

ApiResponse Api::oauthRegister(const ApiRequest& r) {
    json::error_code ec;
    auto v = json::parse(r.body, ec);
    if (ec || !v.is_object()) return oauthError(400, "invalid_client_metadata", "the body must be a JSON object");
    const auto& o = v.get_object();
    std::vector<std::string> uris;
    if (auto* list = o.if_contains("redirect_uris"); list && list->is_array())
        for (const auto& u : list->get_array()) {
            if (!u.is_string() || !validRedirect(std::string(u.get_string())))
                return oauthError(400, "invalid_redirect_uri",
                                  "each redirect URI must be https, http to localhost, or a private-use scheme, "
                                  "without a fragment");
            uris.emplace_back(u.get_string());
        }
    if (uris.empty() || uris.size() > kMaxRedirectUris)
        return oauthError(400, "invalid_redirect_uri",
                          "\"redirect_uris\" must list 1 to " + std::to_string(kMaxRedirectUris) + " URIs");
    if (auto* method = o.if_contains("token_endpoint_auth_method");
        method && !(method->is_string() && method->get_string() == "none"))
        return oauthError(400, "invalid_client_metadata",
                          "this server issues no client secrets: \"token_endpoint_auth_method\" must be \"none\"");
    std::string name = "an MCP client";
    if (auto* n = o.if_contains("client_name"); n && n->is_string() && !n->get_string().empty())
        name = std::string(n->get_string()).substr(0, 100);
    if (!isValidUtf8(name)) return oauthError(400, "invalid_client_metadata", "\"client_name\" must be UTF-8");
    auto id = m_db.registerOAuthClient(name, uris);
    log::info("OAuth client " + id + " registered from " + r.remote);
    json::array list;
    for (const auto& u : uris) list.emplace_back(u);
    return jsonAnswer(201, {{"client_id", id},
                            {"client_id_issued_at", static_cast<std::int64_t>(nowEpochSeconds())},
                            {"client_name", name},
                            {"redirect_uris", std::move(list)},
                            {"grant_types", {"authorization_code", "refresh_token"}},
                            {"response_types", {"code"}},
                            {"token_endpoint_auth_method", "none"}});
}

ApiResponse Api::oauthAuthorize(const ApiRequest& r) {
    auto query = r.target.find('?');
    auto params =
        r.method == "GET" ? parseForm(query == std::string::npos ? "" : r.target.substr(query + 1)) : parseForm(r.body);
    auto param = [&](const char* name) {
        auto it = params.find(name);
        return it == params.end() ? std::string() : it->second;
    };
    // Until the client and its redirect URI are known good, errors are shown, never redirected.
    auto client = m_db.oauthClient(param("client_id"));
    if (!client) return errorPage(400, "unknown client_id: the application must register first");
    std::string redirectUri = param("redirect_uri");
    if (redirectUri.empty() && client->redirectUris.size() == 1)
        redirectUri = params["redirect_uri"] = client->redirectUris[0];
    if (std::find(client->redirectUris.begin(), client->redirectUris.end(), redirectUri) == client->redirectUris.end())
        return errorPage(400, "the redirect_uri is not one this application registered");
    auto fail = [&](const std::string& error, const std::string& description) {
        return redirect(withQuery(
            redirectUri,
            {{"error", error}, {"error_description", description}, {"state", param("state")}, {"iss", r.base}}));
    };
    if (r.method == "GET" && param("response_type") != "code")
        return fail("unsupported_response_type", "response_type must be code");
    if (param("code_challenge_method") != "S256" || param("code_challenge").size() != 43)
        return fail("invalid_request", "PKCE is required: code_challenge with code_challenge_method S256");
    if (auto resource = param("resource"); !resource.empty() && resource != r.base + "/mcp")
        return fail("invalid_target", "the only resource here is " + r.base + "/mcp");

    std::string step = r.method == "GET" ? std::string() : param("step");
    if (step.empty()) return page(200, params, client->name, "");
    std::string email = param("email");
    if (step == "email") {
        auto started = startSignin(email, r.remote);
        if (auto* refused = std::get_if<ApiResponse>(&started))
            return page(refused->status, params, client->name, errorMessageOf(*refused), email);
        return page(200, params, client->name, "", email, std::get<Secret>(started).reveal());
    }
    if (step != "code") return page(400, params, client->name, "unknown step");
    std::string signin = param("signin");
    std::string agent = param("agent").empty() ? std::string(RelayDb::kDefaultAgent) : param("agent");
    if (!isValidDaemonId(agent))
        return page(400, params, client->name,
                    "agent names are 1-64 characters of A-Z a-z 0-9 . _ - (not starting with . or -)", email, signin);
    VerifyOutcome outcome{};
    auto checked = checkCode(Secret(signin), Secret(param("code")), &outcome);
    if (auto* refused = std::get_if<ApiResponse>(&checked)) {
        // A wrong code may be typed again; otherwise a new code is needed: back to step 1.
        bool retry = outcome == VerifyOutcome::WrongCode;
        return page(refused->status, params, client->name, errorMessageOf(*refused), email, retry ? signin : "");
    }
    auto userId = std::get<std::int64_t>(checked);
    auto code = m_db.storeOAuthGrant({"code", client->clientId, userId, agent, redirectUri, param("code_challenge")},
                                     kCodeSeconds);
    log::info("user " + std::to_string(userId) + " authorized OAuth client " + client->clientId + " as agent " + agent);
    return redirect(withQuery(redirectUri, {{"code", code.reveal()}, {"state", param("state")}, {"iss", r.base}}));
}

ApiResponse Api::oauthToken(const ApiRequest& r) {
    if (r.contentType.find("application/x-www-form-urlencoded") == std::string::npos)
        return oauthError(400, "invalid_request", "the body must be application/x-www-form-urlencoded");
    auto params = parseForm(r.body);
    auto param = [&](const char* name) {
        auto it = params.find(name);
        return it == params.end() ? std::string() : it->second;
    };
    std::string grantType = param("grant_type");
    std::optional<OAuthGrant> grant;
    if (grantType == "authorization_code") {
        grant = m_db.takeOAuthGrant(Secret(param("code")), "code");
        if (!grant || grant->clientId != param("client_id") || grant->redirectUri != param("redirect_uri"))
            return oauthError(400, "invalid_grant",
                              "the code is unknown, used, expired, or was issued for another client or redirect_uri");
        auto verifier = param("code_verifier");
        if (!validVerifier(verifier) || s256(verifier) != grant->challenge)
            return oauthError(400, "invalid_grant", "code_verifier does not match the code_challenge");
    } else if (grantType == "refresh_token") {
        // Rotated: the refresh token given is spent whatever follows.
        grant = m_db.takeOAuthGrant(Secret(param("refresh_token")), "refresh");
        if (!grant || grant->clientId != param("client_id"))
            return oauthError(400, "invalid_grant",
                              "the refresh token is unknown, used, revoked, expired, or another client's");
    } else {
        return oauthError(400, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token");
    }
    auto [id, access] = m_db.issueAccessToken(grant->userId, grant->agent);
    auto refresh =
        m_db.storeOAuthGrant({"refresh", grant->clientId, grant->userId, grant->agent, "", ""}, kRefreshSeconds);
    log::info("user " + std::to_string(grant->userId) + " got an access token (credential " + std::to_string(id) +
              ") as agent " + grant->agent + " for OAuth client " + grant->clientId + " by " + grantType);
    return jsonAnswer(200, {{"access_token", access.reveal()},
                            {"token_type", "Bearer"},
                            {"expires_in", static_cast<std::int64_t>(RelayDb::kAccessTokenLifetime)},
                            {"refresh_token", refresh.reveal()},
                            {"scope", "hpc"}});
}

ApiResponse Api::oauthRevoke(const ApiRequest& r) {
    auto params = parseForm(r.body);
    Secret token(params.count("token") ? params["token"] : std::string());
    if (token.empty()) return oauthError(400, "invalid_request", "\"token\" is required");
    // RFC 7009: the same answer whether the token was known or not.
    if (!m_db.takeOAuthGrant(token, "refresh"))
        if (auto who = m_db.authenticate(token)) {
            m_db.revokeCredential(who->credentialId);
            log::info("user " + std::to_string(who->userId) + " revoked credential " +
                      std::to_string(who->credentialId) + " through /oauth/revoke");
            m_hub.dropCredential(who->credentialId, "this credential was revoked");
        }
    return jsonAnswer(200, {});
}

}  // namespace hpc::relay
