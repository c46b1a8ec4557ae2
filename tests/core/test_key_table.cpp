// Key table: full-key identity, binary keys, capacity, concurrent insertion of one
// key, and idle-key reclamation racing clients.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <unordered_map>

#include "../support/fixture.hpp"
#include "sluice/core/admission.hpp"
#include "sluice/core/clock.hpp"

using namespace sluice;
using namespace sluice::core;

namespace {
uint64_t entries_holding(const TierView &tv, const std::string &key) {
  uint64_t n = 0;
  char buf[256];
  for (uint32_t s = 0; s < tv.slots; ++s) {
    const EntryState st = ctrl_state(tv.entry(s)->ctrl.load());
    if (st != EntryState::live && st != EntryState::pending) continue;
    const uint32_t len = read_key(tv, s, buf, sizeof buf);
    n += len == key.size() && std::memcmp(buf, key.data(), len) == 0;
  }
  return n;
}
}  // namespace

TEST(KeyTable, FindsWhatWasInsertedAndNothingElse) {
  test::SegmentGuard seg("kt", test::spec_with({test::tier("t", 3, 1000, 4)}, 64));
  const TierView tv = seg.owner->tier_view(0);
  EntryRef a, b, again;
  ASSERT_EQ(find_or_insert_key(tv, KeyProbe("alpha", 5), seg.owner->state(), a), Lookup::found);
  ASSERT_EQ(find_or_insert_key(tv, KeyProbe("beta", 4), seg.owner->state(), b), Lookup::found);
  EXPECT_NE(a.slot, b.slot);
  ASSERT_EQ(find_key(tv, KeyProbe("alpha", 5), again), Lookup::found);
  EXPECT_EQ(again.slot, a.slot);
  EXPECT_EQ(find_key(tv, KeyProbe("gamma", 5), again), Lookup::absent);
  EXPECT_EQ(find_key(tv, KeyProbe("alph", 4), again), Lookup::absent);
}

TEST(KeyTable, BinaryKeysDifferingAfterANulAreDistinct) {
  test::SegmentGuard seg("bin", test::spec_with({test::tier("t", 1, 60000, 1)}));
  auto l = seg.open();
  Decision d;
  std::string detail;
  const char k1[] = {'a', '\0', 'x'};
  const char k2[] = {'a', '\0', 'y'};
  ASSERT_EQ(l->acquire("t", k1, 3, 1, d, detail), Status::ok);
  EXPECT_TRUE(d.allowed);
  ASSERT_EQ(l->acquire("t", k2, 3, 1, d, detail), Status::ok);
  EXPECT_TRUE(d.allowed) << "a different key after the NUL has its own quota";
  ASSERT_EQ(l->acquire("t", k1, 3, 1, d, detail), Status::ok);
  EXPECT_FALSE(d.allowed);
  ASSERT_EQ(l->acquire("t", "a", 1, 1, d, detail), Status::ok);
  EXPECT_TRUE(d.allowed) << "a prefix is another key";
}

TEST(KeyTable, CollidingHashesNeverShareAQuota) {
  // 16 slots, 400 keys: most probe windows wrap and tags repeat; every key still
  // gets exactly its own limit.
  test::SegmentGuard seg("coll", test::spec_with({test::tier("t", 1, 60000, 1)}, 12, 16));
  auto l = seg.open();
  Decision d;
  std::string detail;
  int allowed = 0, full = 0;
  for (int i = 0; i < 400; ++i) {
    const std::string k = "k" + std::to_string(i);
    const Status s = l->acquire("t", k.data(), k.size(), 1, d, detail);
    if (s == Status::table_full) {
      ++full;
      continue;
    }
    ASSERT_EQ(s, Status::ok);
    allowed += d.allowed;
  }
  EXPECT_EQ(allowed, 16);  // exactly the table's slots, each key once
  EXPECT_EQ(full, 400 - 16);
  for (int i = 0; i < 400; ++i) {
    const std::string k = "k" + std::to_string(i);
    const Status s = l->acquire("t", k.data(), k.size(), 1, d, detail);
    if (s == Status::ok) {
      EXPECT_FALSE(d.allowed) << k << " was admitted twice";
    }
  }
}

