#include "advisor/prompt.hpp"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "advisor/json.hpp"

namespace sluice::advisor {

namespace {

// Local on purpose: policy_loop/types.hpp declares surge_name, but the advisor
// must not depend on where (or whether) the loop defines it.
const char* surge_text(policy_loop::Surge s) {
  switch (s) {
    case policy_loop::Surge::normal: return "normal";
    case policy_loop::Surge::surge: return "surge";
    case policy_loop::Surge::ddos: return "ddos";
  }
  return "unknown";
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

// Bounds the model may choose from: fixed tiers keep their current limit.
std::pair<uint32_t, uint32_t> bounds(const policy_loop::TierView& t) {
  if (!t.adaptive) return {t.limit, t.limit};
  return {t.floor, std::max(t.floor, t.ceiling)};
}

}  // namespace

std::string system_prompt() {
  return "You tune per-key rate limits for the tiers of a host-local rate limiter. "
         "A tier's limit is the number of requests one key may make per window. "
         "Goals, in order: keep total admitted traffic within the host capacity "
         "(0 means unbounded); during a surge or ddos, lower limits of low-revenue "
         "tiers first; otherwise raise limits of tiers whose keys are being denied "
         "while there is spare capacity, favouring tiers with higher revenue per "
         "request; stay close to the baseline when traffic is normal. "
         "Every limit must be an integer within the tier's [floor, ceiling]. "
         "Tiers marked fixed are not adaptive: give their current limit unchanged. "
         "Answer with one JSON object and nothing else: "
         "{\"limits\": {\"<tier name>\": <integer>, ...}, \"confidence\": <number 0..1>, "
         "\"rationale\": \"<one or two sentences>\"}, listing every tier exactly once.";
}

std::string user_prompt(const policy_loop::Snapshot& snap) {
  std::string s = "Tick " + std::to_string(snap.tick) + ". Host capacity " +
                  num(snap.capacity_rps) + " requests/s; host surge level " +
                  surge_text(snap.host_surge) + ".\n\nTiers (rates in requests/s, last tick):\n";
  s += "name | limit | baseline | floor | ceiling | window_ms | revenue_per_request | adaptive | "
       "keys | offered | admitted | denied | ewma | forecast | surge\n";
  for (const auto& t : snap.tiers) {
    s += json::quote(t.name) + " | " + std::to_string(t.limit) + " | " + std::to_string(t.baseline) +
         " | " + std::to_string(t.floor) + " | " + std::to_string(t.ceiling) + " | " +
         std::to_string(t.window_ns / 1000000) + " | " + num(t.revenue_per_request) + " | " +
         (t.adaptive ? "adaptive" : "fixed") + " | " + std::to_string(t.keys) + " | " +
         num(t.offered_rps) + " | " + num(t.admitted_rps) + " | " + num(t.denied_rps) + " | " +
         num(t.ewma_rps) + " | " + num(t.forecast_rps) + " | " + surge_text(t.surge) + "\n";
  }
  s += "\nGive the limits for the next tick.";
  return s;
}

std::string decision_schema(const policy_loop::Snapshot& snap) {
  std::string props, required;
  for (const auto& t : snap.tiers) {
    const auto [lo, hi] = bounds(t);
    if (!props.empty()) {
      props += ",";
      required += ",";
    }
    props += json::quote(t.name) + ":{\"type\":\"integer\",\"minimum\":" + std::to_string(lo) +
             ",\"maximum\":" + std::to_string(hi) + "}";
    required += json::quote(t.name);
  }
  return "{\"type\":\"object\",\"properties\":{"
         "\"limits\":{\"type\":\"object\",\"properties\":{" + props + "},\"required\":[" + required +
         "],\"additionalProperties\":false},"
         "\"confidence\":{\"type\":\"number\",\"minimum\":0,\"maximum\":1},"
         "\"rationale\":{\"type\":\"string\"}},"
         "\"required\":[\"limits\",\"confidence\",\"rationale\"],\"additionalProperties\":false}";
}

std::string request_body(const AdvisorConfig& config, const policy_loop::Snapshot& snap) {
  const std::string messages = "[{\"role\":\"system\",\"content\":" + json::quote(system_prompt()) +
                               "},{\"role\":\"user\",\"content\":" + json::quote(user_prompt(snap)) +
                               "}]";
  const std::string model = json::quote(config.model);
  const std::string schema = decision_schema(snap);
  if (config.kind == AdvisorConfig::ollama)
    return "{\"model\":" + model + ",\"stream\":false,\"format\":" + schema +
           ",\"options\":{\"temperature\":0},\"messages\":" + messages + "}";
  return "{\"model\":" + model + ",\"temperature\":0,\"stream\":false,"
         "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"sluice_limits\","
         "\"strict\":true,\"schema\":" + schema + "}},\"messages\":" + messages + "}";
}

const char* request_path(AdvisorConfig::Kind kind) {
  return kind == AdvisorConfig::ollama ? "/api/chat" : "/v1/chat/completions";
}

}  // namespace sluice::advisor
