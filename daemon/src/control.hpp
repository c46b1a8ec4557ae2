// The control socket: a Unix stream socket next to the segments. One request line
// per connection, one reply. The caller's uid/gid come from SO_PEERCRED, never
// from the request, so governance can check who is asking.
//
// Threads: the server's own thread accepts connections, reads request lines and
// writes replies (non-blocking, each step with a deadline), so a silent or slow
// client never holds the daemon's loop. A complete request is queued for the
// loop thread, which runs it between ticks (serve_pending) and hands the reply
// back: commands stay serialized with the tick, one at a time, on one thread.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sluice::daemon {

std::string control_socket_path(const std::string &segment);

struct Peer {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups (SO_PEERGROUPS), as at connect
};

// What one client may cost the server.
struct ControlLimits {
  size_t max_connections = 64;   // open at once; more wait in the listen backlog
  // Open at once from one uid; more are answered "error" at once and closed, so one
  // local user holding connections cannot keep an approver waiting in the backlog.
  size_t max_per_uid = 32;
  size_t max_line = 4096;        // longest request line; a longer one is answered "error", never run
  int read_timeout_ms = 1000;    // from accept to a whole line; a part line is then refused, not run
  int answer_timeout_ms = 30'000;  // the loop's answer (only a hung loop takes this long)
  int write_timeout_ms = 5000;   // to write the whole reply to a client that reads slowly
  int stop_flush_ms = 200;       // at stop, to finish writing replies the loop has already made
};

class ControlServer {
 public:
  // Binds the socket and starts the server's thread.
  static std::unique_ptr<ControlServer> listen(const std::string &path, std::string &error,
                                               const ControlLimits &limits = {});
  // Stops the thread (it wakes at once), closes every connection, removes the socket.
  // Replies already made are written first (at most stop_flush_ms); requests the
  // loop has not run are closed without a reply.
  ~ControlServer();
  // Readable while complete requests wait for serve_pending (the loop polls it).
  int fd() const { return ready_fd_; }
  // Loop thread only. Runs the handler for requests already read in full, never
  // waiting for a client: up to max_requests, and none after `budget` has been
  // spent (anyone local may send costly commands; the tick must still run).
  // Requests are taken in turn by uid, so one user's flood cannot keep an
  // approver's command at the back. Returns how many it ran; if more wait,
  // fd() stays readable.
  using Handler = std::function<std::string(const std::string &line, const Peer &peer)>;
  size_t serve_pending(const Handler &handler, size_t max_requests = 32,
                       std::chrono::milliseconds budget = std::chrono::milliseconds(50));
  // Connections open now (any state); for tests.
  size_t connections() const;

 private:
  struct Request {
    uint64_t conn = 0;
    std::string line;
    Peer peer;
  };
  struct Reply {
    uint64_t conn = 0;
    std::string text;
  };
  struct Conn;

  ControlServer() = default;
  void run();  // the server's thread
  static void signal_fd(int fd);
  static void drain_fd(int fd);

  ControlLimits limits_;
  int fd_ = -1;        // listening socket
  int wake_fd_ = -1;   // eventfd: replies or stop for the server's thread
  int ready_fd_ = -1;  // eventfd: requests for the loop thread
  std::string path_;
  ino_t path_ino_ = 0;  // the socket file bound at path_ (unlinked on stop only if still ours)
  mutable std::mutex mu_;
  std::deque<Request> requests_;  // at most one per connection
  uid_t last_uid_ = uid_t(-1);    // whose request ran last (loop thread only)
  std::vector<Reply> replies_;
  bool stop_ = false;
  size_t open_ = 0;  // connections, for connections()
  std::thread thread_;
};

// Client side (sluicectl): sends one line, returns the reply.
// Gives up after timeout_ms without a whole reply (a hung daemon cannot hold the caller).
// With `server_uid`, talks only to a server whose listener runs as that uid (the
// peer credentials of a connected socket are the listener's, from the kernel).
constexpr int kRequestTimeoutMs = 10'000;
bool control_request(const std::string &path, const std::string &line, std::string &reply, std::string &error,
                     int timeout_ms = kRequestTimeoutMs, const uid_t *server_uid = nullptr);
// control_request to the daemon of `segment`: the socket must be served by the uid
// that owns the segment. /dev/shm is world-writable, so another local user could
// bind the socket's name first and answer approvals in the daemon's place.
bool daemon_request(const std::string &segment, const std::string &line, std::string &reply, std::string &error,
                    int timeout_ms = kRequestTimeoutMs);

}  // namespace sluice::daemon
