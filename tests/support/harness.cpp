#include "harness.hpp"

#include "bus_name.hpp"
#include "errors.hpp"
#include "file_wire.hpp"
#include "platform_client.hpp"
#include "store.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <sdbus-c++/sdbus-c++.h>

#include <cstring>

#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace hpc::test {
std::string readFile(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void writeBytes(const fs::path& p, const std::string& data) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

std::string binaryData(std::size_t size, unsigned seed) {
    std::string out(size, '\0');
    std::mt19937_64 rng(seed);
    for (std::size_t i = 0; i < size; ++i) out[i] = static_cast<char>(i < 256 ? i : rng() & 0xff);
    return out;
}

std::vector<int> numbersAfter(const std::string& text, const std::string& prefix) {
    std::vector<int> out;
    for (auto p = text.find(prefix); p != std::string::npos; p = text.find(prefix, p + 1)) {
        std::size_t q = p + prefix.size();
        int n = 0;
        bool digits = false;
        while (q < text.size() && std::isdigit(static_cast<unsigned char>(text[q]))) {
            n = n * 10 + (text[q++] - '0');
            digits = true;
        }
        if (digits) out.push_back(n);
    }
    return out;
}

std::string sha256(std::string_view data) {
    files::Sha256 s;
    s.update(data);
    return s.hex();
}

std::map<int, std::string> parseFdListing(const std::string& listing) {
    std::map<int, std::string> fds;
    std::istringstream in(listing);
    for (std::string line; std::getline(in, line);) {
        while (!line.empty() && line.back() == '\r') line.pop_back();
        auto arrow = line.find(" -> ");
        if (arrow == std::string::npos) continue;
        auto start = line.rfind(' ', arrow - 1);
        // ls on a terminal quotes names with brackets: 'pipe:[123]'.
        std::string target = line.substr(arrow + 4);
        if (target.size() >= 2 && target.front() == '\'' && target.back() == '\'')
            target = target.substr(1, target.size() - 2);
        try {
            fds[std::stoi(line.substr(start + 1, arrow - start - 1))] = target;
        } catch (const std::exception&) {
        }
    }
    return fds;
}

std::string snapshotTree(const fs::path& dir) {
    std::string out;
    for (const auto& e : fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied)) {
        out += e.path().string();
        if (e.is_symlink())
            out += " -> " + fs::read_symlink(e.path()).string();
        else if (e.is_regular_file())
            out += " = " + readFile(e.path());
        out += "\n";
    }
    return out;
}

bool waitUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout,
               std::chrono::milliseconds interval) {
    auto deadline = Clock::now() + timeout;
    while (true) {
        if (pred()) return true;
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(interval);
    }
}

namespace {

/// Starts argv with pipes, writes what `feed` returns to its stdin (called
/// once the child runs), closes stdin, and collects stdout and stderr until
/// the child ends (bounded by `timeout`).
CommandResult runFed(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                     const std::function<std::string()>& feed, std::chrono::milliseconds timeout) {
    SpawnOptions o;
    o.argv = argv;
    o.envOverrides = env;
    o.in = Stdio::Pipe;
    o.out = Stdio::Pipe;
    o.err = Stdio::Pipe;
    o.dieWithParent = true;
    auto p = spawn(o);
    ChildGuard guard(p.pid);
    auto deadline = Clock::now() + timeout;
    std::string input = feed ? feed() : std::string();
    // Small inputs only: a pipe buffer holds them whole.
    if (!input.empty() && ::write(p.stdinFd.get(), input.data(), input.size()) != static_cast<ssize_t>(input.size()))
        throw std::runtime_error("short write to the child's stdin");
    p.stdinFd.reset();
    CommandResult r;
    pollfd fds[2] = {{p.stdoutFd.get(), POLLIN, 0}, {p.stderrFd.get(), POLLIN, 0}};
    std::string* sinks[2] = {&r.out, &r.err};
    int open = 2;
    while (open > 0 && Clock::now() < deadline) {
        if (::poll(fds, 2, 50) <= 0) continue;
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
            char buf[65536];
            ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
            if (n > 0) {
                sinks[i]->append(buf, static_cast<std::size_t>(n));
            } else if (n == 0 || errno != EAGAIN) {
                fds[i].fd = -1;
                --open;
            }
        }
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    auto status = guard.waitFor(std::max(left, std::chrono::milliseconds(0)));
    if (!status) {
        guard.terminate(std::chrono::milliseconds(500));
        throw std::runtime_error("command timed out: " + argv.front());
    }
    r.status = status->code ? *status->code : 128 + status->signal.value_or(0);
    return r;
}

}  // namespace

