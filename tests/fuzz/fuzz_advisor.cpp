// The advisor's readers on arbitrary bytes, as a model server could send them. The
// first byte picks the reader: the JSON parser, the Ollama or the OpenAI envelope
// followed by the decision, the decision alone, or the escaping that carries model
// text into sluicectl's JSON. Each either refuses with a message or gives a result
// that keeps its promises: a parsed string quotes back to itself; advice has one
// limit per tier, adaptive ones within [floor, ceiling], fixed ones unchanged, a
// confidence in 0..1 and a bounded, well-formed rationale; escaped text parses back
// to itself (ill-formed UTF-8 replaced).
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "advisor/decision.hpp"
#include "advisor/json.hpp"
#include "commands.hpp"
#include "fuzz_check.hpp"
#include "text/utf8.hpp"

namespace {

using namespace sluice;

bool well_formed_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = text::utf8_sequence(s, i);
    if (!n) return false;
    i += n;
  }
  return true;
}

policy_loop::TierView tier(const char *name, uint32_t limit, uint32_t floor, uint32_t ceiling, bool adaptive) {
  policy_loop::TierView t;
  t.name = name;
  t.limit = t.baseline = limit;
  t.floor = floor;
  t.ceiling = t.max_limit = ceiling;
  t.window_ns = 1'000'000'000;
  t.adaptive = adaptive;
  return t;
}

const policy_loop::Snapshot &snapshot() {
  static const policy_loop::Snapshot s = [] {
    policy_loop::Snapshot x;
    x.now_ns = 1'700'000'000'000'000'000;
    x.capacity_rps = 900;
    x.tiers = {tier("enterprise", 15, 15, 120, true), tier("pro", 8, 4, 40, true), tier("free", 3, 1, 9, false)};
    return x;
  }();
  return s;
}

void check_advice(std::string_view content) {
  std::string error;
  const auto advice = advisor::parse_decision(content, snapshot(), &error);
  if (!advice) {
    FUZZ_CHECK(!error.empty(), "refused without a reason");
    return;
  }
  const auto &tiers = snapshot().tiers;
  FUZZ_CHECK(advice->limits.size() == tiers.size() && advice->clamped.size() == tiers.size(), "one limit per tier");
  for (size_t i = 0; i < tiers.size(); ++i) {
    const uint32_t v = advice->limits[i];
    if (tiers[i].adaptive)
      FUZZ_CHECK(v >= tiers[i].floor && v <= tiers[i].ceiling, "tier %zu: %u outside its bounds", i, v);
    else
      FUZZ_CHECK(v == tiers[i].limit && !advice->clamped[i], "fixed tier %zu changed to %u", i, v);
  }
  FUZZ_CHECK(std::isfinite(advice->confidence) && advice->confidence >= 0 && advice->confidence <= 1,
             "confidence %g", advice->confidence);
  FUZZ_CHECK(advice->rationale.size() <= advisor::kMaxRationaleBytes, "rationale of %zu bytes",
             advice->rationale.size());
  FUZZ_CHECK(well_formed_utf8(advice->rationale), "rationale is not well-formed UTF-8");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char *>(data) + 1, size - 1);
  std::string error;
  switch (data[0] % 5) {
    case 0: {
      const auto v = advisor::json::parse(body, &error);
      if (!v) {
        FUZZ_CHECK(!error.empty(), "refused without a reason");
        break;
      }
      if (v->type == advisor::json::Value::Type::string) {
        const auto back = advisor::json::parse(advisor::json::quote(v->text), &error);
        FUZZ_CHECK(back && back->type == advisor::json::Value::Type::string && back->text == v->text,
                   "a parsed string does not quote back to itself: %s", error.c_str());
      }
      break;
    }
    case 1:
    case 2: {
      const auto kind = data[0] % 5 == 1 ? advisor::AdvisorConfig::ollama : advisor::AdvisorConfig::openai;
      const auto content = advisor::extract_content(kind, body, &error);
      if (!content) {
        FUZZ_CHECK(!error.empty(), "envelope refused without a reason");
        break;
      }
      check_advice(*content);
      break;
    }
    case 3:
      check_advice(body);
      break;
    default: {
      const std::string raw(body);
      const auto v = advisor::json::parse(daemon::json_escape(raw), &error);
      FUZZ_CHECK(v && v->type == advisor::json::Value::Type::string, "json_escape gave invalid JSON: %s", error.c_str());
      FUZZ_CHECK(v->text == text::utf8_clean(raw), "json_escape did not round-trip");
    }
  }
  return 0;
}
