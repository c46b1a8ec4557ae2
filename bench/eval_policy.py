#!/usr/bin/python3
"""Evaluation of the policy loop (issue 4): a seeded, time-compressed trace with
three tiers, diurnal noise, a flash surge and a DDoS from many free-tier keys,
replayed by real client processes against the real sluiced, once with the
adaptive loop and once with static limits (every tier "adaptive": false).

Reports, for each run:
- surge detection: the lag of the first flag after the labelled surge start and its
  lead before the peak; precision and recall of each level of the host's flag
  against its own labelled window ("surge" against the surge, "ddos" against the
  DDoS), and of any flag against both windows;
- revenue admitted (per trace hour and on the surge phase), attackers' requests
  never counted as revenue;
- the enterprise denial rate during the DDoS, the bots' requests admitted, and a
  stated capacity model: a second whose admitted requests exceed capacity_rps
  fails the excess, spread evenly over everything admitted in it.

    /usr/bin/python3 bench/eval_policy.py [--seconds 80] [--seed 17] [--tick-ms 250]
                                          [--surge-peak 5] [--json FILE] [--dump FILE]
    /usr/bin/python3 bench/eval_policy.py --rescore DUMP   # the report again, from a dump

Time compression: one trace second is one wall second; the trace is the seeds'
five phases squeezed into --seconds. The loop ticks every --tick-ms (250 by
default, a quarter of sluiced's default): its hysteresis and hold are counted in
ticks, so at 1000 ms it reacts about 4x slower in trace time. Revenue per hour
scales admitted revenue by 3600 / trace length. Arrivals are drawn per 20 ms slot
of trace time from the seed alone, so both runs are offered the same requests
(checked, and reported as same_offered_trace).
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
BOT = "bot"  # the accounting label of the DDoS keys' requests (they are sent as "free")


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
    slot = 0.02
    with sluice.Client(segment) as c:
        while time.time() < start_at:
            time.sleep(0.001)
        t0 = time.monotonic()
        # Slot i is trace time i * slot, whenever it is sent: what is drawn depends on
        # the seed alone, so every run is offered the same requests (a late slot is
        # sent late, not skipped or moved across a phase boundary).
        max_late = 0.0
        for i in range(int(round(seconds / slot))):
            t = i * slot
            now = time.monotonic() - t0
            if now < t:
                time.sleep(t - now)
            max_late = max(max_late, time.monotonic() - t0 - t)  # oversleeping and preemption too
            sec = int(t)
            for tier in tiers:
                keys = [f"{tier}-{k}" for k in range(KEYS[tier])]
                if tier == "free" and p["ddos"][0] <= t < p["ddos"][1]:
                    keys += [f"bot-{seed}-{k}" for k in range(DDOS_KEYS // 2)]
                for key in keys:
                    bot = key.startswith("bot")
                    per_key = rate(tier, t, seconds, rng, surge_peak) if not bot else 0.6
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
                        s = stats.setdefault((sec, BOT if bot else tier), [0, 0, 0.0])
                        s[0] += 1
                        s[1] += d.allowed
    q.put({"stats": {f"{k[0]}|{k[1]}": v for k, v in stats.items()}, "max_late_s": max_late})


def run_once(adaptive: bool, seconds: float, tmp: Path, surge_peak: float = 5.0,
             approval_ratio: float = 1000, seed: int = 17, tick_ms: int = 250) -> dict:
    segment = f"sluice-eval-{os.getpid()}-{'adaptive' if adaptive else 'static'}"
    policy = {
        "segment": {"max_keys": 20000, "max_key_bytes": 32},
        "tiers": [{"name": n, "limit": l, "window_ms": 1000, "max_limit": m, "revenue_per_request": r,
                   "adaptive": adaptive} for n, l, m, r in TIERS],
        "capacity_rps": CAPACITY_RPS,
        "tick_ms": tick_ms,
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
        procs = [ctx.Process(target=worker, args=(segment, g, seconds, seed + i, start_at, q, surge_peak))
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
        for k, v in r["stats"].items():
            sec, tier = k.split("|")
            acc = per.setdefault((int(sec), tier), [0, 0])
            acc[0] += v[0]
            acc[1] += v[1]
    # How far behind trace time a client sent a slot: the trace's time base holds
    # only while this stays well under a second.
    return {"per_second": per, "flags": flags, "samples": samples,
            "max_client_lag_s": round(max(r["max_late_s"] for r in results), 3)}


def score(samples: list[tuple[float, bool]], labelled) -> tuple[float | None, float | None]:
    """Precision and recall of (time, flagged) samples against labelled(time)."""
    tp = sum(1 for t, f in samples if f and labelled(t))
    fp = sum(1 for t, f in samples if f and not labelled(t))
    fn = sum(1 for t, f in samples if not f and labelled(t))
    return (round(tp / (tp + fp), 3) if tp + fp else None, round(tp / (tp + fn), 3) if tp + fn else None)


def summarize(run: dict, seconds: float) -> dict:
    p = phases(seconds)
    rev = {n: r for n, _, _, r in TIERS}
    rev[BOT] = 0.0  # an attacker's admitted request earns nothing

    def in_phase(sec: float, name: str) -> bool:
        a, b = p[name]
        return a <= sec < b

    def in_surge(s: float) -> bool:
        return in_phase(s, "ramp") or in_phase(s, "surge")

    # The capacity model: in a second that admitted more than CAPACITY_RPS, the
    # backend fails the excess, the same share of every admitted request.
    admitted_in: dict[int, float] = {}
    for (s, t), v in run["per_second"].items():
        admitted_in[s] = admitted_in.get(s, 0) + v[1]
    served_share = {s: min(1.0, CAPACITY_RPS / a) if a else 1.0 for s, a in admitted_in.items()}

    def revenue(pred, column: int) -> float:  # column 0: offered, 1: admitted
        return sum(v[column] * rev[t] for (s, t), v in run["per_second"].items() if pred(s))

    def count(tier: str, pred, column: int) -> float:
        return sum(v[column] for (s, t), v in run["per_second"].items() if t == tier and pred(s))

    total_rev = revenue(lambda s: True, 1)
    served_rev = sum(v[1] * rev[t] * served_share[s] for (s, t), v in run["per_second"].items())
    surge_rev = revenue(in_surge, 1)
    # What admitting every request of the phase would have earned: no limiter can
    # exceed it, so it bounds the adaptive / static ratio the trace allows.
    surge_offered = revenue(in_surge, 0)
    in_ddos = lambda s: in_phase(s, "ddos")
    offered = count("enterprise", in_ddos, 0)
    denied = offered - count("enterprise", in_ddos, 1)
    ent_served = sum(v[1] * served_share[s] for (s, t), v in run["per_second"].items()
                     if t == "enterprise" and in_ddos(s))
    bots_offered, bots_admitted = count(BOT, in_ddos, 0), count(BOT, in_ddos, 1)

    levels = [(t, lvl) for t, lvl, _ in run["flags"]]
    surge_window = lambda t: p["ramp"][0] <= t < p["surge"][1]
    # Each level against its own window: "surge" against the labelled surge, "ddos"
    # against the DDoS (so a surge called a DDoS is a miss of one and a false alarm
    # of the other); and any flag against both windows.
    precision_surge, recall_surge = score([(t, l == "surge") for t, l in levels], surge_window)
    precision_ddos, recall_ddos = score([(t, l == "ddos") for t, l in levels], in_ddos)
    precision_any, recall_any = score([(t, l != "normal") for t, l in levels],
                                      lambda t: surge_window(t) or in_ddos(t))
    in_window = [l for t, l in levels if surge_window(t)]
    start = p["ramp"][0]
    peak = (p["surge"][0] + p["surge"][1]) / 2
    first = next((t for t, l in levels if l != "normal" and surge_window(t)), None)
    before = [l for t, l in levels if t < start]
    return {
        "revenue_total": round(total_rev, 2),
        "revenue_per_trace_hour": round(total_rev * 3600 / seconds, 2),
        "revenue_served_per_trace_hour": round(served_rev * 3600 / seconds, 2),
        "revenue_surge_phase": round(surge_rev, 2),
        "revenue_offered_surge_phase": round(surge_offered, 2),
        "share_of_offered_surge_revenue": round(surge_rev / surge_offered, 4) if surge_offered else None,
        "offered_requests": sum(v[0] for v in run["per_second"].values()),
        "max_client_lag_s": run.get("max_client_lag_s"),
        "enterprise_denial_rate_ddos": round(denied / offered, 4) if offered else None,
        # Denied, or admitted and then failed by the capacity model.
        "enterprise_unserved_rate_ddos": round(1 - ent_served / offered, 4) if offered else None,
        "bot_requests_offered_ddos": bots_offered,
        "bot_requests_admitted_ddos": bots_admitted,
        "seconds_over_capacity": sum(1 for a in admitted_in.values() if a > CAPACITY_RPS),
        "surge_flag_time_s": None if first is None else round(first, 2),
        "labelled_surge_start_s": start,
        "flag_lag_after_start_s": None if first is None else round(first - start, 2),
        "flagged_just_before_start": bool(before) and before[-1] != "normal",
        "lead_before_peak_s": None if first is None else round(peak - first, 2),
        "peak_s": peak,
        "precision_surge": precision_surge,
        "recall_surge": recall_surge,
        "surge_window_share_flagged_ddos": round(in_window.count("ddos") / len(in_window), 3) if in_window else None,
        "precision_ddos": precision_ddos,
        "recall_ddos": recall_ddos,
        "precision_any_level": precision_any,
        "recall_any_level": recall_any,
    }


def report(runs: dict, meta: dict) -> dict:
    adaptive = summarize(runs["adaptive"], meta["seconds"])
    static = summarize(runs["static"], meta["seconds"])
    ratio = adaptive["revenue_surge_phase"] / static["revenue_surge_phase"] if static["revenue_surge_phase"] else None
    # The most any limiter could reach on this trace: every offered request admitted.
    ceiling = (static["revenue_offered_surge_phase"] / static["revenue_surge_phase"]
               if static["revenue_surge_phase"] else None)
    offered = {name: {k: v[0] for k, v in r["per_second"].items()} for name, r in runs.items()}
    return {**meta, "capacity_rps": CAPACITY_RPS,
            "same_offered_trace": offered["adaptive"] == offered["static"],
            "adaptive": adaptive, "static": static,
            "surge_phase_revenue_ratio": None if ratio is None else round(ratio, 2),
            "surge_phase_ratio_ceiling": None if ceiling is None else round(ceiling, 2)}


def write_dump(path: str, runs: dict, meta: dict) -> None:
    doc = {"meta": meta}
    for name, r in runs.items():
        doc[name] = {"samples": r["samples"], "max_client_lag_s": r.get("max_client_lag_s"),
                     "per_second": [{"second": s, "tier": t, "offered": v[0], "admitted": v[1]}
                                    for (s, t), v in sorted(r["per_second"].items())]}
    text = json.dumps(doc)
    if path.endswith(".gz"):
        import gzip
        Path(path).write_bytes(gzip.compress(text.encode()))
    else:
        Path(path).write_text(text)


def read_dump(path: str, defaults: dict) -> tuple[dict, dict]:
    raw = Path(path).read_bytes()
    if path.endswith(".gz"):
        import gzip
        raw = gzip.decompress(raw)
    doc = json.loads(raw)
    runs = {}
    for name in ("adaptive", "static"):
        r = doc[name]
        runs[name] = {
            "per_second": {(e["second"], e["tier"]): (e["offered"], e["admitted"]) for e in r["per_second"]},
            "flags": [(x["returned"], x["snapshot"]["host_surge"], {}) for x in r["samples"]],
            "samples": r["samples"], "max_client_lag_s": r.get("max_client_lag_s")}
    # A dump without a meta block: its settings are the command line's, and say so.
    meta = doc.get("meta") or {**defaults, "settings_from": "the --rescore command line (the dump has none)"}
    return runs, {**meta, "rescored_from": Path(path).name}


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
    ap.add_argument("--seed", type=int, default=17,
                    help="the trace's seed (worker i draws from seed + i; 17 is the trace the loop was tuned on)")
    ap.add_argument("--tick-ms", type=int, default=250, help="the policy loop's tick (250; sluiced's default is 1000)")
    ap.add_argument("--rescore", metavar="DUMP", help="no run: the report of a --dump file (.gz read as gzip)")
    a = ap.parse_args()
    if not (50 <= a.tick_ms <= 10000):
        ap.error(f"--tick-ms {a.tick_ms}: must be 50 to 10000")
    if not (a.approval_ratio >= 1.0):
        ap.error(f"--approval-ratio {a.approval_ratio:g}: must be at least 1")
    if not (1.0 <= a.surge_peak <= 50.0):
        ap.error(f"--surge-peak {a.surge_peak:g}: a surge's peak is 1 to 50 times the normal rate")
    meta = {"seconds": a.seconds, "seed": a.seed, "tick_ms": a.tick_ms, "surge_peak": a.surge_peak,
            "approval_ratio": a.approval_ratio}
    if a.rescore:
        try:
            runs, meta = read_dump(a.rescore, meta)
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--rescore {a.rescore}: not a dump this script wrote ({type(e).__name__}: {e})")
        out = report(runs, meta)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            runs = {mode: run_once(mode == "adaptive", a.seconds, Path(tmp), a.surge_peak, a.approval_ratio, a.seed,
                                   a.tick_ms) for mode in ("adaptive", "static")}
        meta["machine"] = {"nproc": os.cpu_count(), "load": os.getloadavg()}
        if a.dump:
            write_dump(a.dump, runs, meta)
        out = report(runs, meta)
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
