#include "sluice/core/key_table.hpp"

#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "sluice/core/clock.hpp"
#include "sluice/core/fault.hpp"
#include "sluice/core/hash.hpp"

namespace sluice::core {

namespace {

constexpr auto acq = std::memory_order_acquire;
constexpr auto rel = std::memory_order_release;
constexpr auto rlx = std::memory_order_relaxed;
constexpr int kReclaimWaitSpins = 20000;  // ~ms; a reclaim touches one ring only

// Key words are read and written as relaxed atomics: a stale reader may compare
// bytes of a slot being refilled, and re-checks ctrl afterwards.
uint64_t *key_words(EntryHeader *e) { return reinterpret_cast<uint64_t *>(reinterpret_cast<uint8_t *>(e) + kEntryKeyOffset); }

uint64_t full_word(const KeyProbe &k, uint32_t i) {
  uint64_t w;
  std::memcpy(&w, static_cast<const uint8_t *>(k.bytes) + size_t(i) * 8, 8);
  return w;
}

bool key_equals(EntryHeader *e, const KeyProbe &k) {
  if (e->key_len.load(rlx) != k.len) return false;
  uint64_t *w = key_words(e);
  const uint32_t full = k.full_words();
  for (uint32_t i = 0; i < full; ++i)
    if (std::atomic_ref<uint64_t>(w[i]).load(rlx) != full_word(k, i)) return false;
  return full == k.words() || std::atomic_ref<uint64_t>(w[full]).load(rlx) == k.tail;
}

void store_key(EntryHeader *e, const KeyProbe &k) {
  uint64_t *w = key_words(e);
  for (uint32_t i = 0; i < k.words(); ++i) std::atomic_ref<uint64_t>(w[i]).store(k.word(i), rlx);
  e->key_len.store(k.len, rlx);
}

uint32_t home_of(const TierView &t, const KeyProbe &k) { return uint32_t((uint64_t(uint32_t(k.hash)) * t.slots) >> 32); }
uint32_t window_of(const TierView &t) { return std::min<uint32_t>(kProbeWindow, t.slots); }
uint32_t next_slot(const TierView &t, uint32_t s) { return s + 1 == t.slots ? 0 : s + 1; }
bool holds_key_state(EntryState s) { return s == EntryState::live || s == EntryState::pending || s == EntryState::reclaiming; }

// Waits (bounded) for sluiced to finish reclaiming one entry.
bool wait_while(const AtomicU64 &ctrl, uint64_t word) {
  for (int i = 0; i < kReclaimWaitSpins; ++i) {
    if (ctrl.load(acq) != word) return true;
    if (i < 64) cpu_relax();
    else sched_yield();
  }
  return false;
}

// Decides a PENDING entry. Safe to run by anyone, any number of times.
void resolve(const TierView &t, const KeyProbe &k, uint32_t s, uint64_t pending) {
  EntryHeader *me = t.entry(s);
  // Two inserters of one key each publish, then scan for the other: a store then a
  // load on different words (store buffering). Release and acquire allow both scans
  // to miss (both entries go live: two rings for one key); only a seq_cst fence on
  // each side forbids it. x86 already has it: the publishing CAS is a locked
  // instruction, a full barrier.
#if !defined(__x86_64__)
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
  const uint64_t my_seq = me->seq.load(acq);
  const uint32_t gen = ctrl_gen(pending);
  for (;;) {
    if (me->ctrl.load(acq) != pending) return;
    bool rescan = false;
    uint32_t j = home_of(t, k);
    for (uint32_t i = 0; i < window_of(t) && !rescan; ++i, j = next_slot(t, j)) {
      if (j == s) continue;
      EntryHeader *o = t.entry(j);
      const uint64_t cj = o->ctrl.load(acq);
      const EntryState st = ctrl_state(cj);
      if (st == EntryState::empty) break;
      if (!holds_key_state(st) || ctrl_tag(cj) != k.tag() || !key_equals(o, k)) continue;
      const uint64_t oseq = o->seq.load(acq);
      std::atomic_thread_fence(acq);  // order the relaxed key reads before the re-check
      if (o->ctrl.load(rlx) != cj) { rescan = true; break; }
      if (st != EntryState::pending || oseq < my_seq) {  // an older twin wins: withdraw
        uint64_t expect = pending;
        me->ctrl.compare_exchange_strong(expect, ctrl_make(EntryState::free, gen, 0), acq);
        return;
      }
      SLUICE_FAULT();
      uint64_t expect = cj;  // a younger pending twin: kill it, then look again
      o->ctrl.compare_exchange_strong(expect, ctrl_make(EntryState::free, ctrl_gen(cj), 0), acq);
      rescan = true;
    }
    if (rescan) continue;
    SLUICE_FAULT();
    uint64_t expect = pending;
    me->ctrl.compare_exchange_strong(expect, ctrl_make(EntryState::live, gen, k.tag()), acq);
    return;
  }
}

struct Scan {
  Lookup result = Lookup::absent;
  EntryRef ref;
  bool have_free = false;
  uint32_t free_slot = 0;
  uint64_t free_word = 0;
};

// One pass over the key's probe window. Returns false to ask for a restart
// (something changed under us, or we helped another entry along).
bool scan_once(const TierView &t, const KeyProbe &k, Scan &sc) {
  uint32_t s = home_of(t, k);
  for (uint32_t i = 0; i < window_of(t); ++i, s = next_slot(t, s)) {
    EntryHeader *e = t.entry(s);
    const uint64_t c = e->ctrl.load(acq);
    const EntryState st = ctrl_state(c);
    if (st == EntryState::empty || st == EntryState::free) {
      if (!sc.have_free) sc = Scan{Lookup::absent, {}, true, s, c};
      if (st == EntryState::empty) return true;
      continue;
    }
    if (!holds_key_state(st) || ctrl_tag(c) != k.tag() || !key_equals(e, k)) continue;
    std::atomic_thread_fence(acq);  // order the relaxed key reads before the re-check
    if (e->ctrl.load(rlx) != c) return false;
    if (st == EntryState::live) {
      sc.result = Lookup::found;
      sc.ref = EntryRef{s, c};
      return true;
    }
    if (st == EntryState::pending) {
      resolve(t, k, s, c);
      return false;
    }
    if (!wait_while(e->ctrl, c)) {  // reclaiming
      sc.result = Lookup::busy;
      return true;
    }
    return false;
  }
  return true;
}

// The common case, the key LIVE in its home slot, without a scan: exactly what
// scan_once concludes when its first slot holds the key LIVE.
bool live_at_home(const TierView &t, const KeyProbe &k, EntryRef &out) {
  const uint32_t s = home_of(t, k);
  EntryHeader *e = t.entry(s);
  const uint64_t c = e->ctrl.load(acq);
  if (ctrl_state(c) != EntryState::live || ctrl_tag(c) != k.tag() || !key_equals(e, k)) return false;
  std::atomic_thread_fence(acq);  // order the relaxed key reads before the re-check
  if (e->ctrl.load(rlx) != c) return false;
  out = EntryRef{s, c};
  return true;
}

}  // namespace

uint64_t KeyProbe::word(uint32_t i) const { return i < full_words() ? full_word(*this, i) : tail; }

TierView TierView::of(void *state_base, const Geometry &g, uint32_t tier) {
  const TierInfo &ti = g.tiers[tier];
  auto *base = static_cast<uint8_t *>(state_base);
  TierView v;
  v.entries = base + ti.entries_offset;
  v.rings = reinterpret_cast<AtomicU64 *>(base + ti.rings_offset);
  v.stride = g.entry_stride;
  v.slots = ti.slots;
  v.capacity = ti.capacity;
  v.capacity_div = FastDiv(ti.capacity);
  v.max_key_bytes = g.max_key_bytes;
  return v;
}

void prefetch_home(const TierView &t, const KeyProbe &k) {
  const uint32_t home = home_of(t, k);
  __builtin_prefetch(t.entry(home), 1);
  const size_t ring_bytes = size_t(t.capacity) * 8;
  if (ring_bytes <= 256)
    for (size_t off = 0; off < ring_bytes; off += 64) __builtin_prefetch(reinterpret_cast<const char *>(t.ring(home)) + off, 1);
}

Lookup find_key(const TierView &t, const KeyProbe &k, EntryRef &out) {
  if (live_at_home(t, k, out)) return Lookup::found;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    Scan sc;
    if (!scan_once(t, k, sc)) continue;
    if (sc.result == Lookup::found) out = sc.ref;
    return sc.result == Lookup::found || sc.result == Lookup::busy ? sc.result : Lookup::absent;
  }
  return Lookup::busy;
}

