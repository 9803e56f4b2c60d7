// The MCP tools, resources and prompts: each tool's arguments checked
// against its schema, turned into a daemon request (docs/protocol.md §4)
// through the Backend, and its result given back structured and as text.
#include "mcp_tools.hpp"

#include "errors.hpp"
#include "util.hpp"
#include "wire.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <sstream>

namespace json = boost::json;

namespace hpc::mcp {
namespace {

constexpr std::string_view kSkillPrefix = "hpc://daemons/";
constexpr std::string_view kSkillSuffix = "/skill";
constexpr double kMaxWaitSeconds = 24 * 3600;

// ---- arguments ----

[[noreturn]] void badArgument(const std::string& why) { throw RpcFailure{kInvalidParams, why}; }

std::string requiredString(const json::object& a, const char* name) {
    auto* v = a.if_contains(name);
    if (!v || !v->is_string() || v->get_string().empty())
        badArgument(std::string("\"") + name + "\" is required and must be a non-empty string");
    return std::string(v->get_string());
}

std::optional<std::string> optionalString(const json::object& a, const char* name) {
    auto* v = a.if_contains(name);
    if (!v || v->is_null()) return std::nullopt;
    if (!v->is_string()) badArgument(std::string("\"") + name + "\" must be a string");
    return std::string(v->get_string());
}

std::optional<double> optionalNumber(const json::object& a, const char* name, double min, double max) {
    auto* v = a.if_contains(name);
    if (!v || v->is_null()) return std::nullopt;
    if (!v->is_number()) badArgument(std::string("\"") + name + "\" must be a number");
    double d = v->to_number<double>();
    if (!std::isfinite(d) || d < min || d > max)
        badArgument(std::string("\"") + name + "\" must be between " + std::to_string(min) + " and " +
                    std::to_string(max));
    return d;
}

protocol::EnvVars envArgument(const json::object& a) {
    protocol::EnvVars env;
    auto* v = a.if_contains("env");
    if (!v || v->is_null()) return env;
    if (!v->is_object()) badArgument("\"env\" must be an object of strings");
    for (const auto& [k, val] : v->get_object()) {
        if (!val.is_string()) badArgument("\"env\"." + std::string(k) + " must be a string");
        env.emplace_back(std::string(k), std::string(val.get_string()));
    }
    return env;
}

/// Unknown arguments are refused: a misspelt "timeout" must not pass silently.
void onlyKnown(const json::object& a, std::initializer_list<std::string_view> known) {
    for (const auto& [k, v] : a)
        if (std::find(known.begin(), known.end(), std::string_view(k)) == known.end())
            badArgument("unknown argument \"" + std::string(k) + "\"");
}

/// A wire struct's own checks (limits, names) as invalid params.
template <class Spec>
json::object checkedPayload(const Spec& spec) {
    auto payload = spec.toPayload();
    try {
        (void)Spec::fromPayload(payload);
    } catch (const Error& e) {
        badArgument(e.what());
    }
    return payload;
}

// ---- results ----

json::object textContent(std::string text) { return {{"type", "text"}, {"text", std::move(text)}}; }

json::object success(json::object structured, std::string text) {
    return {{"content", json::array{textContent(std::move(text))}},
            {"structuredContent", std::move(structured)},
            {"isError", false}};
}

/// A tool failure the agent can act on: the cause in words, and its code.
json::object failure(const Error& e) {
    std::string code(toProtocolCode(e.code()));
    std::string cause;
    switch (e.code()) {
        case ErrorCode::Unavailable:
            cause = "unavailable (the daemon is offline, or the platform cannot be reached): ";
            break;
        case ErrorCode::PathNotAllowed:
            cause = "that directory is not allowed on this daemon: ";
            break;
        case ErrorCode::Timeout:
            cause = "timed out: ";
            break;
        case ErrorCode::NotFound:
            cause = "not found: ";
            break;
        case ErrorCode::NotOwner:
            cause = "not yours: ";
            break;
        case ErrorCode::Unauthorized:
            cause = "the platform refused the credential: ";
            break;
        default:
            break;
    }
    return {{"content", json::array{textContent(cause + e.what() + " (" + code + ")")}}, {"isError", true}};
}

std::string fieldText(const json::object& o, const char* key) {
    auto* v = o.if_contains(key);
    if (!v || v->is_null()) return "-";
    if (v->is_string()) return std::string(v->get_string());
    return json::serialize(*v);
}

/// An exec result's stream as text for a person: as sent when it is UTF-8.
std::string streamText(const json::object& r, const char* name) {
    std::string text = fieldText(r, name);
    if (fieldText(r, (std::string(name) + "_encoding").c_str()) == "base64") {
        auto bytes = base64Decode(text).value_or("");
        return "(" + std::to_string(bytes.size()) + " bytes that are not UTF-8 text; base64 in structuredContent." +
               name + ")\n";
    }
    return text;
}

// ---- files ----

constexpr double kMaxFileBytes = 4 * 1024 * 1024;  ///< what one read or write moves

json::object readFile(Backend& backend, const json::object& a, const CallContext& ctx) {
    onlyKnown(a, {"daemon", "path", "offset", "length"});
    auto daemon = requiredString(a, "daemon");
    auto path = requiredString(a, "path");
    auto offset = static_cast<std::int64_t>(optionalNumber(a, "offset", 0, 1e18).value_or(0));
    auto length = static_cast<std::int64_t>(optionalNumber(a, "length", 1, kMaxFileBytes).value_or(1 << 20));
    // A byte range of a file of any size, read where the daemon's user can
    // read (as file.get does): its size first, on stderr, then the bytes.
    static constexpr const char* kReadRange =
        "size=$(stat -L -c %s -- \"$1\") || exit 2\n"
        "[ -f \"$1\" ] || { echo \"$1 is not a regular file\" >&2; exit 3; }\n"
        "echo \"$size\" >&2\n"
        "exec dd if=\"$1\" bs=65536 iflag=skip_bytes,count_bytes skip=\"$2\" count=\"$3\" status=none";
    ExecSpec spec;
    spec.argv = {"sh", "-c", kReadRange, "read_file", path, std::to_string(offset), std::to_string(length)};
    spec.maxOutputBytes = length;
    spec.timeoutSeconds = 300;
    auto r = backend.request(daemon, "exec", checkedPayload(spec), ctx);
    std::string err = fieldText(r, "stderr");
    auto* code = r.if_contains("exit_code");
    if (!code || !code->is_int64() || code->get_int64() != 0) {
        while (!err.empty() && err.back() == '\n') err.pop_back();
        ErrorCode why = err.find("No such file") != std::string::npos        ? ErrorCode::NotFound
                        : err.find("Permission denied") != std::string::npos ? ErrorCode::PathNotAllowed
                                                                             : ErrorCode::BadRequest;
        throw Error(why, "cannot read " + path + ": " + err);
    }
    std::int64_t size = 0;
    try {
        size = std::stoll(err);
    } catch (const std::exception&) {
        throw Error(ErrorCode::Internal, "read_file: no size for " + path);
    }
    std::string encoding = fieldText(r, "stdout_encoding") == "base64" ? "base64" : "utf-8";
    std::string content = fieldText(r, "stdout");
    auto got = encoding == "base64" ? static_cast<std::int64_t>(base64Decode(content).value_or("").size())
                                    : static_cast<std::int64_t>(content.size());
    bool eof = offset + got >= size;
    json::object o{{"path", path},         {"size", size}, {"offset", offset},  {"length", got},
                   {"encoding", encoding}, {"eof", eof},   {"content", content}};
    std::string text = encoding == "base64" ? "(" + std::to_string(got) +
                                                  " bytes that are not UTF-8 text: base64 in "
                                                  "structuredContent.content)\n"
                                            : content;
    text += "\n[bytes " + std::to_string(offset) + "-" + std::to_string(offset + got) + " of " + std::to_string(size) +
            (eof ? "" : "; more with offset " + std::to_string(offset + got)) + "]";
    return success(std::move(o), text);
}

json::object writeFile(Backend& backend, const json::object& a, const CallContext& ctx) {
    onlyKnown(a, {"daemon", "path", "content", "encoding", "mode"});
    auto daemon = requiredString(a, "daemon");
    auto path = requiredString(a, "path");
    auto* c = a.if_contains("content");
    if (!c || !c->is_string()) badArgument("\"content\" is required and must be a string");
    auto encoding = optionalString(a, "encoding").value_or("utf-8");
    std::string bytes;
    if (encoding == "base64") {
        auto decoded = base64Decode(c->get_string());
        if (!decoded) badArgument("\"content\" is not base64");
        bytes = std::move(*decoded);
    } else if (encoding == "utf-8") {
        bytes = c->get_string();
    } else {
        badArgument("\"encoding\" must be \"utf-8\" or \"base64\"");
    }
    if (static_cast<double>(bytes.size()) > kMaxFileBytes)
        badArgument("content of " + std::to_string(bytes.size()) + " bytes; write_file takes at most 4 MiB " +
                    "(hpc-agent cp moves files of any size)");
    std::optional<std::uint32_t> mode;
    if (auto m = optionalNumber(a, "mode", 0, 0777)) mode = static_cast<std::uint32_t>(*m);
    auto r = backend.writeFile(daemon, path, bytes, mode, ctx);
    return success(r, "wrote " + std::to_string(bytes.size()) + " bytes to " + fieldText(r, "path") + " (sha256 " +
                          fieldText(r, "sha256") + ")\n");
}

// ---- shells ----

/// The length of the UTF-8 sequence at s[i], or 0 when it is not one.
std::size_t utf8Length(std::string_view s, std::size_t i) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return 0;
    if (n > 1 && !isValidUtf8(s.substr(i, n))) return 0;
    return n;
}

std::string shellSession(const json::object& a) { return requiredString(a, "session"); }

ShellWait shellWait(const json::object& a) {
    ShellWait w;
    if (auto p = optionalString(a, "wait_for")) {
        try {
            w.pattern.emplace(*p, std::regex::ECMAScript);
        } catch (const std::regex_error& e) {
            badArgument("\"wait_for\" is not a regular expression: " + std::string(e.what()));
        }
    }
    w.settleSeconds = optionalNumber(a, "settle_s", 0.05, 60).value_or(0.3);
    w.timeoutSeconds = optionalNumber(a, "timeout_s", 0.1, 3600).value_or(30);
    return w;
}

json::object shellResult(const std::string& session, const ShellOutput& out) {
    std::string text = terminalText(out.data);
    json::object o{{"session", session},        {"output", text},      {"matched", out.matched},
                   {"timed_out", out.timedOut}, {"exited", out.ended}, {"bytes", out.data.size()}};
    std::string note;
    if (out.ended) {
        o["exit_code"] = out.exitCode ? json::value(*out.exitCode) : json::value(nullptr);
        o["signal"] = out.signal ? json::value(*out.signal) : json::value(nullptr);
        if (!out.error.empty()) o["error"] = out.error;
        note = "\n[the shell has ended" + (out.error.empty() ? std::string() : ": " + out.error) + "]";
    } else if (out.timedOut) {
        note = "\n[timed out waiting; the shell is still running: shell_read gets what comes next]";
    }
    return success(std::move(o), text + note);
}

json::object shellOpen(Backend& backend, const json::object& a, const CallContext&) {
    onlyKnown(a, {"daemon", "cols", "rows", "cwd"});
    auto daemon = requiredString(a, "daemon");
    auto cols = static_cast<unsigned>(optionalNumber(a, "cols", 1, 10000).value_or(120));
    auto rows = static_cast<unsigned>(optionalNumber(a, "rows", 1, 10000).value_or(40));
    auto [session, answer] = backend.shellOpen(daemon, cols, rows, optionalString(a, "cwd"));
    answer["session"] = session;
    answer["daemon"] = daemon;
    return success(std::move(answer), "shell " + session + " open on " + daemon +
                                          "; send it input with shell_send (end a command with \\n)\n");
}

json::object shellSend(Backend& backend, const json::object& a, const CallContext& ctx) {
    onlyKnown(a, {"session", "input", "wait_for", "settle_s", "timeout_s"});
    auto session = shellSession(a);
    auto input = optionalString(a, "input").value_or("");
    if (input.empty()) badArgument("\"input\" is required (shell_read reads without typing)");
    auto wait = shellWait(a);
    return shellResult(session, backend.shellExchange(session, input, wait, ctx));
}

json::object shellRead(Backend& backend, const json::object& a, const CallContext& ctx) {
    onlyKnown(a, {"session", "wait_for", "settle_s", "timeout_s"});
    auto session = shellSession(a);
    auto wait = shellWait(a);
    return shellResult(session, backend.shellExchange(session, "", wait, ctx));
}

json::object shellResize(Backend& backend, const json::object& a, const CallContext&) {
    onlyKnown(a, {"session", "cols", "rows"});
    auto session = shellSession(a);
    auto cols = optionalNumber(a, "cols", 1, 10000);
    auto rows = optionalNumber(a, "rows", 1, 10000);
    if (!cols || !rows) badArgument("\"cols\" and \"rows\" are required");
    backend.shellResize(session, static_cast<unsigned>(*cols), static_cast<unsigned>(*rows));
    return success({{"session", session}}, "resized " + session + "\n");
}

json::object shellClose(Backend& backend, const json::object& a, const CallContext&) {
    onlyKnown(a, {"session"});
    auto session = shellSession(a);
    backend.shellClose(session);
    return success({{"session", session}}, "closed " + session + "\n");
}

// ---- daemons and skills ----

/// A registration's skill: its name and its text ("" when it has none).
std::pair<std::string, std::string> skillOf(const json::object& daemon) {
    std::string name, text;
    if (auto* s = daemon.if_contains("skill")) {
        if (s->is_string()) {
            name = s->get_string();
        } else if (s->is_object()) {
            name = fieldText(s->get_object(), "name");
            if (auto* t = s->get_object().if_contains("text"); t && t->is_string()) text = t->get_string();
        }
    }
    if (text.empty())
        if (auto* i = daemon.if_contains("instructions"); i && i->is_string()) text = i->get_string();
    return {name, text};
}

json::object findDaemon(Backend& backend, const std::string& id) {
    for (const auto& d : backend.listDaemons())
        if (d.is_object() && fieldText(d.get_object(), "daemon_id") == id) return d.get_object();
    throw Error(ErrorCode::NotFound, "no daemon \"" + id + "\" is registered for this user");
}

std::string skillText(const json::object& daemon) {
    auto [name, text] = skillOf(daemon);
    std::string id = fieldText(daemon, "daemon_id");
    if (text.empty())
        return "Daemon " + id + " registered no guidance text" + (name.empty() ? "." : " (skill \"" + name + "\").");
    return text;
}

json::object listDaemonsTool(Backend& backend) {
    json::array out;
    std::ostringstream text;
    for (const auto& v : backend.listDaemons()) {
        if (!v.is_object()) continue;
        const auto& d = v.get_object();
        json::object o;
        for (const char* k : {"daemon_id", "connected", "connected_since", "hostname", "cluster_name", "scheduler",
                              "allowed_dirs", "job_workdir", "version", "warning"})
            if (auto* f = d.if_contains(k)) o[k] = *f;
        o["skill"] = skillOf(d).first;
        o["skill_uri"] = std::string(kSkillPrefix) + fieldText(d, "daemon_id") + std::string(kSkillSuffix);
        bool up = d.if_contains("connected") && d.at("connected").is_bool() && d.at("connected").get_bool();
        text << fieldText(d, "daemon_id") << "  " << (up ? "connected" : "offline") << "  host "
             << fieldText(d, "hostname") << "  scheduler " << fieldText(d, "scheduler") << "  skill "
             << skillOf(d).first << "\n";
        out.push_back(std::move(o));
    }
    if (out.empty()) text << "No daemons are registered for this user.\n";
    return success({{"daemons", std::move(out)}}, text.str());
}

// ---- the tools ----

/// What run_command returns of each stream; the rest is read and dropped.
constexpr std::size_t kMaxCommandOutput = 1 << 20;

json::object runCommand(Backend& backend, const json::object& a, const CallContext& ctx) {
    onlyKnown(a, {"daemon", "command", "cwd", "timeout_s", "stdin", "env"});
    auto daemon = requiredString(a, "daemon");
    ExecSpec spec;
    spec.command = requiredString(a, "command");
    spec.cwd = optionalString(a, "cwd");
    spec.stdinData = optionalString(a, "stdin");
    spec.timeoutSeconds = optionalNumber(a, "timeout_s", 0.001, ExecSpec::kMaxTimeoutSeconds);
    spec.env = envArgument(a);
    (void)checkedPayload(spec);
    auto r = backend.runCommand(daemon, spec, kMaxCommandOutput, ctx);
    std::ostringstream text;
    if (auto* c = r.if_contains("exit_code"); c && c->is_int64())
        text << "exit " << c->get_int64();
    else
        text << "killed by " << fieldText(r, "signal_name");
    if (auto* t = r.if_contains("timed_out"); t && t->is_bool() && t->get_bool()) text << " (timed out)";
    if (auto* d = r.if_contains("duration_s"); d && d->is_number())
        text << ", " << std::fixed << std::setprecision(3) << d->to_number<double>() << " s";
    text << "\n";
    for (const char* s : {"stdout", "stderr"}) {
        auto out = streamText(r, s);
        auto* cut = r.if_contains(std::string(s) + "_truncated");
        bool truncated = cut && cut->is_bool() && cut->get_bool();
        if (out.empty() && !truncated) continue;
        text << "--- " << s << (truncated ? " (truncated: only the first part was kept)" : "") << " ---\n" << out;
        if (!out.empty() && out.back() != '\n') text << "\n";
    }
    return success(std::move(r), text.str());
}

json::object submitJob(Backend& backend, const json::object& a, const CallContext& ctx) {
    onlyKnown(a, {"daemon", "script", "name", "cwd", "sbatch_args", "time_limit_s", "env"});
    auto daemon = requiredString(a, "daemon");
    JobSpec spec;
    spec.script = requiredString(a, "script");
    spec.name = optionalString(a, "name");
    spec.cwd = optionalString(a, "cwd");
    spec.timeLimitSeconds = optionalNumber(a, "time_limit_s", 1, JobSpec::kMaxTimeLimitSeconds);
    spec.env = envArgument(a);
    if (auto* s = a.if_contains("sbatch_args"); s && !s->is_null()) {
        if (!s->is_array()) badArgument("\"sbatch_args\" must be an array of strings");
        for (const auto& x : s->get_array()) {
            if (!x.is_string()) badArgument("\"sbatch_args\" must be an array of strings");
            spec.sbatchArgs.emplace_back(x.get_string());
        }
    }
    auto r = backend.request(daemon, "job.submit", checkedPayload(spec), ctx);
    return success(r, "submitted job " + fieldText(r, "job_id") + " on " + daemon + " (" + fieldText(r, "backend") +
                          ", state " + fieldText(r, "state") + "); wait_job follows it to its end\n");
}

std::string jobLine(const json::object& j) {
    return fieldText(j, "job_id") + "  " + fieldText(j, "state") + "  exit " + fieldText(j, "exit_code") + "  " +
           fieldText(j, "name");
}

json::object jobStatus(Backend& backend, const json::object& a, const CallContext& ctx) {
    onlyKnown(a, {"daemon", "job_id"});
    auto daemon = requiredString(a, "daemon");
    auto r = backend.request(daemon, "job.status", {{"job_id", requiredString(a, "job_id")}}, ctx);
    std::string text = jobLine(r) + "\n";
    for (const char* tail : {"stdout_tail", "stderr_tail"})
        if (auto t = fieldText(r, tail); t != "-" && !t.empty()) text += "--- " + std::string(tail) + " ---\n" + t;
    return success(std::move(r), text);
}

json::object listJobs(Backend& backend, const json::object& a, const CallContext& ctx) {
    onlyKnown(a, {"daemon", "limit"});
    auto daemon = requiredString(a, "daemon");
    auto limit = optionalNumber(a, "limit", 1, 1000).value_or(100);
    auto r = backend.request(daemon, "job.list", {{"limit", static_cast<std::int64_t>(limit)}}, ctx);
    std::string text;
    if (auto* jobs = r.if_contains("jobs"); jobs && jobs->is_array())
        for (const auto& j : jobs->get_array())
            if (j.is_object()) text += jobLine(j.get_object()) + "\n";
    if (text.empty()) text = "No jobs on " + daemon + ".\n";
    return success(std::move(r), text);
}

json::object cancelJob(Backend& backend, const json::object& a, const CallContext& ctx) {
    onlyKnown(a, {"daemon", "job_id"});
    auto daemon = requiredString(a, "daemon");
    auto job = requiredString(a, "job_id");
    auto r = backend.request(daemon, "job.cancel", {{"job_id", job}}, ctx);
    return success(std::move(r), "asked " + daemon + " to cancel job " + job + "\n");
}

json::object waitJob(Backend& backend, const json::object& a, const CallContext& ctx) {
    onlyKnown(a, {"daemon", "job_id", "timeout_s"});
    auto daemon = requiredString(a, "daemon");
    auto job = requiredString(a, "job_id");
    double timeout = optionalNumber(a, "timeout_s", 0, kMaxWaitSeconds).value_or(600);
    auto callback = backend.waitJob(daemon, job, timeout, ctx);
    if (!callback) {
        // Not ended yet: where it stands now.
        auto r = backend.request(daemon, "job.status", {{"job_id", job}}, ctx);
        r["ended"] = false;
        auto text = "job " + job + " has not ended after " + std::to_string(timeout) + " s: " + jobLine(r) + "\n";
        return success(std::move(r), std::move(text));
    }
    auto& c = *callback;
    c["ended"] = true;
    std::string text = "job " + job + " ended: " + fieldText(c, "state") + ", exit " + fieldText(c, "exit_code") + "\n";
    for (const char* tail : {"stdout_tail", "stderr_tail"})
        if (auto t = fieldText(c, tail); t != "-" && !t.empty()) text += "--- " + std::string(tail) + " ---\n" + t;
    return success(std::move(c), text);
}

// ---- the tool table ----

struct Tool {
    std::string_view name;
    json::object (*run)(Backend&, const json::object&, const CallContext&);
    std::string_view definition;  ///< JSON: everything but the name
};

json::object listDaemonsRun(Backend& b, const json::object& a, const CallContext&) {
    onlyKnown(a, {});
    return listDaemonsTool(b);
}

constexpr std::string_view kDaemonArg =
    R"json("daemon":{"type":"string","description":"the daemon's id, as list_daemons gives it"})json";

constexpr std::string_view kShellOutput =
    R"json({"type":"object","properties":{"session":{"type":"string"},"output":{"type":"string"},"matched":{"type":"boolean"},"timed_out":{"type":"boolean"},"exited":{"type":"boolean"},"exit_code":{"type":["integer","null"]}},"required":["session","output","exited"]})json";

// clang-format off
const std::vector<Tool>& tools() {
    static const std::vector<Tool> kTools = {
        {"shell_open", shellOpen, R"json({
          "title":"Open a shell",
          "description":"Opens a persistent interactive shell (a PTY) on a daemon's machine, kept between calls: for srun --pty, REPLs, interactive programs, or a sequence of commands sharing a directory and environment. Returns a session id for shell_send, shell_read, shell_resize and shell_close.",
          "inputSchema":{"type":"object","properties":{DAEMON,
            "cols":{"type":"integer","minimum":1,"maximum":10000,"description":"default 120"},
            "rows":{"type":"integer","minimum":1,"maximum":10000,"description":"default 40"},
            "cwd":{"type":"string","description":"starting directory (inside the allowed directories)"}},
            "required":["daemon"],"additionalProperties":false},
          "outputSchema":{"type":"object","properties":{"session":{"type":"string"},"pid":{"type":"integer"}},"required":["session"]},
          "annotations":{"readOnlyHint":false,"destructiveHint":true,"idempotentHint":false,"openWorldHint":false}})json"},
        {"shell_send", shellSend, R"json({
          "title":"Type into a shell",
          "description":"Types input into a shell (end a command with \n; control characters such as \u0003 for Ctrl-C are sent as they are), then returns what it printed: once wait_for (a regular expression, matched against the output as plain text) matches, else once the output has been quiet for settle_s, and at the latest after timeout_s. Terminal escape sequences are removed from the text.",
          "inputSchema":{"type":"object","properties":{"session":{"type":"string"},"input":{"type":"string"},
            "wait_for":{"type":"string","description":"a regular expression (ECMAScript) to wait for, e.g. a prompt"},
            "settle_s":{"type":"number","minimum":0.05,"maximum":60,"description":"default 0.3"},
            "timeout_s":{"type":"number","minimum":0.1,"maximum":3600,"description":"default 30"}},
            "required":["session","input"],"additionalProperties":false},
          "outputSchema":SHELL_OUTPUT,
          "annotations":{"readOnlyHint":false,"destructiveHint":true,"idempotentHint":false,"openWorldHint":false}})json"},
        {"shell_read", shellRead, R"json({
          "title":"Read a shell",
          "description":"Returns what a shell printed since it was last read, waiting as shell_send does (wait_for, settle_s, timeout_s).",
          "inputSchema":{"type":"object","properties":{"session":{"type":"string"},
            "wait_for":{"type":"string"},"settle_s":{"type":"number","minimum":0.05,"maximum":60},
            "timeout_s":{"type":"number","minimum":0.1,"maximum":3600}},
            "required":["session"],"additionalProperties":false},
          "outputSchema":SHELL_OUTPUT,
          "annotations":{"readOnlyHint":true,"openWorldHint":false}})json"},
        {"shell_resize", shellResize, R"json({
          "title":"Resize a shell",
          "description":"Sets a shell's terminal size.",
          "inputSchema":{"type":"object","properties":{"session":{"type":"string"},
            "cols":{"type":"integer","minimum":1,"maximum":10000},"rows":{"type":"integer","minimum":1,"maximum":10000}},
            "required":["session","cols","rows"],"additionalProperties":false},
          "annotations":{"readOnlyHint":false,"destructiveHint":false,"idempotentHint":true,"openWorldHint":false}})json"},
        {"shell_close", shellClose, R"json({
          "title":"Close a shell",
          "description":"Hangs a shell up (SIGHUP to its processes) and forgets it.",
          "inputSchema":{"type":"object","properties":{"session":{"type":"string"}},"required":["session"],"additionalProperties":false},
          "annotations":{"readOnlyHint":false,"destructiveHint":true,"idempotentHint":false,"openWorldHint":false}})json"},
        {"read_file", readFile, R"json({
          "title":"Read a file",
          "description":"Reads a byte range of a file on a daemon's machine (anywhere the daemon's user can read, as for downloads): up to 4 MiB at a time, from offset. Text comes as it is; bytes that are not UTF-8 come base64-encoded (encoding). eof says whether the range reached the end; size is the file's.",
          "inputSchema":{"type":"object","properties":{DAEMON,"path":{"type":"string"},
            "offset":{"type":"integer","minimum":0,"description":"default 0"},
            "length":{"type":"integer","minimum":1,"maximum":4194304,"description":"default 1048576"}},
            "required":["daemon","path"],"additionalProperties":false},
          "outputSchema":{"type":"object","properties":{"path":{"type":"string"},"size":{"type":"integer"},"offset":{"type":"integer"},
            "length":{"type":"integer"},"encoding":{"type":"string"},"eof":{"type":"boolean"},"content":{"type":"string"}},
            "required":["content","encoding","size","eof"]},
          "annotations":{"readOnlyHint":true,"openWorldHint":false}})json"},
        {"write_file", writeFile, R"json({
          "title":"Write a file",
          "description":"Writes a file on a daemon's machine, only inside its allowed directories: written under a temporary name beside the target and renamed once complete and checked (SHA-256), so readers never see half a file. At most 4 MiB; for larger files use hpc-agent cp.",
          "inputSchema":{"type":"object","properties":{DAEMON,"path":{"type":"string"},
            "content":{"type":"string"},
            "encoding":{"type":"string","enum":["utf-8","base64"],"description":"default utf-8"},
            "mode":{"type":"integer","minimum":0,"maximum":511,"description":"permission bits, e.g. 420 (0644); default: the replaced file's, else 0666 minus the umask"}},
            "required":["daemon","path","content"],"additionalProperties":false},
          "outputSchema":{"type":"object","properties":{"path":{"type":"string"},"size":{"type":"integer"},"sha256":{"type":"string"}},"required":["path","size","sha256"]},
          "annotations":{"readOnlyHint":false,"destructiveHint":true,"idempotentHint":true,"openWorldHint":false}})json"},
        {"list_daemons", listDaemonsRun, R"json({
          "title":"List daemons",
          "description":"The user's daemons (one per cluster login node or server): connected or offline, host, scheduler (slurm or local), allowed directories, and the skill whose guidance text to read before acting (resource skill_uri).",
          "inputSchema":{"type":"object","properties":{},"additionalProperties":false},
          "outputSchema":{"type":"object","properties":{"daemons":{"type":"array","items":{"type":"object"}}},"required":["daemons"]},
          "annotations":{"readOnlyHint":true,"openWorldHint":false}})json"},
        {"run_command", runCommand, R"json({
          "title":"Run a command",
          "description":"Runs a shell command line (bash -c) on a daemon's machine to completion and returns its exit status and output (each stream is cut at 1 MiB; the result says when). Progress is reported while it runs; cancelling the call stops the command (SIGTERM to its process group, then SIGKILL). It runs in the first allowed directory unless cwd is given, which must be inside the allowed directories. For long work, submit a job instead.",
          "inputSchema":{"type":"object","properties":{DAEMON,
            "command":{"type":"string","description":"a shell command line"},
            "cwd":{"type":"string","description":"working directory (inside the allowed directories)"},
            "timeout_s":{"type":"number","minimum":0.001,"maximum":604800,"description":"default 300"},
            "stdin":{"type":"string","description":"text given on standard input"},
            "env":{"type":"object","additionalProperties":{"type":"string"}}},
            "required":["daemon","command"],"additionalProperties":false},
          "outputSchema":{"type":"object","properties":{"exit_code":{"type":["integer","null"]},"signal":{"type":["integer","null"]},
            "stdout":{"type":"string"},"stderr":{"type":"string"},"stdout_truncated":{"type":"boolean"},"stderr_truncated":{"type":"boolean"},
            "timed_out":{"type":"boolean"},"duration_s":{"type":"number"}}},
          "annotations":{"readOnlyHint":false,"destructiveHint":true,"idempotentHint":false,"openWorldHint":false}})json"},
        {"submit_job", submitJob, R"json({
          "title":"Submit a batch job",
          "description":"Submits a batch script: to SLURM (sbatch) where the daemon has it, else as a local background process. Returns at once with the job id; the job's end is kept by the platform (wait_job).",
          "inputSchema":{"type":"object","properties":{DAEMON,
            "script":{"type":"string","description":"the job script, starting with #!"},
            "name":{"type":"string"},"cwd":{"type":"string"},
            "sbatch_args":{"type":"array","items":{"type":"string"},"description":"e.g. [\"--time=01:00:00\", \"--gres=gpu:1\"]"},
            "time_limit_s":{"type":"number","minimum":1},
            "env":{"type":"object","additionalProperties":{"type":"string"}}},
            "required":["daemon","script"],"additionalProperties":false},
          "outputSchema":{"type":"object","properties":{"job_id":{"type":"string"},"backend":{"type":"string"},"state":{"type":"string"}}},
          "annotations":{"readOnlyHint":false,"destructiveHint":false,"idempotentHint":false,"openWorldHint":false}})json"},
        {"job_status", jobStatus, R"json({
          "title":"Job status",
          "description":"A job's state, exit code, times and the last lines of its output.",
          "inputSchema":{"type":"object","properties":{DAEMON,"job_id":{"type":"string"}},"required":["daemon","job_id"],"additionalProperties":false},
          "outputSchema":{"type":"object","properties":{"job_id":{"type":"string"},"state":{"type":"string"}}},
          "annotations":{"readOnlyHint":true,"openWorldHint":false}})json"},
        {"list_jobs", listJobs, R"json({
          "title":"List jobs",
          "description":"The jobs on a daemon, newest first.",
          "inputSchema":{"type":"object","properties":{DAEMON,"limit":{"type":"integer","minimum":1,"maximum":1000}},"required":["daemon"],"additionalProperties":false},
          "outputSchema":{"type":"object","properties":{"jobs":{"type":"array","items":{"type":"object"}}}},
          "annotations":{"readOnlyHint":true,"openWorldHint":false}})json"},
        {"cancel_job", cancelJob, R"json({
          "title":"Cancel a job",
          "description":"Cancels a pending or running job (scancel, or SIGTERM to a local job's process group).",
          "inputSchema":{"type":"object","properties":{DAEMON,"job_id":{"type":"string"}},"required":["daemon","job_id"],"additionalProperties":false},
          "annotations":{"readOnlyHint":false,"destructiveHint":true,"idempotentHint":true,"openWorldHint":false}})json"},
        {"wait_job", waitJob, R"json({
          "title":"Wait for a job",
          "description":"Waits until the job ends or timeout_s passes, with progress notifications meanwhile; returns its final state, exit code and the tails of its output (ended: true), or where it stands (ended: false).",
          "inputSchema":{"type":"object","properties":{DAEMON,"job_id":{"type":"string"},
            "timeout_s":{"type":"number","minimum":0,"maximum":86400,"description":"default 600"}},"required":["daemon","job_id"],"additionalProperties":false},
          "outputSchema":{"type":"object","properties":{"ended":{"type":"boolean"},"state":{"type":"string"},"exit_code":{"type":["integer","null"]}},"required":["ended"]},
          "annotations":{"readOnlyHint":true,"openWorldHint":false}})json"},
    };
    return kTools;
}
// clang-format on

}  // namespace