ReadyProcess spawnReady(SpawnOptions options, int childFd, std::chrono::milliseconds timeout, const fs::path& logFile) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
    UniqueFd readEnd(fds[0]), writeEnd(fds[1]);
    options.extraFds.emplace_back(writeEnd.get(), childFd);
    options.dieWithParent = true;
    ReadyProcess ready{ChildGuard(spawn(options).pid), {}};
    writeEnd.reset();  // so the child's exit or close is end-of-file here
    auto failure = [&](const std::string& why) {
        ready.child.terminate(std::chrono::milliseconds(1000));
        std::string text = options.argv.front() + " " + why;
        if (!logFile.empty()) text += ":\n" + readFile(logFile);
        return std::runtime_error(text);
    };
    auto deadline = Clock::now() + timeout;
    while (ready.line.find('\n') == std::string::npos) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) throw failure("was not ready within " + std::to_string(timeout.count()) + " ms");
        pollfd p{readEnd.get(), POLLIN, 0};
        int r = ::poll(&p, 1, static_cast<int>(left.count()));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) continue;
        char buf[512];
        ssize_t n = ::read(readEnd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw failure("exited or closed its readiness pipe before it was ready");
        ready.line.append(buf, static_cast<std::size_t>(n));
    }
    ready.line.resize(ready.line.find('\n'));
    return ready;
}

CommandResult runCommand(const std::vector<std::string>& argv, const std::string& input,
                         const std::vector<std::string>& env, std::chrono::milliseconds timeout) {
    return runFed(
        argv, env, [&input] { return input; }, timeout);
}

std::string Harness::binary(const std::string& name) {
    static const std::map<std::string, std::string> kPaths = {
        {"hpc-relay", HPC_RELAY_BIN},
        {"hpc-daemond", HPC_DAEMOND_BIN},
        {"hpc-daemonctl", HPC_DAEMONCTL_BIN},
        {"hpc-agent", HPC_AGENT_BIN},
    };
    return kPaths.at(name);
}

Harness::Harness() {
    // Everything here talks to 127.0.0.1, and the programs honour the proxy
    // variables as curl does: a developer's or CI's HTTPS_PROXY would send
    // the tests through a real proxy. Tests that want one pass it themselves.
    for (const char* name : {"https_proxy", "HTTPS_PROXY", "http_proxy", "all_proxy", "ALL_PROXY", "no_proxy",
                             "NO_PROXY", "HPC_AGENT_PROXY"})
        ::unsetenv(name);
    char tmpl[] = "/tmp/hpc-e2e-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    m_dir = tmpl;
    auto r = runCommand({HPC_SOURCE_DIR "/scripts/make-cert.sh", (m_dir / "tls").string()});
    if (r.status != 0) throw std::runtime_error("make-cert.sh failed: " + r.err);
}

Harness::~Harness() {
    for (auto& [id, d] : m_daemons) d.terminate(std::chrono::milliseconds(3000));
    m_relay.terminate(std::chrono::milliseconds(3000));
    // Daemons started by ctl or by D-Bus activation are not our children:
    // stop them by the pid files in their state directories.
    for (const auto& entry : fs::directory_iterator(m_dir)) {
        if (!entry.is_directory() || entry.path().filename().string().rfind("home", 0) != 0) continue;
        for (const auto& f : fs::directory_iterator(entry.path())) {
            if (f.path().extension() != ".pid") continue;
            pid_t pid = 0;
            std::ifstream(f.path()) >> pid;
            if (pid > 0) ::kill(pid, SIGTERM);
            waitUntil([&] { return ::kill(pid, 0) != 0; }, std::chrono::seconds(5));
        }
    }
    m_bus.terminate(std::chrono::milliseconds(2000));
    if (!std::getenv("HPC_KEEP_TEST_DIR")) {
        std::error_code ec;
        fs::remove_all(m_dir, ec);
    }
}

