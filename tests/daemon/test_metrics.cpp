// /metrics: the exposition writer, the listen-address parser, and a daemon run
// in-process whose page is fetched over real HTTP after real admissions.
#include <arpa/inet.h>
#include <sys/resource.h>
#include <poll.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <vector>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>
#include <thread>

#include "../support/descriptor_shortage.hpp"
#include "../support/fixture.hpp"
#include "daemon.hpp"
#include "metrics/exposition.hpp"
#include "metrics/http_server.hpp"
#include "sluice/core/clock.hpp"
#include "sluice/core/tsc_clock.hpp"

using namespace sluice;

namespace {

// GET path from 127.0.0.1:port; returns status line + headers + body.
std::string http_get(int port, const std::string &path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{10, 0};  // a broken server fails the test instead of hanging it
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[65536];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
  close(fd);
  return out;
}

// The value of the one sample line that starts with `series` (name + labels).
double sample(const std::string &page, const std::string &series) {
  const auto at = page.find("\n" + series + " ");
  if (at == std::string::npos) return -12345;
  return std::stod(page.substr(at + series.size() + 2));
}

struct MetricsDaemon {
  std::string name = test::unique_segment("metrics");
  std::unique_ptr<daemon::Daemon> d;
  MetricsDaemon() {
    daemon::Options o;
    o.segment = name;
    o.reset = true;
    o.state_dir = "/tmp/sluicetest-state";
    o.metrics_addr = metrics::ListenAddress{"127.0.0.1", 0};
    std::string err;
    d = daemon::Daemon::start(o, err);
    EXPECT_TRUE(d) << err;
  }
  // A client of the daemon's segment (as a process on the host would open one).
  std::unique_ptr<core::Ledger> client() const {
    std::unique_ptr<core::Ledger> l;
    std::string det;
    EXPECT_EQ(core::Ledger::open(name, l, det), core::Status::ok) << det;
    return l;
  }
  ~MetricsDaemon() {
    d.reset();
    core::Owner::remove(name);
    std::remove(("/dev/shm/" + name + ".lock").c_str());
  }
};

}  // namespace

TEST(Exposition, EscapesLabelValuesAndWritesHelpAndTypeOnce) {
  metrics::Exposition e;
  e.family("sluice_x_total", "counter", "An example.");
  e.sample("sluice_x_total", {{"tier", "a\"b\\c\nd"}}, uint64_t(7));
  e.sample("sluice_x_total", {{"tier", "plain"}}, uint64_t(8));
  EXPECT_EQ(e.text(),
            "# HELP sluice_x_total An example.\n# TYPE sluice_x_total counter\n"
            "sluice_x_total{tier=\"a\\\"b\\\\c\\nd\"} 7\nsluice_x_total{tier=\"plain\"} 8\n");
}

TEST(Exposition, FormatsSpecialFloatsAsPrometheusExpects) {
  metrics::Exposition e;
  e.sample("g", {}, 0.25);
  e.sample("g", {}, std::numeric_limits<double>::infinity());
  e.sample("g", {}, std::nan(""));
  EXPECT_EQ(e.text(), "g 0.25\ng +Inf\ng NaN\n");
}

TEST(Exposition, WritesTheShortestTextThatReadsBackAsTheSameDouble) {
  const double values[] = {0.1, 1.0 / 3.0, 12345678901.25, 1e-300, -2.5e22, 0.0, 1764806400.123456};
  for (const double v : values) {
    metrics::Exposition e;
    e.sample("g", {}, v);
    const std::string t = e.text();
    ASSERT_EQ(t.substr(0, 2), "g ") << t;
    EXPECT_EQ(std::strtod(t.c_str() + 2, nullptr), v) << t;  // %.10g lost 12345678901.25 and 1/3
    EXPECT_EQ(t.back(), '\n');
  }
  metrics::Exposition e;
  e.sample("g", {}, 0.1);
  e.sample("g", {}, 3.0);
  EXPECT_EQ(e.text(), "g 0.1\ng 3\n");
}

