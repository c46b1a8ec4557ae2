"""The demo's traffic story and its static-limit replay (pure: no processes).

Five phases, time-compressed (fractions of the run):

    awakening  calm traffic on every tier; the loop learns its baselines
    ramp       paying tiers' demand climbs (an AI launch goes viral)
    surge      paying tiers at about 4x their baseline
    ddos       a botnet of thousands of free-tier keys floods the host
    recovery   back toward calm; limits ease back to their baselines

Each client process plays one tier's plan: per-key requests/s per phase, linear
from the phase's first value to its last. Enterprise and pro keys are shared by
a C process and a Python process (one ledger for every language on the host).
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field

PHASES = [  # name, label, fraction of the run
    ("awakening", "AI awakening", 0.15),
    ("ramp", "Ramp", 0.20),
    ("surge", "Surge", 0.25),
    ("ddos", "DDoS", 0.20),
    ("recovery", "Recovery", 0.20),
]


def phase_bounds(duration_s: float) -> list[dict]:
    out, t = [], 0.0
    for name, label, frac in PHASES:
        out.append({"name": name, "label": label, "start_s": round(t, 3), "end_s": round(t + frac * duration_s, 3)})
        t += frac * duration_s
    out[-1]["end_s"] = round(duration_s, 3)
    return out


def phase_at(phases: list[dict], t_s: float) -> dict:
    for p in phases:
        if t_s < p["end_s"]:
            return p
    return phases[-1]


@dataclass
class ClientSpec:
    """One client process: which language, tier and keys, and its plan."""

    language: str  # "c" or "python"
    tier: str
    prefix: str
    keys: int
    rates: list[tuple[float, float]]  # per phase: per-key requests/s at its start and end
    seed: int
    attack: bool = False  # a botnet: what it gets admitted is load, not revenue
    name: str = field(default="")

    def plan(self, duration_s: float) -> str:
        """The --plan argument both clients take: SECONDS:R0:R1,..."""
        steps = []
        for (_, _, frac), (r0, r1) in zip(PHASES, self.rates):
            steps.append(f"{frac * duration_s:.3f}:{r0:g}:{r1:g}")
        return ",".join(steps)


def clients() -> list[ClientSpec]:
    """The cast. Rates are per key; two processes on one key set each play half."""
    # Paying tiers climb to about 3x their calm rate: a surge (2x), not a DDoS (5x).
    ent = [(6, 6), (6, 18), (18, 18), (10, 10), (10, 6)]
    pro = [(4, 4), (4, 12), (12, 12), (6, 6), (6, 4)]
    half = lambda rates: [(a / 2, b / 2) for a, b in rates]  # noqa: E731
    cast = [
        ClientSpec("c", "enterprise", "acme", 4, half(ent), 11),
        ClientSpec("python", "enterprise", "acme", 4, half(ent), 12),
        ClientSpec("c", "pro", "startup", 8, half(pro), 21),
        ClientSpec("python", "pro", "startup", 8, half(pro), 22),
        ClientSpec("python", "free", "hobbyist", 12, [(1.5, 1.5)] * 5, 31),
        ClientSpec("c", "free", "bot", 2000, [(0, 0), (0, 0), (0, 0), (2.5, 2.5), (0, 0)], 41, attack=True),
    ]
    for i, c in enumerate(cast):
        c.name = f"{i}-{c.language}-{c.tier}-{c.prefix}"
    return cast


def read_log(path, spec: ClientSpec) -> list[tuple[int, str, str, int]]:
    """A client's log as (us since start, tier, key, allowed) tuples. Keys are
    unique to a client's key set (prefix), so attack traffic is told by its key."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 3:
                continue  # a torn last line of a killed client
            out.append((int(parts[0]), spec.tier, f"{spec.prefix}-{parts[1]}", int(parts[2])))
    return out


def static_replay(events, limits: dict[str, int], windows_s: dict[str, float]):
    """Replays the recorded arrivals against fixed limits with an exact sliding
    window log per key: what a static limiter would have admitted.

    Returns a list of allowed flags aligned with `events` (sorted by time)."""
    recent: dict[tuple[str, str], collections.deque] = collections.defaultdict(collections.deque)
    allowed = []
    for t_us, tier, key, _ in events:
        q = recent[(tier, key)]
        w = windows_s[tier] * 1e6
        while q and q[0] <= t_us - w:
            q.popleft()
        if len(q) < limits[tier]:
            q.append(t_us)
            allowed.append(1)
        else:
            allowed.append(0)
    return allowed


def per_second(events, flags, tiers: list[str], duration_s: float, revenue: dict[str, float],
               attack_prefixes: set[str] = frozenset()) -> dict:
    """Admitted requests/s (all traffic) and revenue/s (legitimate traffic only:
    keys outside `attack_prefixes`) per tier, one-second buckets."""
    n = max(1, int(duration_s + 0.999))
    out = {"t_s": [i + 0.5 for i in range(n)],
           "tiers": {t: {"admitted_rps": [0.0] * n, "revenue_rate": [0.0] * n} for t in tiers}}
    for (t_us, tier, key, _), ok in zip(events, flags):
        if ok:
            i = min(n - 1, int(t_us // 1_000_000))
            row = out["tiers"][tier]
            row["admitted_rps"][i] += 1
            if key.rsplit("-", 1)[0] not in attack_prefixes:
                row["revenue_rate"][i] += revenue[tier]
    for t in tiers:
        out["tiers"][t]["revenue_rate"] = [round(v, 4) for v in out["tiers"][t]["revenue_rate"]]
    return out


def index_at(times: list[float], t: float) -> int:
    return max(0, bisect.bisect_right(times, t) - 1)
