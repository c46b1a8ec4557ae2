// A minimal blocking HTTP/1.1 POST client for a model server on loopback.
//
// Written over plain sockets (not cpp-httplib) because the advisor needs two
// guarantees that per-read socket timeouts do not give: one deadline for the
// whole exchange (connect, send, headers, body; a server that trickles bytes
// cannot extend it) and a cap on the body that stops reading as soon as it is
// exceeded. Only http:// with a numeric address or "localhost" is accepted:
// no TLS, and no DNS lookups, which could block past the deadline.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace sluice::advisor::http {

struct Url {
  std::string host;  // numeric IPv4 or IPv6 (no brackets)
  int port = 80;
  std::string path;  // "" or "/prefix", no trailing '/'
};

// Parses "http://host[:port][/prefix]". On failure returns false and sets
// *error (https:// is refused with a message that says so).
bool parse_url(const std::string& url, Url* out, std::string* error);

enum class Error {
  none,
  bad_url,    // unparsable or unsupported URL
  refused,    // connection refused: nothing listens there
  timeout,    // the deadline passed
  too_large,  // the body exceeds max_body_bytes
  io,         // other socket errors, broken HTTP framing, cancellation
};

struct Response {
  Error error = Error::none;
  int status = 0;       // set once the status line was read
  std::string body;     // complete body (only when error == none)
  std::string detail;   // what went wrong, for logs
  size_t bytes_read = 0;  // raw bytes received, headers included
};

struct Request {
  std::string url;  // base URL; `path` is appended to its prefix
  std::string path;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;  // sent as application/json
  std::chrono::steady_clock::time_point deadline;
  size_t max_body_bytes = 1 << 20;
  // Polled at least every 50 ms; when it becomes true the call returns Error::io.
  const std::atomic<bool>* cancel = nullptr;
};

// Never throws. Non-2xx statuses are not errors here: check Response::status.
Response post(const Request& req);

}  // namespace sluice::advisor::http