TEST(MetricsServer, APageNotReadyYetIs503WithRetryAfter) {
  std::string err;
  auto server = metrics::MetricsServer::start(
      {"127.0.0.1", 0}, []() -> std::string { throw metrics::Unavailable("sluiced is starting"); }, err);
  ASSERT_TRUE(server) << err;
  const std::string got = http_get(server->port(), "/metrics");
  EXPECT_EQ(got.substr(0, 13), "HTTP/1.1 503 ") << got;
  EXPECT_NE(got.find("Retry-After: 1\r\n"), std::string::npos) << got;
  EXPECT_NE(got.find("sluiced is starting"), std::string::npos) << got;
}

TEST(ListenAddress, AcceptsPortHostPortAndIpv6AndRefusesTheRest) {
  metrics::ListenAddress a;
  std::string err;
  ASSERT_TRUE(metrics::parse_listen_address("9464", a, err)) << err;
  EXPECT_EQ(a.host, "127.0.0.1");
  EXPECT_EQ(a.port, 9464);
  ASSERT_TRUE(metrics::parse_listen_address("localhost:0", a, err)) << err;
  EXPECT_EQ(a.host, "127.0.0.1");
  ASSERT_TRUE(metrics::parse_listen_address("[::1]:9000", a, err)) << err;
  EXPECT_EQ(a.host, "::1");
  ASSERT_TRUE(metrics::parse_listen_address("127.0.0.1:65535", a, err)) << err;
  EXPECT_EQ(a.port, 65535);
  for (const char *bad : {"", "x", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "example.com:80", "[::1]9000",
                          "127.0.0.1:80x", " 80", "+0", "-0", "127.0.0.1: 80", "127.0.0.1:+80", "[::1]:+1", "80 ",
                          "0x50", "000065536", "99999999999999999999"}) {
    err.clear();
    EXPECT_FALSE(metrics::parse_listen_address(bad, a, err)) << bad;
    EXPECT_FALSE(err.empty()) << bad;
  }
}

TEST(MetricsServer, ATakenPortIsAnErrorAtStart) {
  std::string err;
  auto first = metrics::MetricsServer::start({"127.0.0.1", 0}, [] { return std::string("a 1\n"); }, err);
  ASSERT_TRUE(first) << err;
  auto second = metrics::MetricsServer::start({"127.0.0.1", first->port()}, [] { return std::string(); }, err);
  EXPECT_FALSE(second);
  EXPECT_NE(err.find(std::to_string(first->port())), std::string::npos) << err;
  EXPECT_NE(http_get(first->port(), "/metrics").find("\r\n\r\na 1\n"), std::string::npos);
  EXPECT_NE(http_get(first->port(), "/nothing").find(" 404 "), std::string::npos);
}

