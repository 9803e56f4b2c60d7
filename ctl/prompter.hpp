#pragma once
/// Questions on the terminal for the setup interview. With a terminal, prompts
/// go to stderr and answers are read from it; without one (a script), answers
/// are read line by line from standard input and the prompts still go to
/// stderr so a log shows what was asked.

#include "secret.hpp"

#include <string>
#include <vector>

namespace hpc::ctl {

class Prompter {
public:
    Prompter();
    bool interactive() const { return m_tty; }
    /// Asks for a line; an empty answer gives `def`. Throws hpc::Error
    /// (BadRequest) at end of input.
    std::string ask(const std::string& question, const std::string& def = {});
    /// Asks until the answer is yes or no.
    bool confirm(const std::string& question);
    /// Reads the one-time code (never echoed back, never logged).
    Secret code(const std::string& email);
    /// Prints a paragraph to stderr.
    void say(const std::string& text);

private:
    std::string readLine(const std::string& what);
    bool m_tty;
};

/// Splits "a, b ,c" at commas (paths may contain spaces).
std::vector<std::string> splitList(const std::string& text);

}  // namespace hpc::ctl
