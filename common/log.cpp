#include "log.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <vector>

namespace hpc::log {
namespace {

struct State {
    int fd = 2;
    bool journal = false;
    Level threshold = Level::Info;
    int journalSocket = -1;           ///< journald's native socket, when fields are set
    std::string identifier;           ///< SYSLOG_IDENTIFIER
    std::vector<std::string> fields;  ///< "NAME=value" added to every entry
    std::string path;                 ///< the log file, when there is one
    std::uint64_t size = 0;           ///< its size, as written through here
    std::uint64_t maxBytes = 0;       ///< rotate past this; 0: never
    int files = 0;
};
State g_state;

std::string_view levelName(Level l) {
    switch (l) {
        case Level::Error:
            return "error";
        case Level::Warning:
            return "warning";
        case Level::Notice:
            return "notice";
        case Level::Info:
            return "info";
        case Level::Debug:
            return "debug";
    }
    return "info";
}

/// journald's native protocol: one datagram of NAME=value lines. False when
/// it could not be sent (the caller writes the line to stderr instead).
bool sendNative(Level level, std::string_view message) {
    std::string entry = "PRIORITY=" + std::to_string(static_cast<int>(level)) +
                        "\nSYSLOG_IDENTIFIER=" + g_state.identifier + "\nMESSAGE=";
    for (char c : message) entry += (c == '\n' || c == '\r') ? ' ' : c;
    entry += '\n';
    for (const auto& f : g_state.fields) entry += f + '\n';
    return ::send(g_state.journalSocket, entry.data(), entry.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(entry.size());
}

int openLogFile(const std::string& path) {
    int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) ::fchmod(fd, 0600);
    return fd;
}

/// <file>.N-1 -> <file>.N ... <file> -> <file>.1, then a fresh <file>. When
/// the new file cannot be opened (a full disk) the old descriptor is kept.
void rotate() {
    const std::string& p = g_state.path;
    for (int n = g_state.files - 1; n >= 1; --n) {
        std::string from = n == 1 ? p : p + "." + std::to_string(n - 1);
        ::rename(from.c_str(), (p + "." + std::to_string(n)).c_str());
    }
    int fd = openLogFile(p);
    if (fd < 0) return;
    ::close(g_state.fd);
    g_state.fd = fd;
    g_state.size = 0;
}

}  // namespace

void setRotation(std::uint64_t maxBytes, int files) {
    g_state.maxBytes = maxBytes;
    g_state.files = std::max(files, 2);
}

void addJournalFields(const std::string& identifier, std::vector<std::string> fields) {
    if (!g_state.journal || fields.empty()) return;
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, "/run/systemd/journal/socket", sizeof addr.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        return;
    }
    if (g_state.journalSocket >= 0) ::close(g_state.journalSocket);
    g_state.journalSocket = fd;
    g_state.identifier = identifier;
    g_state.fields = std::move(fields);
}

void init(const std::string& filePath, Level threshold) {
    if (g_state.fd > 2) ::close(g_state.fd);
    if (g_state.journalSocket >= 0) ::close(g_state.journalSocket);
    g_state = State{};
    g_state.threshold = threshold;
    if (!filePath.empty()) {
        int fd = openLogFile(filePath);
        if (fd < 0) throw std::runtime_error("cannot open log file " + filePath + ": " + std::strerror(errno));
        g_state.fd = fd;
        g_state.path = filePath;
        struct stat st {};
        if (::fstat(fd, &st) == 0) g_state.size = static_cast<std::uint64_t>(st.st_size);
        return;
    }
    g_state.journal = std::getenv("JOURNAL_STREAM") != nullptr;
}

void setThreshold(Level threshold) { g_state.threshold = threshold; }

bool enabled(Level level) { return static_cast<int>(level) <= static_cast<int>(g_state.threshold); }

void write(Level level, std::string_view message) {
    if (!enabled(level)) return;
    if (g_state.journalSocket >= 0 && sendNative(level, message)) return;
    std::string line;
    line.reserve(message.size() + 48);
    if (g_state.journal) {
        line += '<';
        line += static_cast<char>('0' + static_cast<int>(level));
        line += '>';
    } else {
        timespec ts{};
        ::clock_gettime(CLOCK_REALTIME, &ts);
        tm t{};
        ::gmtime_r(&ts.tv_sec, &t);
        char buf[40];
        std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &t);
        std::snprintf(buf + n, sizeof buf - n, ".%03ldZ ", ts.tv_nsec / 1000000);
        line += buf;
        line += levelName(level);
        line += ": ";
    }
    // One event is one line: newlines inside a message would split it.
    for (char c : message) line += (c == '\n' || c == '\r') ? ' ' : c;
    line += '\n';
    if (g_state.maxBytes > 0 && !g_state.path.empty() && g_state.size > 0 &&
        g_state.size + line.size() > g_state.maxBytes)
        rotate();
    g_state.size += line.size();
    const char* p = line.data();
    std::size_t left = line.size();
    while (left > 0) {
        ssize_t w = ::write(g_state.fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += w;
        left -= static_cast<std::size_t>(w);
    }
}

}  // namespace hpc::log
