#include "daemon.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <filesystem>

#include "advice_turn.hpp"
#include "commands.hpp"
#include "metrics_page.hpp"
#include "sluice/core/clock.hpp"
#include "sluice/core/tier_table.hpp"
#include "text/utf8.hpp"

namespace sluice::daemon {


bool lock_still_named(const std::string &segment, int fd) {
  struct stat held {}, named {};
  return ::fstat(fd, &held) == 0 && ::lstat(lock_path(segment).c_str(), &named) == 0 && held.st_dev == named.st_dev &&
         held.st_ino == named.st_ino;
}

int take_segment_lock(const std::string &segment, std::string &error, int attempt, bool *held) {
  const std::string path = lock_path(segment);
  // /dev/shm is world-writable: the name may be another user's file (which would
  // let them hold our lock) or a symlink (which O_CREAT would follow). Neither is used.
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0660);
  if (fd < 0) {
    const int err = errno;
    error = "cannot open lock file " + path + ": " + std::strerror(err);
    if (err == ELOOP) error += " (it is a symlink; remove it)";
    struct stat st {};
    if (err == EACCES && ::lstat(path.c_str(), &st) == 0)  // fs.protected_regular refuses even root here
      error = "lock file " + path + " belongs to uid " + std::to_string(st.st_uid) + ", not to this daemon's uid " +
              std::to_string(::geteuid()) + "; remove it (as that user or root) or use another --segment";
    return -1;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid()) {
    error = "lock file " + path + " belongs to uid " + std::to_string(st.st_uid) + ", not to this daemon's uid " +
            std::to_string(::geteuid()) + "; remove it (as that user or root) or use another --segment";
    ::close(fd);
    return -1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char pid[32] = {};
    (void)!pread(fd, pid, sizeof pid - 1, 0);
    ::close(fd);
    if (held) *held = err == EWOULDBLOCK;
    error = err == EWOULDBLOCK ? "another sluiced (pid " + std::string(pid[0] ? pid : "?") +
                                     ") already owns segment '" + segment + "'"
                               : "cannot lock " + path + ": " + std::strerror(err);
    return -1;
  }
  // A lock on a file no longer under the name locks nothing: the holder may have
  // removed it on its way out, or someone did by hand. Take the file named now.
  if (!lock_still_named(segment, fd)) {
    ::close(fd);
    if (attempt == 4) {
      error = "lock file " + path + " kept being replaced while it was locked";
      return -1;
    }
    return take_segment_lock(segment, error, attempt + 1, held);
  }
  const std::string me = std::to_string(getpid());
  (void)!ftruncate(fd, 0);
  (void)!pwrite(fd, me.data(), me.size(), 0);
  return fd;
}

std::string audit_db_path(const policy::PolicySpec &p, const Options &opt) {
  if (!p.audit_db.empty()) return p.audit_db;
  std::string dir = opt.state_dir;
  if (dir.empty()) {
    const char *env = std::getenv("SLUICE_STATE_DIR");
    dir = env && *env ? env : "/var/lib/sluice";
  }
  return dir + "/" + opt.segment + ".db";
}

