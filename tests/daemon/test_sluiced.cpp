// sluiced as a real process: start, lock, bad policy, SIGTERM, kill -9 under load
// and restart (invariant 4), --reset, and sluicectl status.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include "../support/fixture.hpp"
#include "sluice.h"
#include "sluice/core/clock.hpp"
#include "sluice/core/tsc_clock.hpp"

extern char **environ;

using namespace sluice;

namespace {

struct Proc {
  pid_t pid = -1;
  std::string out_path;
  std::string output() const {
    std::ifstream f(out_path);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
};

// Runs args[0] with stdout and stderr to a file; as `as_uid` (root only) if given.
Proc spawn(const std::vector<std::string> &args, std::optional<uid_t> as_uid = {}) {
  static int n = 0;
  Proc p;
  p.out_path = "/tmp/sluicetest-out-" + std::to_string(getpid()) + "-" + std::to_string(n++);
  std::vector<char *> argv;
  for (const auto &a : args) argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  if (as_uid) {
    p.pid = fork();
    if (p.pid == 0) {
      const int fd = ::open(p.out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0 || setgid(*as_uid) != 0 || setuid(*as_uid) != 0) _exit(127);
      execve(argv[0], argv.data(), environ);
      _exit(127);
    }
    return p;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, p.out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  EXPECT_EQ(posix_spawn(&p.pid, argv[0], &fa, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  return p;
}

int wait_exit(const Proc &p) {
  int st = 0;
  waitpid(p.pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// Ready means this daemon said so (an old segment may still be open-able).
bool wait_ready(const Proc &p, const std::string &seg, int ms = 5000) {
  for (int i = 0; i < ms / 10; ++i) {
    if (p.output().find("ready:") == std::string::npos) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    sluice_client *c = nullptr;
    if (sluice_open(seg.c_str(), &c) == SLUICE_OK) {
      sluice_close(c);
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

struct Segment {
  std::string name = test::unique_segment("d");
  ~Segment() {
    core::Owner::remove(name);
    std::remove(("/dev/shm/" + name + ".lock").c_str());
  }
};

std::string write_policy(const std::string &text) {
  static int n = 0;
  const std::string path = "/tmp/sluicetest-policy-" + std::to_string(getpid()) + "-" + std::to_string(n++) + ".json";
  std::ofstream(path) << text;
  return path;
}

const char *kPolicy = R"({"segment": {"max_keys": 1000, "max_key_bytes": 32},
  "tiers": [{"name": "gold", "limit": 5, "window_ms": 200, "max_limit": 10, "revenue_per_request": 0.2},
            {"name": "free", "limit": 2, "window_ms": 200, "max_limit": 4, "revenue_per_request": 0.01}]})";

// One unit of `tier` for `key` through a handle of its own: the first failing status.
int acquire_once(const std::string &seg, const char *tier, const char *key) {
  sluice_client *c = nullptr;
  if (const int rc = sluice_open(seg.c_str(), &c); rc != SLUICE_OK) return rc;
  sluice_decision dec{};
  dec.size = sizeof dec;
  const int rc = sluice_acquire(c, tier, key, std::strlen(key), 1, &dec);
  sluice_close(c);
  return rc;
}

// The daemons these tests start keep their audit stores out of /var/lib.
const int kStateDir = setenv("SLUICE_STATE_DIR", "/tmp/sluicetest-state", 1);

}  // namespace

TEST(Sluiced, StartsServesAndStopsCleanlyOnSigterm) {
  Segment seg;
  Proc d = spawn({SLUICED_PATH, "--segment", seg.name, "--reset"});
  ASSERT_TRUE(wait_ready(d, seg.name)) << d.output();
  sluice_client *c = nullptr;
  ASSERT_EQ(sluice_open(seg.name.c_str(), &c), SLUICE_OK);
  sluice_decision dec{};
  dec.size = sizeof dec;
  ASSERT_EQ(sluice_acquire(c, "enterprise", "acme", 4, 1, &dec), SLUICE_OK);
  EXPECT_EQ(dec.allowed, 1u);
  EXPECT_EQ(dec.limit, 15u) << "built-in default: enterprise 15 per second";
  ASSERT_EQ(sluice_acquire(c, "pro", "p", 1, 1, &dec), SLUICE_OK);
  EXPECT_EQ(dec.limit, 8u);
  ASSERT_EQ(sluice_acquire(c, "free", "f", 1, 1, &dec), SLUICE_OK);
  EXPECT_EQ(dec.limit, 3u);
  EXPECT_EQ(sluice_acquire(c, "gold", "f", 1, 1, &dec), SLUICE_ETIER);
  kill(d.pid, SIGTERM);
  EXPECT_EQ(wait_exit(d), 0) << d.output();
  // The segment outlives the daemon; clients keep deciding; the heartbeat says "stopped".
  ASSERT_EQ(sluice_acquire(c, "enterprise", "acme", 4, 1, &dec), SLUICE_OK);
  sluice_close(c);
  Proc ctl = spawn({SLUICECTL_PATH, "--segment", seg.name, "status"});
  EXPECT_EQ(wait_exit(ctl), 3) << "read whole, but the daemon is not running (LSB status 3)";
  EXPECT_NE(ctl.output().find("daemon NOT running (stopped)"), std::string::npos) << ctl.output();
  EXPECT_NE(ctl.output().find("stopped cleanly"), std::string::npos) << ctl.output();
  EXPECT_NE(ctl.output().find("enterprise"), std::string::npos);
}

TEST(Sluiced, OneDaemonPerSegment) {
  Segment seg;
  Proc a = spawn({SLUICED_PATH, "--segment", seg.name, "--reset"});
  ASSERT_TRUE(wait_ready(a, seg.name));
  Proc b = spawn({SLUICED_PATH, "--segment", seg.name});
  EXPECT_EQ(wait_exit(b), 75) << "EX_TEMPFAIL: a supervisor may retry (the other may be on its way out)";
  EXPECT_NE(b.output().find("already owns"), std::string::npos) << b.output();
  kill(a.pid, SIGTERM);
  EXPECT_EQ(wait_exit(a), 0);
}

TEST(Sluiced, BadPolicyIsRefusedNamingTheField) {
  Segment seg;
  const std::string bad = write_policy(R"({"tiers": [{"name": "a", "limit": 5, "window_ms": 1000, "max_limit": 5, "burst": 3}]})");
  Proc d = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", bad});
  EXPECT_EQ(wait_exit(d), 78) << "EX_CONFIG: a retry fails the same way";
  EXPECT_NE(d.output().find("burst"), std::string::npos) << d.output();
  Proc missing = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", "/nonexistent/policy.json"});
  EXPECT_EQ(wait_exit(missing), 78);
  EXPECT_NE(missing.output().find("/nonexistent/policy.json"), std::string::npos) << missing.output();
  Proc flag = spawn({SLUICED_PATH, "--bogus"});
  EXPECT_EQ(wait_exit(flag), 2);
  std::remove(bad.c_str());
}

TEST(Sluiced, KillNineUnderLoadAndRestartKeepsEverything) {
  Segment seg;
  const std::string policy = write_policy(kPolicy);
  Proc d = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy, "--reset"});
  ASSERT_TRUE(wait_ready(d, seg.name)) << d.output();
  test::SharedRecorder rec(1 << 20);
  // Four client processes for 3 s; sluiced is killed -9 at 1 s and restarted.
  std::vector<pid_t> clients;
  for (int i = 0; i < 4; ++i) {
    const pid_t p = fork();
    if (p == 0) {
      std::unique_ptr<core::Ledger> l;
      std::string det;
      if (core::Ledger::open(seg.name, l, det) != core::Status::ok) _exit(2);
      core::Decision dec;
      const int64_t end = core::mono_ns() + 3'000'000'000LL;
      for (uint32_t n = 0; core::mono_ns() < end; ++n) {
        const uint32_t key = n % 8;
        const std::string k = "cust" + std::to_string(key);
        const core::Status s = l->acquire(key % 2 ? "gold" : "free", k.data(), k.size(), 1, dec, det);
        if (s != core::Status::ok) rec.errors().fetch_add(1);
        else if (dec.allowed) rec.add(key, 1, dec.admitted_at_ns);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      _exit(0);
    }
    clients.push_back(p);
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));
  kill(d.pid, SIGKILL);
  EXPECT_EQ(wait_exit(d), 128 + SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Proc d2 = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy});
  for (pid_t p : clients) {
    int st = 0;
    waitpid(p, &st, 0);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  EXPECT_EQ(rec.errors().load(), 0u) << "clients never saw an error across the restart";
  std::unique_ptr<core::Ledger> l;
  std::string det;
  ASSERT_EQ(core::Ledger::open(seg.name, l, det), core::Status::ok);
  const auto gold = core::sum_counters(l->state(), 0), free = core::sum_counters(l->state(), 1);
  EXPECT_EQ(gold.admitted + free.admitted, rec.count().load()) << "no counter lost across kill -9";
  EXPECT_EQ(l->state().daemon_starts.load(), 2u);
  // Exact per key and tier across the restart (gold keys are odd, free keys even).
  std::vector<test::Record> g, f;
  for (const auto &r : rec.snapshot()) (r.key % 2 ? g : f).push_back(r);
  std::string worst;
  EXPECT_EQ(test::window_violations(g, 5, 200'000'000, &worst), 0u) << worst;
  EXPECT_EQ(test::window_violations(f, 2, 200'000'000, &worst), 0u) << worst;
  kill(d2.pid, SIGTERM);
  EXPECT_EQ(wait_exit(d2), 0) << d2.output();
  EXPECT_NE(d2.output().find("re-attached"), std::string::npos) << d2.output();
  std::remove(policy.c_str());
}

TEST(Sluiced, ResetWipesAndAMismatchedPolicyIsRefused) {
  Segment seg;
  const std::string policy = write_policy(kPolicy);
  Proc d = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy, "--reset"});
  ASSERT_TRUE(wait_ready(d, seg.name));
  ASSERT_EQ(acquire_once(seg.name, "gold", "x"), SLUICE_OK);
  kill(d.pid, SIGTERM);
  ASSERT_EQ(wait_exit(d), 0);
  // Another max_limit changes ring sizes: re-attaching would be unsafe.
  std::string other = kPolicy;
  other.replace(other.find("\"max_limit\": 10"), 15, "\"max_limit\": 20");
  const std::string policy2 = write_policy(other);
  Proc refused = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy2});
  EXPECT_EQ(wait_exit(refused), 78) << "the policy and the pair disagree: an operator's call";
  EXPECT_NE(refused.output().find("--reset"), std::string::npos) << refused.output();
  Proc reset = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy2, "--reset"});
  ASSERT_TRUE(wait_ready(reset, seg.name));
  Proc ctl = spawn({SLUICECTL_PATH, "--segment", seg.name, "status", "--json"});
  EXPECT_EQ(wait_exit(ctl), 0);
  EXPECT_NE(ctl.output().find("\"admitted\":0"), std::string::npos) << ctl.output();
  EXPECT_NE(ctl.output().find("\"max_limit\":20"), std::string::npos) << ctl.output();
  // The clock clients read, and how far it is from CLOCK_MONOTONIC.
  const bool tsc = sluice::core::tsc_usable();
  EXPECT_NE(ctl.output().find(tsc ? "\"clock\":\"tsc\"" : "\"clock\":\"clock_gettime\""), std::string::npos)
      << ctl.output();
  const size_t at = ctl.output().find("\"clock_offset_ns\":");
  ASSERT_NE(at, std::string::npos) << ctl.output();
  EXPECT_LT(std::llabs(std::stoll(ctl.output().substr(at + 18))), 1'000'000) << ctl.output();
  Proc text = spawn({SLUICECTL_PATH, "--segment", seg.name, "status"});
  EXPECT_EQ(wait_exit(text), 0);
  EXPECT_NE(text.output().find(tsc ? "clock tsc (" : "clock clock_gettime"), std::string::npos) << text.output();
  // Whether the segment can be on huge pages: /dev/shm's huge= option, as mounted.
  const std::string huge = sluice::core::shm_huge_mode();
  ASSERT_FALSE(huge.empty());
  EXPECT_NE(ctl.output().find("\"shm_huge\":\"" + huge + "\""), std::string::npos) << ctl.output();
  EXPECT_NE(text.output().find("/dev/shm huge=" + huge), std::string::npos) << text.output();
  kill(reset.pid, SIGTERM);
  EXPECT_EQ(wait_exit(reset), 0);
  // sluiced says at start whether the segment can be on huge pages.
  EXPECT_NE(reset.output().find("segment pages: "), std::string::npos) << reset.output();
  EXPECT_NE(reset.output().find("(/dev/shm huge=" + huge), std::string::npos) << reset.output();
  std::remove(policy.c_str());
  std::remove(policy2.c_str());
}