std::string terminalText(std::string_view raw) {
    std::string out;
    out.reserve(raw.size());
    for (std::size_t i = 0; i < raw.size();) {
        unsigned char c = static_cast<unsigned char>(raw[i]);
        if (c == 0x1B && i + 1 < raw.size()) {
            char kind = raw[i + 1];
            std::size_t j = i + 2;
            if (kind == '[') {  // CSI: parameters, then a final byte @..~
                while (j < raw.size() && !(raw[j] >= 0x40 && raw[j] <= 0x7E)) ++j;
                i = std::min(j + 1, raw.size());
            } else if (kind == ']' || kind == 'P' || kind == '_' ||
                       kind == '^') {  // OSC, DCS...: to BEL or to ST (ESC backslash)
                while (j < raw.size() && raw[j] != '\a' &&
                       !(raw[j] == 0x1B && j + 1 < raw.size() && raw[j + 1] == '\\'))
                    ++j;
                i = j < raw.size() && raw[j] == 0x1B ? j + 2 : j + 1;
            } else {  // a two-byte sequence (ESC = , ESC ( B needs one more)
                i = (kind == '(' || kind == ')') ? i + 3 : i + 2;
            }
            continue;
        }
        if (c == '\r' && i + 1 < raw.size() && raw[i + 1] == '\n') {
            ++i;
            continue;
        }
        if (c < 0x20 && c != '\n' && c != '\t') {
            ++i;
            continue;
        }
        if (c == 0x7F) {
            ++i;
            continue;
        }
        std::size_t n = utf8Length(raw, i);
        if (n == 0) {
            out += "\xEF\xBF\xBD";  // U+FFFD
            ++i;
            continue;
        }
        out.append(raw.substr(i, n));
        i += n;
    }
    return out;
}