TEST(KeyTable, KeysWithTheSameHashTagAreStillDistinct) {
  // Find two keys whose 32-bit tags collide and whose home slot in a 16-slot table
  // is the same (birthday search, ~1M hashes): the second probes straight into the
  // first's entry, and only the full key bytes can tell them apart.
  std::unordered_map<uint64_t, std::string> seen;
  std::string a, b;
  for (uint32_t i = 0; a.empty(); ++i) {
    const std::string k = "c" + std::to_string(i);
    const KeyProbe p(k.data(), uint32_t(k.size()));
    const uint64_t home = (uint64_t(uint32_t(p.hash)) * 16) >> 32;
    const auto [it, fresh] = seen.emplace((uint64_t(p.tag()) << 4) | home, k);
    if (!fresh) a = it->second, b = k;
  }
  test::SegmentGuard seg("tag", test::spec_with({test::tier("t", 1, 60000, 1)}, 12));
  ASSERT_EQ(seg.owner->tier_view(0).slots, 16u);
  auto l = seg.open();
  Decision d;
  std::string detail;
  ASSERT_EQ(l->acquire("t", a.data(), a.size(), 1, d, detail), Status::ok);
  EXPECT_TRUE(d.allowed);
  ASSERT_EQ(l->acquire("t", b.data(), b.size(), 1, d, detail), Status::ok);
  EXPECT_TRUE(d.allowed) << a << " and " << b << " share a tag but not a quota";
  ASSERT_EQ(l->acquire("t", a.data(), a.size(), 1, d, detail), Status::ok);
  EXPECT_FALSE(d.allowed);
}

TEST(KeyTable, ConcurrentInsertsOfOneKeyEndWithOneEntry) {
  test::SegmentGuard seg("race", test::spec_with({test::tier("t", 5, 60000, 5)}, 4096));
  const TierView tv = seg.owner->tier_view(0);
  for (int round = 0; round < 300; ++round) {
    const std::string key = "race-" + std::to_string(round);
    std::atomic<int> go{0}, admitted{0};
    std::vector<std::thread> ts;
    auto l = seg.open();
    for (int t = 0; t < 4; ++t)
      ts.emplace_back([&] {
        while (!go.load()) {
        }
        Decision d;
        std::string detail;
        for (int i = 0; i < 3; ++i)
          if (l->acquire("t", key.data(), key.size(), 1, d, detail) == Status::ok && d.allowed) ++admitted;
      });
    go = 1;
    for (auto &t : ts) t.join();
    ASSERT_EQ(entries_holding(tv, key), 1u) << key;
    ASSERT_EQ(admitted.load(), 5) << key;
  }
}

TEST(KeyTable, FullTableIsAClearError) {
  test::SegmentGuard seg("full", test::spec_with({test::tier("t", 1, 1000, 1)}, 12));
  auto l = seg.open();
  Decision d;
  std::string detail;
  Status last = Status::ok;
  for (int i = 0; i < 100 && last == Status::ok; ++i) {
    const std::string k = std::to_string(i);
    last = l->acquire("t", k.data(), k.size(), 1, d, detail);
  }
  EXPECT_EQ(last, Status::table_full);
  EXPECT_NE(detail.find("full"), std::string::npos);
}

namespace {
// One tier (limit 2 per 10 s) and one key admitted once, to reclaim around.
struct Reclaim : ::testing::Test {
  test::SegmentGuard seg{"gc", test::spec_with({test::tier("t", 2, 10000, 2)}, 12)};
  std::unique_ptr<Ledger> l = seg.open();
  TierView tv = seg.owner->tier_view(0);
  Decision d;
  std::string detail;
  EntryRef ref;
  Status acquire(const std::string &key) { return l->acquire("t", key.data(), key.size(), 1, d, detail); }
  void admit_once(const std::string &key) {
    ASSERT_EQ(acquire(key), Status::ok);
    ASSERT_EQ(find_key(tv, KeyProbe(key.data(), uint32_t(key.size())), ref), Lookup::found);
  }
};
}  // namespace

