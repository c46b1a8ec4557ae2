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
    history_.push_back({{INT64_MIN, t.limit}});  // the window starts with what is published now
    if (spec.governance.approval_window_s) restore_history(i, store_.trail_now());
  }
  // A start counts as a tick with denials: a limit kept above the baseline was
  // raised by denials this process never saw, and easing it on the first tick
  // after a routine restart brought them straight back (the hold is in memory).
  denials_.assign(spec.tiers.size(), Denials{1, 0, 0, 0});
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

namespace {

// A raise whose ratio to the current limit exceeds approval_ratio waits for a
// human. A cut never waits: shedding load in a surge or a DDoS is the point of
// the loop, and a cut's ratio to the current limit is below 1.
bool needs_approval(uint32_t old_limit, uint32_t new_limit, double ratio_limit) {
  if (new_limit <= old_limit) return false;
  return old_limit == 0 || double(new_limit) / double(old_limit) > ratio_limit;
}

std::string ratio_text(uint32_t old_limit, uint32_t new_limit) {
  if (old_limit == 0) return "from 0";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fx", double(new_limit) / double(old_limit));
  return buf;
}

const PendingApproval *pending_for(const std::vector<PendingApproval> &ps, uint32_t tier) {
  for (const auto &p : ps)
    if (p.tier == tier) return &p;
  return nullptr;
}

}  // namespace

uint32_t PolicyEngine::limit_window_ago(uint32_t tier, int64_t now_unix_ms) {
  auto &h = history_[tier];
  const int64_t cutoff = now_unix_ms - int64_t(spec_.governance.approval_window_s) * 1000;
  while (h.size() > 1 && h[1].first <= cutoff) h.pop_front();  // front: the one in force at the cutoff
  return h.front().second;
}

// The window's history from the trail: a restart must not make the limits of the
// last approval_window_s seconds forget the steps that led to them (the loop
// could otherwise climb past the ratio by restarting). An approval resets the
// reference, as it does live; what is published now ends the history.
void PolicyEngine::restore_history(uint32_t tier, int64_t now_unix_ms) {
  const auto changes =
      store_.limits_since(spec_.tiers[tier].name, now_unix_ms - int64_t(spec_.governance.approval_window_s) * 1000);
  auto &h = history_[tier];
  for (const auto &c : changes) {
    if (c.limit < 0 || c.limit > int64_t(UINT32_MAX)) continue;
    const uint32_t v = uint32_t(c.limit);
    if (c.unix_ms == INT64_MIN || c.event == "approved") h = {{INT64_MIN, v}};
    else h.emplace_back(c.unix_ms, v);
  }
  if (h.back().second != limits_[tier]) h.emplace_back(now_unix_ms, limits_[tier]);
}

void PolicyEngine::remember(uint32_t tier, int64_t now_unix_ms, uint32_t limit) {
  history_[tier].emplace_back(now_unix_ms, limit);
  limit_window_ago(tier, now_unix_ms);  // prunes
}

std::string PolicyEngine::void_reason(const PendingApproval &p, int64_t now_unix_ms) const {
  // The trail's clock never goes back within a boot; a question from its future
  // was asked before a reboot that found the system clock more than a day behind
  // (trail_clock.hpp). Its expiry would then be that far off too.
  if (p.created_unix_ms > now_unix_ms + kClockSlackMs)
    return "asked at " + std::to_string(p.created_unix_ms) + " ms, later than the trail's clock now (" +
           std::to_string(now_unix_ms) + "): the system clock went back across a restart";
  if (p.tier >= spec_.tiers.size() || spec_.tiers[p.tier].name != p.tier_name)
    return "tier '" + p.tier_name + "' is no longer tier " + std::to_string(p.tier) + " of the policy";
  if (!spec_.tiers[p.tier].adaptive) return "tier '" + p.tier_name + "' is not adaptive (\"adaptive\": false)";
  return "";
}

