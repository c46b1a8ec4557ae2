// A read-only snapshot of a running (or stopped) Sluice segment pair, for
// `sluicectl status` and the demo's report. Maps both segments read-only.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sluice/core/ledger.hpp"

namespace sluice::daemon {

struct TierStatus {
  std::string name;
  uint32_t limit = 0, capacity = 0;
  int64_t window_ns = 0;
  double revenue_per_request = 0;
  bool adaptive = false;
  uint64_t keys = 0, key_slots = 0;
  core::TierCounters counters;
};

// What the segment says of its daemon. `hung`: its pid lives but the heartbeat
// is stale (SIGSTOPped, a stuck tick, or a pid reused since it died).
enum class DaemonState { alive, stopped, gone, hung };
const char *daemon_state_name(DaemonState s);  // "alive", "stopped", "gone", "not_answering"

struct Status {
  std::string segment;
  int64_t daemon_pid = 0;
  int64_t heartbeat_age_ns = -1;  // -1: stopped cleanly
  bool daemon_alive = false;       // state == alive
  DaemonState daemon_state = DaemonState::gone;
  uint64_t policy_generation = 0;  // without the retired bit
  bool retired = false;            // sluiced retired the pair (--reset or its removal): clients reopen
  uint64_t daemon_starts = 0, keys_reclaimed = 0;
  uint64_t segment_bytes = 0;
  bool clock_tsc = false;       // clients read time through the TSC (tsc_clock.hpp)
  int64_t clock_offset_ns = 0;  // that clock minus CLOCK_MONOTONIC, as this process reads it
  std::string shm_huge;         // /dev/shm's huge= mount option (core::shm_huge_mode)
  std::vector<TierStatus> tiers;
};

// Reads a mapped pair (the daemon's own, or read_status's read-only one).
// `geometry`: the layout as validated and copied once (read_geometry, or the owner's).
Status status_of(const core::StateHeader &state, const core::PolicyHeader &policy, const core::Geometry &geometry,
                 const std::string &segment);
// Returns false with `error` if the segment cannot be opened or validated.
bool read_status(const std::string &segment, Status &out, std::string &error);
std::string render_status_text(const Status &s);
std::string render_status_json(const Status &s);
// sluicectl status's exit code, LSB-style: 0 alive, 3 otherwise (stopped, gone,
// not answering); the whole status is printed either way.
int status_exit_code(const Status &s);

}  // namespace sluice::daemon
