#include "policy_loop/audit_store.hpp"

#include <sqlite3.h>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>

namespace sluice::policy_loop {

int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

struct Stmt {
  sqlite3_stmt *s = nullptr;
  Stmt(sqlite3 *db, const char *sql) { sqlite3_prepare_v2(db, sql, -1, &s, nullptr); }
  ~Stmt() { sqlite3_finalize(s); }
  Stmt &text(int i, const std::string &v) {
    sqlite3_bind_text(s, i, v.c_str(), int(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt &i64(int i, int64_t v) {
    sqlite3_bind_int64(s, i, v);
    return *this;
  }
  Stmt &real(int i, double v) {
    sqlite3_bind_double(s, i, v);
    return *this;
  }
  std::string col_text(int i) {
    const auto *t = sqlite3_column_text(s, i);
    return t ? reinterpret_cast<const char *>(t) : "";
  }
};

const char *kSchema = R"(
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  unix_ms INTEGER NOT NULL, event TEXT NOT NULL, actor TEXT NOT NULL, tier TEXT NOT NULL,
  old_limit INTEGER, new_limit INTEGER, reason TEXT NOT NULL, confidence REAL,
  approval_id TEXT, generation INTEGER, wall_ms INTEGER);
CREATE INDEX IF NOT EXISTS audit_time ON audit(unix_ms);
CREATE INDEX IF NOT EXISTS audit_tier ON audit(tier, id);
CREATE INDEX IF NOT EXISTS audit_approval ON audit(approval_id);
CREATE TABLE IF NOT EXISTS pending (
  id TEXT PRIMARY KEY, tier INTEGER NOT NULL, tier_name TEXT NOT NULL,
  old_limit INTEGER NOT NULL, new_limit INTEGER NOT NULL, reason TEXT NOT NULL,
  actor TEXT NOT NULL, confidence REAL, created_unix_ms INTEGER NOT NULL, expires_unix_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)";

// SQLite's message, with the system's reason when there is one: "disk I/O
// error" alone does not say the disk is full.
std::string system_reason(sqlite3 *db) {
  const int e = sqlite3_system_errno(db);
  return e ? std::string(" (") + std::strerror(e) + ")" : "";
}

std::string describe(sqlite3 *db) {
  return db ? sqlite3_errmsg(db) + system_reason(db) : "cannot open (out of memory)";
}

}  // namespace

std::unique_ptr<AuditStore> AuditStore::open(const std::string &path, std::string &error, bool *disk_failed,
                                             bool create, const TrailClock &clock) {
  std::unique_ptr<AuditStore> s(new AuditStore());
  s->clock_ = clock;
  s->path_ = path;
  auto fail = [&](const std::string &why) {
    error = "audit store " + path + ": " + why;
    const int code = s->db_ ? sqlite3_errcode(s->db_) : SQLITE_NOMEM;
    if (disk_failed) *disk_failed = code == SQLITE_FULL || code == SQLITE_IOERR;
    return nullptr;
  };
  // Owner and group only, as the segments' state: reasons and limits are the
  // operator's business. (SQLite gives the -wal and -shm files the same mode.)
  const mode_t old_mask = ::umask(027);
  const int rc = sqlite3_open_v2(path.c_str(), &s->db_,
                                 SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_FULLMUTEX, nullptr);
  ::umask(old_mask);
  if (rc != SQLITE_OK) return fail(describe(s->db_));
  sqlite3_busy_timeout(s->db_, 2000);
  if (!s->exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", error) || !s->exec(kSchema, error) ||
      !s->migrate(error) || !s->anchor_trail(error))
    return fail(error);
  // ":memory:" and "file:" URIs name no file to keep in place.
  s->file_backed_ = path != ":memory:" && path.rfind("file:", 0) != 0;
  if (s->file_backed_ && !s->note_identity()) return fail(std::string("cannot stat it: ") + std::strerror(errno));
  return s;
}

bool AuditStore::migrate(std::string &error) {
  // A store made before records kept the system clock's reading: shown by their
  // trail time, which was the system clock's then.
  Stmt cols(db_, "SELECT 1 FROM pragma_table_info('audit') WHERE name = 'wall_ms'");
  const int rc = sqlite3_step(cols.s);
  if (rc == SQLITE_ROW) return true;
  if (rc != SQLITE_DONE) return failed(error);
  return exec("ALTER TABLE audit ADD COLUMN wall_ms INTEGER", error);
}

bool AuditStore::anchor_trail(std::string &error) {
  const std::string this_boot = boot_id();
  std::string id;
  int64_t at_ms = 0, at_boot_ms = 0;
  {
    Stmt st(db_, "SELECT (SELECT value FROM meta WHERE key = 'trail_boot_id'),"
                 " (SELECT value FROM meta WHERE key = 'trail_anchor_ms'),"
                 " (SELECT value FROM meta WHERE key = 'trail_anchor_boot_ms'),"
                 " max(coalesce((SELECT max(unix_ms) FROM audit), 0),"
                 "     coalesce((SELECT max(created_unix_ms) FROM pending), 0))");
    if (sqlite3_step(st.s) != SQLITE_ROW) return failed(error);
    id = st.col_text(0);
    // Whole numbers or no anchor (the file is ours, but it is a file).
    const auto whole = [](const std::string &t, int64_t &out) {
      const auto r = std::from_chars(t.data(), t.data() + t.size(), out);
      return !t.empty() && r.ec == std::errc() && r.ptr == t.data() + t.size();
    };
    if (!whole(st.col_text(1), at_ms) || !whole(st.col_text(2), at_boot_ms)) id.clear();
    clock_.anchor(id, at_ms, at_boot_ms, this_boot, sqlite3_column_int64(st.s, 3));
  }
  if (clock_.anchor_ms() == at_ms && clock_.anchor_boot_ms() == at_boot_ms && id == this_boot) return true;
  Stmt put(db_, "INSERT OR REPLACE INTO meta(key, value) VALUES ('trail_boot_id', ?1), ('trail_anchor_ms', ?2),"
                " ('trail_anchor_boot_ms', ?3)");
  put.text(1, this_boot).text(2, std::to_string(clock_.anchor_ms())).text(3, std::to_string(clock_.anchor_boot_ms()));
  if (sqlite3_step(put.s) != SQLITE_DONE) return failed(error);
  return true;
}

bool AuditStore::note_identity() {
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0) return false;
  dev_ = uint64_t(st.st_dev);
  ino_ = uint64_t(st.st_ino);
  return true;
}

AuditStore::Placement AuditStore::keep_in_place(std::string &what) {
  what.clear();
  if (!file_backed_) return Placement::in_place;
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0) {
    if (uint64_t(st.st_dev) == dev_ && uint64_t(st.st_ino) == ino_) {
      replaced_reported_ = false;
      return Placement::in_place;
    }
    if (!replaced_reported_) {
      replaced_reported_ = true;
      ++errors_;
      what = path_ + " is now another file than the one sluiced writes: records go on into the removed one "
                     "(sluicectl audit shows them) that a restart will not read; remove the new file (and its "
                     "-wal, -shm) and sluiced restores its own there";
    }
    return Placement::replaced;
  }
  const int err = errno;
  ++errors_;
  if (err != ENOENT) {
    what = "cannot stat " + path_ + ": " + std::strerror(err);
    return Placement::failed;
  }
  // Removed. Until the restored file is open, this connection (to the unlinked
  // file, WAL included) stays the store: a step that fails leaves it so, and the
  // next tick starts over with every record made meanwhile.
  const std::string copy_path = path_ + ".restoring";
  const auto retry = [&](const std::string &why) {
    std::error_code ec;
    std::filesystem::remove(copy_path, ec);
    what = path_ + " was removed while sluiced ran and could not be restored (" + why +
           "); records go on into the removed file, retried each tick";
    return Placement::failed;
  };
  std::error_code ec;
  std::filesystem::remove(copy_path, ec);
  sqlite3 *copy = nullptr;
  const mode_t old_mask = ::umask(027);  // the directory too, if it went with the file
  std::filesystem::create_directories(std::filesystem::path(path_).parent_path(), ec);
  int rc = sqlite3_open_v2(copy_path.c_str(), &copy, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  ::umask(old_mask);
  if (rc == SQLITE_OK) {
    if (sqlite3_backup *b = sqlite3_backup_init(copy, "main", db_, "main")) {
      sqlite3_backup_step(b, -1);
      sqlite3_backup_finish(b);
    }
    rc = sqlite3_errcode(copy);
  }
  const std::string why = describe(copy);
  sqlite3_close(copy);
  if (rc != SQLITE_OK) return retry(why);
  // Never over a file that appeared meanwhile: that one is reported next tick.
  if (::renameat2(AT_FDCWD, copy_path.c_str(), AT_FDCWD, path_.c_str(), RENAME_NOREPLACE) != 0)
    return retry(std::string("rename: ") + std::strerror(errno));
  // The old -wal and -shm names, if still there, are this connection's: a connection
  // to the restored file must make its own, not share them (it keeps its open ones).
  for (const char *suffix : {"-wal", "-shm"}) ::unlink((path_ + suffix).c_str());
  std::string open_err;
  std::unique_ptr<AuditStore> fresh = open(path_, open_err, nullptr, false, clock_);
  if (!fresh) {
    ::unlink(path_.c_str());  // ours: the next tick copies again, with what came since
    return retry(open_err);
  }
  adopt(*fresh);  // closes this connection: SQLite leaves a moved file's -wal alone
  what = path_ + " was removed while sluiced ran: restored it from the open store, every record and pending "
                 "approval kept";
  return Placement::restored;
}

void AuditStore::adopt(AuditStore &fresh) {
  std::swap(db_, fresh.db_);  // `fresh` closes what this had
  dev_ = fresh.dev_;
  ino_ = fresh.ino_;
  replaced_reported_ = false;
}

AuditStore::~AuditStore() { sqlite3_close(db_); }

bool AuditStore::failed(std::string &error) {
  error = describe(db_);
  ++errors_;
  return false;
}

bool AuditStore::exec(const char *sql, std::string &error) {
  char *msg = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &msg) == SQLITE_OK) return true;
  error = (msg ? msg : "sqlite error") + system_reason(db_);
  sqlite3_free(msg);
  ++errors_;
  return false;
}

