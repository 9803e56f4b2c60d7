// hpc-agent events: job callbacks as they arrive, one JSON object a line.
#include "commands.hpp"

#include <iostream>
#include <memory>
#include <set>

namespace hpc::agent {
namespace {

struct EventsOptions {
    PlatformOptions platform;
    int count = 0;
    double timeout = 0;
    bool noAck = false;
};

int runEvents(const EventsOptions& o) {
    auto limit = o.timeout > 0 ? std::chrono::milliseconds(static_cast<long long>(o.timeout * 1000))
                               : std::chrono::milliseconds(std::chrono::hours(24 * 365));
    std::set<std::string> printed;  // across reconnections: an unacknowledged one comes again
    return runReconnecting(o.platform, std::nullopt, 0, [&o, limit, &printed](AgentClient& client) {
        while (o.count == 0 || printed.size() < static_cast<std::size_t>(o.count)) {
            auto cb = client.nextCallback(limit);
            if (!cb) return 0;
            if (printed.insert(cb->callbackId).second) {
                boost::json::object line = cb->raw;
                line["daemon_id"] = cb->daemonId;
                std::cout << boost::json::serialize(line) << "\n" << std::flush;
            }
            if (!o.noAck) client.ackCallback(cb->callbackId);
        }
        return 0;
    });
}

}  // namespace

Command addEventsCommand(CLI::App& parent) {
    auto o = std::make_shared<EventsOptions>();
    auto* app = parent.add_subcommand(
        "events", "Print job callbacks as they arrive (those missed while offline first), one JSON object a line");
    app->add_option("--count", o->count, "stop after this many")->check(CLI::PositiveNumber);
    app->add_option("--timeout", o->timeout, "stop after this many seconds without one")->check(CLI::PositiveNumber);
    app->add_flag("--no-ack", o->noAck, "do not acknowledge them (they are sent again next time)");
    addPlatformOptions(app, o->platform);
    return Command{app, [o] { return runEvents(*o); }};
}

}  // namespace hpc::agent
