// The policy file parser on arbitrary bytes: a PolicyError with a message, or a
// policy that serialises (to_json) and parses back to the same policy. Anything
// else (another exception, a crash, a round trip that changes it) is a fault.
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "policy/policy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const std::string_view text(reinterpret_cast<const char *>(data), size);
  sluice::policy::PolicySpec spec;
  try {
    spec = sluice::policy::parse_policy_json(text, "fuzz");
  } catch (const sluice::policy::PolicyError &e) {
    FUZZ_CHECK(std::string_view(e.what()).size() > std::string_view("fuzz: ").size(), "empty message");
    return 0;
  }
  FUZZ_CHECK(!spec.tiers.empty(), "a policy without tiers was accepted");
  FUZZ_CHECK(sluice::policy::state_segment_bytes(spec) <= sluice::policy::kMaxStateSegmentBytes, "segment too big");
  const std::string again = sluice::policy::to_json(spec);
  sluice::policy::PolicySpec back;
  try {
    back = sluice::policy::parse_policy_json(again, "round trip");
  } catch (const sluice::policy::PolicyError &e) {
    FUZZ_CHECK(false, "to_json's output is refused: %s\n%s", e.what(), again.c_str());
  }
  FUZZ_CHECK(back == spec, "the round trip changed the policy:\n%s", again.c_str());
  return 0;
}
