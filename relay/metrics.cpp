#include "metrics.hpp"

#include "util.hpp"

#include <openssl/crypto.h>

#include <boost/json.hpp>

#include <algorithm>
#include <charconv>

namespace hpc::relay {
namespace {

/// From half a millisecond (routing alone) to five minutes (a long exec).
const std::vector<double> kRequestBounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                            0.5,    1,     2.5,    5,     10,   30,    60,   300};
const std::vector<double> kHttpBounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};

/// The shortest text that reads back as `v` (0.0005, not 0.00050000000000000001).
std::string number(double v) {
    char buf[400];  // fixed notation: DBL_MAX has 309 digits
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
    return ec == std::errc() ? std::string(buf, end) : std::string("NaN");
}

std::string escapeLabel(std::string_view v) {
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"')
            out += {'\\', c};
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

/// Accumulates the exposition, one family (HELP, TYPE, samples) at a time.
class Exposition {
public:
    void family(std::string_view name, std::string_view type, std::string_view help) {
        m_out.append("# HELP ").append(name).append(" ").append(help).append("\n");
        m_out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
    }
    /// `labels`: `name="value",…` already escaped, or empty.
    void sample(std::string_view name, const std::string& labels, double value) {
        m_out.append(name);
        if (!labels.empty()) m_out.append("{").append(labels).append("}");
        m_out.append(" ").append(number(value)).append("\n");
    }
    void histogram(std::string_view name, const std::string& labels, const Histogram& h) {
        std::string prefix = labels.empty() ? std::string() : labels + ",";
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i < h.bounds().size(); ++i) {
            cumulative += h.buckets()[i];
            sample(std::string(name) + "_bucket", prefix + "le=\"" + number(h.bounds()[i]) + "\"",
                   static_cast<double>(cumulative));
        }
        sample(std::string(name) + "_bucket", prefix + "le=\"+Inf\"", static_cast<double>(h.count()));
        sample(std::string(name) + "_sum", labels, h.sum());
        sample(std::string(name) + "_count", labels, static_cast<double>(h.count()));
    }
    std::string take() { return std::move(m_out); }

private:
    std::string m_out;
};

