#include "advisor/http_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#include "net/numeric_address.hpp"

namespace sluice::advisor::http {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxHeaderLine = 8 * 1024;
constexpr size_t kMaxHeaderBytes = 64 * 1024;  // per response head, and for the trailers
// A chunk-size line is a hex size and, rarely, an extension nobody here reads.
// Long extensions on 1-byte chunks would make the body cap mean gigabytes read.
constexpr size_t kMaxChunkSizeLine = 1024;
constexpr size_t kReadChunk = 16 * 1024;
constexpr auto kCancelPoll = std::chrono::milliseconds(50);

bool is_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string errno_text(int e) { return std::strerror(e); }

// Owns the socket and enforces the deadline and cancellation on every wait.
class Connection {
 public:
  Connection(Clock::time_point deadline, const std::atomic<bool>* cancel)
      : deadline_(deadline), cancel_(cancel) {}
  ~Connection() {
    if (fd_ >= 0) ::close(fd_);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  Error error = Error::none;
  std::string detail;
  size_t bytes_read = 0;

  bool connect(const Url& url) {
    sockaddr_storage addr{};
    socklen_t len = 0;
    if (!net::numeric_sockaddr(url.host, url.port, addr, len))
      return fail(Error::bad_url, "not a numeric address: " + url.host);
    const int family = addr.ss_family;
    fd_ = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return fail(Error::io, "socket: " + errno_text(errno));
    int rc = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), len);
    int err = rc == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
      if (!wait(POLLOUT, "connecting")) return false;
      socklen_t elen = sizeof err;
      if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &elen) != 0) err = errno;
    }
    if (err == ECONNREFUSED)
      return fail(Error::refused, "connection refused by " + url.host + ":" + std::to_string(url.port));
    if (err != 0) return fail(Error::io, "connect: " + errno_text(err));
    return true;
  }

  bool send_all(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n > 0) {
        data.remove_prefix(size_t(n));
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!wait(POLLOUT, "sending the request")) return false;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        return fail(Error::io, "send: " + errno_text(errno));
      }
    }
    return true;
  }

  // One line without its CRLF (a bare LF is tolerated), at most `max` bytes.
  bool line(std::string& out, size_t max = kMaxHeaderLine, const char* what = "header line") {
    out.clear();
    for (;;) {
      const size_t nl = buf_.find('\n', pos_);
      if (nl != std::string::npos) {
        out.assign(buf_, pos_, nl - pos_);
        pos_ = nl + 1;
        if (!out.empty() && out.back() == '\r') out.pop_back();
        return out.size() <= max || fail(Error::io, std::string(what) + " too long");
      }
      if (buf_.size() - pos_ > max) return fail(Error::io, std::string(what) + " too long");
      if (!fill()) return eof_ ? fail(Error::io, "connection closed in the response headers") : false;
    }
  }

  // Appends exactly n bytes to out.
  bool take(size_t n, std::string& out) {
    while (n > 0) {
      const size_t have = std::min(n, buf_.size() - pos_);
      out.append(buf_, pos_, have);
      pos_ += have;
      n -= have;
      if (n > 0 && !fill())
        return eof_ ? fail(Error::io, "connection closed before the end of the body") : false;
    }
    return true;
  }

  // Appends everything until EOF, failing once out exceeds `cap`.
  bool take_until_eof(std::string& out, size_t cap) {
    for (;;) {
      out.append(buf_, pos_, std::string::npos);
      pos_ = buf_.size();
      if (out.size() > cap) return too_large(cap);
      if (!fill()) return eof_;
    }
  }

  bool too_large(size_t cap) {
    return fail(Error::too_large, "response body larger than " + std::to_string(cap) + " bytes");
  }

  bool fail(Error e, std::string what) {
    if (error == Error::none) {
      error = e;
      detail = std::move(what);
    }
    return false;
  }

 private:
  // False once cancelled or past the deadline.
  bool in_time(const char* doing, Clock::time_point now) {
    if (cancel_ && cancel_->load(std::memory_order_relaxed))
      return fail(Error::io, std::string("cancelled while ") + doing);
    if (now >= deadline_) return fail(Error::timeout, std::string("deadline passed while ") + doing);
    return true;
  }

  bool wait(short events, const char* doing) {
    for (;;) {
      const auto now = Clock::now();
      if (!in_time(doing, now)) return false;
      auto slice = deadline_ - now;
      if (cancel_) slice = std::min<Clock::duration>(slice, kCancelPoll);
      // Round up so a sub-millisecond remainder does not spin.
      const auto ms = std::chrono::ceil<std::chrono::milliseconds>(slice).count();
      pollfd p{fd_, events, 0};
      const int rc = ::poll(&p, 1, int(std::max<int64_t>(ms, 1)));
      if (rc > 0) return true;
      if (rc < 0 && errno != EINTR) return fail(Error::io, "poll: " + errno_text(errno));
    }
  }

  // Reads more into buf_. False at EOF (eof_ set) or on error. The deadline
  // is checked on every read, not only when one would block: a server that
  // always has the next byte ready must not outlast it.
  bool fill() {
    if (!in_time("reading the response", Clock::now())) return false;
    if (pos_ > kReadChunk && pos_ * 2 > buf_.size()) {  // drop consumed bytes
      buf_.erase(0, pos_);
      pos_ = 0;
    }
    char chunk[kReadChunk];
    for (;;) {
      const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n > 0) {
        buf_.append(chunk, size_t(n));
        bytes_read += size_t(n);
        return true;
      }
      if (n == 0) {
        eof_ = true;
        return false;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!wait(POLLIN, "reading the response")) return false;
      } else if (errno != EINTR) {
        return fail(Error::io, "recv: " + errno_text(errno));
      }
    }
  }

  int fd_ = -1;
  Clock::time_point deadline_;
  const std::atomic<bool>* cancel_;
  std::string buf_;
  size_t pos_ = 0;
  bool eof_ = false;
};

