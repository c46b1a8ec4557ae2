// kill -9 during publication: readers see the old tier table or the new one,
// never a mix, and every audit record the killed writer saw committed is there.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <set>
#include <thread>

#include "../support/fixture.hpp"
#include "policy_loop/audit_store.hpp"

using namespace sluice;

TEST(PublicationCrash, KilledPublisherNeverLeavesAMixedTable) {
  test::SegmentGuard seg("pubkill", test::spec_with({test::tier("a", 1, 1000, 64), test::tier("b", 1, 1000, 64)}));
  // Every row the publisher writes satisfies window = limit * 7 and tier b = 65 - a.
  auto consistent = [&](std::string &why) {
    core::TierLimits a, b;
    core::read_tier(seg.owner->policy(), 0, a);
    core::read_tier(seg.owner->policy(), 1, b);
    if (a.generation != b.generation) return true;  // two separate snapshots
    const bool initial = a.limit == 1 && b.limit == 1 && a.window_ns == 1'000'000'000 && b.window_ns == a.window_ns;
    if (initial) return true;  // the spec's table, republished by each (re)attach
    if (a.window_ns != int64_t(a.limit) * 7 || b.window_ns != int64_t(b.limit) * 7 || a.limit + b.limit != 65) {
      why = "generation " + std::to_string(a.generation) + ": a=" + std::to_string(a.limit) + "/" +
            std::to_string(a.window_ns) + " b=" + std::to_string(b.limit) + "/" + std::to_string(b.window_ns);
      return false;
    }
    return true;
  };
  std::mt19937 rng(3);
  uint64_t torn = 0, reads = 0;
  std::string why;
  for (int round = 0; round < 50; ++round) {
    const pid_t child = fork();
    if (child == 0) {
      // A stand-in for sluiced: maps the policy segment read-write and publishes.
      std::unique_ptr<core::Owner> o;
      bool created = false;
      std::string d;
      if (core::Owner::create_or_attach(seg.name, test::spec_with({test::tier("a", 1, 1000, 64), test::tier("b", 1, 1000, 64)}),
                                        false, o, created, d) != core::Status::ok)
        _exit(2);
      for (uint32_t i = 0;; ++i) {
        const uint32_t lim = i % 64 + 1;
        const core::TierLimits rows[2] = {{lim, int64_t(lim) * 7, 0, 0, 0}, {65 - lim, int64_t(65 - lim) * 7, 0, 0, 0}};
        o->publish(rows);
      }
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(500 + rng() % 3000);
    while (std::chrono::steady_clock::now() < until) {
      ++reads;
      if (!consistent(why)) ++torn;
    }
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    ++reads;
    if (!consistent(why)) ++torn;  // the table the dead publisher left behind
  }
  EXPECT_GT(reads, 1000u);
  EXPECT_EQ(torn, 0u) << why;
}

TEST(PublicationCrash, AuditRecordsCommittedBeforeAKillSurvive) {
  const std::string db = "/tmp/sluicetest-auditkill-" + std::to_string(getpid()) + ".db";
  for (const char *s : {"", "-wal", "-shm"}) std::filesystem::remove(db + s);
  test::SharedRecorder committed(1 << 16);  // ids the writer saw committed
  for (int round = 0; round < 5; ++round) {
    const pid_t child = fork();
    if (child == 0) {
      std::string err;
      auto store = policy_loop::AuditStore::open(db, err);
      if (!store) _exit(2);
      for (int i = 0;; ++i) {
        policy_loop::AuditRecord r;
        r.event = "published";
        r.actor = "rules";
        r.tier = "t";
        r.reason = "round " + std::to_string(round) + " record " + std::to_string(i);
        if (!store->append(r, err)) _exit(3);
        committed.add(uint32_t(round), uint32_t(i), 0);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + round * 37));
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
  }
  std::string err;
  auto store = policy_loop::AuditStore::open(db, err);
  ASSERT_TRUE(store) << err;
  std::set<std::string> have;
  for (const auto &r : store->since(0, 1 << 20)) have.insert(r.reason);
  const auto recs = committed.snapshot();
  ASSERT_GT(recs.size(), 10u);
  size_t missing = 0;
  for (const auto &c : recs)
    missing += !have.count("round " + std::to_string(c.key) + " record " + std::to_string(c.cost));
  EXPECT_EQ(missing, 0u) << "of " << recs.size() << " committed records";
  for (const char *s : {"", "-wal", "-shm"}) std::filesystem::remove(db + s);
}
