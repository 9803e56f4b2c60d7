#include "daemon.hpp"

#include "dispatch.hpp"
#include "errors.hpp"
#include "exec.hpp"
#include "link.hpp"
#include "log.hpp"
#include "util.hpp"

#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>

namespace asio = boost::asio;

namespace hpc::daemon {
namespace {

std::string hostName() {
    char buf[256] = {};
    ::gethostname(buf, sizeof buf - 1);
    return buf;
}

}  // namespace

int runDaemon(const DaemonOptions& options) {
    Store store = Store::open();
    Profile profile = selectProfile(store, options.daemonId);
    std::string urlError;
    auto url = parseUrl(profile.platformUrl, &urlError);
    if (!url) throw Error(ErrorCode::BadRequest, "profile " + profile.daemonId + " has a bad platform URL: " + urlError);

    AllowedDirs dirs(profile.allowedDirs);
    if (dirs.unrestricted())
        log::warning("daemon " + profile.daemonId + " has no allowed directories: commands may write anywhere");
    const char* home = std::getenv("HOME");
    std::filesystem::path fallbackCwd = !profile.jobWorkdir.empty() ? profile.jobWorkdir : (home ? home : "/");

    asio::io_context ioc(1);
    ExecService exec(ioc);

    LinkConfig lc;
    lc.url = *url;
    lc.daemonId = profile.daemonId;
    lc.apiKey = profile.apiKey;
    lc.caFile = profile.caFile;
    lc.heartbeat = options.heartbeat;
    lc.backoffCap = options.reconnectMax;
    lc.unauthorizedDelay = options.unauthorizedDelay;
    lc.hello = {{"version", HPC_VERSION},
                {"v", protocol::kVersion},
                {"hostname", hostName()},
                {"cluster_name", profile.clusterName},
                {"pid", static_cast<std::int64_t>(::getpid())},
                {"capabilities", boost::json::array{"exec"}}};

    std::unique_ptr<Link> link;
    Dispatcher dispatcher(exec, dirs, fallbackCwd, [&link](std::string text) {
        if (link && !link->sendText(std::move(text)))
            log::warning("a reply was dropped: the link is down or its queue is full");
    });
    LinkHandlers handlers;
    handlers.onText = [&dispatcher](std::string_view t) { dispatcher.onText(t); };
    handlers.onBinary = [&dispatcher](std::string_view d) { dispatcher.onBinary(d); };
    handlers.onState = [](LinkState s) { log::debug(std::string("link state: ") + std::string(toString(s))); };
    link = std::make_unique<Link>(ioc, std::move(lc), std::move(handlers));

    asio::signal_set signals(ioc, SIGINT, SIGTERM);
    asio::steady_timer shutdownTimer(ioc);
    signals.async_wait([&](boost::system::error_code ec, int sig) {
        if (ec) return;
        log::notice(std::string("received ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") + ": shutting down");
        exec.killAll();
        link->stop();
        // Let the close frame go out, but never wait on a dead peer for long.
        shutdownTimer.expires_after(std::chrono::milliseconds(500));
        shutdownTimer.async_wait([&ioc](boost::system::error_code) { ioc.stop(); });
    });

    log::notice("hpc-daemond " HPC_VERSION " starting: daemon " + profile.daemonId + ", platform " + url->str() +
                ", allowed directories " + dirs.describe());
    link->start();
    ioc.run();
    log::notice("hpc-daemond stopped");
    return 0;
}

}  // namespace hpc::daemon
