// Per-tier traffic model, fed the shared counters once per tick: offered rate,
// an EWMA baseline (and the variance of calm ticks) learned only while the tier
// is calm, neither in a surge nor in a rise under way (so a surge, or a ramp,
// never becomes the new normal) and not from idle ticks, Holt's linear-trend
// forecast, and the surge level with hysteresis (enter after N ticks above a
// threshold, leave after M below; a surge whose traffic is clearly back at its
// baseline leaves after fewer; a surge held relearn_ticks is the new baseline).
#pragma once
#include <cstdint>
#include <vector>

#include "policy/policy.hpp"
#include "policy_loop/types.hpp"
#include "sluice/core/ledger.hpp"

namespace sluice::policy_loop {

class TrafficModel {
 public:
  TrafficModel(const policy::SurgeSpec &spec, size_t tiers);

  // cumulative: the tier's counters now; dt_s: seconds since the previous call.
  // Fills the traffic fields and surge level of `out`.
  void observe(size_t tier, const core::TierCounters &cumulative, double dt_s, TierView &out);

  static constexpr int kForecastTicks = 5;
  // Ticks with traffic that only learn the baseline (a mean) before any surge is
  // flagged: the first tick after a start is usually partial, and a baseline
  // seeded from it alone would make all later traffic look like a surge.
  static constexpr uint32_t kWarmupTicks = 4;

 private:
  struct State {
    bool primed = false;
    core::TierCounters last;
    double ewma = 0;
    double var = 0;  // variance of calm offered rates around ewma (the tick-to-tick noise)
    double level = 0, trend = 0;  // Holt
    double last_offered = 0;
    Surge surge = Surge::normal;
    uint32_t above = 0, below = 0;
    uint32_t back = 0;  // ticks in a row at or below fast_exit_ratio (while leaving)
    uint32_t held = 0;  // ticks in a row in surge (relearn_ticks)
    uint32_t warm = 0;  // ticks with traffic seen, up to kWarmupTicks
  };
  Surge candidate(double ratio) const;
  policy::SurgeSpec spec_;
  std::vector<State> state_;
};

Surge host_surge(const std::vector<TierView> &tiers, double capacity_rps);

}  // namespace sluice::policy_loop
