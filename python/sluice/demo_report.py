"""The report of ``sluice demo``: one self-contained HTML page, a JSON copy of the
data and a short plain-text summary.

This module is pure (standard library only, no I/O except :func:`write_report`) and
does not need the compiled ``_sluice`` extension.

    from sluice.demo_report import render_html, render_summary, write_report
    paths = write_report(data, "demo-out")   # {"html": ..., "json": ..., "summary": ...}
    print(render_summary(data))

The page has no external resources (inline CSS, inline SVG charts drawn here, one
small inline script for hover tooltips) and a Content-Security-Policy that forbids
loading anything, so it renders the same offline. Every string taken from the data
is HTML-escaped; numbers that are missing or not finite are drawn as 0 (or
skipped), so the SVG never carries NaN or Infinity.

The data (what the demo driver produces; version 1)::

    {
     "version": 1, "title": str, "started_unix_ms": int, "duration_s": float,
     "segment": str,
     "machine": {"nproc": int},
     "tiers": [{"name": str, "revenue_per_request": float, "baseline_limit": int,
                "max_limit": int, "window_s": float}],
     "phases": [{"name": "awakening"|"ramp"|"surge"|"ddos"|"recovery",
                 "label": str, "start_s": float, "end_s": float}],
     "samples": [{"t_s": float, "host_surge": "normal"|"surge"|"ddos",
                  "pending": int, "generation": int,
                  "tiers": {"<tier>": {"limit": int, "offered_rps": float,
                                       "admitted_rps": float, "denied_rps": float,
                                       "surge": "normal"|"surge"|"ddos",
                                       "revenue_rate": float}}}],
     "static_series": {"t_s": [float],
                       "tiers": {"<tier>": {"admitted_rps": [float],
                                            "revenue_rate": [float]}}},
     "governance": [{"t_s": float,
                     "event": "published"|"pending"|"approved"|"rejected"|"expired",
                     "tier": str, "old_limit": int, "new_limit": int, "actor": str,
                     "reason": str, "approval_id": str}],
     "totals": {"tiers": {"<tier>": {"requests": int, "admitted": int, "denied": int,
                                      "revenue": float, "static_admitted": int,
                                      "static_revenue": float,
                                      "attack_requests": int, "attack_admitted": int,
                                      "static_attack_admitted": int,
                                      "daemon_admitted": int, "daemon_denied": int}},
                "revenue": float, "static_revenue": float,
                "revenue_ratio": float | None},
     "clients": [{"language": "c"|"python", "tier": str, "keys": int}],
     "checks": {"clients_match_daemon": bool}
    }

Times (``t_s``, phase bounds, governance) are seconds since the start of the run;
``*_rps`` are requests per second; ``revenue_rate`` is dollars per second; the
static series is the same traffic replayed offline against the baseline limits.
``revenue``, ``static_revenue`` and ``revenue_rate`` count legitimate customers'
admitted requests only; ``requests``, ``admitted``, ``denied`` and the daemon's
counts include the attack (botnet) traffic, whose share is in ``attack_*`` (optional:
older data has no such fields, and then the report says nothing about attacks).

How it is drawn:

1. per tier, offered and admitted requests/s (left axis) and the static replay's
   admitted requests/s; the tier's limit (requests per window that each key of
   the tier may make: right axis "limit per key") as a step line, with its
   baseline and max_limit as faint references. When the offered rate dwarfs
   everything else (a DDoS), the left axis is cut at 3x the largest admitted/static
   rate and the offered line is clipped there (the chart says so and gives the
   peak);
2. surge level of the host and of each tier (normal / surge / ddos as 0 / 1 / 2
   steps; the lines are offset a little so that equal levels stay visible);
3. the share of each tier's offered requests that was denied, in percent
   (denied_rps / offered_rps; 0 when nothing was offered), so that a DDoS of
   thousands of requests/s on one tier does not flatten the others; the caption
   gives each tier's highest denial rate;
4. cumulative revenue admitted, adaptive (the run) vs static (the replay), summed
   from the sampled revenue rates (the exact totals are in the table; the caption
   warns when the two disagree by more than 10%);
5. governance: the routine "published" changes of the rules (one every tick or
   so) as one summary line per tier; the other events (pending, approved, rejected,
   expired) as numbered dashed lines on every time chart, their badges in up to 3
   rows in a band above the plot (a badge that finds no room is left out, its line
   and hover title stay), and as a table (the first 200; the rest is in the JSON).

The totals table gets the attack columns, and the headline a card of attack
requests let through (adaptive vs static), only when some tier had attack traffic.

Phases are shaded and labelled on every time chart. Missing keys, empty or
one-sample series, tiers without traffic and a run without governance events all
render. The headline's numbers come from ``totals`` and ``checks``, never from the
sampled series.
"""

from __future__ import annotations

import datetime as _dt
import html as _html
import json as _json
import math as _math
import os as _os
from pathlib import Path as _Path
from typing import Any, Callable, Iterable

__all__ = ["render_html", "render_summary", "write_report"]

SURGE_LEVELS = {"normal": 0, "surge": 1, "ddos": 2}
_LEVEL_NAMES = ["normal", "surge", "ddos"]

_TIER_COLORS = ["#2563eb", "#d97706", "#059669", "#9333ea", "#dc2626", "#0891b2",
                "#65a30d", "#db2777"]
_PHASE_COLORS = {"awakening": "#e0f2fe", "ramp": "#ecfccb", "surge": "#fef3c7",
                 "ddos": "#fee2e2", "recovery": "#ede9fe"}
_EVENT_COLORS = {"published": "#2563eb", "pending": "#d97706", "approved": "#059669",
                 "rejected": "#dc2626", "expired": "#6b7280"}

# Chart geometry (SVG user units; the SVG scales to the page width).
_W = 1160
_ML, _MR, _MT, _MB = 64, 64, 34, 30


# --------------------------------------------------------------------------- input

_CONTROLS = {c: "\ufffd" for c in [*range(0, 9), 11, 12, *range(14, 32), 127]}


def _esc(value: Any) -> str:
    """Escapes any value for HTML text or a quoted attribute (control characters,
    which HTML does not allow in text, become U+FFFD)."""
    return _html.escape("" if value is None else str(value), quote=True).translate(_CONTROLS)


def _num(value: Any, default: float = 0.0) -> float:
    """A finite float, or ``default``."""
    if isinstance(value, bool):
        return float(value)
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return f if _math.isfinite(f) else default


