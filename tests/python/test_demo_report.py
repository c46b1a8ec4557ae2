"""The demo's report renderer (python/sluice/demo_report.py).

The module is loaded from its file with importlib, not as ``sluice.demo_report``:
importing the package runs python/sluice/__init__.py, which imports the compiled
``_sluice`` extension, and the renderer must be testable (and usable) without a build.

The page is also rendered in headless Chromium, driven over the DevTools protocol on
``--remote-debugging-pipe`` (fds 3/4, NUL-separated JSON; standard library only). The
checker counts as errors: uncaught exceptions (Runtime.exceptionThrown),
console.error/console.assert (Runtime.consoleAPICalled), browser log entries of level
error (Log.entryAdded: failed loads, CSP violations), JavaScript dialogs and a
crashed target; it records every network request. Negative controls show that it
catches a thrown Error, a console.error, a late (setTimeout) throw, a throw in a
mousemove handler and an external image request.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "python" / "sluice" / "demo_report.py"
from browser import CHROMIUM, Browser


def _load():
    spec = importlib.util.spec_from_file_location("sluice_demo_report_under_test", MODULE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


dr = _load()

# --------------------------------------------------------------------------- data

XSS_REASON = "<script>alert(1)</script> & \"quoted\" 'single'"
TIERS = [
    # name, revenue/request, baseline, max, keys
    ("enterprise", 0.20, 15, 120, 4),
    ("pro", 0.05, 8, 40, 6),
    ("free", 0.01, 3, 9, 10),
]
PHASES = [("awakening", "AI awakening", 0, 15), ("ramp", "Ramp", 15, 35),
          ("surge", "Surge", 35, 55), ("ddos", "DDoS", 55, 75),
          ("recovery", "Recovery", 75, 90)]


def make_data(duration: int = 90, seed: int = 7) -> dict:
    """A realistic run: 1 s samples, three tiers, limits moved by the policy loop."""
    rng = random.Random(seed)
    names = [t[0] for t in TIERS]
    limit = {t[0]: t[2] for t in TIERS}
    samples = []
    static = {n: {"admitted_rps": [], "revenue_rate": []} for n in names}
    totals = {n: dict(requests=0, admitted=0, denied=0, revenue=0.0, static_admitted=0,
                      static_revenue=0.0, daemon_admitted=0, daemon_denied=0) for n in names}
    governance = []

    def phase(t):
        for name, _, a, b in PHASES:
            if a <= t < b:
                return name
        return "recovery"

    for t in range(1, duration + 1):
        ph = phase(t - 0.5)
        host = {"surge": "surge", "ddos": "ddos"}.get(ph, "normal")
        tiers = {}
        for name, rpr, base, cap, keys in TIERS:
            demand = base * keys * {"awakening": 0.5, "ramp": 0.5 + (t - 15) / 25,
                                    "surge": 3.0, "ddos": 2.0, "recovery": 0.8}[ph]
            if name == "free" and ph == "ddos":
                demand = 2500.0
            offered = max(0.0, demand * (1 + rng.uniform(-0.08, 0.08)))
            # the policy loop: more room in a surge, free to its floor under DDoS
            if ph == "surge" and name != "free":
                limit[name] = min(cap, int(base * (1 + min(t - 35, 6) * 0.5)))
            elif ph == "ddos":
                limit[name] = base if name == "free" else min(cap, base * 3)
            elif ph == "recovery":
                limit[name] = base
            admitted = min(offered, limit[name] * keys)
            s_adm = min(offered, base * keys)
            level = host if name != "pro" or ph != "ddos" else "surge"
            tiers[name] = {"limit": limit[name], "offered_rps": round(offered, 2),
                           "admitted_rps": round(admitted, 2),
                           "denied_rps": round(offered - admitted, 2),
                           "surge": level, "revenue_rate": round(admitted * rpr, 4)}
            static[name]["admitted_rps"].append(round(s_adm, 2))
            static[name]["revenue_rate"].append(round(s_adm * rpr, 4))
            tt = totals[name]
            tt["requests"] += round(offered)
            tt["admitted"] += round(admitted)
            tt["denied"] += round(offered) - round(admitted)
            tt["revenue"] += round(admitted) * rpr
            tt["static_admitted"] += round(s_adm)
            tt["static_revenue"] += round(s_adm) * rpr
        samples.append({"t_s": float(t), "host_surge": host, "pending": 1 if 40 <= t < 44 else 0,
                        "generation": t, "tiers": tiers})
    for tt in totals.values():
        tt["daemon_admitted"], tt["daemon_denied"] = tt["admitted"], tt["denied"]
        tt["revenue"] = round(tt["revenue"], 2)
        tt["static_revenue"] = round(tt["static_revenue"], 2)
    governance = [
        {"t_s": 36.0, "event": "published", "tier": "enterprise", "old_limit": 15,
         "new_limit": 22, "actor": "rules", "reason": "demand 2.9x baseline", "approval_id": ""},
        {"t_s": 39.5, "event": "pending", "tier": "enterprise", "old_limit": 22,
         "new_limit": 45, "actor": "rules", "reason": "ratio 2.05 > approval_ratio 1.8",
         "approval_id": "3f9c0a1e"},
        {"t_s": 44.0, "event": "approved", "tier": "enterprise", "old_limit": 22,
         "new_limit": 45, "actor": "operator(uid 1000)", "reason": "approved by sluicectl",
         "approval_id": "3f9c0a1e"},
        {"t_s": 48.0, "event": "rejected", "tier": "pro", "old_limit": 12, "new_limit": 40,
         "actor": "operator(uid 1000)", "reason": XSS_REASON, "approval_id": "77aa01bc"},
        {"t_s": 56.0, "event": "published", "tier": "free", "old_limit": 3, "new_limit": 3,
         "actor": "rules", "reason": "ddos: lowest-value tier to its floor", "approval_id": ""},
        {"t_s": 62.0, "event": "expired", "tier": "pro", "old_limit": 24, "new_limit": 40,
         "actor": "governance", "reason": "no decision within 30 s", "approval_id": "90be2c11"},
        {"t_s": 76.0, "event": "published", "tier": "enterprise", "old_limit": 45,
         "new_limit": 15, "actor": "rules", "reason": "back to baseline", "approval_id": ""},
    ]
    rev = round(sum(t["revenue"] for t in totals.values()), 2)
    srev = round(sum(t["static_revenue"] for t in totals.values()), 2)
    return {
        "version": 1, "title": "Sluice demo", "started_unix_ms": 1764600000000,
        "duration_s": float(duration), "segment": "sluice-demo", "machine": {"nproc": 2},
        "tiers": [{"name": n, "revenue_per_request": r, "baseline_limit": b, "max_limit": m,
                   "window_s": 1.0} for n, r, b, m, _ in TIERS],
        "phases": [{"name": n, "label": lbl, "start_s": float(a), "end_s": float(b)}
                   for n, lbl, a, b in PHASES],
        "samples": samples,
        "static_series": {"t_s": [s["t_s"] for s in samples], "tiers": static},
        "governance": governance,
        "totals": {"tiers": totals, "revenue": rev, "static_revenue": srev,
                   "revenue_ratio": round(rev / srev, 4) if srev else None},
        "clients": [{"language": "c", "tier": n, "keys": k} for n, _, _, _, k in TIERS]
        + [{"language": "python", "tier": "pro", "keys": 6}],
        "checks": {"clients_match_daemon": True},
    }


EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|srcset|action|poster|data|xlink:href)\s*=\s*["']?\s*(?:https?:)?//)"""
    r"""|(?:url\(\s*["']?\s*(?:https?:)?//)|@import""", re.I)


