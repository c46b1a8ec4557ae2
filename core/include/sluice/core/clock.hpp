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

}  // namespace sluice::core
