// A daemon adopts only segments that are its own uid's and no more open than it
// made them. /dev/shm is world-writable: another local user can create the names
// first (and keep write access to the limits), or change a segment's mode.
// These run the other user as `nobody` (65534) and a non-root daemon as uid 1, so
// they need root.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>

#include "../support/fixture.hpp"
#include "sluice/core/ledger_handle.hpp"

#include <chrono>
#include <thread>

namespace sluice::core {
namespace {

constexpr uid_t kNobody = 65534;
constexpr uid_t kDaemonUser = 1;  // Debian's "daemon": a non-root uid that is not nobody

LayoutSpec small_spec() { return test::spec_with({test::tier("t", 4, 1000, 8)}, 64, 32); }

// Runs `body` in a child as `uid`; returns its exit status (0 = body returned true).
int run_as(uid_t uid, const std::function<bool()> &body) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (setgid(uid) != 0 || setuid(uid) != 0) _exit(3);
    _exit(body() ? 0 : 1);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

bool exists(const std::string &shm_name) { return access(("/dev/shm/" + shm_name).c_str(), F_OK) == 0; }

struct Names {  // removes both objects whoever made them (the test runs as root)
  std::string name = test::unique_segment("adopt");
  ~Names() { Owner::remove(name); }
};

// Leaves a state object of `bytes` zeros under the name, as a creator killed
// before formatting it (or before sizing it, with 0) does.
void leave_raw_state(const std::string &name, off_t bytes) {
  const int fd = shm_open(("/" + state_segment_name(name)).c_str(), O_CREAT | O_EXCL | O_RDWR, 0660);
  ASSERT_GE(fd, 0);
  if (bytes) {
    ASSERT_EQ(ftruncate(fd, bytes), 0);
  }
  close(fd);
}

// A start on the left-over object makes the pair afresh.
void expect_fresh_start(const std::string &name) {
  std::unique_ptr<Owner> o;
  bool created = false;
  std::string detail;
  ASSERT_EQ(Owner::create_or_attach(name, small_spec(), false, o, created, detail), Status::ok) << detail;
  EXPECT_TRUE(created);
}

Status attach(const std::string &name, bool reset, std::string &detail) {
  std::unique_ptr<Owner> o;
  bool created = false;
  return Owner::create_or_attach(name, small_spec(), reset, o, created, detail);
}

void sleep_past_a_name_check() {
  std::this_thread::sleep_for(std::chrono::nanoseconds(kNameCheckIntervalNs) + std::chrono::milliseconds(50));
}

// A pair under `name` (its owner gone at once, as a killed sluiced's is) and a handle
// on it that has admitted one unit of key "k" (tier "t": 4 per window).
std::unique_ptr<LedgerHandle> handle_after_one_admission(const std::string &name) {
  std::string detail;
  std::unique_ptr<LedgerHandle> h;
  EXPECT_EQ(attach(name, false, detail), Status::ok) << detail;
  EXPECT_EQ(LedgerHandle::open(name, h, detail), Status::ok) << detail;
  Decision d;
  if (h) {
    EXPECT_EQ(h->decide("t", "k", 1, 1, true, d, detail), Status::ok) << detail;
  }
  EXPECT_TRUE(d.allowed && d.remaining == 3);
  return h;
}

TEST(Adoption, ASegmentPairAnotherUserMadeFirstIsRefusedNamingItsOwner) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  Names n;
  // nobody starts a daemon of its own on the name first, and opens it to everyone.
  ASSERT_EQ(run_as(kNobody, [&] {
              std::string d;
              if (attach(n.name, false, d) != Status::ok) return false;
              return chmod(("/dev/shm/" + state_segment_name(n.name)).c_str(), 0666) == 0 &&
                     chmod(("/dev/shm/" + policy_segment_name(n.name)).c_str(), 0666) == 0;
            }),
            0);
  std::string detail;
  EXPECT_EQ(attach(n.name, false, detail), Status::permission);
  EXPECT_NE(detail.find("belongs to uid 65534"), std::string::npos) << detail;
  // A non-root daemon cannot remove them either; --reset must not make it adopt them.
  EXPECT_EQ(run_as(kDaemonUser, [&] {
              std::string d;
              return attach(n.name, true, d) == Status::permission && d.find("uid 65534") != std::string::npos;
            }),
            0);
  // Root's --reset removes another user's names and starts afresh, its own.
  ASSERT_EQ(attach(n.name, true, detail), Status::ok) << detail;
  struct stat st {};
  ASSERT_EQ(stat(("/dev/shm/" + policy_segment_name(n.name)).c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
}

TEST(Adoption, APolicySegmentOpenedToOthersIsRefusedNamingItsMode) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for a segment of known ownership";
  Names n;
  std::string detail;
  ASSERT_EQ(attach(n.name, false, detail), Status::ok) << detail;
  ASSERT_EQ(attach(n.name, false, detail), Status::ok) << detail;  // as made: adopted
  ASSERT_EQ(chmod(("/dev/shm/" + policy_segment_name(n.name)).c_str(), 0662), 0);
  EXPECT_EQ(attach(n.name, false, detail), Status::permission);
  EXPECT_NE(detail.find("mode 0662"), std::string::npos) << detail;
  ASSERT_EQ(chmod(("/dev/shm/" + policy_segment_name(n.name)).c_str(), 0640), 0);
  ASSERT_EQ(chmod(("/dev/shm/" + state_segment_name(n.name)).c_str(), 0666), 0);
  EXPECT_EQ(attach(n.name, false, detail), Status::permission);
  EXPECT_NE(detail.find("mode 0666"), std::string::npos) << detail;
}

TEST(Adoption, AnotherUsersPolicyNameLeavesNoHalfMadePairBehind) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to act as two users";
  Names n;
  // nobody squats only the policy name; the (non-root) daemon then finds no state.
  ASSERT_EQ(run_as(kNobody, [&] {
              const int fd = shm_open(("/" + policy_segment_name(n.name)).c_str(), O_CREAT | O_EXCL | O_RDWR, 0644);
              return fd >= 0 && close(fd) == 0;
            }),
            0);
  EXPECT_EQ(run_as(kDaemonUser, [&] {
              std::string d;
              return attach(n.name, false, d) == Status::permission && d.find("already exists") != std::string::npos;
            }),
            0);
  // A state segment without its policy would make every later start wait and fail.
  EXPECT_FALSE(exists(state_segment_name(n.name)));
}

}  // namespace
}  // namespace sluice::core

