#include "agent_client.hpp"

#include "errors.hpp"
#include "protocol.hpp"

#include <limits>

namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace hpc::agent {
namespace {

std::string decoded(const json::object& r, const char* name) {
    auto* v = r.if_contains(name);
    if (!v || !v->is_string()) return {};
    std::string data(v->get_string());
    auto* enc = r.if_contains(std::string(name) + "_encoding");
    if (enc && enc->is_string() && enc->get_string() == "base64") {
        if (auto d = base64Decode(data)) return *d;
        throw Error(ErrorCode::BadRequest, std::string("the daemon sent bad base64 in ") + name);
    }
    return data;
}

bool flag(const json::object& r, const char* name) {
    auto* v = r.if_contains(name);
    return v && v->is_bool() && v->get_bool();
}

std::optional<int> optionalInt(const json::object& r, const char* name) {
    auto* v = r.if_contains(name);
    if (v && v->is_int64()) return static_cast<int>(v->get_int64());
    return std::nullopt;
}

/// pty.open's or pty.attach's answer.
PtyHandle ptyHandleOf(const json::object& r) {
    PtyHandle h{static_cast<std::uint32_t>(r.at("channel").as_int64()), optionalInt(r, "pid").value_or(0), {}, 0};
    if (auto* s = r.if_contains("session"); s && s->is_string()) h.session = s->get_string();
    if (auto* f = r.if_contains("from_byte"); f && f->is_int64() && f->get_int64() > 0)
        h.fromByte = static_cast<std::uint64_t>(f->get_int64());
    return h;
}

/// The end of a channel (`pty.exit`, `job.logs.end`): which, and how it ended.
PtyEvent channelEnd(PtyEvent::Kind kind, const json::object& p) {
    PtyEvent e;
    e.kind = kind;
    e.channel = static_cast<std::uint32_t>(protocol::optInt(p, "channel", 0, UINT32_MAX).value_or(0));
    e.exitCode = optionalInt(p, "exit_code");
    e.signal = optionalInt(p, "signal");
    e.error = protocol::optString(p, "error").value_or("");
    e.errorCode = protocol::optString(p, "code").value_or("");
    return e;
}

}  // namespace

ExecOutcome ExecOutcome::fromResult(const json::object& r) {
    ExecOutcome o;
    o.exitCode = optionalInt(r, "exit_code");
    o.signal = optionalInt(r, "signal");
    o.pid = optionalInt(r, "pid").value_or(0);
    o.out = decoded(r, "stdout");
    o.err = decoded(r, "stderr");
    o.outTruncated = flag(r, "stdout_truncated");
    o.errTruncated = flag(r, "stderr_truncated");
    o.timedOut = flag(r, "timed_out");
    if (auto* d = r.if_contains("duration_s"); d && d->is_number()) o.durationSeconds = d->to_number<double>();
    o.raw = r;
    return o;
}

std::unique_ptr<AgentClient> AgentClient::connect(const AgentOptions& options) {
    auto ws = net::WsClient::connect(options.url, "/hpc/agent/ws", options.token.reveal(),
                                     net::ClientOptions{options.caFile, options.connectTimeout, options.proxy});
    return std::unique_ptr<AgentClient>(new AgentClient(std::move(ws)));
}

json::object AgentClient::request(const std::string& daemonId, const std::string& type, json::object payload,
                                  std::chrono::milliseconds timeout) {
    std::string id = nextId();
    protocol::Envelope env;
    env.type = type;
    env.id = id;
    env.daemonId = daemonId;
    env.payload = std::move(payload);
    std::string text = protocol::serialize(env);
    // The platform would close the connection over a text frame that is not
    // UTF-8 (a WebSocket protocol error), and say nothing of why.
    if (!isValidUtf8(text))
        throw Error(ErrorCode::BadRequest, type +
                                               ": the request holds bytes that are not UTF-8; send such data "
                                               "base64-encoded or as binary frames");
    m_ws->sendText(text);
    auto deadline = Clock::now() + timeout;
    while (true) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) throw Error(ErrorCode::Timeout, type + " to " + daemonId + ": no response in time");
        auto frame = m_ws->read(left);
        if (!frame) continue;
        auto parsed = frame->binary ? protocol::ParseResult(protocol::ProtocolError{})
                                    : protocol::parse(frame->data, protocol::kMaxResponseBytes);
        auto* reply = std::get_if<protocol::Envelope>(&parsed);
        bool ours = reply && reply->isResponse() && (reply->replyTo == id || reply->replyTo.empty());
        if (!ours) {
            bool isCallback = false;
            if (auto cb = callbackIn(*frame, isCallback)) m_callbacks.push_back(std::move(*cb));
            if (isCallback) continue;
            // PTY output and events wait for nextPtyEvent().
            if (reply && reply->isResponse() && m_unanswered.erase(reply->replyTo)) continue;
            m_backlog.push_back(std::move(*frame));
            continue;
        }
        if (!reply->ok) throw Error(reply->errorCode, reply->errorMessage);
        return reply->result;
    }
}