bool AuditStore::insert_record(const AuditRecord &r, std::string &error) {
  Stmt st(db_,
          "INSERT INTO audit(unix_ms,event,actor,tier,old_limit,new_limit,reason,confidence,approval_id,generation,"
          "wall_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?)");
  // A record's system-clock time, unless given: its trail time, as the two clocks
  // stand apart now (for a record stamped now, the system clock's reading).
  const int64_t trail = r.unix_ms ? r.unix_ms : clock_.now();
  st.i64(1, trail).text(2, r.event).text(3, r.actor).text(4, r.tier);
  st.i64(11, r.wall_ms ? r.wall_ms : trail + (clock_.wall_now() - clock_.now()));
  st.i64(5, r.old_limit).i64(6, r.new_limit).text(7, r.reason).real(8, r.confidence).text(9, r.approval_id);
  st.i64(10, int64_t(r.generation));
  if (sqlite3_step(st.s) != SQLITE_DONE) return failed(error);
  return true;
}

bool AuditStore::append(const AuditRecord &r, std::string &error) { return insert_record(r, error); }

bool AuditStore::append_all(const std::vector<AuditRecord> &rs, std::string &error) {
  if (!exec("BEGIN IMMEDIATE", error)) return false;
  for (const AuditRecord &r : rs) {
    if (!insert_record(r, error)) {
      std::string ignored;
      exec("ROLLBACK", ignored);
      return false;
    }
  }
  return exec("COMMIT", error);
}

