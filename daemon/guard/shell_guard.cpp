#include "guard/shell_guard.hpp"

#include <guard_bash.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <stdexcept>

namespace hpc::daemon {
namespace {

std::string singleQuoted(const std::string& s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

}  // namespace

void writeShellGuard(const std::filesystem::path& file, const std::vector<std::string>& dirs) {
    std::string list;
    for (const auto& d : dirs) list += (list.empty() ? "" : " ") + singleQuoted(d);
    std::string text = kGuardBash;
    auto at = text.find("@ALLOWED_DIRS@");
    if (at != std::string::npos) text.replace(at, 14, list);
    std::string tmp = file.string() + ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error("cannot write " + tmp);
    bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::close(fd);
    if (!ok || ::rename(tmp.c_str(), file.c_str()) != 0) throw std::runtime_error("cannot write " + file.string());
}

std::vector<std::string> guardedShell(const std::string& shell, const std::filesystem::path& guardFile) {
    if (std::filesystem::path(shell).filename() != "bash" || guardFile.empty()) return {shell};
    return {shell, "--rcfile", guardFile.string(), "-i"};
}

}  // namespace hpc::daemon
