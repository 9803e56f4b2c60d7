// Connecting again for the hpc-agent commands that wait (wait, events).
#include "commands.hpp"

#include "backoff.hpp"
#include "errors.hpp"

#include <iostream>
#include <thread>

namespace hpc::agent {

int runReconnecting(const PlatformOptions& options, std::optional<std::chrono::steady_clock::time_point> deadline,
                    int timeoutCode, const std::function<int(AgentClient&)>& body) {
    Backoff backoff(std::chrono::seconds(1), std::chrono::seconds(30), std::chrono::milliseconds(500));
    bool connectedOnce = false;
    // Before the first connection, a few tries: a platform failing over or
    // restarting cuts a handshake short, but a wrong URL should fail soon.
    constexpr int kFirstTries = 3;
    int failedFirst = 0;
    for (;;) {
        try {
            auto client = AgentClient::connect(agentOptions(options));
            connectedOnce = true;
            backoff.reset();
            return body(*client);
        } catch (const Error& e) {
            if (e.code() != ErrorCode::Unavailable || (!connectedOnce && ++failedFirst >= kFirstTries)) throw;
            auto delay = backoff.next();
            if (deadline && std::chrono::steady_clock::now() + delay >= *deadline) return timeoutCode;
            std::cerr << "hpc-agent: " << e.what() << "; reconnecting in " << delay.count() << " ms\n";
            std::this_thread::sleep_for(delay);
        }
    }
}

}  // namespace hpc::agent
