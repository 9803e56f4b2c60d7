#include "bus_service.hpp"

#include "bus_name.hpp"
#include "bus_pump.hpp"
#include "errors.hpp"
#include "log.hpp"

#include <hpc_daemon_adaptor.h>
#include <sdbus-c++/sdbus-c++.h>

namespace hpc::daemon {
namespace {

/// Turns a core failure into a named D-Bus error from the shared table.
[[noreturn]] void rethrowAsDbus() {
    try {
        throw;
    } catch (const Error& e) {
        throw sdbus::Error(std::string(toDbusName(e.code())), e.what());
    } catch (const sdbus::Error&) {
        throw;
    } catch (const std::exception& e) {
        log::error(std::string("D-Bus call failed: ") + e.what());
        throw sdbus::Error(std::string(toDbusName(ErrorCode::Internal)), "internal error (see the daemon's log)");
    }
}

// NOLINTNEXTLINE(cppcoreguidelines-virtual-class-destructor): final: never a base class (clang-tidy 15+ exempts it)
class Adaptor final : public sdbus::AdaptorInterfaces<org::tiptree::HpcDaemon_adaptor> {
public:
    Adaptor(sdbus::IConnection& connection, Controls& controls)
        : AdaptorInterfaces(connection, bus::kObjectPath), m_controls(controls) {
        registerAdaptor();
    }
    ~Adaptor() { unregisterAdaptor(); }

    void announceLinkState(const std::string& state) {
        emitLinkStateChanged(state);
        getObject().emitPropertiesChangedSignal(bus::kInterface, {"LinkState", "ConnectedSince"});
    }
    void announceDraining() { getObject().emitPropertiesChangedSignal(bus::kInterface, {"Draining"}); }
    void announceJob(const std::string& jobId, const std::string& state) {
        emitJobChanged(jobId, state);
        getObject().emitPropertiesChangedSignal(bus::kInterface, {"ActiveJobs"});
    }

private:
    DaemonStatus snapshot() {
        try {
            return m_controls.status();
        } catch (...) {
            rethrowAsDbus();
        }
    }

    std::map<std::string, sdbus::Variant> GetStatus() override {
        auto s = snapshot();
        return {{"daemon_id", s.daemonId},
                {"version", s.version},
                {"pid", static_cast<uint32_t>(s.pid)},
                {"mode", s.mode},
                {"mode_reason", s.modeReason},
                {"link_state", s.linkState},
                {"connected_since", s.connectedSince},
                {"link_problem", s.linkProblem},
                {"platform_url", s.platformUrl},
                {"route", s.route},
                {"scheduler", s.scheduler},
                {"scheduler_reason", s.schedulerReason},
                {"allowed_dirs", s.allowedDirs},
                {"guard_layers", s.guardLayers},
                {"process_watch", s.processWatch},
                {"running_execs", static_cast<uint32_t>(s.runningExecs)},
                {"active_sessions", static_cast<uint32_t>(s.activeSessions)},
                {"active_jobs", static_cast<uint32_t>(s.activeJobs)},
                {"pending_callbacks", static_cast<uint32_t>(s.pendingCallbacks)},
                {"draining", s.draining},
                {"bus_address", s.busAddress},
                {"started_at", s.startedAt},
                {"state_bytes", static_cast<double>(s.stateBytes)},
                {"state_max_bytes", static_cast<double>(s.stateMaxBytes)},
                {"state_warning", s.stateWarning},
                {"last_prune_at", s.lastPruneAt},
                {"last_prune_audit_rows", static_cast<uint32_t>(s.lastPruneAuditRows)},
                {"last_prune_jobs", static_cast<uint32_t>(s.lastPruneJobs)},
                {"last_prune", s.lastPruneSummary},
                {"last_prune_job_dirs", static_cast<uint32_t>(s.lastPruneJobDirs)},
                {"last_prune_job_dir_bytes", static_cast<double>(s.lastPruneJobDirBytes)},
                {"job_dirs_removed", static_cast<double>(s.jobDirsRemoved)},
                {"job_dir_bytes_removed", static_cast<double>(s.jobDirBytesRemoved)},
                {"metrics", s.metrics}};
    }

    void Stop() override {
        try {
            m_controls.stop();
        } catch (...) {
            rethrowAsDbus();
        }
    }