namespace sluice::core {
namespace {

// A handle follows a reset only into a pair of the same owner: between sluiced's
// unlink and its new pair, anyone may create the names.
TEST(Adoption, AHandleDoesNotFollowItsNameIntoAnotherUsersPair) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  Names n;
  std::unique_ptr<LedgerHandle> h = handle_after_one_admission(n.name);
  ASSERT_TRUE(h);
  std::string detail;
  Decision d;
  Owner::remove(n.name);  // the unlink of a reset...
  ASSERT_EQ(run_as(kNobody, [&] {  // ...and nobody gets there first, open to all
              std::string e;
              return attach(n.name, false, e) == Status::ok &&
                     chmod(("/dev/shm/" + state_segment_name(n.name)).c_str(), 0666) == 0 &&
                     chmod(("/dev/shm/" + policy_segment_name(n.name)).c_str(), 0666) == 0;
            }),
            0);
  EXPECT_EQ(h->decide("t", "k", 1, 1, true, d, detail), Status::permission) << detail;
  EXPECT_NE(detail.find("owned by uid 65534"), std::string::npos) << detail;
  // Root's --reset removes nobody's pair (retiring it) and makes its own: followed.
  ASSERT_EQ(attach(n.name, true, detail), Status::ok) << detail;
  std::this_thread::sleep_for(std::chrono::milliseconds(25));  // past the back-off
  EXPECT_EQ(h->decide("t", "k", 1, 1, true, d, detail), Status::ok) << detail;
  EXPECT_TRUE(d.allowed);
}

// sluiced killed -9 cannot retire its pair; someone then removes its files by hand
// (rm /dev/shm/NAME.*) and a new sluiced makes a new pair. A handle that mapped the
// old one must move to the new one, where everyone else counts: before, it kept
// counting in the unlinked pair for good (the host's limit, twice over).
TEST(Adoption, AHandleLeavesAPairRemovedByHandForTheNewPairUnderItsName) {
  Names n;
  std::unique_ptr<LedgerHandle> h = handle_after_one_admission(n.name);
  ASSERT_TRUE(h);
  std::string detail;
  Decision d;
  ASSERT_TRUE(Mapping::remove(state_segment_name(n.name)));  // not retired: no sluiced ran to do it
  ASSERT_TRUE(Mapping::remove(policy_segment_name(n.name)));
  // While nothing is under the name, the clients that map the pair still share it.
  sleep_past_a_name_check();
  ASSERT_EQ(h->decide("t", "k", 1, 1, true, d, detail), Status::ok) << detail;
  EXPECT_TRUE(d.allowed && d.remaining == 2) << d.remaining;
  ASSERT_EQ(attach(n.name, false, detail), Status::ok) << detail;  // the new sluiced's pair
  sleep_past_a_name_check();
  for (uint32_t left = 3;; --left) {  // the new pair's full limit of 4, then a denial
    ASSERT_EQ(h->decide("t", "k", 1, 1, true, d, detail), Status::ok) << detail;
    ASSERT_TRUE(d.allowed) << "still judged in the removed pair";
    EXPECT_EQ(d.remaining, left);
    if (left == 0) break;
  }
  ASSERT_EQ(h->decide("t", "k", 1, 1, true, d, detail), Status::ok) << detail;
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(h->reopens(), 1u);
  std::unique_ptr<Ledger> fresh;  // what every other process sees under the name
  ASSERT_EQ(Ledger::open(n.name, fresh, detail), Status::ok) << detail;
  ASSERT_EQ(fresh->peek("t", "k", 1, 1, d, detail), Status::ok) << detail;
  EXPECT_FALSE(d.allowed) << "the handle's admissions are not in the pair under the name";
}

// kill -9, then only the policy removed: the next sluiced keeps the state (its keys
// and counters) and makes a new policy. Old clients must see the new limits.
TEST(Adoption, AHandleFollowsANewPolicyMadeForItsStateAfterTheOldOneWasRemovedByHand) {
  Names n;
  std::unique_ptr<LedgerHandle> h = handle_after_one_admission(n.name);  // limit 4
  ASSERT_TRUE(h);
  ASSERT_TRUE(Mapping::remove(policy_segment_name(n.name)));
  std::unique_ptr<Owner> o;
  bool created = true;
  std::string detail;
  ASSERT_EQ(Owner::create_or_attach(n.name, test::spec_with({test::tier("t", 2, 1000, 8)}, 64, 32), false, o,
                                    created, detail),
            Status::ok)
      << detail;
  ASSERT_FALSE(created);
  sleep_past_a_name_check();
  Decision d;
  ASSERT_EQ(h->decide("t", "k", 1, 1, true, d, detail), Status::ok) << detail;
  EXPECT_EQ(d.limit, 2u) << "still deciding under the removed policy's limit";
  EXPECT_TRUE(d.allowed && d.remaining == 0) << "k's unit from before is in the kept state";
  ASSERT_EQ(h->decide("t", "k", 1, 1, true, d, detail), Status::ok) << detail;
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(h->reopens(), 1u);
}

// A client that calls only a tier the new pair added never reached the check.
TEST(Adoption, AHandleCallingOnlyATierTheNewPairAddedMovesToIt) {
  Names n;
  std::unique_ptr<LedgerHandle> h = handle_after_one_admission(n.name);
  ASSERT_TRUE(h);
  ASSERT_TRUE(Mapping::remove(state_segment_name(n.name)));
  ASSERT_TRUE(Mapping::remove(policy_segment_name(n.name)));
  std::unique_ptr<Owner> o;
  bool created = false;
  std::string detail;
  ASSERT_EQ(Owner::create_or_attach(
                n.name, test::spec_with({test::tier("t", 4, 1000, 8), test::tier("u", 3, 1000, 8)}, 64, 32), false,
                o, created, detail),
            Status::ok)
      << detail;
  Decision d;
  EXPECT_EQ(h->decide("u", "k", 1, 1, true, d, detail), Status::unknown_tier) << "not due yet";
  sleep_past_a_name_check();
  ASSERT_EQ(h->decide("u", "k", 1, 1, true, d, detail), Status::ok) << detail;
  EXPECT_TRUE(d.allowed && d.limit == 3 && d.remaining == 2);
  EXPECT_EQ(h->decide("nope", "k", 1, 1, true, d, detail), Status::unknown_tier);
}

// The call that wins the check records nothing in the pair it leaves. (Calls on
// other threads meanwhile go on in it until the new pair is installed.)
TEST(Adoption, TheCallThatWinsTheNameCheckRecordsNothingInThePairItLeaves) {
  Names n;
  std::unique_ptr<LedgerHandle> h = handle_after_one_admission(n.name);  // k: 1 of 4 used
  ASSERT_TRUE(h);
  std::string detail;
  std::unique_ptr<Ledger> old;  // the removed pair, as the old clients still see it
  ASSERT_EQ(Ledger::open(n.name, old, detail), Status::ok) << detail;
  Decision before, d;
  ASSERT_EQ(old->peek("t", "k", 1, 1, before, detail), Status::ok) << detail;
  ASSERT_TRUE(Mapping::remove(state_segment_name(n.name)));
  ASSERT_TRUE(Mapping::remove(policy_segment_name(n.name)));
  ASSERT_EQ(attach(n.name, false, detail), Status::ok) << detail;
  sleep_past_a_name_check();
  ASSERT_EQ(h->decide("t", "k", 1, 1, true, d, detail), Status::ok) << detail;
  EXPECT_TRUE(d.allowed && d.remaining == 3) << "decided in the new pair, k's first unit there";
  EXPECT_EQ(h->reopens(), 1u);
  ASSERT_EQ(old->peek("t", "k", 1, 1, d, detail), Status::ok) << detail;
  EXPECT_EQ(d.remaining, before.remaining) << "the checking call recorded in the pair it left";
}

// Threads racing through the check all get decisions, never an internal status,
// and the handle moves once per new pair.
TEST(Adoption, ThreadsRacingThroughNameChecksSeeOnlyDecisions) {
  Names n;
  std::unique_ptr<LedgerHandle> h = handle_after_one_admission(n.name);
  ASSERT_TRUE(h);
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::atomic<uint64_t> calls{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      Decision d;
      std::string e;
      const std::string key = "racer-" + std::to_string(i);
      while (!stop.load(std::memory_order_relaxed)) {
        if (h->decide("t", key.data(), key.size(), 1, true, d, e) != Status::ok) bad.fetch_add(1);
        calls.fetch_add(1, std::memory_order_relaxed);
      }
    });
  std::string detail;
  for (int cycle = 0; cycle < 3; ++cycle) {
    ASSERT_TRUE(Mapping::remove(state_segment_name(n.name)));
    ASSERT_TRUE(Mapping::remove(policy_segment_name(n.name)));
    ASSERT_EQ(attach(n.name, false, detail), Status::ok) << detail;
    sleep_past_a_name_check();
  }
  stop.store(true);
  for (auto &t : threads) t.join();
  EXPECT_EQ(bad.load(), 0) << "of " << calls.load() << " calls";
  EXPECT_EQ(h->reopens(), 3u);
}

