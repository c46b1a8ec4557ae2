#include "sluice/core/tsc_clock.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace sluice::core {

namespace {

constexpr auto rlx = std::memory_order_relaxed;
constexpr int64_t kCalibrationNs = 10'000'000;  // first calibration: error ~ 2 x 30 ns / 10 ms, then refined
constexpr int64_t kSlewNs = 2'000'000'000;      // an offset is removed over this much time
constexpr int64_t kStepNs = 10'000'000;         // beyond this offset the clock steps instead
constexpr double kMaxSlew = 1e-3;               // at most 1,000 ppm faster or slower while slewing
constexpr int64_t kValidNs = 5'000'000'000;     // clients leave the TSC this long after the last anchor
constexpr int64_t kBaselineNs = 60'000'000'000; // the rate is measured over at most about this long
constexpr int64_t kRecheckNs = 1'000'000'000;   // the owner re-reads the kernel's clocksource this often

std::string read_small_file(const char *path, size_t cap) {
  std::string out;
  if (FILE *f = std::fopen(path, "r")) {
    char buf[4096];
    size_t n;
    while (out.size() < cap && (n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
    std::fclose(f);
  }
  return out;
}

bool cpu_flags_have(const std::string &cpuinfo, const char *flag) {
  const std::string needle = std::string(" ") + flag;
  for (size_t at = cpuinfo.find(needle); at != std::string::npos; at = cpuinfo.find(needle, at + 1)) {
    const char next = at + needle.size() < cpuinfo.size() ? cpuinfo[at + needle.size()] : '\n';
    if (next == ' ' || next == '\n') return true;
  }
  return false;
}

bool cpu_has_invariant_tsc() {
#if SLUICE_HAVE_TSC
  const std::string cpuinfo = read_small_file("/proc/cpuinfo", 1 << 20);
  return cpu_flags_have(cpuinfo, "constant_tsc") && cpu_flags_have(cpuinfo, "nonstop_tsc");
#else
  return false;
#endif
}

// The kernel stops using the TSC when its watchdog finds it unstable: read live.
bool kernel_keeps_time_with_tsc() {
  return read_small_file("/sys/devices/system/clocksource/clocksource0/current_clocksource", 64) == "tsc\n";
}

bool env_forbids_tsc() {
  const char *force = std::getenv("SLUICE_CLOCK");
  return force && std::strcmp(force, "monotonic") == 0;
}

// The owner's view, re-read at most once a second (it runs on every heartbeat).
bool owner_may_use_tsc() {
  static int64_t checked_at = INT64_MIN;
  static bool kernel_ok = false;
  const int64_t now = mono_ns();
  if (checked_at == INT64_MIN || now - checked_at >= kRecheckNs) {
    kernel_ok = kernel_keeps_time_with_tsc();
    checked_at = now;
  }
  static const bool cpu_ok = cpu_has_invariant_tsc();
  return cpu_ok && kernel_ok && !env_forbids_tsc();
}

// One (tsc, CLOCK_MONOTONIC) pair: the tightest bracket of a few tries.
void measure(uint64_t &tsc, int64_t &ns) {
  tsc = read_tsc();
  ns = mono_ns();
  uint64_t best = ~0ull;
  for (int i = 0; i < 7; ++i) {
    const uint64_t a = read_tsc();
    const int64_t n = mono_ns();
    const uint64_t b = read_tsc();
    if (b >= a && b - a < best) {
      best = b - a;
      tsc = a + (b - a) / 2;
      ns = n;
    }
  }
}

uint64_t rate_between(uint64_t tsc_a, int64_t ns_a, uint64_t tsc_b, int64_t ns_b) {
  if (tsc_b <= tsc_a || ns_b <= ns_a) return 0;
#if defined(__SIZEOF_INT128__)
  return uint64_t((UInt128(ns_b - ns_a) << 32) / (tsc_b - tsc_a));  // divide before narrowing: a baseline over 2^32 ns
#else
  return uint64_t(double(ns_b - ns_a) * 4294967296.0 / double(tsc_b - tsc_a));
#endif
}

// Ticks in kValidNs at `mult` (ns per tick << 32).
uint64_t ticks_for(int64_t ns, uint64_t mult) { return mult ? uint64_t(double(ns) * 4294967296.0 / double(mult)) : 0; }

struct Params {
  uint32_t kind = kClockMonotonic;
  uint64_t tsc0 = 0;
  int64_t ns0 = 0;
  uint64_t mult = 0;
  uint64_t anchor_tsc = 0;
  int64_t anchor_ns = 0;
  uint64_t valid_ticks = 0;
};

// The seqlock's writer side. A writer killed half-way leaves seq odd; the next
// one carries on from there (readers fall back to clock_gettime meanwhile).
void publish(ClockParams &p, const Params &v) {
  uint64_t s = p.seq.load(rlx);
  if (!(s & 1)) p.seq.store(++s, rlx);
  std::atomic_thread_fence(std::memory_order_release);
  p.tsc0.store(v.tsc0, rlx);
  p.ns0.store(v.ns0, rlx);
  p.mult.store(v.mult, rlx);
  p.anchor_tsc.store(v.anchor_tsc, rlx);
  p.anchor_ns.store(v.anchor_ns, rlx);
  p.valid_ticks.store(v.kind == kClockTsc ? v.valid_ticks : 0, rlx);
  p.kind.store(v.kind, rlx);
  p.seq.store(s + 1, std::memory_order_release);
}

}  // namespace

bool tsc_usable() {
  static const bool hardware = cpu_has_invariant_tsc() && kernel_keeps_time_with_tsc();
  // Read on every call (an open: never the hot path), so a process can opt out
  // after the library has been loaded.
  return hardware && !env_forbids_tsc();
}

int64_t offset_from_monotonic(const TscClock &c) {
  int64_t best = INT64_MAX, off = 0;
  for (int i = 0; i < 9; ++i) {
    const int64_t a = mono_ns(), t = c.now_ns(), b = mono_ns();
    if (b - a < best) best = b - a, off = t - (a + (b - a) / 2);
  }
  return off;
}

void calibrate_clock(ClockParams &p) {
  Params v;
  if (owner_may_use_tsc()) {
    measure(v.anchor_tsc, v.anchor_ns);
    while (mono_ns() < v.anchor_ns + kCalibrationNs) {
    }
    measure(v.tsc0, v.ns0);
    v.mult = rate_between(v.anchor_tsc, v.anchor_ns, v.tsc0, v.ns0);
    v.valid_ticks = ticks_for(kValidNs, v.mult);
    v.kind = v.mult ? kClockTsc : kClockMonotonic;
  }
  publish(p, v);
}

void recalibrate_clock(ClockParams &p) {
  Params old{p.kind.load(rlx),       p.tsc0.load(rlx),      p.ns0.load(rlx),        p.mult.load(rlx),
             p.anchor_tsc.load(rlx), p.anchor_ns.load(rlx), p.valid_ticks.load(rlx)};
  // seq odd: a writer died half-way, so the parameters cannot be trusted to be continuous with.
  if ((p.seq.load(rlx) & 1) || old.kind != kClockTsc || old.mult == 0 || old.anchor_tsc == 0 ||
      !owner_may_use_tsc()) {
    calibrate_clock(p);
    return;
  }
  Params v = old;
  int64_t now_ns;
  measure(v.tsc0, now_ns);
  const int64_t published = tsc_to_ns(v.tsc0, old.tsc0, old.ns0, old.mult);
  const int64_t offset = published - now_ns;  // > 0: the published clock runs ahead
  const uint64_t rate = rate_between(old.anchor_tsc, old.anchor_ns, v.tsc0, now_ns);
  if (rate == 0 || offset > kStepNs || offset < -kStepNs) {
    // Off by more than slewing should hide (or the TSC went backwards: a new
    // host after a migration): step to CLOCK_MONOTONIC and start a new baseline.
    calibrate_clock(p);
    return;
  }
  double slew = -double(offset) / double(kSlewNs);
  slew = slew > kMaxSlew ? kMaxSlew : slew < -kMaxSlew ? -kMaxSlew : slew;
  v.ns0 = published;  // continuous at the switch
  v.mult = uint64_t(double(rate) * (1.0 + slew));
  v.valid_ticks = ticks_for(kValidNs, v.mult);
  // A recent baseline follows CLOCK_MONOTONIC's rate as NTP changes it.
  if (now_ns - old.anchor_ns > kBaselineNs) v.anchor_tsc = v.tsc0, v.anchor_ns = now_ns;
  publish(p, v);
}

}  // namespace sluice::core
