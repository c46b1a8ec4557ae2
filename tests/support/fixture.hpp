// Shared helpers for the GoogleTest suites: a private segment pair per test (the
// test stands in for sluiced through core::Owner), a cross-process admission
// recorder, and the exactness check of invariant 1.
#pragma once
#include <cstdio>
#include <random>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sluice/core/ledger.hpp"
#include "sluice/core/owner.hpp"
#include "sluice/core/segment.hpp"

namespace sluice::test {

// Unique across runs too: a pid is reused, and a name that repeats an earlier run's
// would find that run's leftovers (an audit store, say) under it.
inline std::string unique_segment(const std::string &tag) {
  static std::atomic<int> n{0};
  static const unsigned run = std::random_device{}();
  char suffix[16];
  std::snprintf(suffix, sizeof suffix, "%08x", run);
  return "sluicetest-" + tag + "-" + std::to_string(getpid()) + "-" + suffix + "-" + std::to_string(n++);
}

inline core::LayoutSpec spec_with(std::vector<core::TierSpec> tiers, uint32_t max_keys = 1024,
                                  uint32_t max_key_bytes = 64) {
  core::LayoutSpec s;
  s.tiers = std::move(tiers);
  s.max_keys = max_keys;
  s.max_key_bytes = max_key_bytes;
  return s;
}

inline core::TierSpec tier(std::string name, uint32_t limit, int64_t window_ms, uint32_t capacity) {
  core::TierSpec t;
  t.name = std::move(name);
  t.limit = limit;
  t.window_ns = window_ms * 1'000'000;
  t.capacity = capacity;
  return t;
}

// Owns a segment pair for the life of a test and removes it afterwards.
struct SegmentGuard {
  std::string name;
  std::unique_ptr<core::Owner> owner;
  explicit SegmentGuard(const std::string &tag, const core::LayoutSpec &spec) : name(unique_segment(tag)) {
    bool created = false;
    std::string detail;
    const core::Status s = core::Owner::create_or_attach(name, spec, true, owner, created, detail);
    EXPECT_EQ(s, core::Status::ok) << detail;
  }
  ~SegmentGuard() { core::Owner::remove(name); }
  std::unique_ptr<core::Ledger> open() const {
    std::unique_ptr<core::Ledger> l;
    std::string detail;
    EXPECT_EQ(core::Ledger::open(name, l, detail), core::Status::ok) << detail;
    return l;
  }
};

// Pages of a mapped shared-memory object that the object holds in memory (mincore
// on a tmpfs mapping reports the object's pages, whoever allocated them).
inline size_t resident_pages(const core::Mapping &m) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE)), pages = (m.size() + page - 1) / page;
  std::vector<unsigned char> in(pages);
  if (mincore(m.base(), m.size(), in.data()) != 0) return SIZE_MAX;
  return size_t(std::count_if(in.begin(), in.end(), [](unsigned char v) { return v & 1; }));
}

// Makes the object allocate every page of a writable mapping, as clients that have
// used a segment for a while have; the bytes keep their values.
inline void allocate_every_page(core::Mapping &m) {
  auto *p = static_cast<unsigned char *>(m.base());
  for (size_t off = 0; off < m.size(); off += size_t(sysconf(_SC_PAGESIZE)))
    std::atomic_ref<unsigned char>(p[off]).fetch_add(0, std::memory_order_relaxed);
}

// Records admissions from many processes into one MAP_SHARED array.
struct Record {
  uint32_t key;
  uint32_t cost;
  int64_t ts_ns;
};
class SharedRecorder {
 public:
  explicit SharedRecorder(size_t capacity) : cap_(capacity) {
    bytes_ = sizeof(std::atomic<uint64_t>) * 3 + capacity * sizeof(Record);
    mem_ = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem_ == MAP_FAILED) std::abort();
  }
  ~SharedRecorder() { munmap(mem_, bytes_); }
  std::atomic<uint64_t> &count() { return static_cast<std::atomic<uint64_t> *>(mem_)[0]; }
  std::atomic<uint64_t> &errors() { return static_cast<std::atomic<uint64_t> *>(mem_)[1]; }
  std::atomic<uint64_t> &flag() { return static_cast<std::atomic<uint64_t> *>(mem_)[2]; }  // e.g. "stop"
  Record *records() { return reinterpret_cast<Record *>(static_cast<std::atomic<uint64_t> *>(mem_) + 3); }
  bool add(uint32_t key, uint32_t cost, int64_t ts) {
    const uint64_t i = count().fetch_add(1);
    if (i >= cap_) return false;
    records()[i] = Record{key, cost, ts};
    return true;
  }
  std::vector<Record> snapshot() {
    const uint64_t n = std::min<uint64_t>(count().load(), cap_);
    return std::vector<Record>(records(), records() + n);
  }

 private:
  size_t cap_;
  size_t bytes_;
  void *mem_;
};

// Invariant 1: in any half-open interval of length W, at most L units per key.
// Returns the number of violating windows (0 is exact) and fills `worst`.
inline uint64_t window_violations(const std::vector<Record> &recs, uint32_t limit, int64_t window_ns,
                                  std::string *worst = nullptr) {
  std::map<uint32_t, std::vector<int64_t>> units;
  for (const Record &r : recs)
    for (uint32_t i = 0; i < r.cost; ++i) units[r.key].push_back(r.ts_ns);
  uint64_t bad = 0;
  for (auto &[key, ts] : units) {
    std::sort(ts.begin(), ts.end());
    for (size_t i = 0; i + limit < ts.size(); ++i) {
      if (ts[i + limit] - ts[i] < window_ns) {
        if (!bad && worst)
          *worst = "key " + std::to_string(key) + ": " + std::to_string(limit + 1) + " units within " +
                   std::to_string(ts[i + limit] - ts[i]) + " ns";
        ++bad;
      }
    }
  }
  return bad;
}

// Runs fn(child_index) in n forked children and waits for them all. Returns the
// number of children that did not exit 0.
template <class Fn>
int run_children(int n, Fn fn) {
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    const pid_t p = fork();
    if (p == 0) {
      int rc = 1;
      try {
        rc = fn(i);
      } catch (...) {
      }
      _exit(rc);
    }
    pids.push_back(p);
  }
  int failed = 0;
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ++failed;
  }
  return failed;
}

}  // namespace sluice::test
