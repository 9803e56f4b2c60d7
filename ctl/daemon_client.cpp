#include "daemon_client.hpp"

#include "bus_name.hpp"
#include "errors.hpp"

#include <hpc_daemon_proxy.h>
#include <sdbus-c++/sdbus-c++.h>

namespace json = boost::json;

namespace hpc::ctl {
namespace {

// NOLINTNEXTLINE(cppcoreguidelines-virtual-class-destructor): final: never a base class (clang-tidy 15+ exempts it)
class Proxy final : public sdbus::ProxyInterfaces<org::tiptree::HpcDaemon_proxy> {
public:
    Proxy(sdbus::IConnection& connection, std::string name)
        : ProxyInterfaces(connection, std::move(name), bus::kObjectPath) {
        registerProxy();
    }
    ~Proxy() { unregisterProxy(); }

private:
    void onLinkStateChanged(const std::string&) override {}
    void onJobChanged(const std::string&, const std::string&) override {}
};

/// D-Bus errors as sentences: ours by the shared table, the bus's own by meaning.
[[noreturn]] void rethrow(const sdbus::Error& e, const std::string& what) {
    const std::string& name = e.getName();
    if (auto code = errorCodeFromDbusName(name)) throw Error(*code, what + ": " + e.getMessage());
    if (name == "org.freedesktop.DBus.Error.ServiceUnknown" || name == "org.freedesktop.DBus.Error.NameHasNoOwner" ||
        name == "org.freedesktop.DBus.Error.NoReply" || name == "org.freedesktop.DBus.Error.Disconnected")
        throw Error(ErrorCode::Unavailable, what + ": the daemon is not answering (it may have just stopped)");
    if (name == "org.freedesktop.DBus.Error.Timeout" || name == "org.freedesktop.DBus.Error.TimedOut")
        throw Error(ErrorCode::Timeout, what + ": the daemon did not answer in time");
    throw Error(ErrorCode::Internal, what + ": " + e.getMessage());
}

json::value toJson(const sdbus::Variant& v) {
    auto type = v.peekValueType();
    if (type == "s") return json::value(v.get<std::string>());
    if (type == "u") return json::value(v.get<uint32_t>());
    if (type == "d") return json::value(v.get<double>());
    if (type == "b") return json::value(v.get<bool>());
    if (type == "as") {
        json::array a;
        for (const auto& s : v.get<std::vector<std::string>>()) a.emplace_back(s);
        return a;
    }
    if (type == "a{st}") {
        json::object o;
        for (const auto& [k, n] : v.get<std::map<std::string, std::uint64_t>>()) o[k] = n;
        return o;
    }
    return json::value(nullptr);
}

bool nameHasOwner(sdbus::IConnection& connection, const std::string& name) {
    auto dbus = sdbus::createProxy(connection, "org.freedesktop.DBus", "/org/freedesktop/DBus");
    bool owned = false;
    dbus->callMethod("NameHasOwner").onInterface("org.freedesktop.DBus").withArguments(name).storeResultsTo(owned);
    return owned;
}

}  // namespace

struct DaemonClient::Impl {
    std::unique_ptr<sdbus::IConnection> connection;
    std::unique_ptr<Proxy> proxy;
};

DaemonClient::DaemonClient(std::unique_ptr<Impl> impl, std::string address)
    : m_impl(std::move(impl)), m_address(std::move(address)) {}
DaemonClient::~DaemonClient() = default;

std::unique_ptr<DaemonClient> DaemonClient::find(const std::filesystem::path& home, const std::string& daemonId) {
    std::string name = bus::busNameFor(daemonId);
    std::vector<std::string> candidates;
    if (auto session = bus::sessionBusAddress(); !session.empty()) candidates.push_back(session);
    std::error_code ec;
    if (std::filesystem::exists(bus::privateBusSocket(home, daemonId), ec))
        candidates.push_back(bus::privateBusAddress(home, daemonId));
    for (const auto& address : candidates) {
        try {
            auto impl = std::make_unique<Impl>();
            impl->connection = sdbus::createSessionBusConnectionWithAddress(address);
            impl->connection->setMethodCallTimeout(std::chrono::seconds(10));
            if (!nameHasOwner(*impl->connection, name)) continue;
            impl->proxy = std::make_unique<Proxy>(*impl->connection, name);
            return std::unique_ptr<DaemonClient>(new DaemonClient(std::move(impl), address));
        } catch (const sdbus::Error&) {
            // A stale private socket or an unreachable bus: try the next one.
        }
    }
    return nullptr;
}

json::object DaemonClient::status() {
    try {
        json::object out;
        for (const auto& [key, value] : m_impl->proxy->GetStatus()) out[key] = toJson(value);
        return out;
    } catch (const sdbus::Error& e) {
        rethrow(e, "status");
    }
}

void DaemonClient::setTimeout(std::chrono::milliseconds timeout) {
    m_impl->connection->setMethodCallTimeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
}

void DaemonClient::stop() {
    try {
        m_impl->proxy->Stop();
    } catch (const sdbus::Error& e) {
        rethrow(e, "stop");
    }
}

void DaemonClient::drain(std::chrono::seconds limit) {
    try {
        m_impl->proxy->Drain(static_cast<double>(limit.count()));
    } catch (const sdbus::Error& e) {
        rethrow(e, "drain");
    }
}

json::array DaemonClient::jobs() {
    try {
        json::array out;
        for (const auto& j : m_impl->proxy->ListJobs()) {
            int exitCode = j.get<6>();
            out.push_back(json::object{{"job_id", j.get<0>()},
                                       {"state", j.get<1>()},
                                       {"backend", j.get<2>()},
                                       {"scheduler_id", j.get<3>()},
                                       {"name", j.get<4>()},
                                       {"agent_id", j.get<5>()},
                                       {"exit_code", exitCode >= 0 ? json::value(exitCode) : json::value(nullptr)},
                                       {"submitted_at", j.get<7>()}});
        }
        return out;
    } catch (const sdbus::Error& e) {
        rethrow(e, "jobs");
    }
}

bool DaemonClient::reload() {
    try {
        return m_impl->proxy->Reload();
    } catch (const sdbus::Error& e) {
        rethrow(e, "reload");
    }
}

}  // namespace hpc::ctl
