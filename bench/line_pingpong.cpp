// line_pingpong: what moving one cache line between the two CPUs costs right now,
// for reading bench_sluice's shared-key workload (e).
//
// Two processes on one shared key must move the key's lines between CPUs for
// every admission one of them makes after the other. So the line's transfer time
// bounds what any exact shared counter can do, whatever its code. This measures
// it, with none of Sluice's code, in two ways, each in its own forked pair of
// processes pinned to CPU 0 and CPU 1 (as bench_sluice --pin runs e):
//   handoff   - the processes take turns writing one word (each waits for the
//               other's write): ns per one-way transfer.
//   contended - both CAS-increment one word as fast as they can for 0.5 s:
//               increments per second together (an upper bound for e's rate).
//
//   line_pingpong [rounds]     prints each measure `rounds` times (default 5), alternating
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

struct alignas(64) Shared {
  std::atomic<uint64_t> word{0};
  char pad[56];
  std::atomic<uint32_t> go{0};
  std::atomic<uint32_t> ready{0};
  std::atomic<uint64_t> done[2] = {0, 0};  // per-process results
};

void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)sched_setaffinity(0, sizeof set, &set);
}

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Pins this child to CPU `me` and spins until the parent says go (both are ready).
void start_together(Shared *s, int me) {
  pin(me);
  s->ready.fetch_add(1);
  while (s->go.load() == 0) {
  }
}

constexpr uint64_t kHandoffs = 2'000'000;  // bounded in count...
constexpr double kMaxSeconds = 2.0;        // ...and in time

// Process `me` (0 or 1) writes when the word's parity is its own.
void handoff_child(Shared *s, int me) {
  start_together(s, me);
  const double t0 = now_s();
  uint64_t n = 0;
  for (uint64_t v = uint64_t(me); v < kHandoffs; v += 2) {
    while (s->word.load(std::memory_order_acquire) != v) {
      if ((++n & 0xFFFFF) == 0 && now_s() - t0 > kMaxSeconds) _exit(0);
    }
    s->word.store(v + 1, std::memory_order_release);
  }
  _exit(0);
}

void contended_child(Shared *s, int me) {
  start_together(s, me);
  const double t0 = now_s();
  uint64_t mine = 0;
  for (;;) {
    for (int i = 0; i < 1024; ++i) {
      uint64_t v = s->word.load(std::memory_order_relaxed);
      while (!s->word.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) {
      }
      ++mine;
    }
    if (now_s() - t0 > 0.5) break;
  }
  s->done[me].store(mine);
  _exit(0);
}

// Runs one measure in a fresh pair; returns seconds from go to both exited.
double run_pair(Shared *s, void (*child)(Shared *, int)) {
  s->word.store(0), s->go.store(0), s->ready.store(0), s->done[0].store(0), s->done[1].store(0);
  pid_t pids[2];
  for (int i = 0; i < 2; ++i)
    if ((pids[i] = fork()) == 0) child(s, i);
  while (s->ready.load() < 2) {
  }
  const double t0 = now_s();
  s->go.store(1);
  for (pid_t p : pids) waitpid(p, nullptr, 0);
  return now_s() - t0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char **argv) {
  const int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
  void *m = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return 1;
  auto *s = new (m) Shared();
  std::vector<double> handoff_ns, contended_mps;
  std::printf("%-6s %22s %30s\n", "round", "handoff ns (one way)", "contended CAS M/s (together)");
  for (int r = 0; r < rounds; ++r) {
    const double secs = run_pair(s, handoff_child);
    const double h = secs * 1e9 / double(std::max<uint64_t>(1, s->word.load()));
    run_pair(s, contended_child);
    const double c = double(s->done[0].load() + s->done[1].load()) / 0.5 / 1e6;
    handoff_ns.push_back(h);
    contended_mps.push_back(c);
    std::printf("%-6d %22.1f %30.2f\n", r + 1, h, c);
  }
  std::printf("median %22.1f %30.2f\n", median(handoff_ns), median(contended_mps));
}