std::unique_ptr<Daemon> Daemon::start(const Options &opt, std::string &error, StartFailure *why) {
  StartFailure ignored;
  StartFailure &kind = why ? *why : ignored;
  kind = StartFailure::config;
  std::unique_ptr<Daemon> d(new Daemon());
  d->opt_ = opt;
  if (!core::valid_segment_name(opt.segment)) {
    error = "segment name '" + opt.segment + "' is not valid (letters, digits, '_', '-', '.')";
    return nullptr;
  }
  try {
    d->policy_ = opt.policy_path ? policy::load_policy_file(*opt.policy_path) : policy::default_policy();
  } catch (const policy::PolicyError &e) {
    error = e.what();
    return nullptr;
  }
  // The policy's advisor section, checked before anything is touched.
  if (!advisor_config_of(d->policy_, d->advisor_cfg_, error)) return nullptr;
  kind = StartFailure::environment;  // from here on, what the host has or lacks
  bool held = false;
  d->lock_fd_ = take_segment_lock(opt.segment, error, 0, &held);
  if (d->lock_fd_ < 0) {
    if (held) kind = StartFailure::busy;
    return nullptr;
  }
  // Whatever can refuse this start without the segment comes first: a start that
  // fails must leave a running pair's table as it was.
  if (!d->open_before_attach(error)) return nullptr;
  std::string detail;
  const core::Status s = core::Owner::create_or_attach(
      opt.segment, layout_of(d->policy_), opt.reset, d->owner_, d->created_, detail,
      [&dd = *d](std::vector<core::TierLimits> &rows, const std::vector<core::TierLimits> &before,
                 int64_t created_ns, std::string &why) { return dd.keep_limits(rows, before, created_ns, why); });
  if (s != core::Status::ok) {
    error = "segment '" + opt.segment + "': " + detail;
    // The policy and the pair disagree: change the policy back, or --reset.
    if (s == core::Status::version_mismatch) kind = StartFailure::config;
    return nullptr;
  }
  if (d->created_) d->record_created_table();
  const bool opened = d->open_services(error);
  if (opened) d->ready_.store(true, std::memory_order_release);  // /metrics may read the segment now
  if (!opened) {
    // A failed start leaves no segment behind that it made itself, and puts back
    // the table of one it re-attached.
    if (d->created_) {
      d->stop();
      core::Owner::remove(opt.segment);
    } else {
      d->restore_table(error);
    }
    return nullptr;
  }
  kind = StartFailure::none;
  return d;
}

bool Daemon::open_before_attach(std::string &error) {
  if (!segment_fits(opt_, policy_, error)) return false;
  const std::string db = audit_db_path(policy_, opt_);
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(db).parent_path(), ec);
  bool disk_failed = false;
  store_ = policy_loop::AuditStore::open(db, error, &disk_failed, true,
                                         policy_loop::TrailClock(opt_.wall_clock_ms, opt_.boot_clock_ms));
  if (!store_) {
    // A full or failing disk is not a setting to change.
    if (!disk_failed) error += " (set audit_db in the policy, --state-dir or $SLUICE_STATE_DIR)";
    return false;
  }
  // Bound now, served once the start is done (until then a scrape gets 503):
  // a port in use must fail the start before it publishes anything.
  if (opt_.metrics_addr && !serve_metrics(error)) return false;
  control_ = ControlServer::listen(control_socket_path(opt_.segment), error);
  return control_ != nullptr;
}

bool segment_fits(const Options &opt, const policy::PolicySpec &p, std::string &error) {
  // Before anything else of the start: a --reset that would make a pair too large
  // for /dev/shm must not remove the running one first. (Mapping::create checks
  // again on every path that makes one.)
  const std::string path = "/dev/shm/" + core::state_segment_name(opt.segment);
  struct stat st {};
  const bool exists = ::stat(path.c_str(), &st) == 0;
  if (exists && !opt.reset) return true;
  const uint64_t free = core::shm_free_bytes();
  if (free == UINT64_MAX) return true;
  const uint64_t avail = free + (exists ? uint64_t(st.st_blocks) * 512 : 0);
  const uint64_t need = core::state_segment_bytes(layout_of(p));
  if (need <= avail) return true;
  error = "the state segment would need " + std::to_string(need >> 20) + " MiB, and /dev/shm has " +
          std::to_string(avail >> 20) + " MiB free: lower segment.max_keys or the tiers' max_limit";
  return false;
}