// The policy's segment.reserve_memory reaches the state's creation: reserved, every
// page of it is allocated at once; not, only the pages written so far.
TEST(Adoption, AStateIsReservedWholeUnlessThePolicySaysNot) {
  for (const bool reserve : {true, false}) {
    Names n;
    LayoutSpec spec = test::spec_with({test::tier("t", 4, 1000, 1024)}, 20000, 32);
    spec.reserve_memory = reserve;
    std::unique_ptr<Owner> o;
    bool created = false;
    std::string detail;
    ASSERT_EQ(Owner::create_or_attach(n.name, spec, false, o, created, detail), Status::ok) << detail;
    ASSERT_TRUE(created);
    struct stat st {};
    ASSERT_EQ(::stat(("/dev/shm/" + state_segment_name(n.name)).c_str(), &st), 0);
    const uint64_t allocated = uint64_t(st.st_blocks) * 512, size = uint64_t(st.st_size);
    ASSERT_GT(size, 100u << 20);
    if (reserve)
      EXPECT_GE(allocated, size) << "reserved";
    else
      EXPECT_LT(allocated, size / 10) << "not reserved, yet most of it is allocated";
  }
}

// tmpfs keeps an unlinked object's pages until its last mapping goes. A client
// that mapped the pair before a reset (and may not call again for hours) must not
// keep a whole state segment allocated: remove frees it once it is retired.
TEST(Adoption, ARemovedPairFreesItsStateMemoryWhileClientsStillMapIt) {
  test::SegmentGuard seg("free", test::spec_with({test::tier("t", 16, 1000, 16)}, 20000, 16));
  std::unique_ptr<Ledger> client = seg.open();
  std::unique_ptr<LedgerHandle> handle;
  std::string detail;
  ASSERT_EQ(LedgerHandle::open(seg.name, handle, detail), Status::ok) << detail;
  Decision d;
  ASSERT_EQ(client->decide("t", "k", 1, 1, true, d, detail), Status::ok) << detail;
  Mapping m;  // what a client maps
  ASSERT_EQ(Mapping::open(state_segment_name(seg.name), true, m, detail), Status::ok) << detail;
  test::allocate_every_page(m);
  const size_t pages = m.size() / size_t(sysconf(_SC_PAGESIZE));
  ASSERT_GE(pages, 1000u);
  ASSERT_GE(test::resident_pages(m), pages * 9 / 10);
  Owner::remove(seg.name);
  EXPECT_LE(test::resident_pages(m), 1u) << "the removed pair's state still holds its memory for the clients that map it";
  // A call on the emptied ledger reads the retirement first, never a decision from zeros.
  EXPECT_EQ(client->decide("t", "k", 1, 1, true, d, detail), Status::retired);
  EXPECT_EQ(handle->decide("t", "k", 1, 1, true, d, detail), Status::no_segment) << detail;
}