// The pid a claim carries: ours, if the daemon that frees dead claims sees the same
// pid namespace; else 0, which it never frees (a pid it resolves in its own
// namespace would name another process, dead or alive, and freeing a live
// inserter's claim lets it overwrite the next key's entry).
uint32_t claim_tag(const StateHeader &h) {
  struct Cached {
    pid_t pid = 0;
    PidNamespace ns;
  };
  thread_local Cached c;
  const pid_t pid = getpid();  // a real syscall (glibc stopped caching it): only new keys pay it
  if (c.pid != pid) c = Cached{pid, PidNamespace::mine()};  // a fork (or unshare's child) looks again
  const bool shared = c.ns.ino != 0 && h.pid_ns_ino.load(rlx) == c.ns.ino && h.pid_ns_dev.load(rlx) == c.ns.dev;
  return shared ? uint32_t(pid) : 0;
}

Lookup find_or_insert_key(const TierView &t, const KeyProbe &k, StateHeader &h, EntryRef &out) {
  AtomicU64 &seq = h.insert_seq;
  if (live_at_home(t, k, out)) return Lookup::found;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    Scan sc;
    if (!scan_once(t, k, sc)) continue;
    if (sc.result == Lookup::found) {
      out = sc.ref;
      return Lookup::found;
    }
    if (sc.result == Lookup::busy) return Lookup::busy;
    if (!sc.have_free) return Lookup::full;

    EntryHeader *e = t.entry(sc.free_slot);
    const uint32_t gen = ctrl_gen(sc.free_word) + 1;
    uint64_t expect = sc.free_word;
    const uint64_t claimed = ctrl_make(EntryState::claimed, gen, claim_tag(h));
    if (!e->ctrl.compare_exchange_strong(expect, claimed, std::memory_order_acq_rel)) continue;

    // Private until published: fill the key and give it a fresh ring. The head
    // jumps past every position the slot ever used, and empty values carry the
    // new gen, so nothing a stale client remembers can match again.
    SLUICE_FAULT();
    store_key(e, k);
    SLUICE_FAULT();
    AtomicU64 *ring = t.ring(sc.free_slot);
    // Two laps on: a stale helper may still advance the old head by one claim.
    // head moves first, so a stale helper that meets a reset slot sees head moved;
    // both stores release, so a stale client that reads either also sees the new
    // ctrl word and gives up (admit re-checks head and ctrl before claiming).
    const uint64_t new_head = (e->head.load(rlx) / t.capacity + 2) * t.capacity;
    e->head.store(new_head, rel);
    SLUICE_FAULT();
    for (uint32_t j = 0; j < t.capacity; ++j) ring[j].store(ring_empty(new_head, t.capacity, gen), rel);
    e->seq.store(seq.fetch_add(1, rlx) + 1, rlx);
    const uint64_t pending = ctrl_make(EntryState::pending, gen, k.tag());
    expect = claimed;
    SLUICE_FAULT();
    if (!e->ctrl.compare_exchange_strong(expect, pending, rel)) continue;  // freed as dead: retry
    SLUICE_FAULT();
    resolve(t, k, sc.free_slot, pending);
  }
  return Lookup::busy;
}