TEST_F(Reclaim, FreesAnIdleKeyAndTheSlotIsReused) {
  admit_once("old");
  EXPECT_FALSE(try_reclaim(tv, ref.slot, mono_ns(), 60'000'000'000)) << "not idle yet";
  ASSERT_TRUE(try_reclaim(tv, ref.slot, mono_ns() + 120'000'000'000, 60'000'000'000));
  EntryRef gone;
  EXPECT_EQ(find_key(tv, KeyProbe("old", 3), gone), Lookup::absent);
  // A client still holding the old reference is told to look again.
  Outcome o;
  EXPECT_EQ(admit(tv, ref, 1, Limits{2, 10'000'000}, mono_ns(), true, o), Step::stale);
  // Fill the table: the freed slot is taken again.
  int ok = 0;
  for (int i = 0; i < 40; ++i) ok += acquire("n" + std::to_string(i)) == Status::ok;
  EXPECT_EQ(ok, 16);
}

TEST_F(Reclaim, ARecentAdmissionUnderTheFreezeAbortsIt) {
  admit_once("busy");
  // idle_ns of 1 s with "now" = real now: the admission is recent, nothing changes.
  EXPECT_FALSE(try_reclaim(tv, ref.slot, mono_ns(), 1'000'000'000));
  EntryRef again;
  ASSERT_EQ(find_key(tv, KeyProbe("busy", 4), again), Lookup::found);
  EXPECT_EQ(again.slot, ref.slot);
  ASSERT_EQ(acquire("busy"), Status::ok);
  EXPECT_TRUE(d.allowed);
  ASSERT_EQ(acquire("busy"), Status::ok);
  EXPECT_FALSE(d.allowed) << "history survived the aborted reclaim";
}

TEST_F(Reclaim, InterruptedReclaimIsThawedOnRestart) {
  admit_once("k");
  // Simulate sluiced dying mid-reclaim: frozen ctrl and poisoned ring.
  EntryHeader *e = tv.entry(ref.slot);
  e->ctrl.store(ctrl_make(EntryState::reclaiming, ctrl_gen(ref.ctrl), ctrl_tag(ref.ctrl)));
  for (uint32_t j = 0; j < tv.capacity; ++j) tv.ring(ref.slot)[j].fetch_or(kRingPoison);
  EXPECT_EQ(acquire("k"), Status::busy) << "waits, then says busy; never admits";
  EXPECT_EQ(thaw_interrupted_reclaims(tv), 1u);
  ASSERT_EQ(acquire("k"), Status::ok);
  EXPECT_TRUE(d.allowed);
  ASSERT_EQ(acquire("k"), Status::ok);
  EXPECT_FALSE(d.allowed) << "limit 2: the first admission is still counted";
}

TEST(ReclaimRace, RacingClientsStayExact) {
  // Aggressive GC (idle = window = 20 ms) while threads hammer a few keys with
  // pauses: keys are reclaimed and re-inserted under load; every window stays exact.
  const uint32_t limit = 4;
  const int64_t window = 20'000'000;
  test::SegmentGuard seg("gcrace", test::spec_with({test::tier("t", limit, 20, limit)}, 64));
  test::SharedRecorder rec(1 << 20);
  std::atomic<bool> stop{false};
  std::thread gc([&] {
    while (!stop) seg.owner->collect(window, 1 << 20);
  });
  std::vector<std::thread> ts;
  for (int t = 0; t < 3; ++t)
    ts.emplace_back([&, t] {
      auto l = seg.open();
      Decision d;
      std::string detail;
      const int64_t end = mono_ns() + 1'500'000'000;
      for (uint32_t i = 0; mono_ns() < end; ++i) {
        const uint32_t key = (i + t) % 4;
        const std::string k = "g" + std::to_string(key);
        const Status s = l->acquire("t", k.data(), k.size(), 1, d, detail);
        if (s != Status::ok) rec.errors().fetch_add(1);
        else if (d.allowed) rec.add(key, 1, d.admitted_at_ns);
        if (i % 64 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(25));
      }
    });
  for (auto &t : ts) t.join();
  stop = true;
  gc.join();
  std::string worst;
  EXPECT_EQ(test::window_violations(rec.snapshot(), limit, window, &worst), 0u) << worst;
  EXPECT_GT(seg.owner->state().keys_reclaimed.load(), 0u) << "the test must actually reclaim";
  EXPECT_EQ(rec.errors().load(), 0u);
}
