#include "policy_loop/steady_wall.hpp"

#include <time.h>

#include "policy_loop/audit_store.hpp"  // unix_ms_now

namespace sluice::policy_loop {

int64_t boot_ms_now() {
  timespec ts{};
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

SteadyWall::SteadyWall(Reader wall, Reader boot) : wall_(wall ? wall : unix_ms_now), boot_(boot ? boot : boot_ms_now) {}

int64_t SteadyWall::now() { return at(wall_(), boot_()); }

int64_t SteadyWall::at(int64_t wall_ms, int64_t boot_ms) {
  if (!anchored_) {
    anchored_ = true;
    anchor_wall_ = wall_ms;
    anchor_boot_ = boot_ms;
  }
  const int64_t bound = anchor_wall_ + (boot_ms - anchor_boot_);
  // Behind the bound, or not further ahead of it than a slew or a late read: follow.
  if (wall_ms - bound <= kFollowMs) {
    anchor_wall_ = wall_ms;
    anchor_boot_ = boot_ms;
    held_back_ms_ = 0;
    return wall_ms;
  }
  held_back_ms_ = wall_ms - bound;
  return bound;
}

}  // namespace sluice::policy_loop
