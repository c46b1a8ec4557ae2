// The state segment is writable by every client in its group, header included. A
// client that rewrites the layout words (tier count, offsets, slots, capacity) must
// not steer the daemon, or another client, outside the mapping: each takes one
// private copy of the layout, checked in arithmetic that cannot wrap, and never
// reads those words again.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "../support/fixture.hpp"
#include "sluice/core/clock.hpp"
#include "sluice/core/key_table.hpp"
#include "sluice/core/ledger.hpp"

namespace sluice::core {
namespace {

LayoutSpec two_tiers() { return test::spec_with({test::tier("a", 4, 1000, 8), test::tier("b", 4, 1000, 16)}, 64, 32); }

StateHeader &live_header(Mapping &m, const std::string &name) {
  std::string detail;
  EXPECT_EQ(Mapping::open(state_segment_name(name), true, m, detail), Status::ok) << detail;
  return *static_cast<StateHeader *>(m.base());
}

TEST(HostileHeader, AnOwnerKeepsToTheLayoutItValidatedWhateverAClientWritesLater) {
  test::SegmentGuard seg("hostile", two_tiers());
  auto client = seg.open();
  Decision d;
  std::string detail;
  ASSERT_EQ(client->acquire("a", "k", 1, 1, d, detail), Status::ok);
  Mapping m;
  StateHeader &h = live_header(m, seg.name);
  // What a hostile client writes: on the old code the owner's next sweep divided
  // by zero (capacity 0), walked 2^31 tiers, and placed its CASes where told.
  h.tier_count = 0x7fffffff;
  h.tiers[0].capacity = 0;
  h.tiers[0].slots = 0xffffffffu;
  h.tiers[0].entries_offset = ~uint64_t(0) - 63;
  h.tiers[1].rings_offset = ~uint64_t(0) - 4095;
  EXPECT_EQ(seg.owner->tier_count(), 2u);
  EXPECT_EQ(seg.owner->tier_view(0).capacity, 8u);
  const GcStats st = seg.owner->collect(0, 1'000'000);
  EXPECT_GT(st.scanned, 0u);
  // The publication clamps to the capacity the owner validated, not the header's 0.
  seg.owner->publish(std::vector<TierLimits>{{6, 1'000'000'000, 0, 0, 0}, {20, 1'000'000'000, 0, 0, 0}});
  TierLimits a, b;
  read_tier(seg.owner->policy(), 0, a);
  read_tier(seg.owner->policy(), 1, b);
  EXPECT_EQ(a.limit, 6u);
  EXPECT_EQ(b.limit, 16u);  // clamped to tier b's real capacity
  // A client opening now refuses the damaged header instead of following it.
  std::unique_ptr<Ledger> late;
  EXPECT_EQ(Ledger::open(seg.name, late, detail), Status::corrupt_header);
}

// Each damage is applied to a fresh, valid pair; validate_state, a client's open and
// a daemon's re-attach must all refuse it.
struct Damage {
  const char *what;
  std::function<void(StateHeader &)> apply;
};

TEST(HostileHeader, TierDescriptorsThatWrapOverlapOrOverrunAreRefusedByEveryOpener) {
  const std::vector<Damage> damages = {
      {"entries offset wraps to just below the mapping", [](StateHeader &h) { h.tiers[0].entries_offset = ~uint64_t(0) - 63; }},
      {"rings offset wraps to just below the mapping", [](StateHeader &h) { h.tiers[1].rings_offset = ~uint64_t(0) - 4095; }},
      {"entries inside the header", [](StateHeader &h) { h.tiers[0].entries_offset = 64; }},
      {"tier b's entries inside tier a's rings", [](StateHeader &h) { h.tiers[1].entries_offset = h.tiers[0].rings_offset; }},
      {"rings run past the end", [](StateHeader &h) { h.tiers[1].capacity = kMaxCapacity; }},
      {"slots x stride past the end", [](StateHeader &h) { h.tiers[1].slots = 0xffffffffu; }},
      {"capacity 0", [](StateHeader &h) { h.tiers[0].capacity = 0; }},
      {"tier count above the maximum", [](StateHeader &h) { h.tier_count = kMaxTiers + 1; }},
      {"a tier name without its NUL", [](StateHeader &h) { std::memset(h.tiers[0].name, 'x', kTierNameBytes); }},
  };
  for (const Damage &dmg : damages) {
    SCOPED_TRACE(dmg.what);
    test::SegmentGuard seg("hostile", two_tiers());
    {
      Mapping m;
      dmg.apply(live_header(m, seg.name));
      std::string detail;
      EXPECT_EQ(validate_state(m, 0, detail), Status::corrupt_header) << detail;
      Geometry g;
      EXPECT_EQ(read_geometry(m, g, detail), Status::corrupt_header);
    }
    std::unique_ptr<Ledger> l;
    std::string detail;
    EXPECT_EQ(Ledger::open(seg.name, l, detail), Status::corrupt_header) << detail;
    seg.owner.reset();  // the daemon stops; a new one must refuse to attach
    std::unique_ptr<Owner> again;
    bool created = false;
    EXPECT_NE(Owner::create_or_attach(seg.name, two_tiers(), false, again, created, detail), Status::ok);
  }
}

TEST(HostileHeader, AValidHeaderMovedFromWhereThisVersionPlacesItIsNotAdopted) {
  // Shifting tier b's rings by a line keeps every bound but is not the layout the
  // policy makes: a re-attach refuses it rather than trust the header's offsets.
  test::SegmentGuard seg("hostile", two_tiers());
  {
    Mapping m;
    StateHeader &h = live_header(m, seg.name);
    h.tiers[1].rings_offset += 64;
    h.tiers[1].capacity -= 1;  // so the rings still end inside the mapping
    std::string detail;
    ASSERT_EQ(validate_state(m, 0, detail), Status::ok) << detail;
  }
  seg.owner.reset();
  std::unique_ptr<Owner> again;
  bool created = false;
  std::string detail;
  EXPECT_EQ(Owner::create_or_attach(seg.name, two_tiers(), false, again, created, detail), Status::version_mismatch);
}

}  // namespace
}  // namespace sluice::core

