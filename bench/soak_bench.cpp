// Soak (issue 21): two real daemons in nohup mode, one with the default
// settings and one with a retention of 1 minute, driven alike at the same time
// by a steady agent workload (execs, short PTY shells, local jobs) through a
// real relay over TLS, the relay restarted every 30 s for part of the run.
// Prints, per minute, one table with both daemons side by side (operations,
// RSS, PSS, descriptors, threads, state.db + WAL, log files), then the
// growth over the last third, the 1-minute daemon's state.db against its
// size at minute 10, and bytes per operation with the defaults. Prints
// figures; never asserts.
//
//   soak_bench [MINUTES=60] [--rate OPS_PER_SECOND_PER_DAEMON=50] [--mix EXEC:SHELL:JOB=7:2:1]
//              [--restarts FROM_MIN:TO_MIN (default: the middle third)] [--restart-every SECONDS=30]
#include "harness.hpp"
#include "settings.hpp"
#include "sqlite.hpp"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

using namespace hpc;
using namespace hpc::test;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_stop{false};

extern "C" void onSignal(int) { g_stop = true; }

struct Workload {
    double rate = 50;  ///< operations a second, per daemon
    int execs = 7, shells = 2, jobs = 1;
    double restartFrom = -1, restartTo = -1;  ///< minutes; -1: the middle third
    int restartEverySeconds = 30;
};

enum class Op { Exec, Shell, Job };

/// Spreads the mix over a cycle: 7:2:1 gives E E E S E E E S E J.
std::vector<Op> opCycle(const Workload& w) {
    std::vector<Op> cycle;
    int total = w.execs + w.shells + w.jobs;
    int e = 0, s = 0, j = 0;
    for (int i = 1; i <= total; ++i) {
        // The kind furthest behind its share so far goes next.
        double de = static_cast<double>(w.execs) * i / total - e;
        double ds = static_cast<double>(w.shells) * i / total - s;
        double dj = static_cast<double>(w.jobs) * i / total - j;
        if (dj >= de && dj >= ds && j < w.jobs) {
            cycle.push_back(Op::Job), ++j;
        } else if (ds >= de && s < w.shells) {
            cycle.push_back(Op::Shell), ++s;
        } else {
            cycle.push_back(Op::Exec), ++e;
        }
    }
    return cycle;
}

struct Counters {
    std::atomic<long> done{0}, failed{0};
    std::mutex m;
    std::string lastError;
};

/// One daemon under test and the agent thread that drives it.
struct Driven {
    std::string id, email, label;
    Secret token;
    ChildGuard daemon;
    Counters counters;
    std::thread worker;
};

void runOp(agent::AgentClient& client, const std::string& daemonId, Op op, long k) {
    const auto timeout = 15s;
    std::string word = "soak " + std::to_string(k);
    if (op == Op::Exec) {
        agent::ExecSpec spec;
        spec.command = "echo " + word;
        if (client.exec(daemonId, spec, timeout).shellStatus() != 0) throw std::runtime_error("exec failed");
    } else if (op == Op::Shell) {
        agent::PtySpec spec;
        spec.shell = "/bin/sh";
        auto pty = client.openPty(daemonId, spec, timeout);
        client.ptyInput(pty.channel, "echo " + word + "; exit\r");
        while (true) {
            auto e = client.nextPtyEvent(timeout);
            if (!e) throw std::runtime_error("shell did not end");
            if (e->channel == pty.channel && e->kind == agent::PtyEvent::Kind::Exit) break;
        }
    } else {
        agent::JobSpec spec;
        spec.script = "#!/bin/sh\necho " + word + "\n";
        auto r = client.submitJob(daemonId, spec, timeout);
        std::string jobId(r.at("job_id").as_string());
        auto cb = client.waitForJob(daemonId, jobId, timeout);
        if (!cb) throw std::runtime_error("no callback for " + jobId);
        client.ackCallback(cb->callbackId);
    }
}

/// Acknowledges callbacks that arrived for jobs whose op had failed (a relay
/// restart in between): the agent handles each callback once, as a real one.
void ackPending(agent::AgentClient& client) {
    while (auto cb = client.nextCallback(1ms)) client.ackCallback(cb->callbackId);
}

