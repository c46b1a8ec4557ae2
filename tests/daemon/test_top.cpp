// `sluicectl top`'s pure parts: parsing the overview reply, rates from counter
// deltas, and rendering a frame into lines that fit the terminal.
#include "top.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace sluice::daemon;

namespace {

const char *kOverview =
    R"({"tick":12,"host_surge":"surge","capacity_rps":0.0,)"
    R"("tiers":[{"name":"enterprise","limit":40,"baseline":15,"floor":1,"ceiling":120,"offered_rps":1.0,)"
    R"("admitted_rps":1.0,"denied_rps":0.0,"ewma_rps":1.0,"forecast_rps":33.5,"surge":"ddos"},)"
    R"({"name":"pro","limit":8,"baseline":8,"floor":1,"ceiling":40,"offered_rps":1.0,)"
    R"("admitted_rps":1.0,"denied_rps":0.0,"ewma_rps":1.0,"forecast_rps":1.2,"surge":"normal"}],)"
    R"("pending":[{"id":"3f9c0a1e","tier":"pro","old_limit":8,"new_limit":20,"actor":"rules","confidence":1.0,)"
    R"("reason":"pro: demand well above the limit for a long while, and a long reason that does not fit","created_unix_ms":1,"expires_unix_ms":1000042000},)"
    R"({"id":"aaaabbbb","tier":"enterprise","old_limit":15,"new_limit":100,"actor":"advisor","confidence":0.9,)"
    R"("reason":"r","created_unix_ms":1,"expires_unix_ms":1000100000}],)"
    R"("governance":{"requested":7,"approved":2,"rejected":1,"expired":3,"published":11},)"
    R"("advisor":{"enabled":true,"kind":"ollama","model":"qwen2.5:0.5b","busy":true,"last_outcome":"timeout",)"
    R"("last_latency_ms":812.0,"outcomes":{"ok":4,"timeout":2,"malformed":0}}})";

Status two_tiers() {
  Status s;
  s.segment = "seg";
  s.daemon_pid = 4242;
  s.daemon_alive = true;
  s.daemon_state = DaemonState::alive;
  s.heartbeat_age_ns = 120'000'000;
  s.policy_generation = 9;
  TierStatus e;
  e.name = "enterprise";
  e.limit = 40;
  e.keys = 3;
  e.revenue_per_request = 0.2;
  e.counters.admitted = 1000;
  e.counters.denied_window = 500;
  TierStatus p;
  p.name = "pro";
  p.limit = 8;
  p.keys = 1;
  p.counters.admitted = 10;
  s.tiers = {e, p};
  return s;
}

TopFrame frame() {
  TopFrame f;
  f.segment = "seg";
  f.status_ok = true;
  f.status = two_tiers();
  std::string error;
  EXPECT_TRUE(parse_overview(kOverview, f.overview, error)) << error;
  f.overview_ok = true;
  f.now_unix_ms = 1'000'000'000;
  Status prev = f.status;
  prev.tiers[0].counters.admitted -= 30;       // 30 admitted
  prev.tiers[0].counters.denied_window -= 10;  // 10 denied, over 2 s
  f.rates = compute_rates(prev, f.status, 2.0);
  return f;
}

std::string joined(const std::vector<std::string> &lines) {
  std::string o;
  for (const auto &l : lines) o += l + "\n";
  return o;
}

void expect_fits(const std::vector<std::string> &lines, int w, int h) {
  EXPECT_LE(lines.size(), size_t(h));
  for (const auto &l : lines) EXPECT_LE(visible_width(l), size_t(w)) << "'" << l << "'";
}

}  // namespace

TEST(TopParse, ReadsEveryPart) {
  Overview o;
  std::string error;
  ASSERT_TRUE(parse_overview(kOverview, o, error)) << error;
  EXPECT_EQ(o.tick, 12u);
  EXPECT_EQ(o.host_surge, "surge");
  ASSERT_EQ(o.tiers.size(), 2u);
  EXPECT_EQ(o.tiers[0].baseline, 15u);
  EXPECT_DOUBLE_EQ(o.tiers[0].forecast_rps, 33.5);
  EXPECT_EQ(o.tiers[0].surge, "ddos");
  ASSERT_EQ(o.pending.size(), 2u);
  EXPECT_EQ(o.pending[0].id, "3f9c0a1e");
  EXPECT_EQ(o.pending[0].new_limit, 20u);
  EXPECT_EQ(o.pending[0].expires_unix_ms, 1000042000);
  EXPECT_EQ(o.published, 11u);
  EXPECT_EQ(o.expired, 3u);
  EXPECT_TRUE(o.advisor_enabled && o.advisor_busy);
  EXPECT_EQ(o.advisor_model, "qwen2.5:0.5b");
  ASSERT_EQ(o.advisor_outcomes.size(), 3u);
  EXPECT_EQ(o.advisor_outcomes[1].first, "timeout");
  EXPECT_EQ(o.advisor_outcomes[1].second, 2u);
}

