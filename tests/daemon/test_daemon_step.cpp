// sluiced's work loop run in-process, step by step (no sleeps inside the daemon),
// and least privilege on the segments it creates (invariant 6).
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include "../support/fixture.hpp"
#include "advice_turn.hpp"
#include "commands.hpp"
#include "daemon.hpp"
#include "policy_loop/trail_clock.hpp"
#include "metrics_page.hpp"
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
    for (const char *suffix : {".db", ".db-wal", ".db-shm"})
      std::remove(("/tmp/sluicetest-state/" + name + suffix).c_str());
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

namespace {

// Publishes `limit` for tier 0 (enterprise: baseline 15, ceiling 120 in the built-in
// policy) as the loop would, with its audit record, or without one.
void publish_enterprise(daemon::Daemon &d, uint32_t limit, bool recorded) {
  std::vector<core::TierLimits> rows;
  for (uint32_t i = 0; i < d.owner().tier_count(); ++i) {
    core::TierLimits t;
    core::read_tier(d.owner().policy(), i, t);
    rows.push_back(t);
  }
  rows[0].limit = limit;
  if (recorded) {
    policy_loop::AuditRecord r{0, 0, "published", "rules", "enterprise", rows[0].limit, limit, "test", 1.0, "", 0};
    std::string err;
    ASSERT_TRUE(d.engine().store().append(r, err)) << err;
  }
  d.owner().publish(rows);
}

uint32_t enterprise_limit(daemon::Daemon &d) {
  core::TierLimits now;
  core::read_tier(d.owner().policy(), 0, now);
  return now.limit;
}

std::unique_ptr<daemon::Daemon> restart(DaemonGuard &g, std::string &err,
                                        std::optional<std::string> policy = std::nullopt, bool reset = false) {
  g.d.reset();  // a clean stop; the pair stays
  daemon::Options o;
  o.segment = g.name;
  o.state_dir = "/tmp/sluicetest-state";
  o.policy_path = policy;
  o.reset = reset;
  return daemon::Daemon::start(o, err);
}

// What a kill -9 between an approval's commit and its publication leaves: the
// trail's record for a generation the table never reached.
void commit_unpublished_approval(daemon::Daemon &d, uint32_t limit, uint64_t generation, int64_t unix_ms = 0) {
  policy_loop::AuditRecord r{0, unix_ms, "approved", "human:0", "enterprise", 15, limit, "approved: test", 0.9,
                             "0123abcd", generation};
  std::string err;
  ASSERT_TRUE(d.engine().store().append(r, err)) << err;
}

bool recorded(daemon::Daemon &d, const std::string &event, int64_t new_limit) {
  for (const auto &r : d.engine().store().since(0))
    if (r.event == event && r.tier == "enterprise" && r.new_limit == new_limit) return true;
  return false;
}

}  // namespace

TEST(DaemonStep, ARestartKeepsTheLimitTheLoopPublishedAndSaysSoInTheAudit) {
  DaemonGuard g;
  publish_enterprise(*g.d, 40, true);
  std::string err;
  g.d = restart(g, err);
  ASSERT_TRUE(g.d) << err;
  EXPECT_EQ(enterprise_limit(*g.d), 40u) << "a restart put enterprise back to the policy file's limit";
  EXPECT_EQ(g.d->engine().limits()[0], 40u) << "the loop starts from what clients see";
  EXPECT_TRUE(recorded(*g.d, "kept", 40)) << "the trail does not say why the table differs from the policy file";
}

TEST(DaemonStep, AnApprovalCommittedButNeverPublishedIsPublishedByTheRestart) {
  DaemonGuard g;
  const uint64_t gen = g.d->owner().policy().generation.load();
  commit_unpublished_approval(*g.d, 60, gen + 1);  // then sluiced died before publishing
  std::string err;
  g.d = restart(g, err);
  ASSERT_TRUE(g.d) << err;
  EXPECT_EQ(enterprise_limit(*g.d), 60u) << "the human's committed decision was lost on restart";
  EXPECT_TRUE(recorded(*g.d, "kept", 60));
}

