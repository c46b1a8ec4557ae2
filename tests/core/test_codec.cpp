// Layout, ring-value encoding and the stable hash.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "sluice/core/hash.hpp"
#include "sluice/core/layout.hpp"

using namespace sluice::core;

TEST(Hash, IsStableAcrossBuildsAndProcesses) {
  // Pinned values: a change here would split one key's quota between old and new
  // clients sharing a segment, so it must be a deliberate layout bump.
  EXPECT_EQ(hash_key("", 0), hash_key("", 0));
  const uint64_t a = hash_key("user:42", 7);
  EXPECT_NE(a, hash_key("user:43", 7));
  EXPECT_NE(hash_key("ab\0c", 4), hash_key("ab\0d", 4));  // bytes after a NUL count
  EXPECT_NE(hash_key("a", 1), hash_key("a\0", 2));        // length counts
}

TEST(Hash, PinnedVector) {
  // Recorded once from this implementation; guards against accidental changes.
  EXPECT_EQ(hash_key("sluice", 6), 0xb3fafbcad66e48dbULL);
  EXPECT_EQ(mix64(0), 0u);
}

TEST(Ring, LapBitAlternatesPerLap) {
  const uint32_t cap = 5;
  for (uint64_t p = 0; p < 50; ++p) {
    const uint64_t v = ring_make(p, cap, 123, 1);
    EXPECT_TRUE(ring_written_for(v, p, cap));
    EXPECT_FALSE(ring_written_for(v, p + cap, cap)) << "a leftover must not look fresh one lap later";
    EXPECT_EQ(ring_ts_us(v), 123u);
    EXPECT_EQ(ring_count(v), 1u);
  }
}

TEST(Ring, EmptyValuesAreNeverWrittenAndCarryGeneration) {
  for (uint32_t gen = 0; gen < 3; ++gen) {
    const uint64_t e = ring_empty(10, 5, gen);
    EXPECT_FALSE(ring_written_for(e, 10, 5));
    EXPECT_EQ(ring_ts_us(e), 0u);
  }
  EXPECT_NE(ring_empty(10, 5, 1), ring_empty(10, 5, 2));
}

TEST(Ring, PoisonHidesAWrittenValue) {
  const uint64_t v = ring_make(3, 4, 99, 2);
  EXPECT_FALSE(ring_written_for(v | kRingPoison, 3, 4));
  EXPECT_EQ(ring_ts_us(v | kRingPoison), 99u);
}

TEST(Ring, CursorAgreesWithDivisionForEveryNearbyPosition) {
  for (uint32_t cap : {1u, 2u, 3u, 7u, 16u, 120u}) {
    for (uint64_t h : {uint64_t(2 * cap), uint64_t(2 * cap + 1), uint64_t(1000003), uint64_t(cap) * 977 + cap - 1}) {
      const RingCursor by_div(h, cap), by_mul(h, FastDiv(cap));
      ASSERT_EQ(by_mul.base_idx, by_div.base_idx) << cap << " " << h;
      ASSERT_EQ(by_mul.base_lap, by_div.base_lap) << cap << " " << h;
      for (const RingCursor &rc : {by_div, by_mul}) {
        for (uint64_t p = h - cap; p <= h + cap; ++p) {
          ASSERT_EQ(rc.idx(p), p % cap) << cap << " " << h << " " << p;
          ASSERT_EQ(rc.lap_bit(p), ring_lap_bit(p, cap)) << cap << " " << h << " " << p;
          ASSERT_EQ(rc.make(p, 5, 2), ring_make(p, cap, 5, 2));
        }
      }
    }
  }
}

// The hot path divides positions by the capacity with a multiply (fast_div.hpp):
// it must agree with '/' and '%' for every divisor a tier can have and any position,
// including the edges of each quotient and the top of the 64-bit range.
TEST(FastDivision, AgreesWithDivisionEverywhere) {
  std::mt19937_64 rng(20261202);
  uint64_t checked = 0;
  auto check = [&](uint32_t d, uint64_t n) {
    const FastDiv f(d);
    const uint64_t q = f.quot(n);
    ASSERT_EQ(q, n / d) << "d=" << d << " n=" << n;
    ASSERT_EQ(f.rem(n, q), n % d) << "d=" << d << " n=" << n;
    ++checked;
  };
  std::vector<uint32_t> divisors;
  for (uint32_t d = 1; d <= 5000; ++d) divisors.push_back(d);
  for (uint32_t k = 13; k <= 31; ++k) {  // around every power of two above that, up to 2^31 + 1
    for (int64_t off = -3; off <= 3; ++off) divisors.push_back(uint32_t(int64_t(1u << k) + off));
  }
  divisors.push_back(kMaxCapacity);
  divisors.push_back(~0u);
  for (int i = 0; i < 2000; ++i) divisors.push_back(uint32_t(rng() % kMaxCapacity) + 1);
  for (uint32_t d : divisors) {
    const uint64_t top = ~uint64_t(0) / d * d;
    for (uint64_t n : {uint64_t(0), uint64_t(1), uint64_t(d) - 1, uint64_t(d), uint64_t(d) + 1, 2 * uint64_t(d) - 1,
                       top, top - 1, ~uint64_t(0), uint64_t(1) << 63, (uint64_t(1) << 63) - 1})
      check(d, n);
    for (int i = 0; i < 30; ++i) {
      const uint64_t k = rng() >> (rng() % 64);
      check(d, rng());
      check(d, k);
      check(d, k * d);
      check(d, k * d - 1);
    }
  }
  EXPECT_GT(checked, 100000u);
}

TEST(Layout, FormatWordFoldsVersionAndShape) {
  EXPECT_EQ(format_major(kStateFormat), kLayoutMajor);
  EXPECT_NE(kStateFormat, kPolicyFormat);
  EXPECT_EQ(entry_stride_for(24), 64u);
  EXPECT_EQ(entry_stride_for(64), 128u);
  EXPECT_EQ(ctrl_state(ctrl_make(EntryState::live, 7, 0xdeadbeef)), EntryState::live);
  EXPECT_EQ(ctrl_gen(ctrl_make(EntryState::live, 7, 0xdeadbeef)), 7u);
  EXPECT_EQ(ctrl_tag(ctrl_make(EntryState::live, 7, 0xdeadbeef)), 0xdeadbeefu);
}