void drive(Driven& d, const Workload& w, const agent::AgentOptions& base) {
    auto cycle = opCycle(w);
    auto period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / w.rate));
    std::unique_ptr<agent::AgentClient> client;
    auto next = Clock::now();
    long k = 0;
    auto fail = [&](const std::string& why) {
        ++d.counters.failed;
        std::lock_guard lock(d.counters.m);
        d.counters.lastError = why;
    };
    while (!g_stop) {
        if (!client) {
            try {
                client = agent::AgentClient::connect(base);
                ackPending(*client);
            } catch (const std::exception& e) {
                client.reset();
                std::this_thread::sleep_for(250ms);
                continue;
            }
        }
        auto now = Clock::now();
        if (next > now) {
            std::this_thread::sleep_until(next);
        } else if (now - next > 1s) {
            next = now;  // fell behind (a relay restart): no burst to catch up
        }
        next += period;
        Op op = cycle[static_cast<std::size_t>(k % static_cast<long>(cycle.size()))];
        try {
            runOp(*client, d.id, op, k);
            ++d.counters.done;
            if (op == Op::Job) ackPending(*client);
        } catch (const std::exception& e) {
            fail(e.what());
            client.reset();  // the relay may be gone: reconnect before the next op
        }
        ++k;
    }
}

struct Sample {
    long done = 0, failed = 0;  ///< cumulative
    long rssKiB = 0, pssKiB = 0;
    long fds = 0, threads = 0;
    std::int64_t dbBytes = 0, walBytes = 0, logBytes = 0;
    int restarts = 0;  ///< relay restarts during the minute
};

std::int64_t fileBytes(const fs::path& p) {
    std::error_code ec;
    auto n = fs::file_size(p, ec);
    return ec ? 0 : static_cast<std::int64_t>(n);
}