bool AuditStore::put_pending(const PendingApproval &p, const AuditRecord &r, std::string &error, bool *duplicate_id) {
  if (duplicate_id) *duplicate_id = false;
  if (id_in_use(p.id)) {  // also a closed question's: one id names one question in the trail
    if (duplicate_id) *duplicate_id = true;
    error = "approval id " + p.id + " is taken";
    return false;
  }
  if (!exec("BEGIN IMMEDIATE", error)) return false;
  Stmt st(db_,
          "INSERT INTO pending(id,tier,tier_name,old_limit,new_limit,reason,actor,confidence,"
          "created_unix_ms,expires_unix_ms) VALUES(?,?,?,?,?,?,?,?,?,?)");
  st.text(1, p.id).i64(2, p.tier).text(3, p.tier_name).i64(4, p.old_limit).i64(5, p.new_limit).text(6, p.reason);
  st.text(7, p.actor).real(8, p.confidence).i64(9, p.created_unix_ms).i64(10, p.expires_unix_ms);
  const int rc = sqlite3_step(st.s);
  if (rc != SQLITE_DONE || !insert_record(r, error)) {
    if (duplicate_id && sqlite3_extended_errcode(db_) == SQLITE_CONSTRAINT_PRIMARYKEY) *duplicate_id = true;
    if (error.empty()) failed(error);
    std::string ignored;
    exec("ROLLBACK", ignored);
    return false;
  }
  return exec("COMMIT", error);
}

