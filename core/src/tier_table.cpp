#include "sluice/core/tier_table.hpp"

namespace sluice::core {

constexpr auto acq = std::memory_order_acquire;
constexpr auto rlx = std::memory_order_relaxed;

bool read_tier(const PolicyHeader &p, uint32_t tier, TierLimits &out) {
  for (;;) {
    const uint64_t g = p.generation.load(acq);
    const TierTable &t = p.tables[g & 1];
    const uint32_t count = t.count.load(rlx);
    if (tier < count) {
      const TierRow &r = t.rows[tier];
      out.limit = r.limit.load(rlx);
      out.window_ns = r.window_ns.load(rlx);
      out.revenue_micros = r.revenue_micros.load(rlx);
      out.flags = r.flags.load(rlx);
    }
    std::atomic_thread_fence(acq);
    if (p.generation.load(rlx) != g) continue;  // the writer reused our buffer: read again
    out.generation = g;
    return tier < count;
  }
}

void publish_tiers(PolicyHeader &p, std::span<const TierLimits> rows, int64_t now_ns) {
  const uint64_t g = p.generation.load(rlx);
  TierTable &idle = p.tables[(g + 1) & 1];
  // A reader still on the idle buffer loaded generation g-1; this fence orders our
  // earlier store of g before the row stores, so its re-check sees the change.
  std::atomic_thread_fence(std::memory_order_release);
  for (size_t i = 0; i < rows.size() && i < kMaxTiers; ++i) {
    TierRow &r = idle.rows[i];
    r.limit.store(rows[i].limit, rlx);
    r.window_ns.store(rows[i].window_ns, rlx);
    r.revenue_micros.store(rows[i].revenue_micros, rlx);
    r.flags.store(rows[i].flags, rlx);
  }
  idle.count.store(uint32_t(rows.size()), rlx);
  idle.published_ns.store(now_ns, rlx);
  p.generation.store(g + 1, std::memory_order_release);
}

void retire_tiers(PolicyHeader &p) { p.generation.fetch_or(kGenerationRetired, std::memory_order_seq_cst); }

}  // namespace sluice::core
