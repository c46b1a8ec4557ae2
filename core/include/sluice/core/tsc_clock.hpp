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
// The TSC is used only when the kernel itself uses it as its clocksource (so it is
// invariant and synchronised across CPUs) and the CPU says constant_tsc and
// nonstop_tsc; otherwise, and whenever the parameters are being rewritten for too
// long (a sluiced killed mid-write), the clock is clock_gettime(CLOCK_MONOTONIC).
// Recorded ring times are max(now, previous), so clocks that differ by the
// calibration error cannot break exactness (docs/ADMISSION.md), only move a
// window's edge by that error.
#pragma once
#include <cstdint>

#include "sluice/core/clock.hpp"
#include "sluice/core/layout.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define SLUICE_HAVE_TSC 1
#else
#define SLUICE_HAVE_TSC 0
#endif

namespace sluice::core {

__extension__ using Int128 = __int128;
__extension__ using UInt128 = unsigned __int128;

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
  const Int128 d = Int128(int64_t(tsc - tsc0)) * Int128(mult);
  return ns0 + int64_t(d >> 32);
}

// True if this process may read time from the TSC: the kernel's clocksource is
// "tsc" and /proc/cpuinfo has constant_tsc and nonstop_tsc (read once per process),
// and $SLUICE_CLOCK is not "monotonic" (read on every call).
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
    for (int spin = 0; spin < kMaxSpins; ++spin) {
      const uint64_t s = p_->seq.load(acq);
      if (s & 1) continue;  // being rewritten
      const uint64_t tsc0 = p_->tsc0.load(rlx);
      const int64_t ns0 = p_->ns0.load(rlx);
      const uint64_t mult = p_->mult.load(rlx);
      const uint64_t tsc = read_tsc();
      std::atomic_thread_fence(acq);
      if (p_->seq.load(rlx) == s) return tsc_to_ns(tsc, tsc0, ns0, mult);
    }
    return mono_ns();  // a writer that died mid-update: the parameters stay odd until sluiced returns
  }

 private:
  static constexpr int kMaxSpins = 1000;
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
