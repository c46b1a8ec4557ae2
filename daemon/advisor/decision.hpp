// Reading the model's answer: the server's envelope, then the decision in it.
//
// Strict on purpose: anything but exactly {"limits": {every tier: integer},
// "confidence": 0..1, "rationale": string} is malformed, so a confused model
// is reported rather than half-applied.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "advisor/advisor_types.hpp"
#include "policy_loop/types.hpp"

namespace sluice::advisor {

// The assistant message text: message.content (Ollama) or
// choices[0].message.content (OpenAI). Other envelope fields are ignored.
std::optional<std::string> extract_content(AdvisorConfig::Kind kind, std::string_view body,
                                           std::string* error);

// The advice in `content`, one limit per snapshot tier in tier order.
// Adaptive tiers' limits are clamped to [floor, ceiling] (clamped[i] set);
// fixed tiers keep their current limit whatever the model said.
std::optional<policy_loop::Advice> parse_decision(std::string_view content,
                                                  const policy_loop::Snapshot& snap,
                                                  std::string* error);

inline constexpr size_t kMaxRationaleBytes = 1024;  // keeps log and audit lines bounded

}  // namespace sluice::advisor