const json::array& toolList() {
    static const json::array kList = [] {
        json::array list;
        for (const auto& t : tools()) {
            std::string def(t.definition);
            for (auto at = def.find("DAEMON"); at != std::string::npos; at = def.find("DAEMON"))
                def.replace(at, 6, kDaemonArg);
            for (auto at = def.find("SHELL_OUTPUT"); at != std::string::npos; at = def.find("SHELL_OUTPUT"))
                def.replace(at, 12, kShellOutput);
            json::object o = json::parse(def).as_object();
            o["name"] = t.name;
            list.push_back(std::move(o));
        }
        return list;
    }();
    return kList;
}

json::object callTool(Backend& backend, const std::string& name, const json::object& arguments,
                      const CallContext& ctx) {
    for (const auto& t : tools()) {
        if (t.name != name) continue;
        try {
            return t.run(backend, arguments, ctx);
        } catch (const Error& e) {
            return failure(e);
        }
    }
    throw RpcFailure{kInvalidParams, "no tool \"" + name + "\""};
}

json::object listResources(Backend& backend) {
    json::array list;
    for (const auto& v : backend.listDaemons()) {
        if (!v.is_object()) continue;
        std::string id = fieldText(v.get_object(), "daemon_id");
        list.push_back(json::object{
            {"uri", std::string(kSkillPrefix) + id + std::string(kSkillSuffix)},
            {"name", id + "-skill"},
            {"title", "How to use " + id + " (" + fieldText(v.get_object(), "cluster_name") + ")"},
            {"description", "The guidance the user registered for daemon " + id + ": read it before acting there."},
            {"mimeType", "text/markdown"},
        });
    }
    return {{"resources", std::move(list)}};
}