bool PolicyEngine::ask(const Proposal &p, int64_t now_unix_ms, TickReport &rep, uint32_t window_ago) {
  PendingApproval pa{"", p.tier, spec_.tiers[p.tier].name, p.old_limit, p.new_limit, p.reason, p.actor,
                     p.confidence, now_unix_ms, now_unix_ms + int64_t(spec_.governance.approval_ttl_s) * 1000};
  AuditRecord r{0, now_unix_ms, "pending", p.actor, pa.tier_name, p.old_limit, p.new_limit,
                p.reason + " [" +
                    (window_ago ? ratio_text(window_ago, p.new_limit) + " the limit of " +
                                      std::to_string(spec_.governance.approval_window_s) + " s ago (" +
                                      std::to_string(window_ago) + ")"
                                : ratio_text(p.old_limit, p.new_limit)) +
                    " > " + std::to_string(spec_.governance.approval_ratio).substr(0, 4) + ": waits for approval]",
                p.confidence, "", 0};
  std::string err;
  for (int attempt = 0; attempt < 4; ++attempt) {  // ids are 32 random bits: a clash is rare, not impossible
    pa.id = r.approval_id = id_source_ ? id_source_() : new_approval_id();
    bool duplicate = false;
    err.clear();
    if (store_.put_pending(pa, r, err, &duplicate)) {
      rep.new_pending.push_back(pa);
      ++counts_.requested;
      return true;
    }
    if (!duplicate) break;
  }
  spdlog::error("audit: {} (the question for tier '{}' is not asked; the loop tries again next tick)", err,
                pa.tier_name);
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

// This tick's denials were made under v.limit, the limit published until now.
void PolicyEngine::remember_denials(uint32_t tier, TierView &v) {
  if (denials_.size() <= tier) denials_.resize(tier + 1);
  Denials &d = denials_[tier];
  const uint64_t now = snap_.tick;
  if (v.denied_rps > 0) {
    d.last_tick = now;
    if (v.limit >= d.limit || now - d.limit_tick > kDeniedMemoryTicks) {
      d.limit = v.limit;
      d.limit_tick = now;
      d.offered_rps = v.offered_rps;
    }
  }
  v.calm_ticks = d.last_tick ? uint32_t(std::min<uint64_t>(now - d.last_tick, UINT32_MAX)) : UINT32_MAX;
  // Only while the demand that met it is still here: once traffic falls, a limit
  // that denied it says nothing (it pinned an idle tier's limit for 600 ticks).
  const bool same_demand = v.offered_rps >= 0.9 * d.offered_rps;
  v.denied_limit = d.limit && now - d.limit_tick <= kDeniedMemoryTicks && same_demand ? d.limit : 0;
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
    traffic_.observe(i, core::sum_counters(owner_.state(), i, core::CounterSum::wrapping), dt, v);
    remember_denials(i, v);
  }
  snap_.host_surge = host_surge(snap_.tiers, spec_.capacity_rps);

  // Expired questions, and ones the policy no longer allows (a tier gone, moved or
  // made non-adaptive by a restart), are closed and recorded before anything new is decided.
  std::vector<PendingApproval> open;
  std::string store_err;
  const bool pending_known = store_.pending(open, store_err);
  if (!pending_known) spdlog::error("audit: cannot read pending approvals: {} (no new question this tick)", store_err);
  for (auto it = open.begin(); it != open.end();) {
    const std::string why = void_reason(*it, now_unix_ms);
    if (it->expires_unix_ms > now_unix_ms && why.empty()) {
      ++it;
      continue;
    }
    const bool expired = why.empty();
    AuditRecord r{0, now_unix_ms, expired ? "expired" : "void", "system", it->tier_name, it->old_limit,
                  it->new_limit,
                  "approval " + it->id + (expired ? " expired unanswered: " : " closed: " + why + ": ") + it->reason,
                  it->confidence, it->id, 0};
    std::string err;
    if (close_question(r, err)) {
      if (expired) rep.expired.push_back(*it);
      it = open.erase(it);
    } else {
      spdlog::error("audit: {}", err);
      ++it;
    }
  }

  std::erase_if(last_held_, [&](const auto &kv) { return !std::any_of(open.begin(), open.end(), [&](const auto &q) { return q.id == kv.first; }); });

  if (dt <= 0) return rep;  // first tick: no rates yet
  std::optional<Advice> advice = advice_ ? advice_(snap_) : std::nullopt;
  rep.source = advice ? "advisor" : "rules";
  rep.proposals = advice ? proposals_from_advice(snap_, *advice) : propose_by_rules(snap_);

  const double ratio_limit = spec_.governance.approval_ratio;
  std::vector<Proposal> apply;
  std::vector<AuditRecord> held;
  for (const Proposal &p : rep.proposals) {
    const uint32_t before = spec_.governance.approval_window_s ? limit_window_ago(p.tier, now_unix_ms) : p.old_limit;
    const bool by_steps = p.new_limit > p.old_limit && needs_approval(before, p.new_limit, ratio_limit);
    // The rules' way back up to the policy file's own limit, after a cut (cuts
    // never wait), is what the operator wrote, not a new decision: without this, a
    // tier cut by a DDoS stayed at its floor until someone approved its return.
    // The rules take it only once no DDoS or capacity holds the tier down; an
    // advisor's raise is judged as any other.
    const bool to_baseline = p.actor == "rules" && p.new_limit <= spec_.tiers[p.tier].limit;
    if (to_baseline || (!needs_approval(p.old_limit, p.new_limit, ratio_limit) && !by_steps)) {
      apply.push_back(p);
      continue;
    }
    if (!pending_known) continue;
    if (const PendingApproval *q = pending_for(open, p.tier)) {  // one question per tier at a time
      // Recorded when the held value changes, not on every tick that repeats it.
      auto [last, fresh] = last_held_.try_emplace(q->id, p.new_limit);
      if (fresh || last->second != p.new_limit) {
        last->second = p.new_limit;
        held.push_back(record("held", p, q->id, 0, now_unix_ms));
        held.back().reason += " [held: question " + q->id + " for this tier is still open]";
      }
      continue;
    }
    ask(p, now_unix_ms, rep, needs_approval(p.old_limit, p.new_limit, ratio_limit) ? 0 : before);
  }
  if (!held.empty()) {
    std::string err;
    if (!store_.append_all(held, err)) spdlog::error("audit: {}", err);
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
    for (const Proposal &p : apply) {
      limits_[p.tier] = p.new_limit;
      remember(p.tier, now_unix_ms, p.new_limit);
    }
    rep.generation = publish(now_unix_ms);
    if (rep.generation != gen)
      spdlog::error("published generation {}, recorded as {}: another process publishes", rep.generation, gen);
    ++counts_.published;
    rep.published = apply;
  }
  return rep;
}