TEST(MetricsPage, CountsTheAdmissionsClientsMadeAndTheLoopsView) {
  MetricsDaemon g;
  ASSERT_TRUE(g.d);
  ASSERT_GT(g.d->metrics_port(), 0);
  auto l = g.client();
  ASSERT_TRUE(l);
  std::string det;
  core::Decision d;
  // free: 3 per second; 5 calls on one key within the window: 3 allowed, 2 denied.
  for (int i = 0; i < 5; ++i) ASSERT_EQ(l->acquire("free", "ip-1", 4, 1, d, det), core::Status::ok);
  ASSERT_EQ(l->acquire("pro", "k2", 2, 2, d, det), core::Status::ok);
  int64_t now = core::mono_ns();
  g.d->do_work(now);
  g.d->do_work(now + 1'000'000'000);

  const std::string page = http_get(g.d->metrics_port(), "/metrics");
  ASSERT_NE(page.find(" 200 OK"), std::string::npos) << page.substr(0, 200);
  EXPECT_NE(page.find("Content-Type: text/plain; version=0.0.4"), std::string::npos);
  EXPECT_EQ(sample(page, "sluice_admissions_total{tier=\"free\",decision=\"allowed\",reason=\"allowed\"}"), 3);
  EXPECT_EQ(sample(page, "sluice_admissions_total{tier=\"free\",decision=\"denied\",reason=\"window_full\"}"), 2);
  EXPECT_EQ(sample(page, "sluice_admissions_total{tier=\"pro\",decision=\"allowed\",reason=\"allowed\"}"), 1);
  EXPECT_EQ(sample(page, "sluice_cost_units_total{tier=\"pro\"}"), 2);
  EXPECT_DOUBLE_EQ(sample(page, "sluice_revenue_dollars_total{tier=\"free\"}"), 0.03);
  EXPECT_EQ(sample(page, "sluice_tier_limit{tier=\"enterprise\"}"), 15);
  EXPECT_EQ(sample(page, "sluice_keys_in_use{tier=\"free\"}"), 1);
  EXPECT_EQ(sample(page, "sluice_policy_ticks_total"), 2);
  EXPECT_EQ(sample(page, "sluice_host_surge_level"), 0);
  EXPECT_EQ(sample(page, "sluice_pending_approvals"), 0);
  EXPECT_EQ(sample(page, "sluice_advisor_enabled{kind=\"none\",model=\"\"}"), 0);
  EXPECT_EQ(sample(page, "sluice_advisor_latency_seconds_bucket{le=\"+Inf\"}"), 0);
  const double age = sample(page, "sluice_heartbeat_age_seconds");
  EXPECT_GE(age, 0);
  EXPECT_LT(age, 60);
  // The clock the clients read: the TSC wherever the kernel keeps time with it,
  // within a millisecond (in practice microseconds) of CLOCK_MONOTONIC.
  EXPECT_EQ(sample(page, "sluice_clock_tsc"), core::tsc_usable() ? 1 : 0);
  EXPECT_LT(std::abs(sample(page, "sluice_clock_offset_seconds")), 1e-3);
  // Every sample belongs to a family announced with HELP and TYPE before it.
  std::set<std::string> typed;
  std::istringstream in(page.substr(page.find("\r\n\r\n") + 4));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# TYPE ", 0) == 0) typed.insert(line.substr(7, line.find(' ', 7) - 7));
    if (line.empty() || line[0] == '#') continue;
    std::string name = line.substr(0, line.find_first_of("{ "));
    for (const char *sfx : {"_bucket", "_sum", "_count"})
      if (!typed.count(name) && name.ends_with(sfx)) name.resize(name.size() - std::strlen(sfx));
    EXPECT_TRUE(typed.count(name)) << line;
    EXPECT_EQ(name.rfind("sluice_", 0), 0u) << line;
  }
}

TEST(MetricsPage, StopsServingWhenTheDaemonStops) {
  MetricsDaemon g;
  ASSERT_TRUE(g.d);
  const int port = g.d->metrics_port();
  ASSERT_NE(http_get(port, "/metrics").find("sluice_build_info"), std::string::npos);
  g.d->stop();
  EXPECT_EQ(http_get(port, "/metrics"), "");
}

TEST(MetricsPage, ScrapesRaceTicksSafely) {
  // The server's threads read the loop's state while the loop thread ticks
  // (and hands over a new copy each time): run both at once (TSan checks this).
  MetricsDaemon g;
  ASSERT_TRUE(g.d);
  auto l = g.client();
  ASSERT_TRUE(l);
  std::string det;
  std::atomic<bool> done{false};
  std::atomic<int> pages{0};
  std::thread scraper([&] {
    while (!done.load())
      if (http_get(g.d->metrics_port(), "/metrics").find("sluice_policy_ticks_total") != std::string::npos) ++pages;
  });
  int64_t now = core::mono_ns();
  core::Decision d;
  // Tick while the scraper scrapes (at least 200 ticks and 20 pages), bounded.
  int ticks = 0;
  const int64_t deadline = core::mono_ns() + 60'000'000'000LL;
  for (; (ticks < 200 || pages.load() < 20) && core::mono_ns() < deadline; ++ticks) {
    for (int i = 0; i < 5; ++i) l->acquire("pro", "race", 4, 1, d, det);
    now += 100'000'000;
    g.d->do_work(now);
  }
  done = true;
  scraper.join();
  ASSERT_GE(pages.load(), 20) << "the scraper got too few pages in 60 s";
  const std::string page = http_get(g.d->metrics_port(), "/metrics");
  EXPECT_GE(sample(page, "sluice_policy_ticks_total"), 20);
  EXPECT_EQ(sample(page, "sluice_admissions_total{tier=\"pro\",decision=\"allowed\",reason=\"allowed\"}") +
                sample(page, "sluice_admissions_total{tier=\"pro\",decision=\"denied\",reason=\"window_full\"}"),
            5 * ticks);
}

