#include "backoff.hpp"

#include <algorithm>

namespace hpc {

Backoff::Backoff(Duration base, Duration cap, Duration floor)
    : m_base(base), m_cap(std::max(cap, base)), m_floor(std::min(floor, base)), m_rng(std::random_device{}()) {}

Backoff::Duration Backoff::currentCeiling() const {
    // base * 2^attempt, saturating at cap without overflowing.
    auto ceiling = m_base;
    for (unsigned i = 0; i < m_attempt && ceiling < m_cap; ++i) ceiling *= 2;
    return std::min(ceiling, m_cap);
}

Backoff::Duration Backoff::next() {
    auto ceiling = currentCeiling();
    if (m_attempt < 64) ++m_attempt;
    std::uniform_int_distribution<long long> dist(m_floor.count(), std::max(m_floor, ceiling).count());
    return Duration(dist(m_rng));
}

}  // namespace hpc
