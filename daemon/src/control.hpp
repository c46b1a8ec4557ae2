// The control socket: a Unix stream socket next to the segments. One request line
// per connection, one reply. The caller's uid/gid come from SO_PEERCRED, never
// from the request, so governance can check who is asking.
#pragma once
#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>

namespace sluice::daemon {

std::string control_socket_path(const std::string &segment);

struct Peer {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

class ControlServer {
 public:
  static std::unique_ptr<ControlServer> listen(const std::string &path, std::string &error);
  ~ControlServer();
  int fd() const { return fd_; }
  // Serves every connection already waiting; never blocks on accept. A client
  // gets 200 ms to send its line.
  using Handler = std::function<std::string(const std::string &line, const Peer &peer)>;
  void serve_pending(const Handler &handler);

 private:
  ControlServer() = default;
  int fd_ = -1;
  std::string path_;
};

// Client side (sluicectl): sends one line, returns the reply.
// Gives up after timeout_ms without a whole reply (a hung daemon cannot hold the caller).
bool control_request(const std::string &path, const std::string &line, std::string &reply, std::string &error,
                     int timeout_ms = 10'000);

}  // namespace sluice::daemon
