// The control socket's server: a silent, dribbling or slow client never holds
// the loop thread (serve_pending only runs requests already read in full),
// concurrent clients each get their own reply, every request runs on the loop
// thread one at a time, resources stay bounded, and shutdown does not wait for
// clients.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <grp.h>
#include <sys/wait.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../support/descriptor_shortage.hpp"
#include "control.hpp"
#include "daemon.hpp"
#include "policy/policy.hpp"
#include "sluice/core/segment.hpp"

using namespace sluice;
using Clock = std::chrono::steady_clock;

namespace {

std::string socket_path() {
  return "/tmp/sluicetest-ctl-" + std::to_string(getpid()) + "-" +
         ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".sock";
}

// A client that connects and then does what the test says (nothing, by default).
int connect_to(const std::string &path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, size_t(n));
  }
  return out;
}

// The daemon's loop as far as the control socket sees it: calls serve_pending
// every few ms and records how long each call took.
struct Loop {
  daemon::ControlServer &server;
  daemon::ControlServer::Handler handler;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> longest_us{0};
  std::atomic<uint64_t> rounds{0};
  std::thread thread;
  Loop(daemon::ControlServer &s, daemon::ControlServer::Handler h) : server(s), handler(std::move(h)) {
    thread = std::thread([this] {
      while (!stop.load()) {
        const auto t0 = Clock::now();
        server.serve_pending(handler);
        const int64_t us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
        if (us > longest_us.load()) longest_us.store(us);
        rounds.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  void halt() {
    stop.store(true);
    if (thread.joinable()) thread.join();
  }
  ~Loop() { halt(); }
};

// A served socket whose handler records every line it runs and answers reply(line).
struct RecordingServer {
  std::string path = socket_path();
  std::unique_ptr<daemon::ControlServer> server;
  std::mutex mu;
  std::vector<std::string> lines;
  std::unique_ptr<Loop> loop;  // after `server`: stopped before it closes
  RecordingServer(const daemon::ControlLimits &limits, std::function<std::string(const std::string &)> reply) {
    std::string err;
    server = daemon::ControlServer::listen(path, err, limits);
    EXPECT_TRUE(server) << err;
    if (server)
      loop = std::make_unique<Loop>(*server, [this, reply](const std::string &line, const daemon::Peer &) {
        std::lock_guard lock(mu);
        lines.push_back(line);
        return reply(line);
      });
  }
  std::vector<std::string> seen() {
    std::lock_guard lock(mu);
    return lines;
  }
};

std::string echo(const std::string &line, const daemon::Peer &peer) {
  return "ok\n" + line + " from uid " + std::to_string(peer.uid) + " pid " + std::to_string(peer.pid) + "\n";
}

}  // namespace

TEST(ControlServer, SilentClientsNeverHoldTheLoop) {
  const std::string path = socket_path();
  std::string err;
  auto server = daemon::ControlServer::listen(path, err);
  ASSERT_TRUE(server) << err;
  Loop loop(*server, echo);
  std::vector<int> silent;
  for (int i = 0; i < 20; ++i) silent.push_back(connect_to(path));
  for (int fd : silent) ASSERT_GE(fd, 0);
  const auto until = Clock::now() + std::chrono::milliseconds(1500);
  // A well-behaved client is answered while the silent ones are held open.
  std::string reply;
  ASSERT_TRUE(daemon::control_request(path, "snapshot", reply, err, 5000)) << err;
  EXPECT_EQ(reply, "ok\nsnapshot from uid " + std::to_string(getuid()) + " pid " + std::to_string(getpid()) + "\n");
  std::this_thread::sleep_until(until);
  // 20 silent clients used to cost the loop 200 ms each, in one serve_pending call.
  EXPECT_LT(loop.longest_us.load(), 100'000) << "a serve_pending call waited for a client";
  EXPECT_GT(loop.rounds.load(), 50u) << "the loop thread kept turning";
  for (int fd : silent) ::close(fd);
}

TEST(ControlServer, ADribblingClientNeverHoldsTheLoop) {
  const std::string path = socket_path();
  std::string err;
  auto server = daemon::ControlServer::listen(path, err);
  ASSERT_TRUE(server) << err;
  Loop loop(*server, echo);
  // Three clients each send one byte every 100 ms and never a newline.
  std::vector<std::thread> dribblers;
  std::vector<std::string> replies(3);
  for (int i = 0; i < 3; ++i)
    dribblers.emplace_back([&, i] {
      const int fd = connect_to(path);
      if (fd < 0) return;
      for (int k = 0; k < 15; ++k) {
        if (::send(fd, "x", 1, MSG_NOSIGNAL) != 1) break;  // the server may have given up
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      ::shutdown(fd, SHUT_WR);
      replies[size_t(i)] = read_all(fd);
      ::close(fd);
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  std::string reply;
  const auto t0 = Clock::now();
  ASSERT_TRUE(daemon::control_request(path, "pending", reply, err, 5000)) << err;
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(1000)) << "a dribbler delayed another client";
  for (auto &t : dribblers) t.join();
  EXPECT_LT(loop.longest_us.load(), 100'000) << "a serve_pending call waited for a dribbling client";
  for (const auto &r : replies) {
    // A line still without its newline at the read deadline is refused, never run cut.
    EXPECT_EQ(r, "error\nrequest line not finished (no newline) within 1000 ms: not run\n") << r;
  }
}

// The cut of a line is another request: "reject ID" without the reason that was
// still on its way ran as a reject with none.
TEST(ControlServer, ALineCutByTheReadDeadlineIsRefusedNotRun) {
  daemon::ControlLimits limits;
  limits.read_timeout_ms = 200;
  RecordingServer rs(limits, [](const std::string &) { return std::string("ok\nran\n"); });
  ASSERT_TRUE(rs.server);
  const std::string &path = rs.path;
  const int fd = connect_to(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::send(fd, "reject 41a99dd1 ", 16, MSG_NOSIGNAL), 16);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  (void)::send(fd, "launch week\n", 12, MSG_NOSIGNAL);  // too late: the server may have closed
  EXPECT_EQ(read_all(fd), "error\nrequest line not finished (no newline) within 200 ms: not run\n");
  ::close(fd);
  // A silent client is still answered (an empty request), and EOF still ends a request.
  const int silent = connect_to(path);
  ASSERT_GE(silent, 0);
  EXPECT_EQ(read_all(silent), "ok\nran\n");
  ::close(silent);
  const int half = connect_to(path);
  ASSERT_GE(half, 0);
  ASSERT_EQ(::send(half, "pending", 7, MSG_NOSIGNAL), 7);
  ::shutdown(half, SHUT_WR);
  EXPECT_EQ(read_all(half), "ok\nran\n");
  ::close(half);
  EXPECT_EQ(rs.seen(), (std::vector<std::string>{"", "pending"}));
}

TEST(ControlServer, ConcurrentClientsEachGetTheirOwnReplyAndRequestsRunOnTheLoopThread) {
  const std::string path = socket_path();
  std::string err;
  auto server = daemon::ControlServer::listen(path, err);
  ASSERT_TRUE(server) << err;
  std::vector<std::string> seen;  // touched by the loop thread only
  std::thread::id loop_id;
  std::atomic<bool> off_thread{false};
  std::atomic<int> inside{0};
  std::atomic<bool> overlapped{false};
  Loop loop(*server, [&](const std::string &line, const daemon::Peer &peer) {
    if (loop_id == std::thread::id()) loop_id = std::this_thread::get_id();
    if (loop_id != std::this_thread::get_id()) off_thread = true;
    if (inside.fetch_add(1) != 0) overlapped = true;
    seen.push_back(line);
    std::string r = echo(line, peer);
    inside.fetch_sub(1);
    return r;
  });
  std::vector<int> silent;
  for (int i = 0; i < 10; ++i) silent.push_back(connect_to(path));
  constexpr int kThreads = 12, kEach = 15;
  std::atomic<int> good{0};
  std::vector<std::string> bad;
  std::mutex bad_mu;
  std::vector<std::thread> clients;
  for (int t = 0; t < kThreads; ++t)
    clients.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const std::string line = "audit " + std::to_string(t) + " " + std::to_string(i);
        std::string reply, e;
        const bool ok = daemon::control_request(path, line, reply, e, 10'000);
        const std::string want =
            "ok\n" + line + " from uid " + std::to_string(getuid()) + " pid " + std::to_string(getpid()) + "\n";
        if (ok && reply == want) {
          good.fetch_add(1);
        } else {
          std::lock_guard lock(bad_mu);
          bad.push_back(line + " -> " + (ok ? reply : e));
        }
      }
    });
  for (auto &c : clients) c.join();
  EXPECT_EQ(good.load(), kThreads * kEach);
  for (const auto &b : bad) ADD_FAILURE() << b;
  for (int fd : silent) ::close(fd);
  loop.halt();
  size_t asked = 0;
  for (const auto &s : seen) asked += s.starts_with("audit ");
  EXPECT_EQ(asked, size_t(kThreads * kEach)) << "each request ran once";
  EXPECT_FALSE(off_thread.load()) << "a request ran off the loop thread";
  EXPECT_FALSE(overlapped.load()) << "two requests ran at once";
}

TEST(ControlServer, ConnectionsAreBoundedAndEveryClientIsAnsweredOrClosed) {
  const std::string path = socket_path();
  std::string err;
  daemon::ControlLimits lim;
  lim.max_connections = 4;
  lim.read_timeout_ms = 200;
  auto server = daemon::ControlServer::listen(path, err, lim);
  ASSERT_TRUE(server) << err;
  Loop loop(*server, echo);
  std::atomic<size_t> most{0};
  std::atomic<bool> watching{true};
  std::thread watch([&] {
    while (watching.load()) {
      most.store(std::max(most.load(), server->connections()));
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  std::vector<int> silent;
  for (int i = 0; i < 12; ++i) silent.push_back(connect_to(path));  // 4 open, the rest in the backlog
  // Each silent client is answered (an empty request) after the read deadline, in
  // turns of four.
  int answered = 0;
  for (int fd : silent) {
    ASSERT_GE(fd, 0);
    answered += read_all(fd).starts_with("ok\n from uid");
    ::close(fd);
  }
  watching.store(false);
  watch.join();
  EXPECT_EQ(answered, 12);
  EXPECT_LE(most.load(), 4u);
  EXPECT_GE(most.load(), 1u);
  // A line longer than max_line is refused, not run cut short; the rest is not read.
  const std::string huge(10'000, 'y');
  std::string reply;
  ASSERT_TRUE(daemon::control_request(path, huge, reply, err, 5000)) << err;
  EXPECT_EQ(reply, "error\nrequest line longer than " + std::to_string(lim.max_line) + " bytes: not run\n");
}

TEST(ControlServer, ALargeReplyReachesASlowReader) {
  const std::string path = socket_path();
  std::string err;
  auto server = daemon::ControlServer::listen(path, err);
  ASSERT_TRUE(server) << err;
  const std::string big(3'000'000, 'z');
  Loop loop(*server, [&](const std::string &, const daemon::Peer &) { return big; });
  const int fd = connect_to(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "audit 0 json\n", 13), 13);
  std::string got;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, size_t(n));
    if (got.size() < 1'000'000) std::this_thread::sleep_for(std::chrono::milliseconds(50));  // ~0.8 s
  }
  ::close(fd);
  EXPECT_EQ(got.size(), big.size());
  EXPECT_LT(loop.longest_us.load(), 100'000) << "the loop waited for a slow reader";
}

TEST(ControlServer, ShutdownDoesNotWaitForClientsAndRemovesTheSocket) {
  const std::string path = socket_path();
  std::string err;
  auto server = daemon::ControlServer::listen(path, err);
  ASSERT_TRUE(server) << err;
  std::vector<int> silent;
  for (int i = 0; i < 8; ++i) silent.push_back(connect_to(path));
  const int asked = connect_to(path);  // a request the loop never gets to
  ASSERT_EQ(::write(asked, "pending\n", 8), 8);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto t0 = Clock::now();
  server.reset();
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(500));
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << "socket file removed";
  EXPECT_EQ(read_all(asked), "") << "closed without a reply";
  ::close(asked);
  for (int fd : silent) ::close(fd);
}


// sluiced runs do_work (serve_pending) and, on SIGTERM, stop() right after it on
// the same thread: a command the loop has run (an approval published and
// recorded) must still be answered, or the caller is told it failed while it
// took effect.
TEST(ControlServer, AReplyTheLoopHasMadeIsSentWhenTheServerStopsRightAfter) {
  int lost = 0;
  constexpr int kRounds = 20;
  for (int round = 0; round < kRounds; ++round) {
    const std::string path = socket_path();
    std::string err;
    auto server = daemon::ControlServer::listen(path, err);
    ASSERT_TRUE(server) << err;
    const int fd = connect_to(path);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "approve a-1\n", 12), 12);
    pollfd p{server->fd(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 2000), 1) << "the request was never queued";
    int ran = 0;
    EXPECT_EQ(server->serve_pending([&](const std::string &, const daemon::Peer &) {
      ++ran;
      return std::string("ok\napproved a-1\n");
    }),
              1u);
    server.reset();  // SIGTERM: Daemon::stop() right after do_work
    EXPECT_EQ(ran, 1);
    const std::string got = read_all(fd);
    if (got != "ok\napproved a-1\n") ++lost;
    ::close(fd);
  }
  EXPECT_EQ(lost, 0) << "of " << kRounds << " commands that ran, " << lost << " were closed without their reply";
}

// With no file descriptor left (EMFILE from accept4), a waiting connection keeps
// the listening socket readable: the server's thread must back off instead of
// polling it again at once for as long as the shortage lasts.
TEST(ControlServer, OutOfFileDescriptorsDoesNotSpinTheServerThread) {
  const std::string path = socket_path();
  std::string err;
  auto server = daemon::ControlServer::listen(path, err);
  ASSERT_TRUE(server) << err;
  const int client = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(client, 0);
  // The server's accept4 can only fail with EMFILE.
  test::DescriptorShortage shortage(client);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  const int rc = ::connect(client, reinterpret_cast<sockaddr *>(&a), sizeof a);
  const int connect_errno = errno;
  const int64_t cpu_ms = test::process_cpu_ms_during(std::chrono::milliseconds(500));
  shortage.end();
  ASSERT_EQ(rc, 0) << std::strerror(connect_errno);
  EXPECT_LT(cpu_ms, 100) << "the server's thread spun on accept4 (EMFILE) for 500 ms";
  // Once descriptors are free again the waiting client is served.
  Loop loop(*server, echo);
  ASSERT_EQ(::write(client, "pending\n", 8), 8);
  EXPECT_TRUE(read_all(client).starts_with("ok\npending from uid")) << "not served after the shortage";
  ::close(client);
}

// A request longer than the socket buffer: the server reads past max_line,
// answers "error" without running it and closes, so the client's write of the
// rest fails. The client must report that reply, not "write: ..." (sluicectl
// would otherwise not say why, or what happened).
TEST(ControlServer, ARequestLongerThanTheSocketBufferIsAnsweredNotReportedAsFailed) {
  const std::string path = socket_path();
  std::string err;
  auto server = daemon::ControlServer::listen(path, err);
  ASSERT_TRUE(server) << err;
  std::atomic<int> ran{0};
  Loop loop(*server, [&](const std::string &line, const daemon::Peer &) {
    ran.fetch_add(1);
    return "ok\nran " + std::to_string(line.size()) + "\n";
  });
  for (size_t n : {300'000ul, 4'000'000ul}) {
    const std::string line = "reject p-1 " + std::string(n, 'y');
    std::string reply;
    err.clear();
    const int before = ran.load();
    const bool ok = daemon::control_request(path, line, reply, err, 5000);
    EXPECT_EQ(ran.load(), before) << n << " bytes: a cut of the line ran";
    EXPECT_TRUE(ok) << n << " bytes: the server answered but the client said: " << err;
    EXPECT_EQ(reply, "error\nrequest line longer than 4096 bytes: not run\n") << n;
  }
}

// Cut to max_line, an over-long line is another request: "reject ID <reason>"
// with half its reason, reported as success. Up to max_line it runs whole;
// past it, the loop never sees it.
TEST(ControlServer, ALineLongerThanMaxLineIsRefusedNotRunCut) {
  daemon::ControlLimits limits;
  limits.max_line = 64;
  RecordingServer rs(limits, [](const std::string &line) { return "ok\nran " + std::to_string(line.size()) + "\n"; });
  ASSERT_TRUE(rs.server);
  const std::string &path = rs.path;
  std::string err;
  const std::string exact = "reject p-1 " + std::string(64 - 11, 'r');
  std::string reply;
  ASSERT_TRUE(daemon::control_request(path, exact, reply, err, 5000)) << err;
  EXPECT_EQ(reply, "ok\nran 64\n");
  for (size_t extra : {1ul, 100ul, 5000ul}) {
    reply.clear();
    ASSERT_TRUE(daemon::control_request(path, exact + std::string(extra, 'x'), reply, err, 5000)) << err;
    EXPECT_EQ(reply, "error\nrequest line longer than 64 bytes: not run\n") << extra;
  }
  // Sent without a newline and the connection held open: refused as soon as it is too long.
  const int fd = connect_to(path);
  ASSERT_GE(fd, 0);
  const std::string long_line(65, 'z');
  ASSERT_EQ(::send(fd, long_line.data(), long_line.size(), MSG_NOSIGNAL), ssize_t(long_line.size()));
  EXPECT_EQ(read_all(fd), "error\nrequest line longer than 64 bytes: not run\n");
  ::close(fd);
  EXPECT_EQ(rs.seen(), std::vector<std::string>{exact});
}

// `--segment ../x` must not stat /dev/shm/../x.state nor connect outside /dev/shm.
TEST(DaemonRequest, RefusesAnInvalidSegmentNameAsStatusDoes) {
  for (const char *bad : {"../x", "", ".hidden", "a/b", "x y"}) {
    std::string reply, err;
    EXPECT_FALSE(daemon::daemon_request(bad, "pending text", reply, err, 1000)) << bad;
    EXPECT_EQ(err, std::string("segment name '") + bad + "' is not valid") << bad;
  }
}

// One local user holding connections open cannot keep another (an approver)
// waiting: past max_per_uid, a uid's connections are refused at once, so the
// others always find a free slot. The holder runs as `nobody` in a child.
TEST(ControlServer, OneUidHoldingConnectionsCannotCrowdOutAnother) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client as nobody";
  const std::string path = socket_path();
  std::string err;
  daemon::ControlLimits lim;
  lim.max_connections = 8;
  lim.max_per_uid = 4;
  lim.read_timeout_ms = 10'000;  // held connections stay for the whole test
  auto server = daemon::ControlServer::listen(path, err, lim);
  ASSERT_TRUE(server) << err;
  ASSERT_EQ(::chmod(path.c_str(), 0666), 0);
  Loop loop(*server, echo);

  int ready[2], done[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(done), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // nobody: 8 silent connections; report what the last 4 were told
    ::close(ready[0]);
    ::close(done[1]);
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
    std::vector<int> held;
    for (int i = 0; i < 8; ++i) {
      held.push_back(connect_to(path));
      if (held.back() < 0) ::_exit(3);
      ::usleep(20'000);  // in order: the first 4 are the ones held
    }
    std::string told;
    for (int i = 4; i < 8; ++i) {
      pollfd p{held[i], POLLIN, 0};
      if (::poll(&p, 1, 3000) != 1) ::_exit(4);  // refused at once, not at the 10 s read deadline
      told += read_all(held[i]);
    }
    const char verdict = told.find("too many control connections from uid 65534") != std::string::npos ? 'y' : 'n';
    (void)!::write(ready[1], &verdict, 1);
    char c;
    (void)!::read(done[0], &c, 1);
    ::_exit(0);
  }
  ::close(ready[1]);  // so a child that fails gives EOF here, not a hang
  ::close(done[0]);
  char verdict = 0;
  const ssize_t got = ::read(ready[0], &verdict, 1);
  if (got != 1) {
    int st = 0;
    ::waitpid(child, &st, 0);
    FAIL() << "the nobody client failed (exit status " << (WIFEXITED(st) ? WEXITSTATUS(st) : -1)
           << "; 4: a connection past the cap was not answered within 3 s)";
  }
  EXPECT_EQ(verdict, 'y') << "nobody's connections past the cap were not refused with a reason";
  EXPECT_EQ(server->connections(), 4u);
  // root is answered at once, while nobody still holds its 4.
  const int fd = connect_to(path);
  ASSERT_GE(fd, 0);
  const auto t0 = Clock::now();
  ASSERT_EQ(::write(fd, "status\n", 7), 7);
  const std::string reply = read_all(fd);
  ::close(fd);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3));
  EXPECT_NE(reply.find("ok\nstatus from uid 0"), std::string::npos) << reply;
  (void)!::write(done[1], "x", 1);
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "child status " << st;
  ::close(ready[0]);
  ::close(done[1]);
}

// Anyone local may send commands that cost the loop time (an audit read, a
// snapshot); the tick must still run. One serve_pending call stops once its
// budget is spent, and the rest wait for the next call.
TEST(ControlServer, ServingStopsAtItsTimeBudgetAndTheRestWaitTheirTurn) {
  const std::string path = socket_path();
  std::string err;
  auto server = daemon::ControlServer::listen(path, err);
  ASSERT_TRUE(server) << err;
  constexpr int kClients = 10;
  std::vector<std::thread> clients;
  std::atomic<int> answered{0};
  for (int i = 0; i < kClients; ++i)
    clients.emplace_back([&, i] {
      std::string reply, e;
      if (daemon::control_request(path, "slow " + std::to_string(i), reply, e, 20'000) && reply.starts_with("ok\nslow "))
        answered.fetch_add(1);
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // all ten read and queued
  auto slow = [](const std::string &line, const daemon::Peer &peer) {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    return echo(line, peer);
  };
  const size_t first = server->serve_pending(slow);  // budget 50 ms: two of 30 ms
  EXPECT_GE(first, 1u);
  EXPECT_LE(first, 2u) << "one call ran every queued 30 ms command";
  pollfd p{server->fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 1) << "the rest are still announced to the loop";
  size_t total = first;
  for (int round = 0; total < kClients && round < 100; ++round) total += server->serve_pending(slow);
  for (auto &c : clients) c.join();
  EXPECT_EQ(total, size_t(kClients));
  EXPECT_EQ(answered.load(), kClients);
}

// One user's flood of commands cannot keep another's at the back of the queue:
// requests are taken in turn by uid.
TEST(ControlServer, RequestsAreTakenInTurnByUid) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client as nobody";
  const std::string path = socket_path();
  std::string err;
  auto server = daemon::ControlServer::listen(path, err);
  ASSERT_TRUE(server) << err;
  int go[2], result[2];
  ASSERT_EQ(::pipe(go), 0);
  ASSERT_EQ(::pipe(result), 0);
  const pid_t child = ::fork();  // before any thread of ours: the child may allocate
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(go[1]);
    ::close(result[0]);
    char c;
    if (::read(go[0], &c, 1) != 1) ::_exit(2);
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(3);
    const int fd = connect_to(path);
    if (fd < 0 || ::write(fd, "nobody\n", 7) != 7) ::_exit(4);
    const char ok = read_all(fd).starts_with("ok\nnobody from uid 65534") ? 'y' : 'n';
    (void)!::write(result[1], &ok, 1);
    ::_exit(0);
  }
  ::close(go[0]);
  ::close(result[1]);
  std::vector<std::thread> roots;
  for (int i = 0; i < 6; ++i)
    roots.emplace_back([&, i] {
      std::string reply, e;
      daemon::control_request(path, "root " + std::to_string(i), reply, e, 20'000);
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // root's six are queued first
  (void)!::write(go[1], "x", 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // then nobody's one
  std::vector<std::string> seen;
  auto record = [&](const std::string &line, const daemon::Peer &peer) {
    seen.push_back(line);
    return echo(line, peer);
  };
  EXPECT_EQ(server->serve_pending(record, 2), 2u);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen[0].starts_with("root ")) << seen[0];
  EXPECT_EQ(seen[1], "nobody") << "nobody's request waited behind root's whole queue";
  for (int round = 0; seen.size() < 7 && round < 100; ++round) server->serve_pending(record);
  for (auto &t : roots) t.join();
  char ok = 0;
  EXPECT_EQ(::read(result[0], &ok, 1), 1);
  EXPECT_EQ(ok, 'y');
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "child status " << st;
  EXPECT_EQ(seen.size(), 7u);
  ::close(go[1]);
  ::close(result[0]);
}

// The server hands governance the caller's supplementary groups as the kernel
// recorded them at connect (SO_PEERGROUPS), so an approver group need not be the
// caller's primary one.
TEST(ControlServer, APeersSupplementaryGroupsReachTheHandler) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client with chosen groups";
  const std::string path = socket_path();
  std::string err;
  auto server = daemon::ControlServer::listen(path, err);
  ASSERT_TRUE(server) << err;
  ASSERT_EQ(::chmod(path.c_str(), 0666), 0);
  Loop loop(*server, [](const std::string &, const daemon::Peer &peer) {
    std::string out = "ok\nuid " + std::to_string(peer.uid) + " gid " + std::to_string(peer.gid) + " groups";
    for (gid_t g : peer.groups) out += " " + std::to_string(g);
    return out + "\n";
  });
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(out[0]);
    const gid_t groups[] = {4242, 4343};
    if (::setgroups(2, groups) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
    const int fd = connect_to(path);
    if (fd < 0 || ::write(fd, "whoami\n", 7) != 7) ::_exit(3);
    const std::string reply = read_all(fd);
    (void)!::write(out[1], reply.data(), reply.size());
    ::_exit(0);
  }
  ::close(out[1]);
  const std::string reply = read_all(out[0]);
  ::close(out[0]);
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "child status " << st;
  EXPECT_NE(reply.find("uid 65534 gid 65534 groups"), std::string::npos) << reply;
  EXPECT_NE(reply.find(" 4242"), std::string::npos) << reply;
  EXPECT_NE(reply.find(" 4343"), std::string::npos) << reply;
}