Sample sample(const Harness& h, Driven& d) {
    Sample s;
    s.done = d.counters.done;
    s.failed = d.counters.failed;
    std::string proc = "/proc/" + std::to_string(d.daemon.pid());
    std::ifstream rollup(proc + "/smaps_rollup");
    for (std::string line; std::getline(rollup, line);) {
        if (line.rfind("Rss:", 0) == 0) s.rssKiB = std::stol(line.substr(4));
        if (line.rfind("Pss:", 0) == 0) s.pssKiB = std::stol(line.substr(4));
    }
    std::ifstream status(proc + "/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("Threads:", 0) == 0) s.threads = std::stol(line.substr(8));
    std::error_code ec;
    for (auto it = fs::directory_iterator(proc + "/fd", ec); !ec && it != fs::directory_iterator(); it.increment(ec))
        ++s.fds;
    fs::path home = h.home(d.id);
    s.dbBytes = fileBytes(home / "state.db");
    s.walBytes = fileBytes(home / "state.db-wal");
    // The log and the files rotation keeps (log_max_bytes each, 3 in all).
    fs::path log = home / (d.id + ".log");
    s.logBytes = fileBytes(log) + fileBytes(log.string() + ".1") + fileBytes(log.string() + ".2");
    return s;
}

/// Starts hpc-daemond as `hpc-daemonctl start` does in nohup mode (same
/// arguments: its own log file, info level), but as this process's child so
/// it is stopped by pid, and dies with us whatever happens.
ChildGuard startNohupDaemon(const Harness& h, const std::string& id) {
    SpawnOptions o;
    o.argv = {Harness::binary("hpc-daemond"),
              "--daemon-id",
              id,
              "--log-file",
              (h.home(id) / (id + ".log")).string(),
              "--mode-reason",
              "soak_bench: nohup mode"};
    o.envOverrides = h.baseEnv();
    o.envOverrides.insert(o.envOverrides.end(), {"HPC_DAEMON_HOME=" + h.home(id).string(), "LOCAL_MODE=1",
                                                 "DBUS_SESSION_BUS_ADDRESS=", "XDG_RUNTIME_DIR="});
    o.outputFile = (h.dir() / ("daemon-" + id + ".stderr")).string();
    o.dieWithParent = true;
    return ChildGuard(spawn(o).pid);
}

CommandResult ctl(const Harness& h, const std::string& id, std::vector<std::string> args) {
    args.insert(args.begin(), Harness::binary("hpc-daemonctl"));
    std::vector<std::string> env = h.baseEnv();
    env.insert(env.end(), {"HPC_DAEMON_HOME=" + h.home(id).string(), "DBUS_SESSION_BUS_ADDRESS=", "XDG_RUNTIME_DIR="});
    return runCommand(args, {}, env);
}

double kib(std::int64_t b) { return static_cast<double>(b) / 1024; }

void printHeader(const std::vector<Driven*>& ds) {
    std::printf("\n%4s %3s", "", "");
    for (auto* d : ds) std::printf(" | %-75s", d->label.c_str());
    std::printf("\n%4s %3s", "min", "rly");
    for (std::size_t i = 0; i < ds.size(); ++i)
        std::printf(" | %6s %5s %7s %7s %4s %3s %8s %8s %8s", "ops", "fail", "RSS KiB", "PSS KiB", "fds", "thr",
                    "db KiB", "WAL KiB", "log KiB");
    std::printf("\n");
}

void printRow(int minute, const std::vector<std::vector<Sample>>& samples) {
    const Sample& first = samples[0][static_cast<std::size_t>(minute)];
    std::printf("%4d %3d", minute, first.restarts);
    for (const auto& series : samples) {
        const Sample& s = series[static_cast<std::size_t>(minute)];
        const Sample& prev = series[static_cast<std::size_t>(std::max(0, minute - 1))];
        std::printf(" | %6ld %5ld %7ld %7ld %4ld %3ld %8.0f %8.0f %8.0f", s.done - prev.done, s.failed - prev.failed,
                    s.rssKiB, s.pssKiB, s.fds, s.threads, kib(s.dbBytes), kib(s.walBytes), kib(s.logBytes));
    }
    std::printf("\n");
    std::fflush(stdout);
}

/// Bytes of the tables and indexes whose name holds `word` (dbstat).
std::int64_t tableBytes(sqlite::Db& db, const std::string& word) {
    return db.queryInt("SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name LIKE '%" + word + "%'");
}

int run(int argc, char** argv) {
    int minutes = 60;
    Workload w;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
            return argv[++i];
        };
        if (a == "--rate") {
            w.rate = std::stod(value());
        } else if (a == "--mix") {
            if (std::sscanf(value().c_str(), "%d:%d:%d", &w.execs, &w.shells, &w.jobs) != 3)
                throw std::runtime_error("--mix EXEC:SHELL:JOB");
        } else if (a == "--restarts") {
            if (std::sscanf(value().c_str(), "%lf:%lf", &w.restartFrom, &w.restartTo) != 2)
                throw std::runtime_error("--restarts FROM_MIN:TO_MIN");
        } else if (a == "--restart-every") {
            w.restartEverySeconds = std::max(1, std::stoi(value()));
        } else {
            minutes = std::max(1, std::stoi(a));
        }
    }
    if (w.rate <= 0 || w.execs < 0 || w.shells < 0 || w.jobs < 0 || w.execs + w.shells + w.jobs == 0)
        throw std::runtime_error("--rate must be positive and --mix not all zero");
    if (w.restartFrom < 0) {
        w.restartFrom = minutes / 3.0;
        w.restartTo = minutes * 2.0 / 3.0;
    }

    Harness h;
    h.startRelay();
    fs::path work = h.dir() / "work";
    fs::create_directories(work);
    Driven defaults, short1m;
    defaults.id = "soakdef";
    defaults.email = "soak-default@example.org";
    short1m.id = "soak1m";
    short1m.email = "soak-1m@example.org";
    std::vector<Driven*> ds = {&defaults, &short1m};
    // Workers end before their Driven goes, even when something throws.
    struct JoinWorkers {
        std::vector<Driven*>& ds;
        ~JoinWorkers() { stop(); }
        void stop() {
            g_stop = true;
            for (auto* d : ds)
                if (d->worker.joinable()) d->worker.join();
        }
    } workers{ds};
    for (auto* d : ds) {
        auto r = h.setupDaemon(d->id, d->email, {work.string()});
        if (r.status != 0) throw std::runtime_error("setup of " + d->id + " failed: " + r.err);
        d->daemon = startNohupDaemon(h, d->id);
        if (!h.waitLinkState(d->id, "connected", 60s))
            throw std::runtime_error(d->id + " did not connect:\n" + readFile(h.home(d->id) / (d->id + ".log")));
        d->token = h.login(d->email);
    }
    // Applied live, over D-Bus, as a user would.
    for (const char* key : {"audit_retention", "job_retention"}) {
        auto r = ctl(h, short1m.id, {"config", "set", key, "1m"});
        if (r.status != 0) throw std::runtime_error(std::string("config set ") + key + ": " + r.out + r.err);
    }
    Settings d;
    defaults.label = "defaults (audit " + formatDuration(d.auditRetention) + ", jobs " +
                     formatDuration(d.jobRetention) + ", cap " + formatSize(d.stateMaxBytes) + ")";
    short1m.label = "retention 1m (audit_retention 1m, job_retention 1m)";

    std::printf(
        "soak_bench: %d min; per daemon %.0f ops/s, mix exec:shell:job %d:%d:%d; relay restarted every %d s "
        "from minute %.1f to %.1f\n",
        minutes, w.rate, w.execs, w.shells, w.jobs, w.restartEverySeconds, w.restartFrom, w.restartTo);
    std::printf("both daemons: nohup mode (--log-file, info level), LOCAL_MODE=1, one agent connection each\n");
    std::printf("daemon pids: %s %d, %s %d; relay pid %d\n", defaults.id.c_str(), defaults.daemon.pid(),
                short1m.id.c_str(), short1m.daemon.pid(), h.relayPid());

    std::vector<std::vector<Sample>> samples(ds.size());
    for (std::size_t i = 0; i < ds.size(); ++i) samples[i].push_back(sample(h, *ds[i]));
    printHeader(ds);
    printRow(0, samples);

    agent::AgentOptions base{*parseUrl(h.url()), {}, h.caFile()};
    for (auto* dv : ds) {
        auto options = base;
        options.token = dv->token;
        dv->worker = std::thread([dv, &w, options] { drive(*dv, w, options); });
    }

    auto start = Clock::now();
    auto restartEvery = std::chrono::seconds(w.restartEverySeconds);
    auto nextRestart = start +
                       std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(w.restartFrom * 60)) +
                       restartEvery;
    auto restartEnd =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(w.restartTo * 60));
    int restartsThisMinute = 0, restartsTotal = 0;
    std::string problem;
    for (int minute = 1; minute <= minutes && !g_stop; ++minute) {
        auto end = start + std::chrono::minutes(minute);
        while (Clock::now() < end && !g_stop) {
            if (Clock::now() >= nextRestart && nextRestart < restartEnd) {
                h.stopRelay();
                // Others may be relinking hpc-relay on this machine: retry for 3 minutes.
                for (int attempt = 1;; ++attempt) {
                    try {
                        h.startRelay();
                        break;
                    } catch (const std::exception& e) {
                        if (attempt < 90) {
                            std::this_thread::sleep_for(2s);
                            continue;
                        }
                        problem = std::string("the relay did not restart: ") + e.what();
                        g_stop = true;
                        break;
                    }
                }
                if (g_stop) break;
                ++restartsThisMinute;
                ++restartsTotal;
                nextRestart += restartEvery;
            }
            std::this_thread::sleep_for(200ms);
        }
        if (Clock::now() < end) break;  // interrupted: a partial minute is no row
        for (std::size_t i = 0; i < ds.size(); ++i) {
            samples[i].push_back(sample(h, *ds[i]));
            if (!ds[i]->daemon.running() || ds[i]->daemon.poll()) problem = ds[i]->id + " exited";
        }
        samples[0].back().restarts = restartsThisMinute;
        restartsThisMinute = 0;
        printRow(minute, samples);
        if (!problem.empty()) break;
    }
    workers.stop();
    if (!problem.empty()) std::printf("stopped early: %s\n", problem.c_str());

    // ---- Figures ----
    int measured = static_cast<int>(samples[0].size()) - 1;
    std::printf("\n%d minutes measured, %d relay restarts\n", measured, restartsTotal);
    for (auto* dv : ds) {
        std::lock_guard lock(dv->counters.m);
        std::printf("%s: %ld operations done, %ld failed%s%s\n", dv->id.c_str(), dv->counters.done.load(),
                    dv->counters.failed.load(),
                    dv->counters.lastError.empty() ? "" : "; last failure: ", dv->counters.lastError.c_str());
    }
    if (measured >= 3) {
        int from = measured - measured / 3;
        std::printf(
            "\ngrowth over the last third (minute %d to %d; target: RSS <= 512 KiB, descriptors and "
            "threads flat):\n",
            from, measured);
        for (std::size_t i = 0; i < ds.size(); ++i) {
            const auto& s = samples[i];
            long rssMin = s[static_cast<std::size_t>(from)].rssKiB, rssMax = rssMin;
            for (int m = from; m <= measured; ++m) {
                rssMin = std::min(rssMin, s[static_cast<std::size_t>(m)].rssKiB);
                rssMax = std::max(rssMax, s[static_cast<std::size_t>(m)].rssKiB);
            }
            const Sample &a = s[static_cast<std::size_t>(from)], &b = s[static_cast<std::size_t>(measured)];
            std::printf("  %-8s RSS %+ld KiB (range %ld KiB), PSS %+ld KiB, descriptors %+ld, threads %+ld\n",
                        ds[i]->id.c_str(), b.rssKiB - a.rssKiB, rssMax - rssMin, b.pssKiB - a.pssKiB, b.fds - a.fds,
                        b.threads - a.threads);
        }
    }
    // The target is about state.db; the WAL beside it is printed too: it
    // swings between checkpoints (SQLite's every 1000 pages, the pruner's
    // after each pass that deleted rows), whatever the retention.
    int ref = std::max(1, std::min(10, measured - 1));
    if (measured >= 2) {
        const auto& s = samples[1];
        auto relative = [&](auto bytesOf) {
            double at = static_cast<double>(bytesOf(s[static_cast<std::size_t>(ref)]));
            double lo = at, hi = at;
            for (int m = ref; m <= measured; ++m) {
                lo = std::min(lo, static_cast<double>(bytesOf(s[static_cast<std::size_t>(m)])));
                hi = std::max(hi, static_cast<double>(bytesOf(s[static_cast<std::size_t>(m)])));
            }
            std::printf("%.0f KiB at minute %d; at the end %+.1f%%; range over minutes %d-%d %+.1f%% .. %+.1f%%\n",
                        at / 1024, ref, 100 * (static_cast<double>(bytesOf(s.back())) - at) / at, ref, measured,
                        100 * (lo - at) / at, 100 * (hi - at) / at);
        };
        std::printf("\n%s against minute %d (target: state.db within +-10%%):\n  state.db:       ", short1m.id.c_str(),
                    ref);
        relative([](const Sample& x) { return x.dbBytes; });
        std::printf("  state.db + WAL: ");
        relative([](const Sample& x) { return x.dbBytes + x.walBytes; });
    }
    for (std::size_t i = 0; i < ds.size() && measured >= 1; ++i) {
        long ops = samples[i].back().done;
        if (ops > 0)
            std::printf("%s log: %.0f bytes per operation (%.2f MiB in all)\n", ds[i]->id.c_str(),
                        static_cast<double>(samples[i].back().logBytes) / static_cast<double>(ops),
                        static_cast<double>(samples[i].back().logBytes) / (1 << 20));
    }

    // Stop the daemons (SQLite folds the WAL into state.db on close), then
    // weigh the defaults' file.
    std::int64_t startBytes = samples[0][0].dbBytes + samples[0][0].walBytes;
    for (auto* dv : ds) dv->daemon.terminate(5000ms);
    h.stopRelay();
    long ops = defaults.counters.done;
    fs::path db = h.home(defaults.id) / "state.db";
    std::int64_t endBytes = fileBytes(db) + fileBytes(db.string() + "-wal");
    if (ops > 0) {
        auto sql = sqlite::Db::open(db.string());
        double audit = static_cast<double>(tableBytes(sql, "audit"));
        double jobs = static_cast<double>(tableBytes(sql, "job"));
        double perOp = static_cast<double>(endBytes - startBytes) / static_cast<double>(ops);
        double perDay = 50000;
        double auditDays = static_cast<double>(d.auditRetention.count()) / 86400;
        double jobDays = static_cast<double>(d.jobRetention.count()) / 86400;
        double steady =
            (audit / static_cast<double>(ops) * auditDays + jobs / static_cast<double>(ops) * jobDays) * perDay;
        std::printf(
            "\ndefaults: state.db grew %.2f MiB for %ld operations: %.0f bytes per operation "
            "(audit tables %.0f, job tables %.0f per operation; %lld audit rows, %lld jobs)\n",
            static_cast<double>(endBytes - startBytes) / (1 << 20), ops, perOp, audit / static_cast<double>(ops),
            jobs / static_cast<double>(ops), static_cast<long long>(sql.queryInt("SELECT COUNT(*) FROM audit")),
            static_cast<long long>(sql.queryInt("SELECT COUNT(*) FROM jobs")));
        std::printf(
            "a year at 50,000 operations a day: %.1f GiB if nothing were pruned; with the defaults "
            "%.1f MiB (audit %s + jobs %s of this mix), cap %s\n",
            perOp * perDay * 365 / (1 << 30), std::min(steady, static_cast<double>(d.stateMaxBytes)) / (1 << 20),
            formatDuration(d.auditRetention).c_str(), formatDuration(d.jobRetention).c_str(),
            formatSize(d.stateMaxBytes).c_str());
    }
    return problem.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    struct sigaction sa {};
    sa.sa_handler = onSignal;
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
    try {
        return run(argc, argv);  // the daemons and the relay are stopped by pid on the way out
    } catch (const std::exception& e) {
        g_stop = true;
        std::fprintf(stderr, "soak_bench: %s\n", e.what());
        return 1;
    }
}
