// A client killed at every fault point of acquire in turn (insert, resolve,
// claim, followers, head advance). After each death the next caller on the key
// must not block, must not error, and must see the dead claim whole or not at all.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstring>
#include <thread>

#include "../support/fixture.hpp"
#include "sluice/core/admission.hpp"
#include "sluice/core/fault.hpp"
#include "sluice/core/ledger_handle.hpp"

using namespace sluice;
using namespace sluice::core;

namespace {
// A child acquires `cost` units of `key` in tier "t" and is killed (SIGKILL) at
// its n-th fault point; exits 0 if it got through, allowed. Returns its wait status.
int acquire_in_a_child_killed_at(const test::SegmentGuard &seg, long n, const std::string &key, uint32_t cost) {
  const pid_t child = fork();
  if (child == 0) {
    auto l = seg.open();
    Decision d;
    std::string det;
    arm_fault(n);
    const Status s = l->acquire("t", key.data(), key.size(), cost, d, det);
    arm_fault(0);
    _exit(s == Status::ok && d.allowed ? 0 : 1);
  }
  int st = 0;
  waitpid(child, &st, 0);
  return st;
}
}  // namespace

TEST(FaultPoints, ClientKilledAtEveryStepLeavesTheKeyWholeAndExact) {
  constexpr uint32_t kLimit = 4, kCost = 3;
  test::SegmentGuard seg("fault", test::spec_with({test::tier("t", kLimit, 60000, kLimit)}, 256));
  auto parent = seg.open();
  int deaths = 0;
  bool completed = false;
  for (long n = 1; n < 64 && !completed; ++n) {
    const std::string key = "f" + std::to_string(n);
    const int st = acquire_in_a_child_killed_at(seg, n, key, kCost);
    if (WIFSIGNALED(st)) {
      ASSERT_EQ(WTERMSIG(st), SIGKILL);
      ++deaths;
    } else {
      ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
      completed = true;  // n is past the last fault point: every step was covered
    }
    int admitted = 0;
    Decision d;
    std::string det;
    for (int i = 0; i < 8; ++i) {
      ASSERT_EQ(parent->acquire("t", key.data(), key.size(), 1, d, det), Status::ok) << "point " << n;
      admitted += d.allowed;
    }
    // Either the dead client's 3 units landed whole (1 left) or not at all (4).
    EXPECT_TRUE(admitted == int(kLimit - kCost) || admitted == int(kLimit))
        << "point " << n << ": " << admitted << " admitted after the crash";
    if (completed) {
      EXPECT_EQ(admitted, int(kLimit - kCost));
    }
  }
  EXPECT_TRUE(completed);
  EXPECT_GE(deaths, 8) << "the fault points must cover insert, resolve and claim";
  // Slots claimed by a client that died mid-insert are freed by the owner.
  seg.owner->collect(1'000'000'000'000LL, 1 << 20);
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  const GcStats gc = seg.owner->collect(1'000'000'000'000LL, 1 << 20);
  EXPECT_GE(gc.dead_claims_freed, 1u);
}

