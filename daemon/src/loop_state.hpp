// What the policy loop knows, copied on the loop's thread so that readers on
// other threads (the metrics server) and the `overview` command never touch the
// engine itself.
#pragma once
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "advisor/advisor_types.hpp"
#include "policy_loop/audit_store.hpp"
#include "policy_loop/engine.hpp"
#include "policy_loop/types.hpp"

namespace sluice::daemon {

struct LoopState {
  policy_loop::Snapshot snapshot;
  std::vector<policy_loop::PendingApproval> pending;
  policy_loop::GovernanceCounts governance;
  uint64_t audit_store_errors = 0;  // AuditStore::errors()
  uint64_t audit_records_pruned = 0;  // deleted by audit_retention_days since sluiced started
  std::string advisor_kind = "none";  // "none": the built-in rules only
  std::string advisor_model;
  std::optional<advisor::AdvisorStats> advisor;  // set when an LLM advisor is configured
  // Per tier, the admitted counter when this sluiced started: revenue is counted
  // from there at this run's revenue per request (so it never goes down).
  std::vector<uint64_t> admitted_at_start;
  int64_t trail_now_ms = 0;  // the audit trail's clock when this was taken (trail_clock.hpp)
};

// A LoopState handed from the loop thread to readers; copies in and out.
class SharedLoopState {
 public:
  void set(LoopState s) {
    std::lock_guard lock(mu_);
    state_ = std::move(s);
  }
  LoopState get() const {
    std::lock_guard lock(mu_);
    return state_;
  }

 private:
  mutable std::mutex mu_;
  LoopState state_;
};

}  // namespace sluice::daemon