TEST(MetricsServer, StopsRightAfterStart) {
  // A SIGTERM during sluiced's startup destroys the server before its thread has
  // reached the accept loop; httplib's stop() alone would be lost there and the
  // join would hang (found by review: 9 of 60 starts hung).
  for (int i = 0; i < 200; ++i) {
    std::string err;
    auto m = metrics::MetricsServer::start({"127.0.0.1", 0}, [] { return std::string(); }, err);
    ASSERT_TRUE(m) << err;
    m.reset();
  }
}

TEST(MetricsPage, ARestartKeepsAdmissionsButCountsRevenueAfresh) {
  // Admissions live in the segment and survive a restart; revenue is counted
  // from the restart at the new run's price, so the counter never goes down.
  MetricsDaemon g;
  ASSERT_TRUE(g.d);
  auto l = g.client();
  ASSERT_TRUE(l);
  std::string det;
  core::Decision d;
  for (int i = 0; i < 3; ++i) ASSERT_EQ(l->acquire("free", "k", 1, 1, d, det), core::Status::ok);
  EXPECT_DOUBLE_EQ(sample(http_get(g.d->metrics_port(), "/metrics"), "sluice_revenue_dollars_total{tier=\"free\"}"),
                   0.03);
  g.d.reset();  // stopped; the segment stays
  daemon::Options o;
  o.segment = g.name;
  o.state_dir = "/tmp/sluicetest-state";
  o.metrics_addr = metrics::ListenAddress{"127.0.0.1", 0};
  g.d = daemon::Daemon::start(o, det);
  ASSERT_TRUE(g.d) << det;
  ASSERT_FALSE(g.d->created());
  ASSERT_EQ(l->acquire("free", "k2", 2, 1, d, det), core::Status::ok);
  const std::string page = http_get(g.d->metrics_port(), "/metrics");
  EXPECT_EQ(sample(page, "sluice_admissions_total{tier=\"free\",decision=\"allowed\",reason=\"allowed\"}"), 4);
  EXPECT_DOUBLE_EQ(sample(page, "sluice_revenue_dollars_total{tier=\"free\"}"), 0.01);
}

// A non-blocking loopback connection to port (past the listen backlog a
// blocking connect would wait for SYN retries).
int connect_nonblocking(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const int rc = ::connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
  EXPECT_TRUE(rc == 0 || errno == EINPROGRESS) << std::strerror(errno);
  return fd;
}

// Sends `request` (then half-closes, if asked) and reads the answer to EOF.
std::string exchange(int port, const std::string &request, bool half_close = false) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0) {
    (void)!write(fd, request.data(), request.size());
    if (half_close) shutdown(fd, SHUT_WR);
    char buf[65536];
    for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
  }
  close(fd);
  return out;
}

std::unique_ptr<metrics::MetricsServer> page_server(std::string page = "a 1\n") {
  std::string err;
  auto server = metrics::MetricsServer::start({"127.0.0.1", 0}, [page] { return page; }, err);
  EXPECT_TRUE(server) << err;
  return server;
}

// Idle connections cost the daemon a bounded number of descriptors, and never
// keep a scraper out: past kMaxConnections a new connection closes the oldest
// one still without a whole request. (httplib's pool took one descriptor per
// connection without bound: 600 idle connections, 600 more open files; the
// bounded pool that replaced it then let 20 of them block every scrape.)
TEST(MetricsServer, IdleConnectionsHoldABoundedNumberOfDescriptorsAndKeepNoScraperOut) {
  auto open_fds = [] { return std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                                            std::filesystem::directory_iterator()); };
  auto server = page_server();
  ASSERT_TRUE(server);
  const auto before = open_fds();
  constexpr int kIdle = 200;
  std::vector<int> idle;
  for (int i = 0; i < kIdle; ++i) idle.push_back(connect_nonblocking(server->port()));
  // Connects past the listen backlog are retried by the kernel after 1 s.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  const auto server_side = open_fds() - before - kIdle;
  EXPECT_LE(server_side, long(metrics::kMaxConnections) + 2) << "descriptors the server took";
  // Still open, and the scrape is answered anyway.
  EXPECT_NE(http_get(server->port(), "/metrics").find("\r\n\r\na 1\n"), std::string::npos);
  for (int fd : idle) ::close(fd);
}

