#pragma once
/// A string that must never be printed: API keys, tokens, one-time codes.
/// It has no stream operator and no implicit conversion; code that needs the
/// value calls reveal(), which is easy to find in review.

#include <string>
#include <utility>

namespace hpc {

class Secret {
public:
    Secret() = default;
    explicit Secret(std::string value) : m_value(std::move(value)) {}
    const std::string& reveal() const { return m_value; }
    bool empty() const { return m_value.empty(); }
    /// What logs and status output show instead of the value.
    static constexpr const char* kMask = "********";
    bool operator==(const Secret&) const = default;

private:
    std::string m_value;
};

}  // namespace hpc
