// Configuration and results of the optional LLM advisor.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "policy_loop/types.hpp"

namespace sluice::advisor {

struct AdvisorConfig {
  enum Kind { ollama, openai } kind = ollama;
  std::string base_url = "http://127.0.0.1:11434";  // http:// only, numeric host or localhost
  std::string model;
  int timeout_ms = 2000;  // the whole exchange, connect to last byte
  size_t max_response_bytes = 1 << 20;
  double min_confidence = 0.6;
  std::string api_key;  // OpenAI-compatible servers only; sent as a Bearer token
};

// Empty when usable; otherwise what is wrong, for refusing the config at startup.
std::string validate_config(const AdvisorConfig& config);

enum class AdvisorOutcome {
  ok,
  clamped,         // ok, but some limits were outside [floor, ceiling]
  low_confidence,  // well formed, confidence < min_confidence: advice not used
  malformed,       // envelope or decision not as required
  timeout,
  refused,         // connection refused: no model server listening
  http_error,      // non-2xx status
  too_large,       // response body above max_response_bytes
  transport_error, // other socket or HTTP framing errors, cancellation
  bad_config,      // unusable URL (e.g. https://) or config
};
inline constexpr size_t kAdvisorOutcomeCount = 10;

const char* outcome_name(AdvisorOutcome o);

struct AdvisorResult {
  AdvisorOutcome outcome = AdvisorOutcome::transport_error;
  std::optional<policy_loop::Advice> advice;  // only for ok and clamped
  std::string detail;                         // why, for logs and the audit trail
  int64_t latency_ns = 0;
  uint64_t tick = 0;         // the snapshot's tick
  int64_t snapshot_ns = 0;   // the snapshot's CLOCK_MONOTONIC time: how old the advice is
};

// Everything the advisor has done so far, read in one go (metrics, `top`).
struct AdvisorStats {
  // Upper bounds (seconds) of the latency histogram's buckets; +Inf is implied.
  static constexpr std::array<double, 8> kLatencyBounds{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10};
  std::array<uint64_t, kAdvisorOutcomeCount> outcomes{};
  std::optional<AdvisorOutcome> last_outcome;
  int64_t last_latency_ns = 0;
  std::array<uint64_t, kLatencyBounds.size()> latency_le{};  // cumulative: answers within each bound
  uint64_t latency_count = 0;
  double latency_sum_s = 0;
  uint64_t dropped_snapshots = 0;
  bool busy = false;
};

}  // namespace sluice::advisor
