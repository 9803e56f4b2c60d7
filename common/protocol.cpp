#include "protocol.hpp"
#include "util.hpp"

#include <boost/json/basic_parser_impl.hpp>

#include <algorithm>
#include <cmath>

namespace json = boost::json;

namespace hpc::protocol {
namespace {

bool isPrintableAscii(std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x21 && c <= 0x7e; });
}

bool isValidType(std::string_view s) {
    if (s.empty() || s.size() > kMaxTypeLength) return false;
    return std::all_of(s.begin(), s.end(), [](char c) { return (c >= 'a' && c <= 'z') || c == '.' || c == '_'; });
}

ProtocolError bad(std::string message, std::string replyTo = {}) {
    return ProtocolError{ErrorCode::BadRequest, std::move(message), std::move(replyTo)};
}

std::string kindOf(const json::value& v) {
    switch (v.kind()) {
        case json::kind::null:
            return "null";
        case json::kind::bool_:
            return "a boolean";
        case json::kind::int64:
        case json::kind::uint64:
        case json::kind::double_:
            return "a number";
        case json::kind::string:
            return "a string";
        case json::kind::array:
            return "an array";
        case json::kind::object:
            return "an object";
    }
    return "unknown";
}

bool isUsableId(std::string_view s) { return !s.empty() && s.size() <= kMaxIdLength && isPrintableAscii(s); }

/// A number JSON can spell but a double cannot hold (1e999 parses as
/// infinity) would not survive serialization to the next peer: refuse it.
bool hasNonFiniteNumber(const json::value& v) {
    switch (v.kind()) {
        case json::kind::double_:
            return !std::isfinite(v.get_double());
        case json::kind::array:
            return std::any_of(v.get_array().begin(), v.get_array().end(),
                               [](const json::value& e) { return hasNonFiniteNumber(e); });
        case json::kind::object:
            return std::any_of(v.get_object().begin(), v.get_object().end(),
                               [](const json::key_value_pair& kv) { return hasNonFiniteNumber(kv.value()); });
        default:
            return false;
    }
}

/// SAX handler that keeps the string value of the top-level "id" key, as far
/// as the parser gets: a frame that is not valid JSON can still be answered
/// under its id when the id comes before the fault.
struct IdScanner {
    static constexpr std::size_t max_object_size = std::size_t(-1);
    static constexpr std::size_t max_array_size = std::size_t(-1);
    static constexpr std::size_t max_key_size = std::size_t(-1);
    static constexpr std::size_t max_string_size = std::size_t(-1);

    int depth = 0;
    std::string key;
    std::string value;
    std::string id;

    bool on_document_begin(json::error_code&) { return true; }
    bool on_document_end(json::error_code&) { return true; }
    bool on_object_begin(json::error_code&) { return enter(1); }
    bool on_object_end(std::size_t, json::error_code&) { return enter(-1); }
    bool on_array_begin(json::error_code&) { return enter(1); }
    bool on_array_end(std::size_t, json::error_code&) { return enter(-1); }
    bool on_key_part(json::string_view s, std::size_t, json::error_code&) { return appendBounded(key, s); }
    bool on_key(json::string_view s, std::size_t, json::error_code&) {
        if (!appendBounded(key, s)) return false;
        if (depth != 1) key.clear();
        return true;
    }
    bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
        return depth != 1 || key != "id" || appendBounded(value, s);
    }
    bool on_string(json::string_view s, std::size_t, json::error_code&) {
        if (depth == 1 && key == "id" && appendBounded(value, s) && id.empty()) id = value;
        return endValue();
    }
    bool on_number_part(json::string_view, json::error_code&) { return true; }
    bool on_int64(std::int64_t, json::string_view, json::error_code&) { return endValue(); }
    bool on_uint64(std::uint64_t, json::string_view, json::error_code&) { return endValue(); }
    bool on_double(double, json::string_view, json::error_code&) { return endValue(); }
    bool on_bool(bool, json::error_code&) { return endValue(); }
    bool on_null(json::error_code&) { return endValue(); }
    bool on_comment_part(json::string_view, json::error_code&) { return true; }
    bool on_comment(json::string_view, json::error_code&) { return true; }

