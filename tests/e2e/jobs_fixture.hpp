#pragma once
// The fixtures of the job tests: a relay, a profile and a daemon whose jobs
// go to the test SLURM cluster (started by the ctest fixture through
// scripts/slurm-cluster.sh) or to the local backend, by the test's parameter.
#include "errors.hpp"
#include "harness.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace hpc::test::jobs {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

inline std::string slurmConf() { return std::string(HPC_SLURM_DIR) + "/etc/slurm.conf"; }

inline std::string str(const json::object& o, const char* key) {
    auto* v = o.if_contains(key);
    return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

class Jobs : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        if (slurm() && !fs::exists(slurmConf()))
            GTEST_SKIP() << "no test SLURM cluster (scripts/slurm-cluster.sh start needs root)";
        m_h.startRelay();
        m_work = m_h.dir() / "work";
        fs::create_directories(m_work);
        // SLURM jobs run as the user through slurmd: the work tree must be reachable.
        fs::permissions(m_h.dir(), fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
        ASSERT_EQ(m_h.setupDaemon("j", "j@example.org", {m_work.string()}).status, 0);
        m_token = m_h.login("j@example.org");
        beforeDaemonStart();
        ASSERT_NO_FATAL_FAILURE(startDaemon());
        m_agent = m_h.agent(m_token);
    }

    bool slurm() const { return GetParam() == "slurm"; }
    virtual void beforeDaemonStart() {}

    std::vector<std::string> daemonEnv() const {
        std::vector<std::string> env = m_extraEnv;
        env.push_back(slurm() ? "SLURM_CONF=" + slurmConf() : "LOCAL_MODE=1");
        if (!m_pathPrefix.empty()) env.push_back("PATH=" + m_pathPrefix + ":" + std::getenv("PATH"));
        return env;
    }

    void startDaemon() {
        // A relay that comes back is found within 2 s, not after a backoff of up to 30 s.
        std::vector<std::string> args = {"--job-poll-min-seconds",  "1", "--job-poll-max-seconds", "2",
                                         "--reconnect-max-seconds", "2"};
        args.insert(args.end(), m_extraArgs.begin(), m_extraArgs.end());
        m_h.startDaemon("j", args, daemonEnv());
        ASSERT_TRUE(m_h.waitConnected(m_token, "j")) << m_h.daemonLog("j");
    }

    json::object submit(const std::string& script, std::optional<json::value> context = std::nullopt) {
        agent::JobSpec spec;
        spec.script = script;
        spec.context = std::move(context);
        return m_agent->submitJob("j", spec);
    }

    agent::JobCallback waitFor(const std::string& jobId, std::chrono::seconds limit = 60s) {
        auto cb = m_agent->waitForJob("j", jobId, limit);
        if (!cb) throw std::runtime_error("no callback for " + jobId + "\n" + m_h.daemonLog("j"));
        return *cb;
    }

    std::string stateOf(const std::string& jobId) { return str(m_agent->jobStatus("j", jobId), "state"); }

    bool waitState(const std::string& jobId, const std::string& state) {
        return waitUntil([&] { return stateOf(jobId) == state; }, 60s, 100ms);
    }

    Harness m_h;
    fs::path m_work;
    Secret m_token;
    std::string m_pathPrefix;
    std::vector<std::string> m_extraEnv;
    std::vector<std::string> m_extraArgs;  ///< more hpc-daemond options
    std::unique_ptr<agent::AgentClient> m_agent;
};

/// Every squeue, scontrol and sacct call the daemon makes goes through a
/// wrapper that logs it and runs the real program.
class SlurmJobs : public Jobs {
protected:
    void SetUp() override {
        fs::path bin = m_h.dir() / "slurm-wrappers";
        for (std::string tool : {"squeue", "scontrol", "sacct"})
            writeExecutable(bin / tool, "#!/bin/sh\necho \"$*\" >> " + (m_h.dir() / (tool + ".calls")).string() +
                                            "\nexec /usr/bin/" + tool + " \"$@\"\n");
        m_pathPrefix = bin.string();
        Jobs::SetUp();
    }

    std::vector<std::string> calls(const std::string& tool) const {
        std::vector<std::string> out;
        std::istringstream in(readFile(m_h.dir() / (tool + ".calls")));
        for (std::string line; std::getline(in, line);) out.push_back(line);
        return out;
    }

    CommandResult slurmCommand(std::vector<std::string> argv) {
        return runCommand(argv, {}, {"SLURM_CONF=" + slurmConf()}, 30s);
    }
};

}  // namespace hpc::test::jobs