bool Daemon::keep_limits(std::vector<core::TierLimits> &rows, const std::vector<core::TierLimits> &before,
                         int64_t created_ns, std::string &why) {
  // When this pair was made, on the trail's clock: a record from before then is an
  // earlier pair's (a reboot, or a --reset), whose generations mean nothing here.
  // created_ns is client-writable: one in the future (or garbage) counts as
  // "made now", so no record is taken for this pair's.
  const int64_t age_ns = core::elapsed_since(core::mono_ns(), created_ns);
  const int64_t pair_made_unix_ms =
      age_ns == INT64_MAX ? store_->trail_now() : store_->trail_now() - age_ns / 1'000'000;
  std::vector<policy_loop::AuditRecord> recs;
  for (size_t i = 0; i < rows.size() && i < before.size() && i < policy_.tiers.size(); ++i) {
    const auto &t = policy_.tiers[i];
    const core::TierLimits &was = before[i];
    policy_loop::AuditRecord r;
    r.actor = "system";
    r.tier = t.name;
    r.old_limit = was.limit;
    // Kept only if the loop or a human set it (the trail's newest limit for the tier
    // says so) on a tier adaptive then and now: an old file's baseline or a fixed
    // limit is not the loop's choice, and the new file's baseline replaces it.
    // A publication or approval committed to the trail for a generation the table
    // never reached (a kill -9 between the commit and the publication) was a
    // decision already made: it is published now rather than lost.
    const auto last = store_->last_limit(t.name);
    const bool adaptive = t.adaptive && (was.flags & core::kTierAdaptive);
    const bool on_table = last && last->limit == int64_t(was.limit);
    const bool never_published = last && (last->event == "published" || last->event == "approved") &&
                                 last->unix_ms >= pair_made_unix_ms && last->generation > was.generation &&
                                 last->limit >= 0 && last->limit <= int64_t(UINT32_MAX);
    const uint32_t chosen = never_published ? uint32_t(last->limit) : was.limit;
    if (adaptive && (on_table || never_published) && chosen != t.limit) {
      rows[i].limit = std::clamp(chosen, t.floor, t.ceiling);
      const std::string within =
          rows[i].limit != chosen
              ? ", brought within the policy's " + std::to_string(t.floor) + ".." + std::to_string(t.ceiling)
              : std::string();
      r.event = "kept";
      r.reason = on_table ? "restart: kept the limit the loop or an approval published (" + std::to_string(chosen) +
                                within + ") rather than the policy file's baseline " + std::to_string(t.limit)
                          : "restart: published the limit " + std::to_string(chosen) + within + " that the trail's '" +
                                last->event + "' record (generation " + std::to_string(last->generation) +
                                ") committed, but sluiced stopped before publishing (the table was at generation " +
                                std::to_string(was.generation) + ")";
    } else if (rows[i].limit != was.limit) {
      r.event = "start";
      r.reason = "start: the policy file's limit replaces " + std::to_string(was.limit);
    } else {
      continue;
    }
    r.new_limit = rows[i].limit;
    recs.push_back(std::move(r));
  }
  std::string err;
  if (!recs.empty() && !store_->append_all(recs, err)) {
    why = "audit store: " + err + " (nothing was published)";
    return false;
  }
  for (const auto &r : recs) spdlog::info("tier {}: {} -> {}: {}", r.tier, r.old_limit, r.new_limit, r.reason);
  return true;
}

void Daemon::restore_table(const std::string &why) {
  owner_->publish(owner_->rows_before_attach());
  policy_loop::AuditRecord r;
  r.event = "start";
  r.actor = "system";
  r.tier = "*";
  r.reason = "start failed (" + text::utf8_clean(why, 300) + "): the table published before it is back";
  std::string err;
  if (store_ && !store_->append(r, err)) spdlog::error("audit: {}", err);
}

void Daemon::record_created_table() {
  std::vector<policy_loop::AuditRecord> recs;
  for (uint32_t i = 0; i < owner_->tier_count() && i < policy_.tiers.size(); ++i) {
    core::TierLimits t;
    core::read_tier(owner_->policy(), i, t);
    recs.push_back(policy_loop::AuditRecord{0, 0, "start", "system", policy_.tiers[i].name, -1, t.limit,
                                            "created the segment: the policy file's limit", 1.0, "", t.generation});
  }
  std::string err;
  if (!store_->append_all(recs, err)) spdlog::error("audit: {} (the new table's limits are not in the trail)", err);
}

