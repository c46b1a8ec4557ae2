// The policy loop, one tick at a time (off the request path):
//   shared counters -> traffic model -> snapshot -> proposals (rules, or a valid
//   advisor answer) -> governance (a change above approval_ratio waits for a
//   human) -> publication of the whole tier table -> audit records.
// Governance commands arrive with the caller's uid/gid (SO_PEERCRED).
// A tier table is published only after its audit records are committed, and the
// governance counts move only then: a failed audit write publishes and counts
// nothing (the loop tries again next tick; an approval stays pending).
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "policy/policy.hpp"
#include "policy_loop/allocator.hpp"
#include "policy_loop/audit_store.hpp"
#include "policy_loop/traffic.hpp"
#include "sluice/core/owner.hpp"

namespace sluice::policy_loop {

struct TickReport {
  std::vector<Proposal> proposals;
  std::vector<Proposal> published;
  std::vector<PendingApproval> new_pending;
  std::vector<PendingApproval> expired;
  std::string source;  // "rules" or "advisor"
  uint64_t generation = 0;
};

// What governance has done since the daemon started (for metrics and `top`).
struct GovernanceCounts {
  uint64_t requested = 0;  // changes that became pending approvals
  uint64_t approved = 0, rejected = 0, expired = 0;
  uint64_t stale = 0;   // closed unpublished: the limit was cut below the question's since it was asked
  uint64_t voided = 0;  // closed unpublished: its tier was removed, moved or made non-adaptive
  uint64_t published = 0;  // tier-table publications (by the loop or an approval)
};

struct CommandResult {
  bool ok = false;
  std::string message;
};

class PolicyEngine {
 public:
  // advice: optional; called each tick with the snapshot, returns advice to use now
  // (already validated by the advisor: confidence, bounds) or nothing.
  using AdviceSource = std::function<std::optional<Advice>(const Snapshot &)>;

  PolicyEngine(const policy::PolicySpec &spec, core::Owner &owner, AuditStore &store, uid_t daemon_uid);

  TickReport tick(int64_t now_ns, int64_t now_unix_ms);
  void set_advice_source(AdviceSource src) { advice_ = std::move(src); }
  // Where approval ids come from (default: new_approval_id()); tests make them clash.
  void set_id_source(std::function<std::string()> src) { id_source_ = std::move(src); }

  // `groups`: the caller's supplementary groups; any of them in approver_gids counts.
  CommandResult approve(const std::string &id, uid_t uid, gid_t gid, const std::vector<gid_t> &groups = {});
  CommandResult reject(const std::string &id, const std::string &reason, uid_t uid, gid_t gid,
                       const std::vector<gid_t> &groups = {});
  bool may_govern(uid_t uid, gid_t gid, const std::vector<gid_t> &groups = {}) const;

  const Snapshot &snapshot() const { return snap_; }
  const std::vector<uint32_t> &limits() const { return limits_; }
  const GovernanceCounts &governance_counts() const { return counts_; }
  AuditStore &store() { return store_; }

 private:
  // Publishes limits_ as the next generation and returns it. The caller has
  // committed the publication's audit records first and counts it after.
  uint64_t publish(int64_t now_unix_ms);
  // The generation the next publish() produces (the daemon is the only publisher).
  uint64_t next_generation() const;
  // Why a pending question can no longer be answered as asked ("" if it can).
  std::string void_reason(const PendingApproval &p, int64_t now_unix_ms) const;
  static constexpr int64_t kClockSlackMs = 60'000;
  // Records a new pending approval for p (a fresh id); false if the store failed.
  // window_ago > 0: asked because the raise is too large against that older limit.
  bool ask(const Proposal &p, int64_t now_unix_ms, TickReport &rep, uint32_t window_ago = 0);
  // Removes the question r names (r.approval_id) and commits r, then counts its
  // outcome (r.event); false with `err` if the store failed.
  bool close_question(const AuditRecord &r, std::string &err);
  // Closes a question without publishing anything, recorded as `event`.
  CommandResult close_unpublished(const PendingApproval &p, const std::string &event, const std::string &actor,
                                  int64_t old_limit, int64_t new_limit, const std::string &why, bool ok);
  AuditRecord record(const std::string &event, const Proposal &p, const std::string &approval_id,
                     uint64_t generation, int64_t unix_ms) const;

  policy::PolicySpec spec_;
  core::Owner &owner_;
  AuditStore &store_;
  uid_t daemon_uid_;
  TrafficModel traffic_;
  struct Denials {  // per tier, for TierView::calm_ticks and denied_limit
    uint64_t last_tick = 0;   // the last tick with denials (0: none yet)
    uint32_t limit = 0;       // the highest limit that denied, since limit_tick
    uint64_t limit_tick = 0;
    double offered_rps = 0;   // what was offered when it did
  };
  std::vector<Denials> denials_;
  void remember_denials(uint32_t tier, TierView &v);
  Snapshot snap_;
  std::vector<uint32_t> limits_;
  int64_t last_tick_ns_ = 0;
  AdviceSource advice_;
  std::function<std::string()> id_source_;
  std::map<std::string, uint32_t> last_held_;  // open question id -> the last held proposal's limit
  // Per tier, the limits published (unix ms, limit), oldest first, from the one in
  // force approval_window_s ago: a raise's ratio is also taken against that one.
  std::vector<std::deque<std::pair<int64_t, uint32_t>>> history_;
  uint32_t limit_window_ago(uint32_t tier, int64_t now_unix_ms);
  void restore_history(uint32_t tier, int64_t now_unix_ms);
  void remember(uint32_t tier, int64_t now_unix_ms, uint32_t limit);
  GovernanceCounts counts_;
};

std::string new_approval_id();

}  // namespace sluice::policy_loop
