// Policy file: tiers and segment sizing for sluiced.
//
// Files are JSON checked against policy.fbs, then range-checked here. Every
// failure is a PolicyError whose message names the source and the field.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/core/segment.hpp"

namespace sluice::policy {

struct TierSpec {
  std::string name;
  uint32_t limit = 0;
  uint64_t window_ms = 0;
  uint32_t max_limit = 0;  // ceiling for adaptive raises
  double revenue_per_request = 0.0;
  bool adaptive = true;
  uint32_t floor = 1;    // adaptive bounds: floor <= limit <= ceiling <= max_limit
  uint32_t ceiling = 0;  // 0 in a parsed spec never happens: defaults to max_limit

  bool operator==(const TierSpec&) const = default;
};

struct SurgeSpec {
  double surge_ratio = 2.0;
  double ddos_ratio = 5.0;
  uint32_t enter_ticks = 2;
  uint32_t exit_ticks = 5;
  double ewma_alpha = 0.1;
  double min_baseline_rps = 1.0;
  // A surge (not a DDoS) ends after fast_exit_ticks ticks at or below this ratio
  // to the baseline, instead of exit_ticks: traffic is clearly back. 0: off.
  double fast_exit_ratio = 1.25;
  uint32_t fast_exit_ticks = 2;
  // A surge held this many ticks in a row is the new baseline (a launch, a new
  // customer): a step never learned would stay a surge for ever. Never a DDoS. 0: never.
  uint32_t relearn_ticks = 600;
  bool operator==(const SurgeSpec&) const = default;
};

struct GovernanceSpec {
  double approval_ratio = 1.8;
  double min_confidence = 0.6;
  uint64_t approval_ttl_s = 3600;
  // > 0: a raise is also gated against the limit of this many seconds ago, so the
  // loop cannot climb past the ratio by steps under it; 0: each change on its own.
  uint32_t approval_window_s = 0;
  std::vector<uint32_t> approvers;      // empty: sluiced's own uid and root
  std::vector<uint32_t> approver_gids;
  bool operator==(const GovernanceSpec&) const = default;
};

struct AdvisorSpec {
  std::string kind = "none";  // none | ollama | openai
  std::string url;
  std::string model;
  uint32_t timeout_ms = 2000;
  bool operator==(const AdvisorSpec&) const = default;
};

// Defaults must match policy.fbs (a test checks they do).
struct SegmentSpec {
  uint32_t max_keys = 100000;
  uint32_t max_key_bytes = 64;
  uint64_t idle_ttl_ms = 60000;
  bool reserve_memory = true;  // allocate the whole state segment at creation

  bool operator==(const SegmentSpec&) const = default;
};

struct PolicySpec {
  SegmentSpec segment;
  std::vector<TierSpec> tiers;
  double capacity_rps = 0;  // 0: unbounded
  uint32_t tick_ms = 1000;
  SurgeSpec surge;
  GovernanceSpec governance;
  AdvisorSpec advisor;
  std::string audit_db;     // empty: the daemon picks a default path
  uint32_t audit_retention_days = 0;  // 0: keep every record


  bool operator==(const PolicySpec&) const = default;
};

class PolicyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses and validates policy JSON; `source_name` prefixes every error.
PolicySpec parse_policy_json(std::string_view json,
                             std::string_view source_name = "<policy>");

// Reads and parses `path`; errors (including open/read failures) name it.
PolicySpec load_policy_file(const std::string& path);

// The built-in policy (default_policy.json, validated like any file).
PolicySpec default_policy();

// The segment layout a policy asks for (sluiced creates or checks the segment with it).
core::LayoutSpec layout_of(const PolicySpec& p);
// Bytes of the state segment `spec` maps.
uint64_t state_segment_bytes(const PolicySpec& spec);
// A policy whose state segment would be larger is refused: no host has the
// memory, and tmpfs maps it sparsely, so it would fail (SIGBUS) only as it fills.
inline constexpr uint64_t kMaxStateSegmentBytes = uint64_t{1} << 40;  // 1 TiB

// Serialises `spec` as JSON that parse_policy_json accepts back unchanged.
std::string to_json(const PolicySpec& spec);

}  // namespace sluice::policy
