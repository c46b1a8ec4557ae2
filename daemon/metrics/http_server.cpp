#include "metrics/http_server.hpp"

#include <arpa/inet.h>
#include <httplib.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sluice::metrics {

namespace {

// httplib's ThreadPool queues every accepted connection without bound, each
// holding a descriptor until a worker gets to it: 600 idle connections from a local
// user gave sluiced 600 more open files, on the way to its limit (then the control
// socket and the audit store cannot open theirs). Here at most `max_queued`
// connections wait; past that the acceptor serves the next one itself, so it stops
// accepting and the rest wait in the kernel's backlog, holding no descriptor of ours.
class BoundedPool : public httplib::TaskQueue {
 public:
  BoundedPool(size_t workers, size_t max_queued) : max_queued_(max_queued) {
    for (size_t i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lock(mu_);
      if (jobs_.size() < max_queued_) {
        jobs_.push_back(std::move(fn));
        cv_.notify_one();
        return;
      }
    }
    fn();  // the acceptor's thread: bounded by the read and write timeouts
  }
  void shutdown() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto &t : threads_) t.join();
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stopping, and nothing left: every queued socket was served
        fn = std::move(jobs_.front());
        jobs_.pop_front();
      }
      fn();
    }
  }
  const size_t max_queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace

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
  // Digits only: strtol would also take " 80", "+0" and "-0".
  unsigned long p = 0;
  const bool digits = !port.empty() && port.find_first_not_of("0123456789") == std::string::npos &&
                      std::from_chars(port.data(), port.data() + port.size(), p).ec == std::errc();
  if (!digits || p > 65535) {
    error = "port '" + port + "' is not 0..65535 (digits only)";
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
  // Two workers: scrapes are rare, and a stuck client must not hold them all. At
  // most kMaxQueuedConnections accepted connections wait for them (BoundedPool).
  srv.new_task_queue = [] { return new BoundedPool(2, kMaxQueuedConnections); };
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