// A client that trickles a header line every 100 ms makes progress on every
// read, so per-read timeouts never end it: the head has one deadline.
TEST(MetricsServer, TricklingClientsNeitherHoldAConnectionNorBlockAScrape) {
  auto server = page_server();
  ASSERT_TRUE(server);
  std::vector<int> slow;
  for (int i = 0; i < 100; ++i) slow.push_back(connect_nonblocking(server->port()));
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);  // bounded
    for (bool first = true; !stop && std::chrono::steady_clock::now() < until; first = false) {
      for (int fd : slow) {
        const char *line = first ? "GET /metrics HTTP/1.1\r\n" : "X-Slow: 1\r\n";
        (void)!::send(fd, line, std::strlen(line), MSG_NOSIGNAL);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (int i = 0; i < 3; ++i)
    EXPECT_NE(http_get(server->port(), "/metrics").find("\r\n\r\na 1\n"), std::string::npos) << "scrape " << i;
  // Past the request deadline every trickler has been closed by the server.
  std::this_thread::sleep_for(metrics::kRequestDeadline + std::chrono::milliseconds(1500));
  int closed = 0;
  for (int fd : slow) {
    char c;
    const ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
    closed += n == 0 || (n < 0 && errno != EAGAIN);
  }
  stop = true;
  trickle.join();
  EXPECT_EQ(closed, 100);
  for (int fd : slow) ::close(fd);
}

// Clients that were answered and hold their connections fill the table; a
// scraper that arrives then must be served, not evicted in the round that
// accepted it (a review found it reset: it was the only one still reading).
TEST(MetricsServer, AScraperArrivingAtAFullTableOfAnsweredClientsIsServed) {
  auto server = page_server();
  ASSERT_TRUE(server);
  std::vector<int> held;
  for (size_t i = 0; i + 1 < metrics::kMaxConnections; ++i) {
    const int fd = connect_nonblocking(server->port());
    const char *req = "GET / HTTP/1.1\r\n\r\n";
    pollfd p{fd, POLLOUT, 0};
    ASSERT_EQ(::poll(&p, 1, 5000), 1);
    ASSERT_EQ(::send(fd, req, std::strlen(req), MSG_NOSIGNAL), ssize_t(std::strlen(req)));
    held.push_back(fd);  // never read, never closed: each lingers on the server
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (int i = 0; i < 3; ++i)
    EXPECT_NE(http_get(server->port(), "/metrics").find("\r\n\r\na 1\n"), std::string::npos) << "scrape " << i;
  for (int fd : held) ::close(fd);
}

// Out of descriptors, accept4 fails and the connection stays in the backlog, so
// the listening socket stays readable: the server must not spin on it.
TEST(MetricsServer, OutOfFileDescriptorsDoesNotSpinTheServerThread) {
  auto server = page_server();
  ASSERT_TRUE(server);
  const int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);  // made before the shortage, connected in it
  ASSERT_GE(client, 0);
  test::DescriptorShortage shortage(client);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(server->port()));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const int rc = ::connect(client, reinterpret_cast<sockaddr *>(&a), sizeof a);  // waits in the backlog
  const int connect_errno = errno;
  const int64_t cpu_ms = test::process_cpu_ms_during(std::chrono::milliseconds(500));
  shortage.end();
  ASSERT_EQ(rc, 0) << std::strerror(connect_errno);
  EXPECT_LT(cpu_ms, 100) << "the server's thread spun on accept4 (EMFILE) for 500 ms";
  // Once descriptors are free again the waiting client is served.
  const char *req = "GET /metrics HTTP/1.1\r\n\r\n";
  ASSERT_EQ(::send(client, req, std::strlen(req), MSG_NOSIGNAL), ssize_t(std::strlen(req)));
  pollfd p{client, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1) << "not served after the shortage";
  char buf[256];
  const ssize_t n = ::recv(client, buf, sizeof buf, 0);
  EXPECT_GT(n, 0);
  EXPECT_EQ(std::string(buf, size_t(std::max<ssize_t>(n, 0))).substr(0, 12), "HTTP/1.1 200");
  ::close(client);
}