// sluiced killed between creating the state segment and formatting it: the next
// start (under the segment lock) makes the pair afresh instead of failing for ever.
TEST(Adoption, AStateSegmentNeverFormattedIsReplacedAtTheNextStart) {
  Names n;
  leave_raw_state(n.name, 1 << 20);
  expect_fresh_start(n.name);
}

TEST(Adoption, AnEmptyStateObjectIsReplacedAtTheNextStart) {
  // A creator killed between shm_open and sizing the object leaves it empty; every
  // start used to refuse it ("state is empty") until --reset.
  Names n;
  leave_raw_state(n.name, 0);
  expect_fresh_start(n.name);
}

TEST(Adoption, AStateTooLargeForDevShmIsRefusedOnThePathThatReplacesAnUnformattedOne) {
  // The daemon checked the free space only when no state existed: an unformatted
  // one in the way led to a 155 GiB pair on a 24 GiB tmpfs, made "fine".
  Names n;
  leave_raw_state(n.name, 1 << 16);
  const LayoutSpec huge = test::spec_with({test::tier("t", 4, 1000, 1u << 20)}, 1'000'000, 32);
  ASSERT_GT(state_segment_bytes(huge), shm_free_bytes());
  std::unique_ptr<Owner> o;
  bool created = false;
  std::string detail;
  EXPECT_NE(Owner::create_or_attach(n.name, huge, false, o, created, detail), Status::ok);
  EXPECT_NE(detail.find("free"), std::string::npos) << detail;
  EXPECT_FALSE(exists(state_segment_name(n.name)));
}

