// What the dispatch fuzz target links instead of the daemon's process code:
// requests that pass validation are checked and answered here, never run (a
// fuzzer's exec would run arbitrary programs). Everything up to these calls
// — envelope, payload fields, allowed directories — is the real code.
#include "errors.hpp"
#include "exec.hpp"
#include "exec_stream.hpp"
#include "files/file_service.hpp"
#include "guard/shell_guard.hpp"
#include "jobs/job_logs.hpp"
#include "jobs/job_service.hpp"
#include "pty.hpp"

#include <cstdlib>

namespace hpc::daemon {
namespace {
void require(bool ok) {
    if (!ok) std::abort();
}
void checkEnv(const std::vector<std::string>& env) {
    for (const auto& e : env) require(e.find('=') != std::string::npos && e.front() != '=');
}
}  // namespace

ExecService::ExecService(boost::asio::io_context& ioc, std::size_t maxConcurrent)
    : m_ioc(ioc), m_maxConcurrent(maxConcurrent), m_streams(std::make_unique<ExecStreams>(ioc)) {}
ExecService::~ExecService() = default;

void ExecService::start(ExecRequest request, std::function<void(ExecResult)> done) {
    // What validation promises the code that runs the command.
    require(!request.argv.empty() && !request.argv.front().empty());
    for (const auto& a : request.argv) require(a.find('\0') == std::string::npos);
    require(request.timeout.count() > 0 && request.timeout <= std::chrono::hours(7 * 24));
    require(request.killGrace.count() >= 0 && request.killGrace <= std::chrono::minutes(10));
    require(request.maxOutputBytes <= 4 * 1024 * 1024);
    require(!request.cwd.empty() && request.cwd.front() == '/');
    checkEnv(request.env);
    ExecResult r;
    r.exitCode = 0;
    done(std::move(r));
}

// Streamed commands: the stand-in opens nothing, so no channel is ever
// theirs (owns() is false) and what acts on one is never reached.
ExecStreams::ExecStreams(boost::asio::io_context& ioc) : m_ioc(ioc) {}
ExecStreams::~ExecStreams() = default;
ExecStreams::Opened ExecStreams::open(ExecRequest request, std::uint64_t credit, bool, const std::string&, Ended) {
    require(!request.argv.empty() && !request.argv.front().empty());
    for (const auto& a : request.argv) require(a.find('\0') == std::string::npos);
    require(request.timeout.count() > 0 && request.timeout <= std::chrono::hours(7 * 24));
    require(!request.cwd.empty() && request.cwd.front() == '/');
    require(credit == 0 || (credit >= 4096 && credit <= (16u << 20)));
    checkEnv(request.env);
    return Opened{kFirstChannel, 1, 0};
}
bool ExecStreams::recentlyEnded(std::uint32_t) const { return false; }
void ExecStreams::onFrame(std::span<const char>) { std::abort(); }
void ExecStreams::ack(std::uint32_t, std::uint64_t, const std::string&) { std::abort(); }
void ExecStreams::eof(std::uint32_t channel, const std::string&) {
    throw Error(ErrorCode::NotFound, "channel " + std::to_string(channel) + " is not open");
}
void ExecStreams::close(std::uint32_t, const std::string&) { std::abort(); }
void ExecStreams::detach(std::uint32_t) { std::abort(); }

PtyService::PtyService(boost::asio::io_context& ioc, PtyLimits limits, SendText sendText, SendOutput sendOutput)
    : m_ioc(ioc), m_limits(limits), m_sendText(std::move(sendText)), m_sendOutput(std::move(sendOutput)) {}
PtyService::~PtyService() = default;

PtyInfo PtyService::open(const PtyOpenRequest& request) {
    require(request.cols >= 1 && request.cols <= 10000 && request.rows >= 1 && request.rows <= 10000);
    require(!request.argv.empty() && !request.argv.front().empty());
    require(!request.cwd.empty() && request.cwd.front() == '/');
    checkEnv(request.env);
    return PtyInfo{1, 1, request.agentId, request.cwd, 0, "1-00000000"};
}
PtyAttached PtyService::attach(const std::string& session, std::optional<std::uint64_t>, std::uint64_t credit,
                               const std::string& agentId) {
    require(!session.empty() && session.size() <= 64 && credit <= (64ULL << 20));
    return PtyAttached{PtyInfo{1, 1, agentId, "/", 0, session}, 0};
}
void PtyService::detachAll() {}
void PtyService::input(std::uint32_t, const char*, std::size_t) {}
void PtyService::resize(std::uint32_t channel, unsigned cols, unsigned rows, const std::string&) {
    require(channel >= 1 && cols >= 1 && cols <= 10000 && rows >= 1 && rows <= 10000);
}
void PtyService::close(std::uint32_t channel, int signal, const std::string&) {
    require(channel >= 1 && signal >= 1 && signal <= 64);
}
void PtyService::ack(std::uint32_t channel, std::uint64_t bytes, const std::string&) {
    require(channel >= 1 && bytes >= 1 && bytes <= (1ULL << 30));
}
void PtyService::detach(std::uint32_t channel) { require(channel >= 1); }

// Jobs are not attached (they need the store and a scheduler): job.* types
// get UNKNOWN_TYPE, but the dispatcher still refers to these.
bool JobService::handle(const protocol::Envelope&, const std::string&, const Reply&) { std::abort(); }
bool Outbox::onResponse(const protocol::Envelope&) { std::abort(); }
void JobLogs::ack(std::uint32_t, std::uint64_t, const std::string&) { std::abort(); }
void JobLogs::detach(std::uint32_t) { std::abort(); }

// Files are not attached (they need workers and the user's files): file.*
// types get UNKNOWN_TYPE, but the dispatcher still refers to these.
bool FileService::handle(const protocol::Envelope&, const std::string&, const Reply&) { std::abort(); }
void FileService::onFrame(std::string_view) { std::abort(); }

// The guard's rc file is not needed to validate a request.
std::vector<std::string> guardedShell(const std::string& shell, const std::filesystem::path&) { return {shell}; }

}  // namespace hpc::daemon
