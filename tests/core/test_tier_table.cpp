// Invariant 3: a reader sees the old tier table or the new one, never a mix, and a
// change applies on the next call.
#include <gtest/gtest.h>

#include <thread>

#include "../support/fixture.hpp"
#include "sluice/core/clock.hpp"

using namespace sluice;
using namespace sluice::core;

TEST(TierTable, FlipsWhileAReaderHammersAcquire) {
  test::SegmentGuard seg("flip", test::spec_with({test::tier("a", 5, 1000, 64), test::tier("b", 5, 1000, 64)}));
  // Generation g publishes limit (g % 60) + 1 and window (limit * 1 ms) for tier a,
  // and the mirror for tier b: a torn read shows up as a mismatched pair.
  constexpr int kFlips = 10000;
  std::vector<uint32_t> published(kFlips + 8, 0);
  const uint64_t g0 = seg.owner->policy().generation.load();
  std::atomic<bool> done{false};
  std::atomic<uint64_t> decisions{0}, mismatches{0};
  std::thread reader([&] {
    auto l = seg.open();
    Decision d;
    std::string detail;
    for (uint64_t i = 0; !done.load(); ++i) {
      const std::string k = "k" + std::to_string(i % 97);
      if (l->acquire("a", k.data(), k.size(), 1, d, detail) != Status::ok) {
        ++mismatches;
        continue;
      }
      ++decisions;
      const uint64_t g = d.policy_generation;
      if (g > g0) {
        const uint32_t want = uint32_t((g - g0) % 60) + 1;
        if (d.limit != want || d.window_ns != int64_t(want) * 1'000'000) ++mismatches;
      } else if (d.limit != 5) {
        ++mismatches;
      }
    }
  });
  for (int i = 1; i <= kFlips; ++i) {
    const uint32_t lim = uint32_t(i % 60) + 1;
    const TierLimits rows[2] = {{lim, int64_t(lim) * 1'000'000, 0, 0, 0}, {61 - lim, int64_t(61 - lim) * 1'000'000, 0, 0, 0}};
    seg.owner->publish(rows);
    TierLimits seen;
    ASSERT_TRUE(read_tier(seg.owner->policy(), 0, seen));
    ASSERT_EQ(seen.limit, lim) << "a change applies to the very next read";
    // Let the reader decide at least once under each table (bounded wait).
    const uint64_t before = decisions.load();
    for (int spin = 0; decisions.load() == before && spin < 100000; ++spin) std::this_thread::yield();
  }
  done = true;
  reader.join();
  EXPECT_GT(decisions.load(), uint64_t(kFlips));
  EXPECT_EQ(mismatches.load(), 0u);
}

TEST(TierTable, ReadsNeverMixTwoTables) {
  test::SegmentGuard seg("mix", test::spec_with({test::tier("a", 1, 1000, 64)}));
  const TierLimits first{1, 7, 3, 1, 0};
  seg.owner->publish({&first, 1});
  std::atomic<bool> done{false};
  std::atomic<uint64_t> torn{0}, reads{0};
  std::thread reader([&] {
    while (!done || reads.load() == 0) {
      TierLimits t;
      read_tier(seg.owner->policy(), 0, t);
      ++reads;
      if (t.window_ns != int64_t(t.limit) * 7 || t.revenue_micros != uint64_t(t.limit) * 3 ||
          t.flags != t.limit % 2)
        ++torn;
    }
  });
  while (reads.load() == 0) std::this_thread::yield();
  for (uint32_t i = 1; i <= 2'000'000; ++i) {
    const uint32_t lim = i % 64 + 1;
    const TierLimits row{lim, int64_t(lim) * 7, uint64_t(lim) * 3, lim % 2, 0};
    seg.owner->publish({&row, 1});
  }
  done = true;
  reader.join();
  EXPECT_GT(reads.load(), 0u);
  EXPECT_EQ(torn.load(), 0u);
}
