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
    # each chart has drawn series (paths), phase shading and governance markers
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        assert svg.count('class="phase"') == 5
        assert svg.count('class="gov-marker"') == 7
        assert 'class="series"' in svg
    for _, label, _, _ in PHASES:
        assert f">{label}</text>" in html
    # the limit step line and the offered area on the tier charts
    assert html.count("<title>limit</title>") == 3 and html.count('class="area"') == 3
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
        assert "yes" in cells[8]
    assert f"${t['revenue']:,.2f}" in table and f"${t['static_revenue']:,.2f}" in table
    # headline
    assert f'<b id="revenue-adaptive">${t["revenue"]:,.2f}</b>' in html
    assert f'<b id="revenue-static">${t["static_revenue"]:,.2f}</b>' in html
    assert f'<b id="revenue-ratio">x{t["revenue_ratio"]:.2f} (' in html
    assert t["revenue_ratio"] > 1.2  # the synthetic run is a win for adaptive limits
    assert '<b id="clients-match">yes</b>' in html
    # governance table: one row per event, old -> new, actor
    gov = re.search(r'<table id="governance".*?</table>', html, re.S).group(0)
    assert gov.count("<tr>") == 1 + 7
    assert "22 -&gt; 45" in gov and "operator(uid 1000)" in gov and "3f9c0a1e" in gov
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
    hostile["governance"][0].update(tier=HOSTILE_TIER, actor="<u>root</u>",
                                    approval_id="\"'><x>")
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
    assert text.startswith("t = ") and "admitted:" in text and "limit:" in text, text


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