// A worker keeps its handle while sluiced is restarted with --reset (say, for a new
// tier). Its admissions must land in the new segment, where every other worker
// counts, not in the removed one.
TEST(Sluiced, AClientOpenAcrossAResetCountsInTheNewSegment) {
  Segment seg;
  const std::string policy = write_policy(R"({"segment": {"max_keys": 100, "max_key_bytes": 16},
    "tiers": [{"name": "gold", "limit": 2, "window_ms": 60000, "max_limit": 4, "revenue_per_request": 0.2,
               "adaptive": false}]})");
  auto allowed = [](sluice_client *c) {
    sluice_decision d{};
    d.size = sizeof d;
    d.allowed = 7;
    return sluice_acquire(c, "gold", "x", 1, 1, &d) == SLUICE_OK ? int(d.allowed) : -1;
  };
  Proc d = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy, "--reset"});
  ASSERT_TRUE(wait_ready(d, seg.name)) << d.output();
  sluice_client *worker = nullptr;
  ASSERT_EQ(sluice_open(seg.name.c_str(), &worker), SLUICE_OK);
  EXPECT_EQ(allowed(worker), 1);
  EXPECT_EQ(allowed(worker), 1);
  EXPECT_EQ(allowed(worker), 0);
  kill(d.pid, SIGTERM);
  ASSERT_EQ(wait_exit(d), 0);
  Proc again = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy, "--reset"});
  ASSERT_TRUE(wait_ready(again, seg.name)) << again.output();
  EXPECT_EQ(allowed(worker), 1) << "the reset wiped the window";
  sluice_client *other = nullptr;
  ASSERT_EQ(sluice_open(seg.name.c_str(), &other), SLUICE_OK);
  EXPECT_EQ(allowed(other), 1);
  EXPECT_EQ(allowed(other), 0) << "the worker's admission after the reset is not in the new segment";
  EXPECT_EQ(allowed(worker), 0);
  sluice_close(other);
  sluice_close(worker);
  kill(again.pid, SIGTERM);
  EXPECT_EQ(wait_exit(again), 0);
  std::remove(policy.c_str());
}

