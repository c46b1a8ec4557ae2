#include "sluice/core/admission.hpp"

#include <sched.h>

#include <algorithm>

#include "sluice/core/clock.hpp"
#include "sluice/core/fault.hpp"

namespace sluice::core {

namespace {

constexpr auto acq = std::memory_order_acquire;
constexpr auto rlx = std::memory_order_relaxed;
// Passes one call may take: a word that never settles (a ring frozen by sluiced,
// which thaws it within microseconds; or client-writable memory left poisoned or
// garbled by a buggy process) ends in busy, never a spin for ever.
constexpr int kMaxSpins = 20000;
constexpr int kMaxClockRereads = 64;  // ~2 us of clock reads before judging at the newest unit

// Writes the followers of a cost-N claim at h and advances head past it. Any
// process may run it for any claim it sees at head.
void complete_claim(EntryHeader *e, AtomicU64 *ring, const RingCursor &rc, uint64_t h, uint64_t lead) {
  // A lead always has count 1..capacity (decide refuses a larger cost). The count
  // is read from client-writable memory: a damaged 0 is taken as 1 (keeps the key
  // moving), and above capacity as capacity (RingCursor folds one lap only, so a
  // larger count would write past this key's ring).
  const uint32_t n = std::clamp<uint32_t>(ring_count(lead), 1, rc.cap);
  for (uint32_t k = 1; k < n; ++k) {
    const uint64_t p = h + k;
    AtomicU64 &slot = ring[rc.idx(p)];
    for (;;) {
      uint64_t v = slot.load(acq);
      if (rc.written_for(v, p)) break;
      // Frozen by sluiced: leave the claim at head, unfinished, for whoever comes
      // after the thaw (advancing head now would strand unwritten followers).
      if (ring_poisoned(v)) return;
      // Only while head is still h can this slot hold p's predecessor (not a later lap).
      if (e->head.load(acq) != h) return;
      SLUICE_FAULT();
      if (slot.compare_exchange_weak(v, rc.make(p, ring_ts_us(lead), 0), std::memory_order_acq_rel)) break;
    }
  }
  SLUICE_FAULT();
  uint64_t expect = h;
  e->head.compare_exchange_strong(expect, h + n, std::memory_order_acq_rel);
}

int64_t ts_ns(uint64_t v) { return int64_t(ring_ts_us(v)) * 1000; }

// The first position in [lo + 1, hi] whose unit is inside the window (hi: none),
// for `inside` monotone on [lo, hi) with lo outside. Gallops from `from`, a guess
// (where an earlier call found the boundary; hi when there is none): a window that
// moved a few units since costs two or three reads, not a search from the newest.
template <class Inside>
uint64_t first_inside(const Inside &inside, uint64_t lo, uint64_t hi, uint64_t from) {
  uint64_t a = lo + 1, b = hi;  // the answer is in [a, b]
  if (from <= lo || from > hi) from = hi;
  if (from < hi && !inside(from)) {  // the answer is above `from`
    a = from + 1;
    for (uint64_t step = 1; from + step < b; step *= 2) {
      if (inside(from + step)) {
        b = from + step;
        break;
      }
      a = from + step + 1;
    }
  } else {  // the answer is at or below `from`
    b = from;
    for (uint64_t step = 1; step <= from - a; step *= 2) {
      if (!inside(from - step)) {
        a = from - step + 1;
        break;
      }
      b = from - step;
    }
  }
  while (a < b) {
    const uint64_t mid = a + (b - a) / 2;
    if (inside(mid)) b = mid;
    else a = mid + 1;
  }
  return a;
}

// Units among positions [lo, hi) still inside the window at now. Timestamps are
// monotone in position, so the ones inside are a suffix. A full window is answered
// by its oldest unit alone; otherwise the boundary is searched from the entry's
// window hint (the low 32 bits of the last boundary found, a guess any client may
// overwrite: only `remaining` depends on this count, never a decision).
uint32_t units_in_window(EntryHeader *e, AtomicU64 *ring, const RingCursor &rc, uint64_t lo, uint64_t hi,
                         int64_t now_ns, int64_t window_ns) {
  auto inside = [&](uint64_t pos) {
    const uint64_t v = ring[rc.idx(pos)].load(rlx);
    return ring_ts_us(v) != 0 && ts_ns(v) + window_ns > now_ns;
  };
  if (lo >= hi) return 0;
  if (inside(lo)) return uint32_t(hi - lo);
  const uint32_t hint = e->window_hint.load(rlx);
  const uint64_t back = uint32_t(uint32_t(hi) - hint);  // hi - hint, if the hint is recent
  const uint64_t first = first_inside(inside, lo, hi, back <= hi - lo ? hi - back : hi);
  if (uint32_t(first) != hint) e->window_hint.store(uint32_t(first), rlx);
  return uint32_t(hi - first);
}

}  // namespace

void admit_fresh(uint32_t cost, Limits lim, Outcome &out) {
  out = Outcome{};
  if (lim.limit == 0 || cost > lim.limit) {
    out.reason = lim.limit == 0 ? Reason::tier_closed : Reason::cost_above_limit;
    out.remaining = lim.limit;
    out.retry_after_ns = lim.window_ns;
    return;
  }
  out.allowed = true;
  out.remaining = lim.limit - cost;
  out.reset_after_ns = lim.window_ns;
}

Step admit(const TierView &t, const EntryRef &ref, uint32_t cost, Limits lim, int64_t now_ns, bool record,
           Outcome &out, const TscClock &clock, bool reread_on_fresh_ring) {
  EntryHeader *e = t.entry(ref.slot);
  AtomicU64 *ring = t.ring(ref.slot);
  const uint32_t cap = t.capacity;
  const uint32_t limit = std::min(lim.limit, cap);  // the daemon never publishes more; be safe
  const int64_t window = lim.window_ns;
  // A recorded time of 0 means "never written": no clock read may give one.
  now_ns = std::max<int64_t>(now_ns, 1);
  uint64_t now_us = uint64_t(now_ns + 999) / 1000;  // rounded up: never earlier than now
  int rereads = 0;
  out = Outcome{};

  for (int spins = 0;; ++spins) {
    // Every pass below that ends in `continue` saw a word move or not yet settle.
    if (spins > kMaxSpins) return Step::busy;
    if (spins > 64) sched_yield();
    const uint64_t c = e->ctrl.load(acq);
    if (c != ref.ctrl) {
      // Frozen by sluiced for an idle check: wait for it to thaw or free the slot.
      if (ctrl_state(c) == EntryState::reclaiming && ctrl_gen(c) == ctrl_gen(ref.ctrl)) continue;
      return Step::stale;
    }
    const uint64_t h = e->head.load(acq);
    SLUICE_FAULT();
    const RingCursor rc(h, t.capacity_div);
    const uint64_t vh = ring[rc.base_idx].load(acq);
    if (ring_poisoned(vh)) continue;  // ctrl will say reclaiming on the next pass
    if (rc.written_for(vh, h)) {
      complete_claim(e, ring, rc, h, vh);
      continue;
    }
    const uint64_t newest = ring[rc.idx(h - 1)].load(acq);
    if (reread_on_fresh_ring && ring_ts_us(newest) == 0) {
      // Nothing recorded in this ring yet: it may be the new ring of a key sluiced
      // reclaimed after our clock read, and that read would stamp a time before the
      // old ring's last unit. A read now comes after the reclaim, which came a window
      // after that unit. Once per call: first admissions into a ring are rare.
      reread_on_fresh_ring = false;
      now_ns = std::max<int64_t>(now_ns, clock.now_ns());
      now_us = uint64_t(now_ns + 999) / 1000;
    }
    // Everything a decision reads must belong to one instant: head, the slot at
    // head (a claim in flight there may already be visible in the ring) and ctrl.
    auto moved = [&] {
      return e->head.load(acq) != h || ring[rc.base_idx].load(acq) != vh || e->ctrl.load(acq) != ref.ctrl;
    };
    if (limit == 0 || cost > limit) {
      if (moved()) continue;
      out.reason = limit == 0 ? Reason::tier_closed : Reason::cost_above_limit;
      out.remaining = limit ? limit - std::min(limit, units_in_window(e, ring, rc, h >= limit ? h - limit : 0, h, now_ns, window)) : 0;
      out.retry_after_ns = window;
      // Times are stored rounded up to the microsecond: never report more than a window.
      out.reset_after_ns = ring_ts_us(newest) ? std::clamp<int64_t>(ts_ns(newest) + window - now_ns, 0, window) : 0;
      return Step::decided;
    }
    // The unit our claim pushes out of the last `limit`.
    uint64_t blocker = 0;
    if (h + cost > limit) {
      const uint64_t bi = rc.idx(h + cost - 1 - limit);
      // limit == capacity: the blocker is the left-over in the head slot we hold.
      blocker = bi == rc.base_idx ? vh : ring[bi].load(acq);
      if (ring_poisoned(blocker)) continue;
    }
    const bool full = ring_ts_us(blocker) != 0 && ts_ns(blocker) + window > now_ns;
    if (full && ring_ts_us(newest) > now_us) {
      // Units were recorded after our clock read (we were preempted or kept
      // losing the race): a denial judged by that stale clock would count them
      // against an instant they postdate. Read the clock again. If it keeps
      // reading earlier (another client's clock runs ahead of ours, as two clocks
      // may by their calibration error), judge at the newest recorded time: the
      // exactness argument holds for any clock read up to it (docs/ADMISSION.md).
      // Not sooner: judged there, units are stamped with that time, and a time
      // that only ever copies itself lets the window fill with equal stamps.
      now_ns = ++rereads <= kMaxClockRereads ? std::max<int64_t>(clock.now_ns(), 1) : ts_ns(newest);
      now_us = uint64_t(now_ns + 999) / 1000;
      continue;
    }
    if (full || !record) {
      const uint32_t used = units_in_window(e, ring, rc, h >= limit ? h - limit : 0, h, now_ns, window);
      if (moved()) continue;
      const int64_t newest_ns = ring_ts_us(newest) ? ts_ns(newest) : 0;
      if (full) {
        out.reason = Reason::window_full;
        out.remaining = limit - std::min(used, limit);
        // Times are stored rounded up to the microsecond: never report more than a window.
        out.retry_after_ns = std::min(window, ts_ns(blocker) + window - now_ns);
        out.reset_after_ns = std::clamp<int64_t>(newest_ns + window - now_ns, 0, window);
      } else {  // peek of an admissible claim
        out.allowed = true;
        out.remaining = limit - std::min(limit, used + cost);
        out.reset_after_ns = window;
      }
      return Step::decided;
    }
    if (ring_poisoned(newest)) continue;
    // head and ctrl still as first read: the slot value is this lap's left-over
    // (not a later lap's, which carries the same lap bit) in this key's ring (not
    // a reused slot's). The CAS then proves nothing moved since (docs/ADMISSION.md).
    if (e->head.load(acq) != h || e->ctrl.load(acq) != ref.ctrl) continue;
    SLUICE_FAULT();
    const uint64_t ts = std::max(now_us, ring_ts_us(newest));
    uint64_t expect = vh;
    const uint64_t lead = rc.make(h, ts, cost);
    if (!ring[rc.base_idx].compare_exchange_strong(expect, lead, std::memory_order_acq_rel)) continue;
    SLUICE_FAULT();
    if (cost == 1) {  // no followers to write: only head to move (complete_claim's last step)
      uint64_t at = h;
      e->head.compare_exchange_strong(at, h + 1, std::memory_order_acq_rel);
    } else {
      complete_claim(e, ring, rc, h, lead);
    }
    const uint64_t end = h + cost;
    out.allowed = true;
    out.admitted_at_ns = int64_t(ts) * 1000;
    // The unit before ours already outside the window (a key seen rarely): only
    // ours are inside, no search needed.
    const bool alone = window > 0 && (ring_ts_us(newest) == 0 || ts_ns(newest) + window <= now_ns);
    out.remaining = alone ? limit - cost
                          : limit - std::min(limit, units_in_window(e, ring, rc, end - std::min<uint64_t>(end, limit), end,
                                                                    now_ns, window));
    out.reset_after_ns = std::clamp<int64_t>(out.admitted_at_ns + window - now_ns, 0, window);
    return Step::decided;
  }
}

}  // namespace sluice::core
