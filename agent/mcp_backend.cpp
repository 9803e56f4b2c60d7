// hpc-agent mcp's backend: the platform through pooled agent connections,
// and persistent shells on threads of their own.
#include "mcp_backend.hpp"

#include "errors.hpp"
#include "fd.hpp"
#include "file_transfer.hpp"
#include "mcp_tools.hpp"
#include "platform_client.hpp"
#include "util.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <thread>

namespace json = boost::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace hpc::agent {
namespace {

/// How many bytes at the end of `s` begin a UTF-8 sequence that has not
/// fully arrived yet.
std::size_t incompleteUtf8Tail(const std::string& s) {
    for (std::size_t back = 1; back <= std::min<std::size_t>(3, s.size()); ++back) {
        auto c = static_cast<unsigned char>(s[s.size() - back]);
        if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
        std::size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > back ? back : 0;
    }
    return 0;
}

/// A memfd holding `content`, read from its start.
UniqueFd memoryFile(std::string_view content) {
    UniqueFd fd(::memfd_create("hpc-mcp", MFD_CLOEXEC));
    if (!fd) throw Error(ErrorCode::Internal, std::string("memfd_create: ") + std::strerror(errno));
    for (std::size_t done = 0; done < content.size();) {
        auto n = ::write(fd.get(), content.data() + done, content.size() - done);
        if (n <= 0) throw Error(ErrorCode::Internal, std::string("writing to a memfd: ") + std::strerror(errno));
        done += static_cast<std::size_t>(n);
    }
    if (::lseek(fd.get(), 0, SEEK_SET) != 0)
        throw Error(ErrorCode::Internal, std::string("lseek on a memfd: ") + std::strerror(errno));
    return fd;
}

}  // namespace

/// A PTY on a connection of its own. Its thread owns the connection: it
/// sends what callers queue, reads output into the buffer and grants the
/// daemon credit while the buffer has room, so a shell nobody reads is held
/// back rather than growing memory.
class PlatformBackend::Shell {
public:
    Shell(std::unique_ptr<AgentClient> client, std::string daemonId, std::uint32_t channel)
        : m_client(std::move(client)), m_daemonId(std::move(daemonId)), m_channel(channel) {
        m_thread = std::thread([this] { run(); });
    }
    ~Shell() {
        {
            std::lock_guard lock(m_lock);
            m_stop = true;
        }
        m_thread.join();
    }

    void resize(unsigned cols, unsigned rows) {
        std::lock_guard lock(m_lock);
        m_commands.push_back(Command{{}, cols, rows});
    }

    mcp::ShellOutput exchange(const std::string& input, const mcp::ShellWait& wait, const mcp::CallContext& ctx) {
        std::unique_lock lock(m_lock);
        if (!input.empty()) m_commands.push_back(Command{input, 0, 0});
        const auto start = Clock::now();
        const auto deadline =
            start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait.timeoutSeconds));
        const auto settle =
            std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait.settleSeconds));
        mcp::ShellOutput out;
        for (;;) {
            if (wait.pattern && std::regex_search(mcp::terminalText(m_buffer), *wait.pattern)) {
                out.matched = true;
                break;
            }
            if (m_ended || ctx.isCancelled()) break;
            auto now = Clock::now();
            if (now >= deadline) {
                out.timedOut = true;
                break;
            }
            if (!wait.pattern && now - std::max(start, m_lastOutput) >= settle) break;
            m_changed.wait_for(lock, 20ms);
        }
        std::size_t keep = incompleteUtf8Tail(m_buffer);
        out.data = m_buffer.substr(0, m_buffer.size() - keep);
        m_buffer.erase(0, m_buffer.size() - keep);
        // What was held back, the daemon may send now.
        m_ackDue += m_held;
        m_held = 0;
        out.ended = m_ended;
        out.exitCode = m_exitCode;
        out.signal = m_signal;
        out.error = m_error;
        return out;
    }

