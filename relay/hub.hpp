#pragma once
/// Routing between agents and daemons, keyed on (user, daemon id).
///
/// The hub knows nothing about sockets: a connection is a Peer. An agent's
/// request is forwarded to the daemon of the same user with a relay-unique id
/// and the agent's identity added; the daemon's response goes back under the
/// agent's own id. A request to a daemon that is not connected is answered
/// UNAVAILABLE at once, and so is every request still in flight when its
/// daemon goes away.

#include "metrics.hpp"
#include "protocol.hpp"
#include "relay_db.hpp"

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>

namespace hpc::relay {

class Peer {
public:
    virtual ~Peer() = default;
    virtual void sendText(std::string text) = 0;
    virtual void sendBinary(std::string data) = 0;
    /// Ends the connection (the peer detaches itself when it has closed).
    virtual void close(std::string_view reason) = 0;
    /// A link between two relay instances (either end), which carries many
    /// agents' traffic.
    virtual bool isInstanceLink() const { return false; }
};

/// Several instances of the relay on one PostgreSQL database (hpc-relay
/// --cluster-url, docs/relay.md). A daemon is connected to one instance; an
/// agent on another reaches it through a link from its instance to the
/// daemon's, which the hub treats as that daemon's connection.
class Cluster {
public:
    virtual ~Cluster() = default;
    /// This instance's URL, as the others reach it.
    virtual const std::string& self() const = 0;
    /// A link to `instance` for the user's daemon there. The hub sends it the
    /// daemon's requests as to the daemon's own connection (they wait while
    /// it connects); what comes back goes to onDaemonText and onDaemonBinary,
    /// and its end to detachDaemon.
    virtual std::shared_ptr<Peer> open(const std::string& instance, std::int64_t userId,
                                       const std::string& daemonId) = 0;
};

class Hub {
public:
    /// Requests one agent may have in flight before it gets LIMIT.
    static constexpr std::size_t kMaxPendingPerAgent = 4096;

    explicit Hub(RelayDb& db) : m_db(db) {}

    /// A daemon's WebSocket is up; an older connection of the same daemon is
    /// closed and replaced. With the API key it authenticated with
    /// (`credentialId`), the keys that key superseded are revoked now
    /// (RelayDb::daemonConnected) and their connections closed.
    void attachDaemon(std::int64_t userId, const std::string& daemonId, std::shared_ptr<Peer> peer,
                      std::int64_t credentialId = 0);
    /// Forgets the daemon if `peer` is still its connection.
    void detachDaemon(std::int64_t userId, const std::string& daemonId, const Peer* peer);
    /// Closes the daemon's connection, if any (its registration was deleted):
    /// requests in flight fail and its shells end for their agents at once.
    /// In a cluster, the other instances do the same within a second.
    void dropDaemon(std::int64_t userId, const std::string& daemonId, const std::string& why);
    /// Closes every connection, daemon or agent, authenticated with a
    /// credential that was just revoked (in a cluster, on every instance
    /// within a second).
    void dropCredential(std::int64_t credentialId, const std::string& why);
    /// An agent's WebSocket is up: it gets the job callbacks addressed to it
    /// that it has not acknowledged yet, then every new one as it arrives.
    void attachAgent(const Principal& agent, const std::shared_ptr<Peer>& peer);
    void detachAgent(const Peer* peer);
    /// Closes and forgets every connection (server shutdown).
    void closeAll();

    /// Joins the other instances on the database: this one's daemons are
    /// recorded as present here, and daemons present elsewhere are reached
    /// through `cluster` (which outlives the hub's use of it).
    void setCluster(Cluster* cluster);
    /// Another instance's link for a daemon connected here, carrying its
    /// agents' requests. False (and nothing attached) when the daemon is not
    /// connected here.
    bool attachInstance(std::int64_t userId, const std::string& daemonId, const std::shared_ptr<Peer>& peer);
    void detachInstance(const Peer* peer);
    /// A request on such a link: it names its agent ("agent"), which the
    /// other instance authenticated; it may be for that daemon only.
    void onInstanceText(std::int64_t userId, const std::string& daemonId, const std::shared_ptr<Peer>& peer,
                        std::string_view text);
    /// Every second: says this instance is alive (every kAliveSeconds),
    /// closes the connections of credentials revoked and registrations
    /// deleted on other instances, sends this instance's agents the
    /// callbacks other instances stored, and closes links to other instances
    /// unused for kIdleLinkSeconds. After a database error, none of the
    /// database's part for kDatabaseRetrySeconds.
    void clusterTick();
    static constexpr double kAliveSeconds = 5;
    /// An instance not alive for this long holds no daemon any more.
    static constexpr double kPresenceSeconds = 15;
    static constexpr double kIdleLinkSeconds = 60;
    static constexpr double kDatabaseRetrySeconds = 15;
    /// Tests shorten the wait after a database error.
    void setDatabaseRetrySeconds(double seconds) { m_databaseRetrySeconds = seconds; }

