#include "advice_turn.hpp"

#include "text/utf8.hpp"

namespace sluice::daemon {

AdviceTurn next_advice(std::optional<HeldAdvice> &held, const std::optional<advisor::AdvisorResult> &answer,
                       const policy_loop::Snapshot &now, AdviceAges ages) {
  // A snapshot from the future (a clock or a restart mix-up) is never fresh.
  auto within = [&](int64_t snapshot_ns, int64_t max_age) {
    return snapshot_ns <= now.now_ns && now.now_ns - snapshot_ns <= max_age;
  };
  if (!answer) {
    if (held && within(held->snapshot_ns, ages.held_ns) && now.host_surge <= held->surge) return {held->advice, ""};
    held.reset();
    return {};
  }
  if (answer->advice && within(answer->snapshot_ns, ages.answer_ns)) {
    held = HeldAdvice{*answer->advice, answer->snapshot_ns, now.host_surge};
    return {answer->advice, ""};
  }
  held.reset();
  return {std::nullopt, std::string("fallback to rules: ") + advisor::outcome_name(answer->outcome) +
                            (answer->advice ? " (stale answer)" : "") +
                            (answer->detail.empty() ? "" : ": " + text::utf8_clean(answer->detail, 300))};
}

}  // namespace sluice::daemon
