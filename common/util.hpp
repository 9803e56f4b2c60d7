#pragma once
/// Small helpers shared by every program: randomness, time, URLs, paths.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hpc {

/// The first executable `program` in $PATH ("" when there is none).
std::string findInPath(std::string_view program);

/// Run through the release's bundled dynamic loader, the kernel names the
/// process after the loader ("ld-linux-x86-64"); this renames it after argv[0]
/// so ps, pgrep and /proc/PID/comm show the program's own name.
void adoptProgramName(const char* argv0);

/// /bin/bash where it exists, else /bin/sh (a minimal system may have no
/// bash; job wrappers and `exec -c` commands are plain POSIX sh).
std::string defaultShell();

/// A program of the relocatable release this process runs from
/// ($HPC_DAEMON_BUNDLE_DIR, set by the release's launcher), e.g.
/// "bin/hpc-daemond"; "" when not run from one or the program is not there.
std::string bundledProgram(std::string_view relative);

/// "SIGTERM" for 15 (x86_64 Linux numbering); "SIG<n>" for a signal
/// without a name of its own (real-time signals). glibc's sigabbrev_np is
/// 2.32 and newer.
std::string signalName(int sig);

/// `bytes` bytes from getrandom(2), hex-encoded.
std::string randomHex(std::size_t bytes);
/// Seconds since the epoch, as the protocol sends times.
double nowEpochSeconds();

/// A parsed http(s)/ws(s) URL.
struct Url {
    std::string scheme;  ///< "https" or "http" (ws/wss are normalised to these)
    std::string host;    ///< without brackets for IPv6
    std::string port;    ///< always set: default 443/80
    std::string path;    ///< "" or starts with '/', no trailing '/'
    bool tls() const { return scheme == "https"; }
    /// scheme://host:port/path
    std::string str() const;
};

/// Parses a platform URL. nullopt with `error` set when it is not one.
std::optional<Url> parseUrl(std::string_view text, std::string* error = nullptr);

/// True when `host` is an IP literal (no SNI is sent for those).
bool isIpLiteral(std::string_view host);
/// True for 127.0.0.0/8, ::1 and "localhost".
bool isLoopbackHost(std::string_view host);

/// Valid daemon ids: 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'.
bool isValidDaemonId(std::string_view id);

/// True when `path` (absolute, already resolved) is `dir` or inside it.
bool isWithin(const std::filesystem::path& path, const std::filesystem::path& dir);

/// Whether s is well-formed UTF-8 (what JSON strings need).
bool isValidUtf8(std::string_view s);
std::string base64Encode(std::string_view data);
std::optional<std::string> base64Decode(std::string_view text);
/// %XX escapes decoded (URL userinfo, form fields); nullopt for a broken one.
std::optional<std::string> percentDecode(std::string_view s);

}  // namespace hpc
