#include "control.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sluice::daemon {

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

std::unique_ptr<ControlServer> ControlServer::listen(const std::string &path, std::string &error) {
  std::unique_ptr<ControlServer> s(new ControlServer());
  sockaddr_un a;
  if (!fill_addr(path, a, error)) return nullptr;
  s->fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s->fd_ < 0) {
    error = std::string("socket: ") + std::strerror(errno);
    return nullptr;
  }
  ::unlink(path.c_str());  // we hold the segment lock: any old socket is stale
  if (::bind(s->fd_, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 || ::listen(s->fd_, 16) != 0) {
    error = "control socket " + path + ": " + std::strerror(errno);
    return nullptr;
  }
  // Anyone local may connect and read; governance checks SO_PEERCRED per command.
  ::chmod(path.c_str(), 0666);
  s->path_ = path;
  return s;
}

ControlServer::~ControlServer() {
  if (fd_ >= 0) ::close(fd_);
  if (!path_.empty()) ::unlink(path_.c_str());
}

void ControlServer::serve_pending(const Handler &handler) {
  for (;;) {
    const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return;  // EAGAIN: nothing waiting
    ucred cred{};
    socklen_t len = sizeof cred;
    timeval tv{0, 200'000};
    ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    std::string line;
    if (::getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
      char buf[512];
      while (line.size() < 4096 && line.find('\n') == std::string::npos) {
        const ssize_t n = ::read(c, buf, sizeof buf);
        if (n <= 0) break;
        line.append(buf, size_t(n));
      }
      if (const auto nl = line.find('\n'); nl != std::string::npos) line.resize(nl);
      const std::string reply = handler(line, Peer{cred.pid, cred.uid, cred.gid});
      for (size_t off = 0; off < reply.size();) {
        const ssize_t n = ::write(c, reply.data() + off, reply.size() - off);
        if (n <= 0) break;
        off += size_t(n);
      }
    }
    ::close(c);
  }
}

bool control_request(const std::string &path, const std::string &line, std::string &reply, std::string &error,
                     int timeout_ms) {
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
  const std::string msg = line + "\n";
  if (::write(fd, msg.data(), msg.size()) != ssize_t(msg.size())) {
    error = std::string("write: ") + std::strerror(errno);
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

}  // namespace sluice::daemon
