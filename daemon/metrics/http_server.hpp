// A small HTTP/1.1 server for /metrics on its own thread, so a slow or stuck
// scraper never delays the policy loop. Serves GET (and HEAD) /metrics and /.
//
// One thread polls every connection; each has a deadline for its whole request
// head (not per read, so a client trickling a header line a second cannot hold
// it) and one for its answer. At most kMaxConnections are open: a new one then
// closes the oldest still reading its request, so clients that never finish a
// request cannot keep a scraper out (slowloris) and cost a bounded number of
// descriptors.
#pragma once
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

namespace sluice::metrics {

struct ListenAddress {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port (see MetricsServer::port)
};

// "PORT" (loopback), "HOST:PORT" or "[V6]:PORT"; HOST must be a numeric address
// or "localhost". Returns false with a message naming what is wrong.
bool parse_listen_address(const std::string &text, ListenAddress &out, std::string &error);

constexpr size_t kMaxConnections = 64;
constexpr size_t kMaxRequestHeadBytes = 8 * 1024;
constexpr std::chrono::milliseconds kRequestDeadline{2000};   // from accept to the end of the head
constexpr std::chrono::milliseconds kResponseDeadline{10000};  // to send the whole answer

// Thrown by a Render that has no page yet (a daemon still starting): the
// scrape gets 503 with Retry-After, so Prometheus marks it down instead of
// storing an empty, successful scrape.
struct Unavailable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class MetricsServer {
 public:
  using Render = std::function<std::string()>;  // called on the server's thread; may throw Unavailable
  // Binds now (so a taken port is an error at startup), serves on a thread.
  static std::unique_ptr<MetricsServer> start(const ListenAddress &addr, Render render, std::string &error);
  ~MetricsServer();  // stops and joins
  int port() const { return port_; }
  const std::string &host() const { return host_; }

 private:
  MetricsServer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
  std::string host_;
};

}  // namespace sluice::metrics
