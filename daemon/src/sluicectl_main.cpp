// sluicectl [--segment NAME] COMMAND
//   status [--json]                     tiers, limits, keys, counters (reads shared memory);
//                                       exits 0 if the daemon is alive, 3 if not (LSB), 1 no segment
//   pending [--json]                    approvals waiting for a human
//   approve ID                          publish a pending change (approvers only)
//   reject ID --reason TEXT             drop it, with a reason (approvers only)
//   audit [--since DURATION] [--json]   the decision trail (DURATION: 30s, 15m, 2h, 7d)
//   snapshot                            the policy loop's latest view (JSON)
//   top [--interval-ms N] [--banner FILE] [--once]
//                                       a live terminal view (q quits); --once: one plain frame
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <fstream>
#include <iostream>
#include <vector>

#include "commands.hpp"
#include "control.hpp"
#include "policy_loop/audit_store.hpp"
#include "status.hpp"
#include "top.hpp"

namespace {

int usage(std::ostream &os, int rc) {
  os << "usage: sluicectl [--segment NAME] status [--json]   (exit 0 daemon alive, 3 not, 1 no segment)\n"
        "       sluicectl [--segment NAME] pending [--json]\n"
        "       sluicectl [--segment NAME] approve ID\n"
        "       sluicectl [--segment NAME] reject ID --reason TEXT\n"
        "       sluicectl [--segment NAME] audit [--since DURATION] [--json]\n"
        "       sluicectl [--segment NAME] snapshot          (the policy loop's view, JSON)\n"
        "       sluicectl [--segment NAME] top [--interval-ms N] [--banner FILE] [--once]\n"
        "                                  (live view, q quits; N: 100..60000, default 1000;\n"
        "                                   --banner: show FILE's first line; --once: one plain frame)\n";
  return rc;
}

// "90s", "15m", "2h", "7d" -> milliseconds: digits, then one unit, nothing else
// (strtoll would take "+5s", " 5s" and let a huge count wrap). False with `error`.
bool parse_duration_ms(const std::string &s, int64_t &ms, std::string &error) {
  const size_t digits = s.find_first_not_of("0123456789");
  if (s.empty() || digits == 0 || digits == std::string::npos || digits + 1 != s.size() ||
      std::string_view("smhd").find(s.back()) == std::string_view::npos) {
    error = "--since takes a duration like 30s, 15m, 2h or 7d (digits, then s, m, h or d), not '" + s + "'";
    return false;
  }
  const int64_t unit = s.back() == 's' ? 1000 : s.back() == 'm' ? 60'000 : s.back() == 'h' ? 3'600'000 : 86'400'000;
  uint64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + digits, v);
  if (ec != std::errc() || end != s.data() + digits || v > uint64_t(INT64_MAX / unit)) {
    error = "--since " + s + " is too long (at most " + std::to_string(INT64_MAX / unit) + s.back() + ")";
    return false;
  }
  ms = int64_t(v) * unit;
  return true;
}

// Approval ids are 8 hex digits; anything else (a space, a newline) would change
// the request line sent to sluiced.
bool valid_approval_id(const std::string &id) {
  if (id.empty() || id.size() > 32) return false;
  for (unsigned char c : id)
    if (!std::isalnum(c)) return false;
  return true;
}

// Whether `pid` is stopped (state T or t in /proc/PID/stat).
bool process_stopped(int64_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(f, stat);
  const size_t close = stat.rfind(')');  // after the command name, which may hold anything
  return close != std::string::npos && close + 2 < stat.size() &&
         (stat[close + 2] == 'T' || stat[close + 2] == 't');
}

// `fallback`: sent instead if sluiced does not know the command (an older one).
int remote(const std::string &segment, const std::string &line, const std::string &fallback = "") {
  std::string reply, error;
  // A daemon that is stopped (SIGSTOP, a debugger), or whose heartbeat is older
  // than the request's timeout, runs no command: say so now, not after that
  // timeout. One merely slow (a tick waiting on the disk) is asked as before.
  sluice::daemon::Status st;
  if (sluice::daemon::read_status(segment, st, error) && st.daemon_state == sluice::daemon::DaemonState::hung) {
    const bool stopped = process_stopped(st.daemon_pid);
    if (stopped || st.heartbeat_age_ns >= int64_t(sluice::daemon::kRequestTimeoutMs) * 1'000'000) {
      std::cerr << "sluicectl: sluiced pid " << st.daemon_pid << " is NOT answering: "
                << (stopped ? "it is stopped (by a signal or a debugger)" : "it is stuck") << ", its heartbeat "
                << st.heartbeat_age_ns / 1'000'000'000 << " s old; nothing was sent\n";
      return 1;
    }
  }
  error.clear();
  bool sent = sluice::daemon::daemon_request(segment, line, reply, error);
  if (sent && !fallback.empty() && reply.rfind("error\nunknown command", 0) == 0)
    sent = sluice::daemon::daemon_request(segment, fallback, reply, error);
  if (!sent) {
    std::cerr << "sluicectl: " << error << "\n";
    return 1;
  }
  const auto nl = reply.find('\n');
  const std::string head = reply.substr(0, nl), body = nl == std::string::npos ? "" : reply.substr(nl + 1);
  if (head == "ok") {
    std::cout << body;
    return 0;
  }
  std::cerr << "sluicectl: " << body;
  return 3;  // refused or failed by sluiced
}

}  // namespace

