// The durable side of governance: the audit trail and pending approvals, in
// SQLite (WAL, synchronous=FULL: a record is on disk when append() returns, so a
// kill -9 loses nothing that was reported as recorded).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "policy_loop/trail_clock.hpp"

struct sqlite3;

namespace sluice::policy_loop {

struct AuditRecord {
  int64_t id = 0;
  int64_t unix_ms = 0;  // trail time (trail_clock.hpp); 0: the store stamps it now
  // published, pending, held, approved, rejected, expired, stale, void, kept, start, advisor
  std::string event;
  std::string actor;        // rules, advisor, human:<uid>, system
  std::string tier;
  int64_t old_limit = -1;
  int64_t new_limit = -1;
  std::string reason;
  double confidence = 1.0;
  std::string approval_id;
  uint64_t generation = 0;  // the tier table generation a publication produced
  int64_t wall_ms = 0;      // the system clock then (what people are shown); 0: the store works it out
};

struct PendingApproval {
  std::string id;
  uint32_t tier = 0;
  std::string tier_name;
  uint32_t old_limit = 0;
  uint32_t new_limit = 0;
  std::string reason;
  std::string actor;
  double confidence = 1.0;
  int64_t created_unix_ms = 0;
  int64_t expires_unix_ms = 0;
};

class AuditStore {
 public:
  // disk_failed: set when the failure was a full or failing disk (SQLITE_FULL,
  // SQLITE_IOERR), not a location or permission that a setting would change.
  // create=false: only an existing file (a restored copy, never an empty new store).
  // `clock`: the trail's clock, anchored from (and to) the store's meta table.
  static std::unique_ptr<AuditStore> open(const std::string &path, std::string &error, bool *disk_failed = nullptr,
                                          bool create = true, const TrailClock &clock = TrailClock());
  ~AuditStore();

  // The trail's time now: what every record, question and window is timed by.
  int64_t trail_now() const { return clock_.now(); }
  const TrailClock &clock() const { return clock_; }

  bool append(const AuditRecord &r, std::string &error);
  // All of them in one commit, or none.
  bool append_all(const std::vector<AuditRecord> &rs, std::string &error);
  // Fails with *duplicate_id set if p.id is already taken (ids are short, for people).
  bool put_pending(const PendingApproval &p, const AuditRecord &r, std::string &error, bool *duplicate_id = nullptr);
  // Removes a pending approval and records what happened to it, in one commit.
  bool close_pending(const std::string &id, const AuditRecord &r, std::string &error);
  // false with `error` if the store could not be read: no answer is not "none pending".
  bool pending(std::vector<PendingApproval> &out, std::string &error);
  std::vector<PendingApproval> pending();  // for display: empty if the store cannot be read
  // nullopt with `error` empty: no such id; with `error` set: the store failed.
  std::optional<PendingApproval> find_pending(const std::string &id, std::string &error);
  // The newest max_rows records at or after unix_ms (trail time), oldest first (by
  // time, then id); *more: whether older matching ones were left out; *error: set if the
  // store failed part way (what was read is returned).
  std::vector<AuditRecord> since(int64_t unix_ms, size_t max_rows = 10000, bool *more = nullptr,
                                 std::string *error = nullptr);
  // SQLite's VM steps for the last since(): what it cost, for the tests (a count, not a time).
  int64_t last_read_steps() const { return last_read_steps_; }
  // The newest record that set a limit for `tier` (published, approved, kept,
  // start), or nullopt if there is none (or the store cannot be read).
  struct LimitRecord {
    int64_t limit = 0;
    std::string event;
    uint64_t generation = 0;  // the table generation it published (0: none named)
    int64_t unix_ms = 0;
    int64_t id = 0;           // the record's own
  };
  std::optional<LimitRecord> last_limit(const std::string &tier);
  // The limits `tier` had from unix_ms on, oldest first: (time, limit, event). The
  // first is the one in force at unix_ms (the newest record before it, or the
  // first record's old limit); empty if the trail names none (or cannot be read).
  struct LimitChange {
    int64_t unix_ms = 0;
    int64_t limit = 0;
    std::string event;
  };
  std::vector<LimitChange> limits_since(const std::string &tier, int64_t unix_ms);
  // Retention: deletes up to max_rows records older than unix_ms, oldest first,
  // in one commit. Never deletes the newest limit record of any of `tiers` (the
  // limit in force and why: what a restart and limits_since read) nor a record
  // naming a still-pending approval. Returns how many went, -1 with `error`.
  // A record goes only if its system-clock reading is older than wall_ms too: a
  // trail anchored while the system clock was ahead (then corrected) deletes
  // nothing early either.
  int64_t prune(int64_t unix_ms, size_t max_rows, const std::vector<std::string> &tiers, std::string &error,
                int64_t wall_ms = INT64_MAX);
  // Is `id` taken by an open question or named by any record?
  bool id_in_use(const std::string &id);
  const std::string &path() const { return path_; }
  // Whether path() still names the file this store writes, checked each tick: a
  // store removed under sluiced (by hand, or a cleaner) took every later record
  // into an unlinked file that a restart never reads. A removed one is restored
  // under its name from the open connection (WAL included); one replaced by
  // another file is reported once (and counted) and left alone. `what` says it.
  enum class Placement { in_place, restored, replaced, failed };
  Placement keep_in_place(std::string &what);
  // SQLite operations that failed since open (a full disk, a lock held past the
  // busy timeout, I/O errors): while any fail, the loop publishes nothing, so
  // this is on /metrics for an alert. Logical refusals (no such id) are not counted.
  uint64_t errors() const { return errors_; }

 private:
  AuditStore() = default;
  bool exec(const char *sql, std::string &error);
  bool insert_record(const AuditRecord &r, std::string &error);
  bool migrate(std::string &error);       // columns later versions added
  bool anchor_trail(std::string &error);  // clock_ from the meta table, and back to it
  TrailClock clock_;
  sqlite3 *db_ = nullptr;
  int64_t last_read_steps_ = 0;
  uint64_t errors_ = 0;
  bool failed(std::string &error);  // error = SQLite's message (and errno's); counts it; false
  std::string path_;
  uint64_t dev_ = 0, ino_ = 0;  // the file opened under path_
  bool file_backed_ = true;     // false: ":memory:" or a "file:" URI, nothing to keep in place
  bool replaced_reported_ = false;
  bool note_identity();
  void adopt(AuditStore &fresh);  // takes fresh's connection and identity
};

int64_t unix_ms_now();

}  // namespace sluice::policy_loop
