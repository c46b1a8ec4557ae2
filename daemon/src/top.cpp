#include "top.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>

#include "advisor/json.hpp"
#include "control.hpp"
#include "policy_loop/audit_store.hpp"

namespace sluice::daemon {

namespace json = advisor::json;

// ---------------------------------------------------------------------------
// Parsing the overview reply

namespace {

struct Reader {
  std::string error;

  bool fail(const std::string &what) {
    if (error.empty()) error = what;
    return false;
  }
  const json::Value *member(const json::Value &obj, std::string_view key, json::Value::Type want,
                            const std::string &where) {
    const json::Value *v = obj.find(key);
    if (!v || v->type == json::Value::Type::null) return nullptr;
    if (v->type != want) {
      fail(where + std::string(key) + " is " + json::type_name(v->type) + ", not " + json::type_name(want));
      return nullptr;
    }
    return v;
  }
  void num(const json::Value &obj, std::string_view key, double &out, const std::string &where) {
    if (const auto *v = member(obj, key, json::Value::Type::number, where)) out = v->number;
  }
  template <class Int>
  void count(const json::Value &obj, std::string_view key, Int &out, const std::string &where) {
    if (const auto *v = member(obj, key, json::Value::Type::number, where)) {
      if (v->number < 0) fail(where + std::string(key) + " is negative");
      else out = Int(v->number);
    }
  }
  void i64(const json::Value &obj, std::string_view key, int64_t &out, const std::string &where) {
    if (const auto *v = member(obj, key, json::Value::Type::number, where)) out = int64_t(v->number);
  }
  void str(const json::Value &obj, std::string_view key, std::string &out, const std::string &where) {
    if (const auto *v = member(obj, key, json::Value::Type::string, where)) out = v->text;
  }
  void boolean(const json::Value &obj, std::string_view key, bool &out, const std::string &where) {
    if (const auto *v = member(obj, key, json::Value::Type::boolean, where)) out = v->boolean;
  }
  // Calls each(object) for every element of the array `key`; stops at a non-object.
  template <class Each>
  void objects(const json::Value &obj, std::string_view key, Each each) {
    if (const auto *arr = member(obj, key, json::Value::Type::array, "")) {
      for (const json::Value &e : arr->items) {
        if (e.type != json::Value::Type::object) {
          fail(std::string(key) + "[] holds a non-object");
          return;
        }
        each(e);
      }
    }
  }
};

}  // namespace

bool parse_overview(const std::string &text, Overview &out, std::string &error) {
  using T = json::Value::Type;
  std::string perr;
  const auto doc = json::parse(text, &perr);
  if (!doc) {
    error = "overview is not valid JSON: " + perr;
    return false;
  }
  if (doc->type != T::object) {
    error = std::string("overview is a JSON ") + json::type_name(doc->type) + ", not an object";
    return false;
  }
  out = Overview{};
  Reader r;
  r.count(*doc, "tick", out.tick, "");
  r.str(*doc, "host_surge", out.host_surge, "");
  r.num(*doc, "capacity_rps", out.capacity_rps, "");
  r.objects(*doc, "tiers", [&](const json::Value &t) {
    Overview::Tier o;
    const std::string w = "tiers[].";
    r.str(t, "name", o.name, w);
    r.count(t, "limit", o.limit, w);
    r.count(t, "baseline", o.baseline, w);
    r.count(t, "floor", o.floor, w);
    r.count(t, "ceiling", o.ceiling, w);
    r.num(t, "offered_rps", o.offered_rps, w);
    r.num(t, "admitted_rps", o.admitted_rps, w);
    r.num(t, "denied_rps", o.denied_rps, w);
    r.num(t, "ewma_rps", o.ewma_rps, w);
    r.num(t, "forecast_rps", o.forecast_rps, w);
    r.str(t, "surge", o.surge, w);
    out.tiers.push_back(std::move(o));
  });
  r.objects(*doc, "pending", [&](const json::Value &p) {
    Overview::Pending o;
    const std::string w = "pending[].";
    r.str(p, "id", o.id, w);
    r.str(p, "tier", o.tier, w);
    r.count(p, "old_limit", o.old_limit, w);
    r.count(p, "new_limit", o.new_limit, w);
    r.str(p, "actor", o.actor, w);
    r.num(p, "confidence", o.confidence, w);
    r.str(p, "reason", o.reason, w);
    r.i64(p, "created_unix_ms", o.created_unix_ms, w);
    r.i64(p, "expires_unix_ms", o.expires_unix_ms, w);
    if (p.find("expires_in_ms")) {
      int64_t in = 0;
      r.i64(p, "expires_in_ms", in, w);
      o.expires_in_ms = in;
    }
    out.pending.push_back(std::move(o));
  });
  if (const auto *g = r.member(*doc, "governance", T::object, "")) {
    const std::string w = "governance.";
    r.count(*g, "requested", out.requested, w);
    r.count(*g, "approved", out.approved, w);
    r.count(*g, "rejected", out.rejected, w);
    r.count(*g, "expired", out.expired, w);
    r.count(*g, "published", out.published, w);
  }
  if (const auto *a = r.member(*doc, "audit", T::object, "")) r.count(*a, "store_errors", out.audit_store_errors, "audit.");
  if (const auto *a = r.member(*doc, "advisor", T::object, "")) {
    const std::string w = "advisor.";
    r.boolean(*a, "enabled", out.advisor_enabled, w);
    r.str(*a, "kind", out.advisor_kind, w);
    r.str(*a, "model", out.advisor_model, w);
    r.boolean(*a, "busy", out.advisor_busy, w);
    r.str(*a, "last_outcome", out.advisor_last_outcome, w);
    r.num(*a, "last_latency_ms", out.advisor_last_latency_ms, w);
    if (const auto *oc = r.member(*a, "outcomes", T::object, w)) {
      for (const json::Member &m : oc->members) {
        if (m.value.type != T::number || m.value.number < 0) {
          r.fail("advisor.outcomes." + m.key + " is not a count");
          break;
        }
        out.advisor_outcomes.emplace_back(m.key, uint64_t(m.value.number));
      }
    }
  }
  if (!r.error.empty()) {
    error = "overview: " + r.error;
    return false;
  }
  return true;
}

std::vector<TierRates> compute_rates(const Status &prev, const Status &cur, double seconds) {
  std::vector<TierRates> out(cur.tiers.size());
  if (seconds <= 0) return out;
  for (size_t i = 0; i < cur.tiers.size(); ++i) {
    const TierStatus &c = cur.tiers[i];
    const auto it = std::find_if(prev.tiers.begin(), prev.tiers.end(),
                                 [&](const TierStatus &p) { return p.name == c.name; });
    if (it == prev.tiers.end()) continue;
    const core::TierCounters &a = it->counters, &b = c.counters;
    // A counter that went down: the segment was reset between frames.
    if (b.admitted < a.admitted || b.denied_window < a.denied_window || b.denied_cost < a.denied_cost ||
        b.denied_closed < a.denied_closed)
      continue;
    const double admitted = double(b.admitted - a.admitted);
    const double denied = double((b.denied_window - a.denied_window) + (b.denied_cost - a.denied_cost) +
                                 (b.denied_closed - a.denied_closed));
    out[i] = TierRates{true, (admitted + denied) / seconds, admitted / seconds, denied / seconds};
  }
  return out;
}

// ---------------------------------------------------------------------------
// Rendering

namespace {

constexpr const char *kGreen = "\x1b[32m";
constexpr const char *kYellow = "\x1b[33;1m";
constexpr const char *kRed = "\x1b[31;1m";
constexpr const char *kBold = "\x1b[1m";
constexpr const char *kInverse = "\x1b[7m";
constexpr const char *kReset = "\x1b[0m";

// Length of the UTF-8 sequence starting with `c` (0: not a lead byte).
size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

// Text from outside (tier names, reasons, the banner file) made safe to print
// in one column per character: control characters become spaces; malformed
// UTF-8, four-byte sequences and the wide (East Asian) ranges become '?'.
std::string sanitize(std::string_view in) {
  std::string o;
  for (size_t i = 0; i < in.size();) {
    const unsigned char c = static_cast<unsigned char>(in[i]);
    if (c < 0x20 || c == 0x7f) {
      o += ' ';
      ++i;
      continue;
    }
    const size_t n = utf8_len(c);
    bool ok = n != 0 && n < 4 && i + n <= in.size();
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : (c & 0x0F);
    for (size_t k = 1; ok && k < n; ++k) {
      const unsigned char d = static_cast<unsigned char>(in[i + k]);
      if ((d & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if (ok && n == 3) {
      const bool wide = (cp >= 0x1100 && cp <= 0x115F) || (cp >= 0x2E80 && cp <= 0xA4CF) ||
                        (cp >= 0xAC00 && cp <= 0xD7A3) || (cp >= 0xF900 && cp <= 0xFAFF) ||
                        (cp >= 0xFE30 && cp <= 0xFE4F) || (cp >= 0xFF00 && cp <= 0xFF60) ||
                        (cp >= 0xFFE0 && cp <= 0xFFE6);
      if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF) || wide) ok = false;  // overlong, surrogate, wide
    }
    if (cp >= 0x80 && cp <= 0x9F) ok = false;  // C1 controls
    if (!ok) {
      o += '?';
      i += std::max<size_t>(1, n == 0 ? 1 : std::min(n, in.size() - i));
      continue;
    }
    o.append(in.substr(i, n));
    i += n;
  }
  return o;
}

// Columns of plain (sanitized) text.
size_t columns(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

// A screen line: text segments, each with an optional SGR colour.
class Line {
 public:
  Line() = default;
  explicit Line(std::string text, const char *sgr = nullptr) { add(std::move(text), sgr); }
  Line &add(std::string text, const char *sgr = nullptr) {
    segs_.push_back({sanitize(text), sgr});
    return *this;
  }
  size_t width() const {
    size_t n = 0;
    for (const auto &s : segs_) n += columns(s.text);
    return n;
  }
  // At most `width` columns; colours only with `color`.
  std::string str(size_t width, bool color) const {
    std::string o;
    size_t used = 0;
    for (const auto &s : segs_) {
      if (used >= width) break;
      std::string part;
      for (size_t i = 0; i < s.text.size() && used < width;) {
        const size_t n = std::max<size_t>(1, utf8_len(static_cast<unsigned char>(s.text[i])));
        part.append(s.text, i, n);
        i += n;
        ++used;
      }
      if (color && s.sgr && !part.empty()) o += std::string(s.sgr) + part + kReset;
      else o += part;
    }
    return o;
  }

 private:
  struct Seg {
    std::string text;
    const char *sgr;
  };
  std::vector<Seg> segs_;
};

std::string printf_str(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
std::string printf_str(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

std::string pad_right(std::string s, size_t w) {  // left-aligned, cut to w columns
  s = sanitize(s);
  std::string o;
  size_t used = 0;
  for (size_t i = 0; i < s.size() && used < w;) {
    const size_t n = std::max<size_t>(1, utf8_len(static_cast<unsigned char>(s[i])));
    o.append(s, i, n);
    i += n;
    ++used;
  }
  return used < w ? o + std::string(w - used, ' ') : o;
}

// A rate in at most 7 columns.
std::string fmt_rate(double v) {
  if (v < 0) v = 0;
  if (v < 10'000) return printf_str("%.1f", v);
  if (v < 1e6) return printf_str("%.1fk", v / 1e3);
  if (v < 1e9) return printf_str("%.1fM", v / 1e6);
  return printf_str("%.1fG", v / 1e9);
}

// A count in at most 8 columns.
std::string fmt_count(uint64_t v) {
  if (v < 100'000'000ULL) return std::to_string(v);
  if (v < 100'000'000'000ULL) return printf_str("%.1fM", double(v) / 1e6);
  if (v < 100'000'000'000'000ULL) return printf_str("%.1fG", double(v) / 1e9);
  return printf_str("%.1fT", double(v) / 1e12);
}

std::string fmt_duration_ms(int64_t ms) {
  if (ms < 0) ms = 0;
  if (ms < 1000) return std::to_string(ms) + "ms";
  if (ms < 60'000) return printf_str("%.1fs", double(ms) / 1e3);
  const int64_t s = ms / 1000;
  if (s < 3600) return printf_str("%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  return printf_str("%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
}

const char *surge_color(const std::string &s) {
  if (s == "normal") return kGreen;
  if (s == "surge") return kYellow;
  if (s == "ddos") return kRed;
  return nullptr;
}

const Overview::Tier *find_tier(const Overview &o, const std::string &name) {
  for (const auto &t : o.tiers)
    if (t.name == name) return &t;
  return nullptr;
}

// Lines grouped so that a short terminal drops the least useful groups first.
struct Block {
  std::vector<Line> lines;
  int keep = 0;            // higher: dropped later; kMust: never dropped as a group
  bool shrinkable = false;  // loses lines from its end one at a time
};
constexpr int kMust = 1000;

}  // namespace

size_t visible_width(const std::string &line) {
  size_t n = 0;
  for (size_t i = 0; i < line.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(line[i]);
    if (c == 0x1b) {  // CSI: ESC [ params final(0x40..0x7e)
      if (i + 1 < line.size() && line[i + 1] == '[') {
        i += 2;
        while (i < line.size() && !(line[i] >= 0x40 && line[i] <= 0x7e)) ++i;
      }
      continue;
    }
    if ((c & 0xC0) != 0x80) ++n;
  }
  return n;
}

std::vector<std::string> render_top(const TopFrame &f, int width_in, int height_in, bool color) {
  const size_t width = size_t(std::max(width_in, 1));
  const size_t height = size_t(std::max(height_in, 0));
  std::vector<Block> blocks;
  const Overview &ov = f.overview;
  const Status &st = f.status;

  // Header: who, when; then the daemon's state.
  {
    Block b{{}, kMust};
    char clock[16] = "";
    const time_t t = time_t(f.now_unix_ms / 1000);
    tm lt{};
    localtime_r(&t, &lt);
    std::strftime(clock, sizeof clock, "%H:%M:%S", &lt);
    const std::string left = "sluice top  segment ";
    const std::string seg = sanitize(f.segment);
    const size_t room = width > columns(left) + 10 ? width - columns(left) - 10 : 0;  // 10: "  HH:MM:SS"
    std::string shown = seg;
    if (columns(seg) > room) shown = pad_right(seg, room > 3 ? room - 3 : room) + (room > 3 ? "..." : "");
    const size_t used = columns(left) + columns(shown);
    Line l1;
    l1.add(left, kBold).add(shown, kBold);
    if (width >= used + 2 + columns(clock)) l1.add(std::string(width - used - columns(clock), ' ') + clock);
    b.lines.push_back(l1);

    Line l2;
    if (!f.status_ok) {
      l2.add("segment unavailable: ", kRed).add(f.status_error);
    } else {
      l2.add("daemon pid " + std::to_string(st.daemon_pid) + " ");
      if (st.daemon_alive) l2.add("alive", kGreen);
      else if (st.daemon_state == DaemonState::hung) l2.add("NOT ANSWERING", kRed);
      else l2.add("NOT RUNNING", kRed);
      l2.add(st.heartbeat_age_ns < 0 ? "  stopped cleanly"
                                     : "  heartbeat " + fmt_duration_ms(st.heartbeat_age_ns / 1'000'000));
      l2.add("  gen " + std::to_string(st.policy_generation));
      l2.add("  host ");
      if (f.overview_ok) l2.add(ov.host_surge.empty() ? "?" : ov.host_surge, surge_color(ov.host_surge));
      else l2.add("?");
      if (f.overview_ok) l2.add("  tick " + std::to_string(ov.tick));
    }
    b.lines.push_back(l2);
    blocks.push_back(std::move(b));
  }
  if (!f.banner.empty()) blocks.push_back({{Line(f.banner, kBold)}, 900});
  if (!f.overview_ok) {
    const bool down = !f.status_ok || !st.daemon_alive || f.daemon_unreachable;
    Line l;
    const bool hung = f.status_ok && st.daemon_state == DaemonState::hung;
    l.add(hung ? "daemon not answering: loop view unavailable"
               : down ? "daemon not running: loop view unavailable" : "loop view unavailable", kRed);
    if (!f.overview_error.empty()) l.add(" (" + f.overview_error + ")");
    blocks.push_back({{l}, 950});
  }

  // The tier table.
  if (f.status_ok) {
    size_t name_w = 4;
    for (const auto &t : st.tiers) name_w = std::max(name_w, columns(sanitize(t.name)));
    name_w = std::min(name_w, 10 + (width > 80 ? width - 80 : 0));
    blocks.push_back({{Line()}, 10});
    Block b{{}, kMust};
    b.lines.push_back(Line(pad_right("tier", name_w) +
                               printf_str(" %8s %6s %7s %7s %7s %5s %-6s %7s %8s", "lim/base", "keys", "offer/s",
                                          "admit/s", "deny/s", "deny%", "surge", "fcst/s", "admitted"),
                           kBold));
    for (size_t i = 0; i < st.tiers.size(); ++i) {
      const TierStatus &t = st.tiers[i];
      const TierRates r = i < f.rates.size() ? f.rates[i] : TierRates{};
      const Overview::Tier *lt = f.overview_ok ? find_tier(ov, t.name) : nullptr;
      std::string lim = std::to_string(t.limit);
      if (lt && lt->baseline != t.limit) lim += "/" + std::to_string(lt->baseline);
      std::string pct = "-";
      if (r.known && r.offered > 0) {
        const double p = 100.0 * r.denied / r.offered;
        pct = p >= 99.95 ? "100%" : printf_str("%.1f%%", p);
      }
      const std::string surge = lt && !lt->surge.empty() ? lt->surge : "-";
      Line l;
      l.add(pad_right(t.name, name_w) +
            printf_str(" %8s %6s %7s %7s %7s %5s ", lim.c_str(), fmt_count(t.keys).c_str(),
                       r.known ? fmt_rate(r.offered).c_str() : "-", r.known ? fmt_rate(r.admitted).c_str() : "-",
                       r.known ? fmt_rate(r.denied).c_str() : "-", pct.c_str()));
      l.add(pad_right(surge, 6), surge_color(surge));
      l.add(printf_str(" %7s %8s", lt ? fmt_rate(lt->forecast_rps).c_str() : "-",
                       fmt_count(t.counters.admitted).c_str()));
      b.lines.push_back(l);
    }
    if (st.tiers.empty()) b.lines.push_back(Line("(no tiers)"));
    blocks.push_back(std::move(b));

    // Totals since the segment was created (admitted x today's $/req, not the
    // since-start revenue of /metrics): the least needed, dropped first.
    Block tot{{}, 20};
    tot.lines.push_back(Line());
    tot.lines.push_back(Line(pad_right("totals", name_w) + printf_str(" %8s %8s %8s %8s %11s %6s", "admitted",
                                                                      "den:win", "den:cost", "closed", "adm x $/req",
                                                                      "$/req"),
                             kBold));
    for (const TierStatus &t : st.tiers) {
      tot.lines.push_back(Line(
          pad_right(t.name, name_w) +
          printf_str(" %8s %8s %8s %8s %11.2f %6.2f", fmt_count(t.counters.admitted).c_str(),
                     fmt_count(t.counters.denied_window).c_str(), fmt_count(t.counters.denied_cost).c_str(),
                     fmt_count(t.counters.denied_closed).c_str(),
                     double(t.counters.admitted) * t.revenue_per_request, t.revenue_per_request)));
    }
    blocks.push_back(std::move(tot));
  }

  // Governance and the advisor (the loop view).
  size_t pending_block = SIZE_MAX, pending_head_block = SIZE_MAX;
  if (f.overview_ok) {
    blocks.push_back({{Line()}, 15});
    pending_head_block = blocks.size();
    blocks.push_back({{Line()}, 800});  // filled in below, once we know how many fit
    pending_block = blocks.size();
    Block pb{{}, 30, true};
    for (size_t i = 0; i < ov.pending.size() && i < 8; ++i) {
      const Overview::Pending &p = ov.pending[i];
      const int64_t left = p.expires_in_ms ? *p.expires_in_ms : p.expires_unix_ms - f.now_unix_ms;
      Line l;
      l.add("  " + pad_right(p.id, 8) + "  " + pad_right(p.tier, 10) +
            printf_str("  %5u -> %-5u", p.old_limit, p.new_limit));
      l.add(left > 0 ? "  expires in " + fmt_duration_ms(left) : "  expiring");
      l.add("  by " + p.actor);
      if (!p.reason.empty()) l.add("  " + p.reason);
      pb.lines.push_back(l);
    }
    blocks.push_back(std::move(pb));
    Line gov("governance  requested " + std::to_string(ov.requested) + "  approved " +
             std::to_string(ov.approved) + "  rejected " + std::to_string(ov.rejected) + "  expired " +
             std::to_string(ov.expired) + "  published " + std::to_string(ov.published));
    Block gb{{gov}, 700};
    // A failed audit write holds publication back: the operator must see it here.
    if (ov.audit_store_errors > 0)
      gb.lines.push_back(Line("audit store errors " + std::to_string(ov.audit_store_errors) +
                              " since start: see sluiced's log", kRed));
    blocks.push_back(std::move(gb));
    Line adv;
    adv.add("advisor  ");
    if (!ov.advisor_enabled || ov.advisor_kind.empty() || ov.advisor_kind == "none") {
      adv.add("rules only (no LLM advisor)");
    } else {
      adv.add(ov.advisor_kind + (ov.advisor_model.empty() ? "" : " " + ov.advisor_model));
      adv.add(ov.advisor_busy ? "  busy" : "  idle", ov.advisor_busy ? kYellow : nullptr);
      if (!ov.advisor_last_outcome.empty())
        adv.add("  last " + ov.advisor_last_outcome + " " + printf_str("%.0fms", ov.advisor_last_latency_ms));
      std::string counts;
      for (const auto &[k, v] : ov.advisor_outcomes)
        if (v) counts += "  " + k + " " + std::to_string(v);
      adv.add(counts.empty() ? "  no answers yet" : counts);
    }
    blocks.push_back({{adv}, 600});
  }

  // Footer.
  if (f.interactive) {
    Line footer;
    footer.add(" q quit ", kInverse);
    footer.add(printf_str("  refresh %.1fs", double(f.interval_ms) / 1e3));
    blocks.push_back({{footer}, kMust});
  }

  // Fit the height: drop (or shrink) the lowest-valued groups first.
  auto total = [&] {
    size_t n = 0;
    for (const auto &b : blocks) n += b.lines.size();
    return n;
  };
  while (total() > height) {
    Block *victim = nullptr;
    for (auto &b : blocks)
      if (!b.lines.empty() && b.keep < kMust && (!victim || b.keep < victim->keep)) victim = &b;
    if (!victim) break;
    if (victim->shrinkable) victim->lines.pop_back();
    else victim->lines.clear();
  }
  if (pending_head_block != SIZE_MAX && !blocks[pending_head_block].lines.empty()) {
    const size_t shown = blocks[pending_block].lines.size();
    Line h;
    h.add("pending approvals  ");
    h.add(std::to_string(ov.pending.size()), ov.pending.empty() ? nullptr : kYellow);
    if (shown < ov.pending.size()) h.add("  (" + std::to_string(shown) + " shown)");
    if (!ov.pending.empty()) h.add("  sluicectl approve|reject ID");
    blocks[pending_head_block].lines[0] = h;
  }

  std::vector<std::string> out;
  for (const auto &b : blocks)
    for (const auto &l : b.lines) out.push_back(l.str(width, color));
  if (out.size() > height) {  // only the must-keep groups are left: keep the top and the footer
    const std::string last = out.back();
    out.resize(height);
    if (f.interactive && !out.empty()) out.back() = last;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Collecting a frame

namespace {

std::string read_banner(const std::string &path) {
  if (path.empty()) return "";
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  // At most 4 KiB: a huge file, or /dev/zero, costs nothing more.
  std::string line(4096, '\0');
  in.read(line.data(), std::streamsize(line.size()));
  line.resize(size_t(in.gcount()));
  if (const auto nl = line.find('\n'); nl != std::string::npos) line.resize(nl);
  return line;
}

}  // namespace

TopFrame collect_frame(const TopOptions &opt, const Status *prev, double seconds_since_prev) {
  TopFrame f;
  f.segment = opt.segment;
  f.interval_ms = opt.interval_ms;
  f.status_ok = read_status(opt.segment, f.status, f.status_error);
  if (f.status_ok && prev) f.rates = compute_rates(*prev, f.status, seconds_since_prev);
  std::string reply, error;
  // A hung daemon costs one second a frame, not the socket default (q stays responsive).
  if (!daemon_request(opt.segment, "overview", reply, error, 1000)) {
    f.overview_error = error;
    f.daemon_unreachable = true;
  } else {
    const auto nl = reply.find('\n');
    const std::string head = reply.substr(0, nl);
    std::string body = nl == std::string::npos ? "" : reply.substr(nl + 1);
    while (!body.empty() && (body.back() == '\n' || body.back() == '\r')) body.pop_back();
    if (head != "ok") {
      f.overview_error = "sluiced: " + body.substr(0, 200);
    } else {
      f.overview_ok = parse_overview(body, f.overview, f.overview_error);
    }
  }
  f.banner = read_banner(opt.banner_file);
  f.now_unix_ms = policy_loop::unix_ms_now();
  return f;
}

// ---------------------------------------------------------------------------
// The terminal loop

namespace {

int g_signal_pipe[2] = {-1, -1};

extern "C" void on_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  if (g_signal_pipe[1] >= 0) (void)!::write(g_signal_pipe[1], &b, 1);
  errno = saved;
}

bool write_all(int fd, const std::string &s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += size_t(n);
  }
  return true;
}

void terminal_size(int fd, int &w, int &h) {
  winsize ws{};
  w = 80;
  h = 24;
  if (::ioctl(fd, TIOCGWINSZ, &ws) == 0) {
    if (ws.ws_col > 0) w = ws.ws_col;
    if (ws.ws_row > 0) h = ws.ws_row;
  }
}

// Raw-ish terminal mode and the alternate screen, undone by leave() or the destructor.
class Terminal {
 public:
  bool enter(std::string &error) {
    if (::tcgetattr(STDIN_FILENO, &saved_) != 0) {
      error = std::string("tcgetattr: ") + std::strerror(errno);
      return false;
    }
    termios raw = saved_;
    raw.c_lflag &= ~tcflag_t(ICANON | ECHO);  // ISIG stays: Ctrl-C is SIGINT, handled
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    if (::tcsetattr(STDIN_FILENO, TCSANOW, &raw) != 0) {
      error = std::string("tcsetattr: ") + std::strerror(errno);
      return false;
    }
    active_ = true;
    // Alternate screen, cursor hidden, no autowrap, cleared.
    write_all(STDOUT_FILENO, "\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[H\x1b[2J");
    return true;
  }
  void leave() {
    if (!active_) return;
    active_ = false;
    write_all(STDOUT_FILENO, "\x1b[0m\x1b[?7h\x1b[?25h\x1b[?1049l");
    ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  ~Terminal() { leave(); }

 private:
  termios saved_{};
  bool active_ = false;
};

void draw(const std::vector<std::string> &lines, int width) {
  std::string o = "\x1b[H";
  for (size_t i = 0; i < lines.size(); ++i) {
    o += lines[i];
    // Clear the rest of the row; not after a full row (autowrap is off, so the
    // cursor sits on the last column and the erase would take its character).
    if (visible_width(lines[i]) < size_t(width)) o += "\x1b[K";
    if (i + 1 < lines.size()) o += "\r\n";
  }
  o += "\x1b[J";
  write_all(STDOUT_FILENO, o);
}

}  // namespace

int run_top(const TopOptions &opt) {
  using clock = std::chrono::steady_clock;
  if (opt.once) {
    TopFrame f = collect_frame(opt, nullptr, 0);
    f.interactive = false;
    int w = 80, h = 24;
    if (::isatty(STDOUT_FILENO)) terminal_size(STDOUT_FILENO, w, h);
    else h = 1000;  // to a file or pipe: the whole frame, 80 columns
    for (const std::string &l : render_top(f, w, h, false)) std::cout << l << "\n";
    std::cout.flush();
    // The frame clips its lines to the width; a script (or cron) needs the whole
    // reason, and a status it can test, as `sluicectl status` gives.
    if (!f.status_ok) {
      std::cerr << "sluicectl: segment '" << opt.segment << "': " << f.status_error << "\n";
      return 1;
    }
    return 0;
  }
  if (!::isatty(STDIN_FILENO) || !::isatty(STDOUT_FILENO)) {
    std::cerr << "sluicectl: top needs a terminal; use --once\n";
    return 2;
  }
  if (::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    std::cerr << "sluicectl: pipe: " << std::strerror(errno) << "\n";
    return 1;
  }
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: poll() returns EINTR, and the pipe wakes it anyway
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH, SIGTSTP, SIGCONT}) ::sigaction(sig, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  Terminal term;
  std::string error;
  if (!term.enter(error)) {
    std::cerr << "sluicectl: " << error << "\n";
    return 1;
  }
  Status prev;
  bool have_prev = false;
  clock::time_point prev_at{};
  clock::time_point next = clock::now();
  TopFrame frame;
  bool fresh = true;  // collect new data (false: only redraw, e.g. on resize)
  int rc = 0;
  for (;;) {
    if (fresh) {
      const clock::time_point now = clock::now();
      const double secs = have_prev ? std::chrono::duration<double>(now - prev_at).count() : 0;
      frame = collect_frame(opt, have_prev ? &prev : nullptr, secs);
      if (frame.status_ok) {
        prev = frame.status;
        prev_at = now;
        have_prev = true;
      } else {
        have_prev = false;
      }
      next = now + std::chrono::milliseconds(opt.interval_ms);
    }
    int w, h;
    terminal_size(STDOUT_FILENO, w, h);
    draw(render_top(frame, w, h, true), w);
    fresh = false;

    bool quit = false, redraw = false;
    while (!quit && !redraw && !fresh) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next - clock::now()).count();
      if (left <= 0) {
        fresh = true;
        break;
      }
      pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {g_signal_pipe[0], POLLIN, 0}};
      const int n = ::poll(fds, 2, int(left));
      if (n < 0) {
        if (errno == EINTR) continue;
        rc = 1;
        quit = true;
        break;
      }
      if (n == 0) {
        fresh = true;
        break;
      }
      if (fds[1].revents & POLLIN) {
        unsigned char sigs[32];
        const ssize_t k = ::read(g_signal_pipe[0], sigs, sizeof sigs);
        for (ssize_t i = 0; i < k; ++i) {
          const int sig = sigs[i];
          if (sig == SIGWINCH) {
            redraw = true;
          } else if (sig == SIGTSTP) {  // Ctrl-Z: give the terminal back, then stop
            term.leave();
            ::signal(SIGTSTP, SIG_DFL);
            ::raise(SIGTSTP);
            // ... continued (fg): take it again.
            ::sigaction(SIGTSTP, &sa, nullptr);
            if (!term.enter(error)) {
              rc = 1;
              quit = true;
            }
            redraw = true;
          } else if (sig == SIGCONT) {
            redraw = true;
          } else {
            rc = sig == SIGINT ? 0 : 128 + sig;
            quit = true;
          }
        }
      }
      if (!quit && (fds[0].revents & (POLLIN | POLLHUP | POLLERR))) {
        char buf[64];
        const ssize_t k = ::read(STDIN_FILENO, buf, sizeof buf);
        if (k <= 0) {
          if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
          quit = true;  // the terminal went away
          break;
        }
        for (ssize_t i = 0; i < k; ++i)
          if (buf[i] == 'q' || buf[i] == 'Q' || buf[i] == 3) quit = true;
      }
    }
    if (quit) break;
  }
  term.leave();
  return rc;
}

}  // namespace sluice::daemon
