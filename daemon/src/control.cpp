#include "control.hpp"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "sluice/core/segment.hpp"

namespace sluice::daemon {

namespace {

// The peer's supplementary groups, as the kernel recorded them at connect (Linux
// 4.13+). Empty when it cannot tell: governance then goes by uid and primary gid.
std::vector<gid_t> peer_groups(int fd) {
  std::vector<gid_t> g(16);
  for (int attempt = 0; attempt < 4; ++attempt) {
    socklen_t len = socklen_t(g.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g.data(), &len) == 0) {
      g.resize(len / sizeof(gid_t));
      return g;
    }
    if (errno != ERANGE) break;
    g.resize(len / sizeof(gid_t) + 1);  // len says how much is needed
  }
  return {};
}

}  // namespace

std::string control_socket_path(const std::string &segment) { return "/dev/shm/" + segment + ".sock"; }

static bool fill_addr(const std::string &path, sockaddr_un &a, std::string &error) {
  std::memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) {
    error = "socket path too long: " + path;
    return false;
  }
  std::memcpy(a.sun_path, path.c_str(), path.size());
  return true;
}

static int64_t now_ms() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1000 + t.tv_nsec / 1'000'000;
}

// One client, on the server's thread only: reading its line, waiting for the
// loop's answer, then writing it.
struct ControlServer::Conn {
  enum Phase { reading, waiting, writing };
  int fd = -1;
  uint64_t id = 0;
  Peer peer;
  Phase phase = reading;
  int64_t deadline_ms = 0;
  std::string in;
  std::string out;
  size_t sent = 0;
};

void ControlServer::signal_fd(int fd) {
  const uint64_t one = 1;
  (void)!::write(fd, &one, sizeof one);
}

void ControlServer::drain_fd(int fd) {
  uint64_t v;
  (void)!::read(fd, &v, sizeof v);
}

std::unique_ptr<ControlServer> ControlServer::listen(const std::string &path, std::string &error,
                                                     const ControlLimits &limits) {
  std::unique_ptr<ControlServer> s(new ControlServer());
  s->limits_ = limits;
  sockaddr_un a;
  if (!fill_addr(path, a, error)) return nullptr;
  s->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  s->ready_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->wake_fd_ < 0 || s->ready_fd_ < 0) {
    error = std::string("eventfd: ") + std::strerror(errno);
    return nullptr;
  }
  s->fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s->fd_ < 0) {
    error = std::string("socket: ") + std::strerror(errno);
    return nullptr;
  }
  // We hold the segment lock, so a socket left here is stale, unless it is another
  // user's, which we cannot remove (/dev/shm is sticky): say whose.
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    const int err = errno;
    struct stat st {};
    const bool known = ::lstat(path.c_str(), &st) == 0;
    error = "control socket " + path + " cannot be replaced: " + std::strerror(err) +
            (known ? " (it belongs to uid " + std::to_string(st.st_uid) + "; remove it as that user or root, or use "
                     "another --segment)"
                   : "");
    return nullptr;
  }
  if (::bind(s->fd_, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 || ::listen(s->fd_, 64) != 0) {
    error = "control socket " + path + ": " + std::strerror(errno);
    return nullptr;
  }
  // Anyone local may connect and read; governance checks SO_PEERCRED per command.
  ::chmod(path.c_str(), 0666);
  s->path_ = path;
  struct stat bound {};
  if (::lstat(path.c_str(), &bound) == 0) s->path_ino_ = bound.st_ino;
  // The server's thread takes no signals: SIGTERM/SIGINT go to the loop thread,
  // whose poll they interrupt.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  try {
    s->thread_ = std::thread([p = s.get()] { p->run(); });
  } catch (const std::system_error &e) {
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    error = std::string("control socket thread: ") + e.what();
    return nullptr;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return s;
}