std::optional<net::WsFrame> AgentClient::nextFrame(std::chrono::milliseconds timeout) {
    if (!m_backlog.empty()) {
        auto f = std::move(m_backlog.front());
        m_backlog.pop_front();
        return f;
    }
    return m_ws->read(timeout);
}

PtyHandle AgentClient::openPty(const std::string& daemonId, const PtySpec& spec, std::chrono::milliseconds timeout) {
    json::object p{{"cols", spec.cols}, {"rows", spec.rows}};
    if (spec.cwd) p["cwd"] = *spec.cwd;
    if (spec.shell) p["shell"] = *spec.shell;
    if (spec.credit) p["credit"] = spec.credit;
    protocol::putEnv(p, "env", spec.env);
    return ptyHandleOf(request(daemonId, "pty.open", std::move(p), timeout));
}

PtyHandle AgentClient::attachPty(const std::string& daemonId, const std::string& session,
                                 std::optional<std::uint64_t> fromByte, std::uint64_t credit,
                                 std::chrono::milliseconds timeout) {
    json::object p{{"session", session}};
    if (fromByte) p["from_byte"] = *fromByte;
    if (credit) p["credit"] = credit;
    return ptyHandleOf(request(daemonId, "pty.attach", std::move(p), timeout));
}

void AgentClient::ptyInput(std::uint32_t channel, std::string_view data) {
    m_ws->sendBinary(protocol::encodeChannelFrame(channel, data));
}

void AgentClient::ptyResize(const std::string& daemonId, std::uint32_t channel, unsigned cols, unsigned rows) {
    request(daemonId, "pty.resize", {{"channel", channel}, {"cols", cols}, {"rows", rows}}, std::chrono::seconds(30));
}

void AgentClient::ptyClose(const std::string& daemonId, std::uint32_t channel, int signal) {
    request(daemonId, "pty.close", {{"channel", channel}, {"signal", signal}}, std::chrono::seconds(30));
}

void AgentClient::ptyAck(const std::string& daemonId, std::uint32_t channel, std::uint64_t bytes) {
    protocol::Envelope env;
    env.type = "pty.ack";
    env.id = nextId();
    env.daemonId = daemonId;
    env.payload = {{"channel", channel}, {"bytes", bytes}};
    m_unanswered.insert(env.id);
    m_ws->sendText(protocol::serialize(env));
}

std::optional<PtyEvent> AgentClient::nextPtyEvent(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (true) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        auto frame = nextFrame(std::max(left, std::chrono::milliseconds(0)));
        if (!frame) return std::nullopt;
        if (timeout.count() <= 0) deadline = Clock::now();  // never wait, however many frames are skipped
        if (frame->binary) {
            auto decoded = protocol::decodeChannelFrame(std::span<const char>(frame->data.data(), frame->data.size()));
            if (!decoded) continue;
            PtyEvent e;
            e.channel = decoded->channel;
            e.data.assign(decoded->data.data(), decoded->data.size());
            return e;
        }
        auto parsed = protocol::parse(frame->data, protocol::kMaxResponseBytes);
        auto* env = std::get_if<protocol::Envelope>(&parsed);
        if (!env) continue;
        if (env->isResponse()) {
            // An ack that crossed its channel's end finds it gone, or its
            // daemon gone (UNAVAILABLE): the end event says why.
            if (m_unanswered.erase(env->replyTo) && !env->ok && env->errorCode != ErrorCode::NotFound &&
                env->errorCode != ErrorCode::Unavailable)
                throw Error(env->errorCode, "pty.ack: " + env->errorMessage);
            if (!env->ok && env->replyTo.empty()) throw Error(env->errorCode, env->errorMessage);
            continue;
        }
        if (env->type == "job.completed") {
            bool isCallback = false;
            if (auto cb = callbackIn(*frame, isCallback)) m_callbacks.push_back(std::move(*cb));
            continue;
        }
        if (env->type == "job.logs.end") {
            PtyEvent e = channelEnd(PtyEvent::Kind::LogsEnd, env->payload);
            e.state = protocol::optString(env->payload, "state").value_or("");
            e.endByte = static_cast<std::uint64_t>(
                protocol::optInt(env->payload, "end_byte", 0, std::numeric_limits<std::int64_t>::max()).value_or(0));
            return e;
        }
        if (env->type == "pty.exit") return channelEnd(PtyEvent::Kind::Exit, env->payload);
    }
}

