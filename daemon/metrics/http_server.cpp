#include "metrics/http_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <list>
#include <thread>
#include <vector>

#include "net/numeric_address.hpp"

namespace sluice::metrics {

namespace {

using Clock = std::chrono::steady_clock;

// After the answer: the client's last bytes are read (and dropped) for this long
// before the close, so a close with unread data does not reset the connection
// and lose the answer on the way.
constexpr std::chrono::milliseconds kLinger{1000};

struct Connection {
  enum class Phase { reading, writing, lingering } phase = Phase::reading;
  int fd = -1;
  uint64_t round = 0;  // the poll round that accepted it: never evicted in that round
  Clock::time_point deadline;
  std::string in;
  std::string out;
  size_t sent = 0;
};

std::string answer(int status, const char *reason, const std::string &type, const std::string &body, bool head,
                   const char *extra = "") {
  std::string r = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Type: " + type +
                  "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra +
                  "Connection: close\r\n\r\n";
  if (!head) r += body;
  return r;
}

std::string text_answer(int status, const char *reason, const std::string &text, bool head = false,
                        const char *extra = "") {
  return answer(status, reason, "text/plain; charset=utf-8", text + "\n", head, extra);
}

// RFC 9112 3.2.2: a server must accept the absolute form ("http://host/path",
// as sent to proxies) too; the authority is dropped, the path kept.
std::string origin_form(const std::string &target) {
  const auto scheme_end = target.find("://");
  if (target.empty() || target[0] == '/' || scheme_end == std::string::npos) return target;
  std::string scheme = target.substr(0, scheme_end);
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
  if (scheme != "http" && scheme != "https") return target;
  const auto path = target.find_first_of("/?", scheme_end + 3);
  if (path == std::string::npos) return "/";
  return target[path] == '?' ? "/" + target.substr(path) : target.substr(path);
}

// The answer to one request head ("METHOD TARGET HTTP/1.x", then headers we ignore).
std::string respond(const std::string &head, const MetricsServer::Render &render) {
  const std::string line = head.substr(0, head.find_first_of("\r\n"));
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string::npos || line.compare(sp2 + 1, 7, "HTTP/1.") != 0 || line.size() != sp2 + 9)
    return text_answer(400, "Bad Request", "not an HTTP/1.x request line");
  const std::string method = line.substr(0, sp1);
  std::string path = origin_form(line.substr(sp1 + 1, sp2 - sp1 - 1));
  path = path.substr(0, path.find('?'));
  const bool head_only = method == "HEAD";
  if (method != "GET" && !head_only)
    return text_answer(405, "Method Not Allowed", "only GET and HEAD", false, "Allow: GET, HEAD\r\n");
  if (path == "/metrics") {
    try {
      return answer(200, "OK", "text/plain; version=0.0.4; charset=utf-8", render(), head_only);
    } catch (const Unavailable &e) {
      return text_answer(503, "Service Unavailable", e.what(), head_only, "Retry-After: 1\r\n");
    } catch (const std::exception &e) {
      return text_answer(500, "Internal Server Error", std::string("rendering failed: ") + e.what(), head_only);
    }
  }
  if (path == "/")
    return answer(200, "OK", "text/html; charset=utf-8",
                  "<html><body><h1>sluiced</h1><p><a href=\"/metrics\">/metrics</a></p></body></html>\n", head_only);
  return text_answer(404, "Not Found", "not found: try /metrics", head_only);
}

bool would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == EINTR; }

enum class ReadResult { more, eof, failed };

// Reads what is there, up to 64 KB a round (a client that floods after its
// request must not keep the thread from the others); bytes after the request
// head are dropped.
ReadResult read_some(Connection &c) {
  char buf[4096];
  for (int reads = 0; reads < 16; ++reads) {
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n > 0) {
      if (c.phase == Connection::Phase::reading) c.in.append(buf, size_t(n));
      if (c.in.size() > kMaxRequestHeadBytes) return ReadResult::more;  // answered with 431
      continue;
    }
    if (n == 0) return ReadResult::eof;
    return would_block(errno) ? ReadResult::more : ReadResult::failed;
  }
  return ReadResult::more;
}

