#!/usr/bin/python3
"""Python benchmark: ns per admission through `sluice.Client.acquire`, side by side with
a pure-Python in-process limiter and redis-py + a Lua sliding window, on one hot key
and on 100k keys in random order.

    /usr/bin/python3 bench/bench_python.py [--json FILE] [--quick] [--no-redis]

It starts its own sluiced (build/default/daemon/sluiced, or $SLUICE_BUILD_DIR) on a
private segment and, unless --no-redis, its own redis-server on a free 127.0.0.1 port
(--save '' --appendonly no); both are stopped and removed at the end. The whole run
is bounded to about 2 minutes. Run it on an otherwise quiet machine.

Method: time.perf_counter_ns around a batch of calls in a plain `for` loop (the loop
is part of every figure, as it is of any caller), 5 repetitions with the three
implementations interleaved, medians reported. Keys are pre-built (str) and, for the
100k-key workload, pre-inserted by an untimed pass, then visited in a fresh random
order each repetition. Windows are 1 ms with limits no caller here can reach, so
(nearly) every call is admitted and each one records a timestamp.

"C alone" is measured in this process, interleaved with the rest, on the same
segment, tiers and key objects in the same order (bench/c_reference_module.c: each
key's bytes taken before the clock starts, then one sluice_acquire per key in a C
loop), so "sluice - C" is what the binding (and the Python loop, ~4 ns) adds to the very same calls. The figures
of bench_sluice --quick (a3, c: another table size, key length and key order) are
kept in the JSON as c_bench_sluice for comparison only (--no-c-bench skips them).
The raw ctypes call on libsluice.so is shown too: ctypes' own overhead (its no-op
call, a bad struct size that returns at the library's first check) is several times
the library's work, so the ctypes difference is not used as "C alone".

Each workload runs twice: with long-lived key objects (`hot` is one str object,
the 100k keys a shuffled list of the same 100k objects), and with a new str object
per call, allocated in call order, as a server that parses each request's key
makes them (and as the C harness reads its keys: sequentially).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("SLUICE_BUILD_DIR", ROOT / "build" / "default")).resolve()
for p in (str(ROOT / "python"), str(BUILD / "bindings")):
    if p not in sys.path:
        sys.path.insert(0, p)

import sluice  # noqa: E402

WINDOW_MS = 1
# > calls any Python implementation here makes in 1 ms (all admitted). C alone
# (about 23k calls/ms) fills it and takes the cheaper deny path for some calls:
# its admitted fraction is printed and flagged next to the aim. A higher limit
# would need a ring that large for every key slot of the tier (fallocate'd).
HOT_LIMIT = 16384
WIDE_LIMIT = 16    # 100k keys: each key is seen once per pass
N_KEYS = 100_000

AIMS = {
    "above_c_ns": 150,          # sluice.Client.acquire - C call alone
    "vs_pure_python_1key": 2.5,
    "vs_pure_python_100k": 4.0,
    "vs_redis_lua": 300.0,
}


# --- the competitors ---------------------------------------------------------------------------

class PurePythonLimiter:
    """The single-node sliding window of the seeds: one threading.Lock, a dict of
    deques of monotonic timestamps per key; in-process only (each worker its own)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window = window_s
        self.lock = threading.Lock()
        self.hits: dict = {}

    def acquire(self, key, cost: int = 1):
        """(allowed, remaining, retry_after_s), like the fields a middleware needs."""
        now = time.monotonic()
        with self.lock:
            q = self.hits.get(key)
            if q is None:
                q = self.hits[key] = deque()
            cutoff = now - self.window
            while q and q[0] <= cutoff:
                q.popleft()
            n = len(q)
            if n + cost <= self.limit:
                if cost == 1:
                    q.append(now)
                else:
                    q.extend([now] * cost)
                return True, self.limit - n - cost, 0.0
            return False, self.limit - n, q[n + cost - self.limit - 1] + self.window - now