bool Daemon::open_services(std::string &error) {
  const std::string db = store_->path();
  engine_ = std::make_unique<policy_loop::PolicyEngine>(policy_, *owner_, *store_, getuid());
  for (uint32_t i = 0; i < owner_->tier_count(); ++i)
    admitted_at_start_.push_back(core::sum_counters(owner_->state(), i).admitted);
  if (!start_advisor(error)) return false;
  tick_ns_ = opt_.tick_ns ? *opt_.tick_ns : int64_t(policy_.tick_ms) * 1'000'000;
  shared_loop_.set(loop_state());
  spdlog::info("audit store {} ({} pending approvals), control socket {}", db, store_->pending().size(),
               control_socket_path(opt_.segment));
  spdlog::info("{} segment '{}' ({} tiers, {} keys per tier, {} MiB mapped)", created_ ? "created" : "re-attached",
               opt_.segment, policy_.tiers.size(), policy_.segment.max_keys, owner_->state().segment_bytes >> 20);
  const std::string huge = core::shm_huge_mode();
  if (core::shm_huge_pages_allowed(huge))
    spdlog::info("segment pages: transparent huge pages (/dev/shm huge={})", huge);
  else
    spdlog::info("segment pages: 4 KiB (/dev/shm huge={}); with many keys, mount /dev/shm huge=advise for fewer "
                 "TLB misses (README)", huge.empty() ? "unknown" : huge);
  return true;
}

bool advisor_config_of(const policy::PolicySpec &p, std::optional<advisor::AdvisorConfig> &out, std::string &error) {
  out.reset();
  const policy::AdvisorSpec &a = p.advisor;
  if (a.kind == "none") return true;
  advisor::AdvisorConfig cfg;
  cfg.kind = a.kind == "openai" ? advisor::AdvisorConfig::openai : advisor::AdvisorConfig::ollama;
  cfg.base_url = a.url;
  cfg.model = a.model;
  cfg.timeout_ms = int(a.timeout_ms);
  cfg.min_confidence = p.governance.min_confidence;
  if (const char *key = std::getenv("SLUICE_ADVISOR_API_KEY")) cfg.api_key = key;
  if (const std::string why = advisor::validate_config(cfg); !why.empty()) {
    error = "policy advisor.url/model: " + why;
    return false;
  }
  out = cfg;
  return true;
}

bool Daemon::start_advisor(std::string &error) {
  if (!advisor_cfg_) return true;
  advisor_ = std::make_unique<advisor::AsyncAdvisor>(*advisor_cfg_);
  if (!advisor_->running()) {
    error = "advisor: its worker thread could not be started";
    return false;
  }
  // Each tick hands the model the new snapshot and uses its newest fresh answer,
  // or its last one while the next is on its way (advice_turn.hpp); an answer it
  // cannot use falls back to the rules, recorded.
  engine_->set_advice_source([this](const policy_loop::Snapshot &s) -> std::optional<policy_loop::Advice> {
    advisor_->submit(s);
    const AdviceTurn turn =
        next_advice(held_advice_, advisor_->take(), s, AdviceAges::of(int64_t(advisor_cfg_->timeout_ms) * 1'000'000, tick_ns_));
    if (!turn.fallback.empty()) {
      policy_loop::AuditRecord rec;
      rec.event = "advisor";
      rec.actor = "advisor";
      rec.tier = "*";
      rec.reason = turn.fallback;
      std::string err;
      if (!store_->append(rec, err)) spdlog::error("audit: {}", err);
      spdlog::info("advisor: {}", rec.reason);
    }
    return turn.use;
  });
  const policy::AdvisorSpec &a = policy_.advisor;
  spdlog::info("advisor: {} model '{}' at {} (timeout {} ms, min confidence {})", a.kind, a.model, a.url,
               a.timeout_ms, advisor_cfg_->min_confidence);
  return true;
}

