// An MCP session: JSON-RPC 2.0 framing, the initialize handshake, and the
// methods, with tools/call on threads of its own.
#include "mcp_session.hpp"

#include "errors.hpp"
#include "log.hpp"
#include "mcp_tools.hpp"

#include <array>
#include <thread>

namespace json = boost::json;

namespace hpc::mcp {
namespace {

constexpr std::array<std::string_view, 3> kVersions = {"2025-11-25", "2025-06-18", "2025-03-26"};
constexpr std::array<std::string_view, 8> kLevels = {"debug", "info",     "notice", "warning",
                                                     "error", "critical", "alert",  "emergency"};

bool validId(const json::value& id) { return id.is_string() || id.is_int64() || id.is_uint64(); }

const json::object& paramsOf(const json::object& msg) {
    static const json::object kNone;
    auto* p = msg.if_contains("params");
    if (!p || p->is_null()) return kNone;
    if (!p->is_object()) throw RpcFailure{kInvalidParams, "\"params\" must be an object"};
    return p->get_object();
}

std::string stringParam(const json::object& params, const char* name) {
    auto* v = params.if_contains(name);
    if (!v || !v->is_string()) throw RpcFailure{kInvalidParams, std::string("\"") + name + "\" must be a string"};
    return std::string(v->get_string());
}

}  // namespace

Session::Session(Backend& backend, Send send, SessionOptions options)
    : m_backend(backend), m_send(std::move(send)), m_options(std::move(options)) {}

Session::~Session() { shutdown(); }

bool Session::shutdown(std::optional<std::chrono::milliseconds> limit) {
    std::unique_lock lock(m_callsLock);
    m_closing = true;
    for (auto& [id, call] : m_calls) call.cancelled->store(true);
    auto done = [this] { return m_calls.empty(); };
    if (!limit) {
        m_callsDone.wait(lock, done);
        return true;
    }
    return m_callsDone.wait_for(lock, *limit, done);
}

std::size_t Session::running() const {
    std::lock_guard lock(m_callsLock);
    return m_calls.size();
}

void Session::emit(const json::value& msg) {
    std::lock_guard lock(m_sendLock);
    m_send(msg);
}

void Session::answer(const json::value& id, json::value result) {
    emit(json::object{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}});
}

void Session::fail(const json::value& id, int code, const std::string& message) {
    emit(json::object{{"jsonrpc", "2.0"}, {"id", id}, {"error", {{"code", code}, {"message", message}}}});
}

void Session::receive(std::string_view text) {
    if (text.size() > m_options.maxMessageBytes)
        return fail(nullptr, kInvalidRequest,
                    "message of " + std::to_string(text.size()) + " bytes; the limit is " +
                        std::to_string(m_options.maxMessageBytes));
    json::error_code ec;
    auto v = json::parse(text, ec);
    if (ec) return fail(nullptr, kParseError, "not JSON: " + ec.message());
    if (v.is_array()) return fail(nullptr, kInvalidRequest, "batches are not supported (MCP 2025-06-18 and later)");
    if (!v.is_object()) return fail(nullptr, kInvalidRequest, "a message must be a JSON object");
    handle(v.get_object());
}

