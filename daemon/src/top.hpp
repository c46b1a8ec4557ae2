// `sluicectl top`: a live terminal view of a segment (shared-memory counters) and
// of the daemon's policy loop (the control socket's `overview` command).
//
// Split in three: parsing the overview reply, rendering one frame's data into
// lines that fit width x height (pure, unit-tested), and the terminal loop
// (termios, poll, ANSI escapes; no ncurses).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "status.hpp"

namespace sluice::daemon {

// The `overview` reply's JSON (see commands.cpp), as far as top shows it.
struct Overview {
  struct Tier {
    std::string name;
    uint32_t limit = 0, baseline = 0, floor = 0, ceiling = 0;
    double offered_rps = 0, admitted_rps = 0, denied_rps = 0, ewma_rps = 0, forecast_rps = 0;
    std::string surge;
  };
  struct Pending {
    std::string id, tier, actor, reason;
    uint32_t old_limit = 0, new_limit = 0;
    double confidence = 0;
    int64_t created_unix_ms = 0, expires_unix_ms = 0;
    std::optional<int64_t> expires_in_ms;  // on the daemon's trail clock (older daemons: absent)
  };
  uint64_t tick = 0;
  std::string host_surge;
  double capacity_rps = 0;
  std::vector<Tier> tiers;
  std::vector<Pending> pending;
  uint64_t requested = 0, approved = 0, rejected = 0, expired = 0, published = 0;
  uint64_t audit_store_errors = 0;  // failed audit writes since start: publishing waits on them
  bool advisor_enabled = false, advisor_busy = false;
  std::string advisor_kind, advisor_model, advisor_last_outcome;
  double advisor_last_latency_ms = 0;
  std::vector<std::pair<std::string, uint64_t>> advisor_outcomes;  // in reply order
};

// Parses the JSON line of an `overview` reply (without the "ok\n" head).
// Missing members keep their defaults; a document that is not an object, or a
// member of the wrong type, is an error.
bool parse_overview(const std::string &json, Overview &out, std::string &error);

// Per-tier rates from the counter deltas between two frames.
struct TierRates {
  bool known = false;  // false on the first frame (or after a counter reset)
  double offered = 0, admitted = 0, denied = 0;
};
std::vector<TierRates> compute_rates(const Status &prev, const Status &cur, double seconds);

// Everything one frame shows.
struct TopFrame {
  std::string segment;
  bool status_ok = false;
  std::string status_error;
  Status status;
  std::vector<TierRates> rates;  // parallel to status.tiers (may be shorter: unknown)
  bool overview_ok = false;
  std::string overview_error;  // why the loop view is unavailable
  bool daemon_unreachable = false;  // the control socket did not answer at all
  Overview overview;
  std::string banner;  // empty: no banner line
  int64_t now_unix_ms = 0;
  int interval_ms = 1000;
  bool interactive = true;  // false (--once): no "q quit" footer
};

// The frame as at most `height` lines of at most `width` visible columns each.
// With `color`, surge levels and the daemon state carry ANSI SGR colours (which
// take no columns); without it the lines are plain text.
std::vector<std::string> render_top(const TopFrame &frame, int width, int height, bool color);

// Visible columns of a rendered line: ANSI escapes take none, a UTF-8 sequence one.
size_t visible_width(const std::string &line);

struct TopOptions {
  std::string segment;
  int interval_ms = 1000;
  std::string banner_file;
  bool once = false;
};

// Collects one frame (status, overview, banner); `prev` (may be null) gives the rates.
TopFrame collect_frame(const TopOptions &opt, const Status *prev, double seconds_since_prev);

// Runs `sluicectl top`; returns the exit code.
int run_top(const TopOptions &opt);

}  // namespace sluice::daemon
