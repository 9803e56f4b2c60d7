#include "job_files.hpp"

#include "util.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace hpc::daemon {
namespace {

void writePrivate(const std::string& path, std::string_view content, mode_t mode) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) throw std::runtime_error("cannot create " + path + ": " + std::strerror(errno));
    std::size_t done = 0;
    while (done < content.size()) {
        ssize_t n = ::write(fd, content.data() + done, content.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int err = errno;
            ::close(fd);
            throw std::runtime_error("cannot write " + path + ": " + std::strerror(err));
        }
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0)
        throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
}

/// The `#SBATCH` lines of the script's first comment block (where sbatch
/// itself would look for them).
std::string sbatchDirectives(std::string_view script) {
    std::string out;
    std::istringstream lines{std::string(script)};
    std::string line;
    bool first = true;
    while (std::getline(lines, line)) {
        if (first && line.rfind("#!", 0) == 0) {
            first = false;
            continue;
        }
        first = false;
        if (line.rfind("#SBATCH", 0) == 0) {
            out += line + "\n";
        } else if (!line.empty() && line[0] != '#' && line.find_first_not_of(" \t\r") != std::string::npos) {
            break;  // the first command ends the directive block
        }
    }
    return out;
}

}  // namespace

std::string shellQuote(std::string_view text) {
    std::string out = "'";
    for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

void writeJobFiles(const JobRecord& job, std::string_view script, bool slurm) {
    fs::path dir(job.dir);
    std::error_code ec;
    fs::create_directories(dir.parent_path(), ec);
    if (ec) throw std::runtime_error("cannot create " + dir.parent_path().string() + ": " + ec.message());
    if (::mkdir(dir.c_str(), 0700) != 0)
        throw std::runtime_error("cannot create " + dir.string() + ": " + std::strerror(errno));
    std::string scriptPath = job.dir + "/script";
    writePrivate(scriptPath, script, 0700);
    std::string quotedDir = shellQuote(job.dir);
    std::string shell = defaultShell();
    std::string run = script.rfind("#!", 0) == 0 ? "\"$job_dir/script\"" : shell + " \"$job_dir/script\"";
    std::string wrapper = "#!" + shell + "\n";
    if (slurm) wrapper += sbatchDirectives(script);
    wrapper += "# Written by hpc-daemond: runs the job's script, then records its exit status.\n";
    wrapper += "job_dir=" + quotedDir + "\n";
    if (!slurm) {
        // Its own pid, so a daemon killed before it recorded the pid still finds the job.
        wrapper += "printf '%d\\n' \"$$\" >\"$job_dir/pid.tmp\" && mv -f \"$job_dir/pid.tmp\" \"$job_dir/pid\"\n";
        wrapper += "exec >\"$job_dir/stdout\" 2>\"$job_dir/stderr\" </dev/null\n";
    }
    wrapper += "export HPC_JOB_ID=" + shellQuote(job.jobId) + " HPC_JOB_DIR=\"$job_dir\"\n";
    wrapper += run + "\n";
    wrapper += "rc=$?\n";
    wrapper += "printf '%d\\n' \"$rc\" >\"$job_dir/exit_status.tmp\" && mv -f \"$job_dir/exit_status.tmp\" \"$job_dir/exit_status\"\n";
    wrapper += "exit \"$rc\"\n";
    writePrivate(job.dir + "/wrapper", wrapper, 0700);
}

bool settleFromExitFile(JobRecord& job, const std::string& noFileReason) {
    std::ifstream in(job.exitStatusPath());
    int code = 0;
    if (in >> code) {
        job.exitCode = code;
        job.state = code == 0 ? "COMPLETED" : "FAILED";
        if (job.cancelRequested && code != 0) job.state = "CANCELLED";
        if (job.state == "FAILED" && job.reason.empty()) job.reason = "exit code " + std::to_string(code);
        return true;
    }
    job.state = job.cancelRequested ? "CANCELLED" : "FAILED";
    if (!job.cancelRequested) job.reason = noFileReason;
    return false;
}

std::string readTail(const std::string& path, std::size_t maxBytes) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return {};
    in.seekg(0, std::ios::end);
    auto size = static_cast<std::size_t>(std::max<std::streamoff>(0, in.tellg()));
    std::size_t start = size > maxBytes ? size - maxBytes : 0;
    in.seekg(static_cast<std::streamoff>(start));
    std::string out(size - start, '\0');
    in.read(out.data(), static_cast<std::streamsize>(out.size()));
    out.resize(static_cast<std::size_t>(in.gcount()));
    // Do not start inside a UTF-8 sequence (the tail would not be text).
    std::size_t skip = 0;
    while (start > 0 && skip < 3 && skip < out.size() && (static_cast<unsigned char>(out[skip]) & 0xC0) == 0x80) ++skip;
    return out.substr(skip);
}

}  // namespace hpc::daemon