bool PolicyEngine::close_question(const AuditRecord &r, std::string &err) {
  if (!store_.close_pending(r.approval_id, r, err)) return false;
  // Every way a question ends is counted here, once its record is committed.
  if (r.event == "approved") ++counts_.approved;
  else if (r.event == "rejected") ++counts_.rejected;
  else if (r.event == "expired") ++counts_.expired;
  else if (r.event == "stale") ++counts_.stale;
  else if (r.event == "void") ++counts_.voided;
  return true;
}

CommandResult PolicyEngine::close_unpublished(const PendingApproval &p, const std::string &event,
                                              const std::string &actor, int64_t old_limit, int64_t new_limit,
                                              const std::string &why, bool ok) {
  AuditRecord r{0, store_.trail_now(), event, actor, p.tier_name, old_limit, new_limit,
                why + " (asked: " + std::to_string(p.old_limit) + " -> " + std::to_string(p.new_limit) + ": " +
                    p.reason + ")",
                p.confidence, p.id, 0};
  std::string err;
  if (!close_question(r, err)) return {false, "the audit store failed (" + err + "); " + p.id + " is still pending"};
  return {ok, p.id + ": " + why};
}

CommandResult PolicyEngine::approve(const std::string &id, uid_t uid, gid_t gid, const std::vector<gid_t> &groups) {
  if (!may_govern(uid, gid, groups))
    return {false, "uid " + std::to_string(uid) + " (gid " + std::to_string(gid) +
                       ") is not an approver (governance.approvers)"};
  std::string err;
  const auto p = store_.find_pending(id, err);
  if (!p) return {false, err.empty() ? "no pending approval with id '" + id + "'" : "the audit store failed: " + err};
  const std::string human = "human:" + std::to_string(uid);
  const int64_t now = store_.trail_now();
  if (p->expires_unix_ms <= now)
    return close_unpublished(*p, "expired", "system", p->old_limit, p->new_limit,
                             "expired before it was approved; nothing published", false);
  if (const std::string why = void_reason(*p, now); !why.empty())
    return close_unpublished(*p, "void", human, p->old_limit, p->new_limit, why + "; nothing published", false);
  const auto &t = spec_.tiers[p->tier];
  const uint32_t cur = limits_[p->tier];
  const uint32_t v = std::clamp(p->new_limit, t.floor, t.ceiling);
  // The approver saw old -> new. Since then the loop may have moved the limit by
  // steps within the ratio: a limit now below the one asked about would make this
  // a larger jump than the one approved, so the question is closed instead.
  // A question asked as a raise (cuts are never asked now; an older store may
  // still hold one, and approving it simply applies it: a cut needs no approval).
  if (p->new_limit > p->old_limit && cur < p->old_limit)
    return close_unpublished(*p, "stale", human, cur, cur,
                             "the limit moved from " + std::to_string(p->old_limit) + " to " + std::to_string(cur) +
                                 " since this was asked, and " + std::to_string(cur) + " -> " + std::to_string(v) +
                                 " is a larger jump than the one asked; nothing published (the loop asks again if "
                                 "it still wants the raise)",
                             false);
  if (v == cur || (p->new_limit > p->old_limit && v < cur))
    return close_unpublished(*p, "approved", human, cur, cur,
                             "approved; the limit is already " + std::to_string(cur) + ", nothing to publish", true);
  // The approval is recorded (and the question closed) in one commit before the
  // table is published; only then does it count.
  const uint64_t gen = next_generation();
  AuditRecord r{0, now, "approved", human, p->tier_name, cur, v, "approved: " + p->reason, p->confidence, id, gen};
  if (!close_question(r, err))
    return {false, "not approved: the audit store failed (" + err + "); nothing was published and " + id +
                       " is still pending"};
  limits_[p->tier] = v;
  history_[p->tier] = {{INT64_MIN, v}};  // what a human approved is the window's new reference
  if (const uint64_t published = publish(now); published != gen)
    spdlog::error("published generation {}, recorded as {}: another process publishes", published, gen);
  ++counts_.published;
  return {true, "approved " + id + ": " + p->tier_name + " " + std::to_string(cur) + " -> " + std::to_string(v) +
                    " published (generation " + std::to_string(gen) + ")"};
}

CommandResult PolicyEngine::reject(const std::string &id, const std::string &reason, uid_t uid, gid_t gid,
                                   const std::vector<gid_t> &groups) {
  if (!may_govern(uid, gid, groups))
    return {false, "uid " + std::to_string(uid) + " (gid " + std::to_string(gid) +
                       ") is not an approver (governance.approvers)"};
  std::string err;
  const auto p = store_.find_pending(id, err);
  if (!p) return {false, err.empty() ? "no pending approval with id '" + id + "'" : "the audit store failed: " + err};
  AuditRecord r{0, store_.trail_now(), "rejected", "human:" + std::to_string(uid), p->tier_name, p->old_limit,
                p->new_limit, "rejected: " + (reason.empty() ? std::string("no reason given") : reason), p->confidence,
                id, 0};
  if (!close_question(r, err)) return {false, err};
  const std::string now_at =
      p->tier < limits_.size() ? " stays at " + std::to_string(limits_[p->tier]) : " (no longer in the policy)";
  return {true, "rejected " + id + ": " + p->tier_name + now_at};
}

}  // namespace sluice::policy_loop
