#include "commands.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <sstream>
#include <vector>

#include "text/utf8.hpp"

namespace sluice::daemon {

using policy_loop::AuditRecord;
using policy_loop::PendingApproval;

std::string json_escape(const std::string &raw) {
  // The trail holds text from models and servers: print only well-formed UTF-8.
  const std::string v = text::utf8_clean(raw);
  std::string o = "\"";
  for (unsigned char c : v) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += char(c);
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += char(c);
    }
  }
  return o + "\"";
}

namespace {

std::string iso_time(int64_t unix_ms) {
  const time_t t = time_t(unix_ms / 1000);
  tm g{};
  gmtime_r(&t, &g);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &g);
  return buf;
}

// expires_in_ms: on the trail's clock, which does not step (trail_clock.hpp).
std::string pending_json(const std::vector<PendingApproval> &ps, int64_t trail_now_ms) {
  std::string o = "[";
  for (size_t i = 0; i < ps.size(); ++i) {
    const auto &p = ps[i];
    o += (i ? "," : "") + std::string("{\"id\":") + json_escape(p.id) + ",\"tier\":" + json_escape(p.tier_name) +
         ",\"old_limit\":" + std::to_string(p.old_limit) + ",\"new_limit\":" + std::to_string(p.new_limit) +
         ",\"actor\":" + json_escape(p.actor) + ",\"confidence\":" + std::to_string(p.confidence) +
         ",\"reason\":" + json_escape(p.reason) + ",\"created_unix_ms\":" + std::to_string(p.created_unix_ms) +
         ",\"expires_unix_ms\":" + std::to_string(p.expires_unix_ms) +
         ",\"expires_in_ms\":" + std::to_string(p.expires_unix_ms - trail_now_ms) + "}";
  }
  return o + "]";
}

// The text forms go to a terminal: every field that came from outside (a
// model, a reason typed by someone) is shown, never obeyed (terminal_safe).
std::string pending_text(const std::vector<PendingApproval> &ps, int64_t trail_now_ms) {
  using text::terminal_safe;
  if (ps.empty()) return "no pending approvals\n";
  std::string o;
  for (const auto &p : ps)
    o += terminal_safe(p.id) + "  " + terminal_safe(p.tier_name) + "  " + std::to_string(p.old_limit) + " -> " +
         std::to_string(p.new_limit) + "  by " + terminal_safe(p.actor) + "  expires in " +
         std::to_string(std::max<int64_t>(0, p.expires_unix_ms - trail_now_ms) / 1000) + " s" +
         "\n    " + terminal_safe(p.reason) + "\n";
  return o;
}

constexpr size_t kAuditRowsPerReply = 10000;  // one reply line per record, held in memory

std::string audit_json(const std::vector<AuditRecord> &rs) {
  std::string o = "[";
  for (size_t i = 0; i < rs.size(); ++i) {
    const auto &r = rs[i];
    o += (i ? "," : "") + std::string("{\"id\":") + std::to_string(r.id) + ",\"unix_ms\":" +
         std::to_string(r.unix_ms) + ",\"wall_ms\":" + std::to_string(r.wall_ms) + ",\"event\":" + json_escape(r.event) + ",\"actor\":" + json_escape(r.actor) +
         ",\"tier\":" + json_escape(r.tier) + ",\"old_limit\":" + std::to_string(r.old_limit) +
         ",\"new_limit\":" + std::to_string(r.new_limit) + ",\"reason\":" + json_escape(r.reason) +
         ",\"confidence\":" + std::to_string(r.confidence) + ",\"approval_id\":" + json_escape(r.approval_id) +
         ",\"generation\":" + std::to_string(r.generation) + "}";
  }
  return o + "]";
}

std::string audit_text(const std::vector<AuditRecord> &rs) {
  using text::terminal_safe;
  std::string o;
  for (const auto &r : rs) {
    // The system clock's time; the trail's too where a step set them apart.
    const bool apart = std::llabs(r.wall_ms - r.unix_ms) >= 1000;
    o += iso_time(r.wall_ms) + (apart ? " (trail " + iso_time(r.unix_ms) + ")" : "") + "  " + terminal_safe(r.event) + "  " + terminal_safe(r.tier) + "  " +
         std::to_string(r.old_limit) + " -> " + std::to_string(r.new_limit) + "  by " + terminal_safe(r.actor) +
         (r.approval_id.empty() ? "" : "  [" + terminal_safe(r.approval_id) + "]") + "\n    " +
         terminal_safe(r.reason) + "\n";
  }
  return o.empty() ? "no audit records in that period\n" : o;
}

}  // namespace

