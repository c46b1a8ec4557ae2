// Shared-memory layout of the two segments. Plain structs, offsets instead of
// pointers, every atomic lock-free (atomic.hpp). Any change to a struct here changes
// kStateFormat/kPolicyFormat, so an old client refuses a new segment instead of
// misreading it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "sluice/core/atomic.hpp"
#include "sluice/core/fast_div.hpp"

namespace sluice::core {

constexpr uint32_t kLayoutMajor = 1;
constexpr uint32_t kLayoutMinor = 2;  // 1: the TSC clock parameters in the policy segment; 2: extra_units, pid_ns
constexpr uint64_t kStateMagic = 0x534C554943455354ULL;   // "SLUICEST"
constexpr uint64_t kPolicyMagic = 0x534C55494345504FULL;  // "SLUICEPO"

constexpr uint32_t kMaxTiers = 32;
constexpr uint32_t kTierNameBytes = 32;       // including the NUL
constexpr uint32_t kCounterStripes = 16;      // per tier, one cache line each
constexpr uint32_t kProbeWindow = 1024;       // open addressing: slots probed from home (clusters at 80% load run to hundreds)
constexpr uint32_t kMaxCost = (1u << 14) - 1; // units one call may take (ring value field)
constexpr uint32_t kMaxCapacity = 1u << 20;   // ring slots per key
constexpr uint32_t kMaxKeyBytes = 1024;
constexpr int64_t kHeartbeatStopped = -1;     // written by a clean shutdown

// ---- key table entry -------------------------------------------------------
// ctrl word: [state:3][gen:29][tag:32]. gen grows on every claim of the slot so a
// stale reader can tell a reused slot from the one it looked up.
enum class EntryState : uint32_t {
  empty = 0,       // never used: a probe may stop here
  free = 1,        // reclaimed, reusable; probes go on past it
  claimed = 2,     // an inserter is filling it; the tag field holds its pid (0: not in the daemon's pid namespace)
  pending = 3,     // filled, published, not yet proven the only entry for its key
  live = 4,
  reclaiming = 5,  // sluiced froze the ring to check it is idle
};

struct EntryHeader {
  AtomicU64 ctrl;
  AtomicU64 head;       // admission position: units ever admitted to this slot
  AtomicU64 seq;        // insertion order; the oldest pending entry for a key wins
  AtomicU64 reserved;   // room for a per-key limit (roadmap: limits given per call)
  AtomicU32 window_hint; // low 32 bits of the last in-window boundary found (a guess: admission.cpp)
  AtomicU32 key_len;
  // key bytes follow, 8-aligned, read and written as relaxed 64-bit words
};
static_assert(sizeof(EntryHeader) == 40);
constexpr size_t kEntryKeyOffset = sizeof(EntryHeader);

constexpr uint64_t ctrl_make(EntryState s, uint32_t gen, uint32_t tag) {
  return (uint64_t(s) << 61) | (uint64_t(gen & 0x1FFFFFFFu) << 32) | tag;
}
constexpr EntryState ctrl_state(uint64_t c) { return EntryState(c >> 61); }
constexpr uint32_t ctrl_gen(uint64_t c) { return uint32_t(c >> 32) & 0x1FFFFFFFu; }
constexpr uint32_t ctrl_tag(uint64_t c) { return uint32_t(c); }

constexpr uint32_t entry_stride_for(uint32_t max_key_bytes) {
  uint32_t raw = uint32_t(kEntryKeyOffset) + ((max_key_bytes + 7u) & ~7u);
  return (raw + 63u) & ~63u;
}

// ---- ring values -----------------------------------------------------------
// One 64-bit word per admitted unit: [poison:1][lap:1][count:14][ts_us:48].
// lap tells "written for position p" from "left over from p - capacity" (the
// claimed-but-not-written trap). count > 0 marks the first slot of a cost-N claim;
// its followers carry count 0 and the same ts. An empty slot has ts 0 and the
// entry's generation in count, so a reset ring never repeats an old value (ABA).
// poison marks a ring frozen by sluiced while it checks the key is idle.
constexpr uint64_t kRingPoison = 1ULL << 63;
constexpr uint64_t kRingLap = 1ULL << 62;
constexpr uint64_t kRingTsMask = (1ULL << 48) - 1;

constexpr uint64_t ring_lap_bit(uint64_t pos, uint32_t cap) { return ((pos / cap) & 1) ? 0 : kRingLap; }
constexpr uint64_t ring_make(uint64_t pos, uint32_t cap, uint64_t ts_us, uint32_t count) {
  return ring_lap_bit(pos, cap) | (uint64_t(count & kMaxCost) << 48) | (ts_us & kRingTsMask);
}
constexpr uint64_t ring_empty(uint64_t next_pos, uint32_t cap, uint32_t gen) {
  return (ring_lap_bit(next_pos, cap) ^ kRingLap) | (uint64_t(gen & kMaxCost) << 48);
}
constexpr uint64_t ring_ts_us(uint64_t v) { return v & kRingTsMask; }
constexpr uint32_t ring_count(uint64_t v) { return uint32_t(v >> 48) & kMaxCost; }
constexpr bool ring_poisoned(uint64_t v) { return v & kRingPoison; }
constexpr bool ring_written_for(uint64_t v, uint64_t pos, uint32_t cap) {
  return !ring_poisoned(v) && ring_ts_us(v) != 0 && (v & kRingLap) == ring_lap_bit(pos, cap);
}

// Slot index and lap bit of positions within one ring of a base position, from a
// single division (a 64-bit divide costs tens of cycles; the hot path needs up to
// a dozen positions).
struct RingCursor {
  uint32_t cap;
  uint64_t base, base_idx, base_lap;
  RingCursor(uint64_t h, uint32_t c) : cap(c), base(h), base_idx(h % c), base_lap(h / c) {}
  RingCursor(uint64_t h, const FastDiv &c) : cap(c.divisor()), base(h), base_lap(c.quot(h)) { base_idx = c.rem(h, base_lap); }
  int64_t raw(uint64_t pos) const { return int64_t(base_idx) + int64_t(pos - base); }  // |pos - base| <= cap
  uint64_t idx(uint64_t pos) const {
    const int64_t i = raw(pos);
    return uint64_t(i < 0 ? i + cap : i >= int64_t(cap) ? i - cap : i);
  }
  uint64_t lap_bit(uint64_t pos) const {
    const int64_t i = raw(pos);
    const uint64_t lap = base_lap + (i < 0 ? uint64_t(-1) : i >= int64_t(cap) ? 1 : 0);
    return (lap & 1) ? 0 : kRingLap;
  }
  bool written_for(uint64_t v, uint64_t pos) const {
    return !ring_poisoned(v) && ring_ts_us(v) != 0 && (v & kRingLap) == lap_bit(pos);
  }
  uint64_t make(uint64_t pos, uint64_t ts_us, uint32_t count) const {
    return lap_bit(pos) | (uint64_t(count & kMaxCost) << 48) | (ts_us & kRingTsMask);
  }
};

// ---- state segment (read-write for clients) ----------------------------------
struct TierInfo {  // fixed at creation: names and ring sizes never change
  char name[kTierNameBytes];
  uint32_t capacity;        // ring slots per key = the tier's max_limit
  uint32_t slots;           // key table slots
  uint64_t entries_offset;  // from the segment base
  uint64_t rings_offset;
};

struct alignas(64) CounterStripe {
  AtomicU64 admitted;
  AtomicU64 denied_window;
  AtomicU64 denied_cost;
  AtomicU64 denied_closed;
  AtomicU64 extra_units;    // units admitted beyond one per call (cost - 1): units = admitted + extra_units,
                            // so a cost-1 admission costs one locked add, not two
  uint64_t reserved[3];
};
static_assert(sizeof(CounterStripe) == 64);

struct alignas(64) StateHeader {
  uint64_t magic;
  AtomicU64 format;         // 0 until the creator has finished; written last, release
  uint64_t segment_bytes;
  uint8_t boot_id[16];
  uint32_t tier_count;
  uint32_t max_key_bytes;
  uint32_t entry_stride;
  uint32_t probe_window;
  int64_t created_ns;
  AtomicI64 daemon_pid;
  AtomicI64 heartbeat_ns;   // CLOCK_MONOTONIC; kHeartbeatStopped after a clean stop
  AtomicU64 insert_seq;
  AtomicU64 daemon_starts;
  AtomicU64 keys_reclaimed;
  AtomicU64 stripe_seq;     // hands counter stripes out round-robin across all client threads
  // The daemon's pid namespace (st_dev, st_ino of /proc/self/ns/pid). An inserter
  // tags its claim with its pid only if it shares that namespace: the daemon frees
  // the claims of dead pids, and a pid from another namespace names someone else.
  AtomicU64 pid_ns_dev;
  AtomicU64 pid_ns_ino;
  uint64_t reserved[29];    // room for later fields without a layout break
  TierInfo tiers[kMaxTiers];
  CounterStripe counters[kMaxTiers][kCounterStripes];
};

// ---- policy segment (read-only for clients) ----------------------------------
struct TierRow {
  AtomicU32 limit;          // units per window; 0 closes the tier
  AtomicU32 flags;          // kTierAdaptive
  AtomicI64 window_ns;
  AtomicU64 revenue_micros; // revenue per request in millionths of a dollar
};
constexpr uint32_t kTierAdaptive = 1;
// Set in PolicyHeader::generation, once and for good, before sluiced unlinks a pair:
// a client that still maps it must not count in a ledger no one else sees.
constexpr uint64_t kGenerationRetired = 1ULL << 63;

struct TierTable {
  AtomicU32 count;
  uint32_t reserved;
  AtomicI64 published_ns;
  TierRow rows[kMaxTiers];
};

// The hot path's clock (tsc_clock.hpp): written by sluiced only, under `seq` (odd
// while being rewritten).
constexpr uint32_t kClockMonotonic = 0;  // clients call clock_gettime(CLOCK_MONOTONIC)
constexpr uint32_t kClockTsc = 1;        // clients compute ns0 + (tsc - tsc0) * mult >> 32
struct alignas(64) ClockParams {
  AtomicU64 seq;
  AtomicU64 tsc0;
  AtomicI64 ns0;
  AtomicU64 mult;         // CLOCK_MONOTONIC ns per TSC tick, times 2^32
  AtomicU32 kind;
  uint32_t reserved0;
  AtomicU64 anchor_tsc;   // where the rate's baseline starts (owner only)
  AtomicI64 anchor_ns;
  AtomicU64 valid_ticks;  // clients use the TSC only up to this many ticks after tsc0
};
static_assert(sizeof(ClockParams) == 64);

struct alignas(64) PolicyHeader {
  uint64_t magic;
  AtomicU64 format;
  uint8_t boot_id[16];
  // Readers use tables[generation & 1] and re-check generation after reading;
  // the daemon fills the idle table, then bumps generation (LMDB's two metas).
  // kGenerationRetired set: the pair is being removed (--reset); clients reopen by name.
  alignas(64) AtomicU64 generation;
  TierTable tables[2];
  ClockParams clock;
};

// The format word folds the layout version with the sizes of every shared struct
// and the word size, so any mismatch is caught before a byte is misread.
constexpr uint64_t fold_format(uint32_t major, uint32_t minor, uint64_t shape) {
  return (uint64_t(major) << 48) | (uint64_t(minor) << 32) | (shape & 0xFFFFFFFFu);
}
constexpr uint64_t shape_hash(std::initializer_list<uint64_t> parts) {
  uint64_t h = 1469598103934665603ULL;
  for (uint64_t p : parts) h = (h ^ p) * 1099511628211ULL;
  return h ^ (h >> 32);
}
constexpr uint64_t kStateFormat = fold_format(
    kLayoutMajor, kLayoutMinor,
    shape_hash({sizeof(StateHeader), alignof(StateHeader), sizeof(EntryHeader), sizeof(TierInfo),
                sizeof(CounterStripe), sizeof(void *), kMaxTiers, kCounterStripes, kProbeWindow}));
constexpr uint64_t kPolicyFormat = fold_format(
    kLayoutMajor, kLayoutMinor,
    shape_hash({sizeof(PolicyHeader), alignof(PolicyHeader), sizeof(TierRow), sizeof(TierTable),
                sizeof(ClockParams), sizeof(void *), kMaxTiers}));
constexpr uint32_t format_major(uint64_t f) { return uint32_t(f >> 48); }

}  // namespace sluice::core
