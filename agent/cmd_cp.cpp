// hpc-agent cp: files to and from a daemon's machine, with scp's conventions.
#include "commands.hpp"

#include "errors.hpp"
#include "file_copy.hpp"
#include "file_wire.hpp"
#include "util.hpp"

#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>

using Clock = std::chrono::steady_clock;

namespace hpc::agent {
namespace {

struct CpOptions {
    PlatformOptions platform;
    std::vector<std::string> paths;
    bool recursive = false;
    bool preserve = false;
    bool resume = false;
    bool asJson = false;
    bool quiet = false;
};

/// Exit status of a copy that was interrupted (Ctrl-C, SIGTERM), as a shell reports SIGINT.
constexpr int kExitInterrupted = 130;

std::atomic<bool> g_interrupted{false};

void onSignal(int) { g_interrupted = true; }

std::string humanBytes(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
    return buf;
}

std::string clock(double seconds) {
    long long s = std::llround(seconds);
    char buf[32];
    if (s >= 3600)
        std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
    else
        std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
    return buf;
}

/// One line per file on the terminal, redrawn a few times a second: name,
/// a bar, percent, bytes, rate, time left.
class ProgressLine {
public:
    void update(const std::string& name, std::uint64_t done, std::optional<std::uint64_t> total) {
        auto now = Clock::now();
        if (name != m_name) {
            m_name = name;
            m_start = now;
            m_last = {};
            m_startBytes = done;
        }
        bool finished = total && done >= *total;
        if (!finished && now - m_last < std::chrono::milliseconds(200)) return;
        m_last = now;
        double secs = std::chrono::duration<double>(now - m_start).count();
        double rate = secs > 0.05 ? static_cast<double>(done - m_startBytes) / secs : 0;
        std::string tail = humanBytes(static_cast<double>(done));
        if (total) {
            int pct = *total ? static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(*total)) : 100;
            std::string bar(20, ' ');
            for (int i = 0; i < pct / 5; ++i) bar[static_cast<std::size_t>(i)] = '#';
            tail = "[" + bar + "] " + std::to_string(pct) + "%  " + tail + " of " +
                   humanBytes(static_cast<double>(*total));
            if (rate > 0 && !finished) tail += "  " + clock(static_cast<double>(*total - done) / rate) + " left";
        }
        if (rate > 0) tail += "  " + humanBytes(rate) + "/s";
        winsize ws{};
        std::size_t width = ::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20 ? ws.ws_col : 80;
        std::string shown = m_name;
        std::size_t room = width > tail.size() + 4 ? width - tail.size() - 3 : 10;
        if (shown.size() > room) shown = "…" + shown.substr(shown.size() - room + 1);
        std::cerr << "\r" << shown << "  " << tail << "\033[K" << std::flush;
        m_open = true;
    }
    /// Ends the current line (a file finished, or a message must be printed).
    void end() {
        if (m_open) std::cerr << "\n";
        m_open = false;
        m_name.clear();
    }

private:
    std::string m_name;
    Clock::time_point m_start, m_last;
    std::uint64_t m_startBytes = 0;
    bool m_open = false;
};

boost::json::object toJson(const CopyItem& i) {
    // Names are any bytes: base64 with "source_encoding" when not UTF-8, as in the protocol.
    boost::json::object o{{"type", i.type}, {"ok", i.ok}};
    hpc::files::putPath(o, "source", i.source);
    hpc::files::putPath(o, "target", i.target);
    if (i.type == "file" && i.ok) {
        o["bytes"] = i.bytes;
        o["seconds"] = i.seconds;
        o["sha256"] = i.sha256;
        if (i.resumedFrom) o["resumed_from"] = i.resumedFrom;
    }
    if (!i.ok) {
        o["error"] = isValidUtf8(i.error) ? i.error : hpc::files::displayPath(i.error);
        o["code"] = std::string(toProtocolCode(i.code));
    }
    return o;
}

int runCp(const CpOptions& o) {
    if (o.paths.size() < 2)
        throw Error(ErrorCode::BadRequest, "give at least one source and a target: hpc-agent cp SOURCE... TARGET");
    std::vector<CopyEndpoint> sources;
    for (std::size_t i = 0; i + 1 < o.paths.size(); ++i) sources.push_back(parseEndpoint(o.paths[i]));
    CopyEndpoint target = parseEndpoint(o.paths.back());
    if (o.asJson && target.path == "-" && !target.remote())
        throw Error(ErrorCode::BadRequest, "--json and \"-\" as the target both write to standard output");
    std::size_t stdinSources = 0;
    for (const auto& s : sources) stdinSources += !s.remote() && s.path == "-";
    if (stdinSources > 1 || (stdinSources && sources.size() > 1))
        throw Error(ErrorCode::BadRequest, "\"-\" (standard input) must be the only source");
    agentOptions(o.platform);  // a missing URL or token is an error before anything starts

    struct sigaction sa {};
    sa.sa_handler = onSignal;
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);

