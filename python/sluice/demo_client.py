"""A Python client process of the demo: plays one tier's plan through
sluice.Client and logs every decision, exactly like the C `sluice-trace`.

    python3 -m sluice.demo_client --segment S --tier T --prefix P --keys N \\
        --plan SECONDS:R0:R1[,...] [--start-ns NS] [--seed N] [--log FILE]
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import sys
import time

STEP_NS = 10_000_000  # 10 ms, as sluice-trace


def parse_plan(text: str) -> list[tuple[float, float, float]]:
    steps = []
    for part in text.split(","):
        try:
            seconds, r0, r1 = (float(x) for x in part.split(":"))
        except ValueError:
            raise SystemExit(f"demo_client: bad --plan step '{part}' (SECONDS:R0:R1)")
        if not (0 < seconds <= 3600 and 0 <= r0 <= 1e6 and 0 <= r1 <= 1e6):
            raise SystemExit(f"demo_client: bad --plan step '{part}' (seconds 0..3600, rates 0..1e6)")
        steps.append((seconds, r0, r1))
    return steps


def rate_at(plan, t: float) -> float:
    for seconds, r0, r1 in plan:
        if t < seconds:
            return r0 + (r1 - r0) * t / seconds
        t -= seconds
    return -1.0


def poisson(rng: random.Random, lam: float) -> int:
    if lam > 200:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sluice.demo_client")
    ap.add_argument("--segment")
    ap.add_argument("--tier", required=True)
    ap.add_argument("--prefix", default="key")
    ap.add_argument("--keys", type=int, default=1)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--start-ns", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--log")
    a = ap.parse_args(argv)
    plan = parse_plan(a.plan)
    if not 1 <= a.keys <= 1_000_000:
        raise SystemExit(f"demo_client: --keys must be 1..1000000, got {a.keys}")
    if any(max(r0, r1) * a.keys > 1e7 for _, r0, r1 in plan):
        raise SystemExit("demo_client: --plan with --keys: at most 1e7 requests/s in all")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    import sluice

    rng = random.Random(a.seed)
    counts = {"requests": 0, "admitted": 0, "denied": 0, "errors": 0}
    log = open(a.log, "w", buffering=1 << 20) if a.log else None
    start = a.start_ns or time.monotonic_ns()
    with sluice.Client(a.segment) as client:
        step_at = start
        while not stop:
            t = (step_at - start) / 1e9
            per_key = rate_at(plan, t)
            if per_key < 0:
                break
            delay = (step_at - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            for _ in range(poisson(rng, per_key * a.keys * STEP_NS / 1e9)):
                k = rng.randrange(a.keys)
                counts["requests"] += 1
                try:
                    d = client.acquire(f"{a.prefix}-{k}", a.tier)
                except sluice.SluiceError as e:
                    if counts["errors"] == 0:
                        print(f"demo_client: acquire: {e}", file=sys.stderr)
                    counts["errors"] += 1
                    continue
                counts["admitted" if d.allowed else "denied"] += 1
                if log:
                    log.write(f"{(time.monotonic_ns() - start) // 1000} {k} {int(d.allowed)}\n")
            step_at += STEP_NS
    if log:
        log.close()
    print(" ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    return 1 if counts["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
