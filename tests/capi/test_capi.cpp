// The C ABI: every bad input gets its own status and message, decisions come back
// complete, and nothing on an error path is ever reported as allowed.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstring>
#include <thread>

#include "../support/fixture.hpp"
#include "sluice.h"

using namespace sluice;

namespace {

struct Api : ::testing::Test {
  test::SegmentGuard seg{"capi", test::spec_with({test::tier("pro", 2, 60000, 10), test::tier("free", 1, 60000, 3)},
                                                 64, 16)};
  sluice_client *c = nullptr;
  void SetUp() override { ASSERT_EQ(sluice_open(seg.name.c_str(), &c), SLUICE_OK); }
  void TearDown() override { sluice_close(c); }
  static sluice_decision fresh() {
    sluice_decision d;
    std::memset(&d, 0xAB, sizeof d);  // garbage: the library must not trust it
    d.size = sizeof d;
    d.allowed = 0x55;
    return d;
  }
};

}  // namespace

TEST_F(Api, AdmitsThenDeniesWithAFullDecision) {
  sluice_decision d = fresh();
  ASSERT_EQ(sluice_acquire(c, "pro", "u1", 2, 1, &d), SLUICE_OK);
  EXPECT_EQ(d.allowed, 1u);
  EXPECT_EQ(d.limit, 2u);
  EXPECT_EQ(d.remaining, 1u);
  EXPECT_EQ(d.window_ns, 60'000'000'000LL);
  EXPECT_EQ(d.retry_after_ns, 0);
  EXPECT_GT(d.reset_after_ns, 59'000'000'000LL);
  EXPECT_EQ(d.tier, 0u);
  EXPECT_EQ(d.reason, SLUICE_REASON_ALLOWED);
  ASSERT_EQ(sluice_acquire(c, "pro", "u1", 2, 1, &d), SLUICE_OK);
  ASSERT_EQ(sluice_acquire(c, "pro", "u1", 2, 1, &d), SLUICE_OK);
  EXPECT_EQ(d.allowed, 0u);
  EXPECT_EQ(d.reason, SLUICE_REASON_WINDOW_FULL);
  EXPECT_EQ(d.remaining, 0u);
  EXPECT_GT(d.retry_after_ns, 59'000'000'000LL);
  ASSERT_EQ(sluice_acquire(c, "free", "u1", 2, 1, &d), SLUICE_OK);
  EXPECT_EQ(d.allowed, 1u) << "tiers keep separate ledgers";
  EXPECT_EQ(d.tier, 1u);
}

TEST_F(Api, PeekRecordsNothing) {
  sluice_decision d = fresh();
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(sluice_peek(c, "free", "p", 1, 1, &d), SLUICE_OK);
    EXPECT_EQ(d.allowed, 1u);
  }
  ASSERT_EQ(sluice_acquire(c, "free", "p", 1, 1, &d), SLUICE_OK);
  EXPECT_EQ(d.allowed, 1u);
  ASSERT_EQ(sluice_peek(c, "free", "p", 1, 1, &d), SLUICE_OK);
  EXPECT_EQ(d.allowed, 0u);
}

TEST_F(Api, BinaryKeysWithEmbeddedNuls) {
  sluice_decision d = fresh();
  ASSERT_EQ(sluice_acquire(c, "free", "a\0b", 3, 1, &d), SLUICE_OK);
  EXPECT_EQ(d.allowed, 1u);
  ASSERT_EQ(sluice_acquire(c, "free", "a\0c", 3, 1, &d), SLUICE_OK);
  EXPECT_EQ(d.allowed, 1u);
}

struct BadCase {
  const char *what;
  int expected;
  std::function<int(sluice_client *, sluice_decision *)> call;
};

TEST_F(Api, EveryBadInputHasItsOwnCodeAndMessage) {
  const std::string long_key(17, 'x');
  const std::vector<BadCase> cases = {
      {"NULL client", SLUICE_ENULL, [](sluice_client *, sluice_decision *d) { return sluice_acquire(nullptr, "pro", "k", 1, 1, d); }},
      {"NULL tier", SLUICE_ENULL, [](sluice_client *c, sluice_decision *d) { return sluice_acquire(c, nullptr, "k", 1, 1, d); }},
      {"NULL key", SLUICE_ENULL, [](sluice_client *c, sluice_decision *d) { return sluice_acquire(c, "pro", nullptr, 1, 1, d); }},
      {"NULL out", SLUICE_ENULL, [](sluice_client *c, sluice_decision *) { return sluice_acquire(c, "pro", "k", 1, 1, nullptr); }},
      {"size 0", SLUICE_ESIZE, [](sluice_client *c, sluice_decision *d) { d->size = 0; return sluice_acquire(c, "pro", "k", 1, 1, d); }},
      {"size too small", SLUICE_ESIZE, [](sluice_client *c, sluice_decision *d) { d->size = 20; return sluice_acquire(c, "pro", "k", 1, 1, d); }},
      {"size unknown larger", SLUICE_ESIZE, [](sluice_client *c, sluice_decision *d) { d->size = 4096; return sluice_peek(c, "pro", "k", 1, 1, d); }},
      {"empty key", SLUICE_EEMPTYKEY, [](sluice_client *c, sluice_decision *d) { return sluice_acquire(c, "pro", "", 0, 1, d); }},
      {"oversize key", SLUICE_EKEYTOOLONG, [&](sluice_client *c, sluice_decision *d) { return sluice_acquire(c, "pro", long_key.data(), long_key.size(), 1, d); }},
      {"huge key_len", SLUICE_EKEYTOOLONG, [](sluice_client *c, sluice_decision *d) { return sluice_acquire(c, "pro", "k", SIZE_MAX, 1, d); }},
      {"unknown tier", SLUICE_ETIER, [](sluice_client *c, sluice_decision *d) { return sluice_acquire(c, "gold", "k", 1, 1, d); }},
      {"empty tier", SLUICE_ETIER, [](sluice_client *c, sluice_decision *d) { return sluice_acquire(c, "", "k", 1, 1, d); }},
      {"tier prefix", SLUICE_ETIER, [](sluice_client *c, sluice_decision *d) { return sluice_acquire(c, "pr", "k", 1, 1, d); }},
      {"cost 0", SLUICE_ECOSTZERO, [](sluice_client *c, sluice_decision *d) { return sluice_acquire(c, "pro", "k", 1, 0, d); }},
      {"cost above capacity", SLUICE_ECOST, [](sluice_client *c, sluice_decision *d) { return sluice_acquire(c, "free", "k", 1, 4, d); }},
      {"cost huge", SLUICE_ECOST, [](sluice_client *c, sluice_decision *d) { return sluice_acquire(c, "pro", "k", 1, UINT32_MAX, d); }},
      {"peek cost 0", SLUICE_ECOSTZERO, [](sluice_client *c, sluice_decision *d) { return sluice_peek(c, "pro", "k", 1, 0, d); }},
  };
  for (const BadCase &bc : cases) {
    sluice_decision d = fresh();
    // A struct reused after an allowed call (not where the library may not write it:
    // no struct, or one whose size does not cover `allowed`).
    const std::string what = bc.what;
    if (what != "NULL out" && what != "size 0") d.allowed = 1;
    const int rc = bc.call(c, &d);
    EXPECT_EQ(rc, bc.expected) << bc.what;
    EXPECT_NE(d.allowed, 1u) << bc.what << ": an error must never read as allowed";
    const char *msg = sluice_strerror(rc);
    ASSERT_NE(msg, nullptr);
    EXPECT_GT(std::strlen(msg), 5u) << bc.what;
  }
  // Nothing above consumed quota: the key still has its full limit.
  sluice_decision d = fresh();
  ASSERT_EQ(sluice_acquire(c, "pro", "k", 1, 2, &d), SLUICE_OK);
  EXPECT_EQ(d.allowed, 1u);
}

TEST(ApiOpen, Errors) {
  sluice_client *c = reinterpret_cast<sluice_client *>(0x1);
  EXPECT_EQ(sluice_open("sluicetest-none", nullptr), SLUICE_ENULL);
  EXPECT_EQ(sluice_open("sluicetest-does-not-exist", &c), SLUICE_ENOSEGMENT);
  EXPECT_EQ(c, nullptr) << "out is cleared on failure";
  EXPECT_EQ(sluice_open("../etc/passwd", &c), SLUICE_ENOSEGMENT);
  sluice_close(nullptr);  // a no-op
}

TEST(ApiOpen, EnvironmentNamesTheDefaultSegment) {
  test::SegmentGuard seg("env", test::spec_with({test::tier("t", 1, 1000, 1)}));
  setenv("SLUICE_SEGMENT", seg.name.c_str(), 1);
  sluice_client *c = nullptr;
  EXPECT_EQ(sluice_open(nullptr, &c), SLUICE_OK);
  sluice_close(c);
  unsetenv("SLUICE_SEGMENT");
}

TEST(ApiOpen, VersionMismatchAndCorruptHeaderAreRefused) {
  test::SegmentGuard seg("ver", test::spec_with({test::tier("t", 1, 1000, 1)}));
  auto &h = seg.owner->state();
  const uint64_t good = h.format.load();
  sluice_client *c = nullptr;
  h.format.store(good + (uint64_t(1) << 48));  // next major version
  EXPECT_EQ(sluice_open(seg.name.c_str(), &c), SLUICE_EVERSION);
  h.format.store(good ^ 0x1234);  // same major, different shape
  EXPECT_EQ(sluice_open(seg.name.c_str(), &c), SLUICE_EVERSION);
  h.format.store(good);
  h.magic ^= 1;
  EXPECT_EQ(sluice_open(seg.name.c_str(), &c), SLUICE_ECORRUPT);
  h.magic ^= 1;
  h.tiers[0].rings_offset = h.segment_bytes + 64;  // points past the end
  EXPECT_EQ(sluice_open(seg.name.c_str(), &c), SLUICE_ECORRUPT);
}

TEST(ApiOpen, NotReadyWhileTheCreatorIsStillWriting) {
  test::SegmentGuard seg("ready", test::spec_with({test::tier("t", 1, 1000, 1)}));
  auto &h = seg.owner->state();
  const uint64_t good = h.format.load();
  h.format.store(0);
  sluice_client *c = nullptr;
  EXPECT_EQ(sluice_open(seg.name.c_str(), &c), SLUICE_ENOTREADY);
  h.format.store(good);
  EXPECT_EQ(sluice_open(seg.name.c_str(), &c), SLUICE_OK);
  sluice_close(c);
}

TEST(ApiMisc, VersionAndStrerror) {
  EXPECT_EQ(sluice_abi_version(), uint32_t(SLUICE_ABI_VERSION));
  EXPECT_STREQ(sluice_strerror(SLUICE_OK), "ok");
  EXPECT_STREQ(sluice_strerror(-999), "unknown status code");
  for (int code = SLUICE_EINTERNAL; code < 0; ++code) EXPECT_STRNE(sluice_strerror(code), "unknown status code") << code;
}

TEST_F(Api, OneHandleSharedByThreadsIsExact) {
  std::atomic<int> admitted{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&] {
      sluice_decision d = fresh();
      for (int i = 0; i < 200; ++i)
        if (sluice_acquire(c, "pro", "shared", 6, 1, &d) == SLUICE_OK && d.allowed) ++admitted;
    });
  for (auto &t : ts) t.join();
  EXPECT_EQ(admitted.load(), 2);
}

TEST_F(Api, AHandleKeepsWorkingInAForkedChild) {
  sluice_decision d = fresh();
  ASSERT_EQ(sluice_acquire(c, "pro", "forked", 6, 1, &d), SLUICE_OK);
  const pid_t p = fork();
  if (p == 0) {
    sluice_decision cd = fresh();
    const int rc = sluice_acquire(c, "pro", "forked", 6, 1, &cd);
    _exit(rc == SLUICE_OK && cd.allowed == 1 && cd.remaining == 0 ? 0 : 1);
  }
  int st = 0;
  waitpid(p, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  ASSERT_EQ(sluice_acquire(c, "pro", "forked", 6, 1, &d), SLUICE_OK);
  EXPECT_EQ(d.allowed, 0u) << "the child's admission is in the shared ledger";
}

// ---- a reset under running clients ------------------------------------------------
// sluiced --reset removes the pair and makes a new one. A handle opened before must
// count in the new ledger (not keep a private one that the rest of the host no
// longer sees), find tiers the new policy added, and fail with a reason, never
// allow, while no pair can be opened.
namespace {

core::LayoutSpec one_per_minute(bool with_gold = false) {
  std::vector<core::TierSpec> t{test::tier("free", 1, 60000, 3)};
  if (with_gold) t.push_back(test::tier("gold", 5, 60000, 10));
  return test::spec_with(t, 64, 16);
}

void reset_pair(const std::string &name, const core::LayoutSpec &spec) {
  std::unique_ptr<core::Owner> o;
  bool created = false;
  std::string detail;
  ASSERT_EQ(core::Owner::create_or_attach(name, spec, true, o, created, detail), core::Status::ok) << detail;
  ASSERT_TRUE(created);
}

uint32_t acquire_allowed(sluice_client *c, const char *tier, const char *key, int *rc = nullptr) {
  sluice_decision d{};
  d.size = sizeof d;
  d.allowed = 0x55;
  const int s = sluice_acquire(c, tier, key, std::strlen(key), 1, &d);
  if (rc) *rc = s;
  return s == SLUICE_OK ? d.allowed : 0x55;
}

// A pair (tier "free": 1 per minute) and a handle opened on it before anything else.
struct ApiReset : ::testing::Test {
  test::SegmentGuard seg{"reset", one_per_minute()};
  sluice_client *c = nullptr;
  void SetUp() override { ASSERT_EQ(sluice_open(seg.name.c_str(), &c), SLUICE_OK); }
  void TearDown() override { sluice_close(c); }
};

}  // namespace

TEST_F(ApiReset, AHandleOpenBeforeAResetCountsInTheNewLedger) {
  sluice_client *before = c;
  EXPECT_EQ(acquire_allowed(before, "free", "k"), 1u);
  EXPECT_EQ(acquire_allowed(before, "free", "k"), 0u);
  reset_pair(seg.name, one_per_minute());
  EXPECT_EQ(acquire_allowed(before, "free", "k"), 1u) << "a reset wipes the ledger";
  sluice_client *after = nullptr;
  ASSERT_EQ(sluice_open(seg.name.c_str(), &after), SLUICE_OK);
  EXPECT_EQ(acquire_allowed(after, "free", "k"), 0u) << "the old handle's unit is not in the new ledger";
  EXPECT_EQ(acquire_allowed(before, "free", "k"), 0u);
  sluice_close(after);
}

TEST_F(ApiReset, ATierTheResetAddedIsFoundByAHandleOpenBefore) {
  int rc = 0;
  acquire_allowed(c, "gold", "k", &rc);
  EXPECT_EQ(rc, SLUICE_ETIER);
  reset_pair(seg.name, one_per_minute(true));
  EXPECT_EQ(acquire_allowed(c, "gold", "k", &rc), 1u);
  EXPECT_EQ(rc, SLUICE_OK);
}

TEST_F(ApiReset, ARemovedPairIsAnErrorUntilANewOneExists) {
  EXPECT_EQ(acquire_allowed(c, "free", "k"), 1u);
  core::Owner::remove(seg.name);
  for (int i = 0; i < 3; ++i) {  // the first reopens and fails; the next fail fast
    int rc = 0;
    EXPECT_EQ(acquire_allowed(c, "free", "k", &rc), 0x55u) << "no decision may come from a removed ledger";
    EXPECT_EQ(rc, SLUICE_ENOSEGMENT);
  }
  sluice_decision d{};
  d.size = sizeof d;
  EXPECT_EQ(sluice_peek(c, "free", "k", 1, 1, &d), SLUICE_ENOSEGMENT);
  reset_pair(seg.name, one_per_minute());
  int rc = SLUICE_ENOSEGMENT;
  for (int i = 0; i < 200 && rc == SLUICE_ENOSEGMENT; ++i) {  // retried at most every 20 ms
    acquire_allowed(c, "free", "k", &rc);
    if (rc == SLUICE_ENOSEGMENT) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(rc, SLUICE_OK);
}

TEST_F(ApiReset, AResetStoppedBetweenRetiringAndRemovingIsFinishedAtTheNextStart) {
  EXPECT_EQ(acquire_allowed(c, "free", "k"), 1u);
  core::Owner::retire(seg.name);  // the daemon died here
  int rc = 0;
  acquire_allowed(c, "free", "k", &rc);
  EXPECT_EQ(rc, SLUICE_ENOSEGMENT) << "a retired pair with no successor gives no decisions";
  std::unique_ptr<core::Owner> o;
  bool created = false;
  std::string detail;
  ASSERT_EQ(core::Owner::create_or_attach(seg.name, one_per_minute(), false, o, created, detail), core::Status::ok)
      << detail;
  EXPECT_TRUE(created) << "the retired pair was adopted instead of replaced";
  std::this_thread::sleep_for(std::chrono::milliseconds(25));  // past the reopen back-off
  EXPECT_EQ(acquire_allowed(c, "free", "k", &rc), 1u);
  EXPECT_EQ(rc, SLUICE_OK);
}

TEST_F(ApiReset, ThreadsSharingAHandleThroughResetsAllEndInTheNewLedger) {
  std::atomic<bool> stop{false}, resets_done{false};
  std::atomic<int> bad{0}, first_bad_rc{0};
  std::atomic<int> decided_after[4] = {};  // a decision by a call begun after the last reset
  std::atomic<int> last_rc[4] = {};
  std::atomic<long> calls_after[4] = {};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      const std::string key = "t" + std::to_string(i);
      // Bounded by time, not by a count: a fast machine ran 2M calls before the
      // resets were over, and the thread stopped in a ledger that was then retired.
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      for (long n = 0; !stop.load() && ((n & 1023) || std::chrono::steady_clock::now() < give_up); ++n) {
        int rc = 0;
        const bool after = resets_done.load();
        const uint32_t a = acquire_allowed(c, "free", key.c_str(), &rc);
        if (after && rc == SLUICE_OK) decided_after[i].store(1);
        if (after) { last_rc[i].store(rc); calls_after[i].fetch_add(1); }
        // Between unlink and create a reopen may find no pair: an error, never a made-up answer.
        if (rc == SLUICE_OK ? a > 1 : rc != SLUICE_ENOSEGMENT && rc != SLUICE_ENOTREADY) {
          int none = 0;
          first_bad_rc.compare_exchange_strong(none, rc == SLUICE_OK ? 1000 : rc);
          bad.fetch_add(1);
        }
      }
    });
  for (int r = 0; r < 5; ++r) {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    reset_pair(seg.name, one_per_minute());
  }
  // Each thread decides at least once in the last ledger (past its reopen back-off),
  // however the machine schedules it; a handle that never follows fails here.
  resets_done = true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  auto all_decided = [&] {
    for (auto &d : decided_after)
      if (!d.load()) return false;
    return true;
  };
  while (!all_decided() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  stop = true;
  for (auto &t : threads) t.join();
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(decided_after[i].load(), 1) << "t" << i << " never decided after the last reset: " << calls_after[i].load()
                                          << " calls, the last " << sluice_strerror(last_rc[i].load());
  EXPECT_EQ(bad.load(), 0) << "first: " << (first_bad_rc == 1000 ? "allowed > 1" : sluice_strerror(first_bad_rc));
  // Each thread's key holds its one unit in the last ledger: a fresh handle is refused.
  sluice_client *fresh = nullptr;
  ASSERT_EQ(sluice_open(seg.name.c_str(), &fresh), SLUICE_OK);
  for (int i = 0; i < 4; ++i) {
    const std::string key = "t" + std::to_string(i);
    EXPECT_EQ(acquire_allowed(fresh, "free", key.c_str()), 0u) << key << " was admitted only in a retired ledger";
  }
  sluice_close(fresh);
}
