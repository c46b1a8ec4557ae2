#!/usr/bin/python3
"""Evaluation of the policy loop (issue 4): a seeded, time-compressed trace with
three tiers, diurnal noise, a flash surge and a DDoS from many free-tier keys,
replayed by real client processes against the real sluiced, once with the
adaptive loop and once with static limits (every tier "adaptive": false).

Reports: surge detection lead time before the peak, precision and recall of the
surge flag against the labelled surge/DDoS windows, revenue admitted (per trace
hour and on the surge phase), and the enterprise denial rate during the DDoS.

    /usr/bin/python3 bench/eval_policy.py [--seconds 80] [--json FILE] [--surge-peak 5]

Time compression: one trace second is one wall second; the trace is the seeds'
five phases squeezed into --seconds. Revenue per hour scales admitted revenue by
3600 / trace length.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("SLUICE_BUILD_DIR", ROOT / "build" / "default"))
sys.path[:0] = [str(ROOT / "python"), str(BUILD / "bindings")]
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), str(BUILD / "bindings")])

TIERS = [  # name, per-key limit, max_limit, revenue per request
    ("enterprise", 15, 120, 0.20),
    ("pro", 8, 40, 0.05),
    ("free", 3, 9, 0.01),
]
KEYS = {"enterprise": 6, "pro": 12, "free": 30}
DDOS_KEYS = 1500
CAPACITY_RPS = 900.0


def phases(total: float) -> dict[str, tuple[float, float]]:
    f = total / 80.0
    return {"normal": (0, 20 * f), "ramp": (20 * f, 30 * f), "surge": (30 * f, 40 * f),
            "ddos": (45 * f, 60 * f), "recovery": (60 * f, 80 * f)}


def rate(tier: str, t: float, total: float, rng: random.Random, surge_peak: float = 5.0) -> float:
    """Requests/s offered by ONE key of `tier` at trace time t. The flash surge builds
    to `surge_peak` times the normal rate (5 unless --surge-peak says otherwise)."""
    p = phases(total)
    diurnal = 1.0 + 0.15 * math.sin(2 * math.pi * t / total) + rng.uniform(-0.05, 0.05)
    base = {"enterprise": 8.0, "pro": 4.0, "free": 1.5}[tier] * diurnal
    r0, r1 = p["ramp"]
    s0, s1 = p["surge"]
    if tier in ("enterprise", "pro"):
        if r0 <= t < r1:
            base *= 1 + (surge_peak - 1) * (t - r0) / (r1 - r0)  # flash surge builds to surge_peak x
        elif s0 <= t < s1:
            peak = (s0 + s1) / 2
            base *= surge_peak * (1 - 0.3 * abs(t - peak) / (s1 - s0))
    return base


def worker(segment: str, tiers: list[str], seconds: float, seed: int, start_at: float, q,
           surge_peak: float = 5.0) -> None:
    import sluice

    rng = random.Random(seed)
    p = phases(seconds)
    stats: dict[tuple[int, str], list[float]] = {}
    with sluice.Client(segment) as c:
        while time.time() < start_at:
            time.sleep(0.001)
        t0 = time.monotonic()
        slot = 0.02
        due = 0.0
        while True:
            t = time.monotonic() - t0
            if t >= seconds:
                break
            if t < due:
                time.sleep(due - t)
                continue
            due += slot
            sec = int(t)
            for tier in tiers:
                keys = [f"{tier}-{k}" for k in range(KEYS[tier])]
                if tier == "free" and p["ddos"][0] <= t < p["ddos"][1]:
                    keys += [f"bot-{seed}-{k}" for k in range(DDOS_KEYS // 2)]
                for key in keys:
                    per_key = rate(tier, t, seconds, rng, surge_peak) if not key.startswith("bot") else 0.6
                    # Poisson arrivals in this slot.
                    n = 0
                    lam = per_key * slot
                    x = rng.random()
                    prob = math.exp(-lam)
                    cum = prob
                    while x > cum and n < 50:
                        n += 1
                        prob *= lam / n
                        cum += prob
                    for _ in range(n):
                        d = c.acquire(key, tier)
                        s = stats.setdefault((sec, tier), [0, 0, 0.0])
                        s[0] += 1
                        s[1] += d.allowed
    q.put({f"{k[0]}|{k[1]}": v for k, v in stats.items()})


def run_once(adaptive: bool, seconds: float, tmp: Path, surge_peak: float = 5.0,
             approval_ratio: float = 1000) -> dict:
    segment = f"sluice-eval-{os.getpid()}-{'adaptive' if adaptive else 'static'}"
    policy = {
        "segment": {"max_keys": 20000, "max_key_bytes": 32},
        "tiers": [{"name": n, "limit": l, "window_ms": 1000, "max_limit": m, "revenue_per_request": r,
                   "adaptive": adaptive} for n, l, m, r in TIERS],
        "capacity_rps": CAPACITY_RPS,
        "tick_ms": 250,
        # By default the loop acts alone (governance has its own tests); with
        # --approval-ratio 1.8 (the policy default) raises above it wait for a human
        # and no one answers, while cuts still take effect at once.
        "governance": {"approval_ratio": approval_ratio},
    }
    pol = tmp / f"{segment}.json"
    pol.write_text(json.dumps(policy))
    log = open(tmp / f"{segment}.log", "w")
    d = subprocess.Popen([str(BUILD / "daemon" / "sluiced"), "--segment", segment, "--policy", str(pol),
                          "--reset", "--state-dir", str(tmp)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while "ready:" not in (tmp / f"{segment}.log").read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("sluiced did not start")
            time.sleep(0.02)
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        start_at = time.time() + 1.0
        groups = [["enterprise"], ["pro"], ["free"], ["free"]]
        procs = [ctx.Process(target=worker, args=(segment, g, seconds, 17 + i, start_at, q, surge_peak))
                 for i, g in enumerate(groups)]
        for p in procs:
            p.start()
        flags = []  # (trace time, host surge level, per-tier levels)
        samples = []  # raw snapshots for --dump: request/return times and the loop's view
        while time.time() < start_at:
            time.sleep(0.005)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            asked = time.monotonic() - t0
            out = subprocess.run([str(BUILD / "daemon" / "sluicectl"), "--segment", segment, "snapshot"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                snap = json.loads(out.stdout)
                flags.append((time.monotonic() - t0, snap["host_surge"],
                              {t["name"]: (t["surge"], t["limit"]) for t in snap["tiers"]}))
                samples.append({"asked": round(asked, 4), "returned": round(flags[-1][0], 4), "snapshot": snap})
            time.sleep(0.25)
        results = [q.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
    finally:
        d.send_signal(signal.SIGTERM)
        d.wait(timeout=10)
        log.close()
        for sfx in (".state", ".policy", ".lock", ".sock"):
            try:
                os.unlink(f"/dev/shm/{segment}{sfx}")
            except FileNotFoundError:
                pass
    per: dict[tuple[int, str], list[float]] = {}
    for r in results:
        for k, v in r.items():
            sec, tier = k.split("|")
            acc = per.setdefault((int(sec), tier), [0, 0])
            acc[0] += v[0]
            acc[1] += v[1]
    return {"per_second": per, "flags": flags, "samples": samples}


def summarize(run: dict, seconds: float) -> dict:
    p = phases(seconds)
    rev = {n: r for n, _, _, r in TIERS}

    def in_phase(sec: int, name: str) -> bool:
        a, b = p[name]
        return a <= sec < b

    def revenue(pred, column: int) -> float:  # column 0: offered, 1: admitted
        return sum(v[column] * rev[t] for (s, t), v in run["per_second"].items() if pred(s))

    def in_surge(s: int) -> bool:
        return in_phase(s, "ramp") or in_phase(s, "surge")

    total_rev = revenue(lambda s: True, 1)
    surge_rev = revenue(in_surge, 1)
    # What admitting every request of the phase would have earned: no limiter can
    # exceed it, so it bounds the adaptive / static ratio the trace allows.
    surge_offered = revenue(in_surge, 0)
    ent = [v for (s, t), v in run["per_second"].items() if t == "enterprise" and in_phase(s, "ddos")]
    offered = sum(v[0] for v in ent)
    denied = sum(v[0] - v[1] for v in ent)
    labelled = lambda t: p["ramp"][0] <= t < p["surge"][1] or p["ddos"][0] <= t < p["ddos"][1]
    flagged = [(t, lvl != "normal") for t, lvl, _ in run["flags"]]
    tp = sum(1 for t, f in flagged if f and labelled(t))
    fp = sum(1 for t, f in flagged if f and not labelled(t))
    fn = sum(1 for t, f in flagged if not f and labelled(t))
    peak = (p["surge"][0] + p["surge"][1]) / 2
    first = next((t for t, f in flagged if f and p["ramp"][0] <= t < p["surge"][1]), None)
    return {
        "revenue_total": round(total_rev, 2),
        "revenue_per_trace_hour": round(total_rev * 3600 / seconds, 2),
        "revenue_surge_phase": round(surge_rev, 2),
        "revenue_offered_surge_phase": round(surge_offered, 2),
        "share_of_offered_surge_revenue": round(surge_rev / surge_offered, 4) if surge_offered else None,
        "enterprise_denial_rate_ddos": round(denied / offered, 4) if offered else None,
        "surge_flag_time_s": None if first is None else round(first, 2),
        "lead_before_peak_s": None if first is None else round(peak - first, 2),
        "labelled_surge_start_s": p["ramp"][0],
        "peak_s": peak,
        "precision": round(tp / (tp + fp), 3) if tp + fp else None,
        "recall": round(tp / (tp + fn), 3) if tp + fn else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=80)
    ap.add_argument("--json")
    ap.add_argument("--dump", help="write every poll's snapshot and the per-second counts of both runs here")
    ap.add_argument("--approval-ratio", type=float, default=1000,
                    help="governance.approval_ratio for the run (1000: the loop acts alone; 1.8: the policy "
                         "default, with no one approving)")
    ap.add_argument("--surge-peak", type=float, default=5.0,
                    help="the flash surge's peak, times the normal per-key rate of enterprise and pro (5)")
    a = ap.parse_args()
    if not (a.approval_ratio >= 1.0):
        ap.error(f"--approval-ratio {a.approval_ratio:g}: must be at least 1")
    if not (1.0 <= a.surge_peak <= 50.0):
        ap.error(f"--surge-peak {a.surge_peak:g}: a surge's peak is 1 to 50 times the normal rate")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"adaptive": run_once(True, a.seconds, Path(tmp), a.surge_peak, a.approval_ratio),
                "static": run_once(False, a.seconds, Path(tmp), a.surge_peak, a.approval_ratio)}
    adaptive = summarize(runs["adaptive"], a.seconds)
    static = summarize(runs["static"], a.seconds)
    if a.dump:
        Path(a.dump).write_text(json.dumps({
            name: {"samples": r["samples"],
                   "per_second": [{"second": s, "tier": t, "offered": v[0], "admitted": v[1]}
                                  for (s, t), v in sorted(r["per_second"].items())]}
            for name, r in runs.items()}))
    ratio = adaptive["revenue_surge_phase"] / static["revenue_surge_phase"] if static["revenue_surge_phase"] else None
    # The most any limiter could reach on this trace: every offered request admitted.
    ceiling = (adaptive["revenue_offered_surge_phase"] / static["revenue_surge_phase"]
               if static["revenue_surge_phase"] else None)
    report = {"seconds": a.seconds, "surge_peak": a.surge_peak, "approval_ratio": a.approval_ratio,
              "capacity_rps": CAPACITY_RPS,
              "adaptive": adaptive, "static": static,
              "surge_phase_revenue_ratio": None if ratio is None else round(ratio, 2),
              "surge_phase_ratio_ceiling": None if ceiling is None else round(ceiling, 2),
              "machine": {"nproc": os.cpu_count(), "load": os.getloadavg()}}
    print(json.dumps(report, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