TEST(Adoption, AStateWhosePolicyWasRemovedKeepsItsKeysAndCountersAtTheNextStart) {
  // A daemon that finds its policy unlinked retires it and stops, telling the
  // operator to restart; the restart used to fail ("open ...policy: no such file").
  Names n;
  std::unique_ptr<Owner> o;
  bool created = false;
  std::string detail;
  ASSERT_EQ(Owner::create_or_attach(n.name, small_spec(), false, o, created, detail), Status::ok) << detail;
  {
    std::unique_ptr<Ledger> l;
    ASSERT_EQ(Ledger::open(n.name, l, detail), Status::ok) << detail;
    Decision d;
    for (int i = 0; i < 4; ++i) ASSERT_EQ(l->acquire("t", "k", 1, 1, d, detail), Status::ok);
  }
  o.reset();
  Mapping::remove(policy_segment_name(n.name));
  ASSERT_EQ(Owner::create_or_attach(n.name, small_spec(), false, o, created, detail), Status::ok) << detail;
  EXPECT_FALSE(created);
  EXPECT_EQ(sum_counters(o->state(), 0).admitted, 4u);
  std::unique_ptr<Ledger> l;
  ASSERT_EQ(Ledger::open(n.name, l, detail), Status::ok) << detail;
  Decision d;
  ASSERT_EQ(l->acquire("t", "k", 1, 1, d, detail), Status::ok);
  EXPECT_FALSE(d.allowed) << "the key's four units in its window were kept";
}