// Answers once the request head is complete (or too large). False: close it
// (an error, the client gone before a whole head, or done lingering).
bool after_read(Connection &c, ReadResult r, const MetricsServer::Render &render) {
  if (r == ReadResult::failed || (r == ReadResult::eof && c.phase != Connection::Phase::reading)) return false;
  if (c.phase != Connection::Phase::reading) return true;
  size_t end = c.in.find("\r\n\r\n");
  if (end == std::string::npos) end = c.in.find("\n\n");
  if (end != std::string::npos && end <= kMaxRequestHeadBytes) {
    c.out = respond(c.in.substr(0, end), render);
  } else if (c.in.size() > kMaxRequestHeadBytes) {
    // No line end within the limit: the request line itself is too long (the target).
    if (c.in.find('\n') > kMaxRequestHeadBytes)
      c.out = text_answer(414, "URI Too Long", "request line above " + std::to_string(kMaxRequestHeadBytes) + " bytes");
    else
      c.out = text_answer(431, "Request Header Fields Too Large",
                          "request head above " + std::to_string(kMaxRequestHeadBytes) + " bytes");
  } else {
    return r == ReadResult::more;  // a head still to come, unless the client left
  }
  c.in.clear();
  c.in.shrink_to_fit();
  c.phase = Connection::Phase::writing;
  c.deadline = Clock::now() + kResponseDeadline;
  return true;
}

// Sends what the socket takes. False: close it.
bool write_some(Connection &c) {
  while (c.sent < c.out.size()) {
    const ssize_t n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
    if (n > 0) {
      c.sent += size_t(n);
    } else {
      return n < 0 && would_block(errno);
    }
  }
  ::shutdown(c.fd, SHUT_WR);
  c.phase = Connection::Phase::lingering;
  c.deadline = Clock::now() + kLinger;
  return true;
}