private:
    // Keys and ids longer than an id may be are never needed whole.
    static bool appendBounded(std::string& to, json::string_view s) {
        if (to.size() + s.size() > kMaxIdLength + 1)
            to.resize(kMaxIdLength + 1);
        else
            to.append(s.data(), s.size());
        return true;
    }
    bool enter(int by) {
        depth += by;
        key.clear();
        value.clear();
        return true;
    }
    bool endValue() {
        if (depth == 1) {
            key.clear();
            value.clear();
        }
        return true;
    }
};

/// The top-level "id" of a frame that failed to parse, if it could be read.
std::string recoverId(std::string_view text, const json::parse_options& opts) {
    json::basic_parser<IdScanner> p(opts);
    json::error_code ec;
    p.write_some(false, text.data(), text.size(), ec);
    const std::string& id = p.handler().id;
    return isUsableId(id) ? id : std::string();
}

}  // namespace

ParseResult parse(std::string_view text, std::size_t maxBytes) {
    if (text.size() > maxBytes)
        return bad("frame of " + std::to_string(text.size()) + " bytes exceeds the " + std::to_string(maxBytes) +
                   "-byte limit");
    json::error_code ec;
    json::parse_options opts;
    opts.max_depth = 32;
    json::value root = json::parse(text, ec, {}, opts);
    if (ec) return bad("not valid JSON: " + ec.message(), recoverId(text, opts));
    if (!root.is_object()) return bad("envelope must be a JSON object, got " + kindOf(root));
    const json::object& o = root.get_object();

    // Read the id first so every later error can be matched to its request.
    std::string id;
    if (const auto* idv = o.if_contains("id"); idv && idv->is_string()) {
        std::string_view s = idv->get_string();
        if (isUsableId(s)) id = std::string(s);
    }
    if (hasNonFiniteNumber(root)) return bad("a number is out of range (larger than a double can hold)", id);

    const auto* vv = o.if_contains("v");
    if (!vv) return bad("missing \"v\" (protocol version)", id);
    if (!vv->is_int64() && !vv->is_uint64()) return bad("\"v\" must be an integer, got " + kindOf(*vv), id);
    auto version = vv->is_int64() ? vv->get_int64() : static_cast<std::int64_t>(vv->get_uint64());
    if (version != kVersion)
        return bad("unsupported protocol version " + std::to_string(version) + "; this peer speaks version " +
                       std::to_string(kVersion),
                   id);

    const auto* tv = o.if_contains("type");
    if (!tv) return bad("missing \"type\"", id);
    if (!tv->is_string()) return bad("\"type\" must be a string, got " + kindOf(*tv), id);
    if (!isValidType(tv->get_string())) return bad("\"type\" must be 1-64 characters of a-z, '.', '_'", id);

    Envelope env;
    env.v = kVersion;
    env.type = std::string(tv->get_string());

    if (env.isResponse()) {
        const auto* okv = o.if_contains("ok");
        if (!okv || !okv->is_bool()) return bad("a response needs \"ok\": true or false");
        env.ok = okv->get_bool();
        // reply_to is null only on an error about a frame whose id was unreadable.
        const auto* rv = o.if_contains("reply_to");
        bool nullReply = rv && rv->is_null() && !env.ok;
        if (!nullReply) {
            if (!rv || !rv->is_string() || rv->get_string().empty() || rv->get_string().size() > kMaxIdLength)
                return bad("a response needs \"reply_to\": the id of the request it answers");
            env.replyTo = std::string(rv->get_string());
        }
        if (env.ok) {
            if (const auto* res = o.if_contains("result")) {
                if (!res->is_object()) return bad("\"result\" must be an object, got " + kindOf(*res));
                env.result = res->get_object();
            }
        } else {
            const auto* err = o.if_contains("error");
            if (!err || !err->is_object()) return bad("a failed response needs \"error\": {code, message}");
            const auto& eo = err->get_object();
            const auto* code = eo.if_contains("code");
            const auto* msg = eo.if_contains("message");
            if (!code || !code->is_string() || !msg || !msg->is_string())
                return bad("\"error\" needs string \"code\" and \"message\"");
            // A code from a newer peer is kept as Internal with its text.
            env.errorCode = errorCodeFromProtocol(code->get_string()).value_or(ErrorCode::Internal);
            env.errorMessage = std::string(msg->get_string());
        }
        return env;
    }

    const auto* idv = o.if_contains("id");
    if (!idv) return bad("missing \"id\"");
    if (!idv->is_string()) return bad("\"id\" must be a string, got " + kindOf(*idv));
    if (id.empty()) return bad("\"id\" must be 1-128 printable ASCII characters");
    env.id = id;

    if (const auto* pv = o.if_contains("payload")) {
        if (!pv->is_object()) return bad("\"payload\" must be an object, got " + kindOf(*pv), id);
        env.payload = pv->get_object();
    }
    if (const auto* dv = o.if_contains("daemon_id")) {
        if (!dv->is_string()) return bad("\"daemon_id\" must be a string, got " + kindOf(*dv), id);
        env.daemonId = std::string(dv->get_string());
    }
    if (const auto* av = o.if_contains("agent")) {
        if (!av->is_object()) return bad("\"agent\" must be an object, got " + kindOf(*av), id);
        env.agent = av->get_object();
    }
    return env;
}