std::vector<std::string> Harness::baseEnv() const {
    std::vector<std::string> env = {"XDG_DATA_HOME=" + xdgDataHome().string()};
    if (!m_busAddress.empty()) env.push_back("DBUS_SESSION_BUS_ADDRESS=" + m_busAddress);
    return env;
}

void Harness::startSessionBus() {
    fs::create_directories(xdgDataHome() / "dbus-1" / "services");
    auto socket = m_dir / "session.bus";
    std::error_code ec;
    fs::remove(socket, ec);
    {
        std::ofstream conf(m_dir / "session.conf");
        conf << "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig><type>session</type><listen>unix:path="
             << socket.string() << "</listen><servicedir>" << (xdgDataHome() / "dbus-1" / "services").string()
             << "</servicedir><policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>"
                "<allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>\n";
    }
    SpawnOptions o;
    constexpr int kAddressFd = 3;
    o.argv = {"dbus-daemon", "--config-file=" + (m_dir / "session.conf").string(), "--nofork", "--nopidfile",
              "--print-address=" + std::to_string(kAddressFd)};
    o.outputFile = (m_dir / "dbus.log").string();
    // The address is printed once the bus listens: then clients can connect.
    auto ready = spawnReady(o, kAddressFd, std::chrono::seconds(60), m_dir / "dbus.log");
    m_bus = std::move(ready.child);
    m_busAddress = ready.line;
}

void Harness::startRelay(int port) {
    if (port == 0) port = m_port;
    constexpr int kReadyFd = 3;
    SpawnOptions o;
    o.argv = {binary("hpc-relay"),
              "--port",
              std::to_string(port),
              "--ready-fd",
              std::to_string(kReadyFd),
              "--cert",
              (m_dir / "tls" / "cert.pem").string(),
              "--key",
              (m_dir / "tls" / "key.pem").string(),
              "--data-dir",
              (m_dir / "relay").string(),
              "--otp-file",
              (m_dir / "codes.txt").string(),
              "-v"};
    // Idle links are found out quickly, unless the caller sets its own limit.
    if (std::find(m_relayArgs.begin(), m_relayArgs.end(), "--ws-idle-seconds") == m_relayArgs.end())
        o.argv.insert(o.argv.end(), {"--ws-idle-seconds", "10"});
    o.argv.insert(o.argv.end(), m_relayArgs.begin(), m_relayArgs.end());
    o.outputFile = (m_dir / "relay.log").string();
    // The port is written once the relay listens.
    auto ready = spawnReady(o, kReadyFd, std::chrono::seconds(60), m_dir / "relay.log");
    m_relay = std::move(ready.child);
    m_port = std::stoi(ready.line);
}

void Harness::stopRelay() { m_relay.terminate(std::chrono::milliseconds(3000)); }

void Harness::killRelay() {
    m_relay.signal(SIGKILL);
    m_relay.waitFor(std::chrono::seconds(5));
}

std::string Harness::relayLog() const { return readFile(m_dir / "relay.log"); }

json::object Harness::relayHealth() const {
    auto r = net::httpRequest(*parseUrl(url()), "GET", "/health", "", "",
                              net::ClientOptions{caFile(), std::chrono::seconds(5)});
    if (r.status != 200) throw Error(ErrorCode::Unavailable, "GET /health: HTTP " + std::to_string(r.status));
    return r.json().at("payload").as_object();
}

std::pair<int, std::string> Harness::relayMetrics(const std::string& bearer) const {
    auto r = net::httpRequest(*parseUrl(url()), "GET", "/metrics", "", bearer,
                              net::ClientOptions{caFile(), std::chrono::seconds(5)});
    return {r.status, r.body};
}

std::optional<double> metricValue(const std::string& exposition, const std::string& series) {
    std::istringstream in(exposition);
    std::string line;
    while (std::getline(in, line))
        if (line.size() > series.size() + 1 && line.compare(0, series.size(), series) == 0 &&
            line[series.size()] == ' ')
            return std::stod(line.substr(series.size() + 1));
    return std::nullopt;
}