TEST(Sluicectl, ErrorsAreClear) {
  Proc none = spawn({SLUICECTL_PATH, "--segment", "sluicetest-absent", "status"});
  EXPECT_EQ(wait_exit(none), 1);
  EXPECT_NE(none.output().find("does not exist"), std::string::npos) << none.output();
  Proc bad = spawn({SLUICECTL_PATH, "frobnicate"});
  EXPECT_EQ(wait_exit(bad), 2);
}

// spdlog::level::from_str maps an unknown name to "off": a typo silenced the daemon.
TEST(Sluiced, AnUnknownLogLevelIsRefusedListingTheValidOnes) {
  Segment seg;
  const std::string policy = write_policy(kPolicy);
  for (const char *bad : {"verbose", "INFO", ""}) {
    Proc d = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy, "--log-level", bad});
    int st = -1;
    for (int i = 0; i < 500; ++i) {
      int w = 0;
      if (waitpid(d.pid, &w, WNOHANG) == d.pid) {
        st = WIFEXITED(w) ? WEXITSTATUS(w) : 128 + WTERMSIG(w);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (st == -1) {  // it started (silently): stop it, and fail
      kill(d.pid, SIGTERM);
      wait_exit(d);
    }
    EXPECT_EQ(st, 2) << bad << ": " << d.output();
    EXPECT_NE(d.output().find(std::string("--log-level takes one of trace, debug, info, warning, error, critical, "
                                          "off; not '") + bad + "'"),
              std::string::npos)
        << d.output();
  }
  for (const char *good : {"warn", "off", "debug"}) {
    Proc d = spawn({SLUICED_PATH, "--log-level", good, "--print-default-policy"});
    EXPECT_EQ(wait_exit(d), 0) << good << ": " << d.output();
  }
  std::remove(policy.c_str());
}