private:
    struct Command {
        std::string input;  ///< or a resize:
        unsigned cols, rows;
    };

    void run() {
        try {
            for (;;) {
                std::deque<Command> commands;
                std::uint64_t ack = 0;
                {
                    std::lock_guard lock(m_lock);
                    if (m_stop) break;
                    commands.swap(m_commands);
                    ack = std::exchange(m_ackDue, 0);
                }
                for (const auto& c : commands) {
                    if (!c.input.empty())
                        m_client->ptyInput(m_channel, c.input);
                    else
                        m_client->ptyResize(m_daemonId, m_channel, c.cols, c.rows);
                }
                if (ack) m_client->ptyAck(m_daemonId, m_channel, ack);
                // Short, so that queued input goes out soon: the connection cannot be woken.
                auto event = m_client->nextPtyEvent(20ms);
                if (!event || event->channel != m_channel) continue;
                std::lock_guard lock(m_lock);
                if (event->kind == PtyEvent::Kind::Output) {
                    m_buffer += event->data;
                    m_lastOutput = Clock::now();
                    if (m_buffer.size() <= kShellBuffer)
                        m_ackDue += event->data.size();
                    else
                        m_held += event->data.size();
                } else {
                    m_ended = true;
                    m_exitCode = event->exitCode;
                    m_signal = event->signal;
                    m_error = event->error;
                }
                m_changed.notify_all();
                if (m_ended) return;
            }
            m_client->ptyClose(m_daemonId, m_channel);  // SIGHUP to the shell's process group
        } catch (const std::exception& e) {
            std::lock_guard lock(m_lock);
            if (!m_ended) m_error = std::string("the connection broke: ") + e.what();
            m_ended = true;
            m_changed.notify_all();
        }
    }

    std::unique_ptr<AgentClient> m_client;
    const std::string m_daemonId;
    const std::uint32_t m_channel;
    std::mutex m_lock;
    std::condition_variable m_changed;
    std::deque<Command> m_commands;
    std::string m_buffer;
    Clock::time_point m_lastOutput{};
    std::uint64_t m_ackDue = 0;  ///< credit to grant
    std::uint64_t m_held = 0;    ///< credit withheld while the buffer is full
    bool m_stop = false;
    bool m_ended = false;
    std::optional<int> m_exitCode, m_signal;
    std::string m_error;
    std::thread m_thread;  ///< last: started once the rest is built
};

PlatformBackend::~PlatformBackend() {
    std::lock_guard lock(m_lock);
    m_shells.clear();  // each hangs up and joins its thread
}

PlatformAccess PlatformAccess::remote(AgentOptions options) {
    auto shared = std::make_shared<const AgentOptions>(std::move(options));
    return {[shared] { return AgentClient::connect(*shared); },
            [shared] {
                net::PlatformClient platform(
                    shared->url, net::ClientOptions{shared->caFile, std::chrono::seconds(15), shared->proxy});
                return platform.listDaemons(shared->token);
            }};
}

json::array PlatformBackend::listDaemons() { return m_access.listDaemons(); }

template <class F>
auto PlatformBackend::withConnection(F&& f) -> decltype(f(std::declval<AgentClient&>())) {
    std::unique_ptr<AgentClient> c;
    {
        std::lock_guard lock(m_lock);
        // The platform closes a connection that answered no ping for its idle
        // limit (60 s by default), and an idle one here reads no frames.
        auto now = Clock::now();
        std::erase_if(m_idle, [&](const Idle& i) { return now - i.since > 20s; });
        // One the platform closed meanwhile (its credential revoked, say) is dropped.
        while (!c && !m_idle.empty()) {
            c = std::move(m_idle.back().client);
            m_idle.pop_back();
            if (!c->ws().isOpen()) c.reset();
        }
    }
    if (!c) c = m_access.connect();
    auto result = f(*c);  // a broken connection throws, and is not kept
    std::lock_guard lock(m_lock);
    if (m_idle.size() < kMaxIdle) m_idle.push_back({std::move(c), Clock::now()});
    return result;
}

json::object PlatformBackend::request(const std::string& daemonId, const std::string& type, json::object payload,
                                      const mcp::CallContext&) {
    return withConnection(
        [&](AgentClient& c) { return c.request(daemonId, type, std::move(payload), std::chrono::hours(24 * 7)); });
}

json::object PlatformBackend::runCommand(const std::string& daemonId, const ExecSpec& spec, std::size_t maxOutputBytes,
                                         const mcp::CallContext& ctx) {
    struct Kept {
        std::string data;
        bool truncated = false;
        void add(std::string_view piece, std::size_t limit) {
            auto room = limit - std::min(limit, data.size());
            data.append(piece.substr(0, room));
            truncated = truncated || piece.size() > room;
        }
    } out, err;
    UniqueFd stdinFile;
    if (spec.stdinData) stdinFile = memoryFile(*spec.stdinData);
    const auto start = Clock::now();
    auto lastProgress = start;
    const double limit = spec.timeoutSeconds.value_or(300);
    ExecStreamIo io;
    io.onStdout = [&](std::string_view d) { out.add(d, maxOutputBytes); };
    io.onStderr = [&](std::string_view d) { err.add(d, maxOutputBytes); };
    io.stdinFd = stdinFile ? stdinFile.get() : -1;
    // Asked every 100 ms or less: a cancellation stops the command; every second, progress.
    io.interrupted = [&] {
        auto now = Clock::now();
        if (ctx.progress && now - lastProgress >= 1s) {
            lastProgress = now;
            ctx.progress(std::chrono::duration<double>(now - start).count(), limit,
                         std::to_string(out.data.size() + err.data.size()) + " bytes of output so far");
        }
        return ctx.isCancelled();
    };
    auto outcome = withConnection([&](AgentClient& c) { return c.execStream(daemonId, spec, io); });
    json::object r = outcome.raw;
    r.erase("channel");
    for (const auto& [name, kept] : {std::pair<std::string, Kept*>{"stdout", &out}, {"stderr", &err}}) {
        bool text = isValidUtf8(kept->data);
        r[name] = text ? kept->data : base64Encode(kept->data);
        r[name + "_encoding"] = text ? "utf-8" : "base64";
        r[name + "_truncated"] = kept->truncated;
    }
    return r;
}