// A claim whose inserter may be in another pid namespace (a container sharing
// /dev/shm) must never be freed as dead: its pid means nothing to the daemon, and
// freeing a live, stalled inserter's claim lets it overwrite the next key's entry.
// Here the header names another namespace than the client's, as when sluiced runs
// in another one: the dead client's claim must carry 0 and stay (a slot lost, not
// a key corrupted), where a claim tagged with its pid is freed (the test above).
TEST(FaultPoints, AClaimFromOutsideTheDaemonsPidNamespaceIsNeverFreedAsDead) {
  test::SegmentGuard seg("fault-ns", test::spec_with({test::tier("t", 4, 60000, 4)}, 256));
  seg.owner->state().pid_ns_ino.store(seg.owner->state().pid_ns_ino.load() + 1);  // not the client's namespace
  const TierView &tv = seg.owner->tier_view(0);
  auto claimed_slot = [&]() -> long {
    for (uint32_t s = 0; s < tv.slots; ++s)
      if (ctrl_state(tv.entry(s)->ctrl.load()) == EntryState::claimed) return long(s);
    return -1;
  };
  long slot = -1;
  for (long n = 1; n < 64 && slot < 0; ++n) {  // the first fault point after the claim
    const int st = acquire_in_a_child_killed_at(seg, n, "ns-key", 1);
    slot = claimed_slot();
    if (!WIFSIGNALED(st)) break;  // completed without dying in a claim
  }
  ASSERT_GE(slot, 0) << "no fault point left a claimed slot";
  const uint64_t word = tv.entry(uint32_t(slot))->ctrl.load();
  EXPECT_EQ(ctrl_tag(word), 0u) << "a claim from another namespace carries no pid";
  seg.owner->collect(1'000'000'000'000LL, 1 << 20);
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  const GcStats gc = seg.owner->collect(1'000'000'000'000LL, 1 << 20);
  EXPECT_EQ(gc.dead_claims_freed, 0u);
  EXPECT_EQ(tv.entry(uint32_t(slot))->ctrl.load(), word);
  EXPECT_TRUE(process_alive_since(0, boottime_ns()));
}

TEST(FaultPoints, ClaimsMadeUnderADaemonInAnotherPidNamespaceAreNeverFreedByAnySuccessor) {
  // The claim carries its inserter's pid in the namespace of the daemon then
  // running. A successor in another namespace would look that pid up in its own
  // and might free a live, stalled inserter's claim. So would the successor's own
  // successor, which sees only the new namespace in the header (a review found
  // the second restart freed it): the first successor retags such claims 0 in
  // the segment, and no later daemon frees them. (Here the inserter is dead: the
  // slot is lost, which is the price; a live one would insert elsewhere.)
  const auto spec = test::spec_with({test::tier("t", 4, 60000, 4)}, 256);
  test::SegmentGuard seg("fault-ns-restart", spec);
  const TierView &tv = seg.owner->tier_view(0);
  long slot = -1;
  for (long n = 1; n < 64 && slot < 0; ++n) {
    const int st = acquire_in_a_child_killed_at(seg, n, "ns-restart", 1);
    for (uint32_t s = 0; s < tv.slots && slot < 0; ++s)
      if (ctrl_state(tv.entry(s)->ctrl.load()) == EntryState::claimed) slot = long(s);
    if (!WIFSIGNALED(st)) break;
  }
  ASSERT_GE(slot, 0) << "no fault point left a claimed slot";
  const uint64_t word = tv.entry(uint32_t(slot))->ctrl.load();
  ASSERT_NE(ctrl_tag(word), 0u) << "made in this namespace: tagged with the child's pid";
  auto restart = [&](bool other_namespace) {
    if (other_namespace) seg.owner->state().pid_ns_ino.store(seg.owner->state().pid_ns_ino.load() + 1);
    seg.owner.reset();
    bool created = true;
    std::string detail;
    ASSERT_EQ(Owner::create_or_attach(seg.name, spec, false, seg.owner, created, detail), Status::ok) << detail;
    ASSERT_FALSE(created);
  };
  auto freed_after_grace = [&] {
    seg.owner->collect(1'000'000'000'000LL, 1 << 20);
    std::this_thread::sleep_for(std::chrono::milliseconds(2100));
    return seg.owner->collect(1'000'000'000'000LL, 1 << 20).dead_claims_freed;
  };
  const uint64_t retagged = ctrl_make(EntryState::claimed, ctrl_gen(word), 0);
  restart(true);
  EXPECT_EQ(seg.owner->tier_view(0).entry(uint32_t(slot))->ctrl.load(), retagged)
      << "the old namespace's pid is still in the claim";
  EXPECT_EQ(freed_after_grace(), 0u);
  restart(false);  // the successor's successor, in the same namespace as it
  EXPECT_EQ(freed_after_grace(), 0u) << "a second restart freed a claim the first one protected";
  EXPECT_EQ(seg.owner->tier_view(0).entry(uint32_t(slot))->ctrl.load(), retagged);
}

