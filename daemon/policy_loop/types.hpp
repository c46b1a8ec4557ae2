// Plain data shared by the policy loop's stages (traffic -> surge -> proposals ->
// governance -> publication -> audit) and the advisors. No behaviour here.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sluice::policy_loop {

enum class Surge { normal = 0, surge = 1, ddos = 2 };
const char *surge_name(Surge s);

// What the loop knows about one tier after a tick.
struct TierView {
  std::string name;
  uint32_t limit = 0;          // currently published
  uint32_t baseline = 0;       // the policy file's limit
  uint32_t floor = 0;          // never below (after clamping)
  uint32_t ceiling = 0;        // never above; <= max_limit
  uint32_t max_limit = 0;
  int64_t window_ns = 0;
  double revenue_per_request = 0;
  bool adaptive = true;
  uint32_t keys = 0;           // live keys (demand is per key: limits are per key)
  double offered_rps = 0;      // admitted + denied per second, last tick
  double admitted_rps = 0;
  double denied_rps = 0;
  double ewma_rps = 0;         // baseline of offered traffic
  double forecast_rps = 0;     // Holt's linear trend, a few ticks ahead
  Surge surge = Surge::normal;
  // Denials, remembered by the engine across ticks (the allocator is stateless):
  uint32_t calm_ticks = UINT32_MAX;  // ticks since the last one with denials
  uint32_t denied_limit = 0;         // the highest limit that denied lately, at about today's demand (0: none)
};

struct Snapshot {
  int64_t now_ns = 0;
  uint64_t tick = 0;
  double capacity_rps = 0;     // what the backend can serve (policy file)
  Surge host_surge = Surge::normal;
  std::vector<TierView> tiers;
};

// Per-tier limits proposed by an advisor, with its confidence and rationale.
struct Advice {
  std::vector<uint32_t> limits;      // one per tier, in tier order
  double confidence = 0;             // 0..1
  std::string rationale;
  std::vector<bool> clamped;         // per tier: the advisor's value was out of bounds
};

}  // namespace sluice::policy_loop