std::string serialize(const Envelope& e) {
    json::object o;
    o["v"] = e.v;
    o["type"] = e.type;
    if (e.isResponse()) {
        o["reply_to"] = e.replyTo;
        o["ok"] = e.ok;
        if (e.ok) {
            o["result"] = e.result;
        } else {
            o["error"] = json::object{{"code", toProtocolCode(e.errorCode)}, {"message", e.errorMessage}};
        }
    } else {
        o["id"] = e.id;
        if (!e.daemonId.empty()) o["daemon_id"] = e.daemonId;
        if (!e.agent.empty()) o["agent"] = e.agent;
        o["payload"] = e.payload;
    }
    return json::serialize(o);
}

std::string makeMessage(std::string_view type, std::string_view id, json::object payload) {
    Envelope e;
    e.type = std::string(type);
    e.id = std::string(id);
    e.payload = std::move(payload);
    return serialize(e);
}

std::string makeOk(std::string_view replyTo, json::object result) {
    Envelope e;
    e.type = "response";
    e.replyTo = std::string(replyTo);
    e.ok = true;
    e.result = std::move(result);
    return serialize(e);
}

std::string makeError(std::string_view replyTo, ErrorCode code, std::string_view message) {
    json::object o;
    o["v"] = kVersion;
    o["type"] = "response";
    // An error about a frame whose id could not be read has reply_to null.
    if (replyTo.empty())
        o["reply_to"] = nullptr;
    else
        o["reply_to"] = replyTo;
    o["ok"] = false;
    o["error"] = json::object{{"code", toProtocolCode(code)}, {"message", message}};
    return json::serialize(o);
}

std::string encodeChannelFrame(std::uint32_t channel, std::string_view data) {
    std::string out;
    out.reserve(4 + data.size());
    out.push_back(static_cast<char>((channel >> 24) & 0xff));
    out.push_back(static_cast<char>((channel >> 16) & 0xff));
    out.push_back(static_cast<char>((channel >> 8) & 0xff));
    out.push_back(static_cast<char>(channel & 0xff));
    out.append(data);
    return out;
}

std::optional<ChannelFrame> decodeChannelFrame(std::span<const char> frame) {
    if (frame.size() < 4) return std::nullopt;
    auto b = [&](std::size_t i) { return static_cast<std::uint32_t>(static_cast<unsigned char>(frame[i])); };
    return ChannelFrame{(b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3), frame.subspan(4)};
}

std::string makeExecFrame(std::uint32_t channel, ExecStream stream, std::size_t dataBytes) {
    std::string out = encodeChannelFrame(channel, {});
    out.resize(kExecFrameHeaderBytes + dataBytes, '\0');
    out[4] = static_cast<char>(stream);
    return out;
}

std::optional<ExecFrame> decodeExecFrame(std::span<const char> frame) {
    auto f = decodeChannelFrame(frame);
    if (!f || f->data.empty()) return std::nullopt;
    return ExecFrame{f->channel, static_cast<std::uint8_t>(f->data[0]), f->data.subspan(1)};
}

std::optional<std::string> optString(const json::object& o, std::string_view key, std::size_t maxLen) {
    const auto* v = o.if_contains(key);
    if (!v || v->is_null()) return std::nullopt;
    if (!v->is_string()) throw Error(ErrorCode::BadRequest, "\"" + std::string(key) + "\" must be a string");
    if (v->get_string().size() > maxLen)
        throw Error(ErrorCode::BadRequest,
                    "\"" + std::string(key) + "\" is longer than " + std::to_string(maxLen) + " bytes");
    return std::string(v->get_string());
}