LUA_SLIDING_WINDOW = """
local key, now, window, limit, member = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local n = redis.call('ZCARD', key)
if n < limit then
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window)
  return {1, limit - n - 1}
end
return {0, 0}
"""


class RedisLuaLimiter:
    """redis-py + the Lua sliding window (ZREMRANGEBYSCORE/ZCARD/ZADD/PEXPIRE) through
    register_script (EVALSHA), one connection, scores in ms from the caller's clock."""

    def __init__(self, port: int, limit: int, window_ms: int) -> None:
        import redis

        self.r = redis.Redis(host="127.0.0.1", port=port)
        self.script = self.r.register_script(LUA_SLIDING_WINDOW)
        self.limit, self.window_ms = limit, window_ms
        self.seq = 0

    def acquire(self, key):
        self.seq += 1
        now = time.time() * 1000.0
        allowed, remaining = self.script(keys=[key], args=[now, self.window_ms, self.limit, f"{now}-{self.seq}"])
        return allowed == 1, remaining


# --- processes we own ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sluiced:
    def __init__(self, tmp: Path) -> None:
        exe = BUILD / "daemon" / "sluiced"
        if not exe.exists():
            sys.exit(f"{exe} is not built (cmake --build build/default)")
        self.segment = f"sluicebench-py-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        policy = {
            # Every tier gets max_keys slots: "hot"'s 16384-slot rings make 17 GiB, used
            # by one key. Not reserved, only the touched pages take memory (as before
            # sluiced reserved segments; the timed loops touch nothing new).
            "segment": {"max_keys": N_KEYS + N_KEYS // 10, "max_key_bytes": 32, "idle_ttl_ms": 600000,
                        "reserve_memory": False},
            "tiers": [
                {"name": "hot", "limit": HOT_LIMIT, "window_ms": WINDOW_MS, "max_limit": HOT_LIMIT, "adaptive": False},
                {"name": "wide", "limit": WIDE_LIMIT, "window_ms": WINDOW_MS, "max_limit": WIDE_LIMIT,
                 "adaptive": False},
            ],
        }
        (tmp / "policy.json").write_text(json.dumps(policy))
        self.log_path = tmp / "sluiced.log"
        argv = [str(exe), "--segment", self.segment, "--policy", str(tmp / "policy.json"), "--reset"]
        usage = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=10)
        if "--state-dir" in usage.stdout + usage.stderr:  # the audit store stays in our temp dir
            argv += ["--state-dir", str(tmp)]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while "ready:" not in self.log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"sluiced did not start:\n{self.log_path.read_text()}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for suffix in (".state", ".policy", ".lock", ".sock"):
            try:
                os.unlink(f"/dev/shm/{self.segment}{suffix}")
            except FileNotFoundError:
                pass


class RedisServer:
    def __init__(self, tmp: Path) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=self.port).ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.05)
        self.version = redis.Redis(host="127.0.0.1", port=self.port).info()["redis_version"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- ctypes on libsluice -------------------------------------------------------------------------

class CDecision(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("allowed", ctypes.c_uint32), ("limit", ctypes.c_uint32),
                ("remaining", ctypes.c_uint32), ("window_ns", ctypes.c_int64), ("retry_after_ns", ctypes.c_int64),
                ("reset_after_ns", ctypes.c_int64), ("tier", ctypes.c_uint32), ("reason", ctypes.c_int32)]


class CTypesClient:
    def __init__(self, segment: str) -> None:
        lib = ctypes.CDLL(str(BUILD / "capi" / "libsluice.so"))
        lib.sluice_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.sluice_acquire.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                       ctypes.c_uint32, ctypes.POINTER(CDecision)]
        lib.sluice_close.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.handle = ctypes.c_void_p()
        rc = lib.sluice_open(segment.encode(), ctypes.byref(self.handle))
        if rc != 0:
            raise RuntimeError(f"sluice_open: {rc}")
        self.d = CDecision(size=ctypes.sizeof(CDecision))
        self.bad = CDecision(size=0)  # -> SLUICE_ESIZE at the library's first check

    def close(self) -> None:
        self.lib.sluice_close(self.handle)


