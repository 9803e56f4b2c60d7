#include "backoff.hpp"

#include <gtest/gtest.h>

using namespace std::chrono_literals;
using hpc::Backoff;

TEST(Backoff, EveryDelayStaysWithinTheGrowingCeiling) {
    Backoff b(100ms, 5000ms, 10ms);
    for (int i = 0; i < 200; ++i) {
        auto ceiling = b.currentCeiling();
        auto d = b.next();
        EXPECT_GE(d, 10ms);
        EXPECT_LE(d, ceiling);
        EXPECT_LE(ceiling, 5000ms);
    }
}

TEST(Backoff, CeilingDoublesUntilTheCap) {
    Backoff b(100ms, 1000ms);
    EXPECT_EQ(b.currentCeiling(), 100ms);
    b.next();
    EXPECT_EQ(b.currentCeiling(), 200ms);
    b.next();
    EXPECT_EQ(b.currentCeiling(), 400ms);
    b.next();
    EXPECT_EQ(b.currentCeiling(), 800ms);
    b.next();
    EXPECT_EQ(b.currentCeiling(), 1000ms);
    for (int i = 0; i < 100; ++i) b.next();
    EXPECT_EQ(b.currentCeiling(), 1000ms) << "no overflow after many attempts";
}

TEST(Backoff, ResetStartsOverFromBase) {
    Backoff b(100ms, 1000ms);
    for (int i = 0; i < 5; ++i) b.next();
    b.reset();
    EXPECT_EQ(b.currentCeiling(), 100ms);
}

TEST(Backoff, JitterSpreadsDelaysAcrossTheWindow) {
    // Full jitter: across many draws at the cap, both halves of the window occur.
    Backoff b(1000ms, 1000ms, 1ms);
    int low = 0, high = 0;
    for (int i = 0; i < 400; ++i) (b.next() < 500ms ? low : high)++;
    EXPECT_GT(low, 50);
    EXPECT_GT(high, 50);
}
