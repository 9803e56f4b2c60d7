// hpc-daemond: the daemon. See `hpc-daemond --help`.
#include "daemon.hpp"
#include "errors.hpp"
#include "log.hpp"
#include "process.hpp"
#include "util.hpp"

#include <signal.h>
#include <CLI/CLI.hpp>

#include <iostream>

int main(int argc, char** argv) try {
    hpc::adoptProgramName(argc > 0 ? argv[0] : nullptr);
    CLI::App app{
        "hpc-daemond: connects this machine to an agent platform over an outbound TLS WebSocket and runs the\n"
        "agent's commands inside the allowed directories. Reads its profile (made by `hpc-daemonctl setup`)\n"
        "from $HPC_DAEMON_HOME/state.db (default ~/.hpc_daemon). Usually started by systemd or hpc-daemonctl.\n"
        "Exit codes: 0 clean stop (SIGTERM/SIGINT), 1 bad profile or state, 2 usage."};
    app.set_version_flag("--version", "hpc-daemond " HPC_VERSION);
    hpc::daemon::DaemonOptions options;
    double heartbeatSeconds = 20;
    double reconnectMaxSeconds = 30;
    double unauthorizedSeconds = 0;
    std::string logFile;
    bool verbose = false;
    app.add_option("--daemon-id", options.daemonId, "profile to run (default: the only one)");
    app.add_option("--heartbeat-seconds", heartbeatSeconds, "ping period; a link silent for 3 periods is replaced")
        ->check(CLI::Range(0.05, 3600.0))
        ->capture_default_str();
    app.add_option("--reconnect-max-seconds", reconnectMaxSeconds, "cap of the reconnect backoff")
        ->check(CLI::Range(0.1, 3600.0))
        ->capture_default_str();
    app.add_option("--unauthorized-retry-seconds", unauthorizedSeconds,
                   "after the platform refused the API key or did not know the daemon id (a revoked key, a deleted "
                   "registration): retry after this long, plus up to as much jitter; 0: do not retry until a reload "
                   "(hpc-daemonctl setup or rotate-key) or a restart")
        ->check(CLI::Range(0.0, 86400.0))
        ->capture_default_str();
    app.add_option("--log-file", logFile, "log here (0600) instead of stderr/journald");
    app.add_option("--bus-address", options.busAddress,
                   "D-Bus address to serve org.tiptree.HpcDaemon on; default: the session bus, or without one a "
                   "private bus at $HPC_DAEMON_HOME/<id>.bus; \"none\" for no bus");
    app.add_option("--mode-reason", options.modeReason, "why this mode was chosen (shown by hpc-daemonctl status)");
    double detachGrace = 30;
    app.add_option("--pty-detach-grace-seconds", detachGrace,
                   "how long a shell outlives the agent that opened it before it is hung up")
        ->check(CLI::Range(0.0, 86400.0))
        ->capture_default_str();
    double pollMin = 3, pollMax = 60;
    app.add_option("--job-poll-min-seconds", pollMin,
                   "SLURM monitor: interval right after a submit or a change (one squeue per cycle; at least 1 s, "
                   "so the controller is never polled faster)")
        ->check(CLI::Range(1.0, 3600.0))
        ->capture_default_str();
    app.add_option("--job-poll-max-seconds", pollMax, "SLURM monitor: the interval grows to this while nothing changes")
        ->check(CLI::Range(1.0, 86400.0))
        ->capture_default_str();
    double slurmTimeout = 30;
    app.add_option("--slurm-command-timeout-seconds", slurmTimeout,
                   "how long sbatch, squeue, scontrol and sacct may take before they are killed and retried")
        ->check(CLI::Range(1.0, 3600.0))
        ->capture_default_str();
    double jobIoTimeout = 30;
    app.add_option("--job-io-timeout-seconds", jobIoTimeout,
                   "how long a read or write in a job directory (often NFS or Lustre) may take before the request "
                   "that needs it is answered with an error; the daemon never waits on it meanwhile")
        ->check(CLI::Range(0.1, 3600.0))
        ->capture_default_str();
    double sigtermDrain = 0;
    app.add_option("--sigterm-drain-seconds", sigtermDrain,
                   "make SIGTERM a graceful drain (as hpc-daemonctl stop --drain): new work is refused and running "
                   "commands get this long to finish before the daemon stops; 0 stops at once. Under systemd keep it "
                   "a few seconds below the unit's TimeoutStopSec")
        ->check(CLI::Range(0.0, 86400.0))
        ->capture_default_str();
    app.add_flag("--no-landlock", options.noLandlock,
                 "do not confine commands with Landlock even where the kernel supports it (diagnosis)");
    double stateCheck = 300;
    app.add_option("--state-check-seconds", stateCheck,
                   "how often the state directory's modes are checked and group/other access taken off")
        ->check(CLI::Range(1.0, 86400.0))
        ->capture_default_str();
    app.add_flag("--no-mount-namespace", options.noMountNamespace,
                 "do not run commands in a mount namespace (read-only outside the allowed directories, the "
                 "daemon's state hidden) even where user namespaces are available (diagnosis)");
    app.add_flag("-v,--verbose", verbose, "log debug lines too");
    CLI11_PARSE(app, argc, argv);

    auto ms = [](double s) { return std::chrono::milliseconds(static_cast<long long>(s * 1000)); };
    options.heartbeat = ms(heartbeatSeconds);
    options.reconnectMax = ms(reconnectMaxSeconds);
    options.unauthorizedDelay = ms(unauthorizedSeconds);
    options.ptyDetachGrace = std::chrono::seconds(static_cast<long long>(detachGrace));
    options.stateCheckInterval = std::chrono::seconds(static_cast<long long>(stateCheck));
    options.jobPollMin = ms(pollMin);
    options.jobPollMax = ms(pollMax);
    options.slurmCommandTimeout = ms(slurmTimeout);
    options.jobIoTimeout = ms(jobIoTimeout);
    options.sigtermDrain = ms(sigtermDrain);
    ::signal(SIGPIPE, SIG_IGN);
    try {
        hpc::log::init(logFile, verbose ? hpc::log::Level::Debug : hpc::log::Level::Info);
        // Under systemd, every instance's lines also carry the template's name,
        // so the literal `journalctl --user -u hpc-daemon` finds them.
        if (std::getenv("INVOCATION_ID")) hpc::log::addJournalFields("hpc-daemond", {"USER_UNIT=hpc-daemon.service"});
        // A shell is two descriptors (its terminal and its audit pipe), a
        // transfer or a streamed command more; the programs it starts get the
        // account's usual limit back.
        if (auto [before, after] = hpc::raiseOpenFileLimit(); after > before)
            hpc::log::debug("open-file limit raised from " + std::to_string(before) + " to " + std::to_string(after));
        return hpc::daemon::runDaemon(options);
    } catch (const std::exception& e) {
        hpc::log::error(e.what());
        // With a log file the terminal would otherwise see nothing.
        if (!logFile.empty()) std::cerr << "hpc-daemond: " << e.what() << "\n";
        return 1;
    }
} catch (const std::exception& e) {
    // Only a bug in the option table, or memory exhausted, reaches here.
    std::cerr << "hpc-daemond: " << e.what() << "\n";
    return 1;
}