std::optional<json::object> PlatformBackend::waitJob(const std::string& daemonId, const std::string& jobId,
                                                     double timeoutSeconds, const mcp::CallContext& ctx) {
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::milliseconds(static_cast<std::int64_t>(timeoutSeconds * 1000));
    // Every 10 s, or five times over a shorter wait.
    const auto progressEvery = std::clamp<Clock::duration>(
        std::chrono::milliseconds(static_cast<std::int64_t>(timeoutSeconds * 200)), 1s, 10s);
    auto lastProgress = start;
    return withConnection([&](AgentClient& c) -> std::optional<json::object> {
        // In short slices, so that a cancellation is seen and progress reported.
        for (;;) {
            auto now = Clock::now();
            if (ctx.isCancelled() || now >= deadline) return std::nullopt;
            auto slice = std::min<Clock::duration>(deadline - now, 1s);
            auto cb = c.waitForJob(daemonId, jobId, std::chrono::duration_cast<std::chrono::milliseconds>(slice));
            if (cb) {
                c.ackCallback(cb->callbackId);
                return cb->raw;
            }
            now = Clock::now();
            if (ctx.progress && now - lastProgress >= progressEvery) {
                lastProgress = now;
                ctx.progress(std::chrono::duration<double>(now - start).count(), timeoutSeconds,
                             "job " + jobId + " has not ended yet");
            }
        }
    });
}

json::object PlatformBackend::writeFile(const std::string& daemonId, const std::string& path, std::string_view content,
                                        std::optional<std::uint32_t> mode, const mcp::CallContext& ctx) {
    auto fd = memoryFile(content);
    UploadSource source{fd.get(), true, content.size(), nullptr};
    hpc::files::PutSpec spec;
    spec.path = path;
    spec.size = static_cast<std::int64_t>(content.size());
    spec.mode = mode;
    auto r = withConnection([&](AgentClient& c) {
        FileClient files(c, daemonId);
        files.setInterrupted([&ctx] { return ctx.isCancelled(); });
        return files.put(spec, source, {});
    });
    return {{"path", r.path}, {"size", r.size}, {"sha256", r.sha256}};
}

std::pair<std::string, json::object> PlatformBackend::shellOpen(const std::string& daemonId, unsigned cols,
                                                                unsigned rows, const std::optional<std::string>& cwd) {
    {
        std::lock_guard lock(m_lock);
        if (m_shells.size() >= kMaxShells)
            throw Error(ErrorCode::Limit, std::to_string(m_shells.size()) +
                                              " shells are open in this session; close one (shell_close) first");
    }
    auto client = m_access.connect();
    PtySpec spec;
    spec.cols = cols;
    spec.rows = rows;
    spec.cwd = cwd;
    auto handle = client->openPty(daemonId, spec);
    json::object answer{{"pid", handle.pid}};
    std::lock_guard lock(m_lock);
    std::string id = "sh-" + std::to_string(++m_shellSeq);
    m_shells.emplace(id, std::make_shared<Shell>(std::move(client), daemonId, handle.channel));
    return {id, std::move(answer)};
}

std::shared_ptr<PlatformBackend::Shell> PlatformBackend::shell(const std::string& session) {
    std::lock_guard lock(m_lock);
    auto it = m_shells.find(session);
    if (it == m_shells.end())
        throw Error(ErrorCode::NotFound, "no shell \"" + session + "\" in this session (shell_open makes one)");
    return it->second;
}

mcp::ShellOutput PlatformBackend::shellExchange(const std::string& session, const std::string& input,
                                                const mcp::ShellWait& wait, const mcp::CallContext& ctx) {
    return shell(session)->exchange(input, wait, ctx);
}

void PlatformBackend::shellResize(const std::string& session, unsigned cols, unsigned rows) {
    shell(session)->resize(cols, rows);
}

void PlatformBackend::shellClose(const std::string& session) {
    std::shared_ptr<Shell> s;
    {
        std::lock_guard lock(m_lock);
        auto it = m_shells.find(session);
        if (it == m_shells.end()) throw Error(ErrorCode::NotFound, "no shell \"" + session + "\" in this session");
        s = std::move(it->second);
        m_shells.erase(it);
    }
    // Hangs up and joins here, or in the last call still using it.
}

}  // namespace hpc::agent
