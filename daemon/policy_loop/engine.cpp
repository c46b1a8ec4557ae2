#include "policy_loop/engine.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "sluice/core/key_table.hpp"
#include "sluice/core/tier_table.hpp"

namespace sluice::policy_loop {

std::string new_approval_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)rng());
  return std::string(buf, 8);
}

PolicyEngine::PolicyEngine(const policy::PolicySpec &spec, core::Owner &owner, AuditStore &store, uid_t daemon_uid)
    : spec_(spec), owner_(owner), store_(store), daemon_uid_(daemon_uid), traffic_(spec.surge, spec.tiers.size()) {
  // Start from what is published now (a restart keeps the limits clients see).
  for (uint32_t i = 0; i < spec.tiers.size(); ++i) {
    core::TierLimits t;
    core::read_tier(owner.policy(), i, t);
    limits_.push_back(t.limit);
  }
  snap_.capacity_rps = spec.capacity_rps;
}

bool PolicyEngine::may_govern(uid_t uid, gid_t gid, const std::vector<gid_t> &groups) const {
  const auto &g = spec_.governance;
  if (g.approvers.empty() && g.approver_gids.empty()) return uid == 0 || uid == daemon_uid_;
  auto approver_gid = [&](gid_t x) {
    return std::find(g.approver_gids.begin(), g.approver_gids.end(), x) != g.approver_gids.end();
  };
  return std::find(g.approvers.begin(), g.approvers.end(), uid) != g.approvers.end() || approver_gid(gid) ||
         std::any_of(groups.begin(), groups.end(), approver_gid);
}

uint64_t PolicyEngine::publish(int64_t) {
  std::vector<core::TierLimits> rows;
  for (size_t i = 0; i < spec_.tiers.size(); ++i) {
    const auto &t = spec_.tiers[i];
    rows.push_back(core::TierLimits{limits_[i], int64_t(t.window_ms) * 1'000'000,
                                    uint64_t(std::llround(t.revenue_per_request * 1e6)),
                                    t.adaptive ? core::kTierAdaptive : 0u, 0});
  }
  owner_.publish(rows);
  return owner_.policy().generation.load();
}

uint64_t PolicyEngine::next_generation() const { return owner_.policy().generation.load() + 1; }

bool PolicyEngine::has_pending(uint32_t tier) {
  for (const auto &p : store_.pending())
    if (p.tier == tier) return true;
  return false;
}

AuditRecord PolicyEngine::record(const std::string &event, const Proposal &p, const std::string &approval_id,
                                 uint64_t generation, int64_t unix_ms) const {
  AuditRecord r;
  r.unix_ms = unix_ms;
  r.event = event;
  r.actor = p.actor;
  r.tier = spec_.tiers[p.tier].name;
  r.old_limit = p.old_limit;
  r.new_limit = p.new_limit;
  r.reason = p.reason;
  r.confidence = p.confidence;
  r.approval_id = approval_id;
  r.generation = generation;
  return r;
}

