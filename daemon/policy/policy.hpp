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

namespace sluice::policy {

struct TierSpec {
  std::string name;
  uint32_t limit = 0;
  uint64_t window_ms = 0;
  uint32_t max_limit = 0;  // ceiling for adaptive raises
  double revenue_per_request = 0.0;
  bool adaptive = true;

  bool operator==(const TierSpec&) const = default;
};

// Defaults must match policy.fbs (a test checks they do).
struct SegmentSpec {
  uint32_t max_keys = 100000;
  uint32_t max_key_bytes = 64;
  uint64_t idle_ttl_ms = 60000;

  bool operator==(const SegmentSpec&) const = default;
};

struct PolicySpec {
  SegmentSpec segment;
  std::vector<TierSpec> tiers;

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

// Serialises `spec` as JSON that parse_policy_json accepts back unchanged.
std::string to_json(const PolicySpec& spec);

}  // namespace sluice::policy