TEST(Adoption, AReattachLetsItsHookChooseTheRowsOrRefuseBeforeAnythingIsPublished) {
  // sluiced keeps what its loop published across a restart, and refuses a start
  // whose audit record it cannot write: both before the table changes.
  Names n;
  const LayoutSpec spec = test::spec_with({test::tier("a", 4, 1000, 64), test::tier("b", 4, 1000, 64)}, 64, 32);
  std::unique_ptr<Owner> o;
  bool created = false;
  std::string detail;
  int calls = 0;
  int64_t made_ns = 0;
  const Owner::AttachHook keep_a = [&](std::vector<TierLimits> &rows, const std::vector<TierLimits> &before,
                                       int64_t created_ns, std::string &) {
    ++calls;
    made_ns = created_ns;
    rows[0].limit = before[0].limit;
    return true;
  };
  ASSERT_EQ(Owner::create_or_attach(n.name, spec, false, o, created, detail, keep_a), Status::ok) << detail;
  ASSERT_TRUE(created);
  EXPECT_EQ(calls, 0) << "a new pair has nothing to keep";
  EXPECT_TRUE(o->rows_before_attach().empty());
  std::vector<TierLimits> rows(2, TierLimits{4, 1'000'000'000, 0, kTierAdaptive, 0});
  rows[0].limit = 17, rows[1].limit = 9;
  o->publish(rows);
  o.reset();
  auto limit = [&](uint32_t t) {
    TierLimits l;
    read_tier(o->policy(), t, l);
    return l.limit;
  };
  ASSERT_EQ(Owner::create_or_attach(n.name, spec, false, o, created, detail, keep_a), Status::ok) << detail;
  ASSERT_FALSE(created);
  ASSERT_EQ(o->rows_before_attach().size(), 2u);
  EXPECT_EQ(o->rows_before_attach()[1].limit, 9u);
  EXPECT_EQ(limit(0), 17u) << "the hook's choice was not published";
  EXPECT_EQ(limit(1), 4u) << "the spec's row for the rest";
  EXPECT_EQ(made_ns, o->state().created_ns) << "the hook is told when the pair was made";
  o->publish(rows);
  const uint64_t gen = o->policy().generation.load();
  o.reset();
  const Owner::AttachHook refuse = [](std::vector<TierLimits> &rows, const std::vector<TierLimits> &, int64_t,
                                      std::string &why) {
    rows[0].limit = 1;
    why = "the audit store is full";
    return false;
  };
  EXPECT_EQ(Owner::create_or_attach(n.name, spec, false, o, created, detail, refuse), Status::internal);
  EXPECT_EQ(detail, "the audit store is full");
  std::unique_ptr<Owner> again;
  ASSERT_EQ(Owner::create_or_attach(n.name, spec, false, again, created, detail, [&](auto &, const auto &before, int64_t, auto &) {
              EXPECT_EQ(before[0].limit, 17u) << "a refused start changed the table";
              EXPECT_EQ(before[0].generation, gen);
              return true;
            }),
            Status::ok);
}

}  // namespace
}  // namespace sluice::core

