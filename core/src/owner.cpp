#include "sluice/core/owner.hpp"
#include "sluice/core/tsc_clock.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <new>

#include "sluice/core/clock.hpp"

namespace sluice::core {

namespace {
constexpr int64_t kDeadClaimGraceNs = 2'000'000'000;  // a live inserter fills a slot in microseconds
// Clients' group reads and writes the state and reads the policy; no one else gets anything.
constexpr unsigned kStateMode = 0660, kPolicyMode = 0640;
constexpr uint32_t kStateForbidden = 0007, kPolicyForbidden = 0027;

// Openers trust a state still under its name (Ledger::open): only an unlinked one is freed.
void discard_if_unlinked(Mapping &state, const std::string &name) {
  if (!state.still_named(state_segment_name(name))) state.discard_contents();
}

bool may_remove(const Mapping::FileOwner &fo) {
  const uint32_t me = uint32_t(::geteuid());
  return fo.uid == me || me == 0;
}

std::string mismatch_detail(const std::string &why) {
  return "existing segment does not match the policy: " + why + " (use --reset to recreate it)";
}

std::vector<TierLimits> rows_of(const LayoutSpec &spec) {
  std::vector<TierLimits> rows;
  for (const TierSpec &t : spec.tiers)
    rows.push_back(TierLimits{t.limit, t.window_ns, uint64_t(t.revenue_per_request * 1e6 + 0.5),
                              t.adaptive ? kTierAdaptive : 0, 0});
  return rows;
}
}  // namespace

bool Owner::retire(const std::string &name) {
  Mapping m;
  std::string detail;
  Mapping::FileOwner fo;
  // Only a pair this uid may remove (its own; any, for root): another user's is left alone.
  if (Mapping::open(policy_segment_name(name), true, m, detail, &fo) != Status::ok || !may_remove(fo) ||
      validate_policy(m, 0, detail) != Status::ok)
    return false;
  retire_tiers(*static_cast<PolicyHeader *>(m.base()));
  return true;
}

void Owner::remove(const std::string &name) {
  // Mapped before it is unlinked, to free its memory after: every client that
  // still maps the retired pair (until its next call reopens the name; for good,
  // if it never calls again) would otherwise keep all of its pages allocated.
  Mapping state;
  std::string detail;
  Mapping::FileOwner fo;
  const bool mapped = Mapping::open(state_segment_name(name), true, state, detail, &fo) == Status::ok && may_remove(fo);
  const bool was_retired = retire(name);  // first: a client still mapping the pair reopens the name instead of counting alone
  // State before policy, as create makes them: Ledger::open relies on this order to
  // tell a matching pair from one torn by a reset between its two opens.
  Mapping::remove(state_segment_name(name));
  Mapping::remove(policy_segment_name(name));
  // Only once retired (and no longer under its name): a call still in flight on it
  // reads zeros from here on, then reads the retirement and decides again in the
  // new pair (docs/ADMISSION.md).
  if (mapped && was_retired) discard_if_unlinked(state, name);
}

Owner::Preview Owner::preview(const std::string &name, const LayoutSpec &spec, bool reset) {
  // The same steps as create_or_attach, in the same order, each read-only.
  Preview p;
  const auto refuse = [&p](Status s, std::string why) {
    p.plan = Plan::refused;
    p.status = s;
    p.detail = std::move(why);
    return p;
  };
  // An older build's layout: the start refuses it as it does a mismatched policy.
  const auto mismatch = [&p](std::string why) {
    p.plan = Plan::mismatch;
    p.status = Status::version_mismatch;
    p.detail = std::move(why);
    return p;
  };
  const uint32_t me = uint32_t(::geteuid());
  // A new pair is made after both names are unlinked (remove()): in sticky
  // /dev/shm only their owner (or root) can unlink them.
  const auto create = [&](std::string why) {
    for (const std::string &obj : {state_segment_name(name), policy_segment_name(name)}) {
      struct stat st {};
      if (me != 0 && ::lstat(shm_path(obj).c_str(), &st) == 0 && st.st_uid != me)
        return refuse(Status::permission, shm_path(obj) + " belongs to uid " + std::to_string(st.st_uid) +
                                              ": this uid (" + std::to_string(me) + ") cannot remove it to make a new pair");
    }
    p.plan = Plan::create;
    p.detail = std::move(why);
    return p;
  };
  if (!valid_segment_name(name)) return refuse(Status::no_segment, "segment name '" + name + "' is not valid");
  Mapping state, policy;
  Mapping::FileOwner fo;
  std::string detail;
  Status s = Mapping::open(state_segment_name(name), false, state, detail, &fo);
  p.exists = s != Status::no_segment;
  if (reset) {
    if (p.exists && s == Status::ok && !may_remove(fo)) {  // remove() leaves another user's pair alone
      (void)check_adoptable(state_segment_name(name), fo, me, kStateForbidden, detail);  // names its owner
      return refuse(Status::permission, detail);
    }
    return create(p.exists ? "--reset removes the pair first: its keys and counters are wiped" : "no pair yet: a new one is made");
  }
  if (s == Status::no_segment) return create("no pair yet: a new one is made");
  if (s == Status::not_ready) return create("an empty state object (its creator died before sizing it) is replaced");
  if (s != Status::ok) return refuse(s, detail);
  if ((s = check_adoptable(state_segment_name(name), fo, me, kStateForbidden, detail)) != Status::ok)
    return refuse(s, detail);
  if ((s = validate_state(state, 0, detail)) == Status::not_ready)
    return create("a state object never formatted (its creator died) is replaced");
  if (s == Status::version_mismatch) return mismatch(mismatch_detail(detail));
  if (s != Status::ok) return refuse(s, detail);
  s = Mapping::open(policy_segment_name(name), false, policy, detail, &fo);
  const bool policy_missing = s == Status::no_segment;
  if (!policy_missing) {
    if (s != Status::ok) return refuse(s, detail);
    if ((s = check_adoptable(policy_segment_name(name), fo, me, kPolicyForbidden, detail)) != Status::ok)
      return refuse(s, detail);
    if ((s = validate_policy(policy, 0, detail)) == Status::version_mismatch) return mismatch(mismatch_detail(detail));
    if (s != Status::ok) return refuse(s, detail);
    const auto &ph = *static_cast<const PolicyHeader *>(policy.base());
    if (retired(ph.generation.load(std::memory_order_acquire)))
      return create("a reset stopped half-way: the retired pair is removed and a new one made");
  }
  Geometry g;
  if ((s = read_geometry(state, g, detail)) != Status::ok) return refuse(s, detail);
  if (!state_matches(g, spec, detail)) return mismatch(mismatch_detail(detail));
  p.plan = Plan::attach;
  p.detail = policy_missing ? "matches the policy: re-attached, keys and counters kept (its missing policy object is "
                              "made again)"
                            : "matches the policy: re-attached, keys and counters kept";
  if (!policy_missing)
    for (uint32_t i = 0; i < g.tier_count; ++i) {
      TierLimits now;
      if (read_tier(*static_cast<const PolicyHeader *>(policy.base()), i, now)) p.rows_now.push_back(now);
    }
  return p;
}

void Owner::discard_state() {
  retire_tiers(*policy_);
  discard_if_unlinked(state_map_, name_);  // only the policy removed: the state stays whole
}

Status Owner::create_or_attach(const std::string &name, const LayoutSpec &spec, bool reset,
                               std::unique_ptr<Owner> &out, bool &created, std::string &detail,
                               const AttachHook &on_attach) {
  if (!valid_segment_name(name)) {
    detail = "segment name '" + name + "' is not valid";
    return Status::no_segment;
  }
  std::unique_ptr<Owner> o(new (std::nothrow) Owner());
  if (!o) return Status::internal;
  if (reset) remove(name);
  uint8_t boot[16];
  read_boot_id(boot);

  // Existing segments are adopted only if they are this daemon's uid's own, with no
  // more access than create gives: /dev/shm is world-writable, and a segment another
  // user made first would leave that user able to rewrite the limits.
  const uint32_t me = uint32_t(::geteuid());
  Mapping::FileOwner fo;
  Status s = Mapping::open(state_segment_name(name), true, o->state_map_, detail, &fo);
  if (s == Status::not_ready && !reset) {
    // An empty object: its creator died between shm_open and sizing it (the caller
    // holds the segment lock, so no creator is alive). Start afresh.
    o->state_map_ = Mapping();
    return create_or_attach(name, spec, true, out, created, detail, on_attach);
  }
  if (s == Status::ok) {
    if ((s = check_adoptable(state_segment_name(name), fo, me, kStateForbidden, detail)) != Status::ok) return s;
    if ((s = validate_state(o->state_map_, 1000, detail)) == Status::not_ready && !reset) {
      // Never formatted: its creator died between create and format (the caller
      // holds the segment lock, so no creator is alive). Start afresh.
      o->state_map_ = Mapping();
      return create_or_attach(name, spec, true, out, created, detail, on_attach);
    }
    if (s != Status::ok) return s;
    s = Mapping::open(policy_segment_name(name), true, o->policy_map_, detail, &fo);
    if (s == Status::no_segment) {
      // Only the policy was removed (by hand, or a daemon that found it unlinked
      // retired it and stopped): make a new one for the state, which keeps its keys
      // and counters. Clients of the old one reopen the name: told to, when its daemon
      // retired it; after a kill -9 and an rm, at their next name check (LedgerHandle).
      if ((s = Mapping::create(policy_segment_name(name), sizeof(PolicyHeader), kPolicyMode, o->policy_map_,
                               detail)) != Status::ok)
        return s;
      format_policy(o->policy_map_, spec, static_cast<const StateHeader *>(o->state_map_.base())->boot_id);
      fo = Mapping::FileOwner{me, kPolicyMode};
    } else if (s != Status::ok) {
      return s;
    }
    if ((s = check_adoptable(policy_segment_name(name), fo, me, kPolicyForbidden, detail)) != Status::ok) return s;
    if ((s = validate_policy(o->policy_map_, 1000, detail)) != Status::ok) return s;
    o->state_ = static_cast<StateHeader *>(o->state_map_.base());
    o->policy_ = static_cast<PolicyHeader *>(o->policy_map_.base());
    if (retired(o->policy_->generation.load(std::memory_order_acquire))) {
      // A reset stopped between retiring and removing the pair: finish it.
      o->state_map_ = Mapping();
      o->policy_map_ = Mapping();
      o->state_ = nullptr;
      o->policy_ = nullptr;
      remove(name);
      Mapping still;
      if (Mapping::open(state_segment_name(name), false, still, detail) == Status::ok) {
        detail = "segment '" + name + "' is retired and could not be removed";
        return Status::permission;
      }
      return create_or_attach(name, spec, false, out, created, detail, on_attach);
    }
    Geometry g;
    if ((s = read_geometry(o->state_map_, g, detail)) != Status::ok) return s;
    if (!state_matches(g, spec, detail)) {
      detail = mismatch_detail(detail);
      return Status::version_mismatch;
    }
    // What this version would create for the spec, which the header was just shown
    // to describe: never read from the client-writable header again.
    o->take_geometry(plan_geometry(spec));
    for (uint32_t t = 0; t < o->tier_count(); ++t) thaw_interrupted_reclaims(o->tier_view(t));
    created = false;
  } else if (s == Status::no_segment) {
    remove(name);  // a policy segment without its state segment is an orphan
    if ((s = Mapping::create(state_segment_name(name), state_segment_bytes(spec), kStateMode, o->state_map_,
                             detail, spec.reserve_memory)) != Status::ok)
      return s;
    if ((s = Mapping::create(policy_segment_name(name), sizeof(PolicyHeader), kPolicyMode, o->policy_map_, detail)) !=
        Status::ok) {
      Mapping::remove(state_segment_name(name));  // never leave a state segment without its policy
      return s;
    }
    // Policy first: a client that sees the state segment ready finds its policy too.
    format_policy(o->policy_map_, spec, boot);
    format_state(o->state_map_, spec, boot);
    o->state_ = static_cast<StateHeader *>(o->state_map_.base());
    o->policy_ = static_cast<PolicyHeader *>(o->policy_map_.base());
    o->take_geometry(plan_geometry(spec));
    created = true;
  } else {
    return s;
  }
  o->name_ = name;
  auto rows = rows_of(spec);
  if (!created) {
    for (uint32_t i = 0; i < rows.size(); ++i) {
      TierLimits now;
      read_tier(*o->policy_, i, now);
      o->rows_before_attach_.push_back(now);
    }
    if (on_attach && !on_attach(rows, o->rows_before_attach_, o->state_->created_ns, detail)) return Status::internal;
    if (rows.size() != spec.tiers.size()) {
      detail = "the attach hook changed the number of tiers";
      return Status::internal;
    }
  }
  // Inserters tag their claims with their pids only once they see this daemon's
  // namespace (a restarted daemon may run in another: their claims then carry 0).
  const PidNamespace ns = PidNamespace::mine();
  const bool other_namespace = !created && (o->state_->pid_ns_dev.load(std::memory_order_relaxed) != ns.dev ||
                                            o->state_->pid_ns_ino.load(std::memory_order_relaxed) != ns.ino);
  o->state_->pid_ns_dev.store(ns.dev, std::memory_order_relaxed);
  o->state_->pid_ns_ino.store(ns.ino, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (other_namespace) {
    // After the new namespace is published: a claim made later by an inserter that
    // read it carries 0 or a pid of ours, which collect() judges rightly. A claim
    // already there carries a pid of the old namespace: it is retagged 0 in the
    // segment itself (never freed), so no later daemon, which sees only the new
    // namespace in the header, can take that pid for one of its own. A live
    // inserter's claimed -> pending CAS then fails and it inserts again elsewhere:
    // the slot is lost, never the key. Left: an inserter that read the old
    // namespace, then stalled past this scan before its claim.
    for (uint32_t t = 0; t < o->tier_count(); ++t) {
      const TierView &v = o->tier_view(t);
      for (uint32_t slot = 0; slot < v.slots; ++slot) {
        AtomicU64 &ctrl = v.entry(slot)->ctrl;
        uint64_t c = ctrl.load(std::memory_order_acquire);
        while (ctrl_state(c) == EntryState::claimed && ctrl_tag(c) != 0 &&
               !ctrl.compare_exchange_weak(c, ctrl_make(EntryState::claimed, ctrl_gen(c), 0),
                                           std::memory_order_acq_rel)) {
        }
      }
    }
  }
  o->publish(rows);
  o->state_->daemon_pid.store(getpid(), std::memory_order_relaxed);
  o->state_->daemon_starts.fetch_add(1, std::memory_order_relaxed);
  o->heartbeat();
  out = std::move(o);
  return Status::ok;
}

void Owner::take_geometry(const Geometry &g) {
  geo_ = g;
  for (uint32_t i = 0; i < geo_.tier_count; ++i) views_[i] = TierView::of(state_map_.base(), geo_, i);
}

bool Owner::still_named() const {
  return state_map_.still_named(state_segment_name(name_)) && policy_map_.still_named(policy_segment_name(name_));
}

void Owner::publish(std::span<const TierLimits> rows) {
  // The daemon never publishes a limit above a tier's ring capacity.
  std::vector<TierLimits> clamped(rows.begin(), rows.end());
  for (size_t i = 0; i < clamped.size() && i < geo_.tier_count; ++i)
    clamped[i].limit = std::min(clamped[i].limit, geo_.tiers[i].capacity);
  publish_tiers(*policy_, clamped, mono_ns());
}

void Owner::heartbeat() {
  recalibrate_clock(policy_->clock);
  state_->heartbeat_ns.store(mono_ns(), std::memory_order_release);
}
void Owner::mark_stopped() { state_->heartbeat_ns.store(kHeartbeatStopped, std::memory_order_release); }

GcStats Owner::collect(int64_t idle_ns, uint32_t budget) {
  GcStats st;
  const int64_t now = mono_ns();
  const int64_t boot_now = boottime_ns();
  for (uint32_t t = 0; t < tier_count(); ++t) {
    const TierView &v = tier_view(t);
    // Never reclaim a key whose admissions could still be inside its window.
    TierLimits lim;
    read_tier(*policy_, t, lim);
    const int64_t idle = std::max(idle_ns, lim.window_ns);
    for (uint32_t i = 0; i < std::min(budget, v.slots); ++i) {
      const uint32_t slot = cursor_[t];
      cursor_[t] = cursor_[t] + 1 == v.slots ? 0 : cursor_[t] + 1;
      ++st.scanned;
      const uint64_t c = v.entry(slot)->ctrl.load(std::memory_order_acquire);
      const uint64_t id = (uint64_t(t) << 32) | slot;
      if (ctrl_state(c) == EntryState::live) {
        if (try_reclaim(v, slot, now, idle)) {
          ++st.reclaimed;
          state_->keys_reclaimed.fetch_add(1, std::memory_order_relaxed);
        }
      } else if (ctrl_state(c) == EntryState::claimed) {
        auto [it, fresh] = claims_seen_.try_emplace(id, c, boot_now);
        if (!fresh && it->second.first != c) it->second = {c, boot_now};
        else if (!fresh && boot_now - it->second.second > kDeadClaimGraceNs &&
                 free_dead_claim(v, slot, c, it->second.second)) {
          ++st.dead_claims_freed;
          claims_seen_.erase(it);
        }
      } else {
        if (!claims_seen_.empty()) claims_seen_.erase(id);
        // Only try_reclaim, above and on this thread, freezes a ring, and it
        // thaws or frees it before it returns: one frozen now was frozen by a
        // client's write (or by a sluiced that died, thawed at attach), and its
        // key would answer busy until a restart.
        if (thaw(v, slot)) ++st.thawed;
        else if (free_unknown_state(v, slot)) ++st.unknown_freed;
      }
    }
  }
  return st;
}

}  // namespace sluice::core
