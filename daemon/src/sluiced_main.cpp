// sluiced --policy FILE --segment NAME [--reset]: owns one host's segment pair.
#include <signal.h>
#include <poll.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>

#include "daemon.hpp"
#include "start_check.hpp"
#include "sluice/core/clock.hpp"

namespace {

std::atomic<int> g_signal{0};
void on_signal(int sig) { g_signal.store(sig); }

void usage(std::ostream &os) {
  os << "usage: sluiced [--policy FILE] [--segment NAME] [--reset] [--tick-ms N] [--state-dir DIR]\n"
        "               [--metrics-addr [HOST:]PORT] [--log-level LEVEL] [--check] | --print-default-policy\n"
        "  --policy FILE    JSON policy (schema: daemon/policy/policy.fbs); default: built-in tiers\n"
        "  --segment NAME   segment pair /dev/shm/NAME.{state,policy}; default $SLUICE_SEGMENT or 'sluice'\n"
        "  --reset          remove an existing segment pair first (wipes keys and counters)\n"
        "  --tick-ms N      policy/GC tick (default: the policy's tick_ms, 1000)\n"
        "  --state-dir DIR  audit store directory (default $SLUICE_STATE_DIR or /var/lib/sluice)\n"
        "  --metrics-addr [HOST:]PORT  serve Prometheus /metrics (HOST default 127.0.0.1; PORT 0: any free port)\n"
        "  --log-level LEVEL  trace, debug, info (default), warning, error, critical or off\n"
        "  --check          say what a start with these options would do, and exit without doing it:\n"
        "                   no lock, no segment made or changed, no audit store opened, no port bound\n"
        "                   (exit 0: it would start; 78 or 1: it would fail, as below)\n"
        "  --print-default-policy  print the built-in policy as JSON and exit\n"
        "exit status: 0 stopped by a signal; 2 bad arguments; 78 the policy file or a\n"
        "  setting is wrong (fix it: a retry fails the same way); 75 another sluiced owns\n"
        "  the segment (retry later); 1 any other failure, at start or while running\n";
}

// sysexits.h's EX_CONFIG and EX_TEMPFAIL: what a supervisor should not retry
// (systemd's RestartPreventExitStatus=78) and what it may.
int exit_status_for(sluice::daemon::Daemon::StartFailure why) {
  using F = sluice::daemon::Daemon::StartFailure;
  return why == F::config ? 78 : why == F::busy ? 75 : 1;
}

}  // namespace

int main(int argc, char **argv) {
  using namespace sluice;
  daemon::Options opt;
  opt.segment = core::resolve_segment_name(nullptr);
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "sluiced: " << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--policy") opt.policy_path = value();
    else if (a == "--segment") opt.segment = value();
    else if (a == "--reset") opt.reset = true;
    else if (a == "--check") check = true;
    else if (a == "--tick-ms") {
      const std::string v = value();
      char *end = nullptr;
      const long ms = std::strtol(v.c_str(), &end, 10);
      if (!end || *end || ms < 10 || ms > 600000) {
        std::cerr << "sluiced: --tick-ms must be 10..600000, got '" << v << "'\n";
        return 2;
      }
      opt.tick_ns = ms * 1'000'000LL;
    } else if (a == "--state-dir") {
      opt.state_dir = value();
    } else if (a == "--metrics-addr") {
      const std::string v = value();
      metrics::ListenAddress addr;
      std::string why;
      if (!metrics::parse_listen_address(v, addr, why)) {
        std::cerr << "sluiced: --metrics-addr " << v << ": " << why << "\n";
        return 2;
      }
      opt.metrics_addr = addr;
    } else if (a == "--log-level") {
      // from_str maps an unknown name to "off": a typo would silence the daemon.
      const std::string v = value();
      const auto level = spdlog::level::from_str(v);
      if (level == spdlog::level::off && v != "off") {
        std::cerr << "sluiced: --log-level takes one of trace, debug, info, warning, error, critical, off; not '" << v
                  << "'\n";
        return 2;
      }
      spdlog::set_level(level);
    }
    else if (a == "--print-default-policy") {
      std::cout << policy::to_json(policy::default_policy()) << "\n";
      return 0;
    } else if (a == "-h" || a == "--help") {
      usage(std::cout);
      return 0;
    } else {
      std::cerr << "sluiced: unknown argument '" << a << "'\n";
      usage(std::cerr);
      return 2;
    }
  }
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ sluiced[%P] %v");
  if (check) {
    const daemon::StartCheck r = daemon::check_start(opt);
    std::cout << r.report;
    return r.failure == daemon::Daemon::StartFailure::none ? 0 : exit_status_for(r.failure);
  }

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  // A hangup (the terminal of a foreground sluiced closing) stops it cleanly too:
  // its default action would leave a stale heartbeat and the control socket behind.
  sigaction(SIGHUP, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::string error;
  daemon::Daemon::StartFailure why;
  auto d = daemon::Daemon::start(opt, error, &why);
  if (!d) {
    spdlog::error("{}", error);
    return exit_status_for(why);
  }
  for (size_t i = 0; i < d->policy().tiers.size(); ++i) {
    const auto &t = d->policy().tiers[i];
    spdlog::info("tier {} '{}': {} per {} ms (max {}), ${:.2f}/request{}", i, t.name, t.limit, t.window_ms,
                 t.max_limit, t.revenue_per_request, t.adaptive ? "" : ", fixed");
  }
  spdlog::info("ready: segment '{}', pid {}", opt.segment, getpid());
  while (g_signal.load() == 0 && !d->segment_lost() && !d->lock_lost()) {
    const int64_t next = d->do_work(core::mono_ns());
    // Sleep until the next heartbeat/tick or a control request read in full by the
    // control socket's thread, whichever first.
    const int64_t wait_ms = std::clamp<int64_t>((next - core::mono_ns()) / 1'000'000, 1, 100);
    pollfd p{d->control_fd(), POLLIN, 0};
    ::poll(&p, 1, int(wait_ms));
  }
  if (d->segment_lost() || d->lock_lost()) {
    d->stop();
    return 1;
  }
  spdlog::info("signal {} received: stopping (segment kept for clients and the next start)",
               strsignal(g_signal.load()));
  d->stop();
  return 0;
}
