#include "agent_client.hpp"

#include "errors.hpp"
#include "protocol.hpp"

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

}  // namespace

json::object ExecSpec::toPayload() const {
    json::object p;
    if (!command.empty()) {
        p["command"] = command;
    } else {
        json::array a;
        for (const auto& s : argv) a.emplace_back(s);
        p["argv"] = std::move(a);
    }
    if (cwd) p["cwd"] = *cwd;
    if (stdinData) p["stdin"] = *stdinData;
    if (timeoutSeconds) p["timeout_s"] = *timeoutSeconds;
    if (maxOutputBytes) p["max_output_bytes"] = *maxOutputBytes;
    if (!env.empty()) {
        json::object e;
        for (const auto& [k, v] : env) e[k] = v;
        p["env"] = std::move(e);
    }
    return p;
}

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
                                     net::ClientOptions{options.caFile, options.connectTimeout});
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
    m_ws->sendText(protocol::serialize(env));
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
    if (!spec.env.empty()) {
        json::object e;
        for (const auto& [k, v] : spec.env) e[k] = v;
        p["env"] = std::move(e);
    }
    auto r = request(daemonId, "pty.open", std::move(p), timeout);
    return PtyHandle{static_cast<std::uint32_t>(r.at("channel").as_int64()), optionalInt(r, "pid").value_or(0)};
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
            if (m_unanswered.erase(env->replyTo) && !env->ok)
                throw Error(env->errorCode, "pty.ack: " + env->errorMessage);
            if (!env->ok && env->replyTo.empty()) throw Error(env->errorCode, env->errorMessage);
            continue;
        }
        if (env->type == "pty.exit") {
            PtyEvent e;
            e.kind = PtyEvent::Kind::Exit;
            e.channel = static_cast<std::uint32_t>(protocol::optInt(env->payload, "channel", 0, UINT32_MAX).value_or(0));
            e.exitCode = optionalInt(env->payload, "exit_code");
            e.signal = optionalInt(env->payload, "signal");
            e.error = protocol::optString(env->payload, "error").value_or("");
            return e;
        }
    }
}

ExecOutcome AgentClient::exec(const std::string& daemonId, const ExecSpec& spec, std::chrono::milliseconds timeout) {
    return ExecOutcome::fromResult(request(daemonId, "exec", spec.toPayload(), timeout));
}

}  // namespace hpc::agent