int main(int argc, char **argv) {
  using namespace sluice;
  std::string segment = core::resolve_segment_name(nullptr);
  std::vector<std::string> args;
  bool json = false;
  std::string reason, since, interval, banner;
  bool once = false, top_option = false, interval_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "sluicectl: " << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--segment") segment = value();
    else if (a == "--json") json = true;
    else if (a == "--reason") reason = value();
    else if (a == "--since") since = value();
    else if (a == "--interval-ms") interval = value(), top_option = interval_given = true;
    else if (a == "--banner") banner = value(), top_option = true;
    else if (a == "--once") once = true, top_option = true;
    else if (a == "-h" || a == "--help") return usage(std::cout, 0);
    else if (!a.empty() && a[0] == '-') {
      std::cerr << "sluicectl: unknown option '" << a << "'\n";
      return usage(std::cerr, 2);
    } else args.push_back(a);
  }
  if (args.empty()) return usage(std::cerr, 2);
  const std::string &cmd = args[0];
  if (top_option && cmd != "top") {
    std::cerr << "sluicectl: --interval-ms, --banner and --once are options of 'top'\n";
    return usage(std::cerr, 2);
  }
  if (cmd == "top" && args.size() == 1) {
    daemon::TopOptions opt;
    opt.segment = segment;
    opt.banner_file = banner;
    opt.once = once;
    if (interval_given) {
      char *end = nullptr;
      errno = 0;
      const long v = std::strtol(interval.c_str(), &end, 10);
      if (errno != 0 || end == interval.c_str() || *end != '\0' || v < 100 || v > 60000) {
        std::cerr << "sluicectl: --interval-ms takes a whole number of milliseconds from 100 to 60000, not '"
                  << interval << "'\n";
        return 2;
      }
      opt.interval_ms = int(v);
    }
    return daemon::run_top(opt);
  }
  if (cmd == "status" && args.size() == 1) {
    daemon::Status st;
    std::string error;
    if (!daemon::read_status(segment, st, error)) {
      std::cerr << "sluicectl: segment '" << segment << "': " << error << "\n";
      return 1;
    }
    std::cout << (json ? daemon::render_status_json(st) + "\n" : daemon::render_status_text(st));
    return daemon::status_exit_code(st);
  }
  if (cmd == "snapshot" && args.size() == 1) return remote(segment, "snapshot");
  if (cmd == "pending" && args.size() == 1) return remote(segment, std::string("pending ") + (json ? "json" : "text"));
  if ((cmd == "approve" || cmd == "reject") && args.size() == 2 && !valid_approval_id(args[1])) {
    std::cerr << "sluicectl: " << cmd << ": an approval id is 1..32 letters or digits (as 'sluicectl pending' shows "
              << "them), not " << daemon::json_escape(args[1].substr(0, 64)) << "\n";
    return 2;
  }
  if (cmd == "approve" && args.size() == 2) return remote(segment, "approve " + args[1]);
  if (cmd == "reject" && args.size() == 2) {
    if (reason.empty()) {
      std::cerr << "sluicectl: reject needs --reason TEXT\n";
      return 2;
    }
    // The request is one line: a control character (a newline) would end or
    // garble it. Never echoed raw.
    for (size_t k = 0; k < reason.size(); ++k) {
      const auto c = static_cast<unsigned char>(reason[k]);
      if (c < 0x20 || c == 0x7f) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02X", c);
        std::cerr << "sluicectl: --reason: byte " << k << " (" << hex
                  << ") is a control character (a newline, tab, ...); give the reason on one line\n";
        return 2;
      }
    }
    if (reason.find_first_not_of(' ') == std::string::npos) {
      std::cerr << "sluicectl: reject needs a --reason that is not blank\n";
      return 2;
    }
    // sluiced refuses a longer request line rather than cut it (and the reason) short.
    const std::string line = "reject " + args[1] + " " + reason;
    const size_t max_line = daemon::ControlLimits{}.max_line;
    if (line.size() > max_line) {
      std::cerr << "sluicectl: --reason is " << reason.size() << " bytes; at most "
                << max_line - (line.size() - reason.size()) << " fit (a request line is at most " << max_line
                << " bytes)\n";
      return 2;
    }
    return remote(segment, line);
  }
  if (cmd == "audit" && args.size() == 1) {
    // The daemon counts the duration back on the trail's clock, which does not
    // step with the system clock (trail_clock.hpp).
    const std::string fmt = json ? " json" : " text";
    if (since.empty()) return remote(segment, "audit 0" + fmt);
    int64_t ms = 0;
    std::string error;
    if (!parse_duration_ms(since, ms, error)) {
      std::cerr << "sluicectl: " << error << "\n";
      return 2;
    }
    // An older sluiced: counted back on this process's system clock, as it did.
    const int64_t now = sluice::policy_loop::unix_ms_now();
    return remote(segment, "audit-ago " + std::to_string(ms) + fmt,
                  "audit " + std::to_string(ms < now ? now - ms : 0) + fmt);
  }
  std::cerr << "sluicectl: unknown command or wrong arguments: '" << cmd << "'\n";
  return usage(std::cerr, 2);
}
