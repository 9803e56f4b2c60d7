#include "bus_name.hpp"

#include <sys/stat.h>

#include <cstdlib>

namespace hpc::bus {

std::string escapeLabel(std::string_view id) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (std::size_t i = 0; i < id.size(); ++i) {
        auto c = static_cast<unsigned char>(id[i]);
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        bool digit = c >= '0' && c <= '9';
        if (alpha || (digit && i > 0)) {
            out += static_cast<char>(c);
        } else {
            out += '_';
            out += kHex[c >> 4];
            out += kHex[c & 15];
        }
    }
    return out.empty() ? "_" : out;
}

std::string busNameFor(std::string_view daemonId) { return kNamePrefix + escapeLabel(daemonId); }

std::filesystem::path privateBusSocket(const std::filesystem::path& home, std::string_view daemonId) {
    return home / (std::string(daemonId) + ".bus");
}

std::string privateBusAddress(const std::filesystem::path& home, std::string_view daemonId) {
    return "unix:path=" + privateBusSocket(home, daemonId).string();
}

std::string sessionBusAddress() {
    if (const char* a = std::getenv("DBUS_SESSION_BUS_ADDRESS"); a && *a) return a;
    if (const char* rt = std::getenv("XDG_RUNTIME_DIR"); rt && *rt) {
        std::string path = std::string(rt) + "/bus";
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) return "unix:path=" + path;
    }
    return {};
}

}  // namespace hpc::bus