TEST(DaemonStep, AnApprovalTheTableAlreadyMovedPastIsNotRepublished) {
  DaemonGuard g;
  const uint64_t gen = g.d->owner().policy().generation.load();
  commit_unpublished_approval(*g.d, 60, gen);  // names a generation the table reached: not lost, replaced
  std::string err;
  g.d = restart(g, err);
  ASSERT_TRUE(g.d) << err;
  EXPECT_EQ(enterprise_limit(*g.d), 15u);
  EXPECT_TRUE(recorded(*g.d, "start", 15));
}

TEST(DaemonStep, AResetPairIsNotGivenTheOldPairsUnpublishedApproval) {
  // A --reset restarts the generations; the trail records the new table, so an
  // old pair's record for a high generation cannot speak for it on a later start.
  DaemonGuard g;
  commit_unpublished_approval(*g.d, 60, 1'000'000);
  std::string err;
  g.d = restart(g, err, std::nullopt, true);
  ASSERT_TRUE(g.d) << err;
  ASSERT_TRUE(g.d->created());
  EXPECT_TRUE(recorded(*g.d, "start", 15)) << "the created table is in the trail";
  g.d = restart(g, err);
  ASSERT_TRUE(g.d) << err;
  EXPECT_EQ(enterprise_limit(*g.d), 15u) << "an old pair's approval was published on this pair";
}

TEST(DaemonStep, AnEarlierPairsRecordIsNotPublishedOnThisOne) {
  // A pair made by an older build has no 'start' rows: the newest record may be an
  // earlier pair's (before a reboot), with a generation above this pair's. It is
  // older than this pair, so it cannot be this pair's unpublished decision (a
  // review republished pro 8 -> 30 that way, past the approval ratio).
  DaemonGuard g;
  const uint64_t gen = g.d->owner().policy().generation.load();
  commit_unpublished_approval(*g.d, 60, gen + 50, policy_loop::unix_ms_now() - 3'600'000);
  std::string err;
  g.d = restart(g, err);
  ASSERT_TRUE(g.d) << err;
  EXPECT_EQ(enterprise_limit(*g.d), 15u) << "an earlier pair's approval was published on this pair";
}

TEST(DaemonStep, ARestartReplacesALimitNoRecordSaysTheLoopChose) {
  // An old policy file's baseline, or a limit written by something else: the new
  // file's limit wins, and the change is recorded before it is published.
  DaemonGuard g;
  publish_enterprise(*g.d, 40, false);
  std::string err;
  g.d = restart(g, err);
  ASSERT_TRUE(g.d) << err;
  EXPECT_EQ(enterprise_limit(*g.d), 15u);
  EXPECT_TRUE(recorded(*g.d, "start", 15));
}

TEST(DaemonStep, AStartThatFailsLeavesTheRunningTableAsItWas) {
  DaemonGuard g;
  publish_enterprise(*g.d, 40, true);
  const uint64_t gen = g.d->owner().policy().generation.load();
  const std::string path = "/tmp/sluicetest-state/" + g.name + "-bad.json";
  {
    std::ofstream f(path);
    f << R"({"tiers": [{"name": "enterprise", "limit": 100, "window_ms": 60000, "max_limit": 120, "adaptive": false},
                       {"name": "pro", "limit": 8, "window_ms": 1000, "max_limit": 40},
                       {"name": "free", "limit": 3, "window_ms": 1000, "max_limit": 9}],
           "advisor": {"kind": "ollama", "url": "http://", "model": "m"}})";
  }
  std::string err;
  EXPECT_FALSE(restart(g, err, path));
  EXPECT_NE(err.find("advisor"), std::string::npos) << err;
  std::remove(path.c_str());
  std::unique_ptr<core::Ledger> l;
  std::string det;
  ASSERT_EQ(core::Ledger::open(g.name, l, det), core::Status::ok) << det;
  core::Decision d;
  ASSERT_EQ(l->peek("enterprise", "k", 1, 1, d, det), core::Status::ok) << det;
  EXPECT_EQ(d.limit, 40u) << "a refused policy's limit reached the clients";
  EXPECT_EQ(d.window_ns, 1'000'000'000);
  EXPECT_EQ(d.policy_generation, gen);
}