bool Daemon::serve_metrics(std::string &error) {
  // Counters and tier tables are read live from the segment at each scrape; the
  // loop's view is its copy as of the last tick, with the advisor's own counts.
  metrics_ = metrics::MetricsServer::start(
      *opt_.metrics_addr,
      [this] {
        if (!ready_.load(std::memory_order_acquire)) throw metrics::Unavailable("sluiced is starting: no samples yet");
        LoopState loop = shared_loop_.get();
        if (advisor_) loop.advisor = advisor_->stats();
        return render_metrics(status_of(owner_->state(), owner_->policy(), owner_->geometry(), opt_.segment), loop);
      },
      error);
  if (!metrics_) return false;
  spdlog::info("metrics: serving http://{}:{}/metrics", metrics_->host(), metrics_->port());
  return true;
}

LoopState Daemon::loop_state() {
  LoopState s;
  s.snapshot = engine_->snapshot();
  s.pending = store_->pending();
  s.governance = engine_->governance_counts();
  s.audit_store_errors = store_->errors();
  s.audit_records_pruned = audit_pruned_;
  s.admitted_at_start = admitted_at_start_;
  s.trail_now_ms = store_->trail_now();
  if (advisor_) {
    s.advisor_kind = policy_.advisor.kind;
    s.advisor_model = policy_.advisor.model;
    s.advisor = advisor_->stats();
  }
  return s;
}