def assert_clean(html: str) -> None:
    assert "NaN" not in html and "Infinity" not in html
    assert not EXTERNAL.search(html), EXTERNAL.search(html)
    assert html.count("<svg") == html.count("</svg>")
    assert html.count("<script") == 2  # the JSON data block and the tooltip script
    # every <script> closes where the renderer closed it: nothing from the data
    assert html.count("</script>") == 2


# --------------------------------------------------------------------------- pure tests

def test_module_needs_only_the_standard_library():
    code = ("import importlib.util,sys;"
            f"s=importlib.util.spec_from_file_location('m',{str(MODULE)!r});"
            "m=importlib.util.module_from_spec(s);before=set(sys.modules);"
            "s.loader.exec_module(m);"
            "new={n.split('.')[0] for n in set(sys.modules)-before};"
            "bad=sorted(n for n in new if n not in sys.stdlib_module_names);"
            "print(bad)")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_full_report_has_every_chart_totals_and_headline():
    data = make_data()
    html = dr.render_html(data)
    assert_clean(html)
    assert "http://" not in html and "https://" not in html
    ids = re.findall(r'<svg id="([^"]+)"', html)
    assert ids == ["chart-tier-0", "chart-tier-1", "chart-tier-2", "chart-surge",
                   "chart-denials", "chart-revenue"]
    # each chart has drawn series (paths), phase shading and governance markers: one
    # per event that is not a routine "published" one (pending, approved, rejected,
    # expired), numbered 1..4
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        assert svg.count('class="phase"') == 5
        assert svg.count('class="gov-marker"') == 4
        assert re.findall(r'<text class="gov-num"[^>]*>(\d+)</text>', svg) == ["1", "2", "3", "4"]
        assert " published " not in " ".join(re.findall(r'<g class="gov-marker"><title>(.*?)'
                                                         r'</title>', svg))
        assert 'class="series"' in svg
    for _, label, _, _ in PHASES:
        assert f">{label}</text>" in html
    # the limit step line and the offered area on the tier charts
    assert html.count("<title>limit per key</title>") == 3 and html.count('class="area"') == 3
    # the limit is per key, on the right axis, and the caption says so
    for fig in re.findall(r'<figure class="panel"><figcaption>Tier .*?</figure>', html, re.S):
        assert '>limit per key</text>' in fig  # the right axis' label
        assert "limit per key (right axis)" in fig  # the legend
        assert "applies to each key of the tier" in fig
    # no attack data in this run: no attack columns, no attack card
    assert "attack requests" not in html and 'id="attack-let-through"' not in html
    assert ("Revenue counts legitimate customers' admitted requests; attack traffic let "
            "through is load on the backend, not income.") in html
    # totals table
    t = data["totals"]
    table = re.search(r'<table id="totals".*?</table>', html, re.S).group(0)
    for name, tt in t["tiers"].items():
        row = re.search(rf"<tr><th[^>]*>.*?{name}</th>(.*?)</tr>", table, re.S).group(1)
        cells = re.findall(r"<td>(.*?)</td>", row)
        assert cells[:8] == [f"{tt['requests']:,}", f"{tt['admitted']:,}", f"{tt['denied']:,}",
                             f"${tt['revenue']:,.2f}", f"{tt['static_admitted']:,}",
                             f"${tt['static_revenue']:,.2f}", f"{tt['daemon_admitted']:,}",
                             f"{tt['daemon_denied']:,}"]
        assert "yes" in cells[8] and len(cells) == 9
    assert f"${t['revenue']:,.2f}" in table and f"${t['static_revenue']:,.2f}" in table
    # headline
    assert f'<b id="revenue-adaptive">${t["revenue"]:,.2f}</b>' in html
    assert f'<b id="revenue-static">${t["static_revenue"]:,.2f}</b>' in html
    assert f'<b id="revenue-ratio">x{t["revenue_ratio"]:.2f} (' in html
    assert t["revenue_ratio"] > 1.2  # the synthetic run is a win for adaptive limits
    assert '<b id="clients-match">yes</b>' in html
    # governance table: one row per non-routine event, old -> new, actor
    gov = re.search(r'<table id="governance".*?</table>', html, re.S).group(0)
    assert gov.count("<tr>") == 1 + 4
    assert "22 -&gt; 45" in gov and "operator(uid 1000)" in gov and "3f9c0a1e" in gov
    assert ">published<" not in gov and 'id="governance-more"' not in html
    # ... and above it one line per tier for the routine publications
    routine = re.search(r'<ul id="routine">(.*?)</ul>', html, re.S).group(1)
    assert re.findall(r"<li>(.*?)</li>", routine) == [
        "enterprise: 2 publications by the rules, limit between 15 and 45",
        "free: 1 publication by the rules, limit 3"]
    assert html.index('id="routine"') < html.index('id="governance"')
    # ... and every one of them in a collapsed table
    every = re.search(r'<details id="routine-all">(.*?)</details>', html, re.S).group(1)
    assert every.count("<tr>") == 1 + 3 and "15 -&gt; 22" in every
    # untrusted strings escaped, in the table and in the markers' titles
    assert "<script>alert(1)</script>" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot; "
                      "&#x27;single&#x27;") == 1 + 6