bool AuditStore::close_pending(const std::string &id, const AuditRecord &r, std::string &error) {
  if (!exec("BEGIN IMMEDIATE", error)) return false;
  Stmt st(db_, "DELETE FROM pending WHERE id = ?");
  st.text(1, id);
  const int rc = sqlite3_step(st.s);
  if (rc != SQLITE_DONE || sqlite3_changes(db_) != 1 || !insert_record(r, error)) {
    if (rc != SQLITE_DONE) failed(error);
    if (error.empty()) error = "no pending approval " + id;
    std::string ignored;
    exec("ROLLBACK", ignored);
    return false;
  }
  return exec("COMMIT", error);
}

static PendingApproval read_pending(Stmt &st) {
  PendingApproval p;
  p.id = st.col_text(0);
  p.tier = uint32_t(sqlite3_column_int64(st.s, 1));
  p.tier_name = st.col_text(2);
  p.old_limit = uint32_t(sqlite3_column_int64(st.s, 3));
  p.new_limit = uint32_t(sqlite3_column_int64(st.s, 4));
  p.reason = st.col_text(5);
  p.actor = st.col_text(6);
  p.confidence = sqlite3_column_double(st.s, 7);
  p.created_unix_ms = sqlite3_column_int64(st.s, 8);
  p.expires_unix_ms = sqlite3_column_int64(st.s, 9);
  return p;
}

bool AuditStore::pending(std::vector<PendingApproval> &out, std::string &error) {
  out.clear();
  Stmt st(db_, "SELECT id,tier,tier_name,old_limit,new_limit,reason,actor,confidence,created_unix_ms,"
               "expires_unix_ms FROM pending ORDER BY created_unix_ms");
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) out.push_back(read_pending(st));
  return rc == SQLITE_DONE || failed(error);
}

std::vector<PendingApproval> AuditStore::pending() {
  std::vector<PendingApproval> out;
  std::string ignored;
  if (!pending(out, ignored)) out.clear();
  return out;
}

std::optional<PendingApproval> AuditStore::find_pending(const std::string &id, std::string &error) {
  error.clear();
  Stmt st(db_, "SELECT id,tier,tier_name,old_limit,new_limit,reason,actor,confidence,created_unix_ms,"
               "expires_unix_ms FROM pending WHERE id = ?");
  st.text(1, id);
  const int rc = sqlite3_step(st.s);
  if (rc == SQLITE_ROW) return read_pending(st);
  if (rc != SQLITE_DONE) failed(error);
  return std::nullopt;
}

std::vector<AuditRecord> AuditStore::since(int64_t unix_ms, size_t max_rows, bool *more, std::string *error) {
  std::vector<AuditRecord> out;
  // The newest rows: an operator asking for the trail wants what just happened.
  // Walked backwards on audit_time, so the cost is the rows returned, not the
  // trail's length (which only grows): anyone local may ask, on the loop's
  // thread. One row past max_rows says whether more were left out.
  Stmt st(db_, "SELECT id,unix_ms,event,actor,tier,old_limit,new_limit,reason,confidence,approval_id,"
               "generation,coalesce(wall_ms,unix_ms) FROM audit INDEXED BY audit_time WHERE unix_ms >= ? "
               "ORDER BY unix_ms DESC, id DESC LIMIT ?");
  st.i64(1, unix_ms).i64(2, int64_t(max_rows) + 1);
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
    AuditRecord r;
    r.id = sqlite3_column_int64(st.s, 0);
    r.unix_ms = sqlite3_column_int64(st.s, 1);
    r.event = st.col_text(2);
    r.actor = st.col_text(3);
    r.tier = st.col_text(4);
    r.old_limit = sqlite3_column_int64(st.s, 5);
    r.new_limit = sqlite3_column_int64(st.s, 6);
    r.reason = st.col_text(7);
    r.confidence = sqlite3_column_double(st.s, 8);
    r.approval_id = st.col_text(9);
    r.generation = uint64_t(sqlite3_column_int64(st.s, 10));
    r.wall_ms = sqlite3_column_int64(st.s, 11);
    out.push_back(std::move(r));
  }
  if (rc != SQLITE_DONE) {
    std::string why;
    failed(why);
    if (error) *error = why;
  }
  last_read_steps_ = sqlite3_stmt_status(st.s, SQLITE_STMTSTATUS_VM_STEP, 0);
  if (more) *more = out.size() > max_rows;
  if (out.size() > max_rows) out.pop_back();
  std::reverse(out.begin(), out.end());  // oldest first, as they happened
  return out;
}