CommandResult promtoolCheck(const std::string& exposition) {
    const char* named = std::getenv("HPC_PROMTOOL");
    std::string promtool = named && *named ? named : findInPath("promtool");
    if (promtool.empty())
        throw std::runtime_error("promtool is missing: run scripts/install-deps.sh (or set HPC_PROMTOOL)");
    return runCommand({promtool, "check", "metrics"}, exposition);
}

std::size_t Harness::codeLines() const {
    std::ifstream in(m_dir / "codes.txt");
    std::size_t n = 0;
    std::string line;
    while (std::getline(in, line)) ++n;
    return n;
}

std::string Harness::waitForCode(const std::string& email, std::size_t linesBefore) {
    std::string code;
    waitUntil(
        [&] {
            std::ifstream in(m_dir / "codes.txt");
            std::string line;
            std::size_t n = 0;
            while (std::getline(in, line))
                if (++n > linesBefore && line.rfind(email + " ", 0) == 0) code = line.substr(email.size() + 1);
            return !code.empty();
        },
        std::chrono::seconds(10));
    if (code.empty()) throw std::runtime_error("no code arrived for " + email);
    return code;
}

void writeExecutable(const fs::path& file, const std::string& content) {
    fs::create_directories(file.parent_path());
    std::ofstream out(file, std::ios::trunc);
    out << content;
    out.close();
    if (!out) throw std::runtime_error("cannot write " + file.string());
    fs::permissions(file, fs::perms::owner_all, fs::perm_options::replace);
}

CommandResult Harness::setupDaemon(const std::string& daemonId, const std::string& email,
                                   const std::vector<std::string>& allowedDirs, const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {
        binary("hpc-daemonctl"), "setup",  "--no-interview", "--email", email, "--url", url(),
        "--daemon-id",           daemonId, "--ca-file",      caFile()};
    for (const auto& d : allowedDirs) {
        argv.push_back("--allowed-dirs");
        argv.push_back(d);
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::vector<std::string> env = baseEnv();
    env.push_back("HPC_DAEMON_HOME=" + home(daemonId).string());
    return runTypingCode(argv, env, email);
}

CommandResult Harness::runTypingCode(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                                     const std::string& email, const std::string& afterCode,
                                     const std::function<void()>& beforeCode) {
    std::size_t before = codeLines();
    return runFed(
        argv, env,
        [&] {
            std::string input = waitForCode(email, before) + "\n" + afterCode;
            if (beforeCode) beforeCode();
            return input;
        },
        std::chrono::seconds(30));
}

void Harness::editProfile(const std::string& daemonId, const std::function<void(Profile&)>& edit) {
    auto store = Store::open(home(daemonId));
    auto profile = selectProfile(store, daemonId);
    edit(profile);
    store.saveProfile(profile);
}

namespace {

/// A datagram socket for the notify protocol (sd_notify), writable by any
/// user: a daemon may run as another user (setDaemonUser).
UniqueFd bindNotifySocket(const fs::path& path) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.string().size() >= sizeof addr.sun_path) throw std::runtime_error("notify socket path too long");
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    std::error_code ec;
    fs::remove(path, ec);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        throw std::runtime_error("bind " + path.string() + ": " + std::strerror(errno));
    ::chmod(path.c_str(), 0666);
    return fd;
}

}  // namespace

