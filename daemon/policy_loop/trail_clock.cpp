#include "policy_loop/trail_clock.hpp"

#include <time.h>

#include <algorithm>
#include <fstream>

#include "policy_loop/audit_store.hpp"  // unix_ms_now

namespace sluice::policy_loop {

int64_t boot_ms_now() {
  timespec ts{};
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

std::string boot_id() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(f, id);
  return id;
}

TrailClock::TrailClock(Reader wall, Reader boot) : wall_(wall ? wall : unix_ms_now), boot_(boot ? boot : boot_ms_now) {}

void TrailClock::anchor(const std::string &anchor_boot_id, int64_t anchor_ms, int64_t anchor_boot_ms,
                        const std::string &id, int64_t newest_ms) {
  anchored_ = true;
  const int64_t boot = boot_();
  // The same boot (an unreadable boot id never matches): CLOCK_BOOTTIME has run on
  // since the anchor, so the trail goes on from it. A boot time ahead of now is no
  // anchor of this boot's.
  // An anchor that would put now before the newest record is garbled: anchor anew.
  if (!id.empty() && anchor_boot_id == id && anchor_boot_ms <= boot && anchor_ms + (boot - anchor_boot_ms) >= newest_ms) {
    anchor_ms_ = anchor_ms;
    anchor_boot_ms_ = anchor_boot_ms;
    return;
  }
  // After the newest record, so the trail's order is its time's; but a record far
  // ahead of the system clock was stamped by a clock that was wrong (carrying it
  // would make retention take everything before it for old), so not past a day.
  const int64_t wall = wall_();
  anchor_ms_ = newest_ms >= wall && newest_ms - wall < kMaxCarryMs ? newest_ms + 1 : wall;
  anchor_boot_ms_ = boot;
}

int64_t TrailClock::now() const {
  if (!anchored_) {
    anchored_ = true;
    anchor_ms_ = wall_();
    anchor_boot_ms_ = boot_();
  }
  return anchor_ms_ + (boot_() - anchor_boot_ms_);
}

int64_t TrailClock::wall_now() const { return wall_(); }
int64_t TrailClock::boot_now() const { return boot_(); }

}  // namespace sluice::policy_loop
