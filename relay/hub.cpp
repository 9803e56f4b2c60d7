#include "hub.hpp"

#include "log.hpp"
#include "util.hpp"

#include <algorithm>

namespace json = boost::json;

namespace hpc::relay {

using protocol::Envelope;
using protocol::ProtocolError;

namespace {
/// Closes the connections `map` holds under `key` and forgets them (forgotten
/// first: a close may come back to the hub).
template <class Map>
void closeAndForget(Map& map, const typename Map::key_type& key, const std::string& why) {
    auto [from, to] = map.equal_range(key);
    std::vector<std::shared_ptr<Peer>> peers;
    for (auto it = from; it != to; ++it)
        if (auto peer = it->second.lock()) peers.push_back(std::move(peer));
    map.erase(from, to);
    for (const auto& peer : peers) peer->close(why);
}

std::string callbackEvent(std::uint64_t n, const std::string& daemonId, const json::object& payload) {
    Envelope e;
    e.type = "job.completed";
    e.id = "cbev-" + std::to_string(n);
    e.daemonId = daemonId;
    e.payload = payload;
    return protocol::serialize(e);
}
}  // namespace

void Hub::attachAgent(const Principal& agent, const std::shared_ptr<Peer>& peer) {
    m_agents.emplace(std::make_pair(agent.userId, agentIdOf(agent)), peer);
    m_agentsByCredential.emplace(agent.credentialId, peer);
    CallbackQuery q;
    q.agentId = agentIdOf(agent);
    q.unackedOnly = true;
    m_metrics.connected(RelayMetrics::Kind::Agent);
    std::int64_t sentUpTo = 0;
    for (const auto& cb : m_db.callbacks(agent.userId, q)) {
        peer->sendText(callbackEvent(m_nextEventId++, cb.daemonId, cb.payload));
        m_metrics.callbackSent();
        sentUpTo = std::max(sentUpTo, cb.seq);
    }
    // Another instance's callback clusterTick has not seen yet may be among
    // them: it must not come to this connection twice.
    if (m_cluster && sentUpTo > m_callbackSeq) m_sentUpTo[peer.get()] = sentUpTo;
}

void Hub::deliverCallback(std::int64_t userId, const std::string& daemonId, const json::object& payload,
                          std::int64_t seq) {
    const auto* agentId = payload.if_contains("agent_id");
    if (!agentId || !agentId->is_string()) return;
    auto [from, to] = m_agents.equal_range({userId, std::string(agentId->get_string())});
    for (auto it = from; it != to; ++it)
        if (auto peer = it->second.lock()) {
            if (auto sent = m_sentUpTo.find(peer.get()); seq && sent != m_sentUpTo.end() && sent->second >= seq)
                continue;
            peer->sendText(callbackEvent(m_nextEventId++, daemonId, payload));
            m_metrics.callbackSent();
        }
}

bool Hub::answerAgentCallbackRequest(const Principal& agent, Peer& peer, const Envelope& env) {
    if (env.type == "callback.ack") {
        auto id = protocol::optString(env.payload, "callback_id", 256);
        if (!id || id->empty()) throw Error(ErrorCode::BadRequest, "callback.ack needs \"callback_id\"");
        if (!m_db.ackCallback(agent.userId, agentIdOf(agent), *id))
            throw Error(ErrorCode::NotFound, "no callback " + *id + " for this agent");
        peer.sendText(protocol::makeOk(env.id));
        return true;
    }
    if (env.type == "callback.list") {
        CallbackQuery q;
        q.agentId = agentIdOf(agent);
        if (!env.daemonId.empty()) q.daemonId = env.daemonId;
        q.jobId = protocol::optString(env.payload, "job_id", 64);
        q.unackedOnly = protocol::optBool(env.payload, "unacked_only").value_or(false);
        json::array out;
        for (auto& cb : m_db.callbacks(agent.userId, q)) {
            cb.payload["acked"] = cb.acked;
            out.push_back(std::move(cb.payload));
        }
        peer.sendText(protocol::makeOk(env.id, {{"callbacks", std::move(out)}}));
        return true;
    }
    return false;
}

void Hub::attachDaemon(std::int64_t userId, const std::string& daemonId, std::shared_ptr<Peer> peer,
                       std::int64_t credentialId) {
    DaemonKey key{userId, daemonId};
    m_metrics.connected(RelayMetrics::Kind::Daemon);
    auto it = m_daemons.find(key);
    if (it != m_daemons.end()) {
        if (!it->second.instance.empty())
            log::info("daemon " + daemonId + " (user " + std::to_string(userId) +
                      ") connected here: closing the link to " + it->second.instance + " it was reached through");
        else
            log::notice("daemon " + daemonId + " (user " + std::to_string(userId) +
                        ") connected again: replacing its previous connection");
        auto old = std::move(it->second.peer);
        m_daemons.erase(it);
        // Requests sent over the old connection will never be answered there.
        failPending(key, "daemon " + daemonId + " reconnected before it answered");
        dropRoutesOf(key, "daemon " + daemonId + " reconnected");
        old->close("replaced by a newer connection of the same daemon");
    } else {
        log::info("daemon " + daemonId + " (user " + std::to_string(userId) + ") connected");
    }
    double since = nowEpochSeconds();
    m_daemons[key] = DaemonLink{std::move(peer), since, {}, credentialId, {}, 0};
    if (m_cluster) {
        try {
            m_db.daemonPresent(userId, daemonId, m_cluster->self(), since);
        } catch (const std::exception& e) {
            // clusterTick records it once the database answers again.
            log::warning("daemon " + daemonId + ": cannot record that it is connected here yet: " + e.what());
            m_presenceStale = true;
        }
    }
    if (credentialId == 0) return;
    // The daemon holds its new key (it just used it): the keys it replaces go.
    try {
        for (auto revoked : m_db.daemonConnected(userId, daemonId, credentialId)) {
            log::notice("daemon " + daemonId + " (user " + std::to_string(userId) +
                        ") connected with its new API key: revoked the key it replaced (credential " +
                        std::to_string(revoked) + ")");
            dropCredential(revoked, "this API key was replaced and is revoked");
        }
    } catch (const std::exception& e) {
        // The old key stays valid; the next connection tries again.
        log::warning("daemon " + daemonId + ": cannot revoke the API keys it replaced yet: " + e.what());
    }
}

void Hub::dropDaemon(std::int64_t userId, const std::string& daemonId, const std::string& why) {
    closeDaemonHere(userId, daemonId, why);
    ClusterDrop drop;
    drop.userId = userId;
    drop.daemonId = daemonId;
    drop.why = why;
    tellOtherInstances(drop);
}

void Hub::dropCredential(std::int64_t credentialId, const std::string& why) {
    closeCredentialHere(credentialId, why);
    ClusterDrop drop;
    drop.credentialId = credentialId;
    drop.why = why;
    tellOtherInstances(drop);
}

void Hub::tellOtherInstances(const ClusterDrop& drop) {
    if (!m_cluster) return;
    try {
        m_db.recordDrop(drop, m_cluster->self());
    } catch (const std::exception& e) {
        // The revocation itself is stored; connections other instances hold
        // with it end when they next authenticate.
        log::warning(std::string("cannot tell the other instances to close connections of a revoked credential or "
                                 "deleted registration: ") +
                     e.what());
    }
}

void Hub::closeDaemonHere(std::int64_t userId, const std::string& daemonId, const std::string& why) {
    auto it = m_daemons.find({userId, daemonId});
    if (it == m_daemons.end()) return;
    auto peer = it->second.peer;
    detachDaemon(userId, daemonId, peer.get());
    peer->close(why);
}

void Hub::closeCredentialHere(std::int64_t credentialId, const std::string& why) {
    std::vector<DaemonKey> daemons;
    for (const auto& [key, link] : m_daemons)
        if (link.credentialId == credentialId) daemons.push_back(key);
    for (const auto& key : daemons) closeDaemonHere(key.first, key.second, why);
    closeAndForget(m_agentsByCredential, credentialId, why);
}

void Hub::detachDaemon(std::int64_t userId, const std::string& daemonId, const Peer* peer) {
    DaemonKey key{userId, daemonId};
    auto it = m_daemons.find(key);
    if (it == m_daemons.end() || it->second.peer.get() != peer) return;
    std::string instance = std::move(it->second.instance);
    m_daemons.erase(it);
    if (!instance.empty()) {
        log::info("the link to " + instance + " for daemon " + daemonId + " (user " + std::to_string(userId) +
                  ") ended");
        failPending(key, "daemon " + daemonId + " is not reachable through " + instance + " any more");
        dropRoutesOf(key, "daemon " + daemonId + " is not reachable through " + instance + " any more");
        return;
    }
    log::info("daemon " + daemonId + " (user " + std::to_string(userId) + ") disconnected");
    failPending(key, "daemon " + daemonId + " disconnected before it answered");
    dropRoutesOf(key, "daemon " + daemonId + " disconnected");
    if (!m_cluster) return;
    // What went to other instances' agents has gone to them above; their
    // links for it end, so they look for the daemon again.
    closeInstanceLinks(key, "daemon " + daemonId + " disconnected from this instance");
    try {
        m_db.daemonAbsent(userId, daemonId, m_cluster->self());
    } catch (const std::exception& e) {
        // clusterTick sets the record straight once the database answers.
        log::warning("daemon " + daemonId + ": cannot record that it left yet: " + e.what());
        m_presenceStale = true;
    }
}

void Hub::failPending(const DaemonKey& key, const std::string& why) {
    for (auto p = m_pending.begin(); p != m_pending.end();) {
        if (p->second.daemon != key) {
            ++p;
            continue;
        }
        if (auto agent = p->second.agent.lock())
            agent->sendText(refuse(p->second.agentRequestId, ErrorCode::Unavailable, why));
        releaseSlot(p->second.agentKey);
        p = m_pending.erase(p);
    }
}

void Hub::releaseSlot(const Peer* agent) {
    if (auto c = m_pendingPerAgent.find(agent); c != m_pendingPerAgent.end() && c->second) --c->second;
}

std::string Hub::lostEvent(std::uint32_t channel, const Route& route, const std::string& why, std::string_view code) {
    if (route.file)
        return protocol::makeMessage("file.end", "fend-" + std::to_string(channel),
                                     {{"channel", channel}, {"error", why}, {"code", "UNAVAILABLE"}});
    if (route.exec)
        return protocol::makeMessage("exec.end", "eend-" + std::to_string(channel),
                                     {{"channel", channel},
                                      {"exit_code", nullptr},
                                      {"signal", nullptr},
                                      {"error", why},
                                      {"code", "UNAVAILABLE"}});
    if (route.logs)
        return protocol::makeMessage("job.logs.end", "logs-end-" + std::to_string(channel),
                                     {{"channel", channel}, {"error", why}});
    return protocol::makeMessage(
        "pty.exit", "exit-" + std::to_string(channel),
        {{"channel", channel}, {"exit_code", nullptr}, {"signal", nullptr}, {"error", why}, {"code", code}});
}

void Hub::dropRoutesOf(const DaemonKey& key, const std::string& why) {
    for (auto it = m_routes.begin(); it != m_routes.end();) {
        if (it->second.daemon != key) {
            ++it;
            continue;
        }
        if (auto agent = it->second.agent.lock()) agent->sendText(lostEvent(it->first, it->second, why));
        m_routeByDaemon.erase({key, it->second.daemonChannel});
        ended(it->first);
        it = m_routes.erase(it);
    }
}

void Hub::detachAgent(const Peer* peer) {
    auto gone = [peer](const auto& kv) {
        auto p = kv.second.lock();
        return !p || p.get() == peer;
    };
    std::erase_if(m_agents, gone);
    std::erase_if(m_agentsByCredential, gone);
    m_sentUpTo.erase(peer);
    // The agent's shells: the daemon hangs them up after its grace period.
    for (auto it = m_routes.begin(); it != m_routes.end();) {
        if (it->second.agentKey != peer)
            ++it;
        else
            it = detachRoute(it);
    }
    for (auto p = m_pending.begin(); p != m_pending.end();) {
        if (p->second.agentKey == peer)
            p = m_pending.erase(p);
        else
            ++p;
    }
    m_pendingPerAgent.erase(peer);
}

std::map<std::uint32_t, Hub::Route>::iterator Hub::detachRoute(std::map<std::uint32_t, Route>::iterator route) {
    if (auto d = m_daemons.find(route->second.daemon); d != m_daemons.end())
        d->second.peer->sendText(protocol::makeMessage("pty.detach", "detach-" + std::to_string(route->first),
                                                       {{"channel", route->second.daemonChannel}}));
    m_routeByDaemon.erase({route->second.daemon, route->second.daemonChannel});
    return m_routes.erase(route);
}

void Hub::closeAll() {
    for (auto& [key, link] : m_daemons) link.peer->close("the platform is shutting down");
    m_daemons.clear();
    for (auto& [key, link] : m_instanceLinks)
        if (auto peer = link.lock()) peer->close("the platform is shutting down");
    m_instanceLinks.clear();
    m_pending.clear();
    m_agents.clear();
    m_agentsByCredential.clear();
    m_pendingPerAgent.clear();
}

std::size_t Hub::pendingFor(const Peer* agent) const {
    auto it = m_pendingPerAgent.find(agent);
    return it == m_pendingPerAgent.end() ? 0 : it->second;
}

void Hub::onAgentText(const Principal& agent, const std::shared_ptr<Peer>& peer, std::string_view text) {
    auto parsed = protocol::parse(text);
    if (auto* err = std::get_if<ProtocolError>(&parsed)) {
        peer->sendText(refuse(*err));
        return;
    }
    auto& env = std::get<Envelope>(parsed);
    if (env.isResponse()) {
        peer->sendText(refuse({}, ErrorCode::BadRequest, "agents send requests, not responses"));
        return;
    }
    if (env.type == "ping") {
        peer->sendText(protocol::makeMessage("pong", env.id));
        return;
    }
    try {
        if (answerAgentCallbackRequest(agent, *peer, env)) return;
    } catch (const Error& e) {
        peer->sendText(refuse(env.id, e.code(), e.what()));
        return;
    }
    if (env.daemonId.empty() || !isValidDaemonId(env.daemonId)) {
        peer->sendText(refuse(env.id, ErrorCode::BadRequest, "a request needs \"daemon_id\": the daemon it is for"));
        return;
    }
    auto it = m_daemons.find({agent.userId, env.daemonId});
    if (it == m_daemons.end()) it = reachElsewhere({agent.userId, env.daemonId});
    if (it == m_daemons.end()) {
        // The same answer whether the daemon is offline or belongs to someone
        // else, so ids of other users' daemons cannot be probed.
        peer->sendText(refuse(env.id, ErrorCode::Unavailable, "daemon " + env.daemonId + " is not connected"));
        return;
    }
    forward(agent, peer, env, it);
}

void Hub::forward(const Principal& agent, const std::shared_ptr<Peer>& peer, Envelope& env, DaemonMap::iterator it) {
    if (!it->second.instance.empty()) it->second.lastUsed = nowEpochSeconds();
    // A link from another instance carries many agents' requests, each
    // agent held to the limit there.
    if (!peer->isInstanceLink() && pendingFor(peer.get()) >= kMaxPendingPerAgent) {
        peer->sendText(refuse(env.id, ErrorCode::Limit, "too many requests in flight"));
        return;
    }
    bool endsTransfer = env.type == "file.commit" || env.type == "file.cancel";
    bool opensPty = env.type == "pty.open" || env.type == "pty.attach";
    bool onChannel = (env.type.rfind("pty.", 0) == 0 && !opensPty) || env.type == "job.logs.close" ||
                     env.type == "file.ack" || env.type == "exec.eof" || endsTransfer;
    if (onChannel && !mapAgentChannel(*peer, it->first, env)) return;
    std::uint32_t endsChannel =
        endsTransfer ? m_routeByDaemon.at({it->first, env.payload.at("channel").to_number<std::uint32_t>()}) : 0;
    std::string agentRequestId = std::move(env.id);
    std::string relayId = "r" + std::to_string(m_nextId++);
    env.id = relayId;
    env.agent = json::object{{"id", agentIdOf(agent)}, {"user", std::to_string(agent.userId)}, {"kind", agent.kind}};
    std::string forwarded = protocol::serialize(env);
    // The daemon refuses a frame over the limit before reading its id, so
    // one that grew past it here is answered here.
    if (forwarded.size() > protocol::kMaxEnvelopeBytes) {
        peer->sendText(refuse(agentRequestId, ErrorCode::BadRequest, "request too large once addressed to the daemon"));
        return;
    }
    m_pending[relayId] =
        Pending{peer, peer.get(), std::move(agentRequestId), it->first, opensPty, env.type == "job.logs"};
    m_pending[relayId].fileOpen = env.type == "file.put" || env.type == "file.get";
    const auto* stream = env.payload.if_contains("stream");
    m_pending[relayId].execOpen = env.type == "exec" && stream && stream->is_bool() && stream->get_bool();
    m_pending[relayId].endsChannel = endsChannel;
    m_pending[relayId].typeSlot = m_metrics.requestSlot(env.type);
    m_pending[relayId].sentAt = std::chrono::steady_clock::now();
    ++m_pendingPerAgent[peer.get()];
    m_metrics.routed(RelayMetrics::Direction::ToDaemon, false, forwarded.size());
    it->second.peer->sendText(std::move(forwarded));
}

std::unordered_map<std::string, Hub::Pending>::iterator Hub::soleRequestTo(const DaemonKey& key,
                                                                           const Envelope& error) {
    auto found = m_pending.end();
    std::size_t count = 0;
    for (auto it = m_pending.begin(); it != m_pending.end(); ++it)
        if (it->second.daemon == key && count++ == 0) found = it;
    if (count == 1) return found;
    log::warning("daemon " + key.second + " refused a frame it could not read (" + error.errorMessage + ") with " +
                 std::to_string(count) + " requests in flight: cannot tell whose it was");
    return m_pending.end();
}

void Hub::onDaemonText(std::int64_t userId, const std::string& daemonId, const std::shared_ptr<Peer>& peer,
                       std::string_view text) {
    auto parsed = protocol::parse(text, protocol::kMaxResponseBytes);
    if (auto* err = std::get_if<ProtocolError>(&parsed)) {
        log::warning("daemon " + daemonId + " sent a bad frame: " + err->message);
        peer->sendText(refuse(*err));
        return;
    }
    auto& env = std::get<Envelope>(parsed);
    if (!env.isResponse()) {
        answerDaemonRequest({userId, daemonId}, *peer, env);
        return;
    }
    auto p = m_pending.find(env.replyTo);
    // A link to another instance answers for many agents: its refusals
    // without a reply_to are not a daemon's unreadable frame.
    if (p == m_pending.end() && !env.ok && env.replyTo.empty() && !peer->isInstanceLink())
        p = soleRequestTo({userId, daemonId}, env);
    if (p == m_pending.end() || p->second.daemon != DaemonKey{userId, daemonId}) {
        log::debug("daemon " + daemonId + " answered unknown request " + env.replyTo + " (agent gone?)");
        return;
    }
    Pending pending = std::move(p->second);
    m_pending.erase(p);
    releaseSlot(pending.agentKey);
    m_metrics.requestAnswered(pending.typeSlot,
                              std::chrono::duration<double>(std::chrono::steady_clock::now() - pending.sentAt).count());
    if (!env.ok) m_metrics.error(env.errorCode, RelayMetrics::Origin::Daemon);
    auto agent = pending.agent.lock();
    if (!agent) return;
    if ((pending.ptyOpen || pending.logsOpen || pending.fileOpen || pending.execOpen) && env.ok) {
        std::optional<std::int64_t> channel;
        try {
            channel = protocol::optInt(env.result, "channel", 1, UINT32_MAX);
        } catch (const Error&) {
        }
        if (!channel) {
            log::warning("daemon " + daemonId + " opened a channel without a channel number");
        } else {
            // pty.attach of a session another connection still holds: that
            // connection's agent is told it lost the channel, and it goes here.
            if (auto held = m_routeByDaemon.find({pending.daemon, static_cast<std::uint32_t>(*channel)});
                held != m_routeByDaemon.end()) {
                std::uint32_t old = held->second;
                if (auto previous = m_routes[old].agent.lock())
                    previous->sendText(
                        lostEvent(old, m_routes[old], "the session was attached by another connection", "NOT_OWNER"));
                dropRoute(old);
            }
            std::uint32_t mine = m_nextChannel++;
            Route route{agent, agent.get(), pending.daemon, static_cast<std::uint32_t>(*channel)};
            route.logs = pending.logsOpen;
            route.file = pending.fileOpen;
            route.exec = pending.execOpen;
            m_routes[mine] = std::move(route);
            m_routeByDaemon[{pending.daemon, static_cast<std::uint32_t>(*channel)}] = mine;
            env.result["channel"] = mine;
        }
    }
    if (pending.endsChannel) dropRoute(pending.endsChannel);
    env.replyTo = pending.agentRequestId;
    std::string answer = protocol::serialize(env);
    m_metrics.routed(RelayMetrics::Direction::ToAgent, false, answer.size());
    agent->sendText(std::move(answer));
}

void Hub::ended(std::uint32_t agentChannel) {
    m_endedChannels.insert(agentChannel);
    m_endedOrder.push_back(agentChannel);
    if (m_endedOrder.size() > kRememberEnded) {
        m_endedChannels.erase(m_endedOrder.front());
        m_endedOrder.pop_front();
    }
}

void Hub::dropRoute(std::uint32_t agentChannel) {
    auto route = m_routes.find(agentChannel);
    if (route == m_routes.end()) return;
    m_routeByDaemon.erase({route->second.daemon, route->second.daemonChannel});
    ended(agentChannel);
    m_routes.erase(route);
}

bool Hub::mapAgentChannel(Peer& agent, const DaemonKey& daemon, Envelope& env) {
    std::optional<std::int64_t> channel;
    try {
        channel = protocol::optInt(env.payload, "channel", 1, UINT32_MAX);
    } catch (const Error&) {
    }
    auto it = channel ? m_routes.find(static_cast<std::uint32_t>(*channel)) : m_routes.end();
    if (it == m_routes.end() || it->second.agentKey != &agent || it->second.daemon != daemon) {
        agent.sendText(refuse(env.id, ErrorCode::NotFound,
                              channel
                                  ? "channel " + std::to_string(*channel) + " is not open on daemon " + daemon.second
                                  : std::string("\"channel\" is required")));
        return false;
    }
    env.payload["channel"] = it->second.daemonChannel;
    return true;
}

void Hub::onAgentBinary(const std::shared_ptr<Peer>& peer, std::string frame) {
    auto decoded = protocol::decodeChannelFrame(std::span<const char>(frame.data(), frame.size()));
    if (!decoded) {
        peer->sendText(refuse({}, ErrorCode::BadRequest, "a binary frame needs a 4-byte channel header"));
        return;
    }
    auto it = m_routes.find(decoded->channel);
    // Bytes the agent sent before it learnt that its channel ended: expected, not an error.
    if (it == m_routes.end() && m_endedChannels.count(decoded->channel)) return;
    if (it == m_routes.end() || it->second.agentKey != peer.get()) {
        peer->sendText(refuse({}, ErrorCode::NotFound, "channel " + std::to_string(decoded->channel) + " is not open"));
        return;
    }
    auto d = m_daemons.find(it->second.daemon);
    if (d == m_daemons.end()) return;  // its pty.exit is on the way
    auto header = protocol::encodeChannelFrame(it->second.daemonChannel, {});
    frame.replace(0, 4, header);
    m_metrics.routed(RelayMetrics::Direction::ToDaemon, true, frame.size());
    d->second.peer->sendBinary(std::move(frame));
}

void Hub::onDaemonBinary(std::int64_t userId, const std::string& daemonId, std::string frame) {
    auto decoded = protocol::decodeChannelFrame(std::span<const char>(frame.data(), frame.size()));
    if (!decoded) return;
    auto it = m_routeByDaemon.find({{userId, daemonId}, decoded->channel});
    if (it == m_routeByDaemon.end()) return;  // the agent has gone
    auto route = m_routes.find(it->second);
    if (route == m_routes.end()) return;
    if (auto agent = route->second.agent.lock()) {
        frame.replace(0, 4, protocol::encodeChannelFrame(it->second, {}));
        m_metrics.routed(RelayMetrics::Direction::ToAgent, true, frame.size());
        agent->sendBinary(std::move(frame));
    }
}

void Hub::routeDaemonEvent(const DaemonKey& key, Envelope& env, bool ends) {
    std::optional<std::int64_t> channel;
    try {
        channel = protocol::optInt(env.payload, "channel", 1, UINT32_MAX);
    } catch (const Error&) {
    }
    if (!channel) return;
    auto it = m_routeByDaemon.find({key, static_cast<std::uint32_t>(*channel)});
    if (it == m_routeByDaemon.end()) return;
    std::uint32_t mine = it->second;
    auto route = m_routes.find(mine);
    if (route != m_routes.end()) {
        if (auto agent = route->second.agent.lock()) {
            env.payload["channel"] = mine;
            std::string event = protocol::serialize(env);
            m_metrics.routed(RelayMetrics::Direction::ToAgent, false, event.size());
            agent->sendText(std::move(event));
        }
        if (!ends) return;
        ended(mine);
        m_routes.erase(route);
    }
    m_routeByDaemon.erase(it);
}

void Hub::answerDaemonRequest(const DaemonKey& key, Peer& daemon, const Envelope& env) {
    if (env.type == "hello") {
        log::info("daemon " + key.second + " says hello: " + json::serialize(env.payload));
        daemon.sendText(
            protocol::makeOk(env.id, {{"server", "hpc-relay"}, {"version", HPC_VERSION}, {"v", protocol::kVersion}}));
    } else if (env.type == "ping") {
        daemon.sendText(protocol::makeMessage("pong", env.id));
    } else if (env.type == "pong") {
        // An answer to nothing we sent; harmless.
    } else if (env.type == "daemon.warning") {
        noteWarning(key, daemon, env);
    } else if (env.type == "pty.exit" || env.type == "job.logs.end" || env.type == "file.end" ||
               env.type == "exec.end") {
        auto copy = env;
        routeDaemonEvent(key, copy);
    } else if (env.type == "file.ack" || env.type == "exec.ack") {
        auto copy = env;
        routeDaemonEvent(key, copy, false);
    } else if (env.type == "job.completed") {
        auto callbackId = env.payload.if_contains("callback_id");
        if (!callbackId || !callbackId->is_string() || callbackId->get_string().empty()) {
            daemon.sendText(refuse(env.id, ErrorCode::BadRequest, "job.completed needs \"callback_id\""));
            return;
        }
        // Stored before the acknowledgement: once acknowledged the daemon
        // forgets it, so the platform must not.
        bool isNew = false;
        try {
            isNew = m_db.recordCallback(key.first, key.second, std::string(callbackId->get_string()), env.payload,
                                        m_cluster ? m_cluster->self() : std::string());
        } catch (const Error& e) {
            // Not acknowledged: the daemon keeps the callback and sends it
            // again (a full disk here: STORAGE_FULL, logged once by the db).
            daemon.sendText(refuse(env.id, e.code(), e.what()));
            return;
        }
        log::info("daemon " + key.second + " callback " + std::string(callbackId->get_string()) +
                  (isNew ? " recorded" : " was a retry"));
        m_metrics.callbackReceived(isNew);
        daemon.sendText(protocol::makeOk(env.id, {{"duplicate", !isNew}}));
        if (isNew) deliverCallback(key.first, key.second, env.payload);
    } else {
        daemon.sendText(
            refuse(env.id, ErrorCode::UnknownType, "the platform does not handle \"" + env.type + "\" from a daemon"));
    }
}

void Hub::noteWarning(const DaemonKey& key, Peer& daemon, const Envelope& env) {
    std::optional<std::string> warning;
    try {
        warning = protocol::optString(env.payload, "warning", kMaxWarningBytes);
    } catch (const Error& e) {
        daemon.sendText(refuse(env.id, e.code(), std::string("daemon.warning: ") + e.what()));
        return;
    }
    if (!warning) {
        daemon.sendText(
            refuse(env.id, ErrorCode::BadRequest, "daemon.warning needs \"warning\": a string, empty when it clears"));
        return;
    }
    // Only the daemon's current connection speaks for it (not one being replaced).
    if (auto it = m_daemons.find(key); it != m_daemons.end() && it->second.peer.get() == &daemon) {
        if (it->second.warning != *warning) {
            std::string who = "daemon " + key.second + " (user " + std::to_string(key.first) + ")";
            if (warning->empty())
                log::info(who + ": its warning has cleared");
            else
                log::notice(who + " warns: " + *warning);
        }
        it->second.warning = std::move(*warning);
    }
    daemon.sendText(protocol::makeOk(env.id));
}

std::string Hub::warning(std::int64_t userId, const std::string& daemonId) const {
    auto it = m_daemons.find({userId, daemonId});
    return it == m_daemons.end() ? std::string() : it->second.warning;
}

bool Hub::connectedHere(std::int64_t userId, const std::string& daemonId) const {
    auto it = m_daemons.find({userId, daemonId});
    return it != m_daemons.end() && it->second.instance.empty();
}

std::optional<double> Hub::connectedSince(std::int64_t userId, const std::string& daemonId) {
    auto it = m_daemons.find({userId, daemonId});
    if (it != m_daemons.end() && it->second.instance.empty()) return it->second.since;
    if (auto where = presenceElsewhere({userId, daemonId})) return where->since;
    return std::nullopt;
}

std::string Hub::refuse(std::string_view replyTo, ErrorCode code, std::string_view message) {
    m_metrics.error(code, RelayMetrics::Origin::Relay);
    return protocol::makeError(replyTo, code, message);
}

std::string Hub::renderMetrics() {
    RelayGauges g;
    g.agents = agentCount();
    g.daemons = daemonCount();
    g.requestsInFlight = pendingCount();
    g.channelsOpen = channelCount();
    try {
        g.callbacksPending = m_db.unackedCallbackCount();
    } catch (const std::exception& e) {
        log::warning(std::string("metrics: cannot count pending callbacks: ") + e.what());
    }
    return m_metrics.render(g);
}

std::size_t Hub::daemonCount() const {
    return static_cast<std::size_t>(
        std::count_if(m_daemons.begin(), m_daemons.end(), [](const auto& kv) { return kv.second.instance.empty(); }));
}

std::size_t Hub::agentCount() const {
    // A connection that ended detaches itself; one ending right now is not counted.
    return static_cast<std::size_t>(
        std::count_if(m_agents.begin(), m_agents.end(), [](const auto& kv) { return !kv.second.expired(); }));
}

// ---------------------------------------------------------- several instances

void Hub::setCluster(Cluster* cluster) {
    if (m_cluster && !cluster) {
        // Leaving: the others stop routing here now rather than in 15 s.
        try {
            m_db.instanceGone(m_cluster->self());
        } catch (const std::exception& e) {
            log::warning(std::string("cannot record that this instance stops: ") + e.what());
        }
    }
    m_cluster = cluster;
    if (!m_cluster) return;
    double now = nowEpochSeconds();
    // A run before this one under the same URL held daemons this one does not.
    m_db.forgetInstance(m_cluster->self());
    m_db.instanceAlive(m_cluster->self());
    m_lastAlive = now;
    m_callbackSeq = m_db.lastCallbackSeq();
    m_dropSeq = m_db.lastDropSeq();
    log::notice("one of several instances, as " + m_cluster->self() +
                ": daemons connected to the others are reached "
                "through links to them");
}

std::optional<Presence> Hub::presenceElsewhere(const DaemonKey& key) {
    if (!m_cluster || databaseAway()) return std::nullopt;
    try {
        auto where = m_db.presence(key.first, key.second, kPresenceSeconds);
        if (where && where->instance != m_cluster->self()) return where;
    } catch (const std::exception& e) {
        databaseWentAway(e);
    }
    return std::nullopt;
}

bool Hub::databaseAway() const { return nowEpochSeconds() < m_databaseAwayUntil; }

void Hub::databaseWentAway(const std::exception& e) {
    // Each attempt may wait for the database's connect timeout on the one
    // thread every link shares: not again for a while.
    if (!databaseAway())
        log::warning(std::string("cluster: the database does not answer (") + e.what() +
                     "); daemons on other instances are out of reach, trying again in " +
                     std::to_string(static_cast<int>(m_databaseRetrySeconds)) + " s");
    m_databaseAwayUntil = nowEpochSeconds() + m_databaseRetrySeconds;
}

Hub::DaemonMap::iterator Hub::reachElsewhere(const DaemonKey& key) {
    auto where = presenceElsewhere(key);
    if (!where) return m_daemons.end();
    log::info("daemon " + key.second + " (user " + std::to_string(key.first) + ") is connected to " + where->instance +
              ": opening a link to it");
    DaemonLink link{m_cluster->open(where->instance, key.first, key.second),
                    where->since,
                    {},
                    0,
                    where->instance,
                    nowEpochSeconds()};
    return m_daemons.emplace(key, std::move(link)).first;
}

bool Hub::attachInstance(std::int64_t userId, const std::string& daemonId, const std::shared_ptr<Peer>& peer) {
    auto it = m_daemons.find({userId, daemonId});
    if (it == m_daemons.end() || !it->second.instance.empty()) return false;
    m_instanceLinks.emplace(DaemonKey{userId, daemonId}, peer);
    return true;
}

void Hub::detachInstance(const Peer* peer) {
    std::erase_if(m_instanceLinks, [peer](const auto& kv) {
        auto p = kv.second.lock();
        return !p || p.get() == peer;
    });
    // Its agents' shells, as when an agent leaves; requests in flight are forgotten.
    detachAgent(peer);
}

void Hub::closeInstanceLinks(const DaemonKey& key, const std::string& why) {
    closeAndForget(m_instanceLinks, key, why);
}

void Hub::onInstanceText(std::int64_t userId, const std::string& daemonId, const std::shared_ptr<Peer>& peer,
                         std::string_view text) {
    auto parsed = protocol::parse(text);
    if (auto* err = std::get_if<ProtocolError>(&parsed)) {
        peer->sendText(refuse(*err));
        return;
    }
    auto& env = std::get<Envelope>(parsed);
    if (env.isResponse() || env.type == "pong") return;
    if (env.type == "hello") {
        peer->sendText(protocol::makeOk(env.id, {{"server", "hpc-relay"}, {"version", HPC_VERSION}}));
        return;
    }
    if (env.type == "ping") {
        peer->sendText(protocol::makeMessage("pong", env.id));
        return;
    }
    if (env.type == "pty.detach") {
        detachChannel(*peer, env);
        return;
    }
    // The other instance authenticated the agent and named it; the link's
    // secret is what makes that name trusted here.
    Principal agent;
    agent.userId = userId;
    try {
        agent.agent = protocol::optString(env.agent, "id", 256).value_or("");
        agent.kind = protocol::optString(env.agent, "kind", 32).value_or("");
    } catch (const Error& e) {
        peer->sendText(refuse(env.id, ErrorCode::BadRequest, std::string("\"agent\": ") + e.what()));
        return;
    }
    if (agent.agent.empty() || agent.kind.empty()) {
        peer->sendText(refuse(env.id, ErrorCode::BadRequest, "a request from another instance names its \"agent\""));
        return;
    }
    if (env.daemonId != daemonId) {
        peer->sendText(refuse(env.id, ErrorCode::BadRequest, "this link is for daemon " + daemonId));
        return;
    }
    auto it = m_daemons.find({userId, daemonId});
    if (it == m_daemons.end() || !it->second.instance.empty()) {
        peer->sendText(refuse(env.id, ErrorCode::Unavailable, "daemon " + daemonId + " is not connected"));
        return;
    }
    forward(agent, peer, env, it);
}

void Hub::detachChannel(Peer& peer, const Envelope& env) {
    std::optional<std::int64_t> channel;
    try {
        channel = protocol::optInt(env.payload, "channel", 1, UINT32_MAX);
    } catch (const Error&) {
    }
    auto it = channel ? m_routes.find(static_cast<std::uint32_t>(*channel)) : m_routes.end();
    if (it != m_routes.end() && it->second.agentKey == &peer) detachRoute(it);
}

void Hub::clusterTick() {
    if (!m_cluster) return;
    double now = nowEpochSeconds();
    closeIdleLinks(now);
    if (databaseAway()) return;
    try {
        if (now - m_lastAlive >= kAliveSeconds) {
            m_db.instanceAlive(m_cluster->self());
            m_lastAlive = now;
        }
        if (m_presenceStale) {
            // What this instance holds, as it is now (a later connection
            // elsewhere keeps its record).
            m_db.forgetInstance(m_cluster->self());
            for (const auto& [key, link] : m_daemons)
                if (link.instance.empty()) m_db.daemonPresent(key.first, key.second, m_cluster->self(), link.since);
            m_presenceStale = false;
            log::info("cluster: the daemons connected here are recorded again");
        }
        for (const auto& drop : m_db.dropsSince(m_dropSeq, m_cluster->self())) {
            m_dropSeq = drop.seq;
            if (drop.credentialId) closeCredentialHere(drop.credentialId, drop.why);
            if (!drop.daemonId.empty()) closeDaemonHere(drop.userId, drop.daemonId, drop.why);
        }
        constexpr int kBatch = 500;
        for (;;) {
            auto batch = m_db.callbacksSince(m_callbackSeq, m_cluster->self(), kBatch);
            for (const auto& cb : batch) {
                m_callbackSeq = cb.seq;
                if (!cb.payload.empty()) deliverCallback(cb.userId, cb.daemonId, cb.payload, cb.seq);
            }
            if (batch.size() < static_cast<std::size_t>(kBatch)) break;
        }
    } catch (const std::exception& e) {
        databaseWentAway(e);
    }
}

void Hub::closeIdleLinks(double now) {
    std::set<DaemonKey> inUse;
    for (const auto& [channel, route] : m_routes) inUse.insert(route.daemon);
    for (const auto& [id, pending] : m_pending) inUse.insert(pending.daemon);
    for (auto it = m_daemons.begin(); it != m_daemons.end();) {
        if (it->second.instance.empty() || now - it->second.lastUsed < kIdleLinkSeconds || inUse.count(it->first)) {
            ++it;
            continue;
        }
        auto peer = std::move(it->second.peer);
        log::debug("closing the idle link to " + it->second.instance + " for daemon " + it->first.second);
        it = m_daemons.erase(it);
        peer->close("unused");
    }
}

}  // namespace hpc::relay
