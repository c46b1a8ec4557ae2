// Runs LlmAdvisor on its own thread so the policy tick never waits for a model.
//
// submit() hands over the newest snapshot and returns at once; if a request is
// already in flight, only the newest pending snapshot is kept (older ones are
// stale by the time the worker is free). take() returns the newest finished
// result, if any. Counters per outcome and the last latency feed metrics.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "advisor/advisor_types.hpp"
#include "advisor/llm_advisor.hpp"
#include "policy_loop/types.hpp"

namespace sluice::advisor {

class AsyncAdvisor {
 public:
  explicit AsyncAdvisor(AdvisorConfig config);
  // Cancels a request in flight (returns within ~50 ms, never more than the
  // timeout) and joins the worker.
  ~AsyncAdvisor();
  AsyncAdvisor(const AsyncAdvisor&) = delete;
  AsyncAdvisor& operator=(const AsyncAdvisor&) = delete;

  // Never blocks on the model; replaces any snapshot still waiting.
  void submit(policy_loop::Snapshot snap);

  // The newest finished result not yet taken; older unread ones are dropped.
  std::optional<AdvisorResult> take();

  // Every outcome by name (zeros included), counted when the answer arrives.
  std::map<std::string, uint64_t> outcome_counts() const;
  uint64_t count(AdvisorOutcome o) const;
  int64_t last_latency_ns() const;
  uint64_t dropped_snapshots() const;  // replaced while waiting for the worker
  bool busy() const;                   // a request in flight or pending
  AdvisorStats stats() const;

  // False if the worker thread could not be started (submit is then a no-op).
  bool running() const { return worker_.joinable(); }

 private:
  void run();

  LlmAdvisor advisor_;
  std::atomic<bool> stop_{false};

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::optional<policy_loop::Snapshot> pending_;
  std::optional<AdvisorResult> finished_;
  bool in_flight_ = false;
  AdvisorStats stats_;

  std::thread worker_;  // last: started after everything it uses exists
};

}  // namespace sluice::advisor