# --- timing ----------------------------------------------------------------------------------------

def timed(fn, *args) -> int:
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        fn(*args)
        return time.perf_counter_ns() - t0
    finally:
        gc.enable()


def run_sluice(acquire, keys, tier):
    for k in keys:
        acquire(k, tier)


def run_sluice_count(acquire, keys, tier):
    return sum(1 for k in keys if acquire(k, tier).allowed)


def run_py(acquire, keys):
    for k in keys:
        acquire(k)


def run_py_count(acquire, keys):
    return sum(1 for k in keys if acquire(k)[0])


def run_ctypes(fn, h, tier, keys, lens_, d):
    for k, n in zip(keys, lens_):
        fn(h, tier, k, n, 1, d)


def run_loop_only(keys):
    for k in keys:
        pass


def run_noarg(fn, keys):
    for k in keys:
        fn()


def run_twoarg(fn, keys, tier):
    for k in keys:
        fn(k, tier)


def run_field(d, keys):
    for k in keys:
        d.allowed


def c_reference(use_c_bench: bool, tmp: Path) -> dict:
    """ns per call of libsluice alone for workloads a3 (1 hot key) and c (100k random keys):
    {"a3": {...}, "c": {...}, "source": ...}. mean_ns is 1e9 / throughput (a batch mean).
    a3 is a1 on this benchmark's hot tier (limit 16384, 1 ms window)."""
    exe = BUILD / "bench" / "bench_sluice"
    data, source = None, None
    if use_c_bench and exe.exists():
        out = tmp / "bench_sluice.json"
        argv = [str(exe), "--quick", "--no-redis", "--only", "ac", "--reps", "3", "--json", str(out)]
        try:
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                           check=True)
            data = json.loads(out.read_text())
            source = f"{exe.relative_to(ROOT)} --quick --only ac --reps 3"
        except (subprocess.SubprocessError, OSError, ValueError) as e:
            print(f"bench_sluice failed ({e}); using bench/results/latest.json", file=sys.stderr)
    if data is None:
        latest = ROOT / "bench" / "results" / "latest.json"
        if latest.exists():
            data, source = json.loads(latest.read_text()), str(latest.relative_to(ROOT))
    ref: dict = {"source": source}
    for w in (data or {}).get("workloads", []):
        if w["id"] in ("a3", "c"):
            tp = w.get("throughput_per_s")
            ref[w["id"]] = {"label": w["label"], "median_ns": w["median_ns"], "mean_ns": 1e9 / tp if tp else None}
    return ref


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller batches (smoke test, < 20 s)")
    ap.add_argument("--no-redis", action="store_true", help="skip redis-py + Lua")
    ap.add_argument("--no-c-bench", action="store_true",
                    help="do not run bench_sluice --quick for its (comparison-only) C figures")
    ap.add_argument("--budget", type=float, default=100.0, help="seconds before remaining repetitions are skipped")
    args = ap.parse_args()

    t_start = time.monotonic()
    hot_calls = 50_000 if args.quick else 300_000
    wide_calls = N_KEYS  # one pass over the 100k keys per repetition
    redis_calls = 500 if args.quick else 3000
    rng = random.Random(42)
    parts = [(i, rng.getrandbits(32)) for i in range(N_KEYS)]
    keys = [f"key-{i:08d}-{r:08x}" for i, r in parts]
    hot = ["api-key-hot-0001"] * hot_calls
    # A server parses each request's key into a new str: these are distinct objects,
    # allocated in call order (like the C harness's keys, read sequentially), hash
    # not yet computed. `hot` and `order` instead reuse a few long-lived objects.
    hot_fresh = ["api-key-hot-%04d" % 1 for _ in range(hot_calls)]

    tmp = Path(tempfile.mkdtemp(prefix="sluicebench-py-"))
    daemon = redis_srv = None
    try:
        cref = c_reference(not args.no_c_bench, tmp)
        sys.path.insert(0, str(BUILD / "bench"))
        import _sluice_cref  # built with the bench targets (bench/CMakeLists.txt)
        daemon = Sluiced(tmp)
        client = sluice.Client(daemon.segment)
        acq = client.acquire
        pyl_hot = PurePythonLimiter(HOT_LIMIT, WINDOW_MS / 1000)
        pyl_wide = PurePythonLimiter(WIDE_LIMIT, WINDOW_MS / 1000)
        ct = CTypesClient(daemon.segment)
        ct_keys = [k.encode() for k in keys]
        ct_hot = [hot[0].encode()] * hot_calls
        if not args.no_redis:
            redis_srv = RedisServer(tmp)
            rl_hot = RedisLuaLimiter(redis_srv.port, HOT_LIMIT, WINDOW_MS)
            rl_wide = RedisLuaLimiter(redis_srv.port, WIDE_LIMIT, WINDOW_MS)

        # Warm-up (untimed): inserts every key everywhere, faults the pages in.
        run_sluice(acq, keys, "wide")
        run_py(pyl_wide.acquire, keys)
        run_sluice(acq, hot[:20000], "hot")
        run_py(pyl_hot.acquire, hot[:20000])
        run_ctypes(ct.lib.sluice_acquire, ct.handle, b"wide", ct_keys[:20000], [len(k) for k in ct_keys[:20000]],
                   ctypes.byref(ct.d))
        if redis_srv:
            for k in keys[:500]:
                rl_wide.acquire(k)
                rl_hot.acquire(hot[0])

        samples: dict[str, list[float]] = {}

        def add(name: str, ns: int, calls: int) -> None:
            samples.setdefault(name, []).append(ns / calls)

        c_admitted: dict[str, float] = {}  # C's loop is faster: on the hot tier it may fill the window

        def add_c(name: str, tier: str, ks: list) -> None:
            ns, admitted_n = _sluice_cref.time_acquire(daemon.segment, tier, ks)
            add(name, ns, len(ks))
            c_admitted[name.replace("/", "_")] = admitted_n / len(ks)

        d_ok, d_bad = ctypes.byref(ct.d), ctypes.byref(ct.bad)
        decision = acq(hot[0], "hot")
        n = hot_calls // 3
        hot_lens = [len(ct_hot[0])] * n
        reps_done = 0
        for rep in range(args.reps):
            if time.monotonic() - t_start > args.budget:
                print(f"budget reached after {rep} repetitions", file=sys.stderr)
                break
            order = keys[:]
            rng.shuffle(order)
            shuffled = parts[:]
            rng.shuffle(shuffled)
            order_fresh = [f"key-{i:08d}-{r:08x}" for i, r in shuffled]
            hot_fresh = ["api-key-hot-%04d" % 1 for _ in range(hot_calls)]
            order_b = [k.encode() for k in order]
            lens_ = [len(k) for k in order_b]

            add("sluice/1key", timed(run_sluice, acq, hot, "hot"), hot_calls)
            add("python/1key", timed(run_py, pyl_hot.acquire, hot), hot_calls)
            add("sluice/100k", timed(run_sluice, acq, order, "wide"), wide_calls)
            add("python/100k", timed(run_py, pyl_wide.acquire, order), wide_calls)
            add("sluice/1key-fresh", timed(run_sluice, acq, hot_fresh, "hot"), hot_calls)
            add("python/1key-fresh", timed(run_py, pyl_hot.acquire, hot_fresh), hot_calls)
            add("sluice/100k-fresh", timed(run_sluice, acq, order_fresh, "wide"), wide_calls)
            add("python/100k-fresh", timed(run_py, pyl_wide.acquire, order_fresh), wide_calls)
            add_c("c/1key", "hot", hot)
            add_c("c/100k", "wide", order)
            add_c("c/1key-fresh", "hot", hot_fresh)
            add_c("c/100k-fresh", "wide", order_fresh)
            add("ctypes/1key", timed(run_ctypes, ct.lib.sluice_acquire, ct.handle, b"hot", ct_hot[:n], hot_lens, d_ok), n)
            add("ctypes/100k", timed(run_ctypes, ct.lib.sluice_acquire, ct.handle, b"wide", order_b, lens_, d_ok),
                wide_calls)
            add("ctypes-noop", timed(run_ctypes, ct.lib.sluice_acquire, ct.handle, b"hot", ct_hot[:n], hot_lens, d_bad), n)
            # What a call costs before any work: the loop alone, pybind11's dispatch of a
            # method doing nothing (Client.__enter__ returns self), a pybind11 field read,
            # and CPython's own C method with two arguments (dict.get).
            add("loop-only", timed(run_loop_only, hot[:n]), n)
            add("pybind11-empty-method", timed(run_noarg, client.__enter__, hot[:n]), n)
            add("pybind11-field-read", timed(run_field, decision, hot[:n]), n)
            add("cpython-dict.get(k, t)", timed(run_twoarg, {}.get, hot[:n], "hot"), n)
            if redis_srv:
                add("redis/1key", timed(run_py, rl_hot.acquire, hot[:redis_calls]), redis_calls)
                add("redis/100k", timed(run_py, rl_wide.acquire, order[:redis_calls]), redis_calls)
                add("redis/1key-fresh", timed(run_py, rl_hot.acquire, hot_fresh[:redis_calls]), redis_calls)
                add("redis/100k-fresh", timed(run_py, rl_wide.acquire, order_fresh[:redis_calls]), redis_calls)
            reps_done += 1

        # Admitted fractions (untimed): the workloads must really be admissions.
        admitted = {
            "sluice_1key": run_sluice_count(acq, hot[:50000], "hot") / 50000,
            "python_1key": run_py_count(pyl_hot.acquire, hot[:50000]) / 50000,
            "sluice_100k": run_sluice_count(acq, keys, "wide") / len(keys),
            "python_100k": run_py_count(pyl_wide.acquire, keys) / len(keys),
        }
        admitted.update(c_admitted)  # the last repetition's
        if redis_srv:
            admitted["redis_1key"] = sum(rl_hot.acquire(hot[0])[0] for _ in range(300)) / 300

        med = {k: statistics.median(v) for k, v in samples.items()}
        rows = []
        for w, cid, label in (("1key", "a3", "1 key"), ("100k", "c", "100k keys, random order"),
                              ("1key-fresh", "a3", "1 key, new str per call"),
                              ("100k-fresh", "c", "100k keys, new str per call")):
            s_ns, py = med[f"sluice/{w}"], med[f"python/{w}"]
            c_ns = med[f"c/{w}"]
            rows.append({
                "workload": label,
                "sluice_ns": s_ns,
                "pure_python_ns": py,
                "redis_lua_ns": med.get(f"redis/{w}"),
                "c_alone_ns": c_ns,
                "c_alone_admitted_fraction": admitted.get(f"c_{w}", 1.0),
                "c_bench_sluice_quick_ns": (cref.get(cid) or {}).get("mean_ns"),
                "ctypes_call_ns": med.get(f"ctypes/{w}"),
                "sluice_above_c_ns": (s_ns - c_ns) if c_ns else None,
                "x_vs_pure_python": py / s_ns,
                "x_vs_redis_lua": (med[f"redis/{w}"] / s_ns) if f"redis/{w}" in med else None,
            })

        aims: dict = {}
        tags = ("1 key", "100k", "1 key, new str", "100k, new str")
        for r, tag in zip(rows, tags):
            if r["sluice_above_c_ns"] is not None:
                c_adm = r["c_alone_admitted_fraction"]
                flag = "" if c_adm >= 0.99 else f" [C alone admitted {c_adm:.0%}: part deny path]"
                aims[f"sluice - C <= {AIMS['above_c_ns']} ns ({tag}){flag}"] = r["sluice_above_c_ns"] <= AIMS["above_c_ns"]
            want = AIMS["vs_pure_python_1key"] if tag.startswith("1 key") else AIMS["vs_pure_python_100k"]
            aims[f"x pure-Python >= {want} ({tag})"] = r["x_vs_pure_python"] >= want
            if redis_srv:
                aims[f"x redis+Lua >= {AIMS['vs_redis_lua']:.0f} ({tag})"] = r["x_vs_redis_lua"] >= AIMS["vs_redis_lua"]

        # --- print -------------------------------------------------------------------------------
        def f(x, fmt="{:,.0f}"):
            return "-" if x is None else fmt.format(x)

        print(f"sluice Python benchmark: {reps_done} reps, medians of ns per call (batch means, loop included), "
              f"/usr/bin/python3 {platform.python_version()}, load {os.getloadavg()[0]:.2f}")
        hdr = f"{'workload':<31}{'sluice':>8}{'pure-Py':>9}{'redis+Lua':>11}{'C alone':>9}{'sluice-C':>10}" \
              f"{'ctypes':>8}{'x pure-Py':>11}{'x redis':>9}"
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            print(f"{r['workload']:<31}{f(r['sluice_ns']):>8}{f(r['pure_python_ns']):>9}{f(r['redis_lua_ns']):>11}"
                  f"{f(r['c_alone_ns']):>9}{f(r['sluice_above_c_ns']):>10}{f(r['ctypes_call_ns']):>8}"
                  f"{f(r['x_vs_pure_python'], '{:.2f}'):>11}{f(r['x_vs_redis_lua'], '{:,.0f}'):>9}")
        print("\nC alone: this process, the same segment and key objects, one sluice_acquire per key in a C "
              "loop (bench/c_reference_module.c); bench_sluice --quick for comparison: " +
              (", ".join(f"{k} {cref[k]['mean_ns']:.0f} ns" for k in ("a3", "c") if cref.get(k, {}).get("mean_ns"))
               or "not run"))
        print(f"ctypes: the same C call through ctypes; ctypes' own no-op call costs {med['ctypes-noop']:.0f} ns")
        print(f"per call, loop included: loop alone {med['loop-only']:.0f} ns; CPython C method dict.get(k, t) "
              f"{med['cpython-dict.get(k, t)']:.0f} ns; pybind11 method doing nothing (Client.__enter__) "
              f"{med['pybind11-empty-method']:.0f} ns; pybind11 field read (Decision.allowed) "
              f"{med['pybind11-field-read']:.0f} ns")
        print("admitted fractions: " + ", ".join(f"{k} {v:.4f}" for k, v in admitted.items()))
        print("aims: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in aims.items()))
        print("spread (min..max over reps): " +
              ", ".join(f"{k} {min(v):,.0f}..{max(v):,.0f}" for k, v in samples.items()))

        results = {
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
                        "loadavg_end": os.getloadavg(), "redis_version": redis_srv.version if redis_srv else None},
            "config": {"reps": reps_done, "hot_calls": hot_calls, "keys": N_KEYS, "redis_calls_per_rep": redis_calls,
                       "window_ms": WINDOW_MS, "hot_limit": HOT_LIMIT, "wide_limit": WIDE_LIMIT,
                       "quick": args.quick},
            "workloads": rows, "c_bench_sluice": cref, "samples_ns": samples, "medians_ns": med,
            "admitted_fraction": admitted, "aims": AIMS, "aims_met": aims, "seconds": time.monotonic() - t_start,
        }
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
            print(f"results: {args.json}")
        ct.close()
        client.close()
        return 0
    finally:
        if redis_srv:
            redis_srv.stop()
        if daemon:
            daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