// Parsed strictly: strtoll took "+5s" and " 5s", and a huge count wrapped
// (18014398509481984d listed nothing). The absent segment tells a parse error
// (2) from a request that was tried (1).
TEST(Sluicectl, AuditSinceIsDigitsThenOneUnit) {
  for (const char *bad : {"+5s", " 5s", "5s ", "5", "s", "5x", "5ss", "-5s", "5 s", "0x5s", "1.5h"}) {
    Proc ctl = spawn({SLUICECTL_PATH, "--segment", "sluicetest-absent", "audit", "--since", bad});
    EXPECT_EQ(wait_exit(ctl), 2) << "'" << bad << "'";
    EXPECT_NE(ctl.output().find("--since takes a duration like 30s, 15m, 2h or 7d (digits, then s, m, h or d), not '" +
                                std::string(bad) + "'"),
              std::string::npos)
        << ctl.output();
  }
  for (const char *huge : {"18014398509481984d", "9223372036854776s", "99999999999999999999999m"}) {
    Proc ctl = spawn({SLUICECTL_PATH, "--segment", "sluicetest-absent", "audit", "--since", huge});
    EXPECT_EQ(wait_exit(ctl), 2) << huge;
    EXPECT_NE(ctl.output().find(std::string("--since ") + huge + " is too long (at most "), std::string::npos)
        << ctl.output();
  }
  for (const char *good : {"5s", "0m", "15m", "2h", "7d", "106751991167d", "9223372036854775s"}) {
    Proc ctl = spawn({SLUICECTL_PATH, "--segment", "sluicetest-absent", "audit", "--since", good});
    EXPECT_EQ(wait_exit(ctl), 1) << good << ": " << ctl.output();
    EXPECT_NE(ctl.output().find("no segment 'sluicetest-absent'"), std::string::npos) << ctl.output();
  }
}