TEST(DaemonStep, AStartThatFailsAfterAttachingPutsTheTableBack) {
  // A restart with the built-in policy would publish enterprise's baseline 15
  // over an unrecorded 40; the /metrics port is taken, so the start fails, and the
  // running table must be as it was (the port is now bound before the segment is
  // attached; a failure after attaching puts the old table back).
  DaemonGuard g;
  publish_enterprise(*g.d, 40, false);
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
  g.d.reset();
  daemon::Options o;
  o.segment = g.name;
  o.state_dir = "/tmp/sluicetest-state";
  o.metrics_addr = metrics::ListenAddress{"127.0.0.1", ntohs(a.sin_port)};
  std::string err;
  EXPECT_FALSE(daemon::Daemon::start(o, err));
  ::close(fd);
  std::unique_ptr<core::Ledger> l;
  std::string det;
  ASSERT_EQ(core::Ledger::open(g.name, l, det), core::Status::ok) << det;
  core::Decision d;
  ASSERT_EQ(l->peek("enterprise", "k", 1, 1, d, det), core::Status::ok) << det;
  EXPECT_EQ(d.limit, 40u) << "the failed start left its own table published: " << err;
}

TEST(DaemonStep, ASegmentLargerThanDevShmIsRefusedBeforeItIsMade) {
  // tmpfs allocates on first touch: ~950 GB would start fine and SIGBUS once full.
  const std::string name = test::unique_segment("huge");
  const std::string path = "/tmp/sluicetest-state/" + name + ".json";
  std::filesystem::create_directories("/tmp/sluicetest-state");
  {
    std::ofstream f(path);
    f << R"({"segment": {"max_keys": 1000000, "max_key_bytes": 64},
           "tiers": [{"name": "t", "limit": 10, "window_ms": 1000, "max_limit": 100000}]})";
  }
  daemon::Options o;
  o.segment = name;
  o.state_dir = "/tmp/sluicetest-state";
  o.policy_path = path;
  std::string err;
  EXPECT_FALSE(daemon::Daemon::start(o, err));
  std::remove(path.c_str());
  std::remove(("/dev/shm/" + name + ".lock").c_str());
  EXPECT_NE(err.find("/dev/shm has"), std::string::npos) << err;
  EXPECT_NE(err.find("max_keys"), std::string::npos) << err;
  EXPECT_NE(access(("/dev/shm/" + core::state_segment_name(name)).c_str(), F_OK), 0) << "the segment was made";
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

namespace {

advisor::AdvisorResult answer_about(int64_t snapshot_ns, uint32_t limit) {
  advisor::AdvisorResult r;
  r.outcome = advisor::AdvisorOutcome::ok;
  r.advice = policy_loop::Advice{{limit}, 0.9, "model", {}};
  r.snapshot_ns = snapshot_ns;
  return r;
}

policy_loop::Snapshot at(int64_t now_ns, policy_loop::Surge host = policy_loop::Surge::normal) {
  policy_loop::Snapshot s;
  s.now_ns = now_ns;
  s.host_surge = host;
  return s;
}

}  // namespace

TEST(AdviceTurn, TheLastAnswerIsFollowedWhileTheNextIsOnItsWayThenDropped) {
  constexpr int64_t s1 = 1'000'000'000;
  const auto ages = daemon::AdviceAges::of(2 * s1, s1);  // 2 s timeout, 1 s ticks
  std::optional<daemon::HeldAdvice> held;
  auto t = daemon::next_advice(held, answer_about(10 * s1, 14), at(11 * s1), ages);
  ASSERT_TRUE(t.use);
  EXPECT_EQ(t.use->limits[0], 14u);
  EXPECT_TRUE(t.fallback.empty());
  t = daemon::next_advice(held, std::nullopt, at(12 * s1), ages);
  ASSERT_TRUE(t.use) << "a tick with no new answer fell back to the rules";
  EXPECT_EQ(t.use->limits[0], 14u);
  EXPECT_TRUE(t.fallback.empty()) << "waiting is not a failure";
  t = daemon::next_advice(held, std::nullopt, at(16 * s1 + 1), ages);
  EXPECT_FALSE(t.use) << "an answer older than two timeouts and two ticks is still followed";
  EXPECT_FALSE(held);
}

