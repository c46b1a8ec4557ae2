#include "policy_loop/allocator.hpp"

#include "text/utf8.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

namespace sluice::policy_loop {

namespace {

std::string fmt(const char *f, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, f, args...);
  return buf;
}

uint32_t clamp_to(const TierView &t, double v) {
  const double lo = t.floor, hi = t.ceiling ? t.ceiling : t.max_limit;
  return uint32_t(std::clamp(std::ceil(v), lo, hi));
}

// Admitted requests/s the tier would see at per-key limit L (linear in L up to
// what is offered).
double load_at(const TierView &t, uint32_t limit) {
  const double demand = std::max(t.offered_rps, t.forecast_rps);
  if (t.limit == 0) return limit ? demand : 0;
  const double per_unit = t.admitted_rps / double(t.limit);
  return std::min(demand, per_unit * limit > 0 ? per_unit * limit : (limit ? demand : 0));
}

// The limit that would serve the tier's demand, before capacity.
uint32_t wanted(const TierView &t, std::string &why) {
  const double demand = std::max(t.offered_rps, t.forecast_rps);
  if (t.limit < t.baseline) {
    // Below the policy file's own limit only because a DDoS or capacity cut it:
    // back there first (capacity, applied after, cuts it again while it still
    // binds; the ddos rule, while the DDoS lasts). Needs no approval (engine).
    why = fmt("%.0f req/s offered: back to baseline %u after a cut", demand, t.baseline);
    return clamp_to(t, t.baseline);
  }
  if (t.denied_rps > 0 && t.admitted_rps > 0) {
    const double want = t.limit * (demand / t.admitted_rps) * 1.1;  // 10% headroom
    why = fmt("%.0f of %.0f req/s denied (forecast %.0f): serve demand", t.denied_rps, t.offered_rps,
              t.forecast_rps);
    return clamp_to(t, std::max<double>(want, t.baseline));
  }
  if (t.denied_rps > 0) {
    why = fmt("%.0f req/s denied and none admitted: reopen", t.denied_rps);
    return clamp_to(t, std::max<double>(t.baseline, t.limit * 2.0));
  }
  if (t.calm_ticks < kHoldTicks) {
    why = "held: denials within the last ticks";
    return clamp_to(t, t.limit);
  }
  // No denials: step back toward the baseline by 10% a tick (a jump straight
  // down would deny the very traffic that was just served), never onto a limit
  // that denied lately: steady demand between two limits settles on the higher
  // one instead of flapping between them.
  const double down = std::max<double>({double(t.baseline), std::floor(t.limit * 0.9),
                                        t.denied_limit ? double(t.denied_limit) + 1 : 0.0});
  why = demand > 0 ? fmt("no denials at %.0f req/s: easing back toward baseline %u", demand, t.baseline)
                   : fmt("idle: easing back to baseline %u", t.baseline);
  return clamp_to(t, std::min<double>(t.limit, down));
}

}  // namespace

std::vector<Proposal> propose_by_rules(const Snapshot &s) {
  const size_t n = s.tiers.size();
  std::vector<uint32_t> target(n);
  std::vector<std::string> why(n);
  for (size_t i = 0; i < n; ++i) {
    const TierView &t = s.tiers[i];
    target[i] = t.adaptive ? wanted(t, why[i]) : t.limit;
  }
  // Tiers by revenue per request, highest first.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return s.tiers[a].revenue_per_request > s.tiers[b].revenue_per_request;
  });

  double budget = s.capacity_rps > 0 ? s.capacity_rps : INFINITY;
  // Under a host DDoS the lowest-value tier goes to its floor and is served last,
  // from whatever capacity the paying tiers leave.
  const bool ddos = s.host_surge == Surge::ddos && n > 1;
  if (ddos && s.tiers[order.back()].adaptive) {
    const TierView &t = s.tiers[order.back()];
    target[order.back()] = t.floor;
    why[order.back()] = fmt("host under DDoS (%.0f req/s offered, baseline %.0f): lowest-value tier to its floor",
                            t.offered_rps, t.ewma_rps);
  }
  // Non-adaptive tiers take their share first: they cannot move.
  for (size_t i : order)
    if (!s.tiers[i].adaptive) budget -= load_at(s.tiers[i], target[i]);
  for (size_t i : order) {
    const TierView &t = s.tiers[i];
    if (!t.adaptive) continue;
    if (load_at(t, target[i]) <= budget || (ddos && i == order.back())) {
      budget -= load_at(t, target[i]);
      continue;
    }
    // Capacity binds: the largest limit whose load fits, never under the floor.
    uint32_t fit = t.floor;
    for (uint32_t lim = target[i]; lim > t.floor; --lim)
      if (load_at(t, lim) <= budget) {
        fit = lim;
        break;
      }
    why[i] = fmt("capacity %.0f req/s binds (%s): %s gets what is left after higher-value tiers",
                 s.capacity_rps, surge_name(s.host_surge), t.name.c_str());
    target[i] = fit;
    budget -= load_at(t, fit);
  }
  std::vector<Proposal> out;
  for (size_t i = 0; i < n; ++i) {
    if (target[i] == s.tiers[i].limit) continue;
    out.push_back(Proposal{uint32_t(i), s.tiers[i].limit, target[i],
                           s.tiers[i].name + ": " + why[i] + fmt(" (%u -> %u)", s.tiers[i].limit, target[i]),
                           "rules", 1.0, false});
  }
  return out;
}

std::vector<Proposal> proposals_from_advice(const Snapshot &s, const Advice &a) {
  std::vector<Proposal> out;
  for (size_t i = 0; i < s.tiers.size() && i < a.limits.size(); ++i) {
    const TierView &t = s.tiers[i];
    if (!t.adaptive) continue;
    const uint32_t v = clamp_to(t, a.limits[i]);
    const bool clamped = v != a.limits[i] || (i < a.clamped.size() && a.clamped[i]);
    if (v == t.limit) continue;
    out.push_back(Proposal{uint32_t(i), t.limit, v,
                           t.name + ": advisor: " + text::utf8_clean(a.rationale, 400) +
                               (clamped ? fmt(" (clamped to %u..%u)", t.floor, t.ceiling) : ""),
                           "advisor", a.confidence, clamped});
  }
  return out;
}

}  // namespace sluice::policy_loop
