// profile_acquire: a fixed, repeatable workload for instruction counts of one
// sluice_acquire (valgrind --tool=callgrind counts instructions, not seconds, so
// the figure does not move with the other load on a shared machine).
//   valgrind --tool=callgrind --toggle-collect=sluice_acquire
//            build/release/bench/profile_acquire [hot|10k|deny|busy] [calls]
// busy: one key with thousands of units inside its window (limit 4096, 10 ms), so
// every `remaining` is a real search for the window's edge.
// Keys are inserted before the measured calls, so insertion is not counted.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "sluice.h"
#include "sluice/core/owner.hpp"
#include "tier_spec.hpp"

int main(int argc, char **argv) {
  const std::string mode = argc > 1 ? argv[1] : "10k";
  const long calls = argc > 2 ? std::atol(argv[2]) : 100'000;
  if (mode != "hot" && mode != "10k" && mode != "deny" && mode != "busy") {
    std::fprintf(stderr, "usage: profile_acquire [hot|10k|deny|busy] [calls]\n");
    return 2;
  }
  sluice::core::LayoutSpec spec;
  spec.tiers = {bench_tier("k16", 16, 16, 1000), bench_tier("hot", 1024, 1024, 1000),
                bench_tier("deny", 16, 15, 1'000'000'000), bench_tier("busy", 4096, 4096, 10'000'000)};
  const std::string name = "sluiceprof-" + std::to_string(getpid());
  std::unique_ptr<sluice::core::Owner> owner;
  bool created = false;
  std::string detail;
  if (sluice::core::Owner::create_or_attach(name, spec, true, owner, created, detail) != sluice::core::Status::ok) {
    std::fprintf(stderr, "cannot create %s: %s\n", name.c_str(), detail.c_str());
    return 1;
  }
  sluice_client *c = nullptr;
  int rc = sluice_open(name.c_str(), &c);
  const char *tier_name = mode == "10k" ? "k16" : mode.c_str();
  const uint32_t nkeys = mode == "10k" ? 10'000 : 1;
  std::vector<std::string> keys;
  for (uint32_t i = 0; i < nkeys; ++i) keys.push_back("user-" + std::to_string(i));
  sluice_decision d{};
  d.size = sizeof d;
  for (uint32_t i = 0; rc == SLUICE_OK && i < nkeys; ++i)
    rc = sluice_acquire(c, tier_name, keys[i].data(), keys[i].size(), 1, &d);  // insert first
  std::mt19937 rng(42);
  std::vector<uint32_t> order(static_cast<size_t>(calls));
  for (auto &o : order) o = rng() % nkeys;
  long allowed = 0;
  for (long i = 0; rc == SLUICE_OK && i < calls; ++i) {
    const std::string &k = keys[order[size_t(i)]];
    rc = sluice_acquire(c, tier_name, k.data(), k.size(), 1, &d);
    allowed += d.allowed;
  }
  if (rc != SLUICE_OK) std::fprintf(stderr, "sluice_acquire: %s\n", sluice_strerror(rc));
  std::printf("%s: %ld calls, %ld allowed\n", mode.c_str(), calls, allowed);
  sluice_close(c);
  owner.reset();
  sluice::core::Owner::remove(name);
  return rc == SLUICE_OK ? 0 : 1;
}