    void onAgentText(const Principal& agent, const std::shared_ptr<Peer>& peer, std::string_view text);
    void onDaemonText(std::int64_t userId, const std::string& daemonId, const std::shared_ptr<Peer>& peer,
                      std::string_view text);
    /// PTY bytes: 4-byte channel header, then data. The relay gives agents
    /// channel numbers of its own (an agent may have shells on several
    /// daemons) and rewrites the header in each direction.
    void onAgentBinary(const std::shared_ptr<Peer>& peer, std::string frame);
    void onDaemonBinary(std::int64_t userId, const std::string& daemonId, std::string frame);

    /// Whether the daemon is connected to this instance (not through a link).
    bool connectedHere(std::int64_t userId, const std::string& daemonId) const;
    /// When the daemon connected, if it is connected now (here, or to
    /// another live instance).
    std::optional<double> connectedSince(std::int64_t userId, const std::string& daemonId);
    /// The latest `daemon.warning` of a connected daemon ("" when none, or
    /// when it is not connected): kept in memory, forgotten when it leaves.
    std::string warning(std::int64_t userId, const std::string& daemonId) const;
    /// The longest warning a daemon may send; a longer one is BAD_REQUEST.
    static constexpr std::size_t kMaxWarningBytes = 4096;
    std::size_t pendingCount() const { return m_pending.size(); }
    /// Connections now (GET /health).
    std::size_t agentCount() const;
    /// Daemons connected to this instance.
    std::size_t daemonCount() const;
    std::size_t channelCount() const { return m_routes.size(); }
    /// The counters: the server adds its HTTP ones.
    RelayMetrics& metrics() { return m_metrics; }
    /// GET /metrics: the counters and the gauges read now.
    std::string renderMetrics();

private:
    using DaemonKey = std::pair<std::int64_t, std::string>;
    struct DaemonLink {
        std::shared_ptr<Peer> peer;
        double since = 0;
        std::string warning;  ///< its latest daemon.warning
        std::int64_t credentialId = 0;
        /// "" when the daemon is connected here; else the instance it is
        /// connected to, `peer` being the link to it.
        std::string instance;
        double lastUsed = 0;  ///< a link's: its last request (epoch seconds)
    };
    struct Pending {
        std::weak_ptr<Peer> agent;
        const Peer* agentKey = nullptr;
        std::string agentRequestId;
        DaemonKey daemon;
        bool ptyOpen = false;
        bool logsOpen = false;  ///< job.logs: its answer opens a channel too
        bool fileOpen = false;  ///< file.put, file.get: so does theirs, a transfer's
        bool execOpen = false;  ///< exec with "stream": true: so does its, a command's
        /// file.commit, file.cancel: the agent's channel their answer ends.
        std::uint32_t endsChannel = 0;
        std::uint16_t typeSlot = 0;  ///< RelayMetrics::requestSlot
        std::chrono::steady_clock::time_point sentAt{};
    };
    /// One channel (a PTY, or a job's output from job.logs): the agent's
    /// number for it and the daemon's.
    struct Route {
        std::weak_ptr<Peer> agent;
        const Peer* agentKey = nullptr;
        DaemonKey daemon;
        std::uint32_t daemonChannel = 0;
        bool logs = false;  ///< ends with job.logs.end rather than pty.exit
        /// A file transfer: ends with file.end, or with the answer to
        /// file.commit or file.cancel.
        bool file = false;
        bool exec = false;  ///< a streamed command: ends with exec.end
    };