TEST(AdviceTurn, ARisingSurgeOrAFailureHandsTheTickToTheRules) {
  constexpr int64_t s1 = 1'000'000'000;
  const auto ages = daemon::AdviceAges::of(2 * s1, s1);
  std::optional<daemon::HeldAdvice> held;
  ASSERT_TRUE(daemon::next_advice(held, answer_about(10 * s1, 14), at(11 * s1), ages).use);
  EXPECT_FALSE(daemon::next_advice(held, std::nullopt, at(12 * s1, policy_loop::Surge::ddos), ages).use)
      << "advice taken in normal traffic was followed into a DDoS";
  ASSERT_TRUE(daemon::next_advice(held, answer_about(12 * s1, 14), at(13 * s1), ages).use);
  advisor::AdvisorResult failed;
  failed.outcome = advisor::AdvisorOutcome::timeout;
  failed.detail = "no answer in 2000 ms";
  const auto t = daemon::next_advice(held, failed, at(14 * s1), ages);
  EXPECT_FALSE(t.use);
  EXPECT_NE(t.fallback.find("timeout"), std::string::npos) << t.fallback;
  EXPECT_FALSE(held) << "the last answer outlived the model's failure";
  EXPECT_FALSE(daemon::next_advice(held, std::nullopt, at(15 * s1), ages).use);
}

TEST(AdviceTurn, FreshnessIsTheSnapshotsAgeInTime) {
  constexpr int64_t s1 = 1'000'000'000;
  const auto ages = daemon::AdviceAges::of(2 * s1, s1 / 5);  // a 2 s model, 200 ms ticks: many ticks old is fine
  std::optional<daemon::HeldAdvice> held;
  EXPECT_TRUE(daemon::next_advice(held, answer_about(10 * s1, 14), at(12 * s1), ages).use);
  const auto stale = daemon::next_advice(held, answer_about(10 * s1, 14), at(13 * s1), ages);
  EXPECT_FALSE(stale.use);
  EXPECT_NE(stale.fallback.find("stale"), std::string::npos) << stale.fallback;
  EXPECT_FALSE(daemon::next_advice(held, answer_about(14 * s1, 14), at(13 * s1), ages).use)
      << "an answer about a snapshot from the future";
}

// The default tiers with audit_retention_days 1.
void write_retention_policy(const std::string &path) {
  std::ofstream f(path);
  f << R"({"tiers": [{"name": "enterprise", "limit": 15, "window_ms": 1000, "max_limit": 120},
                     {"name": "pro", "limit": 8, "window_ms": 1000, "max_limit": 40},
                     {"name": "free", "limit": 3, "window_ms": 1000, "max_limit": 9}],
         "audit_retention_days": 1})";
}

