// Layout, ring-value encoding and the stable hash.
#include <gtest/gtest.h>

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
      const RingCursor rc(h, cap);
      for (uint64_t p = h - cap; p <= h + cap; ++p) {
        ASSERT_EQ(rc.idx(p), p % cap) << cap << " " << h << " " << p;
        ASSERT_EQ(rc.lap_bit(p), ring_lap_bit(p, cap)) << cap << " " << h << " " << p;
        ASSERT_EQ(rc.make(p, 5, 2), ring_make(p, cap, 5, 2));
      }
    }
  }
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