json::object resourceTemplates() {
    return {
        {"resourceTemplates", json::array{json::object{
                                              {"uriTemplate", "hpc://daemons/{daemon}/skill"},
                                              {"name", "daemon-skill"},
                                              {"title", "A daemon's skill"},
                                              {"description", "How to use the cluster a daemon runs on"},
                                              {"mimeType", "text/markdown"},
                                          },
                                          json::object{
                                              {"uriTemplate", "hpc://daemons/{daemon}/jobs/{job_id}"},
                                              {"name", "job"},
                                              {"title", "A batch job"},
                                              {"description",
                                               "A job's state, exit code and the last lines of its output; subscribe "
                                               "to be told (notifications/resources/updated) when it ends"},
                                              {"mimeType", "application/json"},
                                          }}}};
}

std::optional<JobUri> parseJobUri(const std::string& uri) {
    constexpr std::string_view kJobs = "/jobs/";
    if (uri.compare(0, kSkillPrefix.size(), kSkillPrefix) != 0) return std::nullopt;
    auto rest = std::string_view(uri).substr(kSkillPrefix.size());
    auto slash = rest.find(kJobs);
    if (slash == 0 || slash == std::string_view::npos) return std::nullopt;
    JobUri out{std::string(rest.substr(0, slash)), std::string(rest.substr(slash + kJobs.size()))};
    auto plain = [](const std::string& s) {
        return !s.empty() && s.size() <= 128 && std::all_of(s.begin(), s.end(), [](unsigned char c) {
            return std::isalnum(c) || c == '.' || c == '_' || c == '-';
        });
    };
    if (!plain(out.daemon) || !plain(out.jobId)) return std::nullopt;
    return out;
}