def test_mismatch_and_missing_ratio_are_shown():
    data = make_data()
    data["checks"]["clients_match_daemon"] = False
    data["totals"]["tiers"]["pro"]["daemon_admitted"] += 1
    data["totals"]["revenue_ratio"] = None
    html = dr.render_html(data)
    assert '<b id="clients-match">NO</b>' in html
    assert '<b id="revenue-ratio">n/a</b>' in html
    pro = re.search(r"<tr><th[^>]*>.*?pro</th>(.*?)</tr>", html, re.S).group(1)
    assert '<span class="bad">no</span>' in pro
    s = dr.render_summary(data)
    assert "match the daemon's: NO" in s and "n/a" in s and "DIFF" in s


HOSTILE_TIER = "\"><img src=x onerror=alert(1)></script><script>alert(2)</script>\x1b[31m"


def edge_cases() -> dict[str, dict]:
    one = make_data(duration=1)
    one["duration_s"] = 1.0
    one["phases"] = [{"name": "awakening", "label": "AI awakening", "start_s": 0.0, "end_s": 1.0}]
    no_gov = make_data()
    no_gov["governance"] = []
    idle = make_data()
    idle["tiers"].append({"name": "idle", "revenue_per_request": 1.0, "baseline_limit": 5,
                          "max_limit": 10, "window_s": 1.0})
    idle["totals"]["tiers"]["idle"] = {k: 0 for k in idle["totals"]["tiers"]["pro"]}
    zero = make_data()
    for s in zero["samples"]:
        for v in s["tiers"].values():
            v.update(offered_rps=0.0, admitted_rps=0.0, denied_rps=0.0, revenue_rate=0.0)
    nan = make_data(duration=20)
    nan["samples"][3]["tiers"]["pro"]["offered_rps"] = float("nan")
    nan["samples"][4]["tiers"]["pro"]["admitted_rps"] = float("inf")
    nan["samples"][5]["t_s"] = float("nan")
    nan["static_series"]["tiers"]["free"]["admitted_rps"][2] = float("-inf")
    nan["totals"]["revenue_ratio"] = float("nan")
    nan["duration_s"] = float("inf")
    hostile = make_data(duration=10)
    for s in hostile["samples"]:
        s["tiers"][HOSTILE_TIER] = s["tiers"].pop("free")
    hostile["tiers"][2]["name"] = HOSTILE_TIER
    hostile["totals"]["tiers"][HOSTILE_TIER] = hostile["totals"]["tiers"].pop("free")
    hostile["static_series"]["tiers"][HOSTILE_TIER] = hostile["static_series"]["tiers"].pop("free")
    hostile["title"] = "</title><script>alert(3)</script>"
    hostile["segment"] = "<b>seg</b>"
    hostile["phases"][0]["label"] = "<i>phase</i>"
    for g in hostile["governance"][:2]:  # a routine publication and a pending change
        g.update(tier=HOSTILE_TIER, actor="<u>root</u>", approval_id="\"'><x>")
    hostile["clients"][0]["tier"] = HOSTILE_TIER
    return {
        "empty": {},
        "minimal": {"version": 1, "tiers": [], "samples": [], "governance": []},
        "one_sample": one,
        "no_governance": no_gov,
        "tier_without_traffic": idle,
        "all_zero": zero,
        "nan_and_inf": nan,
        "no_static_series": dict(make_data(duration=5), static_series={}),
        "wrong_types": {"tiers": "x", "samples": [None, 3, {"t_s": "a"}, {"t_s": 1, "tiers": []}],
                        "phases": [{"start_s": 5, "end_s": 1}], "governance": [None],
                        "totals": {"tiers": {"t": {"requests": "many"}}}, "checks": []},
        "hostile": hostile,
    }