def _opt_num(value: Any) -> float | None:
    """A finite float, or None when missing or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if _math.isfinite(f) else None


def _int(value: Any, default: int = 0) -> int:
    f = _opt_num(value)
    if f is None:
        return default
    try:
        return int(f)
    except (OverflowError, ValueError):
        return default


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _str(value: Any, default: str = "") -> str:
    return default if value is None else str(value)


class _Run:
    """The data, read defensively once."""

    def __init__(self, data: Any) -> None:
        d = _dict(data)
        self.title = _str(d.get("title"), "Sluice demo") or "Sluice demo"
        self.started_ms = _opt_num(d.get("started_unix_ms"))
        self.duration = max(0.0, _num(d.get("duration_s")))
        self.segment = _str(d.get("segment"))
        self.nproc = _int(_dict(d.get("machine")).get("nproc"))

        self.tier_cfg: dict[str, dict] = {}
        names: list[str] = []
        for t in _list(d.get("tiers")):
            t = _dict(t)
            name = _str(t.get("name"))
            if name and name not in self.tier_cfg:
                names.append(name)
                self.tier_cfg[name] = t

        self.phases = []
        for p in _list(d.get("phases")):
            p = _dict(p)
            s, e = _opt_num(p.get("start_s")), _opt_num(p.get("end_s"))
            if s is None or e is None or e < s:
                continue
            name = _str(p.get("name"))
            self.phases.append({"name": name, "label": _str(p.get("label")) or name,
                                "start": s, "end": e})

        samples = []
        for s in _list(d.get("samples")):
            s = _dict(s)
            t = _opt_num(s.get("t_s"))
            if t is not None:
                samples.append((t, s))
        samples.sort(key=lambda x: x[0])
        self.samples = [s for _, s in samples]
        self.t = [t for t, _ in samples]
        for s in self.samples:
            for name in _dict(s.get("tiers")):
                if str(name) not in self.tier_cfg and str(name) not in names:
                    names.append(str(name))

        st = _dict(d.get("static_series"))
        self.static_t = [_opt_num(x) for x in _list(st.get("t_s"))]
        self.static_tiers = {str(k): _dict(v) for k, v in _dict(st.get("tiers")).items()}

        self.governance = []
        for g in _list(d.get("governance")):
            g = _dict(g)
            self.governance.append(dict(g, t=_num(g.get("t_s"))))
        self.governance.sort(key=lambda g: g["t"])
        # "published" is the rules' routine change (every tick); the rest (pending,
        # approved, rejected, expired) are the events worth a marker and a table row.
        self.routine = [g for g in self.governance if _str(g.get("event")) == "published"]
        self.events = [g for g in self.governance if _str(g.get("event")) != "published"]

        totals = _dict(d.get("totals"))
        self.tier_totals = {str(k): _dict(v) for k, v in _dict(totals.get("tiers")).items()}
        for name in self.tier_totals:
            if name not in names:
                names.append(name)
        self.names = names
        self.revenue = _num(totals.get("revenue"))
        self.static_revenue = _num(totals.get("static_revenue"))
        self.ratio = _opt_num(totals.get("revenue_ratio"))
        self.clients = [_dict(c) for c in _list(d.get("clients"))]
        match = _dict(d.get("checks")).get("clients_match_daemon")
        self.match = match if isinstance(match, bool) else None

        ends = [self.duration] + self.t[-1:] + [p["end"] for p in self.phases] \
            + [g["t"] for g in self.governance] + [x for x in self.static_t if x is not None]
        self.t_max = max(ends) if ends else 0.0
        if self.t_max <= 0:
            self.t_max = 1.0
        self.lanes = _marker_lanes([_x_of(g["t"], self.t_max) for g in self.events])
        self.marker_rows = max([lane + 1 for lane in self.lanes if lane is not None] or [0])

        self.attack = any(self.total(n, "attack_requests") > 0 for n in self.names)

    def color(self, name: str) -> str:
        return _TIER_COLORS[self.names.index(name) % len(_TIER_COLORS)]

    def tier_series(self, name: str, field: str) -> list[tuple[float, float | None]]:
        out = []
        for t, s in zip(self.t, self.samples):
            entry = _dict(_dict(s.get("tiers")).get(name))
            out.append((t, _opt_num(entry.get(field)) if entry else None))
        return out

    def tier_surge(self, name: str) -> list[tuple[float, float | None]]:
        out = []
        for t, s in zip(self.t, self.samples):
            lvl = _dict(_dict(s.get("tiers")).get(name)).get("surge")
            out.append((t, SURGE_LEVELS.get(str(lvl)) if lvl is not None else None))
        return out

    def host_surge(self) -> list[tuple[float, float | None]]:
        return [(t, SURGE_LEVELS.get(str(s.get("host_surge"))))
                for t, s in zip(self.t, self.samples)]

    def static_series(self, name: str, field: str) -> list[tuple[float, float | None]]:
        vals = _list(self.static_tiers.get(name, {}).get(field))
        return [(t, _opt_num(v)) for t, v in zip(self.static_t, vals) if t is not None]

    def total(self, name: str, field: str) -> float:
        return _num(self.tier_totals.get(name, {}).get(field))

    def opt_total(self, name: str, field: str) -> float | None:
        return _opt_num(self.tier_totals.get(name, {}).get(field))

    def tier_match(self, name: str) -> bool | None:
        tt = self.tier_totals.get(name)
        if not tt or tt.get("daemon_admitted") is None:
            return None
        return (_int(tt.get("admitted")) == _int(tt.get("daemon_admitted"))
                and _int(tt.get("denied")) == _int(tt.get("daemon_denied")))

    def started_text(self) -> str:
        if self.started_ms is None:
            return ""
        try:
            when = _dt.datetime.fromtimestamp(self.started_ms / 1000.0, tz=_dt.timezone.utc)
        except (OverflowError, OSError, ValueError):
            return ""
        return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _cumulative(points: list[tuple[float, float | None]]) -> list[tuple[float, float]]:
    """Integrates a rate series: each sample covers the time since the previous one
    (the first, the time since 0)."""
    out, total, prev = [], 0.0, 0.0
    for t, v in points:
        dt = t - prev if t > prev else 0.0
        total += (v or 0.0) * dt
        prev = max(prev, t)
        out.append((t, total))
    return out


def _sum_series(series: Iterable[list[tuple[float, float | None]]]
                ) -> list[tuple[float, float | None]]:
    acc: dict[float, float] = {}
    for pts in series:
        for t, v in pts:
            acc[t] = acc.get(t, 0.0) + (v or 0.0)
    return sorted(acc.items())


def _x_of(t: float, t_max: float) -> float:
    """The SVG x of a time (the same on every chart)."""
    return _ML + (_W - _MR - _ML) * _num(t) / t_max


def _badge_width(number: int) -> float:
    return 8.0 + 6.5 * len(str(number))


_MARKER_LANES = 3  # rows of numbered badges at the top of a chart
_LANE_H = 14


def _marker_lanes(xs: list[float]) -> list[int | None]:
    """The badge row of each marker (numbered 1..n, sorted by time): the first row
    where it does not overlap the previous badge; None (line only, no badge) when
    all rows are taken there."""
    ends = [-1e9] * _MARKER_LANES
    out: list[int | None] = []
    for i, x in enumerate(xs, 1):
        half = _badge_width(i) / 2
        for lane in range(_MARKER_LANES):
            if x - half >= ends[lane] + 2:
                ends[lane] = x + half
                out.append(lane)
                break
        else:
            out.append(None)
    return out


# --------------------------------------------------------------------------- format

def _f(x: float) -> str:
    """An SVG coordinate: always finite."""
    return f"{_num(x):.1f}"


def _fmt_num(v: float) -> str:
    v = _num(v)
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3g}G"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{round(v, 4):g}"


def _fmt_money(v: float, digits: int = 2) -> str:
    return f"${_num(v):,.{digits}f}"


def _fmt_int(v: Any) -> str:
    return f"{_int(v):,}"


def _fmt_ratio(r: float | None) -> str:
    if r is None:
        return "n/a"
    return f"x{r:.2f} ({(r - 1) * 100:+.1f}%)"


def _nice_step(span: float, n: int = 5) -> float:
    if span <= 0:
        return 1.0
    raw = span / n
    mag = 10 ** _math.floor(_math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _axis(vmax: float, n: int = 5) -> tuple[float, list[float]]:
    vmax = _num(vmax)
    if vmax <= 0:
        vmax = 1.0
    step = _nice_step(vmax, n)
    top = _math.ceil(vmax / step - 1e-9) * step
    ticks = [i * step for i in range(int(round(top / step)) + 1)]
    return top, ticks


# --------------------------------------------------------------------------- charts

class _Chart:
    """One time chart: x = seconds since start, left y axis, optional right axis."""

    def __init__(self, run: _Run, cid: str, height: int, ymax: float,
                 yticks: list[float], yfmt: Callable[[float], str], ylabel: str) -> None:
        # a band for the governance badges between the phase labels and the plot, as
        # tall as the rows of badges need (the plot keeps its height)
        band = _LANE_H * run.marker_rows + (2 if run.marker_rows else 0)
        self.run, self.cid, self.h = run, cid, height + band
        self.x0, self.x1 = _ML, _W - _MR
        self.band = _MT  # top of the badge band
        self.y0, self.y1 = self.h - _MB, _MT + band  # y0 = bottom (value 0), y1 = top
        self.ymax, self.yticks, self.yfmt, self.ylabel = ymax or 1.0, yticks, yfmt, ylabel
        self.parts: list[str] = []
        self.tip: list[dict] = []  # tooltip series: {"n", "t", "v", "u"}

    def x(self, t: float) -> float:
        return _x_of(t, self.run.t_max)

    def y(self, v: float, ymax: float | None = None) -> float:
        top = ymax or self.ymax
        v = min(max(_num(v), 0.0), top * 1.02)
        return self.y0 - (self.y0 - self.y1) * v / top

    def _background(self) -> list[str]:
        out = []
        for i, p in enumerate(self.run.phases):
            xa, xb = self.x(p["start"]), self.x(p["end"])
            color = _PHASE_COLORS.get(p["name"], "#f3f4f6" if i % 2 else "#e5e7eb")
            out.append(f'<rect class="phase" x="{_f(xa)}" y="{_f(self.y1)}" '
                       f'width="{_f(max(xb - xa, 0))}" height="{_f(self.y0 - self.y1)}" '
                       f'fill="{color}"><title>{_esc(p["label"])}: '
                       f'{p["start"]:.1f}-{p["end"]:.1f} s</title></rect>')
            label = p["label"]
            room = max(int((xb - xa) / 6.5), 0)
            if room >= 3:
                if len(label) > room:
                    label = label[:max(room - 1, 1)] + "\u2026"
                out.append(f'<text class="phase-label" x="{_f((xa + xb) / 2)}" '
                           f'y="{_f(self.band - 6)}" text-anchor="middle">{_esc(label)}</text>')
        for v in self.yticks:
            yy = self.y(v)
            out.append(f'<line class="grid" x1="{_f(self.x0)}" x2="{_f(self.x1)}" '
                       f'y1="{_f(yy)}" y2="{_f(yy)}"/>')
            out.append(f'<text class="tick" x="{_f(self.x0 - 6)}" y="{_f(yy + 4)}" '
                       f'text-anchor="end">{_esc(self.yfmt(v))}</text>')
        _, xticks = _axis(self.run.t_max, 9)
        for t in xticks:
            if t > self.run.t_max + 1e-9:
                continue
            xx = self.x(t)
            out.append(f'<line class="xtick" x1="{_f(xx)}" x2="{_f(xx)}" '
                       f'y1="{_f(self.y0)}" y2="{_f(self.y0 + 4)}"/>')
            out.append(f'<text class="tick" x="{_f(xx)}" y="{_f(self.y0 + 17)}" '
                       f'text-anchor="middle">{_fmt_num(t)} s</text>')
        out.append(f'<line class="axis" x1="{_f(self.x0)}" x2="{_f(self.x1)}" '
                   f'y1="{_f(self.y0)}" y2="{_f(self.y0)}"/>')
        out.append(f'<text class="axis-label" x="14" y="{_f((self.y0 + self.y1) / 2)}" '
                   f'transform="rotate(-90 14 {_f((self.y0 + self.y1) / 2)})" '
                   f'text-anchor="middle">{_esc(self.ylabel)}</text>')
        return out

    def right_axis(self, ymax: float, ticks: list[float], fmt: Callable[[float], str],
                   label: str) -> None:
        for v in ticks:
            yy = self.y(v, ymax)
            self.parts.append(f'<text class="tick tick-right" x="{_f(self.x1 + 6)}" '
                              f'y="{_f(yy + 4)}">{_esc(fmt(v))}</text>')
        mid = (self.y0 + self.y1) / 2
        self.parts.append(f'<text class="axis-label" x="{_f(_W - 12)}" y="{_f(mid)}" '
                          f'transform="rotate(90 {_f(_W - 12)} {_f(mid)})" '
                          f'text-anchor="middle">{_esc(label)}</text>')

    def _runs(self, pts: list[tuple[float, float | None]], ymax: float | None,
              offset: float) -> list[list[tuple[float, float]]]:
        """Contiguous stretches of defined points, in SVG coordinates."""
        runs: list[list[tuple[float, float]]] = [[]]
        for t, v in pts:
            if v is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append((self.x(t), self.y(v, ymax) + offset))
        return [r for r in runs if r]

    @staticmethod
    def _d(run: list[tuple[float, float]], step: bool) -> str:
        cmd = [f"M{_f(run[0][0])} {_f(run[0][1])}"]
        for (_, _), (xb, yb) in zip(run, run[1:]):
            cmd.append(f"H{_f(xb)}V{_f(yb)}" if step else f"L{_f(xb)} {_f(yb)}")
        return "".join(cmd)

    def line(self, pts: list[tuple[float, float | None]], color: str, name: str, *,
             width: float = 2.0, dash: str = "", step: bool = False,
             ymax: float | None = None, offset: float = 0.0, fill: str = "",
             unit: str = "", tip: bool = True, tip_fmt: Callable[[float], str] | None = None,
             cls: str = "series") -> None:
        runs = self._runs(pts, ymax, offset)
        lines = [r for r in runs if len(r) > 1]
        lone = [r[0] for r in runs if len(r) == 1]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        if fill:
            for r in lines:
                self.parts.append(f'<path class="area" d="{self._d(r, step)}'
                                  f'V{_f(self.y0)}H{_f(r[0][0])}Z" fill="{fill}" '
                                  f'stroke="none"/>')
        if lines:
            d = " ".join(self._d(r, step) for r in lines)
            self.parts.append(f'<path class="{cls}" d="{d}" fill="none" stroke="{color}" '
                              f'stroke-width="{width}"{dash_attr}><title>{_esc(name)}'
                              f'</title></path>')
        for xx, yy in lone:
            self.parts.append(f'<circle class="{cls}" cx="{_f(xx)}" cy="{_f(yy)}" '
                              f'r="{max(width + 1.5, 3):.1f}" fill="{color}"><title>'
                              f'{_esc(name)}</title></circle>')
        if tip:
            fmt = tip_fmt or _fmt_num
            ts = [round(t, 3) for t, v in pts if v is not None]
            vs = [fmt(v) for t, v in pts if v is not None]
            gaps = sorted(b - a for a, b in zip(ts, ts[1:]) if b > a)
            reach = 1.5 * gaps[len(gaps) // 2] if gaps else self.run.t_max
            self.tip.append({"n": name, "c": color, "t": ts, "v": vs, "u": unit,
                             "g": round(max(reach, self.run.t_max / 200), 3)})

    def hline(self, value: float, color: str, label: str, ymax: float | None = None) -> None:
        yy = self.y(value, ymax)
        self.parts.append(f'<line class="ref" x1="{_f(self.x0)}" x2="{_f(self.x1)}" '
                          f'y1="{_f(yy)}" y2="{_f(yy)}" stroke="{color}">'
                          f'<title>{_esc(label)}</title></line>')

    def note(self, text: str) -> None:
        self.parts.append(f'<text class="note" x="{_f(self.x0 + 8)}" y="{_f(self.y1 + 16)}">'
                          f'{_esc(text)}</text>')

    def _governance(self) -> list[str]:
        """The non-routine events (not "published") as dashed vertical lines with a
        numbered badge (the number of the governance table's row)."""
        out = []
        for i, (g, lane) in enumerate(zip(self.run.events, self.run.lanes), 1):
            xx = self.x(g["t"])
            color = _EVENT_COLORS.get(_str(g.get("event")), "#6b7280")
            title = (f'#{i} {g["t"]:.1f} s {_str(g.get("event"))} {_str(g.get("tier"))} '
                     f'{_str(g.get("old_limit"))} -> {_str(g.get("new_limit"))} '
                     f'by {_str(g.get("actor"))}: {_str(g.get("reason"))}')
            badge = ""
            if lane is not None:
                bw, by = _badge_width(i), self.band + 1 + lane * _LANE_H
                badge = (f'<rect x="{_f(xx - bw / 2)}" y="{_f(by)}" width="{_f(bw)}" '
                         f'height="13" rx="3" fill="{color}"/>'
                         f'<text class="gov-num" x="{_f(xx)}" y="{_f(by + 10)}" '
                         f'text-anchor="middle">{i}</text>')
            out.append(f'<g class="gov-marker"><title>{_esc(title)}</title>'
                       f'<line x1="{_f(xx)}" x2="{_f(xx)}" y1="{_f(self.band)}" '
                       f'y2="{_f(self.y0)}" stroke="{color}" stroke-width="1.2" '
                       f'stroke-dasharray="4 3" opacity="0.75"/>{badge}</g>')
        return out

    def svg(self, index: int, aria: str) -> str:
        body = self._background() + self.parts + self._governance()
        cursor = (f'<line class="cursor" x1="0" x2="0" y1="{_f(self.y1)}" '
                  f'y2="{_f(self.y0)}" visibility="hidden"/>')
        return (f'<svg id="{self.cid}" class="chart" data-chart="{index}" '
                f'viewBox="0 0 {_W} {self.h}" role="img" aria-label="{_esc(aria)}">'
                + "".join(body) + cursor + "</svg>")

    def tip_data(self) -> dict:
        return {"x0": self.x0, "x1": self.x1, "tmax": self.run.t_max, "s": self.tip}


def _legend(items: list[tuple[str, str, str]]) -> str:
    """items: (color, label, style) with style "line" | "dash" | "dot" | "area" | "step"."""
    out = []
    for color, label, style in items:
        out.append(f'<span class="key"><span class="sw sw-{style}" '
                   f'style="--c:{color}"></span>{_esc(label)}</span>')
    return '<div class="legend">' + "".join(out) + "</div>"


def _figure(title: str, legend: str, svg: str, caption: str = "") -> str:
    cap = f'<p class="caption">{_esc(caption)}</p>' if caption else ""
    return (f'<figure class="panel"><figcaption>{_esc(title)}</figcaption>'
            f'{legend}{svg}{cap}</figure>')


def _tier_chart(run: _Run, name: str, index: int, charts: list[_Chart]) -> str:
    cfg = run.tier_cfg.get(name, {})
    offered = run.tier_series(name, "offered_rps")
    admitted = run.tier_series(name, "admitted_rps")
    limit = run.tier_series(name, "limit")
    static = run.static_series(name, "admitted_rps")
    color = run.color(name)

    def peak(pts: list[tuple[float, float | None]]) -> float:
        return max([v for _, v in pts if v is not None] or [0.0])

    served = max(peak(admitted), peak(static))
    off = peak(offered)
    clipped = served > 0 and off > 3 * served
    top, ticks = _axis(3 * served if clipped else max(off, served))

    base = _opt_num(cfg.get("baseline_limit"))
    ceil_ = _opt_num(cfg.get("max_limit"))
    lim_top, lim_ticks = _axis(max(peak(limit), base or 0, ceil_ or 0) * 1.1, 4)

    c = _Chart(run, f"chart-tier-{index}", 230, top, ticks, _fmt_num, "requests/s")
    c.right_axis(lim_top, lim_ticks, _fmt_num, "limit per key")
    if base is not None:
        c.hline(base, "#6b7280", f"baseline limit {_fmt_num(base)}", lim_top)
    if ceil_ is not None:
        c.hline(ceil_, "#111827", f"max_limit {_fmt_num(ceil_)}", lim_top)
    c.line(offered, "#9ca3af", "offered", width=1.5, fill="rgba(156,163,175,0.25)", unit="rps")
    c.line(static, "#374151", "static admitted (replay)", width=1.5, dash="2 3", unit="rps")
    c.line(admitted, color, "admitted", width=2.5, unit="rps")
    c.line(limit, "#111827", "limit per key", width=1.8, step=True, ymax=lim_top,
           unit="per window")
    if not any(v for _, v in offered) and not any(v for _, v in admitted):
        c.note("no traffic")
    elif clipped:
        c.note(f"offered clipped at {_fmt_num(top)} rps; peak {_fmt_num(off)} rps")
    charts.append(c)

    window = _num(cfg.get("window_s"))
    rpr = _num(cfg.get("revenue_per_request"))
    parts = [f"${rpr:g} a request" if cfg else "not in the policy list"]
    if window:
        parts.append(f"window {window:g} s")
    if base is not None:
        parts.append(f"baseline {_fmt_num(base)}")
    if ceil_ is not None:
        parts.append(f"max {_fmt_num(ceil_)}")
    legend = _legend([("#9ca3af", "offered", "area"), (color, "admitted", "line"),
                      ("#374151", "static admitted (replay)", "dot"),
                      ("#111827", "limit per key (right axis)", "step")])
    per = f"{window:g} s window" if window else "window"
    refs = [r for r, v in (("baseline (grey)", base), ("max_limit (black)", ceil_))
            if v is not None]
    caption = (f"Requests/s of the whole tier on the left axis. The limit (right axis) "
               f"applies to each key of the tier: every key may make that many requests "
               f"per {per}, so the tier as a whole admits a multiple of it."
               + (f" Dotted lines: its {' and '.join(refs)}." if refs else ""))
    return _figure(f"Tier {name}: offered vs admitted ({', '.join(parts)})",
                   legend, c.svg(len(charts) - 1, f"tier {name} requests per second"),
                   caption)


def _surge_chart(run: _Run, charts: list[_Chart]) -> str:
    c = _Chart(run, "chart-surge", 210, 2.3, [0, 1, 2],
               lambda v: _LEVEL_NAMES[int(v)] if 0 <= int(v) < 3 else "", "surge level")
    level_fmt = lambda v: _LEVEL_NAMES[int(v)] if 0 <= int(v) < 3 else "?"  # noqa: E731
    items = [("#111827", "host", "line")]
    n = len(run.names)
    for i, name in enumerate(run.names):
        off = (i + 1 - (n + 1) / 2) * 5.0 if n else 0.0
        c.line(run.tier_surge(name), run.color(name), name, width=2, step=True,
               offset=off, tip_fmt=level_fmt)
        items.append((run.color(name), name, "line"))
    c.line(run.host_surge(), "#111827", "host", width=3.5, step=True, tip_fmt=level_fmt,
           dash="8 4")
    items[0] = ("#111827", "host", "dash")
    charts.append(c)
    return _figure("Surge level: host and each tier", _legend(items),
                   c.svg(len(charts) - 1, "surge level over time"),
                   "normal / surge / ddos as the daemon classified them each tick; "
                   "tier lines are offset slightly so equal levels stay visible.")


def _denied_share(run: _Run, name: str) -> list[tuple[float, float | None]]:
    """Per sample, the percentage of the tier's offered requests that was denied
    (0 when nothing was offered; None when a rate is missing), within 0..100."""
    out = []
    for (t, offered), (_, denied) in zip(run.tier_series(name, "offered_rps"),
                                         run.tier_series(name, "denied_rps")):
        if offered is None or denied is None:
            out.append((t, None))
        elif offered <= 0:
            out.append((t, 0.0))
        else:
            out.append((t, min(max(denied / offered * 100.0, 0.0), 100.0)))
    return out


def _denial_chart(run: _Run, charts: list[_Chart]) -> str:
    c = _Chart(run, "chart-denials", 230, 100.0, [0, 20, 40, 60, 80, 100],
               lambda v: f"{v:g} %", "denied share")
    items, peaks = [], []
    any_denied = False
    for name in run.names:
        pts = _denied_share(run, name)
        any_denied = any_denied or any(v for _, v in pts)
        c.line(pts, run.color(name), name, width=2, unit="% denied",
               tip_fmt=lambda v: f"{v:.1f}")
        items.append((run.color(name), name, "line"))
        rates = [(v, t) for t, v in run.tier_series(name, "denied_rps") if v]
        if rates:
            v, t = max(rates)
            peaks.append(f"{name} {v:,.0f}/s at {t:.0f} s" if v >= 10 else
                         f"{name} {v:.1f}/s at {t:.0f} s")
    if not any_denied:
        c.note("no denials")
    charts.append(c)
    caption = ("Each tier's denied requests as a percentage of the requests it offered, "
               "per sample (0 when nothing was offered).")
    if peaks:
        caption += " Highest denial rates: " + "; ".join(peaks) + "."
    return _figure("Denied share of offered requests by tier", _legend(items),
                   c.svg(len(charts) - 1, "denied share of offered requests by tier"),
                   caption)


def _revenue_chart(run: _Run, charts: list[_Chart]) -> str:
    adaptive = _cumulative(_sum_series(run.tier_series(n, "revenue_rate") for n in run.names))
    static = _cumulative(_sum_series(run.static_series(n, "revenue_rate") for n in run.names))
    peak = max([v for _, v in adaptive + static] or [0.0])
    height = 250
    top, ticks = _axis(peak * 1.12)  # room for the end labels inside the plot
    money = lambda v: _fmt_money(v, 0 if top >= 100 else 2)  # noqa: E731
    c = _Chart(run, "chart-revenue", height, top, ticks, money, "dollars")
    c.line(static, "#6b7280", "static limits (replay)", width=2.5, dash="6 4",
           tip_fmt=_fmt_money)
    c.line(adaptive, "#059669", "adaptive (this run)", width=3, tip_fmt=_fmt_money)
    # end labels: the higher line's above it, the lower line's below it, so that two
    # close totals never print over each other
    ends = sorted(((pts[-1], color) for pts, color in ((adaptive, "#059669"),
                                                       (static, "#6b7280")) if pts),
                  key=lambda e: -e[0][1])
    for k, ((t, v), color) in enumerate(ends):
        yy = c.y(v) - 7 if k == 0 else min(c.y(v) + 17, c.y0 - 4)
        c.parts.append(f'<text class="end-label" x="{_f(min(c.x(t), c.x1) - 2)}" '
                       f'y="{_f(yy)}" fill="{color}" text-anchor="end">'
                       f'{_esc(_fmt_money(v))}</text>')
    if peak <= 0:
        c.note("no revenue sampled")
    charts.append(c)
    caption = ("Summed from the sampled revenue rates; the exact totals are in the table "
               "above.")
    # the sampled series should roughly agree with the exact totals; say so when not
    off = []
    for label, pts, exact in (("adaptive", adaptive, run.revenue),
                              ("static", static, run.static_revenue)):
        sampled = pts[-1][1] if pts else 0.0
        if exact > 0 and abs(sampled - exact) > 0.1 * exact:
            off.append(f"{label} {_fmt_money(sampled)} sampled vs {_fmt_money(exact)} exact")
    if off:
        caption += (" Warning: the sampled series disagree with the totals by more than "
                    "10% (" + "; ".join(off) + "); trust the totals.")
    return _figure("Cumulative revenue admitted: adaptive vs static limits",
                   _legend([("#059669", "adaptive (this run)", "line"),
                            ("#6b7280", "static limits (offline replay, same traffic)",
                             "dash")]),
                   c.svg(len(charts) - 1, "cumulative revenue"), caption)


# --------------------------------------------------------------------------- tables

_ATTACK_FIELDS = ("attack_requests", "attack_admitted", "static_attack_admitted")


def _totals_table(run: _Run) -> str:
    """Per tier totals; the attack columns only when some tier had attack traffic
    (a tier without the fields gets empty cells)."""
    head = ["tier", "requests", "admitted", "denied", "revenue", "static admitted",
            "static revenue"]
    fields = ["requests", "admitted", "denied", "revenue", "static_admitted",
              "static_revenue"]
    money = {"revenue", "static_revenue"}
    if run.attack:
        head += ["attack requests", "attack let through",
                 "attack let through, static"]
        fields += list(_ATTACK_FIELDS)
    head += ["daemon admitted", "daemon denied", "matches daemon"]
    fields += ["daemon_admitted", "daemon_denied"]
    sums: list[float | None] = [None] * len(fields)
    rows = []
    for name in run.names:
        cells = []
        for k, f in enumerate(fields):
            v = run.opt_total(name, f) if f in _ATTACK_FIELDS else run.total(name, f)
            if v is None:
                cells.append("")
                continue
            sums[k] = (sums[k] or 0.0) + v
            cells.append(_fmt_money(v) if f in money else _fmt_int(v))
        m = run.tier_match(name)
        mark = ('<span class="ok">yes</span>' if m else
                '<span class="bad">no</span>' if m is not None else "n/a")
        rows.append(f'<tr><th scope="row"><span class="dot" style="--c:{run.color(name)}">'
                    f'</span>{_esc(name)}</th>'
                    + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{mark}</td></tr>")
    foot = []
    for f, v in zip(fields, sums):
        if f == "revenue":
            foot.append(_fmt_money(run.revenue))
        elif f == "static_revenue":
            foot.append(_fmt_money(run.static_revenue))
        else:
            foot.append("" if v is None and f in _ATTACK_FIELDS else _fmt_int(v or 0))
    if not rows:
        rows.append(f'<tr><td colspan="{len(head)}" class="empty">no tiers</td></tr>')
    return ('<table id="totals" class="data"><thead><tr>'
            + "".join(f'<th scope="col">{h}</th>' for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + '</tbody><tfoot><tr><th scope="row">all tiers</th>'
            + "".join(f"<td>{c}</td>" for c in foot) + "<td></td></tr></tfoot></table>"
            '<p id="revenue-note" class="caption">Revenue counts legitimate customers\' '
            "admitted requests; attack traffic let through is load on the backend, not "
            "income. Requests, admitted, denied and the daemon's columns count all "
            "traffic, attack included.</p>")


_GOV_ROWS = 200  # rows of the governance table; the rest is in report.json


_ROUTINE_ROWS = 2000  # publications listed in the collapsed table (all in report.json)


def _routine_summary(run: _Run) -> str:
    """One line per tier for the rules' routine publications (not marked on the
    charts, not in the table)."""
    by_tier: dict[str, list[dict]] = {}
    for g in run.routine:
        by_tier.setdefault(_str(g.get("tier")), []).append(g)
    if not by_tier:
        return ""
    order = [n for n in run.names if n in by_tier] + [n for n in by_tier if n not in run.names]
    items = []
    for name in order:
        gs = by_tier[name]
        actors = sorted({_str(g.get("actor")) for g in gs})
        who = " and ".join("the rules" if a == "rules" else (a or "unknown") for a in actors)
        limits = [v for g in gs for v in (_opt_num(g.get("old_limit")),
                                           _opt_num(g.get("new_limit"))) if v is not None]
        text = (f"{name or '(no tier)'}: {len(gs):,} "
                f"publication{'s' if len(gs) != 1 else ''} by {who}")
        if limits:
            lo, hi = min(limits), max(limits)
            text += (f", limit between {_fmt_num(lo)} and {_fmt_num(hi)}" if lo != hi
                     else f", limit {_fmt_num(lo)}")
        items.append(f"<li>{_esc(text)}</li>")
    rows = "".join(
        f'<tr><td>{g["t"]:.1f} s</td><td>{_esc(g.get("tier"))}</td><td>{_esc(g.get("old_limit"))} -&gt; '
        f'{_esc(g.get("new_limit"))}</td><td>{_esc(g.get("actor"))}</td><td class="reason">'
        f'{_esc(g.get("reason"))}</td></tr>' for g in run.routine[:_ROUTINE_ROWS])
    more = len(run.routine) - _ROUTINE_ROWS
    return ('<p class="muted">Routine limit changes published by the policy loop (not '
            'marked on the charts):</p><ul id="routine">' + "".join(items) + "</ul>"
            '<details id="routine-all"><summary>every publication</summary>'
            '<table class="data"><thead><tr><th>time</th><th>tier</th><th>old -&gt; new</th>'
            '<th>actor</th><th>reason</th></tr></thead><tbody>' + rows + "</tbody></table>"
            + (f'<p class="muted">... and {more:,} more in report.json</p>' if more > 0 else "")
            + "</details>")


def _governance_table(run: _Run) -> str:
    if not run.governance:
        return '<p id="governance-empty" class="empty">No governance events in this run.</p>'
    out = [_routine_summary(run)]
    if not run.events:
        out.append('<p id="governance-empty" class="empty">No pending, approved, rejected '
                   'or expired changes in this run.</p>')
        return "".join(out)
    rows = []
    for i, g in enumerate(run.events[:_GOV_ROWS], 1):
        event = _str(g.get("event"))
        color = _EVENT_COLORS.get(event, "#6b7280")
        old, new = g.get("old_limit"), g.get("new_limit")
        change = f"{_esc(old)} -&gt; {_esc(new)}"
        o, n = _opt_num(old), _opt_num(new)
        if o and n is not None:
            change += f' <span class="muted">(x{n / o:.2f})</span>'
        aid = _str(g.get("approval_id"))
        rows.append(f'<tr><td>{i}</td><td>{g["t"]:.1f} s</td><td><span class="event" '
                    f'style="--c:{color}">{_esc(event)}</span></td><td>{_esc(g.get("tier"))}'
                    f'</td><td>{change}</td><td>{_esc(g.get("actor"))}</td>'
                    f'<td class="reason">{_esc(g.get("reason"))}</td>'
                    f'<td><code>{_esc(aid)}</code></td></tr>')
    out.append('<p class="muted">Changes held for approval and what became of them, '
               'numbered as the markers on the charts:</p>')
    out.append('<table id="governance" class="data"><thead><tr><th>#</th><th>time</th>'
               '<th>event</th><th>tier</th><th>old -&gt; new</th><th>actor</th>'
               '<th>reason</th><th>approval id</th></tr></thead><tbody>' + "".join(rows)
               + "</tbody></table>")
    more = len(run.events) - _GOV_ROWS
    if more > 0:
        out.append(f'<p id="governance-more" class="muted">... and {more:,} more in '
                   'report.json</p>')
    return "".join(out)


def _marker_legend(run: _Run) -> str:
    """What the numbered dashed lines on the charts are (when there are any)."""
    if not run.events:
        return ""
    seen = []
    for g in run.events:
        e = _str(g.get("event"))
        if e not in seen:
            seen.append(e)
    keys = "".join(f'<span class="event" style="--c:{_EVENT_COLORS.get(e, "#6b7280")}">'
                   f'{_esc(e)}</span> ' for e in seen)
    return (f'<p id="marker-legend" class="muted">Numbered dashed lines on the charts: '
            f'{keys}governance events, numbered as in the table at the end '
            f'(the {len(run.routine):,} routine publications are not marked).</p>')


def _clients_line(run: _Run) -> str:
    if not run.clients:
        return ""
    parts = []
    for c in run.clients:
        parts.append(f'{_esc(c.get("language"))} client on {_esc(c.get("tier"))} '
                     f'({_fmt_int(c.get("keys"))} keys)')
    return '<p class="muted">Clients: ' + "; ".join(parts) + ".</p>"


# --------------------------------------------------------------------------- page

_CSS = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f9fafb}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1240px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
.muted{color:var(--muted)}
.headline{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.stat{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 16px;
 min-width:170px}
.stat b{display:block;font-size:22px}.stat span{color:var(--muted);font-size:12px}
.stat.good b{color:#047857}.stat.bad b{color:#b91c1c}
.panel{background:#fff;border:1px solid var(--line);border-radius:8px;margin:14px 0;
 padding:10px 12px}
figcaption{font-weight:600;margin-bottom:4px}
.caption{margin:2px 0 0;color:var(--muted);font-size:12px}
svg.chart{display:block;width:100%;height:auto;font-size:12px}
.phase-label{fill:#374151;font-size:12px;font-weight:600}
.grid{stroke:#e5e7eb;stroke-width:1}.axis{stroke:#9ca3af}.xtick{stroke:#9ca3af}
.tick{fill:#4b5563;font-size:11px}.axis-label{fill:#6b7280;font-size:11px}
.ref{stroke-width:1;stroke-dasharray:1 4;opacity:.8}
.note{fill:#b45309;font-size:12px;font-style:italic}
.end-label{font-size:12px;font-weight:700}
.gov-num{fill:#fff;font-size:10px;font-weight:700}
.cursor{stroke:#111827;stroke-width:1;opacity:.5;pointer-events:none}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px;color:#374151;margin:2px 0 4px}
.key{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block;width:22px;height:0;border-top:3px solid var(--c)}
.sw-dash{border-top-style:dashed}.sw-dot{border-top-style:dotted}
.sw-area{height:10px;border:1px solid var(--c);background:rgba(156,163,175,.3)}
.sw-step{width:22px;height:8px;border:2px solid var(--c);border-bottom:0;border-left:0}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;background:var(--c);
 margin-right:6px}
table.data{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line);
 font-size:13px}
table.data th,table.data td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:right}
table.data th:first-child,table.data td:first-child{text-align:left}
table.data thead th{background:#f3f4f6;font-weight:600}
table.data tfoot th,table.data tfoot td{font-weight:700;border-top:2px solid #d1d5db}
#governance td,#governance th{text-align:left}
table.data tbody th{white-space:nowrap}
td.reason{max-width:420px;overflow-wrap:anywhere}
.event{display:inline-block;padding:0 6px;border-radius:4px;color:#fff;background:var(--c)}
.ok{color:#047857;font-weight:700}.bad{color:#b91c1c;font-weight:700}
.empty{color:var(--muted);font-style:italic}
#tip{position:absolute;display:none;pointer-events:none;background:rgba(17,24,39,.92);
 color:#fff;padding:6px 8px;border-radius:6px;font-size:12px;line-height:1.35;z-index:10;
 max-width:360px;overflow-wrap:anywhere}
#tip .sw{width:10px;margin-right:4px;vertical-align:middle}
"""

# Hover tooltips: the nearest sample of each series under the mouse (none when the
# nearest is further than 1.5 sample spacings away). Strings go in with
# textContent only (never innerHTML), so untrusted names stay text.
_JS = """
(function(){
 var el=document.getElementById('chart-data'),tip=document.getElementById('tip');
 if(!el||!tip)return;
 var charts=JSON.parse(el.textContent);
 function nearest(ts,t){var b=-1,d=1e300;for(var i=0;i<ts.length;i++){
  var e=Math.abs(ts[i]-t);if(e<d){d=e;b=i;}}return b;}
 function row(text,color){var r=document.createElement('div');
  if(color){var s=document.createElement('span');s.className='sw';
   s.style.setProperty('--c',color);r.appendChild(s);}
  r.appendChild(document.createTextNode(text));tip.appendChild(r);}
 Array.prototype.forEach.call(document.querySelectorAll('svg[data-chart]'),function(svg){
  var c=charts[+svg.getAttribute('data-chart')],cur=svg.querySelector('.cursor');
  if(!c)return;
  svg.addEventListener('mousemove',function(ev){
   var r=svg.getBoundingClientRect(),vb=svg.viewBox.baseVal;
   if(!r.width||!vb||!vb.width)return;
   var x=(ev.clientX-r.left)*vb.width/r.width;
   var t=(x-c.x0)/(c.x1-c.x0)*c.tmax;
   if(t<0||t>c.tmax){tip.style.display='none';return;}
   while(tip.firstChild)tip.removeChild(tip.firstChild);
   row('t = '+t.toFixed(1)+' s',null);
   c.s.forEach(function(s){var i=nearest(s.t,t);
    if(i>=0&&Math.abs(s.t[i]-t)<=s.g)row(s.n+': '+s.v[i]+(s.u?' '+s.u:''),s.c);});
   if(cur){cur.setAttribute('x1',x);cur.setAttribute('x2',x);
    cur.setAttribute('visibility','visible');}
   tip.style.display='block';
   var left=ev.pageX+14;
   if(left+tip.offsetWidth>document.documentElement.clientWidth)
    left=ev.pageX-14-tip.offsetWidth;
   tip.style.left=left+'px';tip.style.top=(ev.pageY+14)+'px';
  });
  svg.addEventListener('mouseleave',function(){tip.style.display='none';
   if(cur)cur.setAttribute('visibility','hidden');});
 });
})();
"""


def _json_for_script(obj: Any) -> str:
    """JSON safe inside <script type="application/json">: no '<', '>' or '&'."""
    text = _json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _attack_sums(run: _Run) -> tuple[int, int]:
    """(adaptive, static) attack requests let through, over the tiers."""
    return (sum(_int(run.total(n, "attack_admitted")) for n in run.names),
            sum(_int(run.total(n, "static_attack_admitted")) for n in run.names))


def _attack_card(run: _Run) -> str:
    if not run.attack:
        return ""
    adaptive, static = _attack_sums(run)
    cls = " good" if adaptive < static else " bad" if adaptive > static else ""
    return (f'<div class="stat{cls}"><span>attack requests let through</span>'
            f'<b id="attack-let-through">adaptive {_fmt_int(adaptive)} vs static '
            f'{_fmt_int(static)}</b></div>')


def render_html(data: dict) -> str:
    """The whole report as one self-contained HTML page (see the module docstring)."""
    run = _Run(data)
    charts: list[_Chart] = []
    figures = [_tier_chart(run, name, i, charts) for i, name in enumerate(run.names)]
    surge = _surge_chart(run, charts)
    denials = _denial_chart(run, charts)
    revenue = _revenue_chart(run, charts)

    ratio = run.ratio
    ratio_cls = "" if ratio is None else (" good" if ratio >= 1 else " bad")
    match_text = {True: "yes", False: "NO", None: "unknown"}[run.match]
    match_cls = {True: " good", False: " bad", None: ""}[run.match]
    meta = [f"{run.duration:.1f} s"]
    if run.started_text():
        meta.append(f"started {run.started_text()}")
    if run.segment:
        meta.append(f"segment {run.segment}")
    if run.nproc:
        meta.append(f"{run.nproc} CPUs")
    meta.append(f"{len(run.samples)} samples")
    meta.append(f"{len(run.governance)} governance events"
                + (f" ({len(run.routine)} routine publications)" if run.routine else ""))
    phases = ", ".join(f'{p["label"]} {p["start"]:.0f}-{p["end"]:.0f} s' for p in run.phases)

    headline = (
        '<section class="headline" id="headline">'
        f'<div class="stat"><span>revenue admitted, adaptive</span>'
        f'<b id="revenue-adaptive">{_esc(_fmt_money(run.revenue))}</b></div>'
        f'<div class="stat"><span>same traffic, static limits</span>'
        f'<b id="revenue-static">{_esc(_fmt_money(run.static_revenue))}</b></div>'
        f'<div class="stat{ratio_cls}"><span>adaptive / static</span>'
        f'<b id="revenue-ratio">{_esc(_fmt_ratio(ratio))}</b></div>'
        f'<div class="stat{match_cls}"><span>clients\u2019 counts match the daemon\u2019s</span>'
        f'<b id="clients-match">{match_text}</b></div>'
        f"{_attack_card(run)}</section>")

    tip_json = _json_for_script([c.tip_data() for c in charts])
    csp = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(run.title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(run.title)}</h1>",
        f'<p class="muted">{_esc(" | ".join(meta))}</p>',
        f'<p class="muted">Phases: {_esc(phases)}</p>' if phases else "",
        headline,
        _clients_line(run),
        "<h2>Totals per tier</h2>", _totals_table(run),
        "<h2>Traffic per tier</h2>", _marker_legend(run), "".join(figures) or
        '<p class="empty">No tiers.</p>',
        "<h2>Surge, denials, revenue</h2>", surge, denials, revenue,
        "<h2>Governance events</h2>", _governance_table(run),
        '<div id="tip" role="tooltip"></div>',
        f'<script type="application/json" id="chart-data">{tip_json}</script>',
        f"<script>{_JS}</script>",
        "</main></body></html>\n",
    ])


# --------------------------------------------------------------------------- text

def _plain(value: Any, width: int | None = None) -> str:
    """Untrusted text for a terminal: control characters (escape sequences) become '?'."""
    s = "".join(ch if ch.isprintable() else "?" for ch in _str(value))
    if width is not None and len(s) > width:
        s = s[:max(width - 1, 0)] + "~"
    return s


def render_summary(data: dict) -> str:
    """A short plain-text summary (at most 15 lines of at most 80 columns)."""
    run = _Run(data)
    lines = []
    head = f"{_plain(run.title, 30)}: {run.duration:.1f} s"
    if run.segment:
        head += f", segment {_plain(run.segment, 24)}"
    if run.nproc:
        head += f", {run.nproc} CPUs"
    lines.append(head)
    lines.append(f"Revenue admitted: adaptive {_fmt_money(run.revenue)}, static "
                 f"{_fmt_money(run.static_revenue)}, {_fmt_ratio(run.ratio)}")
    lines.append("Clients' counts match the daemon's: "
                 + {True: "yes", False: "NO", None: "unknown"}[run.match])
    if run.attack:
        adaptive, static = _attack_sums(run)
        lines.append(f"Attack requests let through: adaptive {_fmt_int(adaptive)} vs static "
                     f"{_fmt_int(static)}")
    lines.append(f"{'tier':<12}{'requests':>11}{'admitted':>11}{'denied':>11}"
                 f"{'revenue':>12}{'static rev':>12}{'daemon':>8}")
    shown = run.names if len(run.names) <= 7 else run.names[:6]
    for name in shown:
        m = run.tier_match(name)
        lines.append(f"{_plain(name, 12):<12}{_fmt_int(run.total(name, 'requests')):>11}"
                     f"{_fmt_int(run.total(name, 'admitted')):>11}"
                     f"{_fmt_int(run.total(name, 'denied')):>11}"
                     f"{_fmt_money(run.total(name, 'revenue')):>12}"
                     f"{_fmt_money(run.total(name, 'static_revenue')):>12}"
                     f"{ {True: 'ok', False: 'DIFF', None: '-'}[m]:>8}")
    if len(shown) < len(run.names):
        lines.append(f"... and {len(run.names) - len(shown)} more tiers (see the report)")
    counts: dict[str, int] = {}
    for g in run.governance:
        e = _plain(g.get("event"), 12)
        counts[e] = counts.get(e, 0) + 1
    gov = ", ".join(f"{n} {e}" for e, n in counts.items())
    lines.append(f"Governance: {len(run.governance)} events" + (f" ({gov})" if gov else ""))
    secs = [0.0, 0.0, 0.0]
    prev = 0.0
    for t, s in zip(run.t, run.samples):
        lvl = SURGE_LEVELS.get(str(s.get("host_surge")))
        if lvl is not None and t > prev:
            secs[lvl] += t - prev
        prev = max(prev, t)
    if run.samples:
        lines.append("Host surge level: " + ", ".join(
            f"{n} {s:.0f} s" for n, s in zip(_LEVEL_NAMES, secs)))
    return "\n".join(line[:80] for line in lines[:15]) + "\n"


# --------------------------------------------------------------------------- files

def _strict(obj: Any) -> Any:
    """A copy for strict JSON: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if _math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def _write(path: _Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{_os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    _os.replace(tmp, path)


def write_report(data: dict, out_dir: str | _os.PathLike) -> dict:
    """Writes report.html, report.json (the data, strict JSON) and summary.txt into
    out_dir (created if needed); returns {"html", "json", "summary"} -> Path."""
    out = _Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "json": out / "report.json",
             "summary": out / "summary.txt"}
    _write(paths["json"], _json.dumps(_strict(data), indent=2, allow_nan=False,
                                      default=str) + "\n")
    _write(paths["html"], render_html(data))
    _write(paths["summary"], render_summary(data))
    return paths
