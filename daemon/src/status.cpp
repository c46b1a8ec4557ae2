#include "status.hpp"

#include <signal.h>

#include <cerrno>
#include <cstdio>

#include "sluice/core/clock.hpp"
#include "sluice/core/tsc_clock.hpp"

namespace sluice::daemon {

Status status_of(const core::StateHeader &h, const core::PolicyHeader &p, const core::Geometry &g,
                 const std::string &segment) {
  using namespace core;
  Status out;
  out.segment = segment;
  out.daemon_pid = h.daemon_pid.load();
  const int64_t hb = h.heartbeat_ns.load();
  out.heartbeat_age_ns = hb == kHeartbeatStopped ? -1 : elapsed_since(mono_ns(), hb);  // client-writable
  const bool pid_lives = out.daemon_pid > 0 && (kill(pid_t(out.daemon_pid), 0) == 0 || errno == EPERM);
  if (hb == kHeartbeatStopped) out.daemon_state = DaemonState::stopped;
  else if (!pid_lives) out.daemon_state = DaemonState::gone;
  else if (out.heartbeat_age_ns >= 3'000'000'000LL) out.daemon_state = DaemonState::hung;
  else out.daemon_state = DaemonState::alive;
  out.daemon_alive = out.daemon_state == DaemonState::alive;
  out.daemon_starts = h.daemon_starts.load();
  out.keys_reclaimed = h.keys_reclaimed.load();
  out.segment_bytes = h.segment_bytes;
  const TscClock clock(&p.clock);
  out.clock_tsc = clock.uses_tsc();
  out.clock_offset_ns = out.clock_tsc ? offset_from_monotonic(clock) : 0;
  out.shm_huge = shm_huge_mode();
  for (uint32_t i = 0; i < g.tier_count; ++i) {
    TierStatus t;
    TierLimits lim;
    read_tier(p, i, lim);
    out.policy_generation = lim.generation & ~kGenerationRetired;
    out.retired = core::retired(lim.generation);
    t.name = g.tiers[i].name;
    t.limit = lim.limit;
    t.capacity = g.tiers[i].capacity;
    t.window_ns = lim.window_ns;
    t.revenue_per_request = double(lim.revenue_micros) / 1e6;
    t.adaptive = lim.flags & kTierAdaptive;
    const TierView v = TierView::of(const_cast<StateHeader *>(&h), g, i);  // only read here
    t.keys = count_live(v);
    t.key_slots = v.slots;
    t.counters = sum_counters(h, i);
    out.tiers.push_back(t);
  }
  return out;
}

bool read_status(const std::string &segment, Status &out, std::string &error) {
  using namespace core;
  Mapping state, policy;
  if (!valid_segment_name(segment)) {
    error = "segment name '" + segment + "' is not valid";
    return false;
  }
  core::Status st = Mapping::open(state_segment_name(segment), false, state, error);
  if (st == core::Status::ok) st = validate_state(state, 1000, error);
  if (st == core::Status::ok) st = Mapping::open(policy_segment_name(segment), false, policy, error);
  if (st == core::Status::ok) st = validate_policy(policy, 1000, error);
  if (st != core::Status::ok) {
    error = std::string(status_message(st)) + " (" + error + ")";
    return false;
  }
  Geometry g;  // a copy: the state may change under us
  if (st = read_geometry(state, g, error); st != core::Status::ok) {
    error = std::string(status_message(st)) + " (" + error + ")";
    return false;
  }
  out = status_of(*static_cast<const StateHeader *>(state.base()), *static_cast<const PolicyHeader *>(policy.base()),
                  g, segment);
  return true;
}

const char *daemon_state_name(DaemonState s) {
  switch (s) {
    case DaemonState::alive: return "alive";
    case DaemonState::stopped: return "stopped";
    case DaemonState::gone: return "gone";
    case DaemonState::hung: return "not_answering";
  }
  return "gone";
}

int status_exit_code(const Status &s) { return s.daemon_alive ? 0 : 3; }

static const char *daemon_state_text(DaemonState s) {
  switch (s) {
    case DaemonState::alive: return "daemon alive";
    case DaemonState::stopped: return "daemon NOT running (stopped)";
    case DaemonState::gone: return "daemon NOT running (its pid is gone: killed or crashed)";
    case DaemonState::hung: return "daemon NOT answering (its pid lives, the heartbeat is stale: stopped or stuck)";
  }
  return "";
}

std::string render_status_text(const Status &s) {
  std::string o;
  char line[512];
  std::snprintf(line, sizeof line, "segment %s%s: %s, daemon pid %lld, %s, policy generation %llu\n",
                s.segment.c_str(), s.retired ? " (RETIRED: clients reopen the name)" : "",
                daemon_state_text(s.daemon_state), (long long)s.daemon_pid,
                s.heartbeat_age_ns < 0 ? "stopped cleanly"
                                       : ("heartbeat " + std::to_string(s.heartbeat_age_ns / 1'000'000) + " ms ago").c_str(),
                (unsigned long long)s.policy_generation);
  o += line;
  std::snprintf(line, sizeof line, "%-12s %7s %8s %6s %8s %9s %10s %10s %8s %8s %12s\n", "tier", "limit", "window",
                "max", "$/req", "keys", "admitted", "denied", "cost>lim", "closed", "adm x $/req");
  o += line;
  // Every admission since the segment was made at today's price: not the
  // revenue /metrics counts (from this sluiced's start), hence not "revenue".
  for (const TierStatus &t : s.tiers) {
    const double revenue = double(t.counters.admitted) * t.revenue_per_request;
    std::snprintf(line, sizeof line, "%-12s %7u %7.3fs %6u %8.2f %9llu %10llu %10llu %8llu %8llu %12.2f\n",
                  t.name.c_str(), t.limit, double(t.window_ns) / 1e9, t.capacity, t.revenue_per_request,
                  (unsigned long long)t.keys, (unsigned long long)t.counters.admitted,
                  (unsigned long long)t.counters.denied_window, (unsigned long long)t.counters.denied_cost,
                  (unsigned long long)t.counters.denied_closed, revenue);
    o += line;
  }
  const bool huge = core::shm_huge_pages_allowed(s.shm_huge);
  std::snprintf(line, sizeof line, "daemon starts %llu, idle keys reclaimed %llu, segment %.1f MiB, clock %s, pages %s\n",
                (unsigned long long)s.daemon_starts, (unsigned long long)s.keys_reclaimed,
                double(s.segment_bytes) / (1 << 20),
                s.clock_tsc ? ("tsc (" + std::to_string(s.clock_offset_ns / 1000) + " us from CLOCK_MONOTONIC)").c_str()
                            : "clock_gettime",
                huge ? ("huge (/dev/shm huge=" + s.shm_huge + ")").c_str()
                     : ("4 KiB (/dev/shm huge=" + s.shm_huge + "; remount it huge=advise for huge pages)").c_str());
  o += line;
  return o;
}

static std::string json_str(const std::string &v) {
  std::string o = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += c;
    }
  }
  return o + "\"";
}