// The request is one line of at most 4096 bytes: an id with a space or newline
// sent another command ("approve abc\nsnapshot" sent "approve abc"), and a long
// reason was cut short; a blank reason passed the required-reason check.
TEST(Sluicectl, ApprovalIdsAndReasonsAreCheckedBeforeAnythingIsSent) {
  auto ctl = [](std::vector<std::string> args) {
    args.insert(args.begin(), {SLUICECTL_PATH, "--segment", "sluicetest-absent"});
    Proc p = spawn(args);
    const int rc = wait_exit(p);
    return std::make_pair(rc, p.output());
  };
  for (const std::string &id : {std::string("abc\nsnapshot"), std::string("abc def"), std::string(""),
                               std::string(33, 'a'), std::string("ab-c"), std::string("../x"), std::string("7\t")}) {
    for (const char *cmd : {"approve", "reject"}) {
      const auto [rc, out] = ctl({cmd, id, "--reason", "fine"});
      EXPECT_EQ(rc, 2) << cmd << " '" << id << "': " << out;
      EXPECT_NE(out.find("an approval id is 1..32 letters or digits"), std::string::npos) << out;
      EXPECT_EQ(out.find("abc\nsnapshot"), std::string::npos) << "echoed raw: " << out;
    }
  }
  const std::vector<std::pair<std::string, std::string>> bad_reasons = {
      {"line one\nsnapshot", "--reason: byte 8 (0x0A) is a control character"},
      {"tab\there", "--reason: byte 3 (0x09) is a control character"},
      {"cr\r", "--reason: byte 2 (0x0D) is a control character"},
      {"del\x7f", "--reason: byte 3 (0x7F) is a control character"},
      {"   ", "reject needs a --reason that is not blank"},
      {" ", "reject needs a --reason that is not blank"},
      {std::string(4086, 'r'), "--reason is 4086 bytes; at most 4085 fit (a request line is at most 4096 bytes)"},
      {std::string(100000, 'r'), "--reason is 100000 bytes; at most 4085 fit"},
  };
  for (const auto &[reason, want] : bad_reasons) {
    const auto [rc, out] = ctl({"reject", "abc", "--reason", reason});
    EXPECT_EQ(rc, 2) << reason.substr(0, 40) << ": " << out;
    EXPECT_NE(out.find(want), std::string::npos) << out;
  }
  // What is allowed gets as far as looking for the daemon.
  for (const std::vector<std::string> &ok :
       {std::vector<std::string>{"approve", "deadbeef"}, {"approve", std::string(32, 'Z')},
        {"reject", "abc", "--reason", "launch week: hold"}, {"reject", "abc", "--reason", std::string(4085, 'r')},
        {"reject", "abc", "--reason", "caf\xc3\xa9"}}) {
    const auto [rc, out] = ctl(ok);
    EXPECT_EQ(rc, 1) << ok[0] << " " << ok[1] << ": " << out;
    EXPECT_NE(out.find("no segment 'sluicetest-absent'"), std::string::npos) << out;
  }
}

TEST(Sluicectl, ASegmentNameOutsideDevShmIsRefusedByEveryCommand) {
  for (const char *cmd : {"pending", "snapshot", "audit", "status"}) {
    Proc ctl = spawn({SLUICECTL_PATH, "--segment", "../x", cmd});
    EXPECT_EQ(wait_exit(ctl), 1) << cmd;
    EXPECT_NE(ctl.output().find("segment name '../x' is not valid"), std::string::npos) << cmd << ": " << ctl.output();
  }
}

// ---- another local user got to a name in /dev/shm first ---------------------------
// /dev/shm is world-writable and sticky: anyone may create the lock, the socket or
// the segments before sluiced does, and only root may remove them then. sluiced
// must neither use what it finds nor fail without saying whose it is, and
// sluicectl must not talk to a socket the segment's owner does not serve.
namespace {

constexpr uid_t kNobody = 65534;
constexpr uid_t kDaemonUser = 1;

// A socket at `path` bound by nobody, answering every connection with `answer`,
// until the object goes (bounded: the child exits after 20 s whatever happens).
struct SquattedSocket {
  pid_t pid = -1;
  std::string path;
  SquattedSocket(const std::string &p, const std::string &answer) : path(p) {
    int ready[2];
    if (pipe(ready) != 0) return;
    pid = fork();
    if (pid == 0) {
      alarm(20);
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
      const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
      if (setgid(kNobody) != 0 || setuid(kNobody) != 0 || fd < 0 ||
          bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 || listen(fd, 8) != 0)
        _exit(1);
      chmod(path.c_str(), 0666);
      (void)!write(ready[1], "r", 1);
      for (;;) {
        const int c = accept(fd, nullptr, nullptr);
        if (c < 0) continue;
        char buf[512];
        (void)!read(c, buf, sizeof buf);
        (void)!write(c, answer.data(), answer.size());
        close(c);
      }
    }
    close(ready[1]);
    char r = 0;
    (void)!read(ready[0], &r, 1);
    close(ready[0]);
    if (r != 'r') pid = -1;
  }
  ~SquattedSocket() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    unlink(path.c_str());
  }
};

