#include "service_manager.hpp"

#include "bus_name.hpp"
#include "errors.hpp"
#include "process.hpp"
#include "proxy.hpp"
#include "util.hpp"

#include <unit_template.hpp>

#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <charconv>
#include <deque>
#include <fstream>
#include <regex>
#include <vector>

namespace fs = std::filesystem;

namespace hpc::ctl {
namespace {

int runQuiet(const std::vector<std::string>& argv, std::string* out) {
    try {
        SpawnOptions o;
        o.argv = argv;
        o.out = Stdio::Pipe;
        o.err = Stdio::Pipe;
        auto p = spawn(o);
        ChildGuard guard(p.pid);
        std::string text;
        char buf[4096];
        // Blocking reads are fine: ctl is a command-line program. Drain stdout
        // (small) then stderr.
        for (int fd : {p.stdoutFd.get(), p.stderrFd.get()}) {
            int flags = ::fcntl(fd, F_GETFL);
            ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
            ssize_t n;
            while ((n = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<std::size_t>(n));
        }
        auto status = guard.waitFor(std::chrono::seconds(30));
        if (out) *out = text;
        if (!status) return -1;
        return status->code.value_or(128 + status->signal.value_or(0));
    } catch (const std::exception& e) {
        if (out) *out = e.what();
        return -1;
    }
}

std::string userName() {
    if (const passwd* pw = ::getpwuid(::getuid())) return pw->pw_name;
    const char* u = std::getenv("USER");
    return u ? u : "";
}

}  // namespace

int runCommand(const std::vector<std::string>& argv, std::string* out) { return runQuiet(argv, out); }

int systemctlUser(const std::vector<std::string>& args, std::string* out) {
    std::vector<std::string> argv = {"systemctl", "--user"};
    argv.insert(argv.end(), args.begin(), args.end());
    return runQuiet(argv, out);
}

ModeDecision decideMode() {
    if (const char* forced = std::getenv("HPC_DAEMONCTL_MODE"); forced && std::string(forced) == "nohup")
        return {false, "nohup mode forced by HPC_DAEMONCTL_MODE=nohup"};
    std::string out;
    if (systemctlUser({"show-environment"}, &out) != 0) {
        auto firstLine = out.substr(0, out.find('\n'));
        return {false, "no systemd user manager is reachable (systemctl --user: " +
                           (firstLine.empty() ? std::string("not available") : firstLine) + ")"};
    }
    std::string user = userName();
    if (fs::exists("/var/lib/systemd/linger/" + user)) return {true, "systemd user manager with lingering on"};
    if (runQuiet({"loginctl", "enable-linger", user}, &out) == 0)
        return {true, "systemd user manager; lingering was off and has been turned on"};
    return {false, "lingering is off for " + user +
                       " and cannot be turned on (loginctl enable-linger: " + out.substr(0, out.find('\n')) +
                       "), so a systemd unit would stop at logout; ask an administrator to run "
                       "`loginctl enable-linger " +
                       user + "`"};
}

std::optional<pid_t> livePid(const Paths& paths) {
    std::ifstream in(paths.pidFile());
    pid_t pid = 0;
    if (!(in >> pid) || pid <= 0) return std::nullopt;
    if (::kill(pid, 0) != 0) return std::nullopt;
    return pid;
}

std::string daemonBinary() {
    if (const char* env = std::getenv("HPC_DAEMOND"); env && *env) return env;
    // In the release, /proc/self/exe is the bundled dynamic loader.
    if (auto bundled = bundledProgram("bin/hpc-daemond"); !bundled.empty()) return bundled;
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        for (const fs::path& candidate :
             {self.parent_path() / "hpc-daemond", self.parent_path().parent_path() / "daemon" / "hpc-daemond"})
            if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    }
    return "hpc-daemond";
}

pid_t startDetached(const Paths& paths, const std::string& modeReason) {
    SpawnOptions o;
    o.argv = {daemonBinary(),           "--daemon-id",   paths.daemonId, "--log-file",
              paths.logFile().string(), "--mode-reason", modeReason};
    o.newSession = true;  // no controlling terminal: a closed terminal does not end it
    o.in = Stdio::Null;
    o.out = Stdio::Null;
    o.err = Stdio::Null;
    o.envOverrides = {"HPC_DAEMON_HOME=" + paths.home.string()};
    return spawn(o).pid;
}

std::string unitName(const std::string& daemonId) {
    // systemd-escape: '-' and other specials become \xNN; '.' is kept.
    std::string escaped;
    static constexpr char kHex[] = "0123456789abcdef";
    for (std::size_t i = 0; i < daemonId.size(); ++i) {
        auto c = static_cast<unsigned char>(daemonId[i]);
        bool keep = std::isalnum(c) || c == '_' || (c == '.' && i > 0);
        if (keep) {
            escaped += static_cast<char>(c);
        } else {
            escaped += "\\x";
            escaped += kHex[c >> 4];
            escaped += kHex[c & 15];
        }
    }
    return "hpc-daemon@" + escaped + ".service";
}

UnitState unitState(const std::string& daemonId) {
    UnitState st;
    std::string out;
    if (systemctlUser({"show", "-p", "LoadState", "-p", "ActiveState", "-p", "UnitFileState", "-p", "FragmentPath",
                       "-p", "MainPID", unitName(daemonId)},
                      &out) != 0)
        return st;
    std::size_t pos = 0;
    while (pos < out.size()) {
        auto end = out.find('\n', pos);
        if (end == std::string::npos) end = out.size();
        std::string line = out.substr(pos, end - pos);
        pos = end + 1;
        auto eq = line.find('=');
        if (eq == std::string::npos) continue;
        std::string key = line.substr(0, eq), value = line.substr(eq + 1);
        if (key == "LoadState")
            st.load = value;
        else if (key == "ActiveState")
            st.active = value;
        else if (key == "UnitFileState")
            st.fileState = value;
        else if (key == "FragmentPath")
            st.fragment = value;
        else if (key == "MainPID")
            std::from_chars(value.data(), value.data() + value.size(), st.mainPid);  // stays 0 if not a number
    }
    return st;
}

namespace {

fs::path userConfigDir() {
    if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg && *xdg) return xdg;
    const char* home = std::getenv("HOME");
    return fs::path(home ? home : "/") / ".config";
}

/// A value for an EnvironmentFile= line: double-quoted, with \ and " escaped.
std::string quoted(const std::string& value) {
    std::string out = "\"";
    for (char c : value) {
        if (c == '\\' || c == '"') out += '\\';
        out += c;
    }
    return out + "\"";
}

void writeFileAtomically(const fs::path& file, const std::string& text, fs::perms perms) {
    fs::create_directories(file.parent_path());
    fs::path tmp = file;
    tmp += ".tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << text;
        if (!out.flush()) throw Error(ErrorCode::Internal, "cannot write " + tmp.string());
    }
    fs::permissions(tmp, perms);
    fs::rename(tmp, file);
}

}  // namespace