Daemon::~Daemon() {
  stop();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

int64_t Daemon::do_work(int64_t now_ns) {
  owner_->heartbeat();
  // Requests the control socket's thread has read in full, run here between
  // ticks (never waits for a client).
  if (control_) control_->serve_pending([this](const std::string &line, const Peer &peer) {
    const std::string reply = line == "overview" ? "ok\n" + overview_json(loop_state()) + "\n"
                                                 : handle_command(*engine_, line, peer);
    // Only a decision changes what /metrics shows; the other commands read.
    const size_t at = std::min(line.find_first_not_of(" \t"), line.size());
    const std::string_view word = std::string_view(line).substr(at);
    const bool decision = word.starts_with("approve") || word.starts_with("reject");
    if (decision) shared_loop_.set(loop_state());
    if (decision)
      spdlog::info("control: uid {} pid {}: {} -> {}", peer.uid, peer.pid, text::terminal_safe(line.substr(0, 80)),
                   text::terminal_safe(reply.substr(0, reply.find('\n'))));
    return reply;
  });
  if (now_ns >= next_tick_ns_) {
    next_tick_ns_ = now_ns + tick_ns_;
    if (!lock_lost_ && !lock_still_named(opt_.segment, lock_fd_) && !retake_lock()) {
      lock_lost_ = true;
      return now_ns;
    }
    if (!segment_lost_ && !owner_->still_named()) {
      segment_lost_ = true;
      core::retire_tiers(owner_->policy());  // now: clients reopen the name at their next call
      spdlog::error("segment '{}' is no longer in /dev/shm (removed by hand, or by systemd-logind's RemoveIPC when "
                    "its user logged out): retired it so clients reopen the name; stopping, restart sluiced to "
                    "make a new one",
                    opt_.segment);
      return now_ns;
    }
    keep_audit_store_in_place();
    note_clock_step();
    const auto rep = engine_->tick(now_ns, store_->trail_now());
    for (const auto &p : rep.published) spdlog::info("published: {}", p.reason);
    for (const auto &p : rep.new_pending)
      spdlog::warn("approval {} needed: {} -> {} for {}: {}", p.id, p.old_limit, p.new_limit, p.tier_name, p.reason);
    for (const auto &p : rep.expired) spdlog::info("approval {} expired", p.id);
    prune_audit();
    shared_loop_.set(loop_state());
    const int64_t idle_ns = int64_t(policy_.segment.idle_ttl_ms) * 1'000'000;
    const core::GcStats gc = owner_->collect(idle_ns, opt_.gc_slots_per_tick);
    gc_totals_.scanned += gc.scanned;
    gc_totals_.reclaimed += gc.reclaimed;
    gc_totals_.dead_claims_freed += gc.dead_claims_freed;
    if (gc.reclaimed || gc.dead_claims_freed)
      spdlog::debug("gc: reclaimed {} idle keys, freed {} dead claims", gc.reclaimed, gc.dead_claims_freed);
    if (gc.thawed || gc.unknown_freed)
      spdlog::warn("gc: {} key rings frozen and {} slots in no known state, written by a client (not sluiced): "
                   "thawed and freed",
                   gc.thawed, gc.unknown_freed);
  }
  return std::min(next_tick_ns_, now_ns + opt_.heartbeat_ns);
}

void Daemon::prune_audit() {
  if (policy_.audit_retention_days == 0) return;
  // A batch a tick keeps the loop's thread (and its fsync) short; at 1,000 a
  // second it outruns any rate the loop records at.
  constexpr size_t kBatch = 1000;
  std::vector<std::string> tiers;
  for (const auto &t : policy_.tiers) tiers.push_back(t.name);
  const int64_t age_ms = int64_t(policy_.audit_retention_days) * 86'400'000;
  std::string err;
  const int64_t n = store_->prune(store_->trail_now() - age_ms, kBatch, tiers, err, store_->clock().wall_now() - age_ms);
  if (n < 0) spdlog::error("audit: retention: {}", err);
  else audit_pruned_ += uint64_t(n);
}

void Daemon::note_clock_step() {
  // Said once per step: the trail keeps its own time (trail_clock.hpp).
  const int64_t ahead = store_->clock().wall_now() - store_->trail_now();
  if (std::llabs(ahead - clock_step_logged_ms_) <= kClockStepMs) return;
  if (std::llabs(ahead) <= kClockStepMs)
    spdlog::info("the system clock agrees with the audit trail's clock again");
  else
    spdlog::warn("the system clock is {} s {} the audit trail's clock (it was stepped): approvals, the approval "
                 "window and retention keep the trail's time, which does not step, until the next boot; "
                 "sluicectl audit shows both",
                 std::llabs(ahead) / 1000, ahead > 0 ? "ahead of" : "behind");
  clock_step_logged_ms_ = ahead;
}

bool Daemon::retake_lock() {
  // Someone removed the lock file: another sluiced may now start on this segment.
  // Take the name again; if one already has, it owns the segment and this one stops
  // (leaving the segment to it, untouched).
  std::string err;
  const int fd = take_segment_lock(opt_.segment, err);
  if (fd < 0) {
    spdlog::error("lock file {} was removed and cannot be taken again ({}): stopping, the segment is left as it is",
                  lock_path(opt_.segment), err);
    return false;
  }
  ::close(lock_fd_);
  lock_fd_ = fd;
  spdlog::warn("lock file {} was removed (by hand?): made it again", lock_path(opt_.segment));
  return true;
}

void Daemon::keep_audit_store_in_place() {
  std::string what;
  const auto where = store_->keep_in_place(what);
  if (where == policy_loop::AuditStore::Placement::restored) spdlog::warn("audit: {}", what);
  else if (!what.empty()) spdlog::error("audit: {}", what);
}

void Daemon::stop() {
  if (stopped_ || !owner_) return;
  stopped_ = true;
  // Records made since the last tick into a store removed meanwhile reach its name.
  if (store_) keep_audit_store_in_place();
  metrics_.reset();
  control_.reset();  // closes every control connection and removes the socket
  if (!lock_lost_) owner_->mark_stopped();  // else the segment is another sluiced's now
  // Unlinked under us: nothing can find it again, but every client that mapped it
  // keeps its pages allocated until it unmaps. Freed last, when no service reads it.
  if (segment_lost_) owner_->discard_state();
}

}  // namespace sluice::daemon
