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

// The last len (< 8) bytes at p as a little-endian word, zero-padded: the same
// value as memcpy into a zeroed word, without a variable-length copy.
inline uint64_t load_tail(const unsigned char *p, size_t len) noexcept {
  if (len >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + len - 4, 4);
    return lo | (uint64_t(hi) << ((len - 4) * 8));  // the overlap holds the same bytes
  }
  if (len == 0) return 0;
  return uint64_t(p[0]) | (uint64_t(p[len / 2]) << (len / 2 * 8)) | (uint64_t(p[len - 1]) << ((len - 1) * 8));
}

// Reads little-endian words with memcpy (any alignment), folds the length in.
// `tail` is load_tail of the last len % 8 bytes, for a caller that has it already.
inline uint64_t hash_key_with_tail(const void *data, size_t len, uint64_t tail,
                                   uint64_t seed = 0x5111CE5EEDULL) noexcept {
  const auto *p = static_cast<const unsigned char *>(data);
  uint64_t h = seed ^ (uint64_t(len) * 0x9e3779b97f4a7c15ULL);
  for (size_t left = len; left >= 8; left -= 8, p += 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = mix64(h ^ w) * 0x9e3779b97f4a7c15ULL;
  }
  return mix64(h ^ tail ^ (uint64_t(len) << 56));
}

inline uint64_t hash_key(const void *data, size_t len, uint64_t seed = 0x5111CE5EEDULL) noexcept {
  const auto *p = static_cast<const unsigned char *>(data);
  return hash_key_with_tail(data, len, load_tail(p + (len & ~size_t(7)), len & 7), seed);
}

}  // namespace sluice::core