fs::path environmentFile(const std::string& daemonId) { return userConfigDir() / "hpc-daemon" / (daemonId + ".env"); }

fs::path activationFile(const std::string& daemonId) {
    const char* xdg = std::getenv("XDG_DATA_HOME");
    const char* home = std::getenv("HOME");
    fs::path dataHome = xdg && *xdg ? fs::path(xdg) : fs::path(home ? home : "/") / ".local" / "share";
    return dataHome / "dbus-1" / "services" / (bus::busNameFor(daemonId) + ".service");
}

fs::path writeEnvironmentFile(const Paths& paths) {
    std::string text =
        "# Written by hpc-daemonctl setup/start from the environment it ran in; read by the unit\n"
        "# hpc-daemon@" +
        paths.daemonId + " (EnvironmentFile=). Edit, then: systemctl --user restart " + unitName(paths.daemonId) + "\n";
    text += "HPC_DAEMON_HOME=" + quoted(paths.home.string()) + "\n";
    for (const char* name : {"PATH", "SLURM_CONF", "LOCAL_MODE"})
        if (const char* v = std::getenv(name); v && *v) text += std::string(name) + "=" + quoted(v) + "\n";
    // The proxy this shell reaches the internet through (the file is 0600:
    // a proxy URL may hold a password).
    for (const auto& entry : proxyEnvironment()) {
        auto eq = entry.find('=');
        text += entry.substr(0, eq) + "=" + quoted(entry.substr(eq + 1)) + "\n";
    }
    // Limits for each local job's scope (systemd-run -p MemoryMax=/TasksMax=).
    static const std::regex kLimit("[0-9]+[KMGT]?|[0-9]+%|infinity");
    for (const char* name : {"HPC_JOB_MEMORY_MAX", "HPC_JOB_TASKS_MAX"})
        if (const char* v = std::getenv(name); v && *v) {
            if (!std::regex_match(v, kLimit))
                throw Error(ErrorCode::BadRequest, std::string(name) + "=" + v +
                                                       " is not a limit systemd takes (e.g. 4G, 50%, 512, infinity)");
            text += std::string(name) + "=" + quoted(v) + "\n";
        }
    fs::path file = environmentFile(paths.daemonId);
    writeFileAtomically(file, text, fs::perms::owner_read | fs::perms::owner_write);
    return file;
}

std::string ensureUnitInstalled(const std::string& daemonId) {
    UnitState st = unitState(daemonId);
    if (st.load.empty()) throw Error(ErrorCode::Unavailable, "systemctl --user show " + unitName(daemonId) + " failed");
    if (st.load != "not-found") return {};
    std::string text = kUnitTemplate;
    const std::string placeholder = "@HPC_DAEMOND_PATH@";
    for (auto p = text.find(placeholder); p != std::string::npos; p = text.find(placeholder, p))
        text.replace(p, placeholder.size(), daemonBinary());
    fs::path file = userConfigDir() / "systemd" / "user" / "hpc-daemon@.service";
    writeFileAtomically(
        file, text, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read);
    std::string out;
    if (systemctlUser({"daemon-reload"}, &out) != 0)
        throw Error(ErrorCode::Internal, "systemctl --user daemon-reload failed: " + out);
    return "installed the unit " + file.string() + " (it runs " + daemonBinary() + ")";
}

std::string tailOf(const fs::path& file, std::size_t lines) {
    std::ifstream in(file);
    std::deque<std::string> last;
    std::string line;
    while (std::getline(in, line)) {
        last.push_back(line);
        if (last.size() > lines) last.pop_front();
    }
    std::string out;
    for (const auto& l : last) out += l + "\n";
    return out;
}

}  // namespace hpc::ctl