    void Drain(const double& timeoutSeconds) override {
        try {
            if (!(timeoutSeconds >= 0 && timeoutSeconds <= 86400))
                throw Error(ErrorCode::BadRequest, "the drain timeout must be 0 to 86400 seconds");
            if (!m_controls.drain) throw Error(ErrorCode::Unavailable, "this daemon cannot drain");
            m_controls.drain(std::chrono::milliseconds(static_cast<long long>(timeoutSeconds * 1000)));
        } catch (...) {
            rethrowAsDbus();
        }
    }

    bool Reload() override {
        try {
            return m_controls.reload();
        } catch (...) {
            rethrowAsDbus();
        }
    }

    std::vector<sdbus::Struct<uint32_t, std::string, std::string, double>> ListSessions() override {
        std::vector<sdbus::Struct<uint32_t, std::string, std::string, double>> out;
        if (!m_controls.sessions) return out;
        try {
            for (const auto& s : m_controls.sessions()) out.emplace_back(s.channel, s.agentId, s.cwd, s.openedAt);
        } catch (...) {
            rethrowAsDbus();
        }
        return out;
    }
    using JobRow =
        sdbus::Struct<std::string, std::string, std::string, std::string, std::string, std::string, int32_t, double>;
    std::vector<JobRow> ListJobs() override {
        std::vector<JobRow> out;
        if (!m_controls.jobs) return out;
        try {
            for (const auto& j : m_controls.jobs())
                out.emplace_back(j.jobId, std::string(toWireName(j.state)), j.backend, j.schedulerId, j.name, j.agentId,
                                 j.exitCode.value_or(-1), j.submittedAt);
        } catch (...) {
            rethrowAsDbus();
        }
        return out;
    }

    std::string DaemonId() override { return snapshot().daemonId; }
    std::string Version() override { return snapshot().version; }
    std::string LinkState() override { return snapshot().linkState; }
    double ConnectedSince() override { return snapshot().connectedSince; }
    std::string PlatformUrl() override { return snapshot().platformUrl; }
    std::string Scheduler() override { return snapshot().scheduler; }
    std::string Mode() override { return snapshot().mode; }
    uint32_t RunningExecs() override { return snapshot().runningExecs; }
    uint32_t ActiveSessions() override { return snapshot().activeSessions; }
    uint32_t ActiveJobs() override { return snapshot().activeJobs; }
    bool Draining() override { return snapshot().draining; }
    std::map<std::string, uint64_t> Metrics() override { return snapshot().metrics; }

    Controls& m_controls;
};

}  // namespace

struct BusService::Impl {
    Controls controls;
    std::unique_ptr<sdbus::IConnection> connection;
    std::unique_ptr<Adaptor> adaptor;
    std::unique_ptr<BusPump> pump;
};

BusService::BusService(boost::asio::io_context& ioc, const std::string& address, const std::string& daemonId,
                       Controls controls)
    : m_address(address), m_impl(std::make_unique<Impl>()) {
    m_impl->controls = std::move(controls);
    m_impl->connection = sdbus::createSessionBusConnectionWithAddress(address);
    m_impl->adaptor = std::make_unique<Adaptor>(*m_impl->connection, m_impl->controls);
    std::string name = bus::busNameFor(daemonId);
    try {
        m_impl->connection->requestName(name);
    } catch (const sdbus::Error& e) {
        if (e.getName() == "org.freedesktop.DBus.Error.FileExists" || e.getName() == "System.Error.EEXIST")
            throw Error(ErrorCode::Limit, "daemon " + daemonId + " is already running (" + name + " is owned)");
        throw;
    }
    m_impl->pump = std::make_unique<BusPump>(ioc, *m_impl->connection);
    m_impl->pump->start();
    log::info("serving " + name + " on " + address);
}

BusService::~BusService() {
    // The pump first: it must not touch a connection being torn down.
    m_impl->pump.reset();
    m_impl->adaptor.reset();
}

void BusService::jobChanged(const std::string& jobId, JobState state) {
    try {
        m_impl->adaptor->announceJob(jobId, std::string(toWireName(state)));
        m_impl->pump->kick();
    } catch (const std::exception& e) {
        log::warning(std::string("cannot announce a job change on D-Bus: ") + e.what());
    }
}

void BusService::drainingChanged() {
    try {
        m_impl->adaptor->announceDraining();
        m_impl->pump->kick();
    } catch (const std::exception& e) {
        log::warning(std::string("cannot announce draining on D-Bus: ") + e.what());
    }
}

void BusService::linkStateChanged(const std::string& state) {
    try {
        m_impl->adaptor->announceLinkState(state);
        m_impl->pump->kick();
    } catch (const std::exception& e) {
        log::warning(std::string("cannot announce the link state on D-Bus: ") + e.what());
    }
}

}  // namespace hpc::daemon
