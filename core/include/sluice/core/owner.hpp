// The owner's side of the engine (used by sluiced and by tests that stand in for
// it): create or re-attach the segment pair, publish tier tables, heartbeat, and
// reclaim idle keys. Clients never link this path into a decision.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>
#include <unordered_map>

#include "sluice/core/key_table.hpp"
#include "sluice/core/segment.hpp"
#include "sluice/core/tier_table.hpp"

namespace sluice::core {

struct GcStats {
  uint64_t scanned = 0;
  uint64_t reclaimed = 0;
  uint64_t dead_claims_freed = 0;
  uint64_t thawed = 0;         // rings found frozen outside a reclaim (a client's write)
  uint64_t unknown_freed = 0;  // slots in no state the protocol has, freed
};

class Owner {
 public:
  // Re-attaches an existing, valid pair whose tiers match `spec` (counters and keys
  // kept), or creates a new one. reset=true removes any existing pair first.
  // `created` tells which happened. A pair that exists but does not validate or
  // match is refused with the reason; --reset is the way past it.
  //
  // On a re-attach, `on_attach` (if set) sees the rows about to be published (the
  // spec's) and the rows published before, and may change the former (sluiced keeps
  // what its loop published across a restart) or refuse with `detail`: nothing is
  // published then and the call fails with Status::internal. `created_ns` is when
  // the pair was made (CLOCK_MONOTONIC; from the header, so client-writable).
  using AttachHook = std::function<bool(std::vector<TierLimits> &rows, const std::vector<TierLimits> &before,
                                        int64_t created_ns, std::string &detail)>;
  static Status create_or_attach(const std::string &name, const LayoutSpec &spec, bool reset,
                                 std::unique_ptr<Owner> &out, bool &created, std::string &detail,
                                 const AttachHook &on_attach = {});

  // What create_or_attach(name, spec, reset) would do, found without changing
  // anything: both objects are mapped read-only, nothing is created, removed or
  // written (sluiced --check). Made by this process's uid, as a start would be.
  enum class Plan {
    create,    // a new pair is made (none there, --reset, or one a creator or reset left half done)
    attach,    // the pair matches the spec and is re-attached with its keys and counters
    mismatch,  // the pair does not match the spec: the start is refused; --reset wipes it
    refused,   // the start fails on this pair whatever the spec (`status`: another user's, damaged)
  };
  struct Preview {
    Plan plan = Plan::create;
    Status status = Status::ok;        // refused: why
    std::string detail;                // for a person
    bool exists = false;               // a state object is under the name
    std::vector<TierLimits> rows_now;  // attach: the table clients read now
  };
  static Preview preview(const std::string &name, const LayoutSpec &spec, bool reset);
  // Retires the pair (clients that map it reopen the name), unlinks it, and frees
  // the retired state segment's memory (tmpfs keeps an unlinked object's pages
  // until its last mapping goes, and clients' mappings may outlive it by days).
  static void remove(const std::string &name);
  // Marks the pair retired without unlinking it (remove's first step; for tests).
  // False when there is no valid policy segment of this uid's (or root) to retire.
  static bool retire(const std::string &name);

  StateHeader &state() const { return *state_; }
  PolicyHeader &policy() const { return *policy_; }
  // The layout as this owner created or validated it (a private copy: clients can
  // write the state's header, and the daemon must not follow them outside the map).
  const Geometry &geometry() const { return geo_; }
  uint32_t tier_count() const { return geo_.tier_count; }
  const TierView &tier_view(uint32_t i) const { return views_[i]; }

  // Are both objects still under their names in /dev/shm? Someone may unlink them
  // under a running daemon (rm, or systemd-logind's RemoveIPC when a user logs out).
  bool still_named() const;
  // Marks this pair retired, so clients reopen the name (see LedgerHandle), and
  // frees the state segment's memory if it is no longer under its name. For a pair
  // no longer under its names; the owner must not use the state after this.
  void discard_state();

  // The rows that were published when this owner re-attached, before it published
  // its own (empty when it created the pair): a start that fails later puts them back.
  const std::vector<TierLimits> &rows_before_attach() const { return rows_before_attach_; }

  void publish(std::span<const TierLimits> rows);
  void heartbeat();
  void mark_stopped();
  // Visits up to `budget` slots per tier from a rotating cursor.
  GcStats collect(int64_t idle_ns, uint32_t budget);

 private:
  Owner() = default;
  void take_geometry(const Geometry &g);
  std::string name_;
  Mapping state_map_, policy_map_;
  StateHeader *state_ = nullptr;
  PolicyHeader *policy_ = nullptr;
  Geometry geo_;
  TierView views_[kMaxTiers];
  uint32_t cursor_[kMaxTiers] = {};
  std::vector<TierLimits> rows_before_attach_;
  // CLAIMED words first seen at (boottime ns): an owner that is gone is freed.
  std::unordered_map<uint64_t, std::pair<uint64_t, int64_t>> claims_seen_;
};

}  // namespace sluice::core