namespace {
Ledger *g_other = nullptr;
bool g_in_hook = false;
int g_hook_runs = 0;
// Other clients admit cap + 1 units while the caller sits between reading head
// and reading the slot at head: that slot then holds the next lap's value, whose
// lap bit looks like a left-over.
void admit_a_lap(long k) {
  if (k != 1 || g_in_hook) return;
  g_in_hook = true;
  ++g_hook_runs;
  Decision d;
  std::string det;
  // Exactly cap + 1 admissions (a fast machine can make 5 calls inside the 1 us
  // window, and then one is denied: call until 5 are in; bounded).
  for (int admitted = 0, calls = 0; admitted < 5 && calls < 100000; ++calls)
    if (g_other->acquire("t", "lap", 3, 1, d, det) == Status::ok && d.allowed) ++admitted;
  g_in_hook = false;
}
}  // namespace

TEST(FaultPoints, ACallerOvertakenByAFullLapLeavesTheRingConsistent) {
  // capacity 4, window 1 us: head moves one per admitted call. The caller is
  // overtaken by a whole lap between reading head and reading the slot at head.
  // (With a stale-clock writer in the lap: the next test.)
  auto t = test::tier("t", 4, 1, 4);
  t.window_ns = 1000;
  test::SegmentGuard seg("lap", test::spec_with({t}, 64));
  auto me = seg.open();
  auto other = seg.open();
  g_other = other.get();
  Decision d;
  std::string det;
  ASSERT_EQ(me->acquire("t", "lap", 3, 1, d, det), Status::ok);  // the key exists: no insert points
  set_fault_hook(admit_a_lap);
  ASSERT_EQ(me->acquire("t", "lap", 3, 1, d, det), Status::ok);
  set_fault_hook(nullptr);
  ASSERT_EQ(g_hook_runs, 1);
  // Every unit of the last lap must be recorded in its own slot, with its own lap
  // bit, and times must be monotone in position.
  const TierView tv = seg.owner->tier_view(0);
  EntryRef ref;
  ASSERT_EQ(find_key(tv, KeyProbe("lap", 3), ref), Lookup::found);
  const uint64_t head = tv.entry(ref.slot)->head.load();
  uint64_t prev_ts = 0;
  for (uint64_t p = head - 4; p < head; ++p) {
    const uint64_t v = tv.ring(ref.slot)[p % 4].load();
    EXPECT_TRUE(ring_written_for(v, p, 4)) << "position " << p << " holds another lap's value";
    EXPECT_GE(ring_ts_us(v), prev_ts) << "position " << p;
    prev_ts = ring_ts_us(v);
  }
  EXPECT_EQ(sum_counters(seg.owner->state(), 0).admitted, 6u + (d.allowed ? 1 : 0));
}

namespace {
struct LapScene {
  TierView tv;
  EntryRef ref;
  bool running = false;
} g_scene;
constexpr int64_t kUs = 1000;
Limits scene_limits() { return Limits{4, 10 * kUs}; }
// While the caller sits between reading head (12) and the slot at head: a writer
// whose clock is stale (50 us) claims 12-13, then fresh writers take 14, 15 (200 us)
// and 16 (300 us). Slot 0 now holds unit 16, whose lap bit equals a left-over of
// unit 8's: without the re-check of head the caller would claim "12" over unit 16.
void overtake_with_a_stale_writer(long k) {
  if (k != 1 || g_scene.running) return;
  g_scene.running = true;
  Outcome o;
  admit(g_scene.tv, g_scene.ref, 2, scene_limits(), 50 * kUs, true, o);
  admit(g_scene.tv, g_scene.ref, 1, scene_limits(), 200 * kUs, true, o);
  admit(g_scene.tv, g_scene.ref, 1, scene_limits(), 200 * kUs, true, o);
  admit(g_scene.tv, g_scene.ref, 1, scene_limits(), 300 * kUs, true, o);
  g_scene.running = false;
}
}  // namespace

