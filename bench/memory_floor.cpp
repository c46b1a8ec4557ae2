// memory_floor: what the memory alone costs, for reading bench_sluice's numbers.
//
// Each step reads the TSC, loads one 8-byte word of a "ring" line and CASes one word
// of an "entry" line of slot s, where s is the next of a pre-generated random
// sequence over `keys` slots chosen among `slots`: the lines a call on that many keys
// touches in Sluice's layout, with none of its instructions. The next step's address
// depends on this step's loads, so steps do not overlap (as calls do not: a call is
// hundreds of instructions, more than the CPU looks ahead), and the figure is the
// latency of those two lines, fetched in parallel.
//
//   memory_floor            every layout, 4 KiB pages and transparent huge pages
//
// Anonymous private memory, so huge pages follow /sys/kernel/mm/transparent_hugepage
// (enabled = madvise here), not /dev/shm's mount.
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "sluice/core/tsc_clock.hpp"

namespace {

struct Layout {
  const char *what;
  size_t slots, keys, entry_stride, ring_stride;
  bool ring_inline = false;  // each ring right after its entry, in one slot (one page, adjacent lines)
};

char *map(size_t bytes, bool huge) {
  void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) std::exit(1);
  madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  for (size_t i = 0; i < bytes; i += 4096) static_cast<char *>(p)[i] = 0;  // fault in before timing
  return static_cast<char *>(p);
}

// Median over 5 passes of ns per step.
double ns_per_step(const Layout &l, bool huge) {
  const size_t slot_stride = l.ring_inline ? l.entry_stride + l.ring_stride : l.entry_stride;
  char *entries = map(l.slots * slot_stride, huge);
  char *rings = l.ring_inline ? entries + l.entry_stride : map(l.slots * l.ring_stride, huge);
  const size_t ring_stride = l.ring_inline ? slot_stride : l.ring_stride;
  std::mt19937_64 rng(l.keys);
  std::vector<uint32_t> chosen(l.keys), seq(1u << 20);
  for (auto &c : chosen) c = uint32_t(rng() % l.slots);
  for (auto &s : seq) s = chosen[rng() % l.keys];
  std::vector<double> passes;
  uint64_t dep = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const uint32_t s0 : seq) {
      const size_t s = s0 + size_t(dep >> 63);  // always s0; the CPU cannot know that
      auto *e = reinterpret_cast<std::atomic<uint64_t> *>(entries + s * slot_stride);
      auto *r = reinterpret_cast<std::atomic<uint64_t> *>(rings + s * ring_stride);
      const uint64_t t = sluice::core::read_tsc() & 0xFFFF;
      const uint64_t v = r->load(std::memory_order_acquire);
      uint64_t x = e->load(std::memory_order_relaxed);
      e->compare_exchange_strong(x, (x + v + t) & 0xFFFFFFFF);
      dep = v | x;
    }
    passes.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
                     double(seq.size()));
  }
  munmap(entries, l.slots * slot_stride);
  if (!l.ring_inline) munmap(rings, l.slots * l.ring_stride);
  std::sort(passes.begin(), passes.end());
  return passes[passes.size() / 2];
}

}  // namespace

int main() {
  const Layout layouts[] = {
      {"1 key", 16, 1, 128, 128},
      {"1,000 keys of a 125k-slot table (g1000)", 125'000, 1'000, 128, 128},
      {"10,000 keys of a 125k-slot table (b1, g10000)", 125'000, 10'000, 128, 128},
      {"10,000 keys of a 12.5k-slot table (b3)", 12'500, 10'000, 128, 128},
      {"1M keys of a 1.25M-slot table, 64 B entries (c)", 1'250'000, 1'000'000, 64, 128},
      {"10,000 keys of 125k slots, ring inline after entry", 125'000, 10'000, 128, 128, true},
      {"100,000 keys of 125k slots, separate rings", 125'000, 100'000, 128, 128},
      {"100,000 keys of 125k slots, ring inline after entry", 125'000, 100'000, 128, 128, true},
      {"1M keys of 1.25M slots, 64 B entries, ring inline", 1'250'000, 1'000'000, 64, 128, true},
  };
  std::printf("%-52s %12s %12s\n", "lines of (entry, ring) per step", "4 KiB ns", "THP ns");
  for (const Layout &l : layouts)
    std::printf("%-52s %12.1f %12.1f\n", l.what, ns_per_step(l, false), ns_per_step(l, true));
}
