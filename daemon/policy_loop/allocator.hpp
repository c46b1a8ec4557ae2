// The built-in advisor: business rules over one snapshot.
//  - each adaptive tier wants the per-key limit that serves its offered traffic
//    (denials with spare capacity -> raise; no denials for kHoldTicks -> drift
//    back to baseline, never onto a limit that denied lately; below baseline
//    after a cut -> straight back), within [floor, ceiling];
//  - capacity (requests/s the backend can serve) goes to tiers in order of
//    revenue per request: high-value tiers scale up first, low-value ones shrink
//    first;
//  - under a host DDoS the lowest-revenue tier is cut to its floor before any
//    other tier is touched.
// Pure function: same snapshot, same proposals.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "policy_loop/types.hpp"

namespace sluice::policy_loop {

// After a tick with denials, the limit holds this many ticks before it eases down.
constexpr uint32_t kHoldTicks = 30;
// How long a limit that denied is remembered (easing never goes back onto it).
constexpr uint32_t kDeniedMemoryTicks = 600;

struct Proposal {
  uint32_t tier = 0;
  uint32_t old_limit = 0;
  uint32_t new_limit = 0;
  std::string reason;      // for a person
  std::string actor;       // "rules" or "advisor"
  double confidence = 1.0;
  bool clamped = false;
};

std::vector<Proposal> propose_by_rules(const Snapshot &s);

// Advice (e.g. from an LLM) as proposals, clamped to each tier's bounds;
// non-adaptive tiers are never changed.
std::vector<Proposal> proposals_from_advice(const Snapshot &s, const Advice &a);

}  // namespace sluice::policy_loop