void Harness::startDaemon(const std::string& daemonId, const std::vector<std::string>& extra,
                          const std::vector<std::string>& env) {
    SpawnOptions o;
    o.argv = {binary("hpc-daemond"), "--daemon-id", daemonId, "-v"};
    if (!m_daemonUser.empty()) {
        const passwd* pw = ::getpwnam(m_daemonUser.c_str());
        if (!pw) throw std::runtime_error("no user " + m_daemonUser);
        for (const auto& entry : fs::recursive_directory_iterator(home(daemonId)))
            if (::lchown(entry.path().c_str(), pw->pw_uid, pw->pw_gid) != 0) throw std::runtime_error("chown failed");
        if (::chown(home(daemonId).c_str(), pw->pw_uid, pw->pw_gid) != 0) throw std::runtime_error("chown failed");
        // A change of user clears the parent-death signal: setpriv sets it again.
        o.argv.insert(o.argv.begin(),
                      {"setpriv", "--reuid=" + std::to_string(pw->pw_uid), "--regid=" + std::to_string(pw->pw_gid),
                       "--init-groups", "--pdeathsig=TERM", "--"});
    }
    o.argv.insert(o.argv.end(), extra.begin(), extra.end());
    auto notifyPath = m_dir / ("notify-" + daemonId + ".sock");
    // Closed and removed once READY=1 came: a socket nobody reads fills up,
    // and the daemon's next sd_notify would block; one that is gone fails at once.
    UniqueFd notify = bindNotifySocket(notifyPath);
    struct Unlink {
        fs::path path;
        ~Unlink() {
            std::error_code ec;
            fs::remove(path, ec);
        }
    } unlinkNotify{notifyPath};
    o.envOverrides = baseEnv();
    o.envOverrides.push_back("HPC_DAEMON_HOME=" + home(daemonId).string());
    o.envOverrides.push_back("NOTIFY_SOCKET=" + notifyPath.string());
    o.envOverrides.insert(o.envOverrides.end(), env.begin(), env.end());
    o.outputFile = (m_dir / ("daemon-" + daemonId + ".log")).string();
    o.dieWithParent = true;
    ChildGuard& daemon = m_daemons[daemonId];
    daemon = ChildGuard(spawn(o).pid);
    UniqueFd exited = openPidFd(daemon.pid());

    // READY=1 comes once the store is open and the bus name owned; a daemon
    // that fails first exits, which the pidfd shows at once.
    constexpr std::chrono::seconds kTimeout{60};
    auto deadline = Clock::now() + kTimeout;
    while (true) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) {
            daemon.terminate(std::chrono::milliseconds(1000));
            throw std::runtime_error("hpc-daemond " + daemonId + " sent no READY=1 within " +
                                     std::to_string(kTimeout.count()) + " s:\n" + daemonLog(daemonId));
        }
        pollfd p[2] = {{notify.get(), POLLIN, 0}, {exited.get(), POLLIN, 0}};
        int r = ::poll(p, 2, static_cast<int>(left.count()));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) continue;
        if (p[0].revents & POLLIN) {
            char buf[4096];
            ssize_t n = ::recv(notify.get(), buf, sizeof buf, 0);
            if (n > 0 && std::string(buf, static_cast<std::size_t>(n)).find("READY=1") != std::string::npos) return;
            continue;
        }
        if (p[1].revents & POLLIN) {
            auto status = daemon.waitFor(std::chrono::milliseconds(1000));
            throw std::runtime_error(
                "hpc-daemond " + daemonId + " exited before it was ready" +
                (status && status->code ? " (exit status " + std::to_string(*status->code) + ")" : std::string()) +
                ":\n" + daemonLog(daemonId));
        }
    }
}

void Harness::stopDaemon(const std::string& daemonId) {
    if (auto it = m_daemons.find(daemonId); it != m_daemons.end()) it->second.terminate();
}

void Harness::killDaemon(const std::string& daemonId) {
    auto it = m_daemons.find(daemonId);
    if (it == m_daemons.end() || !it->second.running()) return;
    it->second.signal(SIGKILL);
    it->second.waitFor(std::chrono::seconds(10));
}

pid_t Harness::daemonPid(const std::string& daemonId) const {
    auto it = m_daemons.find(daemonId);
    return it == m_daemons.end() ? -1 : it->second.pid();
}

std::string Harness::daemonLog(const std::string& daemonId) const {
    return readFile(m_dir / ("daemon-" + daemonId + ".log"));
}

