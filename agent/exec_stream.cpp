// AgentClient::execStream: a command's output streamed as it comes, its
// stdin streamed from a descriptor, both under credit (docs/protocol.md §4.3).
#include "agent_client.hpp"

#include "errors.hpp"
#include "protocol.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

namespace json = boost::json;
using namespace std::chrono_literals;
using hpc::protocol::ExecStream;

namespace hpc::agent {
namespace {

/// The most stdin sent in one frame.
constexpr std::size_t kStdinFrameBytes = std::size_t{256} * 1024;
constexpr std::uint64_t kDefaultCredit = 1 << 20;

std::uint64_t u64(const json::object& o, const char* key) {
    return static_cast<std::uint64_t>(
        protocol::optInt(o, key, 0, std::numeric_limits<std::int64_t>::max()).value_or(0));
}

}  // namespace

ExecOutcome AgentClient::execStream(const std::string& daemonId, ExecSpec spec, const ExecStreamIo& io) {
    spec.stream = true;
    spec.streamStdin = io.stdinFd >= 0;
    spec.stdinData.reset();
    spec.maxOutputBytes.reset();
    if (io.credit) spec.credit = static_cast<std::int64_t>(io.credit);
    auto r = request(daemonId, "exec", spec.toPayload(), std::chrono::minutes(2));
    auto channel = static_cast<std::uint32_t>(protocol::optInt(r, "channel", 1, UINT32_MAX).value_or(0));
    if (!channel) throw Error(ErrorCode::Internal, "exec answered without a channel: does the daemon stream?");

    std::uint64_t granted = u64(r, "stdin_credit"), sent = 0;
    bool stdinOpen = spec.streamStdin;
    const std::uint64_t ackEvery = (io.credit ? io.credit : kDefaultCredit) / 4;
    std::uint64_t unacked = 0;
    auto sendRequest = [&](const char* type, json::object payload) {
        protocol::Envelope env;
        env.type = type;
        env.id = nextId();
        env.daemonId = daemonId;
        env.payload = std::move(payload);
        m_unanswered.insert(env.id);
        m_ws->sendText(protocol::serialize(env));
    };
    // One frame that arrived; the outcome once the channel has ended.
    auto handle = [&](const net::WsFrame& frame) -> std::optional<ExecOutcome> {
        if (frame.binary) {
            auto f = protocol::decodeExecFrame(std::span<const char>(frame.data.data(), frame.data.size()));
            if (!f || f->channel != channel) return std::nullopt;
            std::string_view data(f->data.data(), f->data.size());
            if (f->stream == static_cast<std::uint8_t>(ExecStream::Stdout) && io.onStdout)
                io.onStdout(data);
            else if (f->stream == static_cast<std::uint8_t>(ExecStream::Stderr) && io.onStderr)
                io.onStderr(data);
            // Granted back once the callback has taken it.
            unacked += data.size();
            if (unacked >= ackEvery) {
                sendRequest("pty.ack", {{"channel", channel}, {"bytes", unacked}});
                unacked = 0;
            }
            return std::nullopt;
        }
        auto parsed = protocol::parse(frame.data, protocol::kMaxResponseBytes);
        auto* env = std::get_if<protocol::Envelope>(&parsed);
        if (!env) return std::nullopt;
        if (env->isResponse()) {
            // An ack or exec.eof that crossed the end finds the channel gone: exec.end says why.
            if (m_unanswered.erase(env->replyTo) && !env->ok && env->errorCode != ErrorCode::NotFound)
                throw Error(env->errorCode, env->errorMessage);
            if (!env->ok && env->replyTo.empty()) throw Error(env->errorCode, env->errorMessage);
            return std::nullopt;
        }
        if (env->type == "job.completed") {
            bool isCallback = false;
            if (auto cb = callbackIn(frame, isCallback)) m_callbacks.push_back(std::move(*cb));
            return std::nullopt;
        }
        if (protocol::optInt(env->payload, "channel", 0, UINT32_MAX).value_or(0) != channel) return std::nullopt;
        if (env->type == "exec.ack") granted += u64(env->payload, "bytes");
        if (env->type != "exec.end") return std::nullopt;
        if (auto error = protocol::optString(env->payload, "error")) {
            auto code = errorCodeFromProtocol(protocol::optString(env->payload, "code", 32).value_or(""));
            throw Error(code.value_or(ErrorCode::Unavailable), "the command's stream was cut short: " + *error);
        }
        return ExecOutcome::fromResult(env->payload);
    };

    bool stopping = false;
    while (true) {
        // Everything that has arrived (TLS may hold more than the socket shows).
        while (auto f = nextFrame(0ms))
            if (auto outcome = handle(*f)) return *outcome;
        if (!stopping && io.interrupted && io.interrupted()) {
            stopping = true;
            stdinOpen = false;
            sendRequest("pty.close", {{"channel", channel}});
        }
        bool wantStdin = stdinOpen && sent < granted;
        pollfd fds[2] = {{m_ws->nativeFd(), POLLIN, 0}, {wantStdin ? io.stdinFd : -1, POLLIN, 0}};
        if (::poll(fds, 2, io.interrupted ? 100 : 1000) < 0 && errno != EINTR)
            throw Error(ErrorCode::Internal, std::string("poll: ") + std::strerror(errno));
        if (!wantStdin || !(fds[1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        auto want = static_cast<std::size_t>(std::min<std::uint64_t>(kStdinFrameBytes, granted - sent));
        std::string frame = protocol::makeExecFrame(channel, ExecStream::Stdin, want);
        ssize_t n = ::read(io.stdinFd, frame.data() + protocol::kExecFrameHeaderBytes, want);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0) throw Error(ErrorCode::Internal, std::string("reading stdin: ") + std::strerror(errno));
        if (n == 0) {
            stdinOpen = false;
            sendRequest("exec.eof", {{"channel", channel}});
            continue;
        }
        frame.resize(protocol::kExecFrameHeaderBytes + static_cast<std::size_t>(n));
        m_ws->sendBinary(frame);
        sent += static_cast<std::uint64_t>(n);
    }
}

}  // namespace hpc::agent