int listen_on(const ListenAddress &addr, int &port, std::string &error) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (!net::numeric_sockaddr(addr.host, addr.port, ss, len)) {
    error = "metrics: '" + addr.host + "' is not a numeric address";
    return -1;
  }
  const int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  // SO_REUSEADDR only: SO_REUSEPORT would let a second daemon share (and split
  // the scrapes of) a port already in use.
  const int yes = 1;
  if (fd < 0 || ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes) != 0 ||
      ::bind(fd, reinterpret_cast<sockaddr *>(&ss), len) != 0 || ::listen(fd, 64) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr *>(&ss), &len) != 0) {
    error = "metrics: cannot listen on " + addr.host + ":" + std::to_string(addr.port) + ": " + std::strerror(errno) +
            " (in use, or not an address here)";
    if (fd >= 0) ::close(fd);
    return -1;
  }
  port = ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in *>(&ss)->sin_port
                                        : reinterpret_cast<sockaddr_in6 *>(&ss)->sin6_port);
  return fd;
}

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
  int listen_fd = -1;
  int wake_fd = -1;
  Render render;
  std::list<Connection> conns;  // in accept order: the front is the oldest
  std::thread thread;

  ~Impl() {
    for (auto &c : conns) ::close(c.fd);
    if (listen_fd >= 0) ::close(listen_fd);
    if (wake_fd >= 0) ::close(wake_fd);
  }

  uint64_t round = 0;
  Clock::time_point accept_paused_until{};  // after EMFILE and the like: see accept_some

  // The oldest connection still reading its request and accepted before this
  // round (one just accepted has not had a chance to send it), or end().
  std::list<Connection>::iterator evictable() {
    return std::find_if(conns.begin(), conns.end(), [&](const Connection &c) {
      return c.phase == Connection::Phase::reading && c.round != round;
    });
  }

  bool accepting(Clock::time_point now) {
    return now >= accept_paused_until && (conns.size() < kMaxConnections || evictable() != conns.end());
  }

  // At most a quarter of the table per round: a connection just accepted gets
  // rounds to send its request before a flood of newer ones could evict it. A
  // connection is evicted only once a new one is in hand.
  void accept_some() {
    for (size_t n = 0; n < kMaxConnections / 4 && accepting(Clock::now()); ++n) {
      const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): the
        // connection stays in the backlog and the socket readable, so it is not
        // polled for a while (else this thread spins).
        if (!would_block(errno) && errno != ECONNABORTED)
          accept_paused_until = Clock::now() + std::chrono::milliseconds(100);
        return;
      }
      if (conns.size() >= kMaxConnections) {
        const auto old = evictable();
        ::close(old->fd);
        conns.erase(old);
      }
      Connection c;
      c.fd = fd;
      c.round = round;
      c.deadline = Clock::now() + kRequestDeadline;
      conns.push_back(std::move(c));
    }
  }

  void serve() {
    std::vector<pollfd> fds;
    for (;;) {
      fds.clear();
      fds.push_back({wake_fd, POLLIN, 0});
      ++round;
      const bool listen = accepting(Clock::now());
      fds.push_back({listen ? listen_fd : -1, POLLIN, 0});
      auto next = Clock::now() + std::chrono::seconds(1);
      if (!listen && accept_paused_until > Clock::now()) next = std::min(next, accept_paused_until);
      for (const auto &c : conns) {
        fds.push_back({c.fd, short(c.phase == Connection::Phase::writing ? POLLOUT : POLLIN), 0});
        next = std::min(next, c.deadline);
      }
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next - Clock::now()).count();
      const int rc = ::poll(fds.data(), fds.size(), int(std::clamp<int64_t>(wait, 0, 1000)));
      if (rc < 0 && errno != EINTR) return;
      if (fds[0].revents) return;  // stop
      // Connections first (their pollfds follow in list order), then new ones.
      const auto now = Clock::now();
      size_t i = 2;
      for (auto it = conns.begin(); it != conns.end(); ++i) {
        Connection &c = *it;
        bool keep = true;
        if (c.phase == Connection::Phase::writing) {
          if (fds[i].revents) keep = write_some(c);  // POLLOUT, or the error a send then reports
        } else if (fds[i].revents) {
          keep = after_read(c, read_some(c), render);
          if (keep && c.phase == Connection::Phase::writing) keep = write_some(c);  // answer at once
        }
        if (keep && now >= c.deadline) keep = false;  // the whole head, or the whole answer, took too long
        if (!keep) {
          ::close(c.fd);
          it = conns.erase(it);
        } else {
          ++it;
        }
      }
      if (fds[1].revents & POLLIN) accept_some();
    }
  }
};

std::unique_ptr<MetricsServer> MetricsServer::start(const ListenAddress &addr, Render render, std::string &error) {
  std::unique_ptr<MetricsServer> m(new MetricsServer());
  m->impl_ = std::make_unique<Impl>();
  Impl &impl = *m->impl_;
  impl.render = std::move(render);
  impl.listen_fd = listen_on(addr, m->port_, error);
  if (impl.listen_fd < 0) return nullptr;
  impl.wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (impl.wake_fd < 0) {
    error = std::string("metrics: eventfd: ") + std::strerror(errno);
    return nullptr;
  }
  m->host_ = addr.host;
  impl.thread = std::thread([&impl] { impl.serve(); });
  return m;
}

MetricsServer::~MetricsServer() {
  if (!impl_ || !impl_->thread.joinable()) return;  // never started (bind failed)
  const uint64_t one = 1;
  (void)!::write(impl_->wake_fd, &one, sizeof one);
  impl_->thread.join();
}

}  // namespace sluice::metrics