TickReport PolicyEngine::tick(int64_t now_ns, int64_t now_unix_ms) {
  TickReport rep;
  const double dt = last_tick_ns_ ? double(now_ns - last_tick_ns_) / 1e9 : 0;
  last_tick_ns_ = now_ns;
  snap_.now_ns = now_ns;
  ++snap_.tick;
  snap_.tiers.resize(spec_.tiers.size());
  for (uint32_t i = 0; i < spec_.tiers.size(); ++i) {
    const auto &t = spec_.tiers[i];
    TierView &v = snap_.tiers[i];
    v.name = t.name;
    v.limit = limits_[i];
    v.baseline = t.limit;
    v.floor = t.floor;
    v.ceiling = t.ceiling;
    v.max_limit = t.max_limit;
    v.window_ns = int64_t(t.window_ms) * 1'000'000;
    v.revenue_per_request = t.revenue_per_request;
    v.adaptive = t.adaptive;
    traffic_.observe(i, core::sum_counters(owner_.state(), i), dt, v);
  }
  snap_.host_surge = host_surge(snap_.tiers, spec_.capacity_rps);

  // Expired approvals are dropped (and recorded) before anything new is decided.
  for (const auto &p : store_.pending()) {
    if (p.expires_unix_ms > now_unix_ms) continue;
    AuditRecord r{0, now_unix_ms, "expired", "system", p.tier_name, p.old_limit, p.new_limit,
                  "approval " + p.id + " expired unanswered: " + p.reason, p.confidence, p.id, 0};
    std::string err;
    if (store_.close_pending(p.id, r, err)) {
      rep.expired.push_back(p);
      ++counts_.expired;
    }
  }

  if (dt <= 0) return rep;  // first tick: no rates yet
  std::optional<Advice> advice = advice_ ? advice_(snap_) : std::nullopt;
  rep.source = advice ? "advisor" : "rules";
  rep.proposals = advice ? proposals_from_advice(snap_, *advice) : propose_by_rules(snap_);

  const double ratio_limit = spec_.governance.approval_ratio;
  std::vector<Proposal> apply;
  for (const Proposal &p : rep.proposals) {
    const double lo = std::max(1u, std::min(p.old_limit, p.new_limit));
    const double ratio = double(std::max(p.old_limit, p.new_limit)) / lo;
    if (p.old_limit == 0 || ratio > ratio_limit) {
      if (has_pending(p.tier)) continue;  // one question per tier at a time
      PendingApproval pa{new_approval_id(), p.tier, spec_.tiers[p.tier].name, p.old_limit, p.new_limit, p.reason,
                         p.actor, p.confidence, now_unix_ms,
                         now_unix_ms + int64_t(spec_.governance.approval_ttl_s) * 1000};
      AuditRecord r{0, now_unix_ms, "pending", p.actor, pa.tier_name, p.old_limit, p.new_limit,
                    p.reason + " [ratio " + std::to_string(ratio).substr(0, 4) + " > " +
                        std::to_string(ratio_limit).substr(0, 4) + ": waits for approval]",
                    p.confidence, pa.id, 0};
      std::string err;
      if (store_.put_pending(pa, r, err)) {
        rep.new_pending.push_back(pa);
        ++counts_.requested;
      } else {
        spdlog::error("audit: {}", err);
      }
      continue;
    }
    apply.push_back(p);
  }
  if (!apply.empty()) {
    // The publication's records are committed first (one commit), then the table
    // is published and counted: clients never see a change the trail lacks.
    const uint64_t gen = next_generation();
    std::vector<AuditRecord> rows;
    for (const Proposal &p : apply) rows.push_back(record("published", p, "", gen, now_unix_ms));
    std::string err;
    if (!store_.append_all(rows, err)) {
      spdlog::error("audit: {} (the loop's changes are not published; it tries again next tick)", err);
      return rep;
    }
    for (const Proposal &p : apply) limits_[p.tier] = p.new_limit;
    rep.generation = publish(now_unix_ms);
    if (rep.generation != gen)
      spdlog::error("published generation {}, recorded as {}: another process publishes", rep.generation, gen);
    ++counts_.published;
    rep.published = apply;
  }
  return rep;
}

CommandResult PolicyEngine::approve(const std::string &id, uid_t uid, gid_t gid, const std::vector<gid_t> &groups) {
  if (!may_govern(uid, gid, groups))
    return {false, "uid " + std::to_string(uid) + " (gid " + std::to_string(gid) +
                       ") is not an approver (governance.approvers)"};
  const auto p = store_.find_pending(id);
  if (!p) return {false, "no pending approval with id '" + id + "'"};
  const auto &t = spec_.tiers[p->tier];
  const uint32_t v = std::clamp(p->new_limit, t.floor, t.ceiling);
  const int64_t now = unix_ms_now();
  // The approval is recorded (and the question closed) in one commit before the
  // table is published; only then does it count.
  const uint64_t gen = next_generation();
  AuditRecord r{0, now, "approved", "human:" + std::to_string(uid), p->tier_name, p->old_limit, v,
                "approved: " + p->reason, p->confidence, id, gen};
  std::string err;
  if (!store_.close_pending(id, r, err))
    return {false, "not approved: the audit store failed (" + err + "); nothing was published and " + id +
                       " is still pending"};
  limits_[p->tier] = v;
  if (const uint64_t published = publish(now); published != gen)
    spdlog::error("published generation {}, recorded as {}: another process publishes", published, gen);
  ++counts_.approved;
  ++counts_.published;
  return {true, "approved " + id + ": " + p->tier_name + " " + std::to_string(p->old_limit) + " -> " +
                    std::to_string(v) + " published (generation " + std::to_string(gen) + ")"};
}

CommandResult PolicyEngine::reject(const std::string &id, const std::string &reason, uid_t uid, gid_t gid,
                                   const std::vector<gid_t> &groups) {
  if (!may_govern(uid, gid, groups))
    return {false, "uid " + std::to_string(uid) + " (gid " + std::to_string(gid) +
                       ") is not an approver (governance.approvers)"};
  const auto p = store_.find_pending(id);
  if (!p) return {false, "no pending approval with id '" + id + "'"};
  AuditRecord r{0, unix_ms_now(), "rejected", "human:" + std::to_string(uid), p->tier_name, p->old_limit,
                p->new_limit, "rejected: " + (reason.empty() ? std::string("no reason given") : reason), p->confidence,
                id, 0};
  std::string err;
  if (!store_.close_pending(id, r, err)) return {false, err};
  ++counts_.rejected;
  return {true, "rejected " + id + ": " + p->tier_name + " stays at " + std::to_string(limits_[p->tier])};
}

}  // namespace sluice::policy_loop
