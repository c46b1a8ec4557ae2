#include "metrics/http_server.hpp"

#include <arpa/inet.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

namespace sluice::metrics {

bool parse_listen_address(const std::string &text, ListenAddress &out, std::string &error) {
  std::string host = "127.0.0.1", port = text;
  if (!text.empty() && text[0] == '[') {
    const auto close = text.find("]:");
    if (close == std::string::npos) {
      error = "'" + text + "' is not [IPv6]:PORT";
      return false;
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else if (const auto colon = text.rfind(':'); colon != std::string::npos) {
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  in6_addr a6;
  in_addr a4;
  if (host != "localhost" && inet_pton(AF_INET, host.c_str(), &a4) != 1 && inet_pton(AF_INET6, host.c_str(), &a6) != 1) {
    error = "host '" + host + "' is not a numeric address or localhost";
    return false;
  }
  char *end = nullptr;
  const long p = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || !end || *end || p < 0 || p > 65535) {
    error = "port '" + port + "' is not 0..65535";
    return false;
  }
  out.host = host == "localhost" ? "127.0.0.1" : host;
  out.port = int(p);
  return true;
}

struct MetricsServer::Impl {
  httplib::Server server;
  std::atomic<bool> done{false};  // listen_after_bind() has returned
  std::thread thread;
};

std::unique_ptr<MetricsServer> MetricsServer::start(const ListenAddress &addr, Render render, std::string &error) {
  std::unique_ptr<MetricsServer> m(new MetricsServer());
  m->impl_ = std::make_unique<Impl>();
  auto &srv = m->impl_->server;
  // Two workers: scrapes are rare, and a stuck client must not hold them all.
  srv.new_task_queue = [] { return new httplib::ThreadPool(2); };
  // One request per connection and short timeouts: an idle or trickling client
  // holds a worker (and a stopping daemon) for at most a second or two.
  srv.set_read_timeout(2, 0);
  srv.set_write_timeout(2, 0);
  srv.set_keep_alive_max_count(1);
  srv.set_keep_alive_timeout(1);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a
  // second daemon share (and split the scrapes of) a port already in use.
  srv.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  srv.Get("/metrics", [render](const httplib::Request &, httplib::Response &res) {
    res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  srv.Get("/", [](const httplib::Request &, httplib::Response &res) {
    res.set_content("<html><body><h1>sluiced</h1><p><a href=\"/metrics\">/metrics</a></p></body></html>\n",
                    "text/html; charset=utf-8");
  });
  int port = addr.port;
  if (port == 0) port = srv.bind_to_any_port(addr.host);
  else if (!srv.bind_to_port(addr.host, port)) port = -1;
  if (port <= 0) {
    error = "metrics: cannot listen on " + addr.host + ":" + std::to_string(addr.port) + " (in use, or not an address here)";
    return nullptr;
  }
  m->port_ = port;
  m->host_ = addr.host;
  m->impl_->thread = std::thread([impl = m->impl_.get()] {
    impl->server.listen_after_bind();
    impl->done.store(true);
  });
  return m;
}

MetricsServer::~MetricsServer() {
  if (!impl_ || !impl_->thread.joinable()) return;  // never started (bind failed)
  // httplib's stop() is a no-op until the thread is inside its accept loop, so a
  // stop right after start (a SIGTERM during startup) would be lost and the join
  // would hang: wait until it is running (or has given up), then stop it once.
  while (!impl_->done.load()) {
    if (impl_->server.is_running()) {
      impl_->server.stop();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace sluice::metrics
