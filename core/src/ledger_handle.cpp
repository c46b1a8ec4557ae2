#include "sluice/core/ledger_handle.hpp"

#include <new>

#include "sluice/core/clock.hpp"

namespace sluice::core {

namespace {
// A failed reopen (sluiced is still making the new pair, or removed it for good)
// is retried at most this often per handle; calls in between fail at once.
constexpr int64_t kReopenRetryNs = 20'000'000;
constexpr int kMaxReopensPerCall = 4;  // resets back to back; then report busy
}  // namespace

Status LedgerHandle::open(const std::string &name, std::unique_ptr<LedgerHandle> &out, std::string &detail) {
  std::unique_ptr<Ledger> l;
  if (Status s = Ledger::open(name, l, detail); s != Status::ok) return s;
  if (l->is_retired()) {  // sluiced is replacing it, or died doing so: nothing to decide in
    detail = "segment '" + name + "' is retired (sluiced is resetting it, or must be restarted)";
    return Status::no_segment;
  }
  std::unique_ptr<LedgerHandle> h(new (std::nothrow) LedgerHandle());
  if (!h) return Status::internal;
  h->name_ = name;
  h->watch_name(*l);
  h->cur_.store(l.release(), std::memory_order_release);
  out = std::move(h);
  return Status::ok;
}

LedgerHandle::~LedgerHandle() { delete cur_.load(std::memory_order_acquire); }

Ledger *LedgerHandle::reopen(Ledger *seen, Status &why, std::string &detail) {
  if (Ledger *now = cur_.load(std::memory_order_acquire); now != seen) return now;  // another thread did it
  if (mono_ns() < next_try_ns_.load(std::memory_order_relaxed)) {
    why = Status(last_failure_.load(std::memory_order_relaxed));
    if (why == Status::ok) why = Status::no_segment;  // the store of the failure is not visible yet
    detail = "segment '" + name_ + "' was reset by sluiced and cannot be reopened yet";
    return nullptr;
  }
  std::unique_ptr<Ledger> fresh;
  // No wait for a creator still formatting: fail now, retry after the back-off.
  const Status s = Ledger::open(name_, fresh, detail, 0);
  if (s == Status::ok && fresh->owner_uid() != seen->owner_uid()) {
    // /dev/shm is world-writable: anyone may create the name between the unlink
    // and sluiced's new pair. Follow only a pair of the same owner.
    why = Status::permission;
    detail = "segment '" + name_ + "' was replaced by one owned by uid " + std::to_string(fresh->owner_uid()) +
             ", not uid " + std::to_string(seen->owner_uid()) + " as before: not following it (reopen by hand)";
  } else if (s == Status::ok && fresh->is_retired()) {  // an interrupted reset: sluiced finishes it at its next start
    why = Status::no_segment;
    detail = "segment '" + name_ + "' is retired and no new one has been made (restart sluiced)";
  } else if (s != Status::ok) {
    why = s;
    detail = "segment '" + name_ + "' was reset by sluiced and cannot be reopened: " + detail;
  } else {
    Ledger *expect = seen;
    watch_name(*fresh);
    fresh->replaced_.reset(seen);  // the chain keeps `seen` mapped for threads still in it
    Ledger *raw = fresh.release();
    if (cur_.compare_exchange_strong(expect, raw, std::memory_order_acq_rel)) {
      reopens_.fetch_add(1, std::memory_order_relaxed);
      return raw;
    }
    (void)raw->replaced_.release();  // lost to another thread: `seen` is in its chain now
    delete raw;
    return expect;
  }
  last_failure_.store(int(why), std::memory_order_relaxed);
  next_try_ns_.store(mono_ns() + kReopenRetryNs, std::memory_order_relaxed);  // from now: the open may have waited
  return nullptr;
}

void LedgerHandle::watch_name(Ledger &l) const {
  l.next_name_check_ns_.store(mono_ns() + kNameCheckIntervalNs, std::memory_order_relaxed);
}

Ledger *LedgerHandle::follow_name(Ledger *l) {
  if (l->state_map_.still_named(state_segment_name(name_)) && l->policy_map_.still_named(policy_segment_name(name_)))
    return l;
  Status why = Status::ok;
  std::string detail;  // a failure here is not the caller's: it goes on in `l`
  Ledger *now = reopen(l, why, detail);
  return now ? now : l;
}

Status LedgerHandle::decide_after_miss(Ledger *l, int t, Status s, const char *tier, const void *key,
                                       size_t key_len, uint32_t cost, bool record, Decision &out,
                                       std::string &detail) {
  // A name check claimed moves the next one an interval on, so a second
  // name_check in a row means a call preempted for that long: check again.
  const auto decide_here = [&] {
    for (int checks = 0; checks < kMaxReopensPerCall && s == Status::name_check; ++checks) {
      if (Ledger *now = follow_name(l); now != l) {
        l = now;
        if ((t = l->find_tier(tier)) < 0) return;
      }
      s = l->decide_in(uint32_t(t), key, key_len, cost, record, out, detail);
    }
    if (s == Status::name_check) s = Status::busy;
  };
  decide_here();
  // A tier unknown here may be one a new pair under the name has: a client that
  // calls only such a tier never reaches decide_in's check, so it is made here.
  if (t < 0 && !l->is_retired() && l->claim_name_check(mono_ns())) {
    if (Ledger *now = follow_name(l); now != l && (t = (l = now)->find_tier(tier)) >= 0) {
      s = l->decide_in(uint32_t(t), key, key_len, cost, record, out, detail);
      decide_here();
    }
  }
  // Here the tier was not found (t < 0) or the ledger was retired under the decision.
  for (int round = 0; t < 0 || s == Status::retired; ++round) {
    if (t < 0 && !l->is_retired()) return Status::unknown_tier;  // else it may be a tier the new pair added
    out = Decision{};  // nothing decided in a retired ledger reaches the caller
    if (round == kMaxReopensPerCall) return Status::busy;
    Status why = Status::ok;
    if (!(l = reopen(l, why, detail))) return why;
    if ((t = l->find_tier(tier)) >= 0) {
      s = l->decide_in(uint32_t(t), key, key_len, cost, record, out, detail);
      decide_here();
    }
  }
  return s;
}

}  // namespace sluice::core