// The exit status, or -1 after SIGKILLing a process still running after `ms`
// (a daemon that wrongly starts must fail the test, not hang it).
int exit_within(const Proc &p, int ms = 5000) {
  for (int i = 0; i < ms / 10; ++i) {
    int st = 0;
    if (waitpid(p.pid, &st, WNOHANG) == p.pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(p.pid, SIGKILL);
  waitpid(p.pid, nullptr, 0);
  return -1;
}

std::string file_text(const std::string &path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

TEST(Sluiced, ALockFileAnotherUserMadeIsRefusedNamingItsOwner) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to make a file another user's";
  Segment seg;
  const std::string lock = "/dev/shm/" + seg.name + ".lock";
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_EXCL, 0666);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fchown(fd, kNobody, kNobody), 0);
  close(fd);
  Proc d = spawn({SLUICED_PATH, "--segment", seg.name});
  EXPECT_EQ(exit_within(d), 1);
  EXPECT_NE(d.output().find("belongs to uid 65534"), std::string::npos) << d.output();
  sluice_client *c = nullptr;
  EXPECT_EQ(sluice_open(seg.name.c_str(), &c), SLUICE_ENOSEGMENT) << "it made a segment anyway";
  sluice_close(c);
}

TEST(Sluiced, ALockFileThatIsASymlinkIsNeverFollowed) {
  Segment seg;
  const std::string target = "/tmp/sluicetest-victim-" + std::to_string(getpid());
  std::ofstream(target) << "keep me";
  const std::string lock = "/dev/shm/" + seg.name + ".lock";
  ASSERT_EQ(symlink(target.c_str(), lock.c_str()), 0);
  Proc d = spawn({SLUICED_PATH, "--segment", seg.name});
  EXPECT_EQ(exit_within(d), 1);
  EXPECT_NE(d.output().find("symlink"), std::string::npos) << d.output();
  EXPECT_EQ(file_text(target), "keep me") << "the daemon truncated and wrote the symlink's target";
  unlink(lock.c_str());
  std::remove(target.c_str());
}

TEST(Sluiced, AControlSocketAnotherUserBoundIsReportedNamingItsOwner) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run two users";
  Segment seg;
  SquattedSocket squat("/dev/shm/" + seg.name + ".sock", "ok\n");
  ASSERT_GT(squat.pid, 0);
  // A non-root daemon (root could remove the socket): its own state directory.
  const std::string dir = "/tmp/sluicetest-state-uid1-" + std::to_string(getpid());
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(chown(dir.c_str(), kDaemonUser, kDaemonUser), 0);
  // uid 1 may not be able to reach the build tree (a clone under a 0700 mktemp -d):
  // run a copy of sluiced (it links nothing from the build tree) from a public place.
  const std::string bin_dir = "/tmp/sluicetest-bin-" + std::to_string(getpid()), bin = bin_dir + "/sluiced";
  ASSERT_EQ(mkdir(bin_dir.c_str(), 0755), 0);
  std::filesystem::copy_file(SLUICED_PATH, bin);
  ASSERT_EQ(chmod(bin.c_str(), 0755), 0);
  Proc d = spawn({bin, "--segment", seg.name, "--state-dir", dir}, kDaemonUser);
  EXPECT_EQ(exit_within(d), 1);
  std::filesystem::remove_all(bin_dir);
  EXPECT_NE(d.output().find("belongs to uid 65534"), std::string::npos) << d.output();
  // A failed start leaves no segment it made behind.
  EXPECT_NE(access(("/dev/shm/" + core::state_segment_name(seg.name)).c_str(), F_OK), 0);
  std::filesystem::remove_all(dir);
}

TEST(Sluicectl, TalksOnlyToASocketServedByTheSegmentsOwner) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run the impostor as nobody";
  test::SegmentGuard g("ctl", test::spec_with({test::tier("t", 4, 1000, 8)}, 64, 32));  // root's segment, no daemon
  SquattedSocket squat("/dev/shm/" + g.name + ".sock", "ok\nno approvals pending (impostor)\n");
  ASSERT_GT(squat.pid, 0);
  Proc ctl = spawn({SLUICECTL_PATH, "--segment", g.name, "approve", "7"});
  EXPECT_EQ(exit_within(ctl), 1);
  EXPECT_NE(ctl.output().find("served by uid 65534"), std::string::npos) << ctl.output();
  EXPECT_EQ(ctl.output().find("impostor"), std::string::npos) << ctl.output();
}