namespace {

// The snapshot's fields, without the enclosing braces (shared by snapshot and overview).
std::string snapshot_fields(const policy_loop::Snapshot &s) {
  char buf[512];
  std::snprintf(buf, sizeof buf, "\"tick\":%llu,\"host_surge\":\"%s\",\"capacity_rps\":%.3f,\"tiers\":[",
                (unsigned long long)s.tick, policy_loop::surge_name(s.host_surge), s.capacity_rps);
  std::string o = buf;
  for (size_t i = 0; i < s.tiers.size(); ++i) {
    const auto &t = s.tiers[i];
    std::snprintf(buf, sizeof buf,
                  "%s{\"name\":%s,\"limit\":%u,\"baseline\":%u,\"floor\":%u,\"ceiling\":%u,"
                  "\"offered_rps\":%.3f,\"admitted_rps\":%.3f,\"denied_rps\":%.3f,\"ewma_rps\":%.3f,"
                  "\"forecast_rps\":%.3f,\"surge\":\"%s\"}",
                  i ? "," : "", json_escape(t.name).c_str(), t.limit, t.baseline, t.floor, t.ceiling, t.offered_rps,
                  t.admitted_rps, t.denied_rps, t.ewma_rps, t.forecast_rps, policy_loop::surge_name(t.surge));
    o += buf;
  }
  return o + "]";
}

std::string advisor_json(const LoopState &l) {
  std::string o = "{\"enabled\":" + std::string(l.advisor ? "true" : "false") +
                  ",\"kind\":" + json_escape(l.advisor_kind) + ",\"model\":" + json_escape(l.advisor_model);
  const advisor::AdvisorStats a = l.advisor.value_or(advisor::AdvisorStats{});
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", double(a.last_latency_ns) / 1e6);
  o += ",\"busy\":" + std::string(a.busy ? "true" : "false") + ",\"last_outcome\":" +
       json_escape(a.last_outcome ? advisor::outcome_name(*a.last_outcome) : "") + ",\"last_latency_ms\":" + buf +
       ",\"outcomes\":{";
  for (size_t i = 0; i < advisor::kAdvisorOutcomeCount; ++i)
    o += (i ? "," : "") + json_escape(advisor::outcome_name(static_cast<advisor::AdvisorOutcome>(i))) + ":" +
         std::to_string(a.outcomes[i]);
  return o + "}}";
}

}  // namespace

std::string snapshot_json(const policy_loop::PolicyEngine &engine) { return "{" + snapshot_fields(engine.snapshot()) + "}"; }

std::string overview_json(const LoopState &l) {
  const auto &g = l.governance;
  return "{" + snapshot_fields(l.snapshot) + ",\"trail_now_ms\":" + std::to_string(l.trail_now_ms) +
         ",\"pending\":" + pending_json(l.pending, l.trail_now_ms) +
         ",\"governance\":{\"requested\":" + std::to_string(g.requested) + ",\"approved\":" +
         std::to_string(g.approved) + ",\"rejected\":" + std::to_string(g.rejected) + ",\"expired\":" +
         std::to_string(g.expired) + ",\"published\":" + std::to_string(g.published) +
         "},\"audit\":{\"store_errors\":" + std::to_string(l.audit_store_errors) + "},\"advisor\":" +
         advisor_json(l) + "}";
}

std::string handle_command(policy_loop::PolicyEngine &engine, const std::string &line, const Peer &peer) {
  std::istringstream in(line);
  std::string cmd;
  in >> cmd;
  if (cmd == "pending") {
    std::string fmt;
    in >> fmt;
    std::vector<PendingApproval> ps;
    std::string err;
    if (!engine.store().pending(ps, err))  // an unreadable store is not "none pending"
      return "error\nthe audit store failed (" + err + "): pending approvals cannot be listed\n";
    const int64_t now = engine.store().trail_now();
    return "ok\n" + (fmt == "json" ? pending_json(ps, now) + "\n" : pending_text(ps, now));
  }
  if (cmd == "approve" || cmd == "reject") {
    std::string id, reason;
    in >> id;
    std::getline(in, reason);
    if (const auto s = reason.find_first_not_of(' '); s != std::string::npos) reason = reason.substr(s);
    else reason.clear();
    if (id.empty()) return "error\nusage: " + cmd + " ID\n";
    // Ids are hex digits (8 of them); anything else names no question, and is
    // not echoed raw.
    if (id.size() > 32 || id.find_first_not_of("0123456789abcdef") != std::string::npos)
      return "error\nno pending approval with id '" + text::terminal_safe(id.substr(0, 64)) +
             "' (ids are hex digits: see sluicectl pending)\n";
    // The reason is shown on operators' terminals and kept in the trail: one line
    // of printable text (sluicectl checks this too; other clients may not).
    for (size_t k = 0; k < reason.size(); ++k) {
      const auto c = static_cast<unsigned char>(reason[k]);
      if (c < 0x20 || c == 0x7f) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02X", c);
        return "error\nthe reason's byte " + std::to_string(k) + " (" + hex +
               ") is a control character: give the reason on one line, printable\n";
      }
    }
    const auto r = cmd == "approve" ? engine.approve(id, peer.uid, peer.gid, peer.groups)
                                    : engine.reject(id, reason, peer.uid, peer.gid, peer.groups);
    return (r.ok ? "ok\n" : "error\n") + r.message + "\n";
  }
  if (cmd == "audit" || cmd == "audit-ago") {
    // "audit-ago MS FMT": the last MS ms on the trail's clock (what sluicectl
    // --since sends; a new verb, so an older sluiced says "unknown command" and
    // sluicectl falls back); "audit FROM FMT": from trail time FROM.
    long long since = 0;
    std::string fmt;
    in >> since >> fmt;
    if (cmd == "audit-ago") {
      const long long now = engine.store().trail_now();
      since = since >= 0 && since < now ? now - since : 0;
    }
    bool more = false;
    std::string err;
    const auto rs = engine.store().since(since, kAuditRowsPerReply, &more, &err);
    if (!err.empty()) return "error\nthe audit store failed (" + err + "): the trail cannot be read\n";
    if (fmt == "json") return "ok\n" + audit_json(rs) + "\n";
    const std::string cut = more ? "(the newest " + std::to_string(rs.size()) +
                                       " records; older ones were left out: narrow with --since)\n"
                                 : "";
    return "ok\n" + cut + audit_text(rs);
  }
  if (cmd == "snapshot") return "ok\n" + snapshot_json(engine) + "\n";
  return "error\nunknown command '" + text::terminal_safe(cmd.substr(0, 32)) + "' (pending, approve, reject, audit, audit-ago, snapshot, overview)\n";
}

}  // namespace sluice::daemon
