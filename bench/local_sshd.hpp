#pragma once
// A private sshd on a loopback port with keys made for the run: the peer the
// benchmarks compare with.
#include "harness.hpp"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace hpc::test {

/// A private sshd on a loopback port with a key made now; stopped on destruction.
class LocalSshd {
public:
    explicit LocalSshd(const std::filesystem::path& dir) : m_dir(dir) {
        namespace fs = std::filesystem;
        fs::create_directories(dir);
        fs::create_directories("/run/sshd");
        auto keygen = [&](const std::string& file) {
            auto r = runCommand({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", (dir / file).string()});
            if (r.status != 0) throw std::runtime_error("ssh-keygen failed: " + r.err);
        };
        keygen("host_key");
        keygen("client_key");
        fs::copy_file(dir / "client_key.pub", dir / "authorized_keys");
        // sshd reads authorized_keys as the target user: let that user reach it.
        fs::permissions(dir.parent_path(), fs::perms::others_exec | fs::perms::group_exec, fs::perm_options::add);
        fs::permissions(dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                 fs::perms::others_read | fs::perms::others_exec);
        fs::permissions(dir / "authorized_keys", fs::perms::owner_read | fs::perms::owner_write |
                                                     fs::perms::group_read | fs::perms::others_read);
        m_port = 20000 + static_cast<int>(::getpid() % 20000);
        std::ofstream conf(dir / "sshd_config");
        conf << "Port " << m_port << "\nListenAddress 127.0.0.1\nHostKey " << (dir / "host_key").string()
             << "\nAuthorizedKeysFile " << (dir / "authorized_keys").string() << "\nPidFile "
             << (dir / "sshd.pid").string()
             << "\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nLogLevel ERROR\n"
                // scp (OpenSSH 9) speaks SFTP.
                "Subsystem sftp internal-sftp\n";
        conf.close();
        SpawnOptions o;
        o.argv = {"/usr/sbin/sshd", "-D", "-e", "-f", (dir / "sshd_config").string()};
        o.outputFile = (dir / "sshd.log").string();
        m_sshd = ChildGuard(spawn(o).pid);
        std::string user = benchUser();
        m_user = user;
        m_base = {"ssh",
                  "-q",
                  "-p",
                  std::to_string(m_port),
                  "-i",
                  (dir / "client_key").string(),
                  "-o",
                  "StrictHostKeyChecking=no",
                  "-o",
                  "UserKnownHostsFile=/dev/null",
                  "-o",
                  "BatchMode=yes",
                  "-o",
                  "ControlMaster=auto",
                  "-o",
                  "ControlPath=" + (dir / "cm").string(),
                  "-o",
                  "ControlPersist=120",
                  user + "@127.0.0.1"};
        // The first connection becomes the master; wait until it works.
        if (!waitUntil([&] { return run("true") == 0; }, std::chrono::seconds(15)))
            throw std::runtime_error("sshd did not accept the key: " + slurp(dir / "sshd.log"));
    }
    ~LocalSshd() {
        auto exitArgs = m_base;
        exitArgs.insert(exitArgs.end() - 1, {"-O", "exit"});
        try {
            runCommand(exitArgs, {}, {}, std::chrono::seconds(5));
        } catch (...) {
        }
        m_sshd.terminate(std::chrono::milliseconds(2000));
    }
    /// The ssh command line that runs `command` (with -tt: on a remote PTY).
    std::vector<std::string> command(const std::string& remote, bool tty) {
        auto argv = m_base;
        if (tty) argv.insert(argv.begin() + 1, "-tt");
        argv.push_back(remote);
        return argv;
    }
    int run(const std::string& command) {
        auto argv = m_base;
        argv.push_back(command);
        return runCommand(argv, {}, {}, std::chrono::seconds(30)).status;
    }

    /// scp between this machine and the peer, over the same master
    /// connection; name the peer's side with remote().
    std::vector<std::string> scp(const std::string& from, const std::string& to) const {
        return {"scp", "-q",
                "-P",  std::to_string(m_port),
                "-i",  (m_dir / "client_key").string(),
                "-o",  "StrictHostKeyChecking=no",
                "-o",  "UserKnownHostsFile=/dev/null",
                "-o",  "BatchMode=yes",
                "-o",  "ControlPath=" + (m_dir / "cm").string(),
                from,  to};
    }
    std::string remote(const std::string& path) const { return m_user + "@127.0.0.1:" + path; }
    /// The account the peer logs in as.
    const std::string& user() const { return m_user; }

    const std::string& note() const { return m_note; }
    /// The listening sshd: the server processes of every connection descend from it.
    pid_t serverPid() const { return m_sshd.pid(); }
    /// The pid of the ssh master process (the persistent connection).
    pid_t masterPid() {
        auto argv = m_base;
        argv.insert(argv.end() - 1, {"-O", "check"});
        auto r = runCommand(argv, {}, {}, std::chrono::seconds(5));
        auto p = r.err.find("pid=");
        return p == std::string::npos ? -1 : std::atoi(r.err.c_str() + p + 4);
    }

private:
    /// The remote side of ssh runs `$SHELL -c CMD`, and bash then reads
    /// ~/.bashrc (here: ~120 ms of pyenv set-up for root). hpc-daemond runs an
    /// argv without a shell, so as root the peer logs in as an account whose
    /// shell is /bin/sh (dash reads no rc file) to compare transports only.
    std::string benchUser() {
        const char* envUser = std::getenv("USER");
        if (::getuid() != 0) {
            m_note = "as " + std::string(envUser ? envUser : "?") + ", including that login shell's start-up";
            return envUser ? envUser : "";
        }
        const std::string name = "hpc-bench";
        if (runCommand({"id", "-u", name}).status != 0 &&
            runCommand({"useradd", "-M", "-d", "/tmp", "-s", "/bin/sh", name}).status != 0)
            throw std::runtime_error("cannot create the benchmark account " + name);
        runCommand({"usermod", "-p", "*", "-s", "/bin/sh", name});  // unlock for key login
        m_note = "as " + name + " (login shell /bin/sh)";
        return name;
    }

    std::string m_note;
    std::string m_user;
    static std::string slurp(const std::filesystem::path& p) {
        std::ifstream in(p);
        return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    std::filesystem::path m_dir;
    int m_port = 0;
    ChildGuard m_sshd;
    std::vector<std::string> m_base;
};

}  // namespace hpc::test
