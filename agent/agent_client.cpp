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
        if (frame->binary) continue;  // PTY data is not ours to handle here
        auto parsed = protocol::parse(frame->data, protocol::kMaxResponseBytes);
        auto* reply = std::get_if<protocol::Envelope>(&parsed);
        if (!reply || !reply->isResponse()) continue;
        if (reply->replyTo != id && !reply->replyTo.empty()) continue;
        if (!reply->ok) throw Error(reply->errorCode, reply->errorMessage);
        return reply->result;
    }
}

ExecOutcome AgentClient::exec(const std::string& daemonId, const ExecSpec& spec, std::chrono::milliseconds timeout) {
    return ExecOutcome::fromResult(request(daemonId, "exec", spec.toPayload(), timeout));
}

}  // namespace hpc::agent