    const bool showProgress = !o.asJson && !o.quiet && ::isatty(STDERR_FILENO);
    auto line = std::make_shared<ProgressLine>();
    CopyOptions options;
    options.recursive = o.recursive;
    options.preserve = o.preserve;
    options.resume = o.resume;
    CopyCallbacks callbacks;
    if (showProgress)
        callbacks.progress = [line](const std::string& name, std::uint64_t done, std::optional<std::uint64_t> total) {
            line->update(name, done, total);
        };
    callbacks.done = [line, showProgress](const CopyItem& item) {
        if (showProgress && item.type == "file") line->end();
        if (!item.ok) {
            line->end();
            std::cerr << "hpc-agent: " << hpc::files::displayPath(item.source) << " -> "
                      << hpc::files::displayPath(item.target) << ": " << item.error << "\n";
        }
    };
    callbacks.retrying = [line](const std::string& why, std::chrono::milliseconds delay) {
        line->end();
        std::cerr << "hpc-agent: " << why << "; connecting again in " << delay.count() << " ms to resume\n";
    };
    callbacks.interrupted = [] { return g_interrupted.load(); };

    auto t0 = Clock::now();
    Copier copier([&o] { return AgentClient::connect(agentOptions(o.platform)); }, options, callbacks);
    copier.copy(sources, target);
    line->end();

    if (o.asJson) {
        boost::json::array items;
        std::uint64_t bytes = 0;
        for (const auto& i : copier.items()) {
            if (i.ok && i.type == "file") bytes += i.bytes;
            items.push_back(toJson(i));
        }
        boost::json::object summary{{"ok", copier.ok()},
                                    {"bytes", bytes},
                                    {"seconds", std::chrono::duration<double>(Clock::now() - t0).count()},
                                    {"items", std::move(items)}};
        std::cout << boost::json::serialize(summary) << "\n";
    }
    if (g_interrupted) return kExitInterrupted;
    return copier.ok() ? 0 : 1;
}

}  // namespace

Command addCpCommand(CLI::App& parent) {
    auto o = std::make_shared<CpOptions>();
    auto* app = parent.add_subcommand(
        "cp", "Copy files to or from a daemon's machine: hpc-agent cp [-r] [-p] SOURCE... TARGET (scp's conventions)");
    app->add_option("paths", o->paths,
                    "sources, then the target; DAEMON:PATH names a path on a daemon's machine, anything else a "
                    "local path, \"-\" standard input (as the source) or output (as the target)")
        ->required()
        ->expected(2, -1);
    app->add_flag("-r,--recursive", o->recursive,
                  "copy directories with everything in them: modes kept, symlinks copied as symlinks (not followed)");
    app->add_flag("-p,--preserve", o->preserve, "keep modes exactly, and the modification and access times of files");
    app->add_flag("--resume", o->resume,
                  "continue transfers an earlier run left behind (checked by SHA-256) instead of starting again");
    app->add_flag("--json", o->asJson,
                  "print a summary as JSON on stdout: ok, bytes, seconds, and each item with its bytes, seconds "
                  "and sha256 (or error and code)");
    app->add_flag("-q,--quiet", o->quiet, "no progress bar (there is none anyway when stderr is not a terminal)");
    addPlatformOptions(app, o->platform);
    app->footer(R"(
Paths:
  DAEMON:PATH is a path on that daemon's machine; a relative PATH starts in the
  daemon's first allowed directory (else its job directory, else $HOME), and ~
  is the daemon user's home. Anything without a daemon id and a colon in
  front is local; write ./a:b for a local name holding a colon. One side must be local, the other on
  a daemon. Several sources, or a target ending in /, need a target directory
  that exists; a single source copied onto an existing directory goes inside it.

What arrives is what was sent:
  Every file is checked by SHA-256 on both sides. It is written under a
  temporary name beside its target (.NAME.hpc-part) and renamed only once
  complete and verified, on the daemon for an upload and here for a download:
  a failure never leaves a partial file under the final name. A file that
  changes while it is read fails rather than arriving mixed.

Interruptions:
  When the connection or the daemon goes away mid-transfer (a platform restart,
  a network failure), cp connects again with backoff, up to 10 times, and
  resumes from the bytes already there after checking them. An interrupted run
  leaves its partial file for --resume; Ctrl-C removes them. Standard input is
  never resumed.

Where files may go:
  Uploads go only into the daemon's allowed directories: a path that leads
  outside them (through "..", a symlink on the way, or a symlink in the
  target's place) is refused with PATH_NOT_ALLOWED, and so is, with -r, a
  symlink whose target would point outside them. Downloads read whatever the daemon's
  user can read, except the daemon's own state directory. Every transfer is in
  the daemon's audit log (hpc-daemonctl audit).

Progress and output:
  On a terminal, a progress line per file on stderr (bytes, rate, time left);
  nothing otherwise. --json prints one summary object on stdout.

Exit status: 0 when everything arrived; 1 when any item failed (each is named
on stderr, the others are still copied); 130 when interrupted; 255 when cp
itself could not run (no connection, bad arguments).

Examples:
  hpc-agent cp data.bin mila:scratch/           # into a directory on the daemon
  hpc-agent cp -r src mila:project/src          # a tree (modes, symlinks)
  hpc-agent cp mila:results/run3.tar .          # download here
  hpc-agent cp -p a.txt b.txt mila:~/in/        # several files, times kept
  tar c dir | hpc-agent cp - mila:dir.tar       # standard input
  hpc-agent cp mila:log.txt - | tail            # standard output)");
    return Command{app, [o] { return runCp(*o); }};
}

}  // namespace hpc::agent