void Session::handle(const json::object& msg) {
    const json::value* id = msg.if_contains("id");
    const json::value* method = msg.if_contains("method");
    const json::value* version = msg.if_contains("jsonrpc");
    bool isRequest = id && validId(*id);
    if (!version || !version->is_string() || version->get_string() != "2.0")
        return fail(isRequest ? *id : nullptr, kInvalidRequest, "\"jsonrpc\" must be \"2.0\"");
    if (!method) {
        // A response (this server sends no requests): nothing to do.
        if (id && (msg.contains("result") || msg.contains("error"))) return;
        return fail(isRequest ? *id : nullptr, kInvalidRequest, "neither a request nor a notification");
    }
    if (!method->is_string()) return fail(isRequest ? *id : nullptr, kInvalidRequest, "\"method\" must be a string");
    if (id && !isRequest) return fail(nullptr, kInvalidRequest, "\"id\" must be a string or an integer");
    const std::string name(method->get_string());

    if (!id) {  // a notification: never answered
        try {
            if (name == "notifications/initialized") {
                m_initialized = true;
            } else if (name == "notifications/cancelled") {
                auto* req = paramsOf(msg).if_contains("requestId");
                if (!req || !validId(*req)) return;
                std::lock_guard lock(m_callsLock);
                if (auto it = m_calls.find(json::serialize(*req)); it != m_calls.end())
                    it->second.cancelled->store(true);
            }
        } catch (const RpcFailure&) {
        }
        return;
    }

    try {
        const json::object& params = paramsOf(msg);
        if (name == "initialize") return answer(*id, initialize(params));
        if (name == "ping") return answer(*id, json::object{});
        if (name == "tools/list") return answer(*id, json::object{{"tools", toolList()}});
        if (name == "tools/call") return startCall(*id, params);
        if (name == "resources/list") return answer(*id, listResources(m_backend));
        if (name == "resources/templates/list") return answer(*id, resourceTemplates());
        if (name == "resources/read") return answer(*id, readResource(m_backend, stringParam(params, "uri")));
        if (name == "resources/subscribe") {
            subscribe(stringParam(params, "uri"));
            return answer(*id, json::object{});
        }
        if (name == "resources/unsubscribe") {
            std::lock_guard lock(m_callsLock);
            if (auto it = m_calls.find(kWatchPrefix + stringParam(params, "uri")); it != m_calls.end())
                it->second.cancelled->store(true);
            return answer(*id, json::object{});
        }
        if (name == "prompts/list") return answer(*id, listPrompts());
        if (name == "prompts/get") {
            json::object args;
            if (auto* a = params.if_contains("arguments"); a && !a->is_null()) {
                if (!a->is_object()) throw RpcFailure{kInvalidParams, "\"arguments\" must be an object"};
                args = a->get_object();
            }
            return answer(*id, getPrompt(m_backend, stringParam(params, "name"), args));
        }
        if (name == "logging/setLevel") {
            auto level = stringParam(params, "level");
            if (std::find(kLevels.begin(), kLevels.end(), level) == kLevels.end())
                throw RpcFailure{kInvalidParams, "unknown level \"" + level + "\""};
            return answer(*id, json::object{});
        }
        fail(*id, kMethodNotFound, "no method \"" + name + "\"");
    } catch (const RpcFailure& f) {
        fail(*id, f.code, f.message);
    } catch (const std::exception& e) {
        log::warning(std::string("mcp: ") + name + ": " + e.what());
        fail(*id, kInternalError, e.what());
    }
}

json::object Session::initialize(const json::object& params) {
    std::string asked;
    if (auto* v = params.if_contains("protocolVersion"); v && v->is_string()) asked = v->get_string();
    // The client's revision when spoken here, else the latest (the client decides whether to go on).
    std::string_view version = kVersions.front();
    for (auto v : kVersions)
        if (v == asked) version = v;
    return {
        {"protocolVersion", version},
        {"capabilities",
         {{"tools", {{"listChanged", false}}},
          {"resources", {{"subscribe", true}, {"listChanged", false}}},
          {"prompts", {{"listChanged", false}}},
          {"logging", json::object{}}}},
        {"serverInfo", {{"name", m_options.serverName}, {"version", m_options.serverVersion}}},
        {"instructions",
         "Shells, commands, files and batch jobs on the user's HPC login nodes and lab servers, each reached "
         "through a daemon. Start with list_daemons, and read a daemon's skill (the resource "
         "hpc://daemons/{daemon}/skill, or the use_cluster prompt) before acting on it: it says how that "
         "cluster is to be used. Commands run only inside the directories the user allowed."},
    };
}