std::string label(std::string_view name, std::string_view value) {
    return std::string(name) + "=\"" + escapeLabel(value) + "\"";
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : m_bounds(std::move(bounds)), m_buckets(m_bounds.size() + 1, 0) {}

void Histogram::observe(double value) {
    auto at = std::lower_bound(m_bounds.begin(), m_bounds.end(), value) - m_bounds.begin();
    ++m_buckets[static_cast<std::size_t>(at)];
    ++m_count;
    m_sum += value;
}

RelayMetrics::RelayMetrics() : m_startedAt(nowEpochSeconds()) {
    m_requestLatency.emplace_back("other", Histogram(kRequestBounds));
}

std::uint16_t RelayMetrics::requestSlot(std::string_view type) {
    for (std::size_t i = 0; i < m_requestLatency.size(); ++i)
        if (m_requestLatency[i].first == type) return static_cast<std::uint16_t>(i);
    // protocol::parse has checked the type's characters; only their number needs a bound.
    if (m_requestLatency.size() >= kMaxLabelValues) return 0;
    m_requestLatency.emplace_back(std::string(type), Histogram(kRequestBounds));
    return static_cast<std::uint16_t>(m_requestLatency.size() - 1);
}

std::string httpRoute(std::string_view path) {
    path = path.substr(0, path.find('?'));
    while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
    static constexpr std::string_view kFixed[] = {
        "/health",        "/metrics",     "/otp/signin",  "/auth/otp/signin/verify",
        "/auth/api-keys", "/auth/revoke", "/hpc/daemons", "/hpc/agent/ws"};
    for (auto fixed : kFixed)
        if (path == fixed) return std::string(fixed);
    static constexpr std::string_view kDaemon = "/hpc/daemons/";
    if (path.rfind(kDaemon, 0) == 0) {
        auto rest = path.substr(kDaemon.size());
        auto slash = rest.find('/');
        if (!isValidDaemonId(rest.substr(0, slash))) return "other";
        auto tail = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
        // Sub-resources as the API names them (/ws, /rotate-key, …): a few.
        bool plain = tail.size() <= 32 && std::all_of(tail.begin(), tail.end(), [](char c) {
                         return (c >= 'a' && c <= 'z') || c == '-' || c == '/';
                     });
        return plain ? "/hpc/daemons/{id}" + std::string(tail) : "other";
    }
    return "other";
}

void RelayMetrics::httpAnswered(std::string_view method, std::string_view path, int status, std::string_view body,
                                double seconds) {
    std::string route = httpRoute(path);
    if (!m_httpLatency.contains(route) && m_httpLatency.size() >= kMaxLabelValues) route = "other";
    ++m_httpRequests[{route, status}];
    m_httpLatency.try_emplace(route, kHttpBounds).first->second.observe(seconds);
    if (route == "/auth/otp/signin/verify" && method == "POST") ++m_signins[status == 200 ? 0 : 1];
    if (status < 400) return;
    // Error answers are {"status": "error", "code": …} (api.cpp's errorResponse).
    boost::json::error_code ec;
    auto v = boost::json::parse(body, ec);
    const auto* code = !ec && v.is_object() ? v.get_object().if_contains("code") : nullptr;
    auto parsed = code && code->is_string() ? errorCodeFromProtocol(code->get_string()) : std::nullopt;
    error(parsed.value_or(ErrorCode::Internal), Origin::Relay);
}

std::string RelayMetrics::render(const RelayGauges& g) const {
    Exposition x;
    x.family("hpc_relay_build_info", "gauge", "Always 1; the relay's version is its label.");
    x.sample("hpc_relay_build_info", label("version", HPC_VERSION), 1);
    x.family("hpc_relay_start_time_seconds", "gauge", "When the relay started, in seconds since the epoch.");
    x.sample("hpc_relay_start_time_seconds", "", m_startedAt);

    static constexpr std::string_view kKinds[] = {"agent", "daemon"};
    x.family("hpc_relay_connections", "gauge", "WebSocket connections open now, by kind.");
    x.sample("hpc_relay_connections", label("kind", "agent"), static_cast<double>(g.agents));
    x.sample("hpc_relay_connections", label("kind", "daemon"), static_cast<double>(g.daemons));
    x.family("hpc_relay_connections_total", "counter", "WebSocket connections accepted, by kind.");
    for (std::size_t k = 0; k < 2; ++k)
        x.sample("hpc_relay_connections_total", label("kind", kKinds[k]), static_cast<double>(m_connections[k]));

    x.family("hpc_relay_requests_in_flight", "gauge", "Agents' requests forwarded to a daemon and not answered yet.");
    x.sample("hpc_relay_requests_in_flight", "", static_cast<double>(g.requestsInFlight));
    x.family("hpc_relay_channels_open", "gauge", "Channels (shells, job output, file transfers) open now.");
    x.sample("hpc_relay_channels_open", "", static_cast<double>(g.channelsOpen));

    static constexpr std::string_view kDirections[] = {"to_daemon", "to_agent"};
    static constexpr std::string_view kFrames[] = {"text", "binary"};
    auto flows = [&](std::string_view name, std::string_view help, std::uint64_t Flow::*field) {
        x.family(name, "counter", help);
        for (std::size_t i = 0; i < m_flows.size(); ++i)
            x.sample(name, label("direction", kDirections[i / 2]) + "," + label("frame", kFrames[i % 2]),
                     static_cast<double>(m_flows[i].*field));
    };
    flows("hpc_relay_messages_routed_total",
          "WebSocket messages the relay routed between agents and daemons, by direction and frame kind.",
          &Flow::messages);
    flows("hpc_relay_bytes_routed_total",
          "Bytes of the WebSocket messages the relay routed, by direction and frame kind.", &Flow::bytes);

    x.family("hpc_relay_callbacks_received_total", "counter",
             "Job callbacks (job.completed) from daemons: new ones stored, and retries of stored ones.");
    x.sample("hpc_relay_callbacks_received_total", label("result", "stored"), static_cast<double>(m_callbacksStored));
    x.sample("hpc_relay_callbacks_received_total", label("result", "duplicate"),
             static_cast<double>(m_callbacksDuplicate));
    x.family("hpc_relay_callbacks_sent_total", "counter", "Stored job callbacks sent to connected agents.");
    x.sample("hpc_relay_callbacks_sent_total", "", static_cast<double>(m_callbacksSent));
    if (g.callbacksPending) {
        x.family("hpc_relay_callbacks_pending", "gauge", "Stored job callbacks no agent has acknowledged yet.");
        x.sample("hpc_relay_callbacks_pending", "", static_cast<double>(*g.callbacksPending));
    }

    x.family("hpc_relay_signins_total", "counter", "Sign-in code verifications, by result.");
    x.sample("hpc_relay_signins_total", label("result", "success"), static_cast<double>(m_signins[0]));
    x.sample("hpc_relay_signins_total", label("result", "failure"), static_cast<double>(m_signins[1]));

    static constexpr std::string_view kOrigins[] = {"relay", "daemon"};
    x.family("hpc_relay_errors_total", "counter",
             "Error answers, by protocol code and by who gave them: the relay (HTTP and WebSocket) or a daemon.");
    for (std::size_t o = 0; o < 2; ++o)
        for (std::size_t c = 0; c < kErrorCodes; ++c)
            x.sample("hpc_relay_errors_total",
                     label("code", toProtocolCode(static_cast<ErrorCode>(c))) + "," + label("origin", kOrigins[o]),
                     static_cast<double>(m_errors[o][c]));

    x.family("hpc_relay_request_duration_seconds", "histogram",
             "From an agent's request leaving the relay for its daemon to the daemon's answer, by request type.");
    for (const auto& [type, h] : m_requestLatency)
        if (h.count() > 0 || type == "other") x.histogram("hpc_relay_request_duration_seconds", label("type", type), h);

    x.family("hpc_relay_http_requests_total", "counter", "HTTP API requests answered, by route and status.");
    for (const auto& [key, n] : m_httpRequests)
        x.sample("hpc_relay_http_requests_total",
                 label("route", key.first) + "," + label("status", std::to_string(key.second)), static_cast<double>(n));
    x.family("hpc_relay_http_request_duration_seconds", "histogram", "Time to handle an HTTP API request, by route.");
    for (const auto& [route, h] : m_httpLatency)
        x.histogram("hpc_relay_http_request_duration_seconds", label("route", route), h);
    return x.take();
}

std::optional<ErrorCode> checkScrape(const MetricsAccess& access, bool fromLoopback, std::string_view authorization) {
    if (!access.enabled) return ErrorCode::NotFound;
    if (!access.token) return fromLoopback ? std::nullopt : std::optional(ErrorCode::NotOwner);
    static constexpr std::string_view kPrefix = "Bearer ";
    const std::string& want = access.token->reveal();
    if (authorization.size() != kPrefix.size() + want.size() || authorization.substr(0, kPrefix.size()) != kPrefix ||
        CRYPTO_memcmp(authorization.data() + kPrefix.size(), want.data(), want.size()) != 0)
        return ErrorCode::Unauthorized;
    return std::nullopt;
}

}  // namespace hpc::relay
