// sluiced's core loop as an object, so tests can run it in-process step by step
// (Aeron's EmbeddedMediaDriver pattern). main() only parses flags and signals.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "advice_turn.hpp"
#include "advisor/async_advisor.hpp"
#include "control.hpp"
#include "loop_state.hpp"
#include "metrics/http_server.hpp"
#include "policy/policy.hpp"
#include "policy_loop/audit_store.hpp"
#include "policy_loop/engine.hpp"
#include "policy_loop/trail_clock.hpp"
#include "sluice/core/owner.hpp"

namespace sluice::daemon {

struct Options {
  std::string segment = "sluice";
  std::optional<std::string> policy_path;  // none: the built-in default policy
  bool reset = false;
  std::optional<int64_t> tick_ns;          // default: the policy's tick_ms
  std::string state_dir;                    // audit db home; default $SLUICE_STATE_DIR or /var/lib/sluice
  int64_t heartbeat_ns = 100'000'000;
  uint32_t gc_slots_per_tick = 1u << 16;  // per tier
  std::optional<metrics::ListenAddress> metrics_addr;  // none: no /metrics
  // The system clock and CLOCK_BOOTTIME as the audit trail reads them (tests step them).
  policy_loop::TrailClock::Reader wall_clock_ms = nullptr, boot_clock_ms = nullptr;
};

using policy::layout_of;  // the segment layout a policy asks for

class Daemon {
 public:
  // Takes the per-segment lock, loads the policy, creates or re-attaches the
  // segments. Returns nullptr with `error` set on any failure.
  // What kind of failure a start was, for sluiced's exit status: a supervisor
  // retries a busy or environment failure, not a config one.
  enum class StartFailure { none, config, busy, environment };
  static std::unique_ptr<Daemon> start(const Options &opt, std::string &error, StartFailure *why = nullptr);
  ~Daemon();

  // One step of work: heartbeat, the control requests already read in full by
  // the control socket's thread, and on each tick the policy loop and a slice of
  // idle-key GC. Returns when it is next due (CLOCK_MONOTONIC ns).
  int64_t do_work(int64_t now_ns);
  // Readable while control requests wait for do_work (-1 after stop()).
  int control_fd() const { return control_ ? control_->fd() : -1; }
  policy_loop::PolicyEngine &engine() { return *engine_; }
  advisor::AsyncAdvisor *llm_advisor() { return advisor_.get(); }
  // Stops /metrics and the control socket, writes the clean-shutdown heartbeat.
  void stop();

  bool created() const { return created_; }
  // The segment was unlinked (or replaced) under the running daemon. It has then
  // been retired, so clients reopen the name; sluiced exits with an error, and its
  // next start makes a new pair that every client moves to.
  bool segment_lost() const { return segment_lost_; }
  // The lock file was removed and another sluiced has taken the name: stop.
  bool lock_lost() const { return lock_lost_; }
  core::Owner &owner() { return *owner_; }
  const policy::PolicySpec &policy() const { return policy_; }
  const core::GcStats &gc_totals() const { return gc_totals_; }
  // What the loop knows now (loop thread only): snapshot, pending, governance, advisor.
  LoopState loop_state();
  // The port /metrics is served on (0: not serving).
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }

 private:
  void keep_audit_store_in_place();  // each tick and at stop: a removed store restored under its name
  Daemon() = default;
  // Before the segment is touched: the audit store, the advisor's config, the
  // control socket, and room in /dev/shm for a pair about to be made.
  bool open_before_attach(std::string &error);
  // The re-attach hook (Owner::AttachHook): keeps the limits the loop or a human
  // set on adaptive tiers, and records every limit the start changes, first.
  bool keep_limits(std::vector<core::TierLimits> &rows, const std::vector<core::TierLimits> &before,
                   int64_t created_ns, std::string &why);
  // After a re-attach, when a later step fails: the table as it was before.
  void restore_table(const std::string &why);
  // After a create: the trail records the new table (a --reset changes limits too,
  // and the records of the pair before must not speak for this one's table).
  void record_created_table();
  // After the segment: the engine, the advisor's worker and /metrics.
  bool open_services(std::string &error);
  bool start_advisor(std::string &error);
  bool serve_metrics(std::string &error);
  Options opt_;
  policy::PolicySpec policy_;
  std::unique_ptr<core::Owner> owner_;
  std::unique_ptr<policy_loop::AuditStore> store_;
  std::unique_ptr<policy_loop::PolicyEngine> engine_;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<advisor::AsyncAdvisor> advisor_;  // optional LLM advisor, off the tick's thread
  std::optional<advisor::AdvisorConfig> advisor_cfg_;
  // The advisor's last valid answer, followed while its next request is in flight.
  std::optional<HeldAdvice> held_advice_;
  int64_t tick_ns_ = 1'000'000'000;
  int lock_fd_ = -1;
  bool created_ = false;
  bool stopped_ = false;
  bool segment_lost_ = false;
  bool lock_lost_ = false;
  std::atomic<bool> ready_{false};  // started in full: /metrics renders the segment
  bool retake_lock();
  int64_t next_tick_ns_ = 0;
  core::GcStats gc_totals_;
  uint64_t audit_pruned_ = 0;
  void prune_audit();  // one batch of audit_retention_days, on the tick
  // How far the system clock was from the trail's when a step was last logged.
  static constexpr int64_t kClockStepMs = 5'000;
  int64_t clock_step_logged_ms_ = 0;
  void note_clock_step();
  std::vector<uint64_t> admitted_at_start_;  // per tier (see LoopState)
  SharedLoopState shared_loop_;  // loop_state() as of the last tick or command, for the metrics thread
  std::unique_ptr<metrics::MetricsServer> metrics_;  // stopped in stop(), before what it reads
};

// /dev/shm/<segment>.lock: one daemon per segment (flock, dropped by the kernel
// when the holder dies).
inline std::string lock_path(const std::string &segment) { return "/dev/shm/" + segment + ".lock"; }
// The lock's fd, or -1 with `error`; *held: another process holds the lock.
int take_segment_lock(const std::string &segment, std::string &error, int attempt = 0, bool *held = nullptr);
// Is the file `fd` locks still the one under the lock name? Removed by hand, it lets
// another sluiced start on the same segment.
bool lock_still_named(const std::string &segment, int fd);
// Where the audit store lives: the policy's audit_db, else <state_dir>/<segment>.db.
std::string audit_db_path(const policy::PolicySpec &p, const Options &opt);
// The policy's advisor section as the LLM advisor's config (none: "kind": "none"),
// or false with `error` (a URL or model the advisor would refuse).
bool advisor_config_of(const policy::PolicySpec &p, std::optional<advisor::AdvisorConfig> &out, std::string &error);
// Whether the state segment a start with `opt` would make fits /dev/shm's free
// room (a re-attach makes none), or false with `error`.
bool segment_fits(const Options &opt, const policy::PolicySpec &p, std::string &error);

}  // namespace sluice::daemon