// ---- daemon side -------------------------------------------------------------
namespace {
int64_t newest_ts_ns(AtomicU64 *ring, uint32_t cap) {
  uint64_t newest = 0;
  for (uint32_t j = 0; j < cap; ++j) newest = std::max(newest, ring_ts_us(ring[j].load(acq)));
  return int64_t(newest) * 1000;
}
void set_poison(AtomicU64 *ring, uint32_t cap, bool on) {
  for (uint32_t j = 0; j < cap; ++j) {
    uint64_t v = ring[j].load(acq);
    while (ring_poisoned(v) != on && !ring[j].compare_exchange_weak(v, on ? v | kRingPoison : v & ~kRingPoison, acq)) {
    }
  }
}
}  // namespace

bool try_reclaim(const TierView &t, uint32_t slot, int64_t now_ns, int64_t idle_ns) {
  EntryHeader *e = t.entry(slot);
  const uint64_t c = e->ctrl.load(acq);
  if (ctrl_state(c) != EntryState::live) return false;
  AtomicU64 *ring = t.ring(slot);
  const uint64_t h = e->head.load(acq);
  const uint64_t last = ring[(h + t.capacity - 1) % t.capacity].load(acq);
  const uint64_t at_head = ring[h % t.capacity].load(acq);
  if (int64_t(std::max(ring_ts_us(last), ring_ts_us(at_head))) * 1000 + idle_ns > now_ns) return false;

  uint64_t expect = c;
  const uint64_t frozen = ctrl_make(EntryState::reclaiming, ctrl_gen(c), ctrl_tag(c));
  if (!e->ctrl.compare_exchange_strong(expect, frozen, acq)) return false;
  set_poison(ring, t.capacity, true);
  // Under the freeze no admission can land; one that landed before it shows here.
  if (newest_ts_ns(ring, t.capacity) + idle_ns > now_ns) {
    set_poison(ring, t.capacity, false);
    e->ctrl.store(c, rel);
    return false;
  }
  e->ctrl.store(ctrl_make(EntryState::free, ctrl_gen(c), 0), rel);
  return true;
}