// One fixed tier, one unit a minute: every admission after the first is refused.
constexpr const char *kOneGoldKeyPerMinute = R"({"segment": {"max_keys": 100, "max_key_bytes": 16},
    "tiers": [{"name": "gold", "limit": 1, "window_ms": 60000, "max_limit": 2, "revenue_per_request": 0.2,
               "adaptive": false}]})";

// Someone unlinks the segment under a running daemon (rm, or systemd-logind's
// RemoveIPC when the daemon's user logs out). Clients must not keep counting in
// the orphan: sluiced retires it and stops with the reason; its next start makes a
// new pair, and a client that held a handle all along moves to it.
TEST(Sluiced, ASegmentUnlinkedUnderTheDaemonIsRetiredAndTheDaemonStops) {
  Segment seg;
  const std::string policy = write_policy(kOneGoldKeyPerMinute);
  Proc d = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy, "--reset", "--tick-ms", "50"});
  ASSERT_TRUE(wait_ready(d, seg.name)) << d.output();
  sluice_client *worker = nullptr;
  ASSERT_EQ(sluice_open(seg.name.c_str(), &worker), SLUICE_OK);
  auto acquire = [](sluice_client *c, int *allowed) {
    sluice_decision dec{};
    dec.size = sizeof dec;
    const int rc = sluice_acquire(c, "gold", "x", 1, 1, &dec);
    *allowed = int(dec.allowed);
    return rc;
  };
  int allowed = 0;
  ASSERT_EQ(acquire(worker, &allowed), SLUICE_OK);
  EXPECT_EQ(allowed, 1);
  core::Mapping mapped;  // what the worker maps, seen from outside
  std::string detail;
  ASSERT_EQ(core::Mapping::open(core::state_segment_name(seg.name), true, mapped, detail), core::Status::ok) << detail;
  test::allocate_every_page(mapped);
  ASSERT_GT(test::resident_pages(mapped), 2u);
  ASSERT_EQ(unlink(("/dev/shm/" + core::state_segment_name(seg.name)).c_str()), 0);
  ASSERT_EQ(unlink(("/dev/shm/" + core::policy_segment_name(seg.name)).c_str()), 0);
  EXPECT_EQ(exit_within(d, 5000), 1);
  EXPECT_NE(d.output().find("no longer in /dev/shm"), std::string::npos) << d.output();
  EXPECT_EQ(test::resident_pages(mapped), 0u) << "the orphaned state keeps its memory while clients map it";
  EXPECT_EQ(acquire(worker, &allowed), SLUICE_ENOSEGMENT) << "an answer came from the orphaned ledger";
  Proc again = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy});
  ASSERT_TRUE(wait_ready(again, seg.name)) << again.output();
  std::this_thread::sleep_for(std::chrono::milliseconds(25));  // past the handle's reopen back-off
  ASSERT_EQ(acquire(worker, &allowed), SLUICE_OK);
  EXPECT_EQ(allowed, 1) << "the new segment starts empty";
  sluice_client *other = nullptr;
  ASSERT_EQ(sluice_open(seg.name.c_str(), &other), SLUICE_OK);
  ASSERT_EQ(acquire(other, &allowed), SLUICE_OK);
  EXPECT_EQ(allowed, 0) << "the worker's admission is not in the new segment";
  sluice_close(other);
  sluice_close(worker);
  kill(again.pid, SIGTERM);
  EXPECT_EQ(wait_exit(again), 0);
  std::remove(policy.c_str());
}

// Only the policy removed by hand: the state is still under its name, and openers
// trust a named state (Ledger::open), so the stopping daemon must not free it.
TEST(Sluiced, APolicyUnlinkedUnderTheDaemonLeavesTheNamedStateWhole) {
  Segment seg;
  const std::string policy = write_policy(kOneGoldKeyPerMinute);
  Proc d = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy, "--reset", "--tick-ms", "50"});
  ASSERT_TRUE(wait_ready(d, seg.name)) << d.output();
  core::Mapping mapped;
  std::string detail;
  ASSERT_EQ(core::Mapping::open(core::state_segment_name(seg.name), true, mapped, detail), core::Status::ok) << detail;
  const size_t before = test::resident_pages(mapped);
  ASSERT_GT(before, 0u);
  ASSERT_EQ(unlink(("/dev/shm/" + core::policy_segment_name(seg.name)).c_str()), 0);
  EXPECT_EQ(exit_within(d, 5000), 1);
  EXPECT_EQ(test::resident_pages(mapped), before) << "a state still under its name was freed";
  EXPECT_EQ(static_cast<const core::StateHeader *>(mapped.base())->magic, core::kStateMagic);
  std::remove(policy.c_str());
}


