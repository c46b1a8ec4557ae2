// What a client holds (the C ABI's sluice_client): the ledger of a segment name,
// followed across a reset. When sluiced retires the pair it maps (--reset removes
// it and makes a new one), the next decision reopens the name and is made in the
// new ledger, so no process keeps counting in a ledger no one else sees. A pair
// unlinked without being retired (sluiced killed -9, then its files removed by
// hand) is left the same way once a new pair is under the name: every
// kNameCheckIntervalNs one call checks the name (follow_name).
//
// Lock-free and fork-safe: the current ledger is one atomic pointer; a reopen
// builds the new ledger aside and installs it with a CAS (a loser drops its own).
// A replaced ledger stays mapped until the handle is destroyed (a thread may still
// be inside a call on it); each reset costs the handle one old mapping, of address
// space only: the remover frees the retired state's memory (Owner::remove).
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "sluice/core/ledger.hpp"

namespace sluice::core {

class LedgerHandle {
 public:
  static Status open(const std::string &name, std::unique_ptr<LedgerHandle> &out, std::string &detail);
  ~LedgerHandle();
  LedgerHandle(const LedgerHandle &) = delete;
  LedgerHandle &operator=(const LedgerHandle &) = delete;

  // Looks the tier up by name and decides in the current ledger; on a retired one,
  // reopens and decides again. While the name cannot be reopened (no segment yet)
  // every call fails with the reason, never an answer from the retired ledger.
  Status decide(const char *tier, const void *key, size_t key_len, uint32_t cost, bool record, Decision &out,
                std::string &detail) {
    Ledger *l = cur_.load(std::memory_order_acquire);
    const int t = l->find_tier(tier);
    Status s = Status::unknown_tier;
    if (t >= 0) {  // inline: the common case costs a load and a compare more than Ledger
      s = l->decide_in(uint32_t(t), key, key_len, cost, record, out, detail);
      if (s != Status::retired && s != Status::name_check) [[likely]] return s;
    }
    return decide_after_miss(l, t, s, tier, key, key_len, cost, record, out, detail);
  }
  uint64_t reopens() const { return reopens_.load(std::memory_order_relaxed); }

 private:
  LedgerHandle() = default;
  // decide() when the tier was not found (t < 0), the ledger was retired, or it
  // asked for its name to be checked (`s`: what decide_in said).
  Status decide_after_miss(Ledger *l, int t, Status s, const char *tier, const void *key, size_t key_len,
                           uint32_t cost, bool record, Decision &out, std::string &detail);
  // The ledger under the name now: `l` while the name still maps both its objects
  // (or maps nothing usable: its clients still share `l`), else the pair there, if
  // it opens. (A new sluiced keeps a state whose policy alone was removed.)
  Ledger *follow_name(Ledger *l);
  void watch_name(Ledger &l) const;  // its first name check is one interval away
  // The ledger that replaced `seen`, or nullptr with the reason.
  Ledger *reopen(Ledger *seen, Status &why, std::string &detail);

  std::string name_;
  std::atomic<Ledger *> cur_{nullptr};  // owns the chain of the ledgers it replaced
  std::atomic<int64_t> next_try_ns_{0};  // after a failed reopen, fail fast until then
  std::atomic<int> last_failure_{0};
  std::atomic<uint64_t> reopens_{0};
};

}  // namespace sluice::core
