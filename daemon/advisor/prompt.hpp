// What the advisor sends: the prompt (tier table and recent traffic), the
// JSON schema of the decision, and the Ollama / OpenAI request bodies.
#pragma once

#include <string>

#include "advisor/advisor_types.hpp"
#include "policy_loop/types.hpp"

namespace sluice::advisor {

// Rules and the answer format; the same for every tick.
std::string system_prompt();

// The tier table and traffic of one snapshot.
std::string user_prompt(const policy_loop::Snapshot& snap);

// JSON schema of {"limits": {<every tier>: integer}, "confidence", "rationale"},
// with each tier bounded to [floor, ceiling] (fixed tiers to their limit), so a
// server with constrained decoding cannot produce anything else.
std::string decision_schema(const policy_loop::Snapshot& snap);

// Full request body for POST /api/chat (Ollama) or /v1/chat/completions.
std::string request_body(const AdvisorConfig& config, const policy_loop::Snapshot& snap);

// Path appended to the base URL for config.kind.
const char* request_path(AdvisorConfig::Kind kind);

}  // namespace sluice::advisor
