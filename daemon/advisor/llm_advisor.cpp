#include "advisor/llm_advisor.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "advisor/decision.hpp"
#include "advisor/http_client.hpp"
#include "advisor/prompt.hpp"

namespace sluice::advisor {

const char* outcome_name(AdvisorOutcome o) {
  switch (o) {
    case AdvisorOutcome::ok: return "ok";
    case AdvisorOutcome::clamped: return "clamped";
    case AdvisorOutcome::low_confidence: return "low_confidence";
    case AdvisorOutcome::malformed: return "malformed";
    case AdvisorOutcome::timeout: return "timeout";
    case AdvisorOutcome::refused: return "refused";
    case AdvisorOutcome::http_error: return "http_error";
    case AdvisorOutcome::too_large: return "too_large";
    case AdvisorOutcome::transport_error: return "transport_error";
    case AdvisorOutcome::bad_config: return "bad_config";
  }
  return "unknown";
}

std::string validate_config(const AdvisorConfig& c) {
  if (c.kind != AdvisorConfig::ollama && c.kind != AdvisorConfig::openai) return "advisor: unknown kind";
  http::Url url;
  std::string error;
  if (!http::parse_url(c.base_url, &url, &error)) return error;
  if (c.model.empty()) return "advisor: model is empty";
  if (c.timeout_ms <= 0) return "advisor: timeout_ms must be positive";
  if (c.max_response_bytes < 1024) return "advisor: max_response_bytes must be at least 1024";
  if (!(c.min_confidence >= 0 && c.min_confidence <= 1)) return "advisor: min_confidence must be in [0, 1]";
  // It goes into a header line verbatim.
  if (std::any_of(c.api_key.begin(), c.api_key.end(),
                  [](char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f; }))
    return "advisor: api_key contains control characters";
  return {};
}

namespace {

AdvisorOutcome outcome_of(http::Error e) {
  switch (e) {
    case http::Error::none: return AdvisorOutcome::ok;
    case http::Error::bad_url: return AdvisorOutcome::bad_config;
    case http::Error::refused: return AdvisorOutcome::refused;
    case http::Error::timeout: return AdvisorOutcome::timeout;
    case http::Error::too_large: return AdvisorOutcome::too_large;
    case http::Error::io: return AdvisorOutcome::transport_error;
  }
  return AdvisorOutcome::transport_error;
}

std::string snippet(const std::string& body) {
  constexpr size_t kMax = 200;
  return body.size() <= kMax ? body : body.substr(0, kMax) + "...";
}

}  // namespace

LlmAdvisor::LlmAdvisor(AdvisorConfig config)
    : config_(std::move(config)), config_error_(validate_config(config_)) {}

AdvisorResult LlmAdvisor::ask(const policy_loop::Snapshot& snap, const std::atomic<bool>* cancel) {
  const auto start = std::chrono::steady_clock::now();
  AdvisorResult r;
  try {
    r = ask_unguarded(snap, cancel);
  } catch (const std::exception& e) {  // only bad_alloc is expected here
    r = AdvisorResult{};
    r.outcome = AdvisorOutcome::transport_error;
    r.detail = std::string("advisor failure: ") + e.what();
  }
  r.tick = snap.tick;
  r.snapshot_ns = snap.now_ns;
  r.latency_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  return r;
}

AdvisorResult LlmAdvisor::ask_unguarded(const policy_loop::Snapshot& snap, const std::atomic<bool>* cancel) {
  AdvisorResult r;
  if (!config_error_.empty()) {
    r.outcome = AdvisorOutcome::bad_config;
    r.detail = config_error_;
    return r;
  }
  if (snap.tiers.empty()) {
    r.outcome = AdvisorOutcome::bad_config;
    r.detail = "snapshot has no tiers to advise on";
    return r;
  }

  http::Request req;
  req.url = config_.base_url;
  req.path = request_path(config_.kind);
  req.body = request_body(config_, snap);
  if (config_.kind == AdvisorConfig::openai && !config_.api_key.empty())
    req.headers.emplace_back("Authorization", "Bearer " + config_.api_key);
  req.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(config_.timeout_ms);
  req.max_body_bytes = config_.max_response_bytes;
  req.cancel = cancel;

  http::Response resp = http::post(req);
  if (resp.status != 0 && (resp.status < 200 || resp.status > 299)) {
    // The status decides even if the error body was cut short.
    r.outcome = AdvisorOutcome::http_error;
    r.detail = "HTTP " + std::to_string(resp.status) + (resp.body.empty() ? "" : ": " + snippet(resp.body));
    return r;
  }
  if (resp.error != http::Error::none) {
    r.outcome = outcome_of(resp.error);
    r.detail = resp.detail;
    return r;
  }

  std::string error;
  const auto content = extract_content(config_.kind, resp.body, &error);
  if (!content) {
    r.outcome = AdvisorOutcome::malformed;
    r.detail = error;
    return r;
  }
  auto advice = parse_decision(*content, snap, &error);
  if (!advice) {
    r.outcome = AdvisorOutcome::malformed;
    r.detail = error;
    return r;
  }
  if (advice->confidence < config_.min_confidence) {
    r.outcome = AdvisorOutcome::low_confidence;
    r.detail = "confidence " + std::to_string(advice->confidence) + " below " +
               std::to_string(config_.min_confidence) + ": " + advice->rationale;
    return r;
  }
  std::string clamped;
  for (size_t i = 0; i < snap.tiers.size(); ++i)
    if (advice->clamped[i]) clamped += (clamped.empty() ? "" : ", ") + snap.tiers[i].name;
  r.outcome = clamped.empty() ? AdvisorOutcome::ok : AdvisorOutcome::clamped;
  r.detail = clamped.empty() ? advice->rationale : "clamped to [floor, ceiling]: " + clamped;
  r.advice = std::move(advice);
  return r;
}

}  // namespace sluice::advisor