std::string render_status_json(const Status &s) {
  std::string o = "{\"segment\":" + json_str(s.segment) + ",\"daemon_pid\":" + std::to_string(s.daemon_pid) +
                  ",\"daemon_alive\":" + (s.daemon_alive ? "true" : "false") +
                  ",\"daemon_state\":\"" + daemon_state_name(s.daemon_state) + "\"" +
                  ",\"heartbeat_age_ns\":" + std::to_string(s.heartbeat_age_ns) +
                  ",\"policy_generation\":" + std::to_string(s.policy_generation) + ",\"retired\":" + (s.retired ? "true" : "false") +
                  ",\"daemon_starts\":" + std::to_string(s.daemon_starts) +
                  ",\"keys_reclaimed\":" + std::to_string(s.keys_reclaimed) +
                  ",\"clock\":" + (s.clock_tsc ? "\"tsc\"" : "\"clock_gettime\"") +
                  ",\"clock_offset_ns\":" + std::to_string(s.clock_offset_ns) +
                  ",\"shm_huge\":" + json_str(s.shm_huge) + ",\"tiers\":[";
  for (size_t i = 0; i < s.tiers.size(); ++i) {
    const TierStatus &t = s.tiers[i];
    char rev[64];
    std::snprintf(rev, sizeof rev, "%.6f", t.revenue_per_request);
    o += (i ? "," : "") + std::string("{\"name\":") + json_str(t.name) + ",\"limit\":" + std::to_string(t.limit) +
         ",\"max_limit\":" + std::to_string(t.capacity) + ",\"window_ns\":" + std::to_string(t.window_ns) +
         ",\"revenue_per_request\":" + rev + ",\"adaptive\":" + (t.adaptive ? "true" : "false") +
         ",\"keys\":" + std::to_string(t.keys) + ",\"key_slots\":" + std::to_string(t.key_slots) +
         ",\"admitted\":" + std::to_string(t.counters.admitted) +
         ",\"denied_window\":" + std::to_string(t.counters.denied_window) +
         ",\"denied_cost\":" + std::to_string(t.counters.denied_cost) +
         ",\"denied_closed\":" + std::to_string(t.counters.denied_closed) +
         ",\"cost_units\":" + std::to_string(t.counters.cost_units) + "}";
  }
  return o + "]}";
}

}  // namespace sluice::daemon
