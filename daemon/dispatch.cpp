#include "dispatch.hpp"

#include "exec_stream.hpp"

#include "guard/shell_guard.hpp"

#include "log.hpp"
#include "util.hpp"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <cstdlib>

namespace json = boost::json;

namespace hpc::daemon {
namespace {

/// Requests that write new rows (audit, jobs) before or after their work.
bool writesNewState(std::string_view type) {
    return type == "exec" || type == "pty.open" || type == "job.submit" || type == "file.put" || type == "file.mkdir" ||
           type == "file.setattr" || type == "file.symlink";
}

/// Requests a draining daemon refuses: each would start something to wait for.
bool startsWork(std::string_view type) {
    // A transfer already running keeps its acks, commit and cancel.
    return type == "exec" || type == "pty.open" || type == "job.submit" || type == "file.put" || type == "file.get" ||
           type == "file.mkdir" || type == "file.setattr" || type == "file.symlink";
}

std::string agentOf(const protocol::Envelope& env) {
    if (auto* id = env.agent.if_contains("id"); id && id->is_string()) return std::string(id->get_string());
    return "unknown";
}

}  // namespace

void Dispatcher::onText(std::string_view text) {
    auto parsed = protocol::parse(text);
    if (auto* err = std::get_if<protocol::ProtocolError>(&parsed)) {
        log::warning("bad message from the platform: " + err->message);
        m_send(protocol::makeError(*err));
        return;
    }
    const auto& env = std::get<protocol::Envelope>(parsed);
    if (m_onMessage) m_onMessage(env.type);
    if (env.isResponse()) {
        if (m_jobs && m_jobs->outbox().onResponse(env)) return;
        // A platform that does not take daemon.warning does not show it: no more to say.
        if (!env.ok && env.errorCode == ErrorCode::UnknownType && env.replyTo.rfind("warn-", 0) == 0)
            log::debug("the platform does not take daemon.warning: " + env.errorMessage);
        else if (!env.ok)
            log::warning("the platform refused request " + env.replyTo + ": " + env.errorMessage);
        return;
    }
    try {
        if (m_draining && startsWork(env.type))
            throw Error(ErrorCode::Unavailable,
                        "this daemon is draining before it stops: it takes no new work; retry once it is back");
        if (m_store && writesNewState(env.type)) m_store->requireWritable();
        if (env.type == "exec") {
            handleExec(env);
        } else if (env.type == "exec.eof") {
            auto channel = protocol::optInt(env.payload, "channel", 1, UINT32_MAX);
            if (!channel) throw Error(ErrorCode::BadRequest, "\"channel\" is required");
            m_exec.streams().eof(static_cast<std::uint32_t>(*channel), agentOf(env));
            m_send(protocol::makeOk(env.id));
        } else if (env.type == "ping") {
            m_send(protocol::makeMessage("pong", env.id));
        } else if (env.type == "pong") {
            // Heartbeat answer; the link already noted the traffic.
        } else if (!(m_files && m_files->handle(env, agentOf(env), m_send)) && !handlePty(env) &&
                   !(m_jobs && m_jobs->handle(env, agentOf(env), m_send))) {
            // (file.* and pty.detach of a transfer, then pty.* and job.*, are answered inside, perhaps later.)
            m_send(protocol::makeError(env.id, ErrorCode::UnknownType,
                                       "this daemon does not handle \"" + env.type + "\" (protocol v" +
                                           std::to_string(protocol::kVersion) + ", hpc-daemond " HPC_VERSION ")"));
        }
    } catch (const Error& e) {
        m_send(protocol::makeError(env.id, e.code(), e.what()));
    } catch (const std::exception& e) {
        if (sqlite::isDiskFull(e) && m_store) {
            // Logged once by the store, not once per request.
            m_send(protocol::makeError(env.id, ErrorCode::StorageFull, m_store->health().message()));
            return;
        }
        log::error("internal error handling " + env.type + " " + env.id + ": " + e.what());
        m_send(protocol::makeError(env.id, ErrorCode::Internal, "internal error"));
    }
}

void Dispatcher::onBinary(std::string_view data) {
    auto frame = protocol::decodeChannelFrame(std::span<const char>(data.data(), data.size()));
    if (!frame) {
        m_send(protocol::makeError({}, ErrorCode::BadRequest, "a binary frame needs a 4-byte channel header"));
        return;
    }
    if (m_files && (m_files->owns(frame->channel) || m_files->recentlyEnded(frame->channel))) {
        // Bytes still in flight for a transfer that has just ended are dropped quietly.
        if (!m_files->owns(frame->channel)) return;
        try {
            m_files->onFrame(data);
        } catch (const Error& e) {
            m_send(protocol::makeError({}, e.code(), e.what()));
        }
        return;
    }
    // A streamed command's stdin; bytes in flight for one that has just ended are dropped quietly.
    if (auto& streams = m_exec.streams(); streams.owns(frame->channel) || streams.recentlyEnded(frame->channel)) {
        streams.onFrame(std::span<const char>(data.data(), data.size()));
        return;
    }
    if (m_jobs && m_jobs->logs().owns(frame->channel)) {
        m_send(protocol::makeError({}, ErrorCode::BadRequest,
                                   "channel " + std::to_string(frame->channel) + " carries a job's output: no input"));
        return;
    }
    if (!m_pty) {
        m_send(
            protocol::makeError({}, ErrorCode::NotFound, "channel " + std::to_string(frame->channel) + " is not open"));
        return;
    }
    try {
        m_pty->input(frame->channel, frame->data.data(), frame->data.size());
    } catch (const Error& e) {
        m_send(protocol::makeError({}, e.code(), e.what()));
    }
}

ExecRequest Dispatcher::toRequest(const ExecSpec& spec) const {
    ExecRequest req;
    req.argv = spec.command.empty() ? spec.argv : std::vector<std::string>{defaultShell(), "-c", spec.command};
    req.cwd = m_dirs.resolveCwd(spec.cwd, m_fallbackCwd).string();
    req.env = protocol::envEntries(spec.env);
    req.stdinData = spec.stdinData;
    if (spec.timeoutSeconds)
        req.timeout = std::chrono::milliseconds(static_cast<long long>(*spec.timeoutSeconds * 1000));
    if (spec.killGraceSeconds)
        req.killGrace = std::chrono::milliseconds(static_cast<long long>(*spec.killGraceSeconds * 1000));
    if (spec.maxOutputBytes) req.maxOutputBytes = static_cast<std::size_t>(*spec.maxOutputBytes);
    req.confinement = m_confinement;
    return req;
}

json::object Dispatcher::toJson(const ExecResult& r) {
    json::object o = r.statusJson();
    protocol::putBytes(o, "stdout", r.out);
    protocol::putBytes(o, "stderr", r.err);
    o["stdout_truncated"] = r.outTruncated;
    o["stderr_truncated"] = r.errTruncated;
    return o;
}

bool Dispatcher::handlePty(const protocol::Envelope& env) {
    if (env.type.rfind("pty.", 0) != 0) return false;
    const auto& p = env.payload;
    std::string agent = agentOf(env);
    auto channelOf = [&p] {
        auto c = protocol::optInt(p, "channel", 1, UINT32_MAX);
        if (!c) throw Error(ErrorCode::BadRequest, "\"channel\" is required");
        return static_cast<std::uint32_t>(*c);
    };
    auto ackBytes = [&p] {
        auto bytes = protocol::optInt(p, "bytes", 1, 1LL << 30);
        if (!bytes) throw Error(ErrorCode::BadRequest, "pty.ack needs \"bytes\"");
        return static_cast<std::uint64_t>(*bytes);
    };
    // A streamed command and a job's output stream (job.logs) are channels too, under the same credit.
    bool onChannel =
        env.type == "pty.ack" || env.type == "pty.detach" || env.type == "pty.resize" || env.type == "pty.close";
    if (onChannel && m_exec.streams().owns(channelOf())) {
        auto& streams = m_exec.streams();
        if (env.type == "pty.detach") {
            streams.detach(channelOf());
            return true;
        }
        if (env.type == "pty.resize")
            throw Error(ErrorCode::BadRequest,
                        "channel " + std::to_string(channelOf()) + " carries a command's output, not a terminal");
        if (env.type == "pty.ack")
            streams.ack(channelOf(), ackBytes(), agent);
        else
            streams.close(channelOf(), agent);
        m_send(protocol::makeOk(env.id));
        return true;
    }
    if (onChannel && m_jobs && m_jobs->logs().owns(channelOf())) {
        auto& logs = m_jobs->logs();
        if (env.type == "pty.detach") {
            logs.detach(channelOf());
            return true;
        }
        if (env.type != "pty.ack")
            throw Error(ErrorCode::BadRequest, "channel " + std::to_string(channelOf()) +
                                                   " carries a job's output, not a shell: end it with job.logs.close");
        logs.ack(channelOf(), ackBytes(), agent);
        m_send(protocol::makeOk(env.id));
        return true;
    }
    if (!m_pty) return false;
    if (env.type == "pty.open") {
        PtyOpenRequest r;
        r.cols = static_cast<unsigned>(protocol::optInt(p, "cols", 1, 10000).value_or(80));
        r.rows = static_cast<unsigned>(protocol::optInt(p, "rows", 1, 10000).value_or(24));
        r.cwd = m_dirs.resolveCwd(protocol::optString(p, "cwd", 4096), m_fallbackCwd).string();
        r.env = protocol::optEnv(p, "env");
        r.confinement = m_confinement;
        const char* userShell = std::getenv("SHELL");
        std::string shell =
            protocol::optString(p, "shell", 4096).value_or(userShell && *userShell ? userShell : defaultShell());
        if (shell.empty()) throw Error(ErrorCode::BadRequest, "\"shell\" is empty");
        r.argv = guardedShell(shell, m_shellGuard);
        r.agentId = agent;
        r.credit = static_cast<std::uint64_t>(protocol::optInt(p, "credit", 1, 64 << 20).value_or(0));
        auto info = m_pty->open(r);
        m_send(protocol::makeOk(
            env.id, {{"channel", info.channel}, {"pid", info.pid}, {"cwd", info.cwd}, {"session", info.session}}));
    } else if (env.type == "pty.attach") {
        auto session = protocol::optString(p, "session", 64);
        if (!session || session->empty()) throw Error(ErrorCode::BadRequest, "pty.attach needs \"session\"");
        auto from = protocol::optInt(p, "from_byte", 0, INT64_MAX);
        auto credit = static_cast<std::uint64_t>(protocol::optInt(p, "credit", 1, 64 << 20).value_or(0));
        auto a = m_pty->attach(*session, from ? std::optional<std::uint64_t>(*from) : std::nullopt, credit, agent);
        m_send(protocol::makeOk(env.id, {{"channel", a.info.channel},
                                         {"pid", a.info.pid},
                                         {"cwd", a.info.cwd},
                                         {"session", a.info.session},
                                         {"from_byte", a.fromByte}}));
    } else if (env.type == "pty.resize") {
        auto cols = protocol::optInt(p, "cols", 1, 10000), rows = protocol::optInt(p, "rows", 1, 10000);
        if (!cols || !rows) throw Error(ErrorCode::BadRequest, "pty.resize needs \"cols\" and \"rows\"");
        m_pty->resize(channelOf(), static_cast<unsigned>(*cols), static_cast<unsigned>(*rows), agent);
        m_send(protocol::makeOk(env.id));
    } else if (env.type == "pty.close") {
        m_pty->close(channelOf(), static_cast<int>(protocol::optInt(p, "signal", 1, 64).value_or(SIGHUP)), agent);
        m_send(protocol::makeOk(env.id));
    } else if (env.type == "pty.ack") {
        m_pty->ack(channelOf(), ackBytes(), agent);
        m_send(protocol::makeOk(env.id));
    } else if (env.type == "pty.detach") {
        m_pty->detach(channelOf());  // an event from the platform: no answer
    } else {
        return false;
    }
    return true;
}

void Dispatcher::handleExec(const protocol::Envelope& env) {
    ExecSpec spec = ExecSpec::fromPayload(env.payload);
    ExecRequest req = toRequest(spec);
    std::string id = env.id;
    std::string agent = agentOf(env);
    log::debug("exec " + id + " from " + agent + " in " + req.cwd + ": " + req.argv.front());
    Store::AuditEntry entry{nowEpochSeconds(), {}, agent, "exec", req.cwd, spec.command, std::nullopt};
    if (spec.command.empty())
        for (const auto& a : req.argv) entry.command += (entry.command.empty() ? "" : " ") + a;
    auto ended = [audit = m_audit, entry, id, agent](const ExecResult& result) mutable {
        if (audit) {
            entry.exitCode = result.exitCode ? *result.exitCode : 128 + result.signal.value_or(0);
            audit(std::move(entry));
        }
        log::info("exec " + id + " from " + agent + " ended: " +
                  (result.exitCode ? "exit " + std::to_string(*result.exitCode)
                                   : "signal " + std::to_string(result.signal.value_or(0))) +
                  (result.timedOut ? " (timed out)" : "") + " after " +
                  std::to_string(static_cast<long long>(result.durationSeconds * 1000)) + " ms");
    };
    if (spec.stream) {
        auto opened = m_exec.streams().open(std::move(req), static_cast<std::uint64_t>(spec.credit.value_or(0)),
                                            spec.streamStdin, agent, std::move(ended));
        json::object result{{"channel", opened.channel}, {"pid", opened.pid}};
        if (spec.streamStdin) result["stdin_credit"] = opened.stdinCredit;
        // Sent before the loop runs again: the output frames come after it.
        m_send(protocol::makeOk(id, std::move(result)));
        return;
    }
    m_exec.start(std::move(req), [send = m_send, ended = std::move(ended), id](const ExecResult& result) mutable {
        ended(result);
        send(protocol::makeOk(id, toJson(result)));
    });
}

}  // namespace hpc::daemon
