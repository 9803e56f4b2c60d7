#include "prompter.hpp"

#include "errors.hpp"

#include <unistd.h>

#include <iostream>
#include <sstream>

namespace hpc::ctl {
namespace {

std::string trim(const std::string& s) {
    auto b = s.find_first_not_of(" \t\r");
    if (b == std::string::npos) return {};
    auto e = s.find_last_not_of(" \t\r");
    return s.substr(b, e - b + 1);
}

}  // namespace

Prompter::Prompter() : m_tty(::isatty(STDIN_FILENO) != 0) {}

std::string Prompter::readLine(const std::string& what) {
    std::string line;
    if (!std::getline(std::cin, line))
        throw Error(ErrorCode::BadRequest, "stopped: no answer for " + what + " (end of input)");
    if (!m_tty) std::cerr << "\n";  // the answer is not echoed by a terminal
    return trim(line);
}

std::string Prompter::ask(const std::string& question, const std::string& def) {
    std::cerr << question << (def.empty() ? "" : " [" + def + "]") << ": " << std::flush;
    std::string answer = readLine(question);
    return answer.empty() ? def : answer;
}

bool Prompter::confirm(const std::string& question) {
    for (int i = 0; i < 5; ++i) {
        std::string a = ask(question + " (yes/no)");
        if (a == "yes" || a == "y") return true;
        if (a == "no" || a == "n") return false;
        std::cerr << "Please answer yes or no.\n";
    }
    return false;
}

Secret Prompter::code(const std::string& email) {
    std::cerr << "Enter the code sent to " << email << ": " << std::flush;
    std::string c = readLine("the sign-in code");
    if (c.empty()) throw Error(ErrorCode::BadRequest, "the sign-in code is empty");
    return Secret(c);
}

void Prompter::say(const std::string& text) { std::cerr << text << "\n"; }

std::vector<std::string> splitList(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream parts(text);
    std::string part;
    while (std::getline(parts, part, ','))
        if (!trim(part).empty()) out.push_back(trim(part));
    return out;
}

}  // namespace hpc::ctl
