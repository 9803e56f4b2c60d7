#include "daemon.hpp"

#include "bus/bus_service.hpp"
#include "bus/private_bus.hpp"
#include "bus_name.hpp"
#include "daemon_metrics.hpp"
#include "dispatch.hpp"
#include "errors.hpp"
#include "exec.hpp"
#include "exec_stream.hpp"
#include "exit_watch.hpp"
#include "files/file_service.hpp"
#include "guard/confinement.hpp"
#include "guard/shell_guard.hpp"
#include "jobs/job_service.hpp"
#include "link.hpp"
#include "log.hpp"
#include "notify.hpp"
#include "pty.hpp"
#include "scheduler_choice.hpp"
#include "settings.hpp"
#include "state_keeper.hpp"
#include "status.hpp"
#include "store.hpp"
#include "util.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cstdlib>
#include <cstring>

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace hpc::daemon {
using net::Link;
using net::LinkConfig;
using net::LinkHandlers;
using net::LinkState;
namespace {

std::string hostName() {
    char buf[256] = {};
    ::gethostname(buf, sizeof buf - 1);
    return buf;
}

/// Written once the instance is known to be the only one; removed on exit.
/// One daemon per profile: the pid file is locked (flock) for the daemon's
/// life, so a second start for the same profile (nohup mode twice, or two
/// login nodes sharing $HOME) fails with the first one's pid instead of
/// taking its bus socket and its link.
class InstanceLock {
public:
    explicit InstanceLock(fs::path path) : m_path(std::move(path)) {
        // A lock on a file another daemon just unlinked protects nothing:
        // retry until the locked file is the one at the path.
        for (int attempt = 0;; ++attempt) {
            m_fd = ::open(m_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
            if (m_fd < 0)
                throw std::runtime_error("cannot open pid file " + m_path.string() + ": " + std::strerror(errno));
            if (::flock(m_fd, LOCK_EX | LOCK_NB) != 0) {
                int err = errno;
                std::string holder = readHolder();
                ::close(m_fd);
                m_fd = -1;
                if (err == EWOULDBLOCK)
                    throw std::runtime_error("this profile's daemon already runs" +
                                             (holder.empty() ? std::string() : " (pid " + holder + ")") +
                                             "; its lock is " + m_path.string() +
                                             ". Stop it first: hpc-daemonctl stop");
                // A file system without locks (some Lustre mounts): go on unlocked.
                log::warning("cannot lock " + m_path.string() + " (" + std::strerror(err) +
                             "): a second daemon for this profile would not be refused");
                break;
            }
            struct stat held {
            }, atPath{};
            if (::fstat(m_fd, &held) == 0 && ::stat(m_path.c_str(), &atPath) == 0 && held.st_ino == atPath.st_ino &&
                held.st_dev == atPath.st_dev)
                break;
            ::close(m_fd);
            m_fd = -1;
            if (attempt >= 10) throw std::runtime_error("the pid file " + m_path.string() + " keeps being replaced");
        }
        std::string pid = std::to_string(::getpid()) + "\n";
        if (::ftruncate(m_fd, 0) != 0 || ::pwrite(m_fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
            throw std::runtime_error("cannot write pid file " + m_path.string());
    }
    ~InstanceLock() {
        std::error_code ec;
        fs::remove(m_path, ec);  // before the lock goes: a waiting daemon then retries on a new file
        if (m_fd >= 0) ::close(m_fd);
    }
    InstanceLock(const InstanceLock&) = delete;
    InstanceLock& operator=(const InstanceLock&) = delete;

private:
    std::string readHolder() const {
        char buf[32] = {};
        ssize_t n = ::pread(m_fd, buf, sizeof buf - 1, 0);
        std::string s(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
        while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
        return s.find_first_not_of("0123456789") == std::string::npos ? s : std::string();
    }

    fs::path m_path;
    int m_fd = -1;
};

class Daemon {
public:
    Daemon(asio::io_context& ioc, const DaemonOptions& options)
        : m_ioc(ioc),
          m_options(options),
          m_store(Store::open()),
          m_exec(ioc),
          m_notifier(ioc),
          m_signals(ioc),
          m_shutdownTimer(ioc),
          m_drainTimer(ioc),
          m_stateCheck(ioc) {
        m_profile = selectProfile(m_store, options.daemonId);
        m_stateKeeper = std::make_unique<StateKeeper>(ioc, m_store, m_profile.daemonId);
        m_startedAt = nowEpochSeconds();
        // systemd sets INVOCATION_ID for every service it starts. NOTIFY_SOCKET
        // alone is any supervisor (a test harness too) asking for READY: it
        // gets the notify protocol in nohup mode as well.
        m_systemd = std::getenv("INVOCATION_ID") != nullptr;
        m_dispatcher = std::make_unique<Dispatcher>(m_exec, AllowedDirs(m_profile.allowedDirs), fallbackCwd(),
                                                    [this](std::string text) { reply(std::move(text)); });
        m_pty = std::make_unique<PtyService>(
            ioc, ptyLimits(), [this](std::string text) { reply(std::move(text)); },
            [this](std::uint32_t channel, const char* data, std::size_t size) {
                return m_link && m_link->sendChannelData(channel, data, size);
            });
        m_dispatcher->attachPty(*m_pty);
        SchedulerChoice choice = chooseScheduler();
        m_schedulerReason = choice.reason;
        log::info("scheduler " + choice.backend + ": " + choice.reason);
        m_jobs = std::make_unique<JobService>(
            ioc, m_store, m_profile.daemonId, makeScheduler(choice.backend),
            [this](std::string text) { return m_link && m_link->sendText(std::move(text)); }, options.jobIoTimeout);
        m_jobs->setSchedulerFactory([this](const std::string& backend) -> std::unique_ptr<Scheduler> {
            if (backend == "slurm" && findInPath("squeue").empty()) return nullptr;
            if (backend != "slurm" && backend != "local") return nullptr;
            return makeScheduler(backend);
        });
        m_jobs->logs().setDataSender([this](std::uint32_t channel, const char* data, std::size_t size) {
            return m_link && m_link->sendChannelData(channel, data, size);
        });
        m_dispatcher->attachJobs(*m_jobs);
        m_exec.streams().setSenders(
            [this](std::string text) { return m_link && m_link->sendText(std::move(text)); },
            [this](std::string frame) { return m_link && m_link->sendBinary(std::move(frame)); });
        m_files = std::make_unique<FileService>(
            ioc, options.jobIoTimeout, [this](std::string text) { return m_link && m_link->sendText(std::move(text)); },
            [this](std::string frame) { return m_link && m_link->sendBinary(std::move(frame)); });
        m_files->setAudit(
            [this](const std::string& agent, const std::string& command, const std::string& dir, int status) {
                audit(Store::AuditEntry{nowEpochSeconds(), m_profile.daemonId, agent, "file", dir, command, status});
            });
        m_dispatcher->attachFiles(*m_files);
        m_dispatcher->attachStore(m_store);
        // A full disk or quota (issue 21): once space is back, the job ends it
        // could not record are written and their callbacks go out.
        m_stateKeeper->setOnWritable([this] {
            m_jobs->recordUnrecorded();
            m_jobs->outbox().kick();
        });
        // Retention (issue 21): a pruned job's directory goes with its row.
        m_stateKeeper->setJobDirRemover(
            [this](std::vector<PrunedJobDir> dirs, std::function<void(std::int64_t, std::int64_t)> done) {
                m_jobs->removeJobDirs(std::move(dirs), std::move(done));
            });
        // The state's warning (size cap, full disk) reaches the platform too.
        m_stateKeeper->setOnWarning([this](const std::string& warning) { sendWarning(warning); });
        m_jobs->setAudit([this](const Store::AuditEntry& e) { audit(e); });
        m_jobs->setOnJobChange([this](const JobRecord& job) {
            m_metrics.jobChanged(job.state);
            if (m_bus) m_bus->jobChanged(job.jobId, job.state);
        });
        m_jobs->outbox().setOnDelivered([this](double seconds) { m_metrics.callbackDelivered(seconds); });
        m_dispatcher->setOnMessage([this](std::string_view type) { m_metrics.message(type); });
        m_pty->setAudit([this](const PtyInfo& session, const std::string& cwd, const std::string& command, int status) {
            audit(Store::AuditEntry{nowEpochSeconds(), m_profile.daemonId, session.agentId,
                                    "pty:" + std::to_string(session.channel), cwd, command, status});
        });
        m_dispatcher->setAudit([this](Store::AuditEntry e) {
            if (e.session == "exec") m_metrics.execEnded(e.exitCode.value_or(-1));
            e.daemonId = m_profile.daemonId;
            audit(e);
        });
        applyConfinement();
    }

    void run() {
        warnIfUnrestricted();
        m_instanceLock = std::make_unique<InstanceLock>(m_store.dir() / (m_profile.daemonId + ".pid"));
        startBus();
        m_signals.add(SIGINT);
        m_signals.add(SIGTERM);
        waitForSignal();
        m_link = makeLink();
        log::notice("hpc-daemond " HPC_VERSION " starting: daemon " + m_profile.daemonId + ", platform " +
                    m_profile.platformUrl + ", allowed directories " + AllowedDirs(m_profile.allowedDirs).describe() +
                    ", mode " + mode());
        m_jobs->adoptLive();
        checkStateModes();
        applySettings();
        m_notifier.ready("connecting to " + m_profile.platformUrl);
        m_link->start();
        // A handler that throws is a bug; it must not take the daemon (and
        // every shell and job it follows) down: log it and carry on.
        for (;;) {
            try {
                m_ioc.run();
                break;
            } catch (const std::exception& e) {
                log::error(std::string("internal error, continuing: ") + e.what());
            }
        }
        log::notice("hpc-daemond stopped");
    }

private:
    /// SIGTERM drains when --sigterm-drain-seconds is set; a second SIGTERM,
    /// or SIGINT, stops at once.
    void waitForSignal() {
        m_signals.async_wait([this](boost::system::error_code ec, int sig) {
            if (ec) return;
            if (sig == SIGTERM && m_options.sigtermDrain.count() > 0 && !m_draining) {
                drain(m_options.sigtermDrain, "SIGTERM");
                waitForSignal();
                return;
            }
            stop(sig == SIGINT ? "SIGINT" : "SIGTERM");
        });
    }

    std::unique_ptr<Scheduler> makeScheduler(const std::string& backend) {
        if (backend == "slurm") {
            SlurmConfig c;
            c.minInterval = m_options.jobPollMin;
            c.maxInterval = std::max(m_options.jobPollMin, m_options.jobPollMax);
            c.commandTimeout = m_options.slurmCommandTimeout;
            return std::make_unique<SlurmScheduler>(m_ioc, c);
        }
        LocalConfig c;
        if (m_systemd) {
            c.systemdRun = findInPath("systemd-run");
            if (c.systemdRun.empty()) log::warning("systemd-run is missing: local jobs run without a systemd scope");
        }
        return std::make_unique<LocalScheduler>(m_ioc, c);
    }

    /// Where jobs' directories go: the profile's job directory, else the
    /// first allowed directory, else $HOME.
    fs::path jobWorkdir() const {
        if (!m_profile.jobWorkdir.empty()) return m_profile.jobWorkdir;
        if (!m_profile.allowedDirs.empty()) return m_profile.allowedDirs.front();
        const char* home = std::getenv("HOME");
        return home ? home : "/";
    }

    std::string mode() const { return m_systemd ? "systemd" : "nohup"; }

    fs::path fallbackCwd() const {
        if (!m_profile.jobWorkdir.empty()) return m_profile.jobWorkdir;
        const char* home = std::getenv("HOME");
        return home ? home : "/";
    }

    /// Where file.* may read and write: the same allowed directories as
    /// every other write; never the state directory (the API key) nor the
    /// user's runtime directory, which commands do not see either.
    files::FilePolicy filePolicy() const {
        files::FilePolicy p;
        p.allowed = AllowedDirs(m_profile.allowedDirs).dirs();
        for (const fs::path& dir : {m_store.dir(), fs::path(envOr("XDG_RUNTIME_DIR"))}) {
            std::error_code ec;
            fs::path resolved = dir.empty() ? fs::path() : fs::weakly_canonical(dir, ec);
            if (!ec && !resolved.empty()) p.hidden.push_back(resolved);
        }
        p.base = p.allowed.empty() ? fallbackCwd() : p.allowed.front();
        p.home = envOr("HOME", "/");
        p.umask = files::currentUmask();
        return p;
    }

    static std::string envOr(const char* name, const char* fallback = "") {
        const char* v = std::getenv(name);
        return v && *v ? v : fallback;
    }

    void audit(const Store::AuditEntry& e) {
        try {
            m_store.addAudit(e);
        } catch (const std::exception& ex) {
            log::error(std::string("cannot write the audit log: ") + ex.what());
        }
    }

    PtyLimits ptyLimits() const {
        PtyLimits limits;
        limits.maxSessions = m_maxShells ? *m_maxShells : static_cast<std::size_t>(m_profile.maxSessions);
        limits.idleTimeout = std::chrono::seconds(m_profile.idleTimeoutSeconds);
        limits.detachGrace = m_options.ptyDetachGrace;
        return limits;
    }

    /// Builds the confinement (mount namespace, Landlock, TMPDIR) and the
    /// advisory shell wrappers from the profile's allowed directories (the
    /// same list the cwd check uses) and hands them to every place that
    /// starts a process for an agent.
    void applyConfinement() {
        // The advisory layer for interactive bash, from the same list; first,
        // so the namespace can show it while hiding the rest of the state.
        m_shellGuard.clear();
        if (!m_profile.allowedDirs.empty()) {
            fs::path guard = m_store.dir() / (m_profile.daemonId + ".guard.bash");
            try {
                writeShellGuard(guard, m_profile.allowedDirs);
                m_shellGuard = guard;
            } catch (const std::exception& e) {
                log::warning(std::string("shell wrappers are off: ") + e.what());
            }
        }
        Confinement::Params params;
        params.reaperProgram = Confinement::findProgram();
        if (!m_profile.allowedDirs.empty()) {
            fs::path tmp = m_store.dir() / "tmp" / m_profile.daemonId;
            ensurePrivateDir(tmp.parent_path());
            ensurePrivateDir(tmp);
            params.allowedDirs = m_profile.allowedDirs;
            params.privateTmp = tmp.string();
            params.stateDir = m_store.dir().string();
            if (!m_shellGuard.empty()) params.shown.push_back(m_shellGuard.string());
            if (const char* runtime = std::getenv("XDG_RUNTIME_DIR"); runtime && *runtime) params.runtimeDir = runtime;
            params.landlock = !m_options.noLandlock;
            if (!m_options.noMountNamespace) params.confineProgram = Confinement::findProgram();
        }
        std::vector<std::string> notes;
        m_confinement = Confinement::build(params, notes);
        if (m_confinement->active()) {
            std::string layers;
            for (const auto& l : m_confinement->layers()) layers += (layers.empty() ? "" : ", ") + l;
            log::info("commands are confined by " + layers + ": writes only under " +
                      AllowedDirs(m_profile.allowedDirs).describe() + " and " + params.privateTmp);
        }
        if (m_options.noLandlock) notes.push_back("Landlock is disabled by --no-landlock");
        if (m_options.noMountNamespace) notes.push_back("the mount namespace is disabled by --no-mount-namespace");
        if (!m_profile.allowedDirs.empty() && !m_confinementWarned)
            for (const auto& n : notes) log::warning("confinement: " + n);
        m_confinementWarned = !notes.empty();
        m_jobs->setPolicy(JobPolicy{AllowedDirs(m_profile.allowedDirs), jobWorkdir(), m_confinement});
        m_dispatcher->setConfinement(m_confinement);
        m_dispatcher->setShellGuard(m_shellGuard);
        m_files->setPolicy(filePolicy());
    }

    /// The state directory holds the API key: group or other access on it or
    /// anything in it (a chmod by hand, a restored backup, a umask) is taken
    /// off at start and every few minutes, with a warning.
    void checkStateModes() {
        for (const auto& r : repairPrivateModes(m_store.dir()))
            log::warning("state directory " + m_store.dir().string() + ": " + r + "; set back to owner-only");
        m_stateCheck.expires_after(m_options.stateCheckInterval);
        m_stateCheck.async_wait([this](boost::system::error_code ec) {
            if (!ec && !m_stopping) checkStateModes();
        });
    }

    /// Retention and size caps (a prune pass now and on a timer) and the
    /// shell limit.
    void applySettings() {
        try {
            auto settings = loadSettings(m_store, m_profile.daemonId);
            m_stateKeeper->apply(settings);
            m_maxShells = settings.maxShells;
            m_pty->setLimits(ptyLimits());
        } catch (const std::exception& e) {
            log::error(std::string("cannot read the settings; keeping the previous ones: ") + e.what());
        }
    }

    void warnIfUnrestricted() {
        if (m_profile.allowedDirs.empty())
            log::warning("daemon " + m_profile.daemonId + " has no allowed directories: commands may write anywhere");
    }

    void startBus() {
        if (m_options.busAddress == "none") return;
        std::string address = m_options.busAddress;
        // Started by D-Bus activation: serve on the bus that started us.
        if (const char* starter = std::getenv("DBUS_STARTER_ADDRESS"); address.empty() && starter && *starter)
            address = starter;
        if (address.empty()) address = bus::sessionBusAddress();
        if (address.empty()) {
            m_privateBus = std::make_unique<PrivateBus>(m_store.dir(), m_profile.daemonId);
            address = m_privateBus->address();
        }
        Controls controls;
        controls.status = [this] { return status(); };
        controls.stop = [this] {
            // Reply first: stop on the next turn of the loop.
            asio::post(m_ioc, [this] { stop("a D-Bus Stop call"); });
        };
        controls.drain = [this](std::chrono::milliseconds limit) {
            asio::post(m_ioc, [this, limit] { drain(limit, "a D-Bus Drain call"); });
        };
        controls.reload = [this] { return reload(); };
        controls.sessions = [this] { return m_pty->list(); };
        controls.jobs = [this] { return m_jobs->recent(1000); };
        m_bus = std::make_unique<BusService>(m_ioc, address, m_profile.daemonId, std::move(controls));
    }

    std::unique_ptr<Link> makeLink() {
        std::string urlError;
        auto url = parseUrl(m_profile.platformUrl, &urlError);
        if (!url)
            throw Error(ErrorCode::BadRequest,
                        "profile " + m_profile.daemonId + " has a bad platform URL: " + urlError);
        LinkConfig lc;
        lc.url = *url;
        lc.daemonId = m_profile.daemonId;
        lc.apiKey = m_profile.apiKey;
        lc.caFile = m_profile.caFile;
        lc.route = resolveProxyRoute(m_profile.proxy, lc.url);
        lc.heartbeat = m_options.heartbeat;
        lc.backoffCap = m_options.reconnectMax;
        lc.unauthorizedDelay = m_options.unauthorizedDelay;
        lc.hello = {{"version", HPC_VERSION},
                    {"v", protocol::kVersion},
                    {"hostname", hostName()},
                    {"cluster_name", m_profile.clusterName},
                    {"scheduler", std::string(m_jobs->backend())},
                    {"pid", static_cast<std::int64_t>(::getpid())},
                    {"capabilities", boost::json::array{"exec", "exec_stream", "pty", "jobs", "job_logs", "files"}}};
        LinkHandlers handlers;
        handlers.onText = [this](std::string_view t) { m_dispatcher->onText(t); };
        handlers.onBinary = [this](std::string_view d) { m_dispatcher->onBinary(d); };
        handlers.onState = [this](LinkState s) { onLinkState(s); };
        return std::make_unique<Link>(m_ioc, std::move(lc), std::move(handlers));
    }

    void onLinkState(LinkState s) {
        std::string state(toString(s));
        log::debug("link state: " + state);
        m_notifier.status("link " + state + " (" + m_profile.platformUrl + ")");
        if (m_bus) m_bus->linkStateChanged(state);
        if (s == LinkState::Connected) {
            m_metrics.linkConnected();
            m_jobs->outbox().connected();
            // A platform starts each connection with no warning: say it again.
            if (std::string w = m_stateKeeper->warning(); !w.empty()) sendWarning(std::move(w));
        } else {
            m_jobs->outbox().disconnected();
            // The platform has ended their channels; an upload's partial file stays for a resume.
            m_files->closeAll();
            // The platform has ended these streams for their agents, which resume from their last byte.
            m_jobs->logs().closeAll();
            // Like ssh: a command whose output has nowhere to go is killed.
            m_exec.streams().closeAll();
            // Shells wait for their agents to attach again (pty.attach), for the grace period.
            m_pty->detachAll();
        }
    }

    /// `daemon.warning` to the platform, which shows it in its daemons list:
    /// on every change ("" when it clears) and on every (re)connect.
    void sendWarning(std::string warning) {
        if (!m_link || m_link->state() != LinkState::Connected) return;  // sent on connect
        // The protocol's limit is 4096 bytes: cut on a character boundary below it.
        constexpr std::size_t kMaxBytes = 4000;
        if (warning.size() > kMaxBytes) {
            std::size_t cut = kMaxBytes;
            while (cut > 0 && (static_cast<unsigned char>(warning[cut]) & 0xC0) == 0x80) --cut;
            warning = warning.substr(0, cut) + "…";
        }
        m_link->sendText(protocol::makeMessage("daemon.warning", "warn-" + std::to_string(++m_warningSeq),
                                               {{"warning", std::move(warning)}}));
    }

    void reply(std::string text) {
        if (m_link && !m_link->sendText(std::move(text)))
            log::warning("a reply was dropped: the link is down or its queue is full");
    }

    DaemonStatus status() const {
        DaemonStatus s;
        s.daemonId = m_profile.daemonId;
        s.version = HPC_VERSION;
        s.pid = static_cast<unsigned>(::getpid());
        s.mode = mode();
        s.modeReason = !m_options.modeReason.empty() ? m_options.modeReason
                       : m_systemd                   ? "started by systemd"
                                                     : "started directly, not by systemd";
        s.linkState = m_link ? std::string(toString(m_link->state())) : "connecting";
        s.connectedSince = m_link ? m_link->connectedSince() : 0;
        s.linkProblem = m_link ? m_link->problem() : std::string();
        s.platformUrl = m_profile.platformUrl;
        s.route = m_link ? m_link->route() : std::string();
        s.scheduler = std::string(m_jobs->backend());
        s.schedulerReason = m_schedulerReason;
        s.allowedDirs = m_profile.allowedDirs;
        if (!m_profile.allowedDirs.empty()) s.guardLayers = {"cwd-check"};
        if (!m_shellGuard.empty()) s.guardLayers.push_back("shell-wrappers (bash, advisory)");
        for (auto& layer : m_confinement->layers()) s.guardLayers.push_back(layer);
        s.processWatch = ExitWatch::method();
        s.runningExecs = static_cast<unsigned>(m_exec.running());
        s.activeSessions = static_cast<unsigned>(m_pty->count());
        s.activeJobs = static_cast<unsigned>(m_jobs->active());
        s.pendingCallbacks = static_cast<unsigned>(m_jobs->pendingCallbacks());
        s.draining = m_draining;
        s.busAddress = m_bus ? m_bus->address() : "";
        s.startedAt = m_startedAt;
        s.stateBytes = m_stateKeeper->stateBytes();
        s.stateMaxBytes = m_stateKeeper->settings().stateMaxBytes;
        s.stateWarning = m_stateKeeper->warning();
        if (const auto& last = m_stateKeeper->lastPrune()) {
            s.lastPruneAt = last->finishedAt;
            s.lastPruneAuditRows = last->auditRows;
            s.lastPruneJobs = last->jobs;
            s.lastPruneSummary = last->summary();
            s.lastPruneJobDirs = last->jobDirs;
            s.lastPruneJobDirBytes = last->jobDirBytes;
        }
        s.jobDirsRemoved = m_stateKeeper->jobDirsRemoved();
        s.jobDirBytesRemoved = m_stateKeeper->jobDirBytesRemoved();
        s.metrics = m_metrics.snapshot(m_pty->opened());
        return s;
    }

    bool reload() {
        Profile fresh = selectProfile(m_store, m_profile.daemonId);
        // A link the platform refused waits for a reload: try it again.
        bool relink = fresh.platformUrl != m_profile.platformUrl || !(fresh.apiKey == m_profile.apiKey) ||
                      fresh.caFile != m_profile.caFile || fresh.proxy != m_profile.proxy ||
                      m_link->state() == LinkState::Unauthorized;
        m_profile = std::move(fresh);
        m_dispatcher->setPolicy(AllowedDirs(m_profile.allowedDirs), fallbackCwd());
        m_pty->setLimits(ptyLimits());
        applyConfinement();
        warnIfUnrestricted();
        applySettings();
        log::notice("profile reloaded: allowed directories " + AllowedDirs(m_profile.allowedDirs).describe() +
                    (relink ? "; reconnecting with the new platform settings" : ""));
        if (relink) {
            auto link = makeLink();  // a bad proxy URL throws here, keeping the old link
            m_link->stop();
            m_link = std::move(link);
            m_link->start();
        }
        return relink;
    }

    /// Refuses new work, gives running commands until `limit` and pending
    /// callbacks while the link is up, then stops. Jobs keep running: the
    /// next start follows them.
    void drain(std::chrono::milliseconds limit, const std::string& why) {
        if (m_stopping || m_draining) return;
        m_draining = true;
        m_drainDeadline = std::chrono::steady_clock::now() + limit;
        m_dispatcher->setDraining(true);
        log::notice("draining (" + why + "): new work is refused; " + std::to_string(m_exec.running()) +
                    " running commands get up to " + std::to_string(limit.count()) + " ms, then the daemon stops");
        m_notifier.status("draining: waiting for running commands, then stopping");
        if (m_bus) m_bus->drainingChanged();
        checkDrained();
    }

    void checkDrained() {
        if (m_stopping) return;
        bool linkUp = m_link && m_link->state() == LinkState::Connected;
        if (m_exec.running() == 0 && (m_jobs->pendingCallbacks() == 0 || !linkUp)) {
            stop("drained");
            return;
        }
        if (std::chrono::steady_clock::now() >= m_drainDeadline) {
            stop("the drain timeout passed with " + std::to_string(m_exec.running()) + " commands running and " +
                 std::to_string(m_jobs->pendingCallbacks()) + " job callbacks undelivered (kept for the next start)");
            return;
        }
        // Polled: commands end and callbacks are acknowledged in several services.
        m_drainTimer.expires_after(std::chrono::milliseconds(100));
        m_drainTimer.async_wait([this](boost::system::error_code ec) {
            if (!ec) checkDrained();
        });
    }

    void stop(const std::string& why) {
        if (m_stopping) return;
        m_stopping = true;
        m_drainTimer.cancel();
        log::notice("stopping (" + why + ")");
        m_notifier.stopping();
        m_stateKeeper->stop();
        m_exec.killAll();
        m_pty->closeAll();
        m_link->stop();
        m_signals.cancel();
        // Let the close frame go out, but never wait on a dead peer for long.
        m_shutdownTimer.expires_after(std::chrono::milliseconds(300));
        m_shutdownTimer.async_wait([this](boost::system::error_code) { m_ioc.stop(); });
    }

    asio::io_context& m_ioc;
    DaemonOptions m_options;
    Store m_store;
    Profile m_profile;
    // Destroyed after everything below: while the pid file exists and is
    // locked, ctl waits and no second daemon starts on the same bus socket.
    std::unique_ptr<InstanceLock> m_instanceLock;
    ExecService m_exec;
    Notifier m_notifier;
    asio::signal_set m_signals;
    asio::steady_timer m_shutdownTimer;
    asio::steady_timer m_drainTimer;
    std::chrono::steady_clock::time_point m_drainDeadline;
    asio::steady_timer m_stateCheck;
    std::unique_ptr<StateKeeper> m_stateKeeper;  ///< retention: prunes state.db on a timer
    std::shared_ptr<const Confinement> m_confinement = std::make_shared<Confinement>();
    fs::path m_shellGuard;
    bool m_confinementWarned = false;
    std::unique_ptr<Dispatcher> m_dispatcher;
    std::unique_ptr<PtyService> m_pty;
    std::optional<unsigned> m_maxShells;  ///< the max_shells setting, when set
    std::unique_ptr<JobService> m_jobs;
    std::unique_ptr<FileService> m_files;
    std::unique_ptr<PrivateBus> m_privateBus;
    std::unique_ptr<BusService> m_bus;
    std::unique_ptr<Link> m_link;
    DaemonMetrics m_metrics;
    double m_startedAt = 0;
    bool m_systemd = false;
    std::string m_schedulerReason;
    bool m_stopping = false;
    bool m_draining = false;
    std::uint64_t m_warningSeq = 0;
};

}  // namespace

int runDaemon(const DaemonOptions& options) {
    asio::io_context ioc(1);
    Daemon daemon(ioc, options);
    daemon.run();
    return 0;
}

}  // namespace hpc::daemon