void Session::subscribe(const std::string& uri) {
    auto job = parseJobUri(uri);
    if (!job)
        throw RpcFailure{
            kInvalidParams,
            "only a job's resource can be subscribed to (hpc://daemons/{daemon}/jobs/{job_id}), not " + uri};
    try {
        (void)m_backend.request(job->daemon, "job.status", {{"job_id", job->jobId}}, CallContext{});
    } catch (const Error& e) {
        throw RpcFailure{e.code() == ErrorCode::NotFound ? kResourceNotFound : kInternalError, e.what()};
    }
    auto key = kWatchPrefix + uri;
    auto cancelled = std::make_shared<std::atomic<bool>>(false);
    {
        std::lock_guard lock(m_callsLock);
        if (m_closing) throw RpcFailure{kInternalError, "the session is closing"};
        if (m_calls.count(key)) return;  // already watched: told once
        if (m_calls.size() >= m_options.maxConcurrentCalls)
            throw RpcFailure{kInternalError, std::to_string(m_calls.size()) +
                                                 " calls and subscriptions are running; the limit is " +
                                                 std::to_string(m_options.maxConcurrentCalls)};
        m_calls.emplace(key, Call{cancelled});
    }
    // The job's callback is durable on the platform: one that came while no
    // session watched is found at once.
    std::thread([this, uri, job = *job, key, cancelled] {
        CallContext ctx;
        ctx.cancelled = cancelled;
        try {
            while (!cancelled->load()) {
                if (m_backend.waitJob(job.daemon, job.jobId, 3600, ctx)) {
                    emit(json::object{
                        {"jsonrpc", "2.0"}, {"method", "notifications/resources/updated"}, {"params", {{"uri", uri}}}});
                    break;
                }
            }
        } catch (const std::exception& e) {
            log::warning("mcp: watching " + uri + ": " + e.what());
        }
        std::lock_guard lock(m_callsLock);
        m_calls.erase(key);
        m_callsDone.notify_all();
    }).detach();
}

void Session::startCall(const json::value& id, const json::object& params) {
    auto name = stringParam(params, "name");
    json::object arguments;
    if (auto* a = params.if_contains("arguments"); a && !a->is_null()) {
        if (!a->is_object()) throw RpcFailure{kInvalidParams, "\"arguments\" must be an object"};
        arguments = a->get_object();
    }
    std::optional<json::value> progressToken;
    if (auto* meta = params.if_contains("_meta"); meta && meta->is_object())
        if (auto* t = meta->get_object().if_contains("progressToken"); t && validId(*t)) progressToken = *t;

    auto key = json::serialize(id);
    auto cancelled = std::make_shared<std::atomic<bool>>(false);
    {
        std::lock_guard lock(m_callsLock);
        if (m_closing) throw RpcFailure{kInternalError, "the session is closing"};
        if (m_calls.count(key)) throw RpcFailure{kInvalidRequest, "request id " + key + " is already in use"};
        if (m_calls.size() >= m_options.maxConcurrentCalls)
            throw RpcFailure{kInternalError, std::to_string(m_calls.size()) + " tool calls are running; the limit is " +
                                                 std::to_string(m_options.maxConcurrentCalls)};
        m_calls.emplace(key, Call{cancelled});
    }
    std::thread([this, id, key, name, arguments = std::move(arguments), progressToken, cancelled] {
        CallContext ctx;
        ctx.cancelled = cancelled;
        if (progressToken) {
            ctx.progress = [this, token = *progressToken](double progress, std::optional<double> total,
                                                          const std::string& message) {
                json::object p{{"progressToken", token}, {"progress", progress}};
                if (total) p["total"] = *total;
                if (!message.empty()) p["message"] = message;
                emit(json::object{{"jsonrpc", "2.0"}, {"method", "notifications/progress"}, {"params", std::move(p)}});
            };
        }
        std::optional<json::object> result;
        std::optional<RpcFailure> failure;
        try {
            result = callTool(m_backend, name, arguments, ctx);
        } catch (const RpcFailure& f) {
            failure = f;
        } catch (const std::exception& e) {
            failure = RpcFailure{kInternalError, e.what()};
        }
        // A cancelled request is not answered (the client has moved on).
        if (!cancelled->load()) {
            if (result)
                answer(id, std::move(*result));
            else
                fail(id, failure->code, failure->message);
        }
        std::lock_guard lock(m_callsLock);
        m_calls.erase(key);
        m_callsDone.notify_all();
    }).detach();
}

}  // namespace hpc::mcp