TEST(MetricsServer, AnswersEveryRequestShapeClearly) {
  auto server = page_server("b 2\n");
  ASSERT_TRUE(server);
  const int port = server->port();
  struct Case {
    std::string request;
    std::string status;
    std::string in_answer;
  };
  const std::vector<Case> cases = {
      {"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "200", "\r\n\r\nb 2\n"},
      {"GET /metrics?name[]=x HTTP/1.0\r\n\r\n", "200", "Content-Length: 4\r\n"},
      {"GET /metrics HTTP/1.1\n\n", "200", "b 2"},  // bare LFs
      {"HEAD /metrics HTTP/1.1\r\n\r\n", "200", "Content-Length: 4\r\n"},
      {"GET / HTTP/1.1\r\n\r\n", "200", "/metrics"},
      {"GET /nothing HTTP/1.1\r\n\r\n", "404", "not found"},
      {"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405", "Allow: GET, HEAD"},
      {"GET /metrics\r\n\r\n", "400", "request line"},
      {"GET /metrics HTTP/2.0\r\n\r\n", "400", "request line"},
      {"GET /metrics HTTP/1.1\r\nX: " + std::string(metrics::kMaxRequestHeadBytes, 'x') + "\r\n\r\n", "431",
       "request head above"},
      {"GET /metrics?" + std::string(metrics::kMaxRequestHeadBytes, 'x') + " HTTP/1.1\r\n\r\n", "414",
       "request line above"},
      // The absolute form (RFC 9112 3.2.2), as a client configured with a proxy sends it.
      {"GET http://127.0.0.1:9464/metrics HTTP/1.1\r\n\r\n", "200", "\r\n\r\nb 2\n"},
      {"GET HTTP://h/metrics?x=1 HTTP/1.1\r\n\r\n", "200", "\r\n\r\nb 2\n"},
      {"GET http://h HTTP/1.1\r\n\r\n", "200", "/metrics"},
      {"GET http://h/other HTTP/1.1\r\n\r\n", "404", "not found"},
      {"GET ftp://h/metrics HTTP/1.1\r\n\r\n", "404", "not found"},
  };
  for (const Case &c : cases) {
    const std::string got = exchange(port, c.request);
    EXPECT_EQ(got.substr(0, 13), "HTTP/1.1 " + c.status + " ") << c.request.substr(0, 60) << "\n" << got;
    EXPECT_NE(got.find(c.in_answer), std::string::npos) << c.request.substr(0, 60) << "\n" << got;
    EXPECT_NE(got.find("Connection: close\r\n"), std::string::npos) << got;
  }
  EXPECT_EQ(exchange(port, "HEAD /metrics HTTP/1.1\r\n\r\n").find("b 2"), std::string::npos) << "HEAD has no body";
  const std::string head404 = exchange(port, "HEAD /nope HTTP/1.1\r\n\r\n");
  EXPECT_EQ(head404.substr(head404.find("\r\n\r\n") + 4), "") << "HEAD has no body, on a 404 too";
  // A client that half-closes after its request still gets the answer.
  EXPECT_NE(exchange(port, "GET /metrics HTTP/1.0\r\n\r\n", true).find("\r\n\r\nb 2\n"), std::string::npos);
}

TEST(MetricsServer, ALargePageReachesASlowReaderWhole) {
  std::string page;
  for (int i = 0; page.size() < (4u << 20); ++i) page += "sluice_test_series{i=\"" + std::to_string(i) + "\"} 1\n";
  auto server = page_server(page);
  ASSERT_TRUE(server);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(server->port()));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a), 0);
  const std::string req = "GET /metrics HTTP/1.1\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) {
    got.append(buf, size_t(n));
    if (got.size() < (1u << 20)) std::this_thread::sleep_for(std::chrono::microseconds(200));  // slow at first
  }
  close(fd);
  const size_t body = got.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos);
  EXPECT_EQ(got.substr(body + 4), page);
}