@pytest.mark.parametrize("case", list(edge_cases()))
def test_edge_cases_render(case):
    data = edge_cases()[case]
    html = dr.render_html(data)
    assert_clean(html)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    # the surge, denial and revenue charts are always there
    for cid in ("chart-surge", "chart-denials", "chart-revenue"):
        assert f'id="{cid}"' in html
    ids = re.findall(r'<svg id="chart-tier-(\d+)"', html)
    names = [t.get("name") for t in data.get("tiers", []) if isinstance(t, dict)] \
        if isinstance(data.get("tiers"), list) else []
    assert len(ids) >= len(names)
    summary = dr.render_summary(data)
    lines = summary.splitlines()
    assert 3 <= len(lines) <= 15 and all(len(line) <= 80 for line in lines)
    assert not re.search(r"\b(nan|inf|infinity)\b", summary, re.I), summary
    assert all(ch.isprintable() for line in lines for ch in line)
    if case == "one_sample":
        assert "<circle" in html  # a single point is drawn as a dot
    if case == "no_governance":
        assert 'id="governance-empty"' in html and "gov-marker" not in html
    if case == "tier_without_traffic":
        assert re.findall(r'<svg id="chart-tier-(\d+)"', html) == ["0", "1", "2", "3"]
        assert ">no traffic</text>" in html
    if case == "all_zero":
        assert ">no denials</text>" in html
    if case == "hostile":
        for raw in ("<img", "<script>alert", "<b>seg", "<i>phase", "<u>root", "<x>", "\x1b"):
            assert raw not in html.replace("<script type=\"application/json\"", "")
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
        assert "\x1b" not in summary
        # in the routine summary and in the table of the other events
        routine = re.search(r'<ul id="routine">(.*?)</ul>', html, re.S).group(1)
        assert "&lt;u&gt;root&lt;/u&gt;" in routine and "&lt;img src=x" in routine
        gov = re.search(r'<table id="governance".*?</table>', html, re.S).group(0)
        assert "&lt;u&gt;root&lt;/u&gt;" in gov and "&quot;&#x27;&gt;&lt;x&gt;" in gov


def test_summary_is_short_and_has_the_headline():
    data = make_data()
    s = dr.render_summary(data)
    lines = s.splitlines()
    assert len(lines) <= 15 and max(map(len, lines)) <= 80
    t = data["totals"]
    assert f"${t['revenue']:,.2f}" in s and f"${t['static_revenue']:,.2f}" in s
    assert f"x{t['revenue_ratio']:.2f}" in s
    assert "match the daemon's: yes" in s
    for name, tt in t["tiers"].items():
        line = next(line for line in lines if line.startswith(name))
        assert f"{tt['requests']:,}" in line and f"{tt['admitted']:,}" in line
        assert line.endswith("ok")
    assert "Governance: 7 events" in s
    many = make_data(duration=5)
    for i in range(20):
        many["tiers"].append({"name": f"tier-with-a-long-name-{i:02d}" * 3})
    lines = dr.render_summary(many).splitlines()
    assert len(lines) <= 15 and max(map(len, lines)) <= 80


