#include "metrics_page.hpp"

#include <cstdio>

#include "metrics/exposition.hpp"

namespace sluice::daemon {

using metrics::Exposition;

namespace {

double level(policy_loop::Surge s) { return double(static_cast<int>(s)); }

void tier_counters(Exposition &e, const Status &st, const LoopState &loop) {
  e.family("sluice_admissions_total", "counter",
           "Admission decisions by tier, decision (allowed, denied) and reason, as clients recorded them in shared memory.");
  for (const TierStatus &t : st.tiers) {
    const auto &c = t.counters;
    e.sample("sluice_admissions_total", {{"tier", t.name}, {"decision", "allowed"}, {"reason", "allowed"}}, c.admitted);
    e.sample("sluice_admissions_total", {{"tier", t.name}, {"decision", "denied"}, {"reason", "window_full"}},
             c.denied_window);
    e.sample("sluice_admissions_total", {{"tier", t.name}, {"decision", "denied"}, {"reason", "cost_above_limit"}},
             c.denied_cost);
    e.sample("sluice_admissions_total", {{"tier", t.name}, {"decision", "denied"}, {"reason", "tier_closed"}},
             c.denied_closed);
  }
  e.family("sluice_cost_units_total", "counter", "Cost units admitted, by tier.");
  for (const TierStatus &t : st.tiers) e.sample("sluice_cost_units_total", {{"tier", t.name}}, t.counters.cost_units);
  e.family("sluice_revenue_dollars_total", "counter",
           "Revenue admitted since this sluiced started, by tier: admissions times the tier's revenue per request "
           "(a restart resets it, so a changed price never makes it go down).");
  for (size_t i = 0; i < st.tiers.size(); ++i) {
    const TierStatus &t = st.tiers[i];
    const uint64_t base = i < loop.admitted_at_start.size() ? loop.admitted_at_start[i] : 0;
    const uint64_t since = t.counters.admitted >= base ? t.counters.admitted - base : 0;
    e.sample("sluice_revenue_dollars_total", {{"tier", t.name}}, double(since) * t.revenue_per_request);
  }
}

void tier_table(Exposition &e, const Status &st) {
  auto per_tier = [&](const char *name, const char *type, const char *help, auto value) {
    e.family(name, type, help);
    for (const TierStatus &t : st.tiers) e.sample(name, {{"tier", t.name}}, value(t));
  };
  per_tier("sluice_tier_limit", "gauge", "The published limit: units per window for each key of the tier.",
           [](const TierStatus &t) { return double(t.limit); });
  per_tier("sluice_tier_max_limit", "gauge", "The largest limit the tier can be given (each key's ring capacity).",
           [](const TierStatus &t) { return double(t.capacity); });
  per_tier("sluice_tier_window_seconds", "gauge", "The tier's sliding window.",
           [](const TierStatus &t) { return double(t.window_ns) / 1e9; });
  per_tier("sluice_tier_revenue_per_request_dollars", "gauge", "Revenue per admitted request of the tier.",
           [](const TierStatus &t) { return t.revenue_per_request; });
  per_tier("sluice_tier_adaptive", "gauge", "1 if the policy loop may change the tier's limit, else 0.",
           [](const TierStatus &t) { return t.adaptive ? 1.0 : 0.0; });
  per_tier("sluice_keys_in_use", "gauge", "Keys with an entry in the tier's key table.",
           [](const TierStatus &t) { return double(t.keys); });
  per_tier("sluice_key_slots", "gauge", "Capacity of the tier's key table.",
           [](const TierStatus &t) { return double(t.key_slots); });
}

void loop_view(Exposition &e, const LoopState &loop) {
  const auto &tiers = loop.snapshot.tiers;
  auto per_tier = [&](const char *name, const char *help, auto value) {
    e.family(name, "gauge", help);
    for (const auto &t : tiers) e.sample(name, {{"tier", t.name}}, value(t));
  };
  per_tier("sluice_tier_baseline_limit", "The tier's limit in the policy file (the loop's baseline).",
           [](const policy_loop::TierView &t) { return double(t.baseline); });
  per_tier("sluice_tier_floor_limit", "The lowest limit the loop may give the tier.",
           [](const policy_loop::TierView &t) { return double(t.floor); });
  per_tier("sluice_tier_ceiling_limit", "The highest limit the loop may give the tier.",
           [](const policy_loop::TierView &t) { return double(t.ceiling); });
  per_tier("sluice_tier_offered_requests_per_second", "Requests offered (admitted + denied) per second at the last tick.",
           [](const policy_loop::TierView &t) { return t.offered_rps; });
  per_tier("sluice_tier_admitted_requests_per_second", "Requests admitted per second at the last tick.",
           [](const policy_loop::TierView &t) { return t.admitted_rps; });
  per_tier("sluice_tier_expected_requests_per_second", "The loop's baseline of offered traffic (EWMA, learned when calm).",
           [](const policy_loop::TierView &t) { return t.ewma_rps; });
  per_tier("sluice_tier_forecast_requests_per_second", "Holt's linear-trend forecast of offered traffic, a few ticks ahead.",
           [](const policy_loop::TierView &t) { return t.forecast_rps; });
  per_tier("sluice_surge_level", "The tier's surge level: 0 normal, 1 surge, 2 ddos.",
           [](const policy_loop::TierView &t) { return level(t.surge); });
  e.family("sluice_host_surge_level", "gauge", "The host's surge level: 0 normal, 1 surge, 2 ddos.");
  e.sample("sluice_host_surge_level", {}, level(loop.snapshot.host_surge));
  e.family("sluice_capacity_requests_per_second", "gauge", "Backend capacity from the policy file (0: unbounded).");
  e.sample("sluice_capacity_requests_per_second", {}, loop.snapshot.capacity_rps);
  e.family("sluice_policy_ticks_total", "counter", "Policy loop ticks since sluiced started.");
  e.sample("sluice_policy_ticks_total", {}, loop.snapshot.tick);
}

void governance(Exposition &e, const LoopState &loop) {
  const auto &g = loop.governance;
  e.family("sluice_pending_approvals", "gauge", "Limit changes waiting for a human's approval.");
  e.sample("sluice_pending_approvals", {}, double(loop.pending.size()));
  e.family("sluice_governance_events_total", "counter",
           "Governance events since sluiced started: requested (a change became pending), approved, rejected, "
           "expired, stale (closed: the limit was cut since it was asked), void (closed: its tier changed).");
  e.sample("sluice_governance_events_total", {{"event", "requested"}}, g.requested);
  e.sample("sluice_governance_events_total", {{"event", "approved"}}, g.approved);
  e.sample("sluice_governance_events_total", {{"event", "rejected"}}, g.rejected);
  e.sample("sluice_governance_events_total", {{"event", "expired"}}, g.expired);
  e.sample("sluice_governance_events_total", {{"event", "stale"}}, g.stale);
  e.sample("sluice_governance_events_total", {{"event", "void"}}, g.voided);
  e.family("sluice_policy_publications_total", "counter", "Tier tables published since sluiced started.");
  e.sample("sluice_policy_publications_total", {}, g.published);
  e.family("sluice_audit_store_errors_total", "counter",
           "Audit store (SQLite) operations that failed since sluiced started: a full disk, a lock held too long, "
           "I/O errors. While writes fail the loop publishes nothing (every publication is recorded first).");
  e.sample("sluice_audit_store_errors_total", {}, double(loop.audit_store_errors));
  e.family("sluice_audit_records_pruned_total", "counter",
           "Audit records older than the policy's audit_retention_days deleted since sluiced started.");
  e.sample("sluice_audit_records_pruned_total", {}, double(loop.audit_records_pruned));
}

void advisor_view(Exposition &e, const LoopState &loop) {
  e.family("sluice_advisor_enabled", "gauge", "1 if an LLM advisor is configured (else the built-in rules decide).");
  e.sample("sluice_advisor_enabled", {{"kind", loop.advisor_kind}, {"model", loop.advisor_model}},
           loop.advisor ? 1.0 : 0.0);
  const advisor::AdvisorStats none;
  const advisor::AdvisorStats &a = loop.advisor ? *loop.advisor : none;
  e.family("sluice_advisor_busy", "gauge", "1 while a request to the advisor is in flight or waiting.");
  e.sample("sluice_advisor_busy", {}, a.busy ? 1.0 : 0.0);
  e.family("sluice_advisor_calls_total", "counter",
           "Advisor answers by outcome; every outcome but ok and clamped fell back to the rules.");
  for (size_t i = 0; i < advisor::kAdvisorOutcomeCount; ++i)
    e.sample("sluice_advisor_calls_total", {{"outcome", advisor::outcome_name(static_cast<advisor::AdvisorOutcome>(i))}},
             a.outcomes[i]);
  e.family("sluice_advisor_latency_seconds", "histogram", "Time from request to answer (or failure) of the advisor.");
  for (size_t b = 0; b < advisor::AdvisorStats::kLatencyBounds.size(); ++b) {
    char le[32];
    std::snprintf(le, sizeof le, "%g", advisor::AdvisorStats::kLatencyBounds[b]);
    e.sample("sluice_advisor_latency_seconds_bucket", {{"le", le}}, a.latency_le[b]);
  }
  e.sample("sluice_advisor_latency_seconds_bucket", {{"le", "+Inf"}}, a.latency_count);
  e.sample("sluice_advisor_latency_seconds_sum", {}, a.latency_sum_s);
  e.sample("sluice_advisor_latency_seconds_count", {}, a.latency_count);
  e.family("sluice_advisor_dropped_snapshots_total", "counter",
           "Snapshots replaced before the advisor was free to read them.");
  e.sample("sluice_advisor_dropped_snapshots_total", {}, a.dropped_snapshots);
}

}  // namespace

std::string render_metrics(const Status &st, const LoopState &loop) {
  Exposition e;
  e.family("sluice_build_info", "gauge", "Always 1; the label says which sluiced serves this segment.");
  e.sample("sluice_build_info", {{"version", SLUICE_VERSION}}, 1.0);
  e.family("sluice_heartbeat_age_seconds", "gauge",
           "Age of sluiced's heartbeat in the segment, as clients see it (-1 after a clean stop).");
  e.sample("sluice_heartbeat_age_seconds", {}, st.heartbeat_age_ns < 0 ? -1.0 : double(st.heartbeat_age_ns) / 1e9);
  e.family("sluice_clock_tsc", "gauge",
           "1 if clients read time through the TSC with sluiced's calibration, 0 if through clock_gettime.");
  e.sample("sluice_clock_tsc", {}, st.clock_tsc ? 1.0 : 0.0);
  e.family("sluice_clock_offset_seconds", "gauge",
           "The TSC clock minus CLOCK_MONOTONIC at this scrape (0 when clients call clock_gettime).");
  e.sample("sluice_clock_offset_seconds", {}, double(st.clock_offset_ns) / 1e9);
  e.family("sluice_daemon_starts_total", "counter", "Times a sluiced has created or re-attached this segment.");
  e.sample("sluice_daemon_starts_total", {}, st.daemon_starts);
  e.family("sluice_keys_reclaimed_total", "counter", "Idle keys reclaimed by sluiced's garbage collection.");
  e.sample("sluice_keys_reclaimed_total", {}, st.keys_reclaimed);
  e.family("sluice_segment_bytes", "gauge", "Size of the state segment.");
  e.sample("sluice_segment_bytes", {}, double(st.segment_bytes));
  e.family("sluice_policy_generation", "gauge", "Generation of the published tier table: one more per publication, and per start of sluiced "
           "(which re-publishes the policy file's table); sluice_policy_publications_total counts only the former.");
  e.sample("sluice_policy_generation", {}, double(st.policy_generation));
  tier_counters(e, st, loop);
  tier_table(e, st);
  loop_view(e, loop);
  governance(e, loop);
  advisor_view(e, loop);
  return e.text();
}

}  // namespace sluice::daemon
