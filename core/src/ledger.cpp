#include "sluice/core/ledger.hpp"

#include <pthread.h>

#include <atomic>
#include <mutex>
#include <cstring>
#include <new>

#include "sluice/core/clock.hpp"
#include "sluice/core/fault.hpp"

namespace sluice::core {

namespace {

// Each client thread takes its own counter stripe, round-robin over every thread
// of every process on the host (a per-process choice would put the first thread
// of each process on the same cache line and make them fight over it).
// A forked child inherits its parent's thread_local: a fork generation bumped in
// the child makes it take a stripe of its own.
std::atomic<uint32_t> g_fork_gen{0};
void bump_fork_gen() { g_fork_gen.fetch_add(1, std::memory_order_relaxed); }

uint32_t my_stripe(StateHeader &h) {
  struct Assigned {
    uint32_t gen = ~0u;
    uint32_t stripe = 0;
  };
  // initial-exec: libsluice is one small library, so its TLS fits the static
  // surplus even when dlopen'ed (the Python extension); the general-dynamic
  // default costs a __tls_get_addr call on every decision.
  [[gnu::tls_model("initial-exec")]] thread_local Assigned a;
  const uint32_t gen = g_fork_gen.load(std::memory_order_relaxed);
  if (a.gen != gen) {
    a.gen = gen;
    a.stripe = uint32_t(h.stripe_seq.fetch_add(1, std::memory_order_relaxed) % kCounterStripes);
  }
  return a.stripe;
}

void count(StateHeader &h, uint32_t tier, const Outcome &o, uint32_t cost) {
  CounterStripe &s = h.counters[tier][my_stripe(h)];
  constexpr auto rlx = std::memory_order_relaxed;
  if (o.allowed) {
    s.admitted.fetch_add(1, rlx);
    if (cost > 1) s.extra_units.fetch_add(cost - 1, rlx);
  } else if (o.reason == Reason::window_full) {
    s.denied_window.fetch_add(1, rlx);
  } else if (o.reason == Reason::cost_above_limit) {
    s.denied_cost.fetch_add(1, rlx);
  } else {
    s.denied_closed.fetch_add(1, rlx);
  }
}

}  // namespace

Status Ledger::open(const std::string &name, std::unique_ptr<Ledger> &out, std::string &detail, int wait_ms) {
  if (!valid_segment_name(name)) {
    detail = "segment name '" + name + "' is not valid (letters, digits, '_', '-', '.')";
    return Status::no_segment;
  }
  static std::once_flag fork_hook;
  std::call_once(fork_hook, [] { pthread_atfork(nullptr, nullptr, bump_fork_gen); });
  std::unique_ptr<Ledger> l;
  // What is read from the state is trusted only if the object is still under its
  // name after the reads. A removal unlinks the pair (state first) before it frees
  // the state's memory (Owner::remove), so a state still named was whole when read
  // and its policy, opened after it, is its partner (sluiced creates the state
  // before the policy). One no longer named may have been read half freed (zeros)
  // or paired with the next generation's policy: open the name again.
  for (int attempt = 0;; ++attempt) {
    l.reset(new (std::nothrow) Ledger());
    if (!l) return Status::internal;
    const Status s = l->map_pair(name, wait_ms, detail);
    if (!l->state_map_) return s;  // no state object to have raced with
    if (l->state_map_.still_named(state_segment_name(name))) {
      if (s != Status::ok) return s;
      break;
    }
    if (attempt == 8) {
      detail = "segment '" + name + "' kept being replaced while it was opened";
      return Status::not_ready;
    }
  }
  out = std::move(l);
  return Status::ok;
}

Status Ledger::map_pair(const std::string &name, int wait_ms, std::string &detail) {
  Mapping::FileOwner so, po;
  if (Status s = Mapping::open(state_segment_name(name), true, state_map_, detail, &so); s != Status::ok) return s;
  Status v = validate_state(state_map_, 0, detail);
  // Wait for a creator's ready word only on a state still under its name: one
  // already unlinked (and perhaps freed) never becomes ready, and open tries again.
  if (v == Status::not_ready && wait_ms > 0 && state_map_.still_named(state_segment_name(name)))
    v = validate_state(state_map_, wait_ms, detail);
  if (v != Status::ok) return v;
  SLUICE_FAULT();
  if (Status s = Mapping::open(policy_segment_name(name), false, policy_map_, detail, &po); s != Status::ok) return s;
  if (Status s = validate_policy(policy_map_, wait_ms, detail); s != Status::ok) return s;
  if (so.uid != po.uid) {
    detail = "state and policy segments belong to different users (uid " + std::to_string(so.uid) + " and " +
             std::to_string(po.uid) + ")";
    return Status::permission;
  }
  owner_uid_ = so.uid;
  state_hdr_ = static_cast<StateHeader *>(state_map_.base());
  policy_hdr_ = static_cast<const PolicyHeader *>(policy_map_.base());
  if (std::memcmp(state_hdr_->boot_id, policy_hdr_->boot_id, 16) != 0) {
    detail = "state and policy segments come from different boots";
    return Status::corrupt_header;
  }
  // One private copy of the layout, checked as it is copied: the state is
  // client-writable, so what validate_state saw may have changed since.
  Geometry g;
  if (Status s = read_geometry(state_map_, g, detail); s != Status::ok) return s;
  tier_count_ = g.tier_count;
  clock_ = TscClock(&policy_hdr_->clock);
  for (uint32_t i = 0; i < tier_count_; ++i) {
    views_[i] = TierView::of(state_map_.base(), g, i);
    std::memcpy(names_[i], g.tiers[i].name, kTierNameBytes - 1);
  }
  return Status::ok;
}

int Ledger::find_tier(std::string_view name) const {
  for (uint32_t i = 0; i < tier_count_; ++i)
    if (std::string_view(names_[i]) == name) return int(i);
  return -1;
}

int Ledger::find_tier(const char *name) const {
  // Compared in place (no strlen first): tier names usually differ in their first byte.
  for (uint32_t i = 0; i < tier_count_; ++i) {
    const char *n = names_[i];
    size_t j = 0;
    while (n[j] != 0 && n[j] == name[j]) ++j;
    if (n[j] == 0 && name[j] == 0) return int(i);
  }
  return -1;
}

Status Ledger::decide(std::string_view tier_name, const void *key, size_t key_len, uint32_t cost, bool record,
                      Decision &out, std::string &detail) {
  const int tier = find_tier(tier_name);
  if (tier < 0) {
    detail = "unknown tier '" + std::string(tier_name.substr(0, 64)) + "'";
    return Status::unknown_tier;
  }
  return decide_in(uint32_t(tier), key, key_len, cost, record, out, detail);
}

Status Ledger::decide_in(uint32_t tier, const void *key, size_t key_len, uint32_t cost, bool record, Decision &out,
                         std::string &detail) {
  const TierView &tv = views_[tier];
  const char *tier_name = names_[tier];
  if (key_len == 0) return Status::empty_key;
  if (key_len > tv.max_key_bytes) {
    detail = "key is " + std::to_string(key_len) + " bytes, the segment allows " + std::to_string(tv.max_key_bytes);
    return Status::key_too_long;
  }
  if (cost == 0) return Status::cost_zero;
  if (cost > tv.capacity || cost > kMaxCost) {
    detail = "cost " + std::to_string(cost) + " is above tier '" + std::string(tier_name) + "' capacity " +
             std::to_string(std::min(tv.capacity, kMaxCost));
    return Status::cost_above_capacity;
  }

  const KeyProbe probe(key, uint32_t(key_len));
  prefetch_home(tv, probe);
  for (int attempt = 0; attempt < 64; ++attempt) {
    // Everything that does not need the key's entry comes before the lookup, so it
    // runs while the prefetched lines are on their way (on many keys the entry is a
    // cache miss). Reading the clock before the lookup is as if the caller were
    // preempted after reading it, which admit allows for (docs/ADMISSION.md).
    const int64_t now_ns = clock_.now_ns();
    TierLimits lim;
    read_tier(*policy_hdr_, uint32_t(tier), lim);
    if (retired(lim.generation)) return Status::retired;
    if (now_ns >= next_name_check_ns_.load(std::memory_order_relaxed)) [[unlikely]]
      if (claim_name_check(now_ns)) return Status::name_check;
    const Limits limits{std::min(lim.limit, tv.capacity), lim.window_ns};
    out = Decision{};
    out.tier = uint32_t(tier);
    out.limit = limits.limit;
    out.window_ns = limits.window_ns;
    out.policy_generation = lim.generation;

    EntryRef ref;
    const Lookup found = record ? find_or_insert_key(tv, probe, *state_hdr_, ref) : find_key(tv, probe, ref);
    Outcome o;
    if (found == Lookup::full) {
      detail = "tier '" + std::string(tier_name) + "' key table is full";
      return Status::table_full;
    }
    if (found == Lookup::busy) return Status::busy;
    if (found == Lookup::absent) {
      admit_fresh(cost, limits, o);
    } else {
      const Step st = admit(tv, ref, cost, limits, now_ns, record, o, clock_, true);
      if (st == Step::stale) continue;  // the entry was reclaimed under us: look it up again
      if (st == Step::busy) return Status::busy;
    }
    out.allowed = o.allowed;
    out.reason = o.reason;
    out.remaining = o.remaining;
    out.retry_after_ns = o.retry_after_ns;
    out.reset_after_ns = o.reset_after_ns;
    out.admitted_at_ns = o.admitted_at_ns;
    // Units recorded after sluiced retired this pair are in a ledger no one else
    // counts, and a denial or peek judged there is judged on a ledger a reset wipes:
    // decide again in the new one. (Units recorded before the retirement belong to
    // the ledger a reset wipes.) The CAS that recorded them is ordered before this load.
#if !defined(__x86_64__)
    // x86 orders the recording CAS (a locked instruction) before this load; the C++
    // model needs the fence (the daemon's fetch_or is seq_cst).
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
    if (retired(policy_hdr_->generation.load(std::memory_order_acquire))) return Status::retired;
    if (record) count(*state_hdr_, uint32_t(tier), o, cost);
    return Status::ok;
  }
  return Status::busy;
}

bool Ledger::claim_name_check(int64_t now_ns) {
  int64_t due = next_name_check_ns_.load(std::memory_order_relaxed);
  if (now_ns < due) return false;
  return next_name_check_ns_.compare_exchange_strong(due, now_ns + kNameCheckIntervalNs, std::memory_order_relaxed);
}

TierCounters sum_counters(const StateHeader &h, uint32_t tier, CounterSum mode) {
  // The stripes are client-writable: a wrapped sum made /metrics' counters go
  // from 2^64 to 4 (Prometheus reads that as a reset).
  const bool saturate = mode == CounterSum::saturating;
  const auto add = [saturate](uint64_t &sum, uint64_t v) {
    if (__builtin_add_overflow(sum, v, &sum) && saturate) sum = UINT64_MAX;
  };
  TierCounters c;
  constexpr auto rlx = std::memory_order_relaxed;
  for (const CounterStripe &s : h.counters[tier]) {
    add(c.admitted, s.admitted.load(rlx));
    add(c.denied_window, s.denied_window.load(rlx));
    add(c.denied_cost, s.denied_cost.load(rlx));
    add(c.denied_closed, s.denied_closed.load(rlx));
    add(c.cost_units, s.admitted.load(rlx));
    add(c.cost_units, s.extra_units.load(rlx));
  }
  return c;
}

}  // namespace sluice::core
