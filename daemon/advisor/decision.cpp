#include "advisor/decision.hpp"

#include <algorithm>
#include <cmath>

#include "advisor/json.hpp"

namespace sluice::advisor {

namespace {

using json::Value;

bool fail(std::string* error, std::string what) {
  if (error) *error = std::move(what);
  return false;
}

std::nullopt_t reject(std::string* error, std::string what) {
  fail(error, std::move(what));
  return std::nullopt;
}

const Value* member(const Value& obj, std::string_view key, Value::Type type, std::string_view where,
                    std::string* error) {
  const Value* v = obj.find(key);
  if (!v) {
    fail(error, std::string(where) + ": missing \"" + std::string(key) + "\"");
    return nullptr;
  }
  if (v->type != type) {
    fail(error, std::string(where) + ": \"" + std::string(key) + "\" is " + json::type_name(v->type) +
                    ", expected " + json::type_name(type));
    return nullptr;
  }
  return v;
}

// Cut at a UTF-8 character boundary.
// At most `max` bytes (the "..." that marks a cut included), cut between characters.
std::string truncate_utf8(std::string s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max - 3;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  s.resize(n);
  return s + "...";
}

}  // namespace

std::optional<std::string> extract_content(AdvisorConfig::Kind kind, std::string_view body,
                                           std::string* error) {
  std::string perr;
  const auto doc = json::parse(body, &perr);
  if (!doc) return reject(error, "response envelope: " + perr);
  if (doc->type != Value::Type::object) return reject(error, "response envelope is not an object");
  if (const Value* e = doc->find("error")) {
    const std::string what = e->type == Value::Type::string ? e->text : "(non-string error)";
    return reject(error, "server reported an error: " + truncate_utf8(what, 200));
  }
  const Value* message = nullptr;
  if (kind == AdvisorConfig::ollama) {
    message = member(*doc, "message", Value::Type::object, "response envelope", error);
  } else {
    const Value* choices = member(*doc, "choices", Value::Type::array, "response envelope", error);
    if (!choices) return std::nullopt;
    if (choices->items.empty()) return reject(error, "response envelope: \"choices\" is empty");
    const Value& first = choices->items.front();
    if (first.type != Value::Type::object)
      return reject(error, "response envelope: choices[0] is not an object");
    message = member(first, "message", Value::Type::object, "choices[0]", error);
  }
  if (!message) return std::nullopt;
  // OpenAI-style servers put a refusal here with content null.
  if (const Value* r = message->find("refusal"); r && r->type == Value::Type::string)
    return reject(error, "model refused: " + truncate_utf8(r->text, 200));
  const Value* content = member(*message, "content", Value::Type::string, "message", error);
  if (!content) return std::nullopt;
  return content->text;
}

std::optional<policy_loop::Advice> parse_decision(std::string_view content,
                                                  const policy_loop::Snapshot& snap,
                                                  std::string* error) {
  std::string perr;
  const auto doc = json::parse(content, &perr);
  if (!doc) return reject(error, "decision: " + perr);
  if (doc->type != Value::Type::object) return reject(error, "decision is not a JSON object");
  for (const auto& m : doc->members)
    if (m.key != "limits" && m.key != "confidence" && m.key != "rationale")
      return reject(error, "decision: unknown field \"" + m.key + "\"");

  const Value* limits = member(*doc, "limits", Value::Type::object, "decision", error);
  const Value* confidence = member(*doc, "confidence", Value::Type::number, "decision", error);
  const Value* rationale = member(*doc, "rationale", Value::Type::string, "decision", error);
  if (!limits || !confidence || !rationale) return std::nullopt;
  if (!std::isfinite(confidence->number) || confidence->number < 0 || confidence->number > 1)
    return reject(error, "decision: confidence " + confidence->text + " is outside [0, 1]");

  for (const auto& m : limits->members) {
    const bool known = std::any_of(snap.tiers.begin(), snap.tiers.end(),
                                   [&](const policy_loop::TierView& t) { return t.name == m.key; });
    if (!known) return reject(error, "decision: unknown tier \"" + m.key + "\" in limits");
  }

  policy_loop::Advice advice;
  advice.confidence = confidence->number;
  advice.rationale = truncate_utf8(rationale->text, kMaxRationaleBytes);
  advice.limits.reserve(snap.tiers.size());
  advice.clamped.reserve(snap.tiers.size());
  for (const auto& t : snap.tiers) {
    const Value* v = limits->find(t.name);
    if (!v) return reject(error, "decision: tier \"" + t.name + "\" missing from limits");
    if (v->type != Value::Type::number || !v->integral)
      return reject(error, "decision: limit for tier \"" + t.name + "\" is not an integer (" +
                             (v->type == Value::Type::number ? v->text : json::type_name(v->type)) + ")");
    if (!t.adaptive) {
      advice.limits.push_back(t.limit);
      advice.clamped.push_back(false);
      continue;
    }
    // Compare as double: the lexeme may be far outside uint32 (or negative).
    const double lo = t.floor, hi = std::max(t.floor, t.ceiling);
    const double want = v->number;
    advice.limits.push_back(static_cast<uint32_t>(std::clamp(want, lo, hi)));
    advice.clamped.push_back(want < lo || want > hi);
  }
  return advice;
}

}  // namespace sluice::advisor
