// A numeric IPv4 or IPv6 address and a port as a sockaddr, with no name lookup
// (a DNS query could block past a deadline). Used by the advisor's HTTP client
// and the /metrics server.
#pragma once
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <string>

namespace sluice::net {

// False if `host` is not a numeric address (brackets already stripped).
inline bool numeric_sockaddr(const std::string &host, int port, sockaddr_storage &out, socklen_t &len) {
  out = {};
  auto *v4 = reinterpret_cast<sockaddr_in *>(&out);
  auto *v6 = reinterpret_cast<sockaddr_in6 *>(&out);
  if (::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(uint16_t(port));
    len = sizeof *v4;
    return true;
  }
  if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(uint16_t(port));
    len = sizeof *v6;
    return true;
  }
  return false;
}

}  // namespace sluice::net
