#pragma once
/// Capped exponential backoff with full jitter: the n-th delay is uniform in
/// [0, min(cap, base * 2^n)]. A floor keeps a reconnect loop from spinning
/// when the random draw is near zero.

#include <chrono>
#include <random>

namespace hpc {

class Backoff {
public:
    using Duration = std::chrono::milliseconds;

    Backoff(Duration base, Duration cap, Duration floor = Duration(100));

    /// The delay before the next attempt; each call grows the window.
    Duration next();
    /// The largest delay next() can return at the current attempt.
    Duration currentCeiling() const;
    /// After a success: the next delay starts from base again.
    void reset() { m_attempt = 0; }
    unsigned attempt() const { return m_attempt; }

private:
    Duration m_base;
    Duration m_cap;
    Duration m_floor;
    unsigned m_attempt = 0;
    std::mt19937_64 m_rng;
};

}  // namespace hpc