std::optional<AuditStore::LimitRecord> AuditStore::last_limit(const std::string &tier) {
  Stmt st(db_, "SELECT new_limit, event, generation, unix_ms, id FROM audit WHERE tier = ? AND "
               "event IN ('published','approved','kept','start') ORDER BY id DESC LIMIT 1");
  st.text(1, tier);
  if (sqlite3_step(st.s) != SQLITE_ROW) return std::nullopt;
  return LimitRecord{sqlite3_column_int64(st.s, 0), st.col_text(1), uint64_t(sqlite3_column_int64(st.s, 2)),
                     sqlite3_column_int64(st.s, 3), sqlite3_column_int64(st.s, 4)};
}

int64_t AuditStore::prune(int64_t unix_ms, size_t max_rows, const std::vector<std::string> &tiers,
                          std::string &error, int64_t wall_ms) {
  std::string keep;  // integer ids only: safe to splice into the statement
  for (const std::string &t : tiers)
    if (const auto r = last_limit(t)) keep += (keep.empty() ? "" : ",") + std::to_string(r->id);
  // Walked forwards on audit_time: the cost is the rows deleted plus the few kept
  // ones in front of them, not the trail's length.
  const std::string sql =
      "DELETE FROM audit WHERE id IN (SELECT id FROM audit INDEXED BY audit_time WHERE unix_ms < ?1"
      " AND coalesce(wall_ms, unix_ms) < ?3" +
      (keep.empty() ? std::string() : " AND id NOT IN (" + keep + ")") +
      " AND (approval_id IS NULL OR approval_id NOT IN (SELECT id FROM pending)) ORDER BY unix_ms, id LIMIT ?2)";
  Stmt st(db_, sql.c_str());
  st.i64(1, unix_ms).i64(2, int64_t(std::min<size_t>(max_rows, INT64_MAX))).i64(3, wall_ms);
  if (!st.s || sqlite3_step(st.s) != SQLITE_DONE) {
    failed(error);
    return -1;
  }
  return sqlite3_changes64(db_);
}

std::vector<AuditStore::LimitChange> AuditStore::limits_since(const std::string &tier, int64_t unix_ms) {
  std::vector<LimitChange> out;
  constexpr const char *kEvents = "event IN ('published','approved','kept','start')";
  Stmt before(db_, (std::string("SELECT new_limit FROM audit INDEXED BY audit_time WHERE unix_ms < ? AND tier = ? AND ") +
                    kEvents + " ORDER BY unix_ms DESC, id DESC LIMIT 1").c_str());
  before.i64(1, unix_ms).text(2, tier);
  if (sqlite3_step(before.s) == SQLITE_ROW) out.push_back({INT64_MIN, sqlite3_column_int64(before.s, 0), "before"});
  Stmt after(db_, (std::string("SELECT unix_ms, old_limit, new_limit, event FROM audit INDEXED BY audit_time "
                               "WHERE unix_ms >= ? AND tier = ? AND ") +
                   kEvents + " ORDER BY unix_ms, id").c_str());
  after.i64(1, unix_ms).text(2, tier);
  while (sqlite3_step(after.s) == SQLITE_ROW) {
    const int64_t old_limit = sqlite3_column_int64(after.s, 1);
    if (out.empty() && old_limit >= 0) out.push_back({INT64_MIN, old_limit, "before"});
    out.push_back({sqlite3_column_int64(after.s, 0), sqlite3_column_int64(after.s, 2), after.col_text(3)});
  }
  return out;
}

bool AuditStore::id_in_use(const std::string &id) {
  Stmt st(db_, "SELECT 1 FROM pending WHERE id = ?1 UNION ALL SELECT 1 FROM audit WHERE approval_id = ?1 LIMIT 1");
  st.text(1, id);
  return sqlite3_step(st.s) == SQLITE_ROW;
}

}  // namespace sluice::policy_loop
