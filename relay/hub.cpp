#include "hub.hpp"

#include "log.hpp"
#include "util.hpp"

namespace json = boost::json;

namespace hpc::relay {

using protocol::Envelope;
using protocol::ProtocolError;

void Hub::attachDaemon(std::int64_t userId, const std::string& daemonId, std::shared_ptr<Peer> peer) {
    DaemonKey key{userId, daemonId};
    auto it = m_daemons.find(key);
    if (it != m_daemons.end()) {
        log::notice("daemon " + daemonId + " (user " + std::to_string(userId) +
                    ") connected again: replacing its previous connection");
        auto old = std::move(it->second.peer);
        m_daemons.erase(it);
        // Requests sent over the old connection will never be answered there.
        failPending(key, "daemon " + daemonId + " reconnected before it answered");
        old->close("replaced by a newer connection of the same daemon");
    } else {
        log::info("daemon " + daemonId + " (user " + std::to_string(userId) + ") connected");
    }
    m_daemons[key] = DaemonLink{std::move(peer), nowEpochSeconds()};
}

void Hub::detachDaemon(std::int64_t userId, const std::string& daemonId, const Peer* peer) {
    DaemonKey key{userId, daemonId};
    auto it = m_daemons.find(key);
    if (it == m_daemons.end() || it->second.peer.get() != peer) return;
    m_daemons.erase(it);
    log::info("daemon " + daemonId + " (user " + std::to_string(userId) + ") disconnected");
    failPending(key, "daemon " + daemonId + " disconnected before it answered");
}

void Hub::failPending(const DaemonKey& key, const std::string& why) {
    for (auto p = m_pending.begin(); p != m_pending.end();) {
        if (p->second.daemon != key) {
            ++p;
            continue;
        }
        if (auto agent = p->second.agent.lock())
            agent->sendText(protocol::makeError(p->second.agentRequestId, ErrorCode::Unavailable, why));
        releaseSlot(p->second.agentKey);
        p = m_pending.erase(p);
    }
}

void Hub::releaseSlot(const Peer* agent) {
    if (auto c = m_pendingPerAgent.find(agent); c != m_pendingPerAgent.end() && c->second) --c->second;
}

void Hub::detachAgent(const Peer* peer) {
    for (auto p = m_pending.begin(); p != m_pending.end();) {
        if (p->second.agentKey == peer)
            p = m_pending.erase(p);
        else
            ++p;
    }
    m_pendingPerAgent.erase(peer);
}

void Hub::closeAll() {
    for (auto& [key, link] : m_daemons) link.peer->close("the platform is shutting down");
    m_daemons.clear();
    m_pending.clear();
    m_pendingPerAgent.clear();
}

std::size_t Hub::pendingFor(const Peer* agent) const {
    auto it = m_pendingPerAgent.find(agent);
    return it == m_pendingPerAgent.end() ? 0 : it->second;
}

void Hub::onAgentText(const Principal& agent, const std::shared_ptr<Peer>& peer, std::string_view text) {
    auto parsed = protocol::parse(text);
    if (auto* err = std::get_if<ProtocolError>(&parsed)) {
        peer->sendText(protocol::makeError(*err));
        return;
    }
    auto& env = std::get<Envelope>(parsed);
    if (env.isResponse()) {
        peer->sendText(protocol::makeError({}, ErrorCode::BadRequest, "agents send requests, not responses"));
        return;
    }
    if (env.type == "ping") {
        peer->sendText(protocol::makeMessage("pong", env.id));
        return;
    }
    if (env.daemonId.empty() || !isValidDaemonId(env.daemonId)) {
        peer->sendText(protocol::makeError(env.id, ErrorCode::BadRequest,
                                           "a request needs \"daemon_id\": the daemon it is for"));
        return;
    }
    auto it = m_daemons.find({agent.userId, env.daemonId});
    if (it == m_daemons.end()) {
        // The same answer whether the daemon is offline or belongs to someone
        // else, so ids of other users' daemons cannot be probed.
        peer->sendText(protocol::makeError(env.id, ErrorCode::Unavailable,
                                           "daemon " + env.daemonId + " is not connected"));
        return;
    }
    if (pendingFor(peer.get()) >= kMaxPendingPerAgent) {
        peer->sendText(protocol::makeError(env.id, ErrorCode::Limit, "too many requests in flight"));
        return;
    }
    std::string relayId = "r" + std::to_string(m_nextId++);
    m_pending[relayId] = Pending{peer, peer.get(), env.id, it->first};
    ++m_pendingPerAgent[peer.get()];
    env.id = relayId;
    env.agent = json::object{{"id", "cred-" + std::to_string(agent.credentialId)},
                             {"user", std::to_string(agent.userId)},
                             {"kind", agent.kind}};
    it->second.peer->sendText(protocol::serialize(env));
}

void Hub::onDaemonText(std::int64_t userId, const std::string& daemonId, const std::shared_ptr<Peer>& peer,
                       std::string_view text) {
    auto parsed = protocol::parse(text, protocol::kMaxResponseBytes);
    if (auto* err = std::get_if<ProtocolError>(&parsed)) {
        log::warning("daemon " + daemonId + " sent a bad frame: " + err->message);
        peer->sendText(protocol::makeError(*err));
        return;
    }
    auto& env = std::get<Envelope>(parsed);
    if (!env.isResponse()) {
        answerDaemonRequest({userId, daemonId}, *peer, env);
        return;
    }
    auto p = m_pending.find(env.replyTo);
    if (p == m_pending.end() || p->second.daemon != DaemonKey{userId, daemonId}) {
        log::debug("daemon " + daemonId + " answered unknown request " + env.replyTo + " (agent gone?)");
        return;
    }
    Pending pending = std::move(p->second);
    m_pending.erase(p);
    releaseSlot(pending.agentKey);
    if (auto agent = pending.agent.lock()) {
        env.replyTo = pending.agentRequestId;
        agent->sendText(protocol::serialize(env));
    }
}

void Hub::answerDaemonRequest(const DaemonKey& key, Peer& daemon, const Envelope& env) {
    if (env.type == "hello") {
        log::info("daemon " + key.second + " says hello: " + json::serialize(env.payload));
        daemon.sendText(protocol::makeOk(env.id, {{"server", "hpc-relay"}, {"version", HPC_VERSION}, {"v", protocol::kVersion}}));
    } else if (env.type == "ping") {
        daemon.sendText(protocol::makeMessage("pong", env.id));
    } else if (env.type == "pong") {
        // An answer to nothing we sent; harmless.
    } else if (env.type == "job.completed") {
        auto callbackId = env.payload.if_contains("callback_id");
        if (!callbackId || !callbackId->is_string() || callbackId->get_string().empty()) {
            daemon.sendText(protocol::makeError(env.id, ErrorCode::BadRequest, "job.completed needs \"callback_id\""));
            return;
        }
        bool isNew = m_db.recordCallback(key.first, key.second, std::string(callbackId->get_string()), env.payload);
        log::info("daemon " + key.second + " callback " + std::string(callbackId->get_string()) +
                  (isNew ? " recorded" : " was a retry"));
        daemon.sendText(protocol::makeOk(env.id, {{"duplicate", !isNew}}));
    } else {
        daemon.sendText(protocol::makeError(env.id, ErrorCode::UnknownType,
                                            "the platform does not handle \"" + env.type + "\" from a daemon"));
    }
}

std::optional<double> Hub::connectedSince(std::int64_t userId, const std::string& daemonId) const {
    auto it = m_daemons.find({userId, daemonId});
    if (it == m_daemons.end()) return std::nullopt;
    return it->second.since;
}

}  // namespace hpc::relay