    using DaemonMap = std::map<DaemonKey, DaemonLink>;
    /// Sends an agent's request (daemon_id checked) to the daemon's connection.
    void forward(const Principal& agent, const std::shared_ptr<Peer>& peer, protocol::Envelope& env,
                 DaemonMap::iterator daemon);
    /// A daemon connected to another live instance: a link to it, added to
    /// m_daemons; end() when it is connected nowhere (or no cluster).
    DaemonMap::iterator reachElsewhere(const DaemonKey& key);
    /// Where the daemon is connected when that is another live instance.
    std::optional<Presence> presenceElsewhere(const DaemonKey& key);
    bool databaseAway() const;
    void databaseWentAway(const std::exception& e);
    void closeDaemonHere(std::int64_t userId, const std::string& daemonId, const std::string& why);
    void closeCredentialHere(std::int64_t credentialId, const std::string& why);
    /// Records a drop for the other instances (in a cluster).
    void tellOtherInstances(const ClusterDrop& drop);
    /// pty.detach from another instance: its agent left a channel.
    void detachChannel(Peer& peer, const protocol::Envelope& env);
    /// Sends the daemon the pty.detach of a route whose agent left; forgets the route.
    std::map<std::uint32_t, Route>::iterator detachRoute(std::map<std::uint32_t, Route>::iterator route);
    void closeInstanceLinks(const DaemonKey& key, const std::string& why);
    void closeIdleLinks(double now);
    /// An error answer from the relay itself, counted.
    std::string refuse(std::string_view replyTo, ErrorCode code, std::string_view message);
    std::string refuse(const protocol::ProtocolError& e) { return refuse(e.replyTo, e.code, e.message); }
    void answerDaemonRequest(const DaemonKey& key, Peer& daemon, const protocol::Envelope& env);
    void noteWarning(const DaemonKey& key, Peer& daemon, const protocol::Envelope& env);
    /// callback.ack and callback.list: answered by the platform itself.
    bool answerAgentCallbackRequest(const Principal& agent, Peer& peer, const protocol::Envelope& env);
    /// `seq`: a callback another instance stored, sent to no connection
    /// that was sent it on attaching; 0: one stored here, now.
    void deliverCallback(std::int64_t userId, const std::string& daemonId, const boost::json::object& payload,
                         std::int64_t seq = 0);
    std::size_t pendingFor(const Peer* agent) const;
    /// Answers UNAVAILABLE to every request in flight to `key`.
    void failPending(const DaemonKey& key, const std::string& why);
    void releaseSlot(const Peer* agent);
    /// The request a daemon's error without a usable reply_to answers: the
    /// only one in flight to that daemon, else none (logged).
    std::unordered_map<std::string, Pending>::iterator soleRequestTo(const DaemonKey& key,
                                                                     const protocol::Envelope& error);
    /// Rewrites payload.channel of an agent's pty.* or job.logs.close request
    /// to the daemon's number. False (with the error sent) when the channel
    /// is not the agent's.
    bool mapAgentChannel(Peer& agent, const DaemonKey& daemon, protocol::Envelope& env);
    /// Forwards a daemon's event on a channel to its agent; `ends`: the
    /// channel ends with it.
    void routeDaemonEvent(const DaemonKey& key, protocol::Envelope& env, bool ends = true);
    void dropRoute(std::uint32_t agentChannel);
    /// Remembers a channel that ended: binary frames still in flight for it
    /// are dropped quietly rather than answered NOT_FOUND (the agent knows).
    void ended(std::uint32_t agentChannel);
    static constexpr std::size_t kRememberEnded = 1024;
    void dropRoutesOf(const DaemonKey& key, const std::string& why);
    /// What the agent of a channel its daemon took with it is told.
    /// `code`: UNAVAILABLE (the daemon went away: a shell may be attached
    /// again), NOT_OWNER (another connection attached the shell).
    static std::string lostEvent(std::uint32_t channel, const Route& route, const std::string& why,
                                 std::string_view code = "UNAVAILABLE");

    RelayDb& m_db;
    RelayMetrics m_metrics;
    DaemonMap m_daemons;
    std::unordered_map<std::string, Pending> m_pending;
    std::unordered_map<const Peer*, std::size_t> m_pendingPerAgent;
    std::uint64_t m_nextId = 1;
    std::map<std::uint32_t, Route> m_routes;  ///< by the agent's channel number
    std::map<std::pair<DaemonKey, std::uint32_t>, std::uint32_t> m_routeByDaemon;
    std::uint32_t m_nextChannel = 1;
    std::set<std::uint32_t> m_endedChannels;  ///< recently ended, by the agent's number
    std::deque<std::uint32_t> m_endedOrder;
    /// Connected agents by (user, agent id): where callbacks go.
    std::multimap<std::pair<std::int64_t, std::string>, std::weak_ptr<Peer>> m_agents;
    /// Connected agents by the credential they authenticated with (dropCredential).
    std::multimap<std::int64_t, std::weak_ptr<Peer>> m_agentsByCredential;
    std::uint64_t m_nextEventId = 1;

    Cluster* m_cluster = nullptr;
    /// Other instances' links, by the daemon (connected here) each is for.
    std::multimap<DaemonKey, std::weak_ptr<Peer>> m_instanceLinks;
    double m_lastAlive = 0;
    /// A daemon connected or left while the database was away:
    /// daemon_presence is not what this instance holds.
    bool m_presenceStale = false;
    double m_databaseAwayUntil = 0;
    double m_databaseRetrySeconds = kDatabaseRetrySeconds;
    std::int64_t m_dropSeq = 0;      ///< the last drop clusterTick has seen
    std::int64_t m_callbackSeq = 0;  ///< the last callback clusterTick has seen
    /// The newest callback each agent connection was sent when it attached.
    std::unordered_map<const Peer*, std::int64_t> m_sentUpTo;
};

}  // namespace hpc::relay