json::object readResource(Backend& backend, const std::string& uri) {
    if (auto job = parseJobUri(uri)) {
        try {
            auto r = backend.request(job->daemon, "job.status", {{"job_id", job->jobId}}, CallContext{});
            return {{"contents", json::array{json::object{
                                     {"uri", uri}, {"mimeType", "application/json"}, {"text", json::serialize(r)}}}}};
        } catch (const Error& e) {
            throw RpcFailure{e.code() == ErrorCode::NotFound ? kResourceNotFound : kInternalError, e.what()};
        }
    }
    if (uri.size() <= kSkillPrefix.size() + kSkillSuffix.size() || uri.compare(0, kSkillPrefix.size(), kSkillPrefix) ||
        uri.compare(uri.size() - kSkillSuffix.size(), kSkillSuffix.size(), kSkillSuffix))
        throw RpcFailure{kResourceNotFound, "no resource " + uri};
    std::string id = uri.substr(kSkillPrefix.size(), uri.size() - kSkillPrefix.size() - kSkillSuffix.size());
    try {
        auto daemon = findDaemon(backend, id);
        return {{"contents",
                 json::array{json::object{{"uri", uri}, {"mimeType", "text/markdown"}, {"text", skillText(daemon)}}}}};
    } catch (const Error& e) {
        throw RpcFailure{e.code() == ErrorCode::NotFound ? kResourceNotFound : kInternalError, e.what()};
    }
}

