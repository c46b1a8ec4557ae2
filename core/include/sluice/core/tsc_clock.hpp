// The hot path's clock: CLOCK_MONOTONIC read through the TSC.
//
// clock_gettime costs 27-67 ns on the VMs this runs on (an lfence'd rdtscp, a
// seqlock and a call); a plain rdtsc is ~12 ns. sluiced calibrates the TSC against
// CLOCK_MONOTONIC and publishes (tsc0, ns0, mult) in the read-only policy segment
// under a sequence word, the way the kernel publishes its vDSO data page. Clients
// compute ns0 + (tsc - tsc0) * mult / 2^32. sluiced re-anchors on every heartbeat,
// continuous at the switch, slewing the rate so the two clocks stay within
// microseconds (invariant 7: every process reads one monotonic host clock).
//
// The TSC is used only while sluiced says so (it checks that the kernel itself
// keeps time with the TSC, so it is invariant and synchronised across CPUs, and
// that the CPU says constant_tsc and nonstop_tsc), only within a few seconds after
// the last anchor (a stopped sluiced, a suspend or a TSC reset never yields a wild
// time) and never while the parameters are being rewritten (or a writer died
// half-way). Otherwise the clock is clock_gettime(CLOCK_MONOTONIC).
// Recorded ring times are max(now, previous), so clocks that differ by the
// calibration error cannot break exactness (docs/ADMISSION.md), only move a
// window's edge by that error.
#pragma once
#include <cstdint>

#include "sluice/core/clock.hpp"
#include "sluice/core/layout.hpp"

#if defined(__x86_64__)
#include <x86intrin.h>
#define SLUICE_HAVE_TSC 1
#else
#define SLUICE_HAVE_TSC 0
#endif

namespace sluice::core {

#if defined(__SIZEOF_INT128__)
__extension__ using Int128 = __int128;
__extension__ using UInt128 = unsigned __int128;
#endif

inline uint64_t read_tsc() noexcept {
#if SLUICE_HAVE_TSC
  return __rdtsc();
#else
  return 0;
#endif
}

// ns0 + (tsc - tsc0) * mult >> 32, with a TSC read on another CPU a few ticks
// behind tsc0 giving a time just before ns0 rather than ~2^64 ticks later.
inline int64_t tsc_to_ns(uint64_t tsc, uint64_t tsc0, int64_t ns0, uint64_t mult) noexcept {
#if defined(__SIZEOF_INT128__)
  const Int128 d = Int128(int64_t(tsc - tsc0)) * Int128(mult);
  return ns0 + int64_t(d >> 32);
#else
  return ns0 + int64_t(double(int64_t(tsc - tsc0)) * double(mult) / 4294967296.0);
#endif
}

// True if this process may read time from the TSC: the kernel's clocksource was
// "tsc" and /proc/cpuinfo has constant_tsc and nonstop_tsc (read once per process),
// and $SLUICE_CLOCK is not "monotonic" (read on every call). sluiced re-reads the
// clocksource every second and publishes kClockMonotonic when it changes.
bool tsc_usable();

class TscClock {
 public:
  // A clock on clock_gettime alone (no segment, or the TSC not usable).
  TscClock() = default;
  // Reads the parameters `p` publishes when both it and this process allow the TSC.
  explicit TscClock(const ClockParams *p) : p_(p && p->kind.load(std::memory_order_acquire) == kClockTsc && tsc_usable() ? p : nullptr) {}

  bool uses_tsc() const { return p_ != nullptr; }

  int64_t now_ns() const noexcept {
    if (!p_) return mono_ns();
    constexpr auto acq = std::memory_order_acquire;
    constexpr auto rlx = std::memory_order_relaxed;
    for (int attempt = 0; attempt < 4; ++attempt) {
      const uint64_t s = p_->seq.load(acq);
      if (s & 1) break;  // being rewritten, or the writer died half-way
      const uint32_t kind = p_->kind.load(rlx);
      const uint64_t tsc0 = p_->tsc0.load(rlx);
      const int64_t ns0 = p_->ns0.load(rlx);
      const uint64_t mult = p_->mult.load(rlx);
      const uint64_t valid = p_->valid_ticks.load(rlx);
      const uint64_t tsc = read_tsc();
      std::atomic_thread_fence(acq);
      if (p_->seq.load(rlx) != s) continue;
      const int64_t d = int64_t(tsc - tsc0);
      if (kind != kClockTsc || mult == 0 || d < -kMaxTicksBehind || d > int64_t(valid & (~0ull >> 1))) break;
      return tsc_to_ns(tsc, tsc0, ns0, mult);
    }
    return mono_ns();
  }

  // Another CPU's TSC may read a little behind the one that took the anchor.
  static constexpr int64_t kMaxTicksBehind = int64_t(1) << 20;

 private:
  const ClockParams *p_ = nullptr;
};

// How far `c` reads from clock_gettime(CLOCK_MONOTONIC) now (> 0: ahead), from the
// tightest of a few brackets so a preemption does not read as an offset.
int64_t offset_from_monotonic(const TscClock &c);

// ---- owner side -------------------------------------------------------------
// Writes the first calibration (a ~10 ms spin against CLOCK_MONOTONIC), or marks
// the parameters kClockMonotonic where the TSC is not usable.
void calibrate_clock(ClockParams &p);
// Re-anchors at now: continuous with the published clock, with a rate from the long
// baseline since the first calibration, slewed to remove the measured offset over
// the next few seconds (or stepped, if it is off by more than 10 ms). A pair whose
// parameters are missing or damaged is calibrated afresh.
void recalibrate_clock(ClockParams &p);

}  // namespace sluice::core