def test_write_report(tmp_path):
    data = make_data()
    data["samples"][0]["tiers"]["pro"]["offered_rps"] = float("nan")
    out = tmp_path / "a" / "b"
    paths = dr.write_report(data, out)
    assert set(paths) == {"html", "json", "summary"}
    assert [Path(paths[k]).name for k in ("html", "json", "summary")] == \
        ["report.html", "report.json", "summary.txt"]
    for p in paths.values():
        assert Path(p).parent == out and Path(p).stat().st_size > 0
    assert Path(paths["html"]).read_text(encoding="utf-8") == dr.render_html(data)
    assert Path(paths["summary"]).read_text(encoding="utf-8") == dr.render_summary(data)
    back = json.loads(Path(paths["json"]).read_text(encoding="utf-8"),
                      parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert back["samples"][0]["tiers"]["pro"]["offered_rps"] is None  # NaN -> null
    data["samples"][0]["tiers"]["pro"]["offered_rps"] = None
    assert back == json.loads(json.dumps(data))  # otherwise the data, unchanged
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    dr.write_report(data, out)  # again: overwrites


def _chart_svg(html: str, cid: str) -> str:
    return re.search(rf'<svg id="{cid}".*?</svg>', html, re.S).group(0)


def _tooltip_series(html: str, cid: str) -> dict[str, list[str]]:
    """The tooltip data of one chart: series name -> values (as the page gets them)."""
    charts = json.loads(re.search(r'<script type="application/json" id="chart-data">(.*?)'
                                  r'</script>', html, re.S).group(1))
    index = int(re.search(rf'<svg id="{cid}"[^>]*data-chart="(\d+)"', html).group(1))
    return {s["n"]: s for s in charts[index]["s"]}


def with_routine_publications(data: dict, per_tick: float = 0.25) -> dict:
    """Adds what the real run has: a routine "published" change every tick, per tier."""
    limits = {"enterprise": (15, 43), "pro": (8, 27), "free": (3, 9)}
    extra = []
    t, k = 0.3, 0
    while t < data["duration_s"]:
        name = list(limits)[k % 3]
        lo, hi = limits[name]
        old, new = lo + k % (hi - lo), lo + (k + 1) % (hi - lo + 1)
        extra.append({"t_s": round(t, 2), "event": "published", "tier": name,
                      "old_limit": old, "new_limit": new, "actor": "rules",
                      "reason": f"{name}: routine tick", "approval_id": ""})
        t += per_tick
        k += 1
    data["governance"] = data["governance"] + extra
    return data


def test_routine_publications_make_no_markers_but_are_summarised():
    data = with_routine_publications(make_data())
    gov = data["governance"]
    routine = [g for g in gov if g["event"] == "published"]
    others = sorted((g for g in gov if g["event"] != "published"), key=lambda g: g["t_s"])
    assert len(routine) > 300 and len(others) == 4
    html = dr.render_html(data)
    assert_clean(html)
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        titles = re.findall(r'<g class="gov-marker"><title>(.*?)</title>', svg)
        assert [t.split(" ")[3] for t in titles] == [g["event"] for g in others]
    table = re.search(r'<table id="governance".*?</table>', html, re.S).group(0)
    assert table.count("<tr>") == 1 + 4 and "routine tick" not in table
    lines = re.findall(r"<li>(.*?)</li>", re.search(r'<ul id="routine">(.*?)</ul>',
                                                   html, re.S).group(1))
    expect = []
    for name in ("enterprise", "pro", "free"):
        mine = [g for g in routine if g["tier"] == name]
        lims = [v for g in mine for v in (g["old_limit"], g["new_limit"])]
        expect.append(f"{name}: {len(mine)} publications by the rules, "
                      f"limit between {min(lims)} and {max(lims)}")
    assert lines == expect
    assert f"{len(gov)} governance events ({len(routine)} routine publications)" in html
    # other actors than the rules are named; a single value is not a range
    data = make_data()
    data["governance"] = [dict(g, actor="operator(uid 1000)") if g["tier"] == "free" else g
                          for g in data["governance"]]
    html = dr.render_html(data)
    assert "<li>free: 1 publication by operator(uid 1000), limit 3</li>" in html
    # only routine events: a summary, no markers, no table, and it says so
    data["governance"] = [g for g in data["governance"] if g["event"] == "published"]
    html = dr.render_html(data)
    assert "gov-marker" not in html and 'id="governance"' not in html
    assert 'id="routine"' in html and 'id="governance-empty"' in html


def test_governance_table_is_capped_and_badges_do_not_overlap():
    data = make_data()
    # 250 held changes, many closer together than a badge is wide
    data["governance"] = [{"t_s": round(0.5 + i * 0.33, 2), "event": ("pending", "approved",
                           "rejected", "expired")[i % 4], "tier": "pro", "old_limit": 8,
                           "new_limit": 16, "actor": "rules", "reason": f"r{i}",
                           "approval_id": f"id{i:03d}"} for i in range(250)]
    html = dr.render_html(data)
    assert_clean(html)
    table = re.search(r'<table id="governance".*?</table>', html, re.S).group(0)
    assert table.count("<tr>") == 1 + 200
    assert ">id199<" in table and ">id200<" not in table
    assert '<p id="governance-more" class="muted">... and 50 more in report.json</p>' in html
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        assert svg.count('class="gov-marker"') == 250  # every event keeps its line
        badges = [(float(y), float(x), float(w)) for x, y, w in re.findall(
            r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="13" rx="3"', svg)]
        assert 20 < len(badges) < 250
        rows: dict[float, list[tuple[float, float]]] = {}
        for y, x, w in badges:
            rows.setdefault(y, []).append((x, x + w))
        assert len(rows) <= 3
        for spans in rows.values():
            spans.sort()
            assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans
        # the badges sit above the plot: below the phase labels, above its top grid line
        top = min(float(y) for y in re.findall(r'<rect class="phase" x="[\d.]+" y="([\d.]+)"',
                                               svg))
        assert all(y + 13 <= top for y, _, _ in badges)
        labels = [float(y) for y in re.findall(r'<text class="phase-label" x="[\d.]+" '
                                               r'y="([\d.]+)"', svg)]
        assert all(y < min(b[0] for b in badges) for y in labels)


def test_denial_chart_is_the_denied_share_in_percent():
    data = make_data()
    data["samples"][0]["tiers"]["pro"].update(offered_rps=0.0, admitted_rps=0.0,
                                              denied_rps=0.0)
    data["samples"][1]["tiers"]["pro"].update(offered_rps=0.0, denied_rps=3.0)  # odd: 0
    data["samples"][2]["tiers"]["pro"].update(offered_rps=10.0, denied_rps=12.0)  # > 100 %
    html = dr.render_html(data)
    svg = _chart_svg(html, "chart-denials")
    fig = re.search(r'<figure class="panel"><figcaption>([^<]*)</figcaption>(?:(?!</figure>)'
                    r'.)*id="chart-denials".*?</figure>', html, re.S).group(0)
    assert "<figcaption>Denied share of offered requests by tier</figcaption>" in fig
    # the y axis is 0..100 %
    ticks = re.findall(r'<text class="tick" x="[\d.]+" y="[\d.]+" text-anchor="end">'
                       r'([^<]*)</text>', svg)
    assert ticks == ["0 %", "20 %", "40 %", "60 %", "80 %", "100 %"]
    series = _tooltip_series(html, "chart-denials")
    assert list(series) == ["enterprise", "pro", "free"]
    for name, s in series.items():
        assert s["u"] == "% denied"
        vals = [float(v) for v in s["v"]]
        assert all(0.0 <= v <= 100.0 for v in vals)
        expect = []
        for smp in data["samples"]:
            tt = smp["tiers"][name]
            share = tt["denied_rps"] / tt["offered_rps"] * 100 if tt["offered_rps"] > 0 else 0.0
            expect.append(round(min(max(share, 0.0), 100.0), 1))
        assert vals == expect, name
    # the free tier's DDoS is nearly all denied, the others are not flat at zero for it
    free = [float(v) for v in series["free"]["v"]]
    assert max(free) > 90 and max(float(v) for v in series["enterprise"]["v"]) < 100
    assert [float(v) for v in series["pro"]["v"][:3]] == [0.0, 0.0, 100.0]
    # every drawn point lies inside the plot
    plot = re.search(r'<rect class="phase" x="[\d.]+" y="([\d.]+)" width="[\d.]+" '
                     r'height="([\d.]+)"', svg)
    y1, y0 = float(plot.group(1)), float(plot.group(1)) + float(plot.group(2))
    for d in re.findall(r'<path class="series" d="([^"]+)"', svg):
        ys = [float(y) for y in re.findall(r"[ML][\d.]+ ([\d.]+)", d)]
        assert ys and all(y1 - 0.01 <= y <= y0 + 0.01 for y in ys)
    # the absolute peaks are still given, in the caption
    peak = max(s["tiers"]["free"]["denied_rps"] for s in data["samples"])
    assert f"free {peak:,.0f}/s at " in fig


def with_attack(data: dict) -> dict:
    for name, tt in data["totals"]["tiers"].items():
        tt.update(attack_requests=0, attack_admitted=0, static_attack_admitted=0)
    data["totals"]["tiers"]["free"].update(attack_requests=90250, attack_admitted=40281,
                                           static_attack_admitted=65280)
    return data


def test_attack_columns_and_card_appear_only_with_attack_data():
    head = re.compile(r'<table id="totals".*?<thead>(.*?)</thead>', re.S)
    # fields absent (older data) or all zero: nothing about attacks
    plain = make_data()
    zero = make_data()
    for tt in zero["totals"]["tiers"].values():
        tt.update(attack_requests=0, attack_admitted=0, static_attack_admitted=0)
    for data in (plain, zero):
        html = dr.render_html(data)
        assert "attack" not in head.search(html).group(1)
        assert 'id="attack-let-through"' not in html
        assert "Attack" not in dr.render_summary(data)
    data = with_attack(make_data())
    html = dr.render_html(data)
    assert_clean(html)
    cols = re.findall(r'<th scope="col">(.*?)</th>', head.search(html).group(1))
    assert cols == ["tier", "requests", "admitted", "denied", "revenue", "static admitted",
                    "static revenue", "attack requests", "attack let through",
                    "attack let through, static", "daemon admitted", "daemon denied",
                    "matches daemon"]
    table = re.search(r'<table id="totals".*?</table>', html, re.S).group(0)
    free = re.findall(r"<td>(.*?)</td>",
                      re.search(r"<tr><th[^>]*>.*?free</th>(.*?)</tr>", table, re.S).group(1))
    assert free[6:9] == ["90,250", "40,281", "65,280"]
    tt = data["totals"]["tiers"]["free"]
    assert free[9:11] == [f"{tt['daemon_admitted']:,}", f"{tt['daemon_denied']:,}"]
    pro = re.findall(r"<td>(.*?)</td>",
                     re.search(r"<tr><th[^>]*>.*?pro</th>(.*?)</tr>", table, re.S).group(1))
    assert pro[6:9] == ["0", "0", "0"]
    foot = re.findall(r"<td>(.*?)</td>", re.search(r"<tfoot>(.*?)</tfoot>", table, re.S).group(1))
    assert foot[6:9] == ["90,250", "40,281", "65,280"]
    assert ('<b id="attack-let-through">adaptive 40,281 vs static 65,280</b>' in html)
    card = re.search(r'<div class="stat([^"]*)"><span>attack requests let through</span>',
                     html)
    assert card and card.group(1) == " good"  # fewer let through than the static limits
    assert "Attack requests let through: adaptive 40,281 vs static 65,280" in \
        dr.render_summary(data)
    # the headline's revenue is the totals' (legitimate traffic), unchanged
    assert f'<b id="revenue-adaptive">${data["totals"]["revenue"]:,.2f}</b>' in html
    # a tier without the fields (older client) shows empty cells, not zeros
    for k in ("attack_requests", "attack_admitted", "static_attack_admitted"):
        del data["totals"]["tiers"]["pro"][k]
    table = re.search(r'<table id="totals".*?</table>', dr.render_html(data), re.S).group(0)
    pro = re.findall(r"<td>(.*?)</td>",
                     re.search(r"<tr><th[^>]*>.*?pro</th>(.*?)</tr>", table, re.S).group(1))
    assert pro[6:9] == ["", "", ""] and len(pro) == 12
    # worse than static: the card says so
    data["totals"]["tiers"]["free"]["attack_admitted"] = 70000
    assert '<div class="stat bad"><span>attack requests let through' in dr.render_html(data)
    # untrusted strings stay escaped with the attack columns on
    data["totals"]["tiers"][HOSTILE_TIER] = data["totals"]["tiers"].pop("free")
    html = dr.render_html(data)
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_revenue_end_labels_do_not_overlap():
    data = make_data()
    # static replay == the run: both cumulative lines end at the same value
    for name in data["static_series"]["tiers"]:
        data["static_series"]["tiers"][name]["revenue_rate"] = [
            s["tiers"][name]["revenue_rate"] for s in data["samples"]]
    svg = _chart_svg(dr.render_html(data), "chart-revenue")
    ys = [float(y) for y in re.findall(r'<text class="end-label" x="[\d.]+" y="([\d.]+)"', svg)]
    assert len(ys) == 2 and abs(ys[0] - ys[1]) >= 14, ys


def test_revenue_chart_warns_when_the_series_disagree_with_the_totals():
    data = make_data()
    html = dr.render_html(data)
    assert "disagree with the totals" not in html
    # a static replay series that (wrongly) counts attack traffic as revenue
    data["static_series"]["tiers"]["free"]["revenue_rate"] = [
        v * 50 for v in data["static_series"]["tiers"]["free"]["revenue_rate"]]
    html = dr.render_html(data)
    assert "disagree with the totals by more than 10% (static $" in html
    assert f"sampled vs ${data['totals']['static_revenue']:,.2f} exact); trust the totals." in html


# --------------------------------------------------------------------------- Chromium

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is not installed")
    tmp = tmp_path_factory.mktemp("chromium")
    b = Browser(tmp / "profile", tmp / "chromium.log")
    yield b
    b.close()


def test_checker_catches_errors_negative_controls(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>bad</p><script>"
                   "console.log('only a log');"
                   "console.error('deliberate console error');"
                   "setTimeout(function(){ throw new Error('deliberate late error'); }, 50);"
                   "document.addEventListener('mousemove', function(){"
                   " throw new Error('deliberate hover error'); });"
                   "throw new Error('deliberate uncaught error');</script>")
    r = browser.check(bad)
    joined = "\n".join(r["errors"])
    assert "console.error: deliberate console error" in joined, r
    assert "deliberate uncaught error" in joined, r
    assert "deliberate late error" in joined, r
    assert "only a log" not in joined
    # a throw in a mousemove handler, reached only by the hover step
    hover = tmp_path / "hover.html"
    hover.write_text("<!DOCTYPE html><svg data-chart='0' width='800' height='300'></svg><script>"
                     "document.querySelector('svg').addEventListener('mousemove', function(){"
                     " throw new Error('deliberate hover error'); });</script>")
    r = browser.check(hover, hover="svg")
    assert any("deliberate hover error" in e for e in r["errors"]), r
    # an external resource is seen as a request (and, offline, fails)
    ext = tmp_path / "ext.html"
    ext.write_text("<!DOCTYPE html><img src='http://127.0.0.1:9/x.png'>")
    r = browser.check(ext)
    assert "http://127.0.0.1:9/x.png" in r["requests"], r
    # a dialog
    dialog = tmp_path / "dialog.html"
    dialog.write_text("<!DOCTYPE html><script>alert('deliberate alert')</script>")
    r = browser.check(dialog)
    assert r["dialogs"] == ["deliberate alert"], r
    # and a clean page is clean
    good = tmp_path / "good.html"
    good.write_text("<!DOCTYPE html><p>good</p><script>console.log('fine')</script>")
    r = browser.check(good)
    assert r["errors"] == [] and r["dialogs"] == [], r


def _only_the_page(requests: list[str], page: Path) -> list[str]:
    return [u for u in requests if u != page.as_uri() and not u.startswith(("data:", "about:"))]


def test_report_renders_in_chromium_without_errors(browser, tmp_path):
    paths = dr.write_report(make_data(), tmp_path / "out")
    page = Path(paths["html"])
    r = browser.check(page, hover="#chart-tier-0")
    assert r["errors"] == [], r
    assert r["warnings"] == [], r
    assert r["dialogs"] == []
    assert _only_the_page(r["requests"], page) == [], r["requests"]
    display, text = r["tip"]
    assert display == "block", r["tip"]
    assert text.startswith("t = ") and "admitted:" in text, text
    assert "limit per key: " in text and " per window" in text, text


@pytest.mark.parametrize("case", ["one_sample", "no_governance", "tier_without_traffic",
                                  "hostile", "empty", "nan_and_inf"])
def test_edge_cases_in_chromium(browser, tmp_path, case):
    page = tmp_path / f"{case}.html"
    page.write_text(dr.render_html(edge_cases()[case]), encoding="utf-8")
    r = browser.check(page, hover="#chart-surge", at=0.1)
    assert r["errors"] == [] and r["dialogs"] == [], r
    assert _only_the_page(r["requests"], page) == [], r["requests"]
    if case == "hostile":
        # the untrusted tier name arrives in the tooltip as text
        assert HOSTILE_TIER + ": " in r["tip"][1], r["tip"]
    elif case != "empty":
        assert r["tip"][0] == "block" and "host: " in r["tip"][1], r["tip"]


def test_realistic_run_in_chromium(browser, tmp_path):
    """The shape of a real run: a routine publication every tick, attack traffic."""
    page = tmp_path / "realistic.html"
    page.write_text(dr.render_html(with_attack(with_routine_publications(make_data()))),
                    encoding="utf-8")
    r = browser.check(page, hover="#chart-denials", at=0.72)  # in the DDoS phase
    assert r["errors"] == [] and r["warnings"] == [] and r["dialogs"] == [], r
    assert _only_the_page(r["requests"], page) == [], r["requests"]
    display, text = r["tip"]
    assert display == "block" and "free: " in text and "% denied" in text, r["tip"]
    share = float(re.search(r"free: ([\d.]+) % denied", text).group(1))
    assert 50 <= share <= 100, text


# --------------------------------------------------------------------------- screenshot

def png_info(path: Path, rows: int = 1200) -> tuple[int, int, int, float]:
    """(width, height, distinct colours, share of non-background pixels) of the first
    `rows` rows of an 8-bit RGB/RGBA PNG, decoded with zlib and the PNG row filters."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
    bpp = 3 if ctype == 2 else 4
    stride = w * bpp
    rows = min(rows, h)
    raw = zlib.decompressobj().decompress(b"".join(idat), rows * (stride + 1))
    prev = bytearray(stride)
    colours: dict[bytes, int] = {}
    for y in range(rows):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 4 == 0:
            for x in range(0, stride, bpp * 2):
                px = bytes(line[x:x + 3])
                colours[px] = colours.get(px, 0) + 1
        prev = line
    bg = max(colours.values())
    return w, h, len(colours), 1 - bg / sum(colours.values())


def test_screenshot(tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is not installed")
    paths = dr.write_report(make_data(), tmp_path / "out")
    shot = Path(os.environ.get("SLUICE_REPORT_SCREENSHOT", tmp_path / "report.png"))
    shot.unlink(missing_ok=True)
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400",
         "--virtual-time-budget=5000", f"--screenshot={shot}", Path(paths["html"]).as_uri()],
        capture_output=True, text=True, timeout=120, start_new_session=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 50_000, out.stderr[-2000:]
    w, h, colours, ink = png_info(shot)
    assert (w, h) == (1280, 2400)
    assert colours > 50 and ink > 0.05, (colours, ink)