TEST(FaultPoints, ACallerOvertakenByALapAndAStaleWriterClaimsNoWrongLap) {
  test::SegmentGuard seg("stale", test::spec_with({test::tier("t", 4, 1, 4)}, 64));
  g_scene.tv = seg.owner->tier_view(0);
  ASSERT_EQ(find_or_insert_key(g_scene.tv, KeyProbe("k", 1), seg.owner->state(), g_scene.ref),
            Lookup::found);
  EntryHeader *e = g_scene.tv.entry(g_scene.ref.slot);
  ASSERT_EQ(e->head.load(), 8u);  // a fresh entry starts two laps on
  Outcome o;
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE((admit(g_scene.tv, g_scene.ref, 1, scene_limits(), i * kUs, true, o), o.allowed));
  ASSERT_EQ(e->head.load(), 12u);
  set_fault_hook(overtake_with_a_stale_writer);
  ASSERT_EQ(admit(g_scene.tv, g_scene.ref, 2, scene_limits(), 100 * kUs, true, o), Step::decided);
  set_fault_hook(nullptr);
  const uint64_t head = e->head.load();
  ASSERT_GE(head, 17u) << "the overtaking writers ran";
  uint64_t prev = 0;
  for (uint64_t p = head - 4; p < head; ++p) {
    const uint64_t v = g_scene.tv.ring(g_scene.ref.slot)[p % 4].load();
    EXPECT_TRUE(ring_written_for(v, p, 4)) << "unit " << p << " was overwritten by a claim for another lap";
    EXPECT_GE(ring_ts_us(v), prev) << "unit " << p;
    prev = ring_ts_us(v);
  }
  // (No exactness check on synthetic times after this: a denial judged against units
  // newer than the caller's clock re-reads the real clock, so later decisions here
  // would mix the scene's microseconds with real time.)
}

// A reset (retire, unlink, make a new pair) run at each fault point of one acquire
// in turn, through the handle a client holds. Whatever the point, an admission the
// caller is told about must be in the ledger everyone now shares: units recorded
// after the retirement are in a ledger no one else counts, so the handle must have
// decided again in the new one.
namespace {
struct ResetScene {
  std::string name;
  LayoutSpec spec;
  long at = 0;       // the fault point (1-based) to reset at
  bool done = false;
};
ResetScene g_reset;

void reset_at_point(long k) {
  if (g_reset.done || k != g_reset.at) return;
  g_reset.done = true;  // before: the owner's own steps reach fault points too
  std::unique_ptr<Owner> o;
  bool created = false;
  std::string detail;
  if (Owner::create_or_attach(g_reset.name, g_reset.spec, true, o, created, detail) != Status::ok) std::abort();
}

// One round: a handle on seg's pair admits `before` unarmed, then decides "k" with a
// reset run at fault point `at`. Returns the status of the "k" call (d and detail
// its decision); g_reset.done says whether that call reached point `at`.
Status decide_k_with_reset_at(const test::SegmentGuard &seg, long at, const char *before, Decision &d,
                              std::string &detail) {
  g_reset.name = seg.name;
  g_reset.at = at;
  g_reset.done = false;
  std::unique_ptr<LedgerHandle> h;
  if (LedgerHandle::open(seg.name, h, detail) != Status::ok ||
      h->decide("t", before, std::strlen(before), 1, true, d, detail) != Status::ok || !d.allowed) {
    ADD_FAILURE() << "round setup at point " << at << ": " << detail;
    return Status::internal;
  }
  set_fault_hook(reset_at_point);
  const Status s = h->decide("t", "k", 1, 1, true, d, detail);
  set_fault_hook(nullptr);
  return s;
}
}  // namespace

