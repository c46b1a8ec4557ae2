// All windows use CLOCK_MONOTONIC: shared by every process on the host, immune to
// wall-clock jumps (invariant 7). glibc serves it from the vDSO, no syscall. The
// hot path reads the same clock through the TSC where it can (tsc_clock.hpp).
#pragma once
#include <cstdint>
#include <ctime>

namespace sluice::core {

inline int64_t mono_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// now - then for a `then` read from client-writable memory: INT64_MAX ("unknown,
// long ago") when it lies in the future or the difference does not fit.
inline int64_t elapsed_since(int64_t now, int64_t then) noexcept {
  int64_t d;
  return then > now || __builtin_sub_overflow(now, then, &d) ? INT64_MAX : d;
}

}  // namespace sluice::core