// sluiced --check says what a start would do (make, re-attach, refuse, wipe) and
// does none of it: no segment, lock, socket or audit store appears, a running
// daemon's pair and counters are untouched.
TEST(Sluiced, CheckSaysWhatAStartWouldDoAndChangesNothing) {
  Segment seg;
  const std::string policy = write_policy(kPolicy);
  const std::string dir = "/tmp/sluicetest-check-" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  auto shm = [&](const char *suffix) { return std::filesystem::exists("/dev/shm/" + seg.name + suffix); };
  auto check = [&](std::vector<std::string> extra, int want_exit) {
    std::vector<std::string> args = {SLUICED_PATH, "--check", "--segment", seg.name, "--state-dir", dir};
    args.insert(args.end(), extra.begin(), extra.end());
    Proc p = spawn(args);
    EXPECT_EQ(wait_exit(p), want_exit) << p.output();
    return p.output();
  };
  std::string out = check({"--policy", policy}, 0);
  EXPECT_NE(out.find("no pair yet"), std::string::npos) << out;
  EXPECT_NE(out.find("check: OK"), std::string::npos) << out;
  EXPECT_NE(out.find("tier 0 'gold': 5 per 200 ms (max 10)"), std::string::npos) << out;
  EXPECT_FALSE(shm(".state") || shm(".policy") || shm(".lock") || shm(".sock")) << "--check made part of a pair";
  EXPECT_FALSE(std::filesystem::exists(dir)) << "--check made the audit store's directory";

  Proc d = spawn({SLUICED_PATH, "--segment", seg.name, "--policy", policy, "--state-dir", dir});
  ASSERT_TRUE(wait_ready(d, seg.name));
  ASSERT_EQ(acquire_once(seg.name, "gold", "k"), SLUICE_OK);
  out = check({"--policy", policy}, 0);
  EXPECT_NE(out.find("matches the policy: re-attached, keys and counters kept"), std::string::npos) << out;
  EXPECT_NE(out.find("sluiced pid " + std::to_string(d.pid) + " runs on this segment now"), std::string::npos) << out;
  std::string other = kPolicy;
  other.replace(other.find("\"max_limit\": 10"), 15, "\"max_limit\": 20");
  const std::string policy2 = write_policy(other);
  out = check({"--policy", policy2}, 78);
  EXPECT_NE(out.find("check: FAILED: existing segment does not match the policy: tier 0 (gold)"), std::string::npos)
      << out;
  EXPECT_NE(out.find("--reset"), std::string::npos) << out;
  out = check({"--policy", policy2, "--reset"}, 0);
  EXPECT_NE(out.find("keys and counters are wiped"), std::string::npos) << out;
  const std::string bad = write_policy(R"({"tiers": [{"name": "x", "limit": 1, "window_ms": 100, "max_limit": 2, "bogus": 1}]})");
  out = check({"--policy", bad}, 78);
  EXPECT_NE(out.find("bogus"), std::string::npos) << out;
  // A pair opened to everyone: a start refuses to adopt it.
  const std::string state = "/dev/shm/" + seg.name + ".state";
  ASSERT_EQ(::chmod(state.c_str(), 0666), 0);
  out = check({"--policy", policy}, 1);
  EXPECT_NE(out.find("has mode 0666"), std::string::npos) << out;
  ASSERT_EQ(::chmod(state.c_str(), 0660), 0);
  // A lock file that is a symlink: every start refuses it.
  {
    Segment other;
    const std::string lock = "/dev/shm/" + other.name + ".lock";
    ASSERT_EQ(::symlink("/tmp/nowhere", lock.c_str()), 0);
    Proc p = spawn({SLUICED_PATH, "--check", "--segment", other.name, "--state-dir", dir});
    EXPECT_EQ(wait_exit(p), 1) << p.output();
    EXPECT_NE(p.output().find("is not a plain file"), std::string::npos) << p.output();
    std::remove(lock.c_str());
  }
  // A name too long for the control socket: every start fails on it.
  Proc longname = spawn({SLUICED_PATH, "--check", "--segment", std::string(100, 'n'), "--state-dir", dir});
  EXPECT_EQ(wait_exit(longname), 1) << longname.output();
  EXPECT_NE(longname.output().find("use a shorter --segment"), std::string::npos) << longname.output();
  // Nothing the checks said changed the running pair.
  Proc ctl = spawn({SLUICECTL_PATH, "--segment", seg.name, "status", "--json"});
  EXPECT_EQ(wait_exit(ctl), 0) << ctl.output();
  EXPECT_NE(ctl.output().find("\"max_limit\":10"), std::string::npos) << ctl.output();
  EXPECT_NE(ctl.output().find("\"admitted\":1"), std::string::npos) << ctl.output();
  kill(d.pid, SIGTERM);
  EXPECT_EQ(wait_exit(d), 0);
  for (const auto &f : {policy, policy2, bad}) std::remove(f.c_str());
  std::filesystem::remove_all(dir);
}
