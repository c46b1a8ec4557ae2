#include "advisor/async_advisor.hpp"

#include <utility>

namespace sluice::advisor {

AsyncAdvisor::AsyncAdvisor(AdvisorConfig config) : advisor_(std::move(config)) {
  try {
    worker_ = std::thread([this] { run(); });
  } catch (const std::exception&) {
    // No thread: running() is false and submit() does nothing; sluiced keeps
    // its built-in rules.
  }
}

AsyncAdvisor::~AsyncAdvisor() {
  {
    std::lock_guard lock(mu_);
    stop_.store(true);
  }
  wake_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void AsyncAdvisor::submit(policy_loop::Snapshot snap) {
  if (!running()) return;
  {
    std::lock_guard lock(mu_);  // never held across a request
    if (pending_) ++stats_.dropped_snapshots;
    pending_ = std::move(snap);
  }
  wake_.notify_one();
}

std::optional<AdvisorResult> AsyncAdvisor::take() {
  std::lock_guard lock(mu_);
  return std::exchange(finished_, std::nullopt);
}

std::map<std::string, uint64_t> AsyncAdvisor::outcome_counts() const {
  std::lock_guard lock(mu_);
  std::map<std::string, uint64_t> out;
  for (size_t i = 0; i < kAdvisorOutcomeCount; ++i)
    out[outcome_name(static_cast<AdvisorOutcome>(i))] = stats_.outcomes[i];
  return out;
}

uint64_t AsyncAdvisor::count(AdvisorOutcome o) const {
  std::lock_guard lock(mu_);
  return stats_.outcomes[static_cast<size_t>(o)];
}

int64_t AsyncAdvisor::last_latency_ns() const {
  std::lock_guard lock(mu_);
  return stats_.last_latency_ns;
}

uint64_t AsyncAdvisor::dropped_snapshots() const {
  std::lock_guard lock(mu_);
  return stats_.dropped_snapshots;
}

bool AsyncAdvisor::busy() const {
  std::lock_guard lock(mu_);
  return in_flight_ || pending_.has_value();
}

AdvisorStats AsyncAdvisor::stats() const {
  std::lock_guard lock(mu_);
  AdvisorStats s = stats_;
  s.busy = in_flight_ || pending_.has_value();
  return s;
}

void AsyncAdvisor::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    wake_.wait(lock, [this] { return stop_.load() || pending_.has_value(); });
    if (stop_.load()) return;
    policy_loop::Snapshot snap = std::move(*pending_);
    pending_.reset();
    in_flight_ = true;
    lock.unlock();
    AdvisorResult result = advisor_.ask(snap, &stop_);  // never throws
    lock.lock();
    in_flight_ = false;
    ++stats_.outcomes[static_cast<size_t>(result.outcome)];
    stats_.last_outcome = result.outcome;
    stats_.last_latency_ns = result.latency_ns;
    const double seconds = double(result.latency_ns) / 1e9;
    for (size_t b = 0; b < AdvisorStats::kLatencyBounds.size(); ++b)
      stats_.latency_le[b] += seconds <= AdvisorStats::kLatencyBounds[b];
    ++stats_.latency_count;
    stats_.latency_sum_s += seconds;
    finished_ = std::move(result);
  }
}

}  // namespace sluice::advisor
