// Fault points for the crash tests: a build with SLUICE_FAULT_POINTS kills its own
// process (SIGKILL) at the N-th point reached, so a test can stop a client between
// any two shared-memory steps of acquire. Production builds compile them away.
#pragma once

#ifdef SLUICE_FAULT_POINTS
namespace sluice::core {
void fault_point() noexcept;
// Arms the countdown: the n-th fault point reached kills the process. 0 disarms.
void arm_fault(long n) noexcept;
// Calls fn(k) at the k-th fault point reached (1-based, counted since the hook was
// set), to run other clients' steps "between two instructions" of this one.
void set_fault_hook(void (*fn)(long k)) noexcept;
long fault_points_passed() noexcept;
}  // namespace sluice::core
#define SLUICE_FAULT() ::sluice::core::fault_point()
#else
#define SLUICE_FAULT() ((void)0)
#endif
