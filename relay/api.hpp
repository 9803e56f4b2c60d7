#pragma once
/// hpc-relay's HTTP routes (docs/protocol.md, "HTTP routes"), independent of
/// the transport: the server hands each request over as an ApiRequest.

#include "errors.hpp"
#include "hub.hpp"
#include "relay_db.hpp"

#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace hpc::relay {

struct ApiRequest {
    std::string method;
    std::string target;         ///< path and query
    std::string authorization;  ///< the raw Authorization header
    std::string body;
    std::string remote;  ///< peer address, for rate limits and logs
    std::string contentType{};
    /// This relay as the client reached it, "https://HOST[:PORT]" (the Host
    /// header): what OAuth metadata names.
    std::string base{};
};

struct ApiResponse {
    int status = 200;
    std::string body;  ///< JSON, unless contentType says otherwise
    std::string contentType = "application/json";
    std::vector<std::pair<std::string, std::string>> headers{};
};

/// The message of an error answer ({"status": "error", "code", "message"}).
std::string errorMessageOf(const ApiResponse& answer);

/// Whether a Host header is a host name or address with an optional port,
/// safe to put in a URL the relay hands out.
bool isPlainHost(std::string_view host);

/// An error answer, `{"status": "error", "code", "message"}`, with the HTTP
/// status and the code of `code`'s row in the closed error table. The message
/// is shown to the client as it is: never a detail meant for the log.
ApiResponse errorResponse(ErrorCode code, std::string message);

/// Delivers a one-time code to a user (a command, or a file for local use).
using CodeSender = std::function<void(const std::string& email, const Secret& code)>;

class Api {
public:
    Api(RelayDb& db, Hub& hub, CodeSender sender) : m_db(db), m_hub(hub), m_sender(std::move(sender)) {}

    ApiResponse handle(const ApiRequest& request);
    /// The principal behind an `Authorization: Bearer …` header, if valid.
    std::optional<Principal> authenticate(const std::string& authorization);
    /// The UNAUTHORIZED answer to a request whose bearer was refused: says
    /// so when it is a token that has expired, else `needed`.
    ApiResponse refuseBearer(const std::string& authorization, const std::string& needed);
    bool isRegistered(std::int64_t userId, const std::string& daemonId) {
        return m_db.daemon(userId, daemonId).has_value();
    }
    /// Whether `who` may act for daemon `daemonId`: a user's access token
    /// may; an API key only for the daemon it is bound to (or was, until the
    /// daemon connects with its successor), or for one registered before keys
    /// were bound. With `claim` (registering), a key bound to no daemon yet
    /// may too: the key setup has just made. So one daemon's key never speaks
    /// for another.
    bool mayActFor(const Principal& who, const std::string& daemonId, bool claim);
    /// Sign-in codes one client address may request per code lifetime (10
    /// minutes), whatever the email: with the per-email limit, this bounds how
    /// many users one client can lock out of sign-in. 0: no limit.
    void setSigninLimitPerClient(std::size_t limit) { m_signinLimitPerClient = limit; }
    static constexpr std::size_t kDefaultSigninLimitPerClient = 20;
    /// Why the listener cannot accept connections now (out of descriptors,
    /// say), "" while it can: GET /health shows it, since a relay in that
    /// state still serves the connections it has.
    void setAcceptProblem(std::string problem) { m_acceptProblem = std::move(problem); }

private:
    ApiResponse health() const;
    ApiResponse signin(const ApiRequest& r);
    ApiResponse verify(const ApiRequest& r);
    ApiResponse createApiKey(const ApiRequest& r);
    ApiResponse daemons(const ApiRequest& r, const std::string& daemonId);
    /// POST /hpc/daemons/{id}/rotate-key: a new API key for the daemon.
    ApiResponse rotateKey(const ApiRequest& r, const std::string& daemonId);
    /// POST /auth/revoke: the bearer credential revokes itself (a token,
    /// never its agent identity).
    ApiResponse revoke(const ApiRequest& r);
    /// GET /auth/whoami: the bearer's user, kind and agent identity.
    ApiResponse whoami(const ApiRequest& r);
    /// GET /auth/agents: the user's agent identities.
    ApiResponse agents(const ApiRequest& r);
    boost::json::object describe(std::int64_t userId, const Registration& reg) const;
    /// Counts a code request from `remote`; false when its client is over the limit.
    bool admitSignin(const std::string& remote);
    /// Sends `email` a sign-in code (the limits applied): the sign-in's
    /// token, or the answer that refuses it.
    std::variant<Secret, ApiResponse> startSignin(const std::string& email, const std::string& remote);
    /// The user a code signs in, or the answer that refuses it; `outcome`,
    /// when given, says which.
    std::variant<std::int64_t, ApiResponse> checkCode(const Secret& token, const Secret& code,
                                                      VerifyOutcome* outcome = nullptr);

    // The MCP authorization flow, OAuth 2.1 (oauth.cpp, docs/mcp.md).
    /// nullopt when `path` is none of its routes.
    std::optional<ApiResponse> oauth(const ApiRequest& r, const std::string& path);
    ApiResponse oauthRegister(const ApiRequest& r);
    /// GET: the sign-in page; POST: its steps (email, then code).
    ApiResponse oauthAuthorize(const ApiRequest& r);
    ApiResponse oauthToken(const ApiRequest& r);
    ApiResponse oauthRevoke(const ApiRequest& r);

    RelayDb& m_db;
    Hub& m_hub;
    CodeSender m_sender;
    std::size_t m_signinLimitPerClient = kDefaultSigninLimitPerClient;
    std::string m_acceptProblem;
    /// Recent code requests by client address (without the port).
    std::unordered_map<std::string, std::deque<double>> m_signinsByClient;
};

}  // namespace hpc::relay
