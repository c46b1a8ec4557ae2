// A small HTTP server for /metrics on its own thread (cpp-httplib), so a slow or
// stuck scraper never delays the policy loop. Serves GET /metrics and GET /.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace sluice::metrics {

struct ListenAddress {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port (see MetricsServer::port)
};

// "PORT" (loopback), "HOST:PORT" or "[V6]:PORT"; HOST must be a numeric address
// or "localhost". Returns false with a message naming what is wrong.
bool parse_listen_address(const std::string &text, ListenAddress &out, std::string &error);

// Accepted connections that may wait for a worker; past that the server stops
// accepting until one is free (the rest wait in the kernel's backlog).
constexpr size_t kMaxQueuedConnections = 16;

class MetricsServer {
 public:
  using Render = std::function<std::string()>;  // called on the server's threads
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