// audit_retention_days at work: a tick deletes records past it (a batch at a
// time) and /metrics counts them; without the setting, nothing is deleted.
TEST(DaemonStep, RetentionPrunesTheTrailOnTheTickAndCountsIt) {
  DaemonGuard g;
  std::vector<policy_loop::AuditRecord> old;
  const int64_t two_days_ago = policy_loop::unix_ms_now() - 2 * 86'400'000;
  for (int i = 0; i < 1'500; ++i)
    old.push_back({0, two_days_ago + i, "held", "rules", "pro", 8, 8, "old", 1.0, "", 0});
  std::string err;
  ASSERT_TRUE(g.d->engine().store().append_all(old, err)) << err;
  auto count_old = [&] {
    size_t n = 0;
    for (const auto &r : g.d->engine().store().since(0, 100'000)) n += r.reason == "old";
    return n;
  };
  int64_t now = core::mono_ns();
  g.d->do_work(now);
  g.d->do_work(now += 2'000'000'000);
  EXPECT_EQ(count_old(), 1'500u) << "the default keeps every record";
  const std::string path = "/tmp/sluicetest-state/" + g.name + "-retention.json";
  write_retention_policy(path);
  g.d = restart(g, err, path);
  std::remove(path.c_str());
  ASSERT_TRUE(g.d) << err;
  now = core::mono_ns();
  g.d->do_work(now);
  EXPECT_EQ(count_old(), 500u) << "one tick deletes one batch";
  g.d->do_work(now += 2'000'000'000);
  EXPECT_EQ(count_old(), 0u);
  EXPECT_EQ(g.d->loop_state().audit_records_pruned, 1'500u);
  EXPECT_NE(daemon::render_metrics(daemon::status_of(g.d->owner().state(), g.d->owner().policy(),
                                                     g.d->owner().geometry(), g.name),
                                   g.d->loop_state())
                .find("sluice_audit_records_pruned_total 1500"),
            std::string::npos);
  EXPECT_TRUE(g.d->engine().store().last_limit("enterprise")) << "the limit in force keeps its record";
}

// The system clock stepped two days ahead under a running sluiced: retention must
// not take every record of the last day for two days old (it deleted the trail).
// Records that were old before the step still go.
std::atomic<int64_t> g_wall_step_ms{0}, g_boot_step_ms{0};
int64_t stepped_wall_ms() { return policy_loop::unix_ms_now() + g_wall_step_ms.load(); }
int64_t stepped_boot_ms() { return policy_loop::boot_ms_now() + g_boot_step_ms.load(); }

// Restarts g's daemon on clocks the test steps (g_wall_step_ms, g_boot_step_ms: 0 now).
daemon::Options restart_on_stepped_clocks(DaemonGuard &g, std::optional<std::string> policy = std::nullopt) {
  g.d.reset();
  daemon::Options o;
  o.segment = g.name;
  o.state_dir = "/tmp/sluicetest-state";
  o.policy_path = policy;
  o.wall_clock_ms = stepped_wall_ms;
  o.boot_clock_ms = stepped_boot_ms;
  g_wall_step_ms = 0;
  g_boot_step_ms = 0;
  std::string err;
  g.d = daemon::Daemon::start(o, err);
  EXPECT_TRUE(g.d) << err;
  return o;
}

TEST(DaemonStep, AForwardStepOfTheWallClockDeletesNoRecordEarly) {
  DaemonGuard g;
  const std::string path = "/tmp/sluicetest-state/" + g.name + "-retention-step.json";
  write_retention_policy(path);
  const daemon::Options o = restart_on_stepped_clocks(g, path);
  ASSERT_TRUE(g.d);
  std::string err;
  const int64_t now_ms = policy_loop::unix_ms_now();
  std::vector<policy_loop::AuditRecord> rows;
  for (int i = 0; i < 20; ++i)
    rows.push_back({0, now_ms - 3'600'000 + i, "held", "rules", "pro", 8, 8, "an hour old", 1.0, "", 0});
  for (int i = 0; i < 5; ++i)
    rows.push_back({0, now_ms - 3 * 86'400'000 + i, "held", "rules", "pro", 8, 8, "three days old", 1.0, "", 0});
  ASSERT_TRUE(g.d->engine().store().append_all(rows, err)) << err;
  auto count = [&](const std::string &reason) {
    size_t n = 0;
    for (const auto &r : g.d->engine().store().since(0, 100'000)) n += r.reason == reason;
    return n;
  };
  int64_t now = core::mono_ns();
  g.d->do_work(now);
  ASSERT_EQ(count("three days old"), 0u) << "retention is at work";
  ASSERT_EQ(count("an hour old"), 20u);
  g_wall_step_ms = 2 * 86'400'000;
  g.d->do_work(now += 2'000'000'000);
  g.d->do_work(now += 2'000'000'000);
  EXPECT_EQ(count("an hour old"), 20u) << "a step of the wall clock aged the trail by two days";
  // A restart with the clock still stepped: the trail's anchor is in the store.
  g.d.reset();
  g.d = daemon::Daemon::start(o, err);
  ASSERT_TRUE(g.d) << err;
  g.d->do_work(now = core::mono_ns());
  EXPECT_EQ(count("an hour old"), 20u) << "the restart took the stepped clock for the trail's";
  g_wall_step_ms = 0;
  std::remove(path.c_str());
}

// The system clock stepped under sluiced with a question open: it neither expires
// at once (a day ahead) nor stays open past its ttl (a day back). Its ttl runs on
// the boot clock, which does not step.
TEST(DaemonStep, AStepOfTheWallClockNeitherExpiresNorProlongsAnOpenQuestion) {
  DaemonGuard g;
  restart_on_stepped_clocks(g);
  ASSERT_TRUE(g.d);
  int64_t now = core::mono_ns();
  auto tick = [&] { g.d->do_work(now += 1'000'000'000); };
  tick();
  for (int i = 0; i < 5 && g.d->loop_state().pending.empty(); ++i) {
    g.d->owner().state().counters[0][0].admitted += 15;  // enterprise at its limit, denied 30 times as much
    g.d->owner().state().counters[0][0].denied_window += 500;
    tick();
  }
  ASSERT_EQ(g.d->loop_state().pending.size(), 1u) << "no question asked";
  const std::string id = g.d->loop_state().pending[0].id;
  g_wall_step_ms = 2 * 86'400'000;
  tick();
  ASSERT_EQ(g.d->loop_state().pending.size(), 1u) << "a forward step of the system clock expired the question";
  EXPECT_EQ(g.d->loop_state().pending[0].id, id);
  g_wall_step_ms = -2 * 86'400'000;
  g_boot_step_ms = 3'600'000 + 1'000;  // the default approval_ttl_s, and a second
  tick();
  EXPECT_TRUE(g.d->loop_state().pending.empty()) << "a backward step kept the question open past its ttl";
  g_wall_step_ms = 0;
  g_boot_step_ms = 0;
}

// `sluicectl audit --since` counts back on the trail's clock, and the trail keeps
// commit order through a backward step of the system clock; each record shows the
// system clock's time, and the trail's where a step set them apart.
TEST(DaemonStep, TheAuditTrailKeepsItsOrderAndItsSinceThroughAStepBack) {
  DaemonGuard g;
  restart_on_stepped_clocks(g);
  ASSERT_TRUE(g.d);
  std::string err;
  auto &store = g.d->engine().store();
  ASSERT_TRUE(store.append({0, 0, "held", "rules", "pro", 8, 8, "before the step", 1.0, "", 0}, err)) << err;
  g_wall_step_ms = -86'400'000;  // a day back
  ASSERT_TRUE(store.append({0, 0, "held", "rules", "pro", 8, 8, "after the step", 1.0, "", 0}, err)) << err;
  daemon::Peer me;
  me.uid = getuid();
  me.gid = getgid();
  const std::string json = daemon::handle_command(g.d->engine(), "audit-ago 60000 json", me);
  const size_t before = json.find("before the step"), after = json.find("after the step");
  ASSERT_NE(before, std::string::npos) << json;
  ASSERT_NE(after, std::string::npos) << "--since 1m lost what the step stamped a day back: " << json;
  EXPECT_LT(before, after) << "the step reordered the trail";
  EXPECT_NE(json.find("\"wall_ms\":"), std::string::npos) << json;
  const std::string text = daemon::handle_command(g.d->engine(), "audit 0 text", me);
  EXPECT_NE(text.find(" (trail "), std::string::npos) << "the stepped record shows one time only: " << text;
  g_wall_step_ms = 0;
}

// The heartbeat word is client-writable: one forged far in the past overflowed
// the age (undefined; it came out negative, "alive"), one in the future was alive too.
TEST(DaemonStep, AForgedHeartbeatNeverReadsAsALiveDaemon) {
  DaemonGuard g;
  auto &h = g.d->owner().state();
  auto status = [&] { return daemon::status_of(h, g.d->owner().policy(), g.d->owner().geometry(), g.name); };
  g.d->do_work(core::mono_ns());
  EXPECT_TRUE(status().daemon_alive);
  for (const int64_t forged : {INT64_MIN, core::mono_ns() + 3'600'000'000'000}) {
    h.heartbeat_ns.store(forged);
    const auto st = status();
    EXPECT_FALSE(st.daemon_alive) << forged;
    EXPECT_EQ(st.heartbeat_age_ns, INT64_MAX) << forged;
  }
}