json::object listPrompts() {
    return {
        {"prompts", json::array{json::object{
                        {"name", "use_cluster"},
                        {"title", "Use a cluster"},
                        {"description",
                         "Start work on a daemon's cluster with its guidance (its skill) in front "
                         "of you."},
                        {"arguments", json::array{json::object{
                                          {"name", "daemon"}, {"description", "the daemon's id"}, {"required", true}}}},
                    }}}};
}

json::object getPrompt(Backend& backend, const std::string& name, const json::object& arguments) {
    if (name != "use_cluster") throw RpcFailure{kInvalidParams, "no prompt \"" + name + "\""};
    auto* d = arguments.if_contains("daemon");
    if (!d || !d->is_string() || d->get_string().empty())
        throw RpcFailure{kInvalidParams, "the prompt needs the argument \"daemon\""};
    std::string id(d->get_string());
    try {
        auto daemon = findDaemon(backend, id);
        std::string text = "You will work on daemon " + id + " (host " + fieldText(daemon, "hostname") +
                           ", scheduler " + fieldText(daemon, "scheduler") +
                           "). Follow this guidance for that cluster:\n\n" + skillText(daemon);
        return {{"description", "Work on " + id},
                {"messages", json::array{json::object{{"role", "user"}, {"content", textContent(text)}}}}};
    } catch (const Error& e) {
        throw RpcFailure{kInvalidParams, e.what()};
    }
}

}  // namespace hpc::mcp