struct Head {
  int status = 0;
  std::string reason;
  bool chunked = false;
  bool has_length = false;
  size_t length = 0;
};

// "HTTP/1.<digit> <3 digits>" then a space and a reason, or the end.
bool is_status_line(std::string_view l) {
  return l.size() >= 12 && l.substr(0, 7) == "HTTP/1." && l[7] >= '0' && l[7] <= '9' && l[8] == ' ' &&
         is_digits(l.substr(9, 3)) && (l.size() == 12 || l[12] == ' ');
}

// One header into h. Framing is taken strictly (RFC 9112 section 6): a body
// whose end two headers disagree about is refused, never guessed at.
bool read_header(Connection& c, std::string_view name_raw, std::string_view value_raw, Head& h) {
  const std::string name = lower(trim(name_raw));
  const std::string value = lower(trim(value_raw));
  if (name == "transfer-encoding") {
    // Only plain chunked: a coding before it (gzip, ...) could not be decoded.
    if (value != "chunked" || h.chunked)
      return c.fail(Error::io, "unsupported Transfer-Encoding: " + value.substr(0, 80));
    h.chunked = true;
  } else if (name == "content-length") {
    if (!is_digits(value) || value.size() > 18) return c.fail(Error::io, "bad Content-Length");
    const size_t length = std::stoull(value);
    if (h.has_length && length != h.length) return c.fail(Error::io, "conflicting Content-Length headers");
    h.has_length = true;
    h.length = length;
  }
  if (h.chunked && h.has_length)
    return c.fail(Error::io, "both Content-Length and Transfer-Encoding: ambiguous body framing");
  return true;
}

// Header lines up to the blank one, all counted against one byte cap.
template <class OnHeader>
bool read_fields(Connection& c, const char* what, OnHeader on_header) {
  std::string line;
  size_t bytes = 0;
  for (;;) {
    if (!c.line(line)) return false;
    bytes += line.size() + 2;
    if (bytes > kMaxHeaderBytes) return c.fail(Error::io, std::string(what) + " too large");
    if (line.empty()) return true;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) return c.fail(Error::io, std::string("malformed line in the ") + what);
    const std::string_view l(line);
    if (!on_header(l.substr(0, colon), l.substr(colon + 1))) return false;
  }
}

bool read_head(Connection& c, Head& h) {
  std::string line;
  // Skip interim 1xx responses; the real one follows. Each is a whole head of
  // its own, so nothing it says carries over.
  do {
    h = Head{};
    if (!c.line(line)) return false;
    if (!is_status_line(line))
      return c.fail(Error::io, "not an HTTP/1.x status line: " + line.substr(0, 80));
    h.status = std::stoi(line.substr(9, 3));
    h.reason = line.size() > 12 ? std::string(trim(std::string_view(line).substr(13))) : "";
    if (!read_fields(c, "response headers",
                     [&](std::string_view n, std::string_view v) { return read_header(c, n, v, h); }))
      return false;
  } while (h.status >= 100 && h.status < 200);
  return true;
}