json::object Harness::daemonStatus(const std::string& daemonId) const {
    std::string address = m_busAddress.empty() ? bus::privateBusAddress(home(daemonId), daemonId) : m_busAddress;
    try {
        auto connection = sdbus::createSessionBusConnectionWithAddress(address);
        connection->setMethodCallTimeout(std::chrono::seconds(10));
        auto proxy = sdbus::createProxy(*connection, bus::busNameFor(daemonId), bus::kObjectPath);
        std::map<std::string, sdbus::Variant> status;
        proxy->callMethod("GetStatus").onInterface(bus::kInterface).storeResultsTo(status);
        json::object out;
        for (const auto& [key, value] : status) {
            auto type = value.peekValueType();
            if (type == "s")
                out[key] = value.get<std::string>();
            else if (type == "u")
                out[key] = value.get<std::uint32_t>();
            else if (type == "d")
                out[key] = value.get<double>();
            else if (type == "b")
                out[key] = value.get<bool>();
            else if (type == "as") {
                json::array a;
                for (const auto& item : value.get<std::vector<std::string>>()) a.emplace_back(item);
                out[key] = std::move(a);
            } else if (type == "a{st}") {
                json::object o;
                for (const auto& [name, n] : value.get<std::map<std::string, std::uint64_t>>()) o[name] = n;
                out[key] = std::move(o);
            }
        }
        return out;
    } catch (const sdbus::Error& e) {
        throw Error(ErrorCode::Unavailable, "GetStatus of " + daemonId + ": " + e.getMessage());
    }
}

bool Harness::waitStatus(const std::string& daemonId, const std::function<bool(const json::object&)>& pred,
                         std::chrono::milliseconds timeout) const {
    return waitUntil(
        [&] {
            try {
                return pred(daemonStatus(daemonId));
            } catch (const Error&) {
                return false;  // not answering (yet): starting, restarting or stopped
            }
        },
        timeout, std::chrono::milliseconds(20));
}

bool Harness::waitLinkState(const std::string& daemonId, const std::string& state,
                            std::chrono::milliseconds timeout) const {
    return waitStatus(
        daemonId,
        [&](const json::object& s) {
            const auto* v = s.if_contains("link_state");
            return v && v->is_string() && v->get_string() == state;
        },
        timeout);
}

Secret Harness::login(const std::string& email, const std::string& agent) {
    auto u = parseUrl(url());
    net::PlatformClient platform(*u, net::ClientOptions{caFile()});
    std::size_t before = codeLines();
    Secret signin = platform.requestCode(email);
    return platform.signIn(signin, Secret(waitForCode(email, before)), agent).accessToken;
}

std::unique_ptr<agent::AgentClient> Harness::agent(const Secret& token) {
    return agent::AgentClient::connect(agent::AgentOptions{*parseUrl(url()), token, caFile()});
}

bool Harness::waitConnected(const Secret& token, const std::string& daemonId, std::chrono::milliseconds timeout) {
    net::PlatformClient platform(*parseUrl(url()), net::ClientOptions{caFile(), std::chrono::seconds(2)});
    return waitUntil(
        [&] {
            try {
                for (const auto& d : platform.listDaemons(token)) {
                    const auto& o = d.as_object();
                    if (o.at("daemon_id").as_string() == daemonId && o.at("connected").as_bool()) return true;
                }
            } catch (const Error&) {
                // The relay may be restarting.
            }
            return false;
        },
        timeout, std::chrono::milliseconds(50));
}

void configureRelayCluster(Harness& a, Harness& b, const std::string& database, const std::vector<std::string>& extra) {
    for (const char* f : {"ca.pem", "cert.pem", "key.pem"})
        fs::copy_file(a.dir() / "tls" / f, b.dir() / "tls" / f, fs::copy_options::overwrite_existing);
    fs::path secret = a.dir() / "cluster-secret";
    writeBytes(secret, std::string(kTestClusterSecret) + "\n");
    fs::permissions(secret, fs::perms::owner_read | fs::perms::owner_write);
    for (Harness* h : {&a, &b}) {
        std::vector<std::string> args = {
            "--database",    database,       "--cluster-url", "wss://127.0.0.1", "--cluster-secret-file",
            secret.string(), "--cluster-ca", a.caFile()};
        args.insert(args.end(), extra.begin(), extra.end());
        h->setRelayArgs(std::move(args));
    }
}

}  // namespace hpc::test
