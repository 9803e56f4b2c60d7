#pragma once
/// Delivers job callbacks (design: "outbox"). Each row of the outbox table is
/// sent as a `job.completed` request; only the platform's success response
/// (the acknowledgement) removes it. Unacknowledged rows are sent again with
/// capped, jittered backoff, and all at once on every reconnect, in the order
/// they were written. The platform dedupes by callback_id, so a resend after
/// a lost acknowledgement is harmless.

#include "backoff.hpp"
#include "job_store.hpp"
#include "protocol.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <string>

namespace hpc::daemon {

class Outbox {
public:
    /// Queues a text frame on the link; false when the link is down or full.
    using Send = std::function<bool(std::string text)>;

    Outbox(boost::asio::io_context& ioc, JobStore& jobs, std::string daemonId, Send send);

    /// The link is up (again): send everything pending now.
    void connected();
    void disconnected();
    /// A new row was written: send it if the link is up.
    void kick() { flush(); }
    /// A response from the platform; true when it answered a callback.
    bool onResponse(const protocol::Envelope& response);
    std::size_t inFlight() const { return m_inFlight.size(); }
    /// Told, for each callback the platform acknowledges, how long after its
    /// job ended (or, without an end time, after its first send here).
    void setOnDelivered(std::function<void(double seconds)> f) { m_onDelivered = std::move(f); }

    /// A sent callback with no answer after this long is sent again.
    static constexpr std::chrono::seconds kAnswerTimeout{30};

private:
    void flush();
    void armRetry();

    boost::asio::io_context& m_ioc;
    JobStore& m_jobs;
    std::string m_daemonId;
    Send m_send;
    boost::asio::steady_timer m_retry;
    Backoff m_backoff{std::chrono::seconds(1), std::chrono::seconds(60), std::chrono::milliseconds(500)};
    bool m_connected = false;
    struct Sent {
        std::string callbackId;
        std::chrono::steady_clock::time_point at;
        double endedAt = 0;  ///< epoch seconds
    };
    std::map<std::string, Sent> m_inFlight;  ///< by request id
    std::uint64_t m_nextId = 1;
    std::function<void(double)> m_onDelivered;
};

}  // namespace hpc::daemon
