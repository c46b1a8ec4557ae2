// One blocking question to a model server: "given this snapshot, what limits?"
//
// Meant for a worker thread (see AsyncAdvisor); the call is bounded by
// config.timeout_ms. It never throws: every failure is an AdvisorOutcome.
#pragma once

#include <atomic>

#include "advisor/advisor_types.hpp"
#include "policy_loop/types.hpp"

namespace sluice::advisor {

class LlmAdvisor {
 public:
  explicit LlmAdvisor(AdvisorConfig config);

  // `cancel`, when it becomes true, ends a request in flight within ~50 ms
  // (outcome transport_error), e.g. on shutdown.
  AdvisorResult ask(const policy_loop::Snapshot& snap, const std::atomic<bool>* cancel = nullptr);

  const AdvisorConfig& config() const { return config_; }

 private:
  AdvisorResult ask_unguarded(const policy_loop::Snapshot& snap, const std::atomic<bool>* cancel);

  AdvisorConfig config_;
  std::string config_error_;  // from validate_config, checked once
};

}  // namespace sluice::advisor
