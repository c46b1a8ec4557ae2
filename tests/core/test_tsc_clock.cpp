// The hot path's TSC clock (tsc_clock.hpp): it tracks CLOCK_MONOTONIC, stays
// continuous when sluiced re-anchors it, steps when it is far off, and falls back to
// clock_gettime when the parameters say so or are left half-written.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <thread>

#include "sluice/core/tsc_clock.hpp"

using namespace sluice::core;

namespace {

constexpr int64_t kUs = 1000;
constexpr int64_t kMs = 1000 * kUs;

// Rewrites ns0 as a buggy or stale writer would: the clock then reads `by` ahead.
void shift(ClockParams &p, int64_t by) {
  p.seq.fetch_add(1);
  p.ns0.fetch_add(by);
  p.seq.fetch_add(1);
}

}  // namespace

TEST(TscClock, TicksToNanosecondsHandleATscJustBehindTheAnchor) {
  const uint64_t one_ns = uint64_t(1) << 32;  // mult for 1 ns per tick
  EXPECT_EQ(tsc_to_ns(1'000'010, 1'000'000, 5'000, one_ns), 5'010);
  EXPECT_EQ(tsc_to_ns(999'990, 1'000'000, 5'000, one_ns), 4'990);  // another CPU, 10 ticks behind
  EXPECT_EQ(tsc_to_ns(uint64_t(1) << 62, 0, 0, one_ns / 4), int64_t(1) << 60);  // no overflow
}

TEST(TscClock, WithoutParametersItIsClockGettime) {
  const TscClock c;
  EXPECT_FALSE(c.uses_tsc());
  EXPECT_LT(std::llabs(offset_from_monotonic(c)), 50 * kUs);
}

TEST(TscClock, ACalibratedClockTracksMonotonic) {
  ClockParams p{};
  calibrate_clock(p);
  const TscClock c(&p);
  if (!tsc_usable()) {
    // This host's kernel does not keep time with the TSC: nor may we.
    EXPECT_EQ(p.kind.load(), kClockMonotonic);
    EXPECT_FALSE(c.uses_tsc());
    GTEST_SKIP() << "the TSC is not this host's clocksource";
  }
  ASSERT_EQ(p.kind.load(), kClockTsc);
  ASSERT_TRUE(c.uses_tsc());
  EXPECT_EQ(p.seq.load() % 2, 0u);
  EXPECT_LT(std::llabs(offset_from_monotonic(c)), 50 * kUs);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // A rate error of e ppm shows as e x 0.2 us after 200 ms; 10 ms of calibration
  // leaves a few ppm.
  EXPECT_LT(std::llabs(offset_from_monotonic(c)), 50 * kUs);
}

TEST(TscClock, ReanchoringIsContinuousAndSlewsAnOffsetAway) {
  if (!tsc_usable()) GTEST_SKIP() << "the TSC is not this host's clocksource";
  ClockParams p{};
  calibrate_clock(p);
  const TscClock c(&p);
  shift(p, 2 * kMs);  // now 2 ms ahead: under the step threshold, so it must slew
  const int64_t before = offset_from_monotonic(c);
  ASSERT_GT(before, 1900 * kUs);
  recalibrate_clock(p);
  const int64_t after = offset_from_monotonic(c);
  EXPECT_LT(std::llabs(after - before), 20 * kUs) << "a re-anchor must not jump the clock";
  int64_t last = after;
  for (int i = 0; i < 6; ++i) {  // 600 ms at 1,000 ppm at most: 0.6 ms removed at most
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    recalibrate_clock(p);
    const int64_t now = offset_from_monotonic(c);
    EXPECT_LT(now, last + 10 * kUs) << "the offset shrinks, step after step";
    EXPECT_GT(now, last - 150 * kUs) << "slewed, never stepped";
    last = now;
  }
  EXPECT_LT(last, before - 150 * kUs);
}

TEST(TscClock, AFarOffClockSteps) {
  if (!tsc_usable()) GTEST_SKIP() << "the TSC is not this host's clocksource";
  ClockParams p{};
  calibrate_clock(p);
  const TscClock c(&p);
  shift(p, -50 * kMs);
  ASSERT_LT(offset_from_monotonic(c), -49 * kMs);
  recalibrate_clock(p);
  EXPECT_LT(std::llabs(offset_from_monotonic(c)), 50 * kUs);
}

TEST(TscClock, AWriterKilledMidUpdateLeavesReadersOnClockGettime) {
  if (!tsc_usable()) GTEST_SKIP() << "the TSC is not this host's clocksource";
  ClockParams p{};
  calibrate_clock(p);
  const TscClock c(&p);
  p.seq.fetch_add(1);     // odd: a writer started and never finished
  p.ns0.fetch_add(kMs);   // with half-written parameters a reader would be 1 ms off
  EXPECT_LT(std::llabs(offset_from_monotonic(c)), 50 * kUs);
  recalibrate_clock(p);  // the next sluiced finishes the update
  EXPECT_EQ(p.seq.load() % 2, 0u);
  EXPECT_LT(std::llabs(offset_from_monotonic(c)), 50 * kUs);
}

TEST(TscClock, TheEnvironmentCanTurnItOff) {
  ClockParams p{};
  calibrate_clock(p);
  ASSERT_EQ(setenv("SLUICE_CLOCK", "monotonic", 1), 0);
  const TscClock c(&p);
  EXPECT_FALSE(c.uses_tsc());
  ClockParams q{};
  calibrate_clock(q);
  EXPECT_EQ(q.kind.load(), kClockMonotonic);
  unsetenv("SLUICE_CLOCK");
}

TEST(TscClock, AnOpenClientFollowsSluicedOffTheTsc) {
  if (!tsc_usable()) GTEST_SKIP() << "the TSC is not this host's clocksource";
  ClockParams p{};
  calibrate_clock(p);
  const TscClock c(&p);  // opened while the TSC is on
  ASSERT_TRUE(c.uses_tsc());
  ASSERT_EQ(setenv("SLUICE_CLOCK", "monotonic", 1), 0);  // sluiced restarted with the TSC off
  recalibrate_clock(p);
  unsetenv("SLUICE_CLOCK");
  ASSERT_EQ(p.kind.load(), kClockMonotonic);
  EXPECT_LT(std::llabs(offset_from_monotonic(c)), 50 * kUs) << "the client must not compute from zeroed parameters";
}

TEST(TscClock, FarFromTheAnchorItIsClockGettime) {
  if (!tsc_usable()) GTEST_SKIP() << "the TSC is not this host's clocksource";
  ClockParams p{};
  calibrate_clock(p);
  const TscClock c(&p);
  shift(p, 1'000 * kMs);  // were the TSC path taken below, the clock would read 1 s ahead
  ASSERT_GT(offset_from_monotonic(c), 999 * kMs);
  const uint64_t anchor = p.tsc0.load();
  p.tsc0.store(read_tsc() + (uint64_t(1) << 32));  // the TSC reads far behind the anchor (a reset, a new host)
  EXPECT_LT(std::llabs(offset_from_monotonic(c)), 50 * kUs);
  p.tsc0.store(read_tsc() - p.valid_ticks.load() - 1);  // the last anchor is too old (sluiced stopped)
  EXPECT_LT(std::llabs(offset_from_monotonic(c)), 50 * kUs);
  p.tsc0.store(anchor);
  EXPECT_GT(offset_from_monotonic(c), 999 * kMs);
}

TEST(TscClock, ABaselineOfManySecondsKeepsItsRate) {
  // The rate is measured from an anchor seconds old: (ns << 32) / ticks must be
  // divided before it is narrowed, or every re-anchor after 2^32 ns (4.3 s) sees
  // a wild rate and steps (a 10 ms recalibration, and a jump for the clients).
  if (!tsc_usable()) GTEST_SKIP() << "the TSC is not this host's clocksource";
  ClockParams p{};
  calibrate_clock(p);
  const TscClock c(&p);
  const uint64_t mult = p.mult.load();
  const int64_t back_ns = 10'000 * kMs;
  p.anchor_tsc.fetch_sub(uint64_t(double(back_ns) * 4294967296.0 / double(mult)));
  p.anchor_ns.fetch_sub(back_ns);  // as if calibrated 10 s ago, at the same rate
  const int64_t anchor = p.anchor_ns.load();
  recalibrate_clock(p);
  EXPECT_EQ(p.anchor_ns.load(), anchor) << "re-anchoring stepped instead of slewing";
  EXPECT_NEAR(double(p.mult.load()), double(mult), double(mult) * 2e-3);
  EXPECT_LT(std::llabs(offset_from_monotonic(c)), 50 * kUs);
}
