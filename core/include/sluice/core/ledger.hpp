// A process's view of one Sluice segment pair: the client side of the engine. The
// C ABI's sluice_client wraps one of these. Safe to share between threads: every
// call reads the maps and touches shared memory only through atomics.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "sluice/core/admission.hpp"
#include "sluice/core/segment.hpp"
#include "sluice/core/tier_table.hpp"

namespace sluice::core {

struct Decision {
  bool allowed = false;
  uint32_t limit = 0;
  uint32_t remaining = 0;
  int64_t window_ns = 0;
  int64_t retry_after_ns = 0;
  int64_t reset_after_ns = 0;
  uint32_t tier = 0;
  Reason reason = Reason::allowed;
  int64_t admitted_at_ns = 0;
  uint64_t policy_generation = 0;
};

// How often a handle checks that its segment name still maps its pair (two
// stat(2) calls per handle): the longest a client counts in a pair removed by hand.
constexpr int64_t kNameCheckIntervalNs = 200'000'000;

class Ledger {
 public:
  // Maps "<name>.state" read-write and "<name>.policy" read-only and validates both
  // (waiting up to wait_ms for a creator's ready word). Both must have one owner.
  static Status open(const std::string &name, std::unique_ptr<Ledger> &out, std::string &detail,
                     int wait_ms = 1000);
  uint32_t owner_uid() const { return owner_uid_; }  // of both objects, at open

  Status acquire(std::string_view tier, const void *key, size_t key_len, uint32_t cost, Decision &out,
                 std::string &detail) {
    return decide(tier, key, key_len, cost, true, out, detail);
  }
  Status peek(std::string_view tier, const void *key, size_t key_len, uint32_t cost, Decision &out,
              std::string &detail) {
    return decide(tier, key, key_len, cost, false, out, detail);
  }
  Status decide(std::string_view tier, const void *key, size_t key_len, uint32_t cost, bool record, Decision &out,
                std::string &detail);
  // The same for a tier already looked up (find_tier); `tier` must be < tier_count().
  Status decide_in(uint32_t tier, const void *key, size_t key_len, uint32_t cost, bool record, Decision &out,
                   std::string &detail);

  int find_tier(std::string_view name) const;  // -1 if unknown
  int find_tier(const char *name) const;       // a NUL-terminated name; -1 if unknown
  uint32_t tier_count() const { return tier_count_; }
  const TierView &tier_view(uint32_t i) const { return views_[i]; }
  StateHeader &state() const { return *state_hdr_; }
  const PolicyHeader &policy() const { return *policy_hdr_; }
  // sluiced has retired this pair (--reset): decisions return Status::retired.
  bool is_retired() const { return retired(policy_hdr_->generation.load(std::memory_order_acquire)); }

 private:
  friend class LedgerHandle;
  Ledger() = default;
  // One attempt of open: maps and validates both objects and reads what the hot
  // path keeps private (tier views, names).
  Status map_pair(const std::string &name, int wait_ms, std::string &detail);
  std::unique_ptr<Ledger> replaced_;  // the retired ledger this one took over from (LedgerHandle)
  // When a LedgerHandle next checks that its name still maps this pair (INT64_MAX:
  // never, a bare Ledger). decide_in returns Status::name_check to the one thread
  // that moves it on. A pair unlinked by hand while its sluiced was dead (kill -9,
  // then rm /dev/shm/...) is never retired: without the check, clients that mapped
  // it keep counting there after a new sluiced makes a new pair under the name.
  std::atomic<int64_t> next_name_check_ns_{INT64_MAX};
  bool claim_name_check(int64_t now_ns);
  Mapping state_map_, policy_map_;
  StateHeader *state_hdr_ = nullptr;
  const PolicyHeader *policy_hdr_ = nullptr;
  uint32_t tier_count_ = 0;
  uint32_t owner_uid_ = 0;
  TscClock clock_;
  TierView views_[kMaxTiers];
  // Private, NUL-terminated copies: a lookup never reads a name a client could
  // have overwritten in the (client-writable) state segment.
  char names_[kMaxTiers][kTierNameBytes] = {};
};

// Per-tier counters, summed over stripes.
struct TierCounters {
  uint64_t admitted = 0, denied_window = 0, denied_cost = 0, denied_closed = 0, cost_units = 0;
};
// Saturating, for display: a wrapped total would make /metrics' counters go back.
// Wrapping, for rates: deltas of a wrapping total stay true after a stripe is
// scribbled, where a saturated one would pin the total and read 0 for ever.
enum class CounterSum { saturating, wrapping };
TierCounters sum_counters(const StateHeader &h, uint32_t tier, CounterSum mode = CounterSum::saturating);

}  // namespace sluice::core
