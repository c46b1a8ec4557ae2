#include "start_check.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <utility>
#include <vector>

#include "sluice/core/owner.hpp"
#include "status.hpp"

namespace sluice::daemon {

namespace {

std::string mib(uint64_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", double(bytes) / double(1 << 20));
  return b;
}

// The directory a store at `path` would be made in, or the nearest one that exists
// (the start makes the missing ones): can this process write there?
// (As this process's effective user: AT_EACCESS. WAL mode makes -wal and -shm
// files beside the store, so its directory must be writable too.)
std::string audit_line(const std::string &path, bool &ok) {
  namespace fs = std::filesystem;
  ok = true;
  if (path == ":memory:" || path.rfind("file:", 0) == 0) return "audit store " + path + ": not a file";
  const auto may = [](const fs::path &p, int mode) { return ::faccessat(AT_FDCWD, p.c_str(), mode, AT_EACCESS) == 0; };
  std::error_code ec;
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  if (fs::exists(path, ec)) {
    ok = may(path, R_OK | W_OK) && may(dir, W_OK | X_OK);
    return "audit store " + path + ": exists" +
           (ok ? "" : ", NOT writable by this user (it and its directory must be: WAL files go beside it)");
  }
  while (!fs::exists(dir, ec) && dir != dir.parent_path()) dir = dir.parent_path();
  ok = may(dir, W_OK | X_OK);
  return "audit store " + path + ": not there yet, made at start" +
         (ok ? "" : " (NOT possible: " + dir.string() + " is not writable by this user)");
}

}  // namespace

StartCheck check_start(const Options &opt) {
  using F = Daemon::StartFailure;
  StartCheck c;
  auto line = [&c](const std::string &s) { c.report += s + "\n"; };
  auto fail = [&](F kind, const std::string &why) {
    if (c.failure == F::none) c.failure = kind;
    line("check: FAILED: " + why);
    return c;
  };
  if (!core::valid_segment_name(opt.segment))
    return fail(F::config, "segment name '" + opt.segment + "' is not valid (letters, digits, '_', '-', '.')");
  policy::PolicySpec p;
  try {
    p = opt.policy_path ? policy::load_policy_file(*opt.policy_path) : policy::default_policy();
  } catch (const policy::PolicyError &e) {
    return fail(F::config, e.what());
  }
  line("policy " + (opt.policy_path ? *opt.policy_path : std::string("(built-in)")) + ": valid, " +
       std::to_string(p.tiers.size()) + " tiers, tick " +
       std::to_string(opt.tick_ns ? *opt.tick_ns / 1'000'000 : int64_t(p.tick_ms)) + " ms");
  for (size_t i = 0; i < p.tiers.size(); ++i) {
    const auto &t = p.tiers[i];
    char b[256];
    std::snprintf(b, sizeof b, "  tier %zu '%s': %u per %llu ms (max %u), $%.2f/request%s", i, t.name.c_str(), t.limit,
                  static_cast<unsigned long long>(t.window_ms), t.max_limit, t.revenue_per_request,
                  t.adaptive ? "" : ", fixed");
    line(b);
  }
  std::optional<advisor::AdvisorConfig> adv;
  std::string error;
  if (!advisor_config_of(p, adv, error)) return fail(F::config, error);
  line(adv ? "advisor: " + p.advisor.kind + " at " + p.advisor.url + ", model " + p.advisor.model
           : std::string("advisor: none (the built-in rules)"));

  const core::LayoutSpec layout = layout_of(p);
  line("segment '" + opt.segment + "': max_keys " + std::to_string(p.segment.max_keys) + ", max_key_bytes " +
       std::to_string(p.segment.max_key_bytes) + ", state " + mib(core::state_segment_bytes(layout)) +
       (p.segment.reserve_memory ? " (reserved when made)" : " (pages allocated as touched)"));
  const core::Owner::Preview pv = core::Owner::preview(opt.segment, layout, opt.reset);
  const std::string pair = "/dev/shm/" + opt.segment + ".{state,policy}";
  using Plan = core::Owner::Plan;
  line("pair " + pair + ": " + (pv.plan == Plan::refused ? "a start fails on it: " : "") + pv.detail);
  for (size_t i = 0; i < pv.rows_now.size() && i < p.tiers.size(); ++i)  // an attach's table
    if (pv.rows_now[i].limit != p.tiers[i].limit)
      line("  tier '" + p.tiers[i].name + "': " + std::to_string(pv.rows_now[i].limit) + " per window now, " +
           std::to_string(p.tiers[i].limit) + " in the policy" +
           (p.tiers[i].adaptive && (pv.rows_now[i].flags & core::kTierAdaptive)
                ? " (a start keeps " + std::to_string(pv.rows_now[i].limit) +
                      " only if the audit trail shows the loop or an approval set it)"
                : " (a start publishes the policy's)"));
  if (pv.exists && pv.plan != Plan::refused) {
    Status st;
    std::string why;
    if (read_status(opt.segment, st, why) && st.daemon_state != DaemonState::gone &&
        st.daemon_state != DaemonState::stopped)
      line("sluiced pid " + std::to_string(st.daemon_pid) + " runs on this segment now (" +
           daemon_state_name(st.daemon_state) + "): a start fails (exit 75) until it stops");
  }
  // In the order a start meets them: the first is what it would fail on.
  std::vector<std::pair<F, std::string>> problems;
  // A pair that is replaced is counted as --reset counts it: its room comes back.
  Options replacing = opt;
  replacing.reset = opt.reset || (pv.plan == Plan::create && pv.exists);
  if (!segment_fits(replacing, p, error)) problems.emplace_back(F::environment, error);
  // The lock file and the control socket, as take_segment_lock and the control
  // server judge them: another user's (or a symlink) fails every start.
  const uid_t me = ::geteuid();
  struct stat st {};
  if (const std::string lock = lock_path(opt.segment); ::lstat(lock.c_str(), &st) == 0 &&
                                                       (!S_ISREG(st.st_mode) || st.st_uid != me))
    problems.emplace_back(F::environment,
                          "lock file " + lock +
                              (!S_ISREG(st.st_mode) ? " is not a plain file (a symlink?): remove it"
                                                    : " belongs to uid " + std::to_string(st.st_uid) + ", not to uid " +
                                                          std::to_string(me) + ": remove it (as that user or root)"));
  const std::string sock = control_socket_path(opt.segment);
  if (me != 0 && ::lstat(sock.c_str(), &st) == 0 && st.st_uid != me)
    problems.emplace_back(F::environment, "control socket " + sock + " belongs to uid " + std::to_string(st.st_uid) +
                                              ": this uid cannot replace it (remove it as that user or root)");
  if (sock.size() >= sizeof(sockaddr_un::sun_path))
    problems.emplace_back(F::environment, "the control socket's path " + sock + " is longer than a socket name may be (" +
                                              std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                                              " bytes): use a shorter --segment");
  bool audit_ok = true;
  line(audit_line(audit_db_path(p, opt), audit_ok));
  if (!audit_ok) problems.emplace_back(F::environment, "the audit store cannot be written");
  if (opt.metrics_addr)
    line("metrics: served on " + opt.metrics_addr->host + ":" + std::to_string(opt.metrics_addr->port) +
         " (not bound by --check)");
  if (pv.plan == Plan::refused) problems.emplace_back(F::environment, pv.detail);
  if (pv.plan == Plan::mismatch) problems.emplace_back(F::config, pv.detail);
  if (!problems.empty()) {
    for (size_t i = 1; i < problems.size(); ++i) line("also: " + problems[i].second);
    return fail(problems[0].first, problems[0].second);
  }
  line(std::string("check: OK, a start would go ahead") +
       (pv.plan == Plan::attach ? " and keep the pair's keys and counters"
        : pv.exists             ? " and make a new pair (the old one's keys and counters are lost)"
                                : " and make a new pair"));
  return c;
}

}  // namespace sluice::daemon
