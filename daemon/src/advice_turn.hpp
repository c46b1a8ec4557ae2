// Which advice a tick of the policy loop uses when an LLM advisor is configured:
// the model's new answer, its last answer while the next one is on its way, or
// none (the built-in rules decide), with the reason to record when an answer the
// model gave is not used.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "advisor/advisor_types.hpp"
#include "policy_loop/types.hpp"

namespace sluice::daemon {

struct HeldAdvice {
  policy_loop::Advice advice;
  int64_t snapshot_ns = 0;  // the snapshot the model answered
  policy_loop::Surge surge = policy_loop::Surge::normal;  // the host's level when it was first used
};

struct AdviceTurn {
  std::optional<policy_loop::Advice> use;
  std::string fallback;  // non-empty: the model's answer was not used, and why (for the audit trail)
};

// The ages allowed for the snapshot an answer is about. A new answer: the request
// may take `timeout_ns` after waiting up to a tick for the worker, then wait up to
// a tick to be taken. The last answer, while the next is in flight: that next
// request started at most one timeout after it and may take another.
struct AdviceAges {
  int64_t answer_ns, held_ns;
  static AdviceAges of(int64_t timeout_ns, int64_t tick_ns) {
    return {timeout_ns + 2 * tick_ns, 2 * timeout_ns + 2 * tick_ns};
  }
};

// `answer`: what the advisor finished since the last tick, if anything. A tick
// with no answer is not a failure: following the rules then would undo the model
// on alternate ticks. The last answer is dropped once the host's surge level rises
// above the level it was used at (the rules react at once), once it is too old, or
// when the model fails.
AdviceTurn next_advice(std::optional<HeldAdvice> &held, const std::optional<advisor::AdvisorResult> &answer,
                       const policy_loop::Snapshot &now, AdviceAges ages);

}  // namespace sluice::daemon
