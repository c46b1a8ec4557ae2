"""`sluice demo`: the five-phase story, live, against the real daemon.

Starts sluiced on its embedded default policy (with /metrics on loopback),
launches C (`sluice-trace`) and Python (`sluice.demo_client`) client processes
that play the phases of demo_traffic, shows `sluicectl top` while it runs (or
progress lines when stdout is not a terminal), acts as the on-call operator who
approves the changes governance holds back, and ends with a report: HTML with
charts, JSON and a text summary, checked against the daemon's own counters and
compared with a static-limit replay of the same traffic.

Ctrl-C (or SIGTERM) stops every process it started and removes the segment and
its temporary files.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sluice import demo_report, demo_traffic

SURGE_LEVEL = {0: "normal", 1: "surge", 2: "ddos"}


class DemoError(RuntimeError):
    pass


def find_binaries(bin_dir: str | None) -> dict[str, str]:
    """sluiced, sluicectl and sluice-trace: from --bin-dir, $SLUICE_BIN_DIR, or PATH."""
    dirs = [d for d in (bin_dir, os.environ.get("SLUICE_BIN_DIR")) if d]
    out = {}
    for name in ("sluiced", "sluicectl", "sluice-trace"):
        found = next((str(Path(d) / name) for d in dirs if (Path(d) / name).is_file()), None) or shutil.which(name)
        if not found:
            raise DemoError(f"cannot find {name} (build it, or pass --bin-dir / set SLUICE_BIN_DIR)")
        out[name] = found
    return out


def parse_metrics(text: str) -> dict[str, dict[tuple, float]]:
    """Prometheus text -> {family: {sorted label tuples: value}}."""
    out: dict[str, dict[tuple, float]] = {}
    pat = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
    lab = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = pat.match(line)
        if m:
            labels = tuple(sorted(lab.findall(m.group(3) or "")))
            out.setdefault(m.group(1), {})[labels] = float(m.group(4))
    return out


def metric(m: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for k, v in m.get(name, {}).items() if want <= set(k))


class Demo:
    def __init__(self, duration_s: float, out_dir: Path, bins: dict[str, str], segment: str,
                 keep_segment: bool, approve: bool, live: bool) -> None:
        self.duration = duration_s
        self.out_dir = out_dir
        self.bins = bins
        self.segment = segment
        self.keep_segment = keep_segment
        self.approve = approve
        self.live = live
        self.work = Path(tempfile.mkdtemp(prefix="sluice-demo-"))
        self.logs = out_dir / "logs"
        self.procs: list[subprocess.Popen] = []
        self.files: list = []  # the processes' log files, closed by stop_all
        self.daemon: subprocess.Popen | None = None
        self.top: subprocess.Popen | None = None
        self.metrics_url = ""
        self.cast = demo_traffic.clients()
        self.phases = demo_traffic.phase_bounds(duration_s)
        self.samples: list[dict] = []
        self.approved: dict[str, float] = {}
        self.banner = self.work / "banner"

    # -- processes ---------------------------------------------------------
    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.bins["sluicectl"], "--segment", self.segment, *args], capture_output=True,
                              text=True, timeout=30)

    def start_daemon(self) -> None:
        # Ticks scale with the run so a short demo still shows every reaction.
        tick_ms = 500 if self.duration >= 60 else 250
        log = open(self.work / "sluiced.log", "w")
        self.files.append(log)
        self.daemon = subprocess.Popen(
            [self.bins["sluiced"], "--segment", self.segment, "--reset", "--state-dir", str(self.work),
             "--tick-ms", str(tick_ms), "--metrics-addr", "127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(self.daemon)
        deadline = time.monotonic() + 15
        while True:
            text = (self.work / "sluiced.log").read_text()
            m = re.search(r"metrics: serving (http://\S+/metrics)", text)
            if m and "ready:" in text:
                self.metrics_url = m.group(1)
                return
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise DemoError("sluiced did not start:\n" + text[-2000:])
            time.sleep(0.02)

    def start_clients(self, start_ns: int) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        import _sluice

        # The Python clients import this very package and extension.
        env = dict(os.environ)
        here = [str(Path(__file__).resolve().parents[1]), str(Path(_sluice.__file__).resolve().parent)]
        env["PYTHONPATH"] = os.pathsep.join(here + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        for c in self.cast:
            args = ["--segment", self.segment, "--tier", c.tier, "--prefix", c.prefix, "--keys", str(c.keys),
                    "--plan", c.plan(self.duration), "--start-ns", str(start_ns), "--seed", str(c.seed),
                    "--log", str(self.logs / f"{c.name}.log")]
            cmd = [self.bins["sluice-trace"], *args] if c.language == "c" else \
                [sys.executable, "-m", "sluice.demo_client", *args]
            out = open(self.logs / f"{c.name}.out", "w")
            self.files.append(out)
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            self.procs.append(p)
            c.proc = p  # type: ignore[attr-defined]

    def start_top(self) -> None:
        self.set_banner("sluice demo: starting")
        self.top = subprocess.Popen([self.bins["sluicectl"], "--segment", self.segment, "top", "--banner",
                                     str(self.banner)])
        self.procs.append(self.top)

    def set_banner(self, line: str) -> None:
        """Replaces the live view's banner file at once (top never reads half of it)."""
        tmp = self.banner.with_suffix(".new")
        tmp.write_text(line + "\n")
        os.replace(tmp, self.banner)

    def stop_all(self) -> None:
        """Every process this demo started: SIGTERM, then SIGKILL after 5 s."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self.files:
            f.close()

    def cleanup(self) -> None:
        if not self.keep_segment:
            for sfx in (".state", ".policy", ".lock", ".sock"):
                try:
                    os.unlink(f"/dev/shm/{self.segment}{sfx}")
                except FileNotFoundError:
                    pass
        shutil.rmtree(self.work, ignore_errors=True)

    # -- the run -----------------------------------------------------------
    def scrape(self) -> dict:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return parse_metrics(r.read().decode())

    def sample(self, start_ns: int, prev: dict | None) -> dict:
        m = self.scrape()
        t_s = (time.monotonic_ns() - start_ns) / 1e9  # when the counters were read
        s = {"t_s": round(t_s, 3), "host_surge": SURGE_LEVEL.get(int(metric(m, "sluice_host_surge_level")), "normal"),
             "pending": int(metric(m, "sluice_pending_approvals")),
             "generation": int(metric(m, "sluice_policy_generation")), "tiers": {}, "_m": m,
             "_since": prev["t_s"] if prev else 0.0}
        for t in self.tier_names:
            adm = metric(m, "sluice_admissions_total", tier=t, decision="allowed")
            den = metric(m, "sluice_admissions_total", tier=t, decision="denied")
            row = {"limit": int(metric(m, "sluice_tier_limit", tier=t)),
                   "surge": SURGE_LEVEL.get(int(metric(m, "sluice_surge_level", tier=t)), "normal"),
                   "_c": (adm, den)}
            if prev:
                dt = max(1e-3, t_s - prev["t_s"])
                pa, pd = prev["tiers"][t]["_c"]
                row.update(offered_rps=round((adm + den - pa - pd) / dt, 2), admitted_rps=round((adm - pa) / dt, 2),
                           denied_rps=round((den - pd) / dt, 2))
            else:
                row.update(offered_rps=0.0, admitted_rps=0.0, denied_rps=0.0)
            s["tiers"][t] = row
        return s

    def operate(self, now_s: float, seen: dict[str, float]) -> None:
        """The on-call operator: approves each held-back change after a short look."""
        r = self.ctl("pending", "--json")
        if r.returncode != 0:
            return
        for p in json.loads(r.stdout or "[]"):
            first = seen.setdefault(p["id"], now_s)
            if now_s - first >= min(2.0, self.duration / 45):
                a = self.ctl("approve", p["id"])
                if a.returncode == 0:
                    self.approved[p["id"]] = now_s
                    self.say(f"operator approved {p['id']}: {p['tier']} {p['old_limit']} -> {p['new_limit']}")

    def say(self, line: str) -> None:
        if not self.live_on():
            print(line, flush=True)

    def live_on(self) -> bool:
        return self.top is not None and self.top.poll() is None

    def progress(self, t_s: float, s: dict | None) -> str:
        """One line: progress and phase; with `s`, the tiers too (the live view
        shows those itself, so its banner stays within 80 columns)."""
        ph = demo_traffic.phase_at(self.phases, t_s)
        idx = self.phases.index(ph) + 1
        pct = min(100, int(100 * t_s / self.duration))
        bar = "#" * (pct // 5) + "." * (20 - pct // 5)
        line = f"[{bar}] {pct:3d}% {t_s:5.1f}/{self.duration:.0f}s phase {idx}/5 {ph['label']}"
        if s is None:
            return "demo " + line + "   Ctrl-C stops"
        tiers = "  ".join(f"{n} {s['tiers'][n]['admitted_rps']:.0f}/s@{s['tiers'][n]['limit']}" for n in self.tier_names)
        return f"{line:<58} host {s['host_surge']:<6} pending {s['pending']}  {tiers}"

    def run(self) -> dict:
        self.start_daemon()
        status = json.loads(self.ctl("status", "--json").stdout)
        self.tiers = [{"name": t["name"], "revenue_per_request": t["revenue_per_request"],
                       "baseline_limit": t["limit"], "max_limit": t["max_limit"],
                       "window_s": t["window_ns"] / 1e9} for t in status["tiers"]]
        self.tier_names = [t["name"] for t in self.tiers]
        start_ns = time.monotonic_ns() + 1_000_000_000
        started_unix_ms = int(time.time() * 1000) + 1000
        self.start_clients(start_ns)
        if self.live:
            self.start_top()
        print(f"sluice demo: {len(self.cast)} client processes (C and Python) on segment '{self.segment}', "
              f"{self.duration:.0f} s, metrics at {self.metrics_url}", flush=True) if not self.live else None
        while time.monotonic_ns() < start_ns:
            time.sleep(0.01)
        prev, seen, last_print = None, {}, -10.0
        interval = 0.5
        next_at = 0.0
        while True:
            t_s = (time.monotonic_ns() - start_ns) / 1e9
            if t_s >= self.duration:
                break
            for c in self.cast:
                if c.proc.poll() not in (None, 0):  # type: ignore[attr-defined]
                    raise DemoError(f"client {c.name} failed: " + (self.logs / f"{c.name}.out").read_text()[-500:])
            if t_s >= next_at:
                s = self.sample(start_ns, prev)
                if prev:
                    self.samples.append(s)
                prev = s
                # After a stall, the next sample a full interval on: no burst of
                # samples 50 ms apart (their rates would be noise).
                next_at = max(next_at + interval, s["t_s"] + interval / 2)
                if self.live_on():
                    self.set_banner(self.progress(t_s, None))
                elif t_s - last_print >= 5 or not self.samples:
                    print(self.progress(t_s, s), flush=True)
                    last_print = t_s
                if self.approve:
                    self.operate(t_s, seen)
            time.sleep(0.05)
        for c in self.cast:
            c.proc.wait(timeout=30)  # type: ignore[attr-defined]
        final = self.sample(start_ns, prev)
        self.samples.append(final)
        status = json.loads(self.ctl("status", "--json").stdout)
        audit = json.loads(self.ctl("audit", "--json").stdout or "[]")
        if self.top is not None and self.top.poll() is None:
            self.top.send_signal(signal.SIGTERM)
            self.top.wait(timeout=5)
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(timeout=10)
        return self.report(status, audit, started_unix_ms)

    # -- the report --------------------------------------------------------
    def report(self, status: dict, audit: list[dict], started_unix_ms: int) -> dict:
        events, summaries = [], {}
        for c in self.cast:
            events += demo_traffic.read_log(self.logs / f"{c.name}.log", c)
            out = (self.logs / f"{c.name}.out").read_text().split()
            summaries[c.name] = {k: int(v) for k, v in (x.split("=") for x in out if "=" in x)}
        events.sort(key=lambda e: e[0])
        limits = {t["name"]: t["baseline_limit"] for t in self.tiers}
        windows = {t["name"]: t["window_s"] for t in self.tiers}
        revenue = {t["name"]: t["revenue_per_request"] for t in self.tiers}
        static = demo_traffic.static_replay(events, limits, windows)
        attack = {c.prefix for c in self.cast if c.attack}
        totals = {}
        daemon = {t["name"]: t for t in status["tiers"]}
        for name in self.tier_names:
            mine = [(e, s) for e, s in zip(events, static) if e[1] == name]
            legit = [(e, s) for e, s in mine if e[2].rsplit("-", 1)[0] not in attack]
            bots = [(e, s) for e, s in mine if e[2].rsplit("-", 1)[0] in attack]
            admitted = sum(e[3] for e, _ in mine)
            legit_admitted = sum(e[3] for e, _ in legit)
            static_legit = sum(s for _, s in legit)
            totals[name] = {"requests": len(mine), "admitted": admitted, "denied": len(mine) - admitted,
                            # Revenue is what legitimate customers were served; attack
                            # traffic let through is load on the backend, not income.
                            "revenue": round(legit_admitted * revenue[name], 2),
                            "static_admitted": sum(s for _, s in mine),
                            "static_revenue": round(static_legit * revenue[name], 2),
                            "attack_requests": len(bots), "attack_admitted": sum(e[3] for e, _ in bots),
                            "static_attack_admitted": sum(s for _, s in bots),
                            "daemon_admitted": daemon[name]["admitted"],
                            "daemon_denied": daemon[name]["denied_window"] + daemon[name]["denied_cost"] +
                            daemon[name]["denied_closed"]}
        rev = round(sum(t["revenue"] for t in totals.values()), 2)
        srev = round(sum(t["static_revenue"] for t in totals.values()), 2)
        logged = sum(s.get("requests", 0) for s in summaries.values())
        errors = sum(s.get("errors", 0) for s in summaries.values())
        governance = []
        for r in audit:
            if r["event"] in ("published", "pending", "approved", "rejected", "expired"):
                governance.append({"t_s": round((r["unix_ms"] - started_unix_ms) / 1000, 2), "event": r["event"],
                                   "tier": r["tier"], "old_limit": r["old_limit"], "new_limit": r["new_limit"],
                                   "actor": r["actor"], "reason": r["reason"], "approval_id": r["approval_id"]})
        # Each sample's revenue rate from the clients' logs: legitimate admissions
        # only (the daemon's revenue counter also counts the botnet's).
        legit_times = {n: [e[0] / 1e6 for e in events if e[1] == n and e[3] and
                           e[2].rsplit("-", 1)[0] not in attack] for n in self.tier_names}
        for s in self.samples:
            s.pop("_m", None)
            since = s.pop("_since")
            dt = max(1e-3, s["t_s"] - since)
            for name, row in s["tiers"].items():
                row.pop("_c", None)
                times = legit_times[name]
                n = bisect.bisect_right(times, s["t_s"]) - bisect.bisect_right(times, since)
                row["revenue_rate"] = round(n * revenue[name] / dt, 4)
        return {
            "version": 1, "title": "Sluice demo", "started_unix_ms": started_unix_ms, "duration_s": self.duration,
            "segment": self.segment, "machine": {"nproc": os.cpu_count()},
            "tiers": self.tiers, "phases": self.phases, "samples": self.samples,
            "static_series": demo_traffic.per_second(events, static, self.tier_names, self.duration, revenue,
                                                     attack),
            "governance": governance,
            "totals": {"tiers": totals, "revenue": rev, "static_revenue": srev,
                       "revenue_ratio": round(rev / srev, 3) if srev else None},
            "clients": [{"language": c.language, "tier": c.tier, "keys": c.keys} for c in self.cast],
            "checks": {"clients_match_daemon": all(t["admitted"] == t["daemon_admitted"] and
                                                   t["denied"] == t["daemon_denied"] for t in totals.values())
                       and logged == len(events) and errors == 0,
                       "client_errors": errors, "operator_approvals": len(self.approved)},
        }


MAX_DURATION_S = 600  # the report reads the whole audit trail in one reply
SEGMENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(duration_s: float = 90, out_dir: str = "sluice-demo-report", bin_dir: str | None = None,
        segment: str | None = None, keep_segment: bool = False, approve: bool = True,
        live: bool | None = None) -> int:
    if not 10 <= duration_s <= MAX_DURATION_S:
        print(f"sluice demo: --duration must be 10..{MAX_DURATION_S} seconds", file=sys.stderr)
        return 2
    segment = segment or f"sluice-demo-{os.getpid()}"
    if not SEGMENT_NAME.fullmatch(segment):
        print(f"sluice demo: --segment '{segment}' is not a valid name (letters, digits, '_', '-', '.')",
              file=sys.stderr)
        return 2
    if any(Path(f"/dev/shm/{segment}{sfx}").exists() for sfx in (".state", ".policy")):
        # The demo resets and removes its segment: never someone else's.
        print(f"sluice demo: segment '{segment}' already exists; the demo makes its own (pick another --segment)",
              file=sys.stderr)
        return 2
    try:
        bins = find_binaries(bin_dir)
    except DemoError as e:
        print(f"sluice demo: {e}", file=sys.stderr)
        return 2
    if live is None:
        live = sys.stdout.isatty() and sys.stdin.isatty()
    demo = Demo(duration_s, Path(out_dir).resolve(), bins, segment, keep_segment, approve, live)
    # SIGTERM and SIGHUP (a closed terminal) end the demo as Ctrl-C does.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    message, rc = "", 1
    try:
        data = demo.run()
        paths = demo_report.write_report(data, demo.out_dir)
        print(demo_report.render_summary(data))
        print(f"report: {paths['html']}")
        rc = 0 if data["checks"]["clients_match_daemon"] else 1
    except KeyboardInterrupt:
        message, rc = "interrupted; every process it started is stopped and its segment removed", 130
    except DemoError as e:
        message = str(e)
    except (OSError, ValueError, subprocess.SubprocessError) as e:  # a scrape, a reply, a wait
        message = f"failed: {type(e).__name__}: {e}"
    finally:
        # No second signal may cut the clean-up short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            demo.stop_all()
        finally:
            demo.cleanup()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    # Said once the live view has given the terminal back.
    if message:
        print(f"\nsluice demo: {message}", file=sys.stderr)
    return rc
