#include "daemon.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <filesystem>

#include "commands.hpp"
#include "metrics_page.hpp"
#include "sluice/core/clock.hpp"
#include "sluice/core/tier_table.hpp"
#include "text/utf8.hpp"

namespace sluice::daemon {

core::LayoutSpec layout_of(const policy::PolicySpec &p) {
  core::LayoutSpec s;
  s.max_keys = p.segment.max_keys;
  s.max_key_bytes = p.segment.max_key_bytes;
  for (const auto &t : p.tiers) {
    core::TierSpec ts;
    ts.name = t.name;
    ts.capacity = t.max_limit;
    ts.limit = t.limit;
    ts.window_ns = int64_t(t.window_ms) * 1'000'000;
    ts.revenue_per_request = t.revenue_per_request;
    ts.adaptive = t.adaptive;
    // A restart keeps what the loop (or an approval) published, within the
    // policy's bounds; a fixed tier takes the file's limit.
    ts.keep_published_limit = t.adaptive;
    ts.keep_min = t.floor;
    ts.keep_max = t.ceiling;
    s.tiers.push_back(ts);
  }
  return s;
}

int take_segment_lock(const std::string &segment, std::string &error) {
  const std::string path = "/dev/shm/" + segment + ".lock";
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
    error = err == EWOULDBLOCK ? "another sluiced (pid " + std::string(pid[0] ? pid : "?") +
                                     ") already owns segment '" + segment + "'"
                               : "cannot lock " + path + ": " + std::strerror(err);
    return -1;
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

std::unique_ptr<Daemon> Daemon::start(const Options &opt, std::string &error) {
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
  d->lock_fd_ = take_segment_lock(opt.segment, error);
  if (d->lock_fd_ < 0) return nullptr;
  std::string detail;
  const core::Status s =
      core::Owner::create_or_attach(opt.segment, layout_of(d->policy_), opt.reset, d->owner_, d->created_, detail);
  if (s != core::Status::ok) {
    error = "segment '" + opt.segment + "': " + detail;
    return nullptr;
  }
  if (!d->open_services(error)) {
    // A failed start leaves no segment behind that it made itself.
    if (d->created_) {
      d->stop();
      core::Owner::remove(opt.segment);
    }
    return nullptr;
  }
  return d;
}

bool Daemon::open_services(std::string &error) {
  const std::string db = audit_db_path(policy_, opt_);
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(db).parent_path(), ec);
  store_ = policy_loop::AuditStore::open(db, error);
  if (!store_) {
    error += " (set audit_db in the policy, --state-dir or $SLUICE_STATE_DIR)";
    return false;
  }
  record_kept_limits();
  engine_ = std::make_unique<policy_loop::PolicyEngine>(policy_, *owner_, *store_, getuid());
  for (uint32_t i = 0; i < owner_->tier_count(); ++i)
    admitted_at_start_.push_back(core::sum_counters(owner_->state(), i).admitted);
  if (!attach_advisor(error)) return false;
  control_ = ControlServer::listen(control_socket_path(opt_.segment), error);
  if (!control_) return false;
  tick_ns_ = opt_.tick_ns ? *opt_.tick_ns : int64_t(policy_.tick_ms) * 1'000'000;
  shared_loop_.set(loop_state());
  if (opt_.metrics_addr && !serve_metrics(error)) return false;
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

void Daemon::record_kept_limits() {
  // Not a change clients see (the limit stays what it was before the restart), but
  // the trail says why the table differs from the policy file.
  const auto &before = owner_->limits_before_attach();
  std::vector<policy_loop::AuditRecord> rows;
  for (uint32_t i = 0; i < before.size() && i < policy_.tiers.size(); ++i) {
    const auto &t = policy_.tiers[i];
    core::TierLimits now;
    core::read_tier(owner_->policy(), i, now);
    if (!t.adaptive || now.limit == t.limit) continue;
    policy_loop::AuditRecord r;
    r.event = "kept";
    r.actor = "system";
    r.tier = t.name;
    r.old_limit = before[i];
    r.new_limit = now.limit;
    r.reason = "restart: kept the limit published before it (" + std::to_string(before[i]) +
               (now.limit != before[i] ? ", brought within the policy's " + std::to_string(t.floor) + ".." +
                                             std::to_string(t.ceiling)
                                       : std::string()) +
               ") rather than the policy file's baseline " + std::to_string(t.limit) +
               "; the loop eases it to the baseline when the tier is idle";
    r.generation = owner_->policy().generation.load();
    rows.push_back(std::move(r));
  }
  std::string err;
  if (!rows.empty() && !store_->append_all(rows, err)) spdlog::error("audit: {}", err);
  for (const auto &r : rows) spdlog::info("tier {}: {}", r.tier, r.reason);
}

bool Daemon::attach_advisor(std::string &error) {
  const policy::AdvisorSpec &a = policy_.advisor;
  if (a.kind == "none") return true;
  advisor::AdvisorConfig cfg;
  cfg.kind = a.kind == "openai" ? advisor::AdvisorConfig::openai : advisor::AdvisorConfig::ollama;
  cfg.base_url = a.url;
  cfg.model = a.model;
  cfg.timeout_ms = int(a.timeout_ms);
  cfg.min_confidence = policy_.governance.min_confidence;
  if (const char *key = std::getenv("SLUICE_ADVISOR_API_KEY")) cfg.api_key = key;
  if (const std::string why = advisor::validate_config(cfg); !why.empty()) {
    error = "advisor: " + why;
    return false;
  }
  advisor_ = std::make_unique<advisor::AsyncAdvisor>(cfg);
  // Each tick hands the model the new snapshot and uses the answer to an earlier
  // one if it is fresh and valid; anything else falls back to the rules, recorded.
  const int64_t timeout_ns = int64_t(a.timeout_ms) * 1'000'000;
  engine_->set_advice_source([this, timeout_ns](const policy_loop::Snapshot &s) -> std::optional<policy_loop::Advice> {
    advisor_->submit(s);
    auto r = advisor_->take();
    if (!r) {
      // No new answer yet. Waiting is not failing: keep to the model's last answer
      // while a request is in flight (it answers or times out within timeout_ms)
      // and the host is no worse off than then. Otherwise the rules and the
      // model would take turns, one undoing the other on alternate ticks.
      if (held_advice_ && advisor_->busy() && s.now_ns - held_advice_->taken_ns <= timeout_ns &&
          s.host_surge <= held_advice_->surge)
        return held_advice_->advice;
      held_advice_.reset();
      return std::nullopt;
    }
    // Fresh: about a snapshot no older than a request may take plus one tick (a
    // count of ticks alone would call every answer of a model slower than two
    // short ticks stale).
    if (r->advice && int64_t(s.tick - r->tick) * tick_ns_ <= timeout_ns + tick_ns_) {
      held_advice_ = HeldAdvice{*r->advice, s.now_ns, s.host_surge};
      return r->advice;
    }
    held_advice_.reset();
    policy_loop::AuditRecord rec;
    rec.event = "advisor";
    rec.actor = "advisor";
    rec.tier = "*";
    rec.reason = std::string("fallback to rules: ") + advisor::outcome_name(r->outcome) +
                 (r->advice ? " (stale answer)" : "") + (r->detail.empty() ? "" : ": " + text::utf8_clean(r->detail, 300));
    std::string err;
    if (!store_->append(rec, err)) spdlog::error("audit: {}", err);
    spdlog::info("advisor: {}", rec.reason);
    return std::nullopt;
  });
  spdlog::info("advisor: {} model '{}' at {} (timeout {} ms, min confidence {})", a.kind, a.model, a.url,
               a.timeout_ms, cfg.min_confidence);
  return true;
}

bool Daemon::serve_metrics(std::string &error) {
  // Counters and tier tables are read live from the segment at each scrape; the
  // loop's view is its copy as of the last tick, with the advisor's own counts.
  metrics_ = metrics::MetricsServer::start(
      *opt_.metrics_addr,
      [this] {
        LoopState loop = shared_loop_.get();
        if (advisor_) loop.advisor = advisor_->stats();
        return render_metrics(status_of(owner_->state(), owner_->policy(), opt_.segment), loop);
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
  s.admitted_at_start = admitted_at_start_;
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
    shared_loop_.set(loop_state());
    if (line.rfind("approve", 0) == 0 || line.rfind("reject", 0) == 0)
      spdlog::info("control: uid {} pid {}: {} -> {}", peer.uid, peer.pid, line.substr(0, 80),
                   reply.substr(0, reply.find('\n')));
    return reply;
  });
  if (now_ns >= next_tick_ns_) {
    next_tick_ns_ = now_ns + tick_ns_;
    if (!segment_lost_ && !owner_->still_named()) {
      segment_lost_ = true;
      core::retire_tiers(owner_->policy());  // now: clients reopen the name at their next call
      spdlog::error("segment '{}' is no longer in /dev/shm (removed by hand, or by systemd-logind's RemoveIPC when "
                    "its user logged out): retired it so clients reopen the name; stopping, restart sluiced to "
                    "make a new one",
                    opt_.segment);
      return now_ns;
    }
    const auto rep = engine_->tick(now_ns, policy_loop::unix_ms_now());
    for (const auto &p : rep.published) spdlog::info("published: {}", p.reason);
    for (const auto &p : rep.new_pending)
      spdlog::warn("approval {} needed: {} -> {} for {}: {}", p.id, p.old_limit, p.new_limit, p.tier_name, p.reason);
    for (const auto &p : rep.expired) spdlog::info("approval {} expired", p.id);
    shared_loop_.set(loop_state());
    const int64_t idle_ns = int64_t(policy_.segment.idle_ttl_ms) * 1'000'000;
    const core::GcStats gc = owner_->collect(idle_ns, opt_.gc_slots_per_tick);
    gc_totals_.scanned += gc.scanned;
    gc_totals_.reclaimed += gc.reclaimed;
    gc_totals_.dead_claims_freed += gc.dead_claims_freed;
    if (gc.reclaimed || gc.dead_claims_freed)
      spdlog::debug("gc: reclaimed {} idle keys, freed {} dead claims", gc.reclaimed, gc.dead_claims_freed);
  }
  return std::min(next_tick_ns_, now_ns + opt_.heartbeat_ns);
}

void Daemon::stop() {
  if (stopped_ || !owner_) return;
  stopped_ = true;
  metrics_.reset();
  control_.reset();  // closes every control connection and removes the socket
  owner_->mark_stopped();
  // Unlinked under us: nothing can find it again, but every client that mapped it
  // keeps its pages allocated until it unmaps. Freed last, when no service reads it.
  if (segment_lost_) owner_->discard_state();
}

}  // namespace sluice::daemon
