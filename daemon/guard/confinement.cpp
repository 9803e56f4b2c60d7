#include "guard/confinement.hpp"

#include "util.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>

namespace fs = std::filesystem;

namespace hpc::daemon {
namespace {

/// hpc-confine gets the Landlock ruleset on this descriptor.
constexpr int kLandlockFd = 8;

/// Runs `argv`, waits, returns its status and stderr.
int runAndWait(const std::vector<std::string>& argv, std::string& err) {
    SpawnOptions o;
    o.argv = argv;
    o.err = Stdio::Pipe;
    SpawnedProcess p = spawn(o);
    int status = 0;
    while (::waitpid(p.pid, &status, 0) < 0 && errno == EINTR) {
    }
    char buf[512];
    for (ssize_t n; (n = ::read(p.stderrFd.get(), buf, sizeof buf)) > 0;) err.append(buf, static_cast<std::size_t>(n));
    while (!err.empty() && err.back() == '\n') err.pop_back();
    return status;
}

}  // namespace

std::string Confinement::findProgram() {
    if (const char* env = std::getenv("HPC_CONFINE"); env && *env) return env;
    if (auto bundled = bundledProgram("libexec/hpc-confine"); !bundled.empty()) return bundled;
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (ec) return {};
    for (const fs::path& candidate : {self.parent_path() / "hpc-confine",
                                      self.parent_path().parent_path() / "libexec" / "hpc-daemon" / "hpc-confine"})
        if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    return {};
}

std::shared_ptr<const Confinement> Confinement::build(const Params& params, std::vector<std::string>& notes) {
    auto c = std::make_shared<Confinement>();
    c->m_params = params;
    if (params.allowedDirs.empty()) return c;
    std::vector<std::string> writable;  // existing allowed directories and the private TMPDIR
    for (const auto& d : params.allowedDirs) {
        std::error_code ec;
        fs::path real = fs::canonical(d, ec);
        if (!ec) writable.push_back(real.string());
    }
    if (!params.privateTmp.empty()) {
        writable.push_back(params.privateTmp);
        c->m_env = {"TMPDIR=" + params.privateTmp};
    }
    // The wrapper's fixed arguments, once: no file-system checks per command.
    c->m_fixedArgs = {params.confineProgram};
    for (const auto& w : writable) c->m_fixedArgs.insert(c->m_fixedArgs.end(), {"--rw", w});
    if (!params.stateDir.empty()) c->m_fixedArgs.insert(c->m_fixedArgs.end(), {"--hide", params.stateDir});
    std::error_code ec;
    if (!params.runtimeDir.empty() && fs::is_directory(params.runtimeDir, ec))
        c->m_fixedArgs.insert(c->m_fixedArgs.end(), {"--hide", params.runtimeDir});
    for (const auto& s : params.shown)
        if (fs::exists(s, ec)) c->m_fixedArgs.insert(c->m_fixedArgs.end(), {"--show", s});

    if (params.landlock) {
        std::string why;
        c->m_landlock = LandlockPolicy::build(params.allowedDirs, params.privateTmp, why);
        if (!c->m_landlock) notes.push_back("landlock is off: " + why);
    }
    if (params.confineProgram.empty()) {
        notes.push_back("the mount namespace is off: no hpc-confine program");
    } else {
        // Proves every step works here (user namespaces allowed, every mount
        // remountable) before any command depends on it.
        std::vector<std::string> probe = c->wrapper({}, false);
        probe.back() = "--probe";  // in place of "--" and a program
        std::string err;
        int status = -1;
        try {
            status = runAndWait(probe, err);
        } catch (const std::exception& e) {
            err = e.what();
        }
        if (status == 0)
            c->m_namespace = true;
        else
            notes.push_back("the mount namespace is off: " + (err.empty() ? "hpc-confine failed" : err));
    }
    return c;
}

std::vector<std::string> Confinement::wrapper(const std::vector<std::string>& writable, bool withLandlock) const {
    std::vector<std::string> argv = m_fixedArgs;
    for (const auto& w : writable) argv.insert(argv.end(), {"--rw", w});
    if (withLandlock) argv.insert(argv.end(), {"--landlock-fd", std::to_string(kLandlockFd)});
    argv.push_back("--");
    return argv;
}

void Confinement::apply(SpawnOptions& o, const std::vector<std::string>& writable, Reap reap) const {
    bool reaper = reap == Reap::Descendants && !m_params.reaperProgram.empty();
    if (!active() && !reaper) return;
    o.envOverrides.insert(o.envOverrides.begin(), m_env.begin(), m_env.end());
    std::vector<std::string> prefix;
    if (m_namespace) {
        prefix = wrapper(writable, m_landlock != nullptr);
    } else if (reaper) {
        prefix = {m_params.reaperProgram, "--no-namespace"};
        if (m_landlock) prefix.insert(prefix.end(), {"--landlock-fd", std::to_string(kLandlockFd)});
        prefix.push_back("--");
    }
    if (prefix.empty()) {
        if (m_landlock) o.landlockRuleset = m_landlock->fd();
        return;
    }
    if (reaper) prefix.insert(prefix.begin() + 1, "--subreaper");
    o.argv.insert(o.argv.begin(), prefix.begin(), prefix.end());
    if (m_landlock) o.extraFds.emplace_back(m_landlock->fd(), kLandlockFd);
}

std::vector<std::string> Confinement::layers() const {
    std::vector<std::string> out;
    if (m_namespace) out.push_back("mount-namespace (read-only outside the allowed directories; daemon state hidden)");
    if (m_landlock) out.push_back(m_landlock->describe());
    return out;
}

}  // namespace hpc::daemon
