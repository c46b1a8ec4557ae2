// sluiced's work loop run in-process, step by step (no sleeps inside the daemon),
// and least privilege on the segments it creates (invariant 6).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <thread>

#include "../support/fixture.hpp"
#include "daemon.hpp"
#include "sluice/core/clock.hpp"
#include "sluice/core/tier_table.hpp"
#include "status.hpp"

using namespace sluice;

namespace {
struct DaemonGuard {
  std::string name = test::unique_segment("step");
  std::unique_ptr<daemon::Daemon> d;
  DaemonGuard() {
    daemon::Options o;
    o.segment = name;
    o.reset = true;
    o.state_dir = "/tmp/sluicetest-state";
    std::string err;
    d = daemon::Daemon::start(o, err);
    EXPECT_TRUE(d) << err;
  }
  ~DaemonGuard() {
    d.reset();
    core::Owner::remove(name);
    std::remove(("/dev/shm/" + name + ".lock").c_str());
  }
};
}  // namespace

TEST(DaemonStep, HeartbeatAndTickAreDrivenByDoWork) {
  DaemonGuard g;
  auto &h = g.d->owner().state();
  const int64_t before = h.heartbeat_ns.load();
  const int64_t now = core::mono_ns() + 5;
  const int64_t next = g.d->do_work(now);
  EXPECT_GT(h.heartbeat_ns.load(), before);
  EXPECT_GT(next, now);
  EXPECT_LE(next, now + 100'000'000) << "next heartbeat within 100 ms";
  g.d->stop();
  EXPECT_EQ(h.heartbeat_ns.load(), core::kHeartbeatStopped) << "a clean stop is distinct from a hang";
}

TEST(DaemonStep, OneDaemonPerSegmentInProcessToo) {
  DaemonGuard g;
  daemon::Options o;
  o.segment = g.name;
  o.state_dir = "/tmp/sluicetest-state";
  std::string err;
  EXPECT_FALSE(daemon::Daemon::start(o, err));
  EXPECT_NE(err.find("already owns"), std::string::npos) << err;
}

TEST(DaemonStep, StatusReportsTiersKeysAndCounters) {
  DaemonGuard g;
  auto l = std::unique_ptr<core::Ledger>();
  std::string det;
  ASSERT_EQ(core::Ledger::open(g.name, l, det), core::Status::ok);
  core::Decision d;
  for (int i = 0; i < 5; ++i) ASSERT_EQ(l->acquire("free", "ip-1", 4, 1, d, det), core::Status::ok);
  daemon::Status st;
  ASSERT_TRUE(daemon::read_status(g.name, st, det)) << det;
  ASSERT_EQ(st.tiers.size(), 3u);
  EXPECT_EQ(st.tiers[2].name, "free");
  EXPECT_EQ(st.tiers[2].keys, 1u);
  EXPECT_EQ(st.tiers[2].counters.admitted, 3u);
  EXPECT_EQ(st.tiers[2].counters.denied_window, 2u);
  EXPECT_TRUE(st.daemon_alive);
  const std::string text = daemon::render_status_text(st);
  EXPECT_NE(text.find("free"), std::string::npos);
  EXPECT_NE(daemon::render_status_json(st).find("\"denied_window\":2"), std::string::npos);
}

TEST(DaemonStep, ARestartKeepsThePublishedLimitsAndSaysSoInTheAudit) {
  DaemonGuard g;
  // What the loop or an approval published before the restart (enterprise is tier 0,
  // baseline 15, ceiling 120 in the built-in policy).
  std::vector<core::TierLimits> rows;
  for (uint32_t i = 0; i < g.d->owner().tier_count(); ++i) {
    core::TierLimits t;
    core::read_tier(g.d->owner().policy(), i, t);
    rows.push_back(t);
  }
  rows[0].limit = 40;
  g.d->owner().publish(rows);
  g.d.reset();  // a clean stop; the pair stays
  daemon::Options o;
  o.segment = g.name;
  o.state_dir = "/tmp/sluicetest-state";
  std::string err;
  g.d = daemon::Daemon::start(o, err);
  ASSERT_TRUE(g.d) << err;
  core::TierLimits now;
  core::read_tier(g.d->owner().policy(), 0, now);
  EXPECT_EQ(now.limit, 40u) << "a restart put enterprise back to the policy file's limit";
  EXPECT_EQ(g.d->engine().limits()[0], 40u) << "the loop starts from what clients see";
  bool recorded = false;
  for (const auto &r : g.d->engine().store().since(0))
    recorded |= r.event == "kept" && r.tier == "enterprise" && r.new_limit == 40;
  EXPECT_TRUE(recorded) << "the trail does not say why the table differs from the policy file";
}

TEST(LeastPrivilege, SegmentsAreGroupOnlyAndThePolicyIsReadOnlyForClients) {
  DaemonGuard g;
  struct stat s {};
  ASSERT_EQ(stat(("/dev/shm/" + g.name + ".state").c_str(), &s), 0);
  EXPECT_EQ(s.st_mode & 0777, 0660u) << "never world-accessible";
  ASSERT_EQ(stat(("/dev/shm/" + g.name + ".policy").c_str(), &s), 0);
  EXPECT_EQ(s.st_mode & 0777, 0640u) << "clients may only read the tier tables";
  // A client's view of the policy segment is mapped read-only: a write faults.
  const pid_t p = fork();
  if (p == 0) {
    std::unique_ptr<core::Ledger> l;
    std::string det;
    if (core::Ledger::open(g.name, l, det) != core::Status::ok) _exit(2);
    auto &policy = const_cast<core::PolicyHeader &>(l->policy());
    policy.generation.store(12345);
    _exit(0);
  }
  int st = 0;
  waitpid(p, &st, 0);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV) << "writing the policy from a client must fault";
}
