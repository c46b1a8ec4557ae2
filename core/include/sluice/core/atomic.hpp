// Atomics that live in shared memory must be lock-free, or a client dying inside a
// libatomic fallback lock could wedge every other process. This wrapper refuses to
// compile otherwise (iceoryx does the same).
#pragma once
#include <atomic>
#include <cstdint>
#include <type_traits>

namespace sluice::core {

template <class T>
struct ShmAtomic : std::atomic<T> {
  static_assert(std::atomic<T>::is_always_lock_free, "shared-memory atomics must be lock-free");
  static_assert(sizeof(std::atomic<T>) == sizeof(T), "atomic must have the layout of its value");
  using std::atomic<T>::atomic;
  using std::atomic<T>::operator=;
};

using AtomicU64 = ShmAtomic<uint64_t>;
using AtomicI64 = ShmAtomic<int64_t>;
using AtomicU32 = ShmAtomic<uint32_t>;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace sluice::core
