// The time the audit trail and governance keep: Unix milliseconds that never step
// (invariant 7).
//
// A step of the system clock (`date -s`, a VM resumed from an old snapshot, NTP
// fixing a clock that was off) would otherwise expire every open approval at once,
// or keep one open for a day; empty the approval ratio's window, so raises add up
// past it unasked; make retention delete the trail; and reorder `sluicectl audit`.
// So within one boot the trail's time is the system clock as read when the boot's
// first sluiced started, advanced by CLOCK_BOOTTIME (which counts suspends and
// never steps; the two run at the same NTP-disciplined rate, so without a step
// they agree). The anchor is kept in the audit store: a restart, or a step while
// sluiced was stopped, changes nothing. A new boot anchors again at the system
// clock, or just after the trail's newest record if that is up to a day later.
//
// Every record also keeps the system clock's reading (wall_ms): what
// `sluicectl audit` shows.
#pragma once
#include <cstdint>
#include <string>

namespace sluice::policy_loop {

class TrailClock {
 public:
  using Reader = int64_t (*)();  // milliseconds
  // The system clock and CLOCK_BOOTTIME, or the given readers (tests).
  explicit TrailClock(Reader wall = nullptr, Reader boot = nullptr);

  // Continues an anchor made in this boot, else anchors at the system clock, or at
  // `newest_ms` + 1 if that is later by less than kMaxCarryMs (the trail's time
  // does not go back across a reboot with the system clock a little behind).
  static constexpr int64_t kMaxCarryMs = 86'400'000;
  void anchor(const std::string &anchor_boot_id, int64_t anchor_ms, int64_t anchor_boot_ms,
              const std::string &boot_id, int64_t newest_ms);
  bool anchored() const { return anchored_; }
  int64_t anchor_ms() const { return anchor_ms_; }
  int64_t anchor_boot_ms() const { return anchor_boot_ms_; }

  int64_t now() const;       // trail time (anchors at the system clock if not anchored yet)
  int64_t wall_now() const;  // the system clock
  int64_t boot_now() const;  // CLOCK_BOOTTIME

 private:
  Reader wall_, boot_;
  mutable bool anchored_ = false;
  mutable int64_t anchor_ms_ = 0, anchor_boot_ms_ = 0;
};

int64_t boot_ms_now();  // CLOCK_BOOTTIME
std::string boot_id();  // /proc/sys/kernel/random/boot_id, "" if it cannot be read

}  // namespace sluice::policy_loop