TEST(TopParse, RefusesBadInput) {
  Overview o;
  std::string error;
  EXPECT_FALSE(parse_overview("", o, error));
  EXPECT_FALSE(parse_overview("[1]", o, error));
  EXPECT_FALSE(parse_overview(R"({"tick":"12"})", o, error));
  EXPECT_NE(error.find("tick"), std::string::npos) << error;
  EXPECT_FALSE(parse_overview(R"({"tiers":[1]})", o, error));
  EXPECT_FALSE(parse_overview(R"({"governance":{"approved":-1}})", o, error));
  EXPECT_TRUE(parse_overview("{}", o, error)) << error;  // missing members keep defaults
}

TEST(TopRates, FromCounterDeltas) {
  Status a = two_tiers(), b = two_tiers();
  b.tiers[0].counters.admitted += 30;
  b.tiers[0].counters.denied_window += 6;
  b.tiers[0].counters.denied_closed += 4;
  const auto r = compute_rates(a, b, 2.0);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_TRUE(r[0].known);
  EXPECT_DOUBLE_EQ(r[0].admitted, 15.0);
  EXPECT_DOUBLE_EQ(r[0].denied, 5.0);
  EXPECT_DOUBLE_EQ(r[0].offered, 20.0);
  EXPECT_TRUE(r[1].known);
  EXPECT_DOUBLE_EQ(r[1].offered, 0.0);
  // A reset between frames (counters went down): unknown, not a huge number.
  b.tiers[1].counters.admitted = 0;
  EXPECT_FALSE(compute_rates(a, b, 2.0)[1].known);
}

TEST(TopRender, ShowsTheFrameIn80x24) {
  const TopFrame f = frame();
  const auto lines = render_top(f, 80, 24, false);
  expect_fits(lines, 80, 24);
  const std::string all = joined(lines);
  EXPECT_NE(lines[0].find("segment seg"), std::string::npos) << all;
  EXPECT_NE(all.find("pid 4242 alive"), std::string::npos) << all;
  EXPECT_NE(all.find("gen 9"), std::string::npos) << all;
  EXPECT_NE(all.find("host surge"), std::string::npos) << all;
  // enterprise: limit 40 over baseline 15; 20 offered/s, 15 admitted/s, 5 denied/s, 25%.
  bool row = false;
  for (const auto &l : lines)
    if (l.rfind("enterprise", 0) == 0 && l.find("40/15") != std::string::npos) {
      row = true;
      EXPECT_NE(l.find(" 20.0 "), std::string::npos) << l;
      EXPECT_NE(l.find(" 15.0 "), std::string::npos) << l;
      EXPECT_NE(l.find(" 5.0 "), std::string::npos) << l;
      EXPECT_NE(l.find("25.0%"), std::string::npos) << l;
      EXPECT_NE(l.find("ddos"), std::string::npos) << l;
      EXPECT_NE(l.find("33.5"), std::string::npos) << l;
      EXPECT_NE(l.find("1000"), std::string::npos) << l;
    }
  EXPECT_TRUE(row) << all;
  EXPECT_NE(all.find("pending approvals  2"), std::string::npos) << all;
  EXPECT_NE(all.find("3f9c0a1e"), std::string::npos) << all;
  EXPECT_NE(all.find("8 -> 20"), std::string::npos) << all;
  EXPECT_NE(all.find("expires in 42.0s"), std::string::npos) << all;
  EXPECT_NE(all.find("published 11"), std::string::npos) << all;
  EXPECT_NE(all.find("ollama qwen2.5:0.5b  busy  last timeout 812ms  ok 4  timeout 2"), std::string::npos) << all;
  EXPECT_EQ(all.find("malformed"), std::string::npos) << all;  // zero counts are left out
  EXPECT_NE(lines.back().find("q quit"), std::string::npos) << all;
  EXPECT_EQ(all.find('\x1b'), std::string::npos);  // plain without colour
}

TEST(TopRender, FirstFrameHasNoRates) {
  TopFrame f = frame();
  f.rates.clear();
  const auto lines = render_top(f, 80, 24, false);
  bool row = false;
  for (const auto &l : lines)
    if (l.rfind("pro ", 0) == 0) {  // the tier table's row (the totals' row comes later)
      EXPECT_NE(l.find("      -       -       -     -"), std::string::npos) << l;
      row = true;
      break;
    }
  EXPECT_TRUE(row) << joined(lines);
}