namespace sluice::core {
namespace {

// Owner::preview (sluiced --check) foretells what create_or_attach then does, in
// every state a pair can be found in, and changes none of them.
TEST(Adoption, APreviewForetellsWhatTheStartDoesAndChangesNothing) {
  const LayoutSpec spec = small_spec();
  const LayoutSpec other = test::spec_with({test::tier("t", 4, 1000, 16)}, 64, 32);  // another max_limit
  auto start = [](const std::string &name, const LayoutSpec &s, bool reset, Status &st) {
    std::unique_ptr<Owner> o;
    bool created = false;
    std::string detail;
    st = Owner::create_or_attach(name, s, reset, o, created, detail);
    return created;
  };
  auto plan = [](const std::string &name, const LayoutSpec &s, bool reset = false) {
    return Owner::preview(name, s, reset).plan;
  };
  Names n;
  Status st;
  EXPECT_EQ(plan(n.name, spec), Owner::Plan::create);
  EXPECT_FALSE(exists(state_segment_name(n.name)) || exists(policy_segment_name(n.name)));
  EXPECT_TRUE(start(n.name, spec, false, st));
  ASSERT_EQ(st, Status::ok);

  const Owner::Preview same = Owner::preview(n.name, spec, false);
  EXPECT_EQ(same.plan, Owner::Plan::attach) << same.detail;
  ASSERT_EQ(same.rows_now.size(), 1u);
  EXPECT_EQ(same.rows_now[0].limit, 4u);
  const Owner::Preview mis = Owner::preview(n.name, other, false);
  EXPECT_EQ(mis.plan, Owner::Plan::mismatch);
  EXPECT_EQ(mis.status, Status::version_mismatch);
  EXPECT_NE(mis.detail.find("--reset"), std::string::npos) << mis.detail;
  EXPECT_EQ(plan(n.name, other, true), Owner::Plan::create);
  EXPECT_FALSE(start(n.name, spec, false, st)) << "a previewed attach is an attach";
  EXPECT_EQ(st, Status::ok);
  start(n.name, other, false, st);
  EXPECT_EQ(st, Status::version_mismatch) << "a previewed mismatch is refused";

  // Made by a build with another layout (its format word): refused like a mismatch.
  {
    Mapping m;
    std::string d;
    ASSERT_EQ(Mapping::open(state_segment_name(n.name), true, m, d), Status::ok) << d;
    auto &fmt = static_cast<StateHeader *>(m.base())->format;
    const uint64_t ours = fmt.load();
    fmt.store(fold_format(kLayoutMajor, kLayoutMinor - 1, 1));
    const Owner::Preview older = Owner::preview(n.name, spec, false);
    EXPECT_EQ(older.plan, Owner::Plan::mismatch) << older.detail;
    EXPECT_NE(older.detail.find("--reset"), std::string::npos) << older.detail;
    start(n.name, spec, false, st);
    EXPECT_EQ(st, Status::version_mismatch) << "a previewed mismatch is refused";
    fmt.store(ours);
  }

  // Its policy object removed: the state is re-attached, a policy made again.
  ASSERT_EQ(shm_unlink(("/" + policy_segment_name(n.name)).c_str()), 0);
  const Owner::Preview lone = Owner::preview(n.name, spec, false);
  EXPECT_EQ(lone.plan, Owner::Plan::attach) << lone.detail;
  EXPECT_NE(lone.detail.find("missing policy"), std::string::npos) << lone.detail;
  EXPECT_FALSE(exists(policy_segment_name(n.name))) << "the preview made the policy";
  EXPECT_FALSE(start(n.name, spec, false, st));
  EXPECT_EQ(st, Status::ok);

  // Retired by a reset that stopped half-way: removed and made again.
  ASSERT_TRUE(Owner::retire(n.name));
  EXPECT_EQ(plan(n.name, spec), Owner::Plan::create);
  EXPECT_TRUE(exists(state_segment_name(n.name))) << "the preview finished the reset";
  EXPECT_TRUE(start(n.name, spec, false, st));
  EXPECT_EQ(st, Status::ok);

  // Opened to everyone by someone: refused.
  ASSERT_EQ(chmod(("/dev/shm/" + state_segment_name(n.name)).c_str(), 0666), 0);
  const Owner::Preview open = Owner::preview(n.name, spec, false);
  EXPECT_EQ(open.plan, Owner::Plan::refused);
  EXPECT_EQ(open.status, Status::permission);
  start(n.name, spec, false, st);
  EXPECT_EQ(st, Status::permission) << "a previewed refusal is refused";
  Owner::remove(n.name);

  // An orphan policy object of another user's: a non-root start cannot unlink it
  // to make its pair, so the preview says the start fails.
  {
    const int fd = shm_open(("/" + policy_segment_name(n.name)).c_str(), O_CREAT | O_EXCL | O_RDWR, 0644);
    ASSERT_GE(fd, 0);
    close(fd);
    const std::string name = n.name;
    EXPECT_EQ(run_as(kDaemonUser, [&] { return Owner::preview(name, spec, false).plan == Owner::Plan::refused; }), 0)
        << "another user's object in the way was previewed as a new pair";
    EXPECT_EQ(run_as(kDaemonUser, [&] { return Owner::preview(name, spec, true).plan == Owner::Plan::refused; }), 0)
        << "--reset cannot remove another user's object either";
    EXPECT_EQ(plan(n.name, spec), Owner::Plan::create) << "root removes anything";
    Owner::remove(n.name);
  }

  // Left unformatted or empty by a creator that died: replaced.
  leave_raw_state(n.name, 1 << 16);
  EXPECT_EQ(plan(n.name, spec), Owner::Plan::create);
  Owner::remove(n.name);
  leave_raw_state(n.name, 0);
  EXPECT_EQ(plan(n.name, spec), Owner::Plan::create);
  EXPECT_TRUE(start(n.name, spec, false, st));
  EXPECT_EQ(st, Status::ok);
}

}  // namespace
}  // namespace sluice::core
