#include "wire.hpp"

#include "errors.hpp"
#include "util.hpp"

namespace json = boost::json;

namespace hpc {
namespace {

json::array toArray(const std::vector<std::string>& strings) {
    json::array a;
    for (const auto& s : strings) a.emplace_back(s);
    return a;
}

bool isPrintable(std::string_view s) {
    for (unsigned char c : s)
        if (c < 0x20 || c == 0x7f) return false;
    return true;
}

}  // namespace

json::object ExecSpec::toPayload() const {
    json::object p;
    if (!command.empty())
        p["command"] = command;
    else
        p["argv"] = toArray(argv);
    if (cwd) p["cwd"] = *cwd;
    // Any bytes: JSON strings must be UTF-8, so other input goes as base64.
    if (stdinData) protocol::putBytes(p, "stdin", *stdinData);
    if (timeoutSeconds) p["timeout_s"] = *timeoutSeconds;
    if (killGraceSeconds) p["kill_grace_s"] = *killGraceSeconds;
    if (maxOutputBytes) p["max_output_bytes"] = *maxOutputBytes;
    protocol::putEnv(p, "env", env);
    if (stream) p["stream"] = true;
    if (streamStdin) p["stream_stdin"] = true;
    if (credit) p["credit"] = *credit;
    return p;
}

ExecSpec ExecSpec::fromPayload(const json::object& p) {
    ExecSpec spec;
    const auto* argv = p.if_contains("argv");
    auto command = protocol::optString(p, "command");
    if ((argv != nullptr && !argv->is_null()) == command.has_value())
        throw Error(ErrorCode::BadRequest,
                    "exec needs exactly one of \"argv\" (array of strings) or \"command\" (string)");
    if (command) {
        if (command->empty()) throw Error(ErrorCode::BadRequest, "\"command\" is empty");
        spec.command = std::move(*command);
    } else {
        if (!argv->is_array() || argv->get_array().empty() || argv->get_array().size() > kMaxArgs)
            throw Error(ErrorCode::BadRequest, "\"argv\" must be a non-empty array of at most 4096 strings");
        for (const auto& a : argv->get_array()) {
            if (!a.is_string()) throw Error(ErrorCode::BadRequest, "\"argv\" must contain only strings");
            if (a.get_string().find('\0') != json::string::npos)
                throw Error(ErrorCode::BadRequest, "\"argv\" entries must not contain NUL bytes");
            spec.argv.emplace_back(a.get_string());
        }
        if (spec.argv.front().empty()) throw Error(ErrorCode::BadRequest, "\"argv\"[0] is empty");
    }
    spec.cwd = protocol::optString(p, "cwd", 4096);
    spec.env = protocol::optEnvVars(p, "env");
    spec.stdinData = protocol::optString(p, "stdin");
    auto encoding = protocol::optString(p, "stdin_encoding", 16).value_or("utf-8");
    if (encoding == "base64" && spec.stdinData) {
        auto decoded = base64Decode(*spec.stdinData);
        if (!decoded) throw Error(ErrorCode::BadRequest, "\"stdin\" is not valid base64");
        spec.stdinData = std::move(*decoded);
    } else if (encoding != "utf-8") {
        throw Error(ErrorCode::BadRequest, "\"stdin_encoding\" must be \"utf-8\" or \"base64\"");
    }
    spec.timeoutSeconds = protocol::optNumber(p, "timeout_s", 0.001, kMaxTimeoutSeconds);
    spec.killGraceSeconds = protocol::optNumber(p, "kill_grace_s", 0, kMaxKillGraceSeconds);
    spec.maxOutputBytes = protocol::optInt(p, "max_output_bytes", 0, kMaxOutputBytes);
    spec.stream = protocol::optBool(p, "stream").value_or(false);
    spec.streamStdin = protocol::optBool(p, "stream_stdin").value_or(false);
    spec.credit = protocol::optInt(p, "credit", kMinCredit, kMaxCredit);
    if (!spec.stream && (spec.streamStdin || spec.credit))
        throw Error(ErrorCode::BadRequest,
                    "\"stream_stdin\" and \"credit\" are for a streamed exec (\"stream\": true)");
    if (spec.stream && spec.stdinData)
        throw Error(ErrorCode::BadRequest,
                    "a streamed exec takes its stdin as binary frames (\"stream_stdin\": true), not \"stdin\"");
    if (spec.stream && spec.maxOutputBytes)
        throw Error(ErrorCode::BadRequest,
                    "a streamed exec's output has no cap: \"max_output_bytes\" is for a "
                    "buffered one");
    return spec;
}

json::object JobSpec::toPayload() const {
    json::object p{{"script", script}};
    if (name) p["name"] = *name;
    if (cwd) p["cwd"] = *cwd;
    if (!sbatchArgs.empty()) p["sbatch_args"] = toArray(sbatchArgs);
    protocol::putEnv(p, "env", env);
    if (timeLimitSeconds) p["time_limit"] = *timeLimitSeconds;
    if (context) p["callback"] = json::object{{"context", *context}};
    return p;
}

JobSpec JobSpec::fromPayload(const json::object& p) {
    JobSpec spec;
    auto script = protocol::optString(p, "script", kMaxScriptBytes);
    if (!script || script->empty()) throw Error(ErrorCode::BadRequest, "\"script\" is required");
    spec.script = std::move(*script);
    spec.name = protocol::optString(p, "name", kMaxNameBytes);
    if (spec.name && !isPrintable(*spec.name)) throw Error(ErrorCode::BadRequest, "\"name\" must be printable text");
    spec.cwd = protocol::optString(p, "cwd", 4096);
    spec.env = protocol::optEnvVars(p, "env");
    if (const auto* args = p.if_contains("sbatch_args"); args && !args->is_null()) {
        if (!args->is_array()) throw Error(ErrorCode::BadRequest, "\"sbatch_args\" must be an array of strings");
        for (const auto& a : args->get_array()) {
            if (!a.is_string()) throw Error(ErrorCode::BadRequest, "\"sbatch_args\" must contain only strings");
            spec.sbatchArgs.emplace_back(a.get_string());
        }
    }
    spec.timeLimitSeconds = protocol::optNumber(p, "time_limit", 1, kMaxTimeLimitSeconds);
    if (const auto* cb = p.if_contains("callback"); cb && !cb->is_null()) {
        if (!cb->is_object()) throw Error(ErrorCode::BadRequest, "\"callback\" must be an object");
        if (const auto* ctx = cb->get_object().if_contains("context")) {
            if (json::serialize(*ctx).size() > kMaxContextBytes)
                throw Error(ErrorCode::BadRequest, "\"callback.context\" is larger than 64 KiB");
            spec.context = *ctx;
        }
    }
    return spec;
}

}  // namespace hpc