namespace sluice::core {
namespace {

TEST(HostileCounters, StripeSumsSaturateInsteadOfWrapping) {
  test::SegmentGuard seg("hostile-sum", two_tiers());
  StateHeader &h = seg.owner->state();
  h.counters[0][0].admitted.store(UINT64_MAX);  // a client-writable stripe
  h.counters[0][1].admitted.store(5);
  h.counters[0][2].extra_units.store(UINT64_MAX);
  const TierCounters c = sum_counters(h, 0);
  EXPECT_EQ(c.admitted, UINT64_MAX) << "wrapped to 4: /metrics went backwards";
  EXPECT_EQ(c.cost_units, UINT64_MAX);
}

TEST(HostileCounters, ElapsedTimeFromAWordInTheFutureOrFarPastIsUnknown) {
  EXPECT_EQ(elapsed_since(100, 40), 60);
  EXPECT_EQ(elapsed_since(100, 101), INT64_MAX);
  EXPECT_EQ(elapsed_since(100, INT64_MIN), INT64_MAX) << "the subtraction overflows";
  EXPECT_EQ(elapsed_since(-5, INT64_MAX), INT64_MAX);
}

}  // namespace
}  // namespace sluice::core

namespace sluice::core {
namespace {

// Entries' ctrl words are client-writable too. Two writes no client of the
// protocol makes left a slot, or a key, unusable until a --reset or a restart
// (review findings): sluiced's sweep now undoes each.
TEST(HostileEntries, SlotsInAStateTheProtocolHasNotAreFreedByTheSweep) {
  test::SegmentGuard seg("hostile-state", test::spec_with({test::tier("a", 4, 1000, 4)}, 4));
  const TierView tv = seg.owner->tier_view(0);
  for (uint32_t s = 0; s < tv.slots; ++s) tv.entry(s)->ctrl.store(ctrl_make(EntryState(6 + s % 2), 3, 0));
  auto client = seg.open();
  Decision d;
  std::string detail;
  ASSERT_EQ(client->acquire("a", "k", 1, 1, d, detail), Status::table_full) << "every slot was leaked";
  const GcStats st = seg.owner->collect(0, 1'000'000);
  EXPECT_EQ(st.unknown_freed, tv.slots);
  EXPECT_EQ(client->acquire("a", "k", 1, 1, d, detail), Status::ok) << detail;
  EXPECT_TRUE(d.allowed);
}

TEST(HostileEntries, ARingFrozenByAClientIsThawedByTheSweep) {
  // An hour's window: the busy wait below must not let the first unit leave it.
  test::SegmentGuard seg("hostile-freeze", test::spec_with({test::tier("a", 4, 3'600'000, 4)}, 16));
  const TierView tv = seg.owner->tier_view(0);
  auto client = seg.open();
  Decision d;
  std::string detail;
  ASSERT_EQ(client->acquire("a", "k", 1, 1, d, detail), Status::ok);
  EntryRef ref;
  ASSERT_EQ(find_key(tv, KeyProbe("k", 1), ref), Lookup::found);
  EntryHeader *e = tv.entry(ref.slot);
  // What sluiced writes to check a key is idle, written by someone else.
  e->ctrl.store(ctrl_make(EntryState::reclaiming, ctrl_gen(ref.ctrl), ctrl_tag(ref.ctrl)));
  for (uint32_t j = 0; j < tv.capacity; ++j) tv.ring(ref.slot)[j].fetch_or(kRingPoison);
  EXPECT_EQ(client->acquire("a", "k", 1, 1, d, detail), Status::busy);
  const GcStats st = seg.owner->collect(int64_t(3600) * 1'000'000'000, 1'000'000);  // nothing idle
  EXPECT_EQ(st.thawed, 1u);
  ASSERT_EQ(client->acquire("a", "k", 1, 1, d, detail), Status::ok) << detail;
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.remaining, 2u) << "the key kept its units: thawed, not wiped";
}

}  // namespace
}  // namespace sluice::core
