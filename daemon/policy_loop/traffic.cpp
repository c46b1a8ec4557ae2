#include "policy_loop/traffic.hpp"

#include <algorithm>
#include <cmath>

namespace sluice::policy_loop {

const char *surge_name(Surge s) {
  switch (s) {
    case Surge::normal: return "normal";
    case Surge::surge: return "surge";
    case Surge::ddos: return "ddos";
  }
  return "?";
}

TrafficModel::TrafficModel(const policy::SurgeSpec &spec, size_t tiers) : spec_(spec), state_(tiers) {}

Surge TrafficModel::candidate(double ratio) const {
  if (ratio >= spec_.ddos_ratio) return Surge::ddos;
  if (ratio >= spec_.surge_ratio) return Surge::surge;
  return Surge::normal;
}

void TrafficModel::observe(size_t tier, const core::TierCounters &now, double dt_s, TierView &out) {
  State &s = state_[tier];
  if (!s.primed || dt_s <= 0) {  // first sight: counters since creation are not a rate
    s.primed = true;
    s.last = now;
    return;
  }
  const auto denials = [](const core::TierCounters &c) { return c.denied_window + c.denied_cost + c.denied_closed; };
  // Far above what any host admits (a call takes tens of ns a core).
  const double kMaxPlausible = 1e10 * dt_s;
  const uint64_t new_admitted = now.admitted - s.last.admitted, new_denied = denials(now) - denials(s.last);
  if (now.admitted < s.last.admitted || denials(now) < denials(s.last) || double(new_admitted) > kMaxPlausible ||
      double(new_denied) > kMaxPlausible) {
    // Moved back, or on by more than any host admits: a stripe was written by
    // someone (they are client-writable), not a rate (read as one, it was 1.8e19
    // req/s: a DDoS). Counted from here on.
    s.last = now;
    return;
  }
  const double admitted = double(new_admitted) / dt_s;
  const double denied = double(new_denied) / dt_s;
  s.last = now;
  const double offered = admitted + denied;

  // Holt's linear trend (alpha 0.5, beta 0.5): a steady ramp is flagged from
  // its slope, before the offered rate itself crosses the threshold.
  if (s.level == 0 && s.trend == 0) {
    s.level = offered;
  } else {
    const double prev = s.level;
    s.level = 0.5 * offered + 0.5 * (s.level + s.trend);
    s.trend = 0.5 * (s.level - prev) + 0.5 * s.trend;
  }
  const double forecast = std::max(0.0, s.level + kForecastTicks * s.trend);
  const auto report = [&] {
    out.offered_rps = offered;
    out.admitted_rps = admitted;
    out.denied_rps = denied;
    out.ewma_rps = s.ewma;
    out.forecast_rps = forecast;
    out.surge = s.surge;
  };
  if (s.warm < kWarmupTicks && (offered > 0 || s.warm > 0)) {
    const double d = offered - s.ewma;  // the mean and variance of the warm-up ticks
    s.ewma += d / double(++s.warm);
    s.var += (d * (offered - s.ewma) - s.var) / double(s.warm);
    s.last_offered = offered;
    report();
    return;
  }

  const double base = std::max(s.ewma, spec_.min_baseline_rps);
  // A rise is under way when the trend is up and both this tick's rate and the
  // smoothed level are above the baseline by more than the tier's own noise
  // (2 standard deviations of its calm ticks) or by half the way to
  // surge_ratio, whichever is less.
  const double excess = std::min((spec_.surge_ratio - 1) / 2 * base, 2 * std::sqrt(s.var));
  const bool rising = s.trend > 0 && offered - base > excess && s.level - base > excess;
  // DDoS is judged on traffic that is here; a surge may be flagged early from
  // the forecast, but only while traffic keeps rising (a lone spike's trend
  // would otherwise overshoot) and a rise is under way: five ticks of a trend
  // fitted to a few noisy ticks near the baseline, or the trend's rebound after
  // traffic falls back, otherwise forecast surges that are not there.
  Surge seen = candidate(offered / base);
  if (seen == Surge::normal && offered >= s.last_offered && forecast / base >= spec_.surge_ratio && rising)
    seen = Surge::surge;
  s.last_offered = offered;
  // Leaving a surge takes exit_ticks, so traffic hovering near the threshold
  // does not flap; but once the offered rate is clearly back (at or below
  // fast_exit_ratio x the baseline) for fast_exit_ticks in a row, the surge is
  // over and is not reported for seconds more. A DDoS always holds for
  // exit_ticks: pulsing attacks pause to get their mitigation switched off.
  const bool back = spec_.fast_exit_ratio > 0 && offered <= spec_.fast_exit_ratio * base;
  if (seen > s.surge) {
    s.below = s.back = 0;
    if (++s.above >= spec_.enter_ticks) {
      s.surge = seen;
      s.above = 0;
    }
  } else if (seen < s.surge) {
    s.above = 0;
    s.back = back ? s.back + 1 : 0;
    const bool over = s.surge == Surge::surge && s.back >= std::min(spec_.fast_exit_ticks, spec_.exit_ticks);
    if (++s.below >= spec_.exit_ticks || over) {
      s.surge = seen;
      s.below = s.back = 0;
    }
  } else {
    s.above = s.below = s.back = 0;
  }
  // A surge held relearn_ticks in a row is the new normal (a launch, a new
  // customer): the baseline never learns during a surge, so a step past
  // surge_ratio would otherwise stay a surge for ever. Never a DDoS: a flood kept
  // up that long would switch its own mitigation off (a restart of sluiced, which
  // learns the baseline afresh, is the way out of a DDoS level that is real traffic).
  s.held = s.surge == Surge::surge ? s.held + 1 : 0;
  if (spec_.relearn_ticks && s.held >= spec_.relearn_ticks) {
    s.ewma = s.level;
    s.surge = Surge::normal;
    s.held = s.above = s.below = s.back = 0;
  }
  // The baseline learns only calm traffic: not a surge, and not a rise under
  // way (a ramp learned tick by tick never reaches surge_ratio: a 5x ramp went
  // unflagged). Once a step has levelled off, the trend stops being up on
  // every tick and the baseline learns the new level. An idle tick teaches
  // nothing: a tier whose clients restart for 20 s has not a new normal of 0
  // (learned, its usual traffic coming back was a DDoS that never ended).
  if (s.surge == Surge::normal && seen == Surge::normal && !rising && offered > 0) {
    const double d = offered - s.ewma;
    s.ewma += spec_.ewma_alpha * d;
    s.var = (1 - spec_.ewma_alpha) * (s.var + spec_.ewma_alpha * d * d);
  }
  report();
}

Surge host_surge(const std::vector<TierView> &tiers, double capacity_rps) {
  Surge worst = Surge::normal;
  double offered = 0;
  for (const TierView &t : tiers) {
    worst = std::max(worst, t.surge);
    offered += std::max(t.offered_rps, t.forecast_rps);
  }
  if (capacity_rps > 0 && offered > capacity_rps) worst = std::max(worst, Surge::surge);
  return worst;
}

}  // namespace sluice::policy_loop
