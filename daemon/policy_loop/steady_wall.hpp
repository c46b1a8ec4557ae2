// Wall-clock time for a decision that a step of the system clock must not hurry
// (invariant 7). Retention deletes audit records older than N days by their wall
// time; a forward step (`date -s`, a VM resumed from an old snapshot and then
// corrected, NTP fixing a clock that was behind) would make every record look old
// at once, and a few ticks would delete the trail.
//
// now() is min(wall now, anchor wall + CLOCK_BOOTTIME elapsed since the anchor),
// the way a monotonic clock bounds a wall one:
// - a forward jump is held back for the life of the object (time then goes on at
//   the boot clock's rate), so records are kept longer, never deleted early;
// - a backward step, and a forward run of at most kFollowMs between two reads
//   (NTP's slew, a clock read late), are followed: the anchor moves to the wall.
// CLOCK_BOOTTIME counts a suspend, so a host that sleeps a week ages its records.
#pragma once
#include <cstdint>

namespace sluice::policy_loop {

class SteadyWall {
 public:
  static constexpr int64_t kFollowMs = 5'000;
  using Reader = int64_t (*)();  // milliseconds
  // Reads the system clock and CLOCK_BOOTTIME, or the given readers (tests).
  explicit SteadyWall(Reader wall = nullptr, Reader boot = nullptr);

  int64_t now();
  // The same from explicit readings.
  int64_t at(int64_t wall_ms, int64_t boot_ms);
  // How far ahead of now() the wall clock read last time (0 unless held back).
  int64_t held_back_ms() const { return held_back_ms_; }

 private:
  Reader wall_, boot_;
  int64_t anchor_wall_ = 0, anchor_boot_ = 0;
  bool anchored_ = false;
  int64_t held_back_ms_ = 0;
};

int64_t boot_ms_now();  // CLOCK_BOOTTIME

}  // namespace sluice::policy_loop
