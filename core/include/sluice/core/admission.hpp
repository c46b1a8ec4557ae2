// The sliding-window-log admission step on one entry's ring.
//
// Positions count admitted units. Slot p % capacity holds the timestamp of unit p.
// A claim of `cost` units at head h is allowed iff unit h+cost-1-limit (the one the
// new units push out of the last `limit`) is older than the window. The claim is a
// CAS on ring slot h (not on head): a slot is then never "claimed but unwritten",
// and its lap bit tells a fresh value from a leftover. Followers of a cost-N claim
// and the head advance are finished by whoever comes next (helping), so a process
// killed between any two instructions leaves nothing another cannot complete.
// Recorded times are max(now, previous), so they are monotone in position; the
// check still compares against the caller's own clock read (exactness proof in
// docs/ADMISSION.md).
#pragma once
#include <cstdint>

#include "sluice/core/key_table.hpp"
#include "sluice/core/status.hpp"
#include "sluice/core/tsc_clock.hpp"

namespace sluice::core {

struct Limits {
  uint32_t limit;
  int64_t window_ns;
};

struct Outcome {
  bool allowed = false;
  Reason reason = Reason::allowed;
  uint32_t remaining = 0;
  int64_t retry_after_ns = 0;
  int64_t reset_after_ns = 0;
  int64_t admitted_at_ns = 0;  // the ledger's timestamp of these units (0 if denied)
};

enum class Step { decided, stale, busy };

// record=false is a peek: the same decision, no unit recorded (it may refresh the
// entry's window hint, which only `remaining` reads).
// `clock` is read again when the clock read `now_ns` proves stale, and, with
// `reread_on_fresh_ring` (the ledger's calls; tests that drive explicit times leave it
// off), before the first unit recorded in a ring.
Step admit(const TierView &t, const EntryRef &ref, uint32_t cost, Limits lim, int64_t now_ns, bool record,
           Outcome &out, const TscClock &clock = TscClock(), bool reread_on_fresh_ring = false);

// The decision for a key that has no entry yet (peek on an unknown key).
void admit_fresh(uint32_t cost, Limits lim, Outcome &out);

}  // namespace sluice::core
