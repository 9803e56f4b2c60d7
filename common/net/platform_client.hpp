#pragma once
/// The platform's HTTP routes as functions (docs/protocol.md, "HTTP routes"):
/// sign-in with a one-time code, API keys, the daemon registry. Used by
/// hpc-daemonctl setup and hpc-agent login/daemons.

#include "http_client.hpp"
#include "secret.hpp"

#include <boost/json.hpp>

namespace hpc::net {

/// What a sign-in grants: an access token of an agent identity.
struct AccessGrant {
    Secret accessToken;
    std::string agent;           ///< the identity's name; "" from a platform without identities
    std::int64_t expiresIn = 0;  ///< seconds; 0 when the platform does not say
};

class PlatformClient {
public:
    PlatformClient(Url base, ClientOptions options) : m_base(std::move(base)), m_options(std::move(options)) {}

    /// POST /otp/signin: the platform sends a code to `email`; returns the
    /// sign-in token that goes with it.
    Secret requestCode(const std::string& email);
    /// POST /auth/otp/signin/verify: returns an access token (of the
    /// platform's default agent identity).
    Secret verifyCode(const Secret& signinToken, const Secret& code) {
        return signIn(signinToken, code, {}).accessToken;
    }
    /// The same, for the agent identity `agent` ("": the platform's default),
    /// which the platform creates when it is new.
    AccessGrant signIn(const Secret& signinToken, const Secret& code, const std::string& agent);
    /// GET /auth/whoami: the bearer's user, kind and agent identity.
    boost::json::object whoami(const Secret& bearer);
    /// GET /auth/agents: the user's agent identities.
    boost::json::array listAgents(const Secret& bearer);
    /// POST /auth/api-keys (bearer access token): returns a new API key.
    Secret createApiKey(const Secret& accessToken);
    /// PUT /hpc/daemons/{id} (bearer API key). True when newly registered.
    bool registerDaemon(const Secret& apiKey, const std::string& daemonId, const boost::json::object& info);
    /// GET /hpc/daemons: the user's registrations, with "connected".
    boost::json::array listDaemons(const Secret& bearer);
    /// GET /hpc/daemons/{id}: one registration as listDaemons has it, plus
    /// its "skill_text". Throws Error(NotFound) for a daemon the user lacks.
    boost::json::object getDaemon(const Secret& bearer, const std::string& daemonId);
    /// POST /hpc/daemons/{id}/rotate-key (bearer: the daemon's API key):
    /// returns a new API key. The old one stays valid until the daemon
    /// connects with the new one; then the platform revokes it.
    Secret rotateDaemonKey(const Secret& apiKey, const std::string& daemonId);
    /// DELETE /hpc/daemons/{id}: unregisters the daemon; the platform revokes
    /// its API keys and closes its link. Returns how many keys it revoked.
    std::int64_t deleteDaemon(const Secret& bearer, const std::string& daemonId);
    /// POST /auth/revoke: the bearer (an access token or API key) revokes itself.
    void revoke(const Secret& bearer);

    const Url& base() const { return m_base; }

private:
    /// Sends a request and returns the JSON object reply of a 2xx, or throws
    /// hpc::Error with the platform's message (Unauthorized for 401/403,
    /// NotFound for 404, Limit for 429, Unavailable for 5xx).
    boost::json::object call(const std::string& method, const std::string& path, const boost::json::object* body,
                             const Secret& bearer);

    Url m_base;
    ClientOptions m_options;
};

}  // namespace hpc::net
