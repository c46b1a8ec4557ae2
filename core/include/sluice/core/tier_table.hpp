// The published tier table: two buffers and a generation (LMDB's two metas).
// sluiced fills the idle buffer and then bumps the generation; a reader takes the
// buffer the generation names and re-checks the generation after reading, so it
// sees either the old row or the new one, never a mix (invariant 3).
#pragma once
#include <cstdint>
#include <span>

#include "sluice/core/layout.hpp"

namespace sluice::core {

struct TierLimits {
  uint32_t limit = 0;
  int64_t window_ns = 0;
  uint64_t revenue_micros = 0;
  uint32_t flags = 0;
  uint64_t generation = 0;  // of the table this row was read from
};

// Returns false only if the tier index is past the table (a torn read retries).
bool read_tier(const PolicyHeader &p, uint32_t tier, TierLimits &out);
// Daemon only: publishes a whole new table. rows.size() must equal the tier count.
void publish_tiers(PolicyHeader &p, std::span<const TierLimits> rows, int64_t now_ns);
// Daemon only, before unlinking the pair: marks it retired for every client.
void retire_tiers(PolicyHeader &p);
inline bool retired(uint64_t generation) { return (generation & kGenerationRetired) != 0; }

}  // namespace sluice::core