ControlServer::~ControlServer() {
  if (thread_.joinable()) {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    signal_fd(wake_fd_);
    thread_.join();
  }
  if (fd_ >= 0) ::close(fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (ready_fd_ >= 0) ::close(ready_fd_);
  // Only our own socket: another sluiced that replaced it (a lock file removed by
  // hand lets one start) keeps its own.
  struct stat now {};
  if (!path_.empty() && ::lstat(path_.c_str(), &now) == 0 && now.st_ino == path_ino_) ::unlink(path_.c_str());
}

size_t ControlServer::connections() const {
  std::lock_guard lock(mu_);
  return open_;
}

size_t ControlServer::serve_pending(const Handler &handler, size_t max_requests, std::chrono::milliseconds budget) {
  drain_fd(ready_fd_);
  const auto until = std::chrono::steady_clock::now() + budget;
  size_t served = 0;
  for (; served < max_requests && (served == 0 || std::chrono::steady_clock::now() < until); ++served) {
    Request r;
    {
      std::lock_guard lock(mu_);
      if (requests_.empty()) break;
      // The oldest request of another uid than the last one run, else the oldest.
      auto next = std::find_if(requests_.begin(), requests_.end(),
                               [&](const Request &q) { return q.peer.uid != last_uid_; });
      if (next == requests_.end()) next = requests_.begin();
      r = std::move(*next);
      requests_.erase(next);
    }
    last_uid_ = r.peer.uid;
    std::string reply = handler(r.line, r.peer);
    {
      std::lock_guard lock(mu_);
      replies_.push_back(Reply{r.conn, std::move(reply)});
    }
    signal_fd(wake_fd_);
  }
  std::lock_guard lock(mu_);
  if (!requests_.empty()) signal_fd(ready_fd_);  // the rest on the next call, after the tick
  return served;
}

void ControlServer::run() {
  std::vector<Conn> conns;
  uint64_t next_id = 1;
  std::vector<pollfd> fds;
  // accept4 failed for want of a descriptor or memory (EMFILE, ENFILE, ENOBUFS,
  // ENOMEM): the connection stays in the backlog and the listening socket stays
  // readable, so it is not polled again until then (else this thread spins).
  int64_t accept_paused_until = 0;

  auto close_conn = [&](Conn &c) {
    ::close(c.fd);
    c.fd = -1;
  };
  auto write_some = [&](Conn &c) {
    while (c.sent < c.out.size()) {
      const ssize_t n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (n <= 0) return close_conn(c);
      c.sent += size_t(n);
    }
    close_conn(c);  // the whole reply is written: done
  };

  // A request line longer than max_line is answered here and never run: its cut
  // would be another request (a reject with half its reason, or none).
  auto refuse_long = [&](Conn &c, int64_t now) {
    c.in.clear();
    c.in.shrink_to_fit();
    c.out = "error\nrequest line longer than " + std::to_string(limits_.max_line) + " bytes: not run\n";
    c.phase = Conn::writing;
    c.deadline_ms = now + limits_.write_timeout_ms;
    write_some(c);
  };
  // A line cut by the read deadline is refused, not run: its cut may be another
  // request ("reject ID" without the reason still on its way, "snap" for
  // "snapshot"). EOF does end a request (a client that half-closes has sent it all).
  auto refuse_unfinished = [&](Conn &c, int64_t now) {
    c.in.clear();
    c.in.shrink_to_fit();
    c.out = "error\nrequest line not finished (no newline) within " + std::to_string(limits_.read_timeout_ms) +
            " ms: not run\n";
    c.phase = Conn::writing;
    c.deadline_ms = now + limits_.write_timeout_ms;
    write_some(c);
  };
  // The request is what arrived up to the newline (or all of it at EOF); a
  // client silent until the read deadline is answered too (an empty request).
  auto dispatch = [&](Conn &c, int64_t now) {
    std::string line = std::move(c.in);
    if (const auto nl = line.find('\n'); nl != std::string::npos) line.resize(nl);
    if (line.size() > limits_.max_line) return refuse_long(c, now);
    c.in.clear();
    c.in.shrink_to_fit();
    c.phase = Conn::waiting;
    c.deadline_ms = now + limits_.answer_timeout_ms;
    {
      std::lock_guard lock(mu_);
      requests_.push_back(Request{c.id, std::move(line), c.peer});
    }
    signal_fd(ready_fd_);
  };
  auto read_some = [&](Conn &c, int64_t now) {
    char buf[512];
    for (;;) {
      const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (n <= 0) return dispatch(c, now);  // EOF or error: answer what arrived
      c.in.append(buf, size_t(n));
      // Past max_line without a newline, the line is too long whatever follows.
      if (c.in.size() > limits_.max_line || std::memchr(buf, '\n', size_t(n))) return dispatch(c, now);
    }
  };
  for (;;) {
    int64_t now = now_ms();
    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    const bool accepting = conns.size() < limits_.max_connections && now >= accept_paused_until;
    fds.push_back({accepting ? fd_ : -1, POLLIN, 0});
    int64_t first_deadline = now + 1000;
    if (now < accept_paused_until) first_deadline = std::min(first_deadline, accept_paused_until);
    for (const Conn &c : conns) {
      const short ev = c.phase == Conn::reading ? POLLIN : c.phase == Conn::writing ? POLLOUT : 0;
      fds.push_back({c.phase == Conn::waiting ? -1 : c.fd, ev, 0});
      first_deadline = std::min(first_deadline, c.deadline_ms);
    }
    const int rc = ::poll(fds.data(), fds.size(), int(std::clamp<int64_t>(first_deadline - now, 0, 1000)));
    if (rc < 0 && errno != EINTR) break;  // cannot happen with valid fds; the destructor still joins
    now = now_ms();

    bool stopping = false;
    if (fds[0].revents & POLLIN) {
      drain_fd(wake_fd_);
      std::vector<Reply> replies;
      {
        std::lock_guard lock(mu_);
        stopping = stop_;
        replies.swap(replies_);
      }
      for (Reply &r : replies) {
        // A connection given up on (answer deadline) has gone: its reply is dropped.
        auto it = std::find_if(conns.begin(), conns.end(), [&](const Conn &c) { return c.id == r.conn; });
        if (it == conns.end()) continue;
        it->out = std::move(r.text);
        it->phase = Conn::writing;
        it->deadline_ms = now + limits_.write_timeout_ms;
        write_some(*it);  // most replies fit the socket buffer at once
      }
      // On stop, the replies the loop has made are still delivered (above and
      // below): each is the outcome of a command that ran (an approval published).
      if (stopping) break;
    }
    // Poll results for connections are by position: handle them before accepting
    // new ones or removing closed ones.
    for (size_t i = 0; i < conns.size(); ++i) {
      Conn &c = conns[i];
      if (c.fd < 0) continue;
      const short rev = fds[i + 2].revents;
      if (c.phase == Conn::reading && rev) read_some(c, now);
      else if (c.phase == Conn::writing && rev) {
        if (rev & (POLLERR | POLLHUP | POLLNVAL)) close_conn(c);
        else write_some(c);
      }
      if (c.fd >= 0 && now >= c.deadline_ms) {
        if (c.phase == Conn::reading) {
          if (c.in.empty()) dispatch(c, now);  // silent: answered as an empty request
          else refuse_unfinished(c, now);
        }
        else close_conn(c);  // no answer from the loop, or a client that does not read
      }
    }
    if (accepting && (fds[1].revents & POLLIN)) {
      while (conns.size() < limits_.max_connections) {
        const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          if (errno != EAGAIN && errno != EWOULDBLOCK) accept_paused_until = now + 100;
          break;  // EAGAIN: nothing waiting
        }
        ucred cred{};
        socklen_t len = sizeof cred;
        if (::getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
          ::close(c);
          continue;
        }
        const auto same_uid = size_t(std::count_if(conns.begin(), conns.end(), [&](const Conn &o) {
          return o.fd >= 0 && o.peer.uid == cred.uid;
        }));
        if (same_uid >= limits_.max_per_uid) {
          // Best effort, never waits: the reply fits an empty socket buffer.
          const std::string msg = "error\ntoo many control connections from uid " + std::to_string(cred.uid) +
                                  " (at most " + std::to_string(limits_.max_per_uid) + " at once)\n";
          (void)!::send(c, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
          ::close(c);
          continue;
        }
        Conn conn;
        conn.fd = c;
        conn.id = next_id++;
        conn.peer = Peer{cred.pid, cred.uid, cred.gid, peer_groups(c)};
        conn.deadline_ms = now + limits_.read_timeout_ms;
        conns.push_back(std::move(conn));
        read_some(conns.back(), now);  // the line is usually there already
      }
    }
    std::erase_if(conns, [](const Conn &c) { return c.fd < 0; });
    std::lock_guard lock(mu_);
    open_ = conns.size();
  }
  // Stopping: finish writing the replies already made, for at most
  // stop_flush_ms (a client that does not read loses the rest); requests the
  // loop never ran are closed without a reply.
  const int64_t flush_until = now_ms() + limits_.stop_flush_ms;
  for (;;) {
    fds.clear();
    std::vector<Conn *> writing;
    for (Conn &c : conns)
      if (c.fd >= 0 && c.phase == Conn::writing) {
        fds.push_back({c.fd, POLLOUT, 0});
        writing.push_back(&c);
      }
    const int64_t left = flush_until - now_ms();
    if (writing.empty() || left <= 0) break;
    if (::poll(fds.data(), fds.size(), int(left)) < 0 && errno != EINTR) break;
    for (size_t i = 0; i < writing.size(); ++i) {
      if (!fds[i].revents) continue;
      if (fds[i].revents & (POLLERR | POLLHUP | POLLNVAL)) close_conn(*writing[i]);
      else write_some(*writing[i]);
    }
  }
  for (Conn &c : conns)
    if (c.fd >= 0) ::close(c.fd);
  std::lock_guard lock(mu_);
  open_ = 0;
}

bool control_request(const std::string &path, const std::string &line, std::string &reply, std::string &error,
                     int timeout_ms, const uid_t *server_uid) {
  sockaddr_un a;
  if (!fill_addr(path, a, error)) return false;
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
    error = "cannot reach sluiced at " + path + ": " + std::strerror(errno) + " (is sluiced running?)";
    ::close(fd);
    return false;
  }
  if (server_uid) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != *server_uid) {
      error = "control socket " + path + " is served by uid " + std::to_string(cred.uid) + ", but the segment " +
              "belongs to uid " + std::to_string(*server_uid) + ": not sending it anything (another user's socket?)";
      ::close(fd);
      return false;
    }
  }
  // The server reads a little past max_line, answers a longer line with an error
  // and closes: the rest of a line longer than the socket buffer then fails to send
  // (EPIPE/ECONNRESET), while the reply is already here to read. MSG_NOSIGNAL: no
  // SIGPIPE for the caller.
  const std::string msg = line + "\n";
  for (size_t sent = 0; sent < msg.size();) {
    const ssize_t n = ::send(fd, msg.data() + sent, msg.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += size_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) break;  // answered what it read, or closed: read on
    error = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
                ? "sluiced did not take the request within " + std::to_string(timeout_ms) + " ms (busy or hung?)"
                : std::string("write: ") + std::strerror(errno);
    ::close(fd);
    return false;
  }
  char buf[4096];
  reply.clear();
  bool timed_out = false;
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    timed_out = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    if (n <= 0) break;
    reply.append(buf, size_t(n));
  }
  ::close(fd);
  if (timed_out) {
    error = "sluiced did not answer within " + std::to_string(timeout_ms) + " ms (busy or hung?)";
    return false;
  }
  if (reply.empty()) {
    error = "sluiced closed the connection without a reply";
    return false;
  }
  return true;
}

bool daemon_request(const std::string &segment, const std::string &line, std::string &reply, std::string &error,
                    int timeout_ms) {
  // As `status` does: "../x" would reach outside /dev/shm.
  if (!core::valid_segment_name(segment)) {
    error = "segment name '" + segment + "' is not valid";
    return false;
  }
  struct stat st {};
  const std::string state = core::shm_path(core::state_segment_name(segment));
  if (::stat(state.c_str(), &st) != 0) {
    error = "no segment '" + segment + "' (" + state + ": " + std::strerror(errno) + "; is sluiced running?)";
    return false;
  }
  const uid_t owner = st.st_uid;
  return control_request(control_socket_path(segment), line, reply, error, timeout_ms, &owner);
}

}  // namespace sluice::daemon
