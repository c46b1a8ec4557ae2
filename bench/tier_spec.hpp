// A fixed-limit tier for the benchmarks (never adapted by a policy loop).
#pragma once
#include <cstdint>

#include "sluice/core/segment.hpp"

inline sluice::core::TierSpec bench_tier(const char *name, uint32_t capacity, uint32_t limit, int64_t window_ns) {
  sluice::core::TierSpec t;
  t.name = name;
  t.capacity = capacity;
  t.limit = limit;
  t.window_ns = window_ns;
  t.adaptive = false;
  return t;
}
