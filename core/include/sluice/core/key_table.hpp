// Per-tier key table: open addressing over fixed-stride entries, each entry owning
// one ring of admission timestamps. Lock-free insertion with the full key bytes:
//   claim a free slot (CAS) -> fill key, reset ring -> publish as PENDING ->
//   resolve: if another entry for the key is LIVE, or PENDING and older, this one
//   withdraws; else it kills younger PENDING twins and becomes LIVE.
// Anyone may resolve a PENDING entry, so an inserter that dies after publishing
// leaves a complete entry, never a wedge. Keys are only ever visible complete.
#pragma once
#include <cstddef>
#include <cstdint>

#include "sluice/core/hash.hpp"
#include "sluice/core/layout.hpp"
#include "sluice/core/segment.hpp"

namespace sluice::core {

struct TierView {
  uint8_t *entries = nullptr;
  AtomicU64 *rings = nullptr;
  uint32_t stride = 0;
  uint32_t slots = 0;
  uint32_t capacity = 0;
  uint32_t max_key_bytes = 0;
  FastDiv capacity_div;  // positions / capacity on the hot path (no DIV)

  // From a private copy of the layout (read_geometry), never the live header.
  static TierView of(void *state_base, const Geometry &g, uint32_t tier);
  EntryHeader *entry(uint32_t slot) const { return reinterpret_cast<EntryHeader *>(entries + size_t(slot) * stride); }
  AtomicU64 *ring(uint32_t slot) const { return rings + size_t(slot) * capacity; }
};

struct EntryRef {
  uint32_t slot = 0;
  uint64_t ctrl = 0;  // the LIVE word seen at lookup; re-checked on every attempt
};

struct KeyProbe {  // a caller's key, hashed once
  const void *bytes;
  uint32_t len;
  uint64_t tail;  // the last len % 8 bytes, zero-padded (what the stored key's last word holds)
  uint64_t hash;
  KeyProbe(const void *b, uint32_t l)
      : bytes(b),
        len(l),
        tail(load_tail(static_cast<const unsigned char *>(b) + (l & ~7u), l & 7u)),
        hash(hash_key_with_tail(b, l, tail)) {}
  uint32_t tag() const { return uint32_t(hash >> 32); }
  uint32_t full_words() const { return len / 8; }
  uint32_t words() const { return (len + 7) / 8; }
  uint64_t word(uint32_t i) const;  // the key as zero-padded little-endian words
};

enum class Lookup { found, absent, busy, full };

// Starts loading the key's home entry and (small) ring, so the two cache misses
// of a cold key overlap instead of following each other.
void prefetch_home(const TierView &t, const KeyProbe &k);

// Finds the LIVE entry for the key. Never inserts.
Lookup find_key(const TierView &t, const KeyProbe &k, EntryRef &out);
// Finds or inserts. `h` is the segment's header (its insertion counter and the
// daemon's pid namespace, which decides how a claim is tagged).
Lookup find_or_insert_key(const TierView &t, const KeyProbe &k, StateHeader &h, EntryRef &out);

// ---- daemon side -------------------------------------------------------------
// Reclaims a LIVE entry whose newest admission is older than idle_ns: freezes the
// ring (poison), re-checks under the freeze, then frees the slot or thaws it.
bool try_reclaim(const TierView &t, uint32_t slot, int64_t now_ns, int64_t idle_ns);
// After a daemon crash: thaw every ring left frozen by an interrupted reclaim.
uint32_t thaw_interrupted_reclaims(const TierView &t);
// One slot of it: true if it was frozen (and is now live again).
bool thaw(const TierView &t, uint32_t slot);
// A ctrl word in no state the protocol has (client-writable memory written by a
// buggy process) leaked its slot for good: true if it was freed.
bool free_unknown_state(const TierView &t, uint32_t slot);
// Frees slots CLAIMED by an inserter that has died (pid gone or reused since
// `seen_since_boot_ns`, CLOCK_BOOTTIME). Returns the number freed.
bool free_dead_claim(const TierView &t, uint32_t slot, uint64_t claimed_word, int64_t seen_since_boot_ns);
int64_t boottime_ns();
// False only for a process proven gone: no such pid, or one started after `since`.
// pid 0 (a claim from another pid namespace) and anything unreadable are alive.
bool process_alive_since(int pid, int64_t since_boot_ns);
// This process's pid namespace as (st_dev, st_ino); {0, 0} if it cannot be read.
struct PidNamespace {
  uint64_t dev = 0, ino = 0;
  static PidNamespace mine();
};

// LIVE entries in a tier (a full scan: for status, not the hot path).
uint64_t count_live(const TierView &t);

// Copies the stored key (for status / metrics). Returns its length.
uint32_t read_key(const TierView &t, uint32_t slot, void *buf, uint32_t cap);

}  // namespace sluice::core