JobLogsHandle AgentClient::openJobLogs(const std::string& daemonId, const JobLogsSpec& spec,
                                       std::chrono::milliseconds timeout) {
    json::object p{{"job_id", spec.jobId}, {"stream", spec.stderrStream ? "stderr" : "stdout"}};
    if (spec.fromByte) p["from_byte"] = spec.fromByte;
    if (spec.follow) p["follow"] = true;
    if (spec.credit) p["credit"] = spec.credit;
    auto r = request(daemonId, "job.logs", std::move(p), timeout);
    JobLogsHandle h;
    h.channel = static_cast<std::uint32_t>(protocol::optInt(r, "channel", 1, UINT32_MAX).value_or(0));
    h.size = static_cast<std::uint64_t>(
        protocol::optInt(r, "size", 0, std::numeric_limits<std::int64_t>::max()).value_or(0));
    if (!h.channel) throw Error(ErrorCode::Internal, "job.logs answered without a channel");
    return h;
}

void AgentClient::closeJobLogs(const std::string& daemonId, std::uint32_t channel) {
    request(daemonId, "job.logs.close", {{"channel", channel}}, std::chrono::seconds(30));
}

PtyEvent AgentClient::readJobLogs(const std::string& daemonId, std::uint32_t channel, std::uint64_t credit,
                                  const std::function<void(std::string_view)>& sink) {
    const std::uint64_t ackEvery = (credit ? credit : 1 << 20) / 4 + 1;
    std::uint64_t unacked = 0;
    while (true) {
        auto e = nextPtyEvent(std::chrono::hours(1));
        if (!e || e->channel != channel) continue;
        if (e->kind != PtyEvent::Kind::Output) return *e;
        sink(e->data);
        unacked += e->data.size();
        if (unacked >= ackEvery) {
            ptyAck(daemonId, channel, unacked);
            unacked = 0;
        }
    }
}

PtyEvent AgentClient::streamJobLogs(const std::string& daemonId, const JobLogsSpec& spec,
                                    const std::function<void(std::string_view)>& sink) {
    return readJobLogs(daemonId, openJobLogs(daemonId, spec).channel, spec.credit, sink);
}

ExecOutcome AgentClient::exec(const std::string& daemonId, const ExecSpec& spec, std::chrono::milliseconds timeout) {
    return ExecOutcome::fromResult(request(daemonId, "exec", spec.toPayload(), timeout));
}

JobCallback JobCallback::fromPayload(const std::string& daemonId, const json::object& p) {
    JobCallback c;
    c.daemonId = daemonId;
    c.callbackId = protocol::optString(p, "callback_id").value_or("");
    c.jobId = protocol::optString(p, "job_id").value_or("");
    c.state = protocol::optString(p, "state").value_or("");
    c.exitCode = optionalInt(p, "exit_code");
    c.signal = optionalInt(p, "signal");
    c.stdoutTail = decoded(p, "stdout_tail");
    c.stderrTail = decoded(p, "stderr_tail");
    c.raw = p;
    return c;
}

json::object AgentClient::submitJob(const std::string& daemonId, const JobSpec& spec,
                                    std::chrono::milliseconds timeout) {
    return request(daemonId, "job.submit", spec.toPayload(), timeout);
}

json::object AgentClient::jobStatus(const std::string& daemonId, const std::string& jobId) {
    return request(daemonId, "job.status", {{"job_id", jobId}}, std::chrono::seconds(60));
}

