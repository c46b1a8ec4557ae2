// Stable 64-bit key hash. Never std::hash: it may differ between the processes
// (and compilers) that share one table. Full key bytes are still compared, so the
// hash only chooses where to probe.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sluice::core {

inline uint64_t mix64(uint64_t x) noexcept {  // splitmix64 finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// Reads little-endian words with memcpy (any alignment), folds the length in.
inline uint64_t hash_key(const void *data, size_t len, uint64_t seed = 0x5111CE5EEDULL) noexcept {
  const auto *p = static_cast<const unsigned char *>(data);
  uint64_t h = seed ^ (uint64_t(len) * 0x9e3779b97f4a7c15ULL);
  while (len >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = mix64(h ^ w) * 0x9e3779b97f4a7c15ULL;
    p += 8;
    len -= 8;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, p, len);
  return mix64(h ^ tail ^ (uint64_t(len) << 56));
}

}  // namespace sluice::core
