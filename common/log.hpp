#pragma once
/// Logging: one line per event.
///
/// Under systemd (JOURNAL_STREAM set) lines go to stderr with `<N>` priority
/// prefixes that journald reads; otherwise each line gets a UTC timestamp and
/// goes to stderr or to a file. Never pass a secret to these functions.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hpc::log {

enum class Level { Error = 3, Warning = 4, Notice = 5, Info = 6, Debug = 7 };

/// Decides the output once at start: a file path (appended, 0600), or empty
/// for stderr. Journald prefixes are used when JOURNAL_STREAM is set and no
/// file is given. Safe to call again (the last call wins).
void init(const std::string& filePath = {}, Level threshold = Level::Info);
void setThreshold(Level threshold);
/// File mode only: once the file would pass `maxBytes`, it is renamed to
/// `<file>.1` (`.1` to `.2`, ..., keeping `files` in all) and a new one is
/// started, so the log takes at most about files x maxBytes. `tail -F`
/// follows across a rotation. 0 turns rotation off (the default).
void setRotation(std::uint64_t maxBytes, int files);
/// Under systemd: entries go to journald's native socket with these extra
/// "NAME=value" fields (e.g. USER_UNIT=hpc-daemon.service, so a bare
/// `journalctl --user -u hpc-daemon` finds an instance's lines), falling back
/// to stderr lines when the socket is not there. No effect outside journal mode.
void addJournalFields(const std::string& identifier, std::vector<std::string> fields);
bool enabled(Level level);
void write(Level level, std::string_view message);

inline void error(std::string_view m) { write(Level::Error, m); }
inline void warning(std::string_view m) { write(Level::Warning, m); }
inline void notice(std::string_view m) { write(Level::Notice, m); }
inline void info(std::string_view m) { write(Level::Info, m); }
inline void debug(std::string_view m) { write(Level::Debug, m); }

}  // namespace hpc::log