json::object AgentClient::cancelJob(const std::string& daemonId, const std::string& jobId) {
    return request(daemonId, "job.cancel", {{"job_id", jobId}}, std::chrono::seconds(60));
}

json::array AgentClient::listJobs(const std::string& daemonId, int limit) {
    auto r = request(daemonId, "job.list", {{"limit", limit}}, std::chrono::seconds(60));
    auto* jobs = r.if_contains("jobs");
    return jobs && jobs->is_array() ? jobs->get_array() : json::array{};
}

std::vector<JobCallback> AgentClient::storedCallbacks(const std::string& daemonId, const std::string& jobId) {
    json::object p;
    if (!jobId.empty()) p["job_id"] = jobId;
    auto r = request(daemonId, "callback.list", std::move(p), std::chrono::seconds(60));
    std::vector<JobCallback> out;
    if (auto* list = r.if_contains("callbacks"); list && list->is_array())
        for (const auto& v : list->get_array())
            if (v.is_object())
                out.push_back(JobCallback::fromPayload(
                    protocol::optString(v.get_object(), "daemon_id").value_or(daemonId), v.get_object()));
    return out;
}

void AgentClient::ackCallback(const std::string& callbackId) {
    request("", "callback.ack", {{"callback_id", callbackId}}, std::chrono::seconds(60));
}

std::optional<JobCallback> AgentClient::callbackIn(const net::WsFrame& frame, bool& isCallback) {
    isCallback = false;
    if (frame.binary) return std::nullopt;
    auto parsed = protocol::parse(frame.data, protocol::kMaxResponseBytes);
    auto* env = std::get_if<protocol::Envelope>(&parsed);
    if (!env || env->type != "job.completed") return std::nullopt;
    isCallback = true;
    auto cb = JobCallback::fromPayload(env->daemonId, env->payload);
    if (cb.callbackId.empty() || !m_seenCallbacks.insert(cb.callbackId).second) return std::nullopt;
    return cb;
}

std::optional<JobCallback> AgentClient::nextCallback(std::chrono::milliseconds timeout) {
    // Frames put aside while waiting for responses may hold callbacks.
    for (auto it = m_backlog.begin(); it != m_backlog.end();) {
        bool isCallback = false;
        if (auto cb = callbackIn(*it, isCallback)) m_callbacks.push_back(std::move(*cb));
        it = isCallback ? m_backlog.erase(it) : std::next(it);
    }
    auto deadline = Clock::now() + timeout;
    while (m_callbacks.empty()) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return std::nullopt;
        auto frame = m_ws->read(left);
        if (!frame) continue;
        bool isCallback = false;
        if (auto cb = callbackIn(*frame, isCallback)) m_callbacks.push_back(std::move(*cb));
        if (!isCallback) m_backlog.push_back(std::move(*frame));
    }
    auto cb = std::move(m_callbacks.front());
    m_callbacks.pop_front();
    return cb;
}

std::optional<JobCallback> AgentClient::waitForJob(const std::string& daemonId, const std::string& jobId,
                                                   std::chrono::milliseconds timeout) {
    auto matches = [&](const JobCallback& c) {
        return c.jobId == jobId && (daemonId.empty() || c.daemonId == daemonId);
    };
    // Already pushed on this connection?
    for (auto it = m_callbacks.begin(); it != m_callbacks.end(); ++it)
        if (matches(*it)) {
            auto cb = std::move(*it);
            m_callbacks.erase(it);
            return cb;
        }
    // Stored by the platform (perhaps acknowledged long ago)?
    for (auto& cb : storedCallbacks(daemonId, jobId)) {
        if (!matches(cb)) continue;
        m_seenCallbacks.insert(cb.callbackId);
        std::erase_if(m_callbacks, [&](const JobCallback& c) { return c.callbackId == cb.callbackId; });
        return cb;
    }
    // Not yet: every new callback for this agent is pushed from here on.
    auto deadline = Clock::now() + timeout;
    std::deque<JobCallback> others;
    std::optional<JobCallback> found;
    while (!found) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) break;
        auto cb = nextCallback(left);
        if (!cb) break;
        if (matches(*cb))
            found = std::move(cb);
        else
            others.push_back(std::move(*cb));
    }
    // Others stay for nextCallback().
    m_callbacks.insert(m_callbacks.begin(), others.begin(), others.end());
    return found;
}

}  // namespace hpc::agent