TEST(TopRender, FitsSmallAndOddSizes) {
  TopFrame f = frame();
  f.banner = "demo: phase 3 of 5, a DDoS on the free tier \xe4\xb8\xad\x01 with a long tail that goes on and on";
  for (int w : {1, 20, 40, 79, 80, 81, 132})
    for (int h : {0, 1, 3, 8, 12, 24, 50}) {
      const auto lines = render_top(f, w, h, true);
      expect_fits(lines, w, h);
      if (w < 20) continue;
      if (h >= 1) {
        EXPECT_NE(lines.back().find("q quit"), std::string::npos) << w << "x" << h;
      }
      if (h >= 8) {  // the tier rows stay before the extras go
        const std::string all = joined(lines);
        EXPECT_NE(all.find("enterprise"), std::string::npos) << w << "x" << h << "\n" << all;
      }
    }
  // Wide/unsafe characters from outside never reach the screen as they are.
  const std::string all = joined(render_top(f, 200, 50, false));
  EXPECT_EQ(all.find('\x01'), std::string::npos);
  EXPECT_EQ(all.find("\xe4\xb8\xad"), std::string::npos);
  EXPECT_NE(all.find("demo: phase 3 of 5"), std::string::npos);
}

TEST(TopRender, ColourOnlyWhenAsked) {
  const TopFrame f = frame();
  const std::string c = joined(render_top(f, 80, 24, true));
  EXPECT_NE(c.find("\x1b[31;1mddos"), std::string::npos) << c;
  EXPECT_NE(c.find("\x1b[32malive"), std::string::npos) << c;
}

TEST(TopRender, AuditStoreErrorsAreShownInRedOnlyWhenThereAreSome) {
  TopFrame f = frame();
  EXPECT_EQ(joined(render_top(f, 120, 40, true)).find("audit store errors"), std::string::npos);
  std::string error;
  ASSERT_TRUE(parse_overview(R"({"audit":{"store_errors":3}})", f.overview, error)) << error;
  EXPECT_EQ(f.overview.audit_store_errors, 3u);
  const std::string c = joined(render_top(f, 80, 40, true));
  EXPECT_NE(c.find("\x1b[31;1maudit store errors 3 since start"), std::string::npos) << c;
  EXPECT_FALSE(parse_overview(R"({"audit":{"store_errors":"3"}})", f.overview, error));
}

TEST(TopRender, AHungDaemonIsNotAnsweringNotDown) {
  TopFrame f = frame();
  f.status.daemon_alive = false;
  f.status.daemon_state = DaemonState::hung;
  f.status.heartbeat_age_ns = 9'000'000'000;
  f.overview_ok = false;
  f.daemon_unreachable = true;
  f.overview_error = "cannot reach sluiced";
  const std::string all = joined(render_top(f, 80, 24, false));
  EXPECT_NE(all.find("NOT ANSWERING"), std::string::npos) << all;
  EXPECT_NE(all.find("daemon not answering: loop view unavailable"), std::string::npos) << all;
  EXPECT_EQ(all.find("NOT RUNNING"), std::string::npos) << all;
}

TEST(TopRender, DaemonDown) {
  TopFrame f = frame();
  f.status.daemon_alive = false;
  f.overview_ok = false;
  f.daemon_unreachable = true;
  f.overview_error = "cannot reach sluiced";
  f.overview = Overview{};
  const auto lines = render_top(f, 80, 24, false);
  expect_fits(lines, 80, 24);
  const std::string all = joined(lines);
  EXPECT_NE(all.find("NOT RUNNING"), std::string::npos) << all;
  EXPECT_NE(all.find("daemon not running: loop view unavailable"), std::string::npos) << all;
  EXPECT_NE(all.find("enterprise"), std::string::npos) << all;  // the counters are still there
  EXPECT_EQ(all.find("pending approvals"), std::string::npos) << all;

  f.status_ok = false;
  f.status_error = "the shared-memory segment does not exist";
  const std::string none = joined(render_top(f, 80, 24, false));
  EXPECT_NE(none.find("segment unavailable: the shared-memory segment does not exist"), std::string::npos) << none;
}

TEST(TopRender, OnceHasNoFooter) {
  TopFrame f = frame();
  f.interactive = false;
  const auto lines = render_top(f, 80, 1000, false);
  EXPECT_EQ(joined(lines).find("q quit"), std::string::npos);
  EXPECT_NE(joined(lines).find("totals"), std::string::npos);
}

TEST(TopRender, VisibleWidthSkipsEscapes) {
  EXPECT_EQ(visible_width("\x1b[31;1mddos\x1b[0m"), 4u);
  EXPECT_EQ(visible_width("caf\xc3\xa9"), 4u);
}
