// Status and reason codes shared by core/ and the C ABI (capi/ maps them 1:1).
#pragma once
#include <cstdint>

namespace sluice::core {

// Negative values are errors; 0 means a decision was made (allowed or denied).
enum class Status : int {
  ok = 0,
  null_argument = -1,
  bad_struct_size = -2,
  empty_key = -3,
  key_too_long = -4,
  unknown_tier = -5,
  cost_zero = -6,
  cost_above_capacity = -7,
  no_segment = -8,
  version_mismatch = -9,
  table_full = -10,
  corrupt_header = -11,
  busy = -12,          // the key is being reclaimed by sluiced and it did not finish in time
  permission = -13,
  not_ready = -14,     // segment exists but its creator has not published it yet
  internal = -15,
  // Not a C ABI code: the segment pair was retired (sluiced --reset removed it).
  // Ledger returns it; LedgerHandle reopens the name and decides again.
  retired = -16,
  // Not a C ABI code either: a handle's ledger asks it to check that the name
  // still maps to it (LedgerHandle::follow_name); it decides nothing first.
  name_check = -17,
};

enum class Reason : int32_t {
  allowed = 0,
  window_full = 1,        // the window already holds `limit` units
  cost_above_limit = 2,   // cost exceeds the current limit (it may fit after a raise)
  tier_closed = 3,        // the tier's limit is 0
};

const char *status_message(Status s) noexcept;

}  // namespace sluice::core