std::optional<std::int64_t> optInt(const json::object& o, std::string_view key, std::int64_t min, std::int64_t max) {
    const auto* v = o.if_contains(key);
    if (!v || v->is_null()) return std::nullopt;
    std::int64_t n = 0;
    if (v->is_int64())
        n = v->get_int64();
    else if (v->is_uint64() && v->get_uint64() <= static_cast<std::uint64_t>(INT64_MAX))
        n = static_cast<std::int64_t>(v->get_uint64());
    else
        throw Error(ErrorCode::BadRequest, "\"" + std::string(key) + "\" must be an integer");
    if (n < min || n > max)
        throw Error(ErrorCode::BadRequest, "\"" + std::string(key) + "\" must be between " + std::to_string(min) +
                                               " and " + std::to_string(max));
    return n;
}

std::optional<double> optNumber(const json::object& o, std::string_view key, double min, double max) {
    const auto* v = o.if_contains(key);
    if (!v || v->is_null()) return std::nullopt;
    if (!v->is_number()) throw Error(ErrorCode::BadRequest, "\"" + std::string(key) + "\" must be a number");
    double d = v->to_number<double>();
    if (!(d >= min && d <= max))
        throw Error(ErrorCode::BadRequest, "\"" + std::string(key) + "\" must be between " + std::to_string(min) +
                                               " and " + std::to_string(max));
    return d;
}

std::optional<bool> optBool(const json::object& o, std::string_view key) {
    const auto* v = o.if_contains(key);
    if (!v || v->is_null()) return std::nullopt;
    if (!v->is_bool()) throw Error(ErrorCode::BadRequest, "\"" + std::string(key) + "\" must be true or false");
    return v->get_bool();
}

namespace {
bool isValidEnvName(std::string_view n) {
    if (n.empty() || n.size() > 256 || (n[0] >= '0' && n[0] <= '9')) return false;
    for (char c : n)
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
    return true;
}
}  // namespace

EnvVars optEnvVars(const json::object& o, std::string_view key) {
    EnvVars out;
    const auto* env = o.if_contains(key);
    if (!env || env->is_null()) return out;
    if (!env->is_object())
        throw Error(ErrorCode::BadRequest, "\"" + std::string(key) + "\" must be an object of strings");
    for (const auto& [k, v] : env->get_object()) {
        if (!isValidEnvName(k))
            throw Error(ErrorCode::BadRequest, "invalid environment name \"" + std::string(k) + "\"");
        if (!v.is_string())
            throw Error(ErrorCode::BadRequest, "environment value of " + std::string(k) + " must be a string");
        // execve would silently cut the value at the NUL.
        if (v.get_string().find('\0') != json::string::npos)
            throw Error(ErrorCode::BadRequest, "environment value of " + std::string(k) + " contains a NUL byte");
        out.emplace_back(std::string(k), std::string(v.get_string()));
    }
    return out;
}

std::vector<std::string> envEntries(const EnvVars& env) {
    std::vector<std::string> out;
    out.reserve(env.size());
    for (const auto& [name, value] : env) out.push_back(name + "=" + value);
    return out;
}

std::vector<std::string> optEnv(const json::object& o, std::string_view key) { return envEntries(optEnvVars(o, key)); }

void putEnv(json::object& o, std::string_view key, const EnvVars& env) {
    if (env.empty()) return;
    json::object e;
    for (const auto& [name, value] : env) e[name] = value;
    o[key] = std::move(e);
}

namespace {
/// The length of `data` as a JSON string's content: control bytes take 6
/// ("\u0000") or 2 ("\n"), quotes and backslashes 2.
std::size_t escapedLength(std::string_view data) {
    std::size_t n = 0;
    for (unsigned char c : data)
        n += c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f' ? 2
             : c < 0x20                                                                             ? 6
                                                                                                    : 1;
    return n;
}
}  // namespace

void putBytes(json::object& o, std::string_view name, std::string_view data) {
    std::string encoding = std::string(name) + "_encoding";
    // UTF-8 as is, unless escaping makes it half as long again (output full
    // of NUL bytes would grow sixfold, past the response limit): so two
    // streams of exec's largest output fit a response either way.
    if (isValidUtf8(data) && escapedLength(data) <= data.size() + data.size() / 2) {
        o[name] = data;
        o[encoding] = "utf-8";
    } else {
        o[name] = base64Encode(data);
        o[encoding] = "base64";
    }
}

}  // namespace hpc::protocol
