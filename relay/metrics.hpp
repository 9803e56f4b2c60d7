#pragma once
/// hpc-relay's metrics (docs/metrics.md): counters the hub and the server
/// update as they route, and their rendering in the Prometheus text
/// exposition format for GET /metrics.
///
/// The relay runs one io_context on one thread, so the counters are plain
/// integers: no atomics, no locks on the data path. Every label takes values
/// from a bounded set: request types (already checked by protocol::parse) and
/// HTTP routes beyond kMaxLabelValues distinct values are counted as "other",
/// so a client cannot grow the exposition without bound.

#include "errors.hpp"
#include "secret.hpp"

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hpc::relay {

/// A Prometheus histogram with fixed upper bounds.
class Histogram {
public:
    explicit Histogram(std::vector<double> bounds);
    void observe(double value);
    const std::vector<double>& bounds() const { return m_bounds; }
    /// Observations per bucket, not cumulative; the last is above every bound.
    const std::vector<std::uint64_t>& buckets() const { return m_buckets; }
    std::uint64_t count() const { return m_count; }
    double sum() const { return m_sum; }

private:
    std::vector<double> m_bounds;
    std::vector<std::uint64_t> m_buckets;
    std::uint64_t m_count = 0;
    double m_sum = 0;
};

/// Values read when a scrape comes, not counted as things happen.
struct RelayGauges {
    std::size_t agents = 0;
    std::size_t daemons = 0;
    std::size_t requestsInFlight = 0;
    std::size_t channelsOpen = 0;
    /// Job callbacks stored and not yet acknowledged by their agent; nullopt
    /// when the database could not say.
    std::optional<std::int64_t> callbacksPending;
};

class RelayMetrics {
public:
    enum class Kind { Agent, Daemon };
    enum class Direction { ToDaemon, ToAgent };
    /// Who answered a request with an error: the relay itself, or the daemon.
    enum class Origin { Relay, Daemon };
    static constexpr std::size_t kMaxLabelValues = 48;

    RelayMetrics();

    void connected(Kind kind) { ++m_connections[static_cast<std::size_t>(kind)]; }
    void routed(Direction direction, bool binary, std::size_t bytes) {
        auto& flow = m_flows[static_cast<std::size_t>(direction) * 2 + (binary ? 1 : 0)];
        ++flow.messages;
        flow.bytes += bytes;
    }
    void error(ErrorCode code, Origin origin) {
        ++m_errors[static_cast<std::size_t>(origin)][static_cast<std::size_t>(code)];
    }
    /// A daemon's job.completed: `isNew` false for a retry of one stored before.
    void callbackReceived(bool isNew) { ++(isNew ? m_callbacksStored : m_callbacksDuplicate); }
    /// A stored callback sent to a connected agent (new, or again on its reconnect).
    void callbackSent() { ++m_callbacksSent; }

    /// The slot of a request type for requestAnswered (cheap to keep in a
    /// request in flight).
    std::uint16_t requestSlot(std::string_view type);
    /// A daemon answered a request `seconds` after the relay forwarded it.
    void requestAnswered(std::uint16_t slot, double seconds) { m_requestLatency[slot].second.observe(seconds); }

    /// One HTTP request the API answered (not a WebSocket upgrade). Counts
    /// sign-ins, and errors by the code in an error answer's body.
    void httpAnswered(std::string_view method, std::string_view path, int status, std::string_view body,
                      double seconds);

    /// The whole exposition, text format 0.0.4.
    std::string render(const RelayGauges& gauges) const;

private:
    struct Flow {
        std::uint64_t messages = 0;
        std::uint64_t bytes = 0;
    };
    static constexpr std::size_t kErrorCodes = static_cast<std::size_t>(ErrorCode::Internal) + 1;

    double m_startedAt;
    std::array<std::uint64_t, 2> m_connections{};
    std::array<Flow, 4> m_flows{};  ///< by direction, then text/binary
    std::array<std::array<std::uint64_t, kErrorCodes>, 2> m_errors{};
    std::uint64_t m_callbacksStored = 0;
    std::uint64_t m_callbacksDuplicate = 0;
    std::uint64_t m_callbacksSent = 0;
    std::array<std::uint64_t, 2> m_signins{};  ///< success, failure
    /// By request type, in the order first seen (slot = index).
    std::vector<std::pair<std::string, Histogram>> m_requestLatency;
    std::map<std::pair<std::string, int>, std::uint64_t> m_httpRequests;  ///< by (route, status)
    std::map<std::string, Histogram> m_httpLatency;                       ///< by route
};

/// The route an HTTP path is counted under: ids replaced by {id}, and
/// anything unknown "other", so labels stay few.
std::string httpRoute(std::string_view path);

/// Who may read GET /metrics (docs/metrics.md).
struct MetricsAccess {
    bool enabled = true;
    /// When set, every scrape must carry `Authorization: Bearer <token>`;
    /// when not, only clients on a loopback address may scrape.
    std::optional<Secret> token;
};

/// Whether a scrape is allowed: nullopt when it is, else the error to answer
/// (NotFound when metrics are off, Unauthorized for a missing or wrong
/// token, NotOwner for a client not on loopback while no token is set).
std::optional<ErrorCode> checkScrape(const MetricsAccess& access, bool fromLoopback, std::string_view authorization);

}  // namespace hpc::relay
