#include "sluice/core/fault.hpp"

#ifdef SLUICE_FAULT_POINTS
#include <signal.h>

#include <atomic>

namespace sluice::core {
namespace {
std::atomic<long> g_countdown{0};
std::atomic<long> g_passed{0};
std::atomic<void (*)(long)> g_hook{nullptr};
std::atomic<long> g_hook_count{0};
}  // namespace
void set_fault_hook(void (*fn)(long)) noexcept {
  g_hook_count.store(0);
  g_hook.store(fn);
}
void arm_fault(long n) noexcept { g_countdown.store(n); }
long fault_points_passed() noexcept { return g_passed.load(); }
void fault_point() noexcept {
  g_passed.fetch_add(1);
  if (auto *hook = g_hook.load()) hook(g_hook_count.fetch_add(1) + 1);
  if (g_countdown.load() > 0 && g_countdown.fetch_sub(1) == 1) raise(SIGKILL);
}
}  // namespace sluice::core
#endif