TEST(FaultPoints, AResetAtAnyStepOfAnAcquireLosesNoAdmissionTheCallerWasTold) {
  g_reset.spec = test::spec_with({test::tier("t", 1, 60000, 2)}, 64);
  int points_seen = 0;
  for (long at = 1; at <= 40; ++at) {
    test::SegmentGuard seg("rst", g_reset.spec);
    std::string detail;
    Decision d;
    const Status s = decide_k_with_reset_at(seg, at, "warm", d, detail);  // "k" is new; "warm" maps pages
    if (!g_reset.done) break;  // the acquire reached fewer than `at` points: all covered
    ++points_seen;
    ASSERT_EQ(s, Status::ok) << "reset at point " << at << ": " << detail;
    ASSERT_TRUE(d.allowed) << "reset at point " << at;
    // The new ledger must hold the unit: with limit 1 a second caller is refused.
    std::unique_ptr<Ledger> fresh;
    ASSERT_EQ(Ledger::open(seg.name, fresh, detail), Status::ok) << detail;
    Decision peek;
    ASSERT_EQ(fresh->peek("t", "k", 1, 1, peek, detail), Status::ok);
    EXPECT_FALSE(peek.allowed) << "reset at point " << at << ": the caller was told 'allowed' for a unit in the "
                               << "retired ledger";
  }
  EXPECT_GE(points_seen, 3) << "the acquire of a new key passes insert, claim and head points";
}

// The same for a denial: a reset during the call of a key whose window is full
// must be judged in the new (empty) ledger, not answered from the retired one.
TEST(FaultPoints, AResetAtAnyStepOfADenialIsJudgedInTheNewLedger) {
  g_reset.spec = test::spec_with({test::tier("t", 1, 60000, 2)}, 64);
  int points_seen = 0;
  for (long at = 1; at <= 40; ++at) {
    test::SegmentGuard seg("rsd", g_reset.spec);
    std::string detail;
    Decision d;
    const Status s = decide_k_with_reset_at(seg, at, "k", d, detail);  // the first "k" fills its window
    if (!g_reset.done) break;
    ++points_seen;
    ASSERT_EQ(s, Status::ok) << "reset at point " << at << ": " << detail;
    EXPECT_TRUE(d.allowed) << "reset at point " << at << ": denied by the retired ledger's window";
  }
  EXPECT_GE(points_seen, 1) << "a denial passes the fault point after reading head";
}

// A reset between Ledger::open's two opens (the fault point between them) must not
// give a ledger of the old state and the new policy: it would count in an unlinked
// state segment that no retirement can ever flag.
TEST(FaultPoints, AResetBetweenOpeningTheStateAndThePolicyNeverPairsTwoGenerations) {
  g_reset.spec = test::spec_with({test::tier("t", 1, 60000, 2)}, 64);
  test::SegmentGuard seg("mix", g_reset.spec);
  g_reset.name = seg.name;
  g_reset.at = 1;
  g_reset.done = false;
  std::unique_ptr<Ledger> l;
  std::string detail;
  set_fault_hook(reset_at_point);
  const Status s = Ledger::open(seg.name, l, detail);
  set_fault_hook(nullptr);
  ASSERT_TRUE(g_reset.done) << "no fault point between the two opens";
  ASSERT_EQ(s, Status::ok) << detail;
  Decision d;
  ASSERT_EQ(l->acquire("t", "k", 1, 1, d, detail), Status::ok);
  ASSERT_TRUE(d.allowed);
  std::unique_ptr<Ledger> fresh;
  ASSERT_EQ(Ledger::open(seg.name, fresh, detail), Status::ok) << detail;
  ASSERT_EQ(fresh->peek("t", "k", 1, 1, d, detail), Status::ok);
  EXPECT_FALSE(d.allowed) << "the ledger opened across the reset counts in the unlinked state segment";
}