bool read_chunked(Connection& c, std::string& body, size_t cap) {
  std::string line;
  for (;;) {
    if (!c.line(line, kMaxChunkSizeLine, "chunk size line")) return false;
    const std::string_view size_text = trim(std::string_view(line).substr(0, line.find(';')));
    if (size_text.empty() || size_text.size() > 15 ||
        size_text.find_first_not_of("0123456789abcdefABCDEF") != std::string_view::npos)
      return c.fail(Error::io, "bad chunk size");
    const size_t size = std::stoull(std::string(size_text), nullptr, 16);
    if (size == 0) break;
    if (body.size() + size > cap) return c.too_large(cap);
    if (!c.take(size, body) || !c.line(line)) return false;
    if (!line.empty()) return c.fail(Error::io, "missing CRLF after chunk");
  }
  // Trailers, up to the blank line, read and dropped; capped like headers.
  return read_fields(c, "trailers", [](std::string_view, std::string_view) { return true; });
}

std::string host_header(const Url& u) {
  const bool v6 = u.host.find(':') != std::string::npos;
  return (v6 ? "[" + u.host + "]" : u.host) + ":" + std::to_string(u.port);
}

Response exchange(const Request& req) {
  Response r;
  Url url;
  if (!parse_url(req.url, &url, &r.detail)) {
    r.error = Error::bad_url;
    return r;
  }
  Connection c(req.deadline, req.cancel);
  std::string msg = "POST " + url.path + req.path + " HTTP/1.1\r\nHost: " + host_header(url) +
                    "\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
                    "Connection: close\r\nContent-Length: " + std::to_string(req.body.size()) + "\r\n";
  for (const auto& [name, value] : req.headers) msg += name + ": " + value + "\r\n";
  msg += "\r\n";
  msg += req.body;

  Head h;
  bool ok = c.connect(url) && c.send_all(msg) && read_head(c, h);
  r.status = h.status;
  if (ok) {
    if (h.status == 204 || h.status == 304) {
      // No body by definition.
    } else if (h.chunked) {
      ok = read_chunked(c, r.body, req.max_body_bytes);
    } else if (h.has_length) {
      ok = h.length <= req.max_body_bytes ? c.take(h.length, r.body) : c.too_large(req.max_body_bytes);
    } else {
      ok = c.take_until_eof(r.body, req.max_body_bytes);
    }
  }
  r.bytes_read = c.bytes_read;
  if (!ok) {
    r.error = c.error == Error::none ? Error::io : c.error;
    r.detail = c.detail;
    r.body.clear();
    r.body.shrink_to_fit();
  } else if (h.status < 200 || h.status > 299) {
    r.detail = "HTTP " + std::to_string(h.status) + (h.reason.empty() ? "" : " " + h.reason);
  }
  return r;
}

}  // namespace

bool parse_url(const std::string& url, Url* out, std::string* error) {
  auto bad = [&](const std::string& why) {
    if (error) *error = "advisor URL \"" + url + "\": " + why;
    return false;
  };
  const std::string l = lower(url);
  if (l.rfind("https://", 0) == 0)
    return bad("https:// is not supported; the advisor speaks plain http:// to a model server "
               "on this host (e.g. http://127.0.0.1:11434)");
  if (l.rfind("http://", 0) != 0) return bad("must start with http://");
  std::string_view rest = std::string_view(url).substr(7);
  const size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string path(slash == std::string_view::npos ? "" : rest.substr(slash));
  if (authority.find('@') != std::string_view::npos) return bad("user info is not supported");
  Url u;
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated [IPv6] address");
    u.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("expected ':' after ]");
      port_text = after.substr(1);
      if (port_text.empty()) return bad("empty port");
    }
  } else {
    const size_t colon = authority.find(':');
    u.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty()) return bad("empty port");
    }
  }
  if (u.host.empty()) return bad("missing host");
  if (lower(u.host) == "localhost") u.host = "127.0.0.1";
  in6_addr probe;
  if (::inet_pton(AF_INET, u.host.c_str(), &probe) != 1 &&
      ::inet_pton(AF_INET6, u.host.c_str(), &probe) != 1)
    return bad("host must be a numeric address or localhost (no DNS lookups: they could "
               "block past the advisor's timeout)");
  if (!port_text.empty()) {
    if (!is_digits(port_text) || port_text.size() > 5) return bad("bad port");
    u.port = std::stoi(std::string(port_text));
    if (u.port < 1 || u.port > 65535) return bad("port out of range");
  }
  for (const char c : path)
    if (static_cast<unsigned char>(c) <= 0x20 || c == '?' || c == '#' || c == 0x7f)
      return bad("path may not contain spaces, control characters, '?' or '#'");
  while (!path.empty() && path.back() == '/') path.pop_back();
  u.path = std::move(path);
  *out = std::move(u);
  return true;
}

Response post(const Request& req) {
  try {
    return exchange(req);
  } catch (const std::exception& e) {  // bad_alloc, or a stoi on a checked string
    Response r;
    r.error = Error::io;
    r.detail = std::string("HTTP client failure: ") + e.what();
    return r;
  }
}

}  // namespace sluice::advisor::http