bool thaw(const TierView &t, uint32_t slot) {
  EntryHeader *e = t.entry(slot);
  uint64_t c = e->ctrl.load(acq);
  if (ctrl_state(c) != EntryState::reclaiming) return false;
  // A CAS: the word may have moved since (freed, claimed again). Clients that see
  // it live before the ring is whole wait on the poison, as after any freeze.
  if (!e->ctrl.compare_exchange_strong(c, ctrl_make(EntryState::live, ctrl_gen(c), ctrl_tag(c)), acq)) return false;
  set_poison(t.ring(slot), t.capacity, false);
  return true;
}

uint32_t thaw_interrupted_reclaims(const TierView &t) {
  uint32_t n = 0;
  for (uint32_t s = 0; s < t.slots; ++s) n += thaw(t, s);
  return n;
}

bool free_unknown_state(const TierView &t, uint32_t slot) {
  EntryHeader *e = t.entry(slot);
  uint64_t c = e->ctrl.load(acq);
  if (ctrl_state(c) <= EntryState::reclaiming) return false;
  // No client writes such a state, so no client holds the slot: free it for the
  // next key (a claim resets the ring and head before it publishes).
  return e->ctrl.compare_exchange_strong(c, ctrl_make(EntryState::free, ctrl_gen(c), 0), acq);
}

int64_t boottime_ns() {
  timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// pid plus start time: a pid that exists but started after `since` is a reuse.
bool process_alive_since(int pid, int64_t since_boot_ns) {
  if (pid <= 0) return true;  // an inserter from another pid namespace: cannot tell, never freed
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;  // 0 or EPERM: the pid exists
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = std::fopen(path, "r");
  // Only a process proven gone is dead: kill says this pid exists, so a /proc that
  // hides it (hidepid gives ENOENT) means "cannot tell", and freeing a live
  // inserter's claim would let it overwrite the next key's entry.
  if (!f) return true;
  char buf[1024];
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = 0;
  const char *p = std::strrchr(buf, ')');  // comm may contain spaces
  if (!p) return true;
  unsigned long long start = 0;
  int field = 2;
  for (const char *q = p + 1; *q; ++q) {
    if (*q == ' ') {
      ++field;
      if (field == 22) {
        start = std::strtoull(q + 1, nullptr, 10);
        break;
      }
    }
  }
  const int64_t start_ns = int64_t(start) * (1'000'000'000 / sysconf(_SC_CLK_TCK));
  return start_ns <= since_boot_ns;
}

PidNamespace PidNamespace::mine() {
  struct stat st{};
  if (::stat("/proc/self/ns/pid", &st) != 0) return {};
  return {uint64_t(st.st_dev), uint64_t(st.st_ino)};
}

bool free_dead_claim(const TierView &t, uint32_t slot, uint64_t claimed_word, int64_t seen_since_boot_ns) {
  if (ctrl_state(claimed_word) != EntryState::claimed) return false;
  if (process_alive_since(int(ctrl_tag(claimed_word)), seen_since_boot_ns)) return false;
  uint64_t expect = claimed_word;
  return t.entry(slot)->ctrl.compare_exchange_strong(
      expect, ctrl_make(EntryState::free, ctrl_gen(claimed_word), 0), acq);
}

uint64_t count_live(const TierView &t) {
  uint64_t n = 0;
  for (uint32_t s = 0; s < t.slots; ++s) n += ctrl_state(t.entry(s)->ctrl.load(rlx)) == EntryState::live;
  return n;
}

uint32_t read_key(const TierView &t, uint32_t slot, void *buf, uint32_t cap) {
  EntryHeader *e = t.entry(slot);
  const uint32_t len = std::min(e->key_len.load(rlx), t.max_key_bytes);
  uint64_t *w = key_words(e);
  for (uint32_t i = 0; i * 8 < len && i * 8 < cap; ++i) {
    uint64_t v = std::atomic_ref<uint64_t>(w[i]).load(rlx);
    std::memcpy(static_cast<uint8_t *>(buf) + i * 8, &v, std::min<uint32_t>(8, std::min(len, cap) - i * 8));
  }
  return len;
}

}  // namespace sluice::core
