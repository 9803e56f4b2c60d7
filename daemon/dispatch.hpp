#pragma once
/// Routes each message from the platform to its handler (design: "dispatch").
/// Every request gets exactly one response; bad input gets an error response
/// and changes nothing; nothing here throws to the caller.

#include "allowed_dirs.hpp"
#include "exec.hpp"
#include "files/file_service.hpp"
#include "jobs/job_service.hpp"
#include "protocol.hpp"
#include "pty.hpp"
#include "store.hpp"
#include "wire.hpp"

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

namespace hpc::daemon {

class Dispatcher {
public:
    using Send = std::function<void(std::string text)>;

    Dispatcher(ExecService& exec, AllowedDirs dirs, std::filesystem::path fallbackCwd, Send send)
        : m_exec(exec), m_dirs(std::move(dirs)), m_fallbackCwd(std::move(fallbackCwd)), m_send(std::move(send)) {}

    void onText(std::string_view text);
    /// New allowed directories (after a profile reload) for commands from now on.
    void setPolicy(AllowedDirs dirs, std::filesystem::path fallbackCwd) {
        m_dirs = std::move(dirs);
        m_fallbackCwd = std::move(fallbackCwd);
    }
    /// Receives an audit entry for every command run (daemon id left empty).
    void setAudit(std::function<void(Store::AuditEntry)> audit) { m_audit = std::move(audit); }
    /// Told the type of every well-formed text message (the daemon's counters).
    void setOnMessage(std::function<void(std::string_view type)> f) { m_onMessage = std::move(f); }
    /// Enables the job.* messages and callback acknowledgements.
    void attachJobs(JobService& jobs) { m_jobs = &jobs; }
    /// Enables the pty.* messages and binary input.
    void attachPty(PtyService& pty) { m_pty = &pty; }
    /// Enables the file.* messages and the binary frames of transfers.
    void attachFiles(FileService& files) { m_files = &files; }
    /// New work (exec, pty.open, job.submit) is refused with STORAGE_FULL
    /// while this store's disk or quota is full (Store::requireWritable).
    void attachStore(Store& store) { m_store = &store; }
    /// While draining, exec, pty.open, job.submit and new file transfers and
    /// writes are refused with UNAVAILABLE; everything else (job status,
    /// callbacks' acks, transfers already running) still works.
    void setDraining(bool on) { m_draining = on; }
    /// Confinement for commands and shells from now on (null: none).
    void setConfinement(std::shared_ptr<const Confinement> confinement) { m_confinement = std::move(confinement); }
    /// The bash rc file with the advisory wrappers; empty for none.
    void setShellGuard(std::filesystem::path file) { m_shellGuard = std::move(file); }
    void onBinary(std::string_view data);

    static boost::json::object toJson(const ExecResult& result);

private:
    void handleExec(const protocol::Envelope& env);
    /// What ExecService runs for `spec` here: its cwd resolved in the allowed
    /// directories, a command line given to the shell, the confinement.
    /// Throws hpc::Error(PathNotAllowed, NotFound).
    ExecRequest toRequest(const ExecSpec& spec) const;
    /// pty.*; returns false when `type` is not a PTY message.
    bool handlePty(const protocol::Envelope& env);

    ExecService& m_exec;
    AllowedDirs m_dirs;
    std::filesystem::path m_fallbackCwd;
    Send m_send;
    PtyService* m_pty = nullptr;
    FileService* m_files = nullptr;
    JobService* m_jobs = nullptr;
    Store* m_store = nullptr;
    std::function<void(Store::AuditEntry)> m_audit;
    std::function<void(std::string_view)> m_onMessage;
    std::shared_ptr<const Confinement> m_confinement;
    std::filesystem::path m_shellGuard;
    bool m_draining = false;
};

}  // namespace hpc::daemon
