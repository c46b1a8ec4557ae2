"""The control socket against a running sluiced: clients that connect and send
nothing, or dribble a byte at a time, never hold the loop (ticks keep their
cadence and the heartbeat stays fresh), concurrent clients all get correct
replies, and concurrent approvals of one id are serialized (exactly one wins)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

import sluice
from conftest import Daemon, fetch, governance_policy, governance_pressure, metrics_port

TICK_MS = 50
UNKNOWN = "error\nunknown command 'bogus' (pending, approve, reject, audit, audit-ago, snapshot, overview)\n"


@pytest.fixture
def fast(tmp_path):
    d = Daemon(tmp_path, governance_policy(approval_ttl_s=60),
               args=("--tick-ms", str(TICK_MS), "--metrics-addr", "127.0.0.1:0"))
    yield d
    d.stop()


def sock_path(d: Daemon) -> str:
    return f"/dev/shm/{d.segment}.sock"


def request(d: Daemon, line: str, timeout: float = 10.0) -> str:
    """One request over the raw socket, as sluicectl sends it; the whole reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path(d))
        s.sendall(line.encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out.decode()


def sample(page: str, series: str) -> float:
    for line in page.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


class Loiterers:
    """`silent` connections that send nothing and `dribblers` that send one byte
    every 100 ms and never a newline, all held open (reopened when sluiced
    answers and closes one) until stopped."""

    def __init__(self, path: str, silent: int, dribblers: int) -> None:
        self.path = path
        self.stop_event = threading.Event()
        self.opened = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.hold, args=(False,), daemon=True) for _ in range(silent)]
        self.threads += [threading.Thread(target=self.hold, args=(True,), daemon=True) for _ in range(dribblers)]
        for t in self.threads:
            t.start()

    def hold(self, dribble: bool) -> None:
        while not self.stop_event.is_set():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(0.1)
            try:
                s.connect(self.path)
                with self.lock:
                    self.opened += 1
                while not self.stop_event.is_set():
                    if dribble:
                        s.send(b"x")
                    try:
                        if s.recv(4096) == b"":
                            break  # answered (an empty or partial request) and closed: reconnect
                    except socket.timeout:
                        pass
            except OSError:
                time.sleep(0.01)  # the backlog is full or the server closed first: try again
            finally:
                s.close()

    def close(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=5)


def watch_loop(d: Daemon, seconds: float) -> tuple[list[float], list[float], list[float]]:
    """Samples /metrics every 100 ms: (times, ticks, heartbeat ages)."""
    url = f"http://127.0.0.1:{metrics_port(d)}/metrics"
    times, ticks, ages = [], [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        page = fetch(url)
        times.append(time.monotonic())
        ticks.append(sample(page, "sluice_policy_ticks_total"))
        ages.append(sample(page, "sluice_heartbeat_age_seconds"))
        time.sleep(0.1)
    return times, ticks, ages


def longest_stall(times: list[float], ticks: list[float]) -> float:
    """The longest time the tick counter stood still between samples."""
    longest, since = 0.0, times[0]
    for i in range(1, len(times)):
        if ticks[i] != ticks[i - 1]:
            since = times[i]
        longest = max(longest, times[i] - since)
    return longest


def test_idle_and_dribbling_clients_never_delay_ticks_or_the_heartbeat(fast):
    """20 connections that send nothing and 4 that dribble a byte every 100 ms,
    held for 2 s: ticks keep their 50 ms cadence and clients keep seeing a fresh
    heartbeat. (On the loop thread each silent client cost 200 ms of the loop and
    each dribbler as long as it kept sending.)"""
    time.sleep(0.3)
    loiter = Loiterers(sock_path(fast), silent=20, dribblers=4)
    try:
        time.sleep(0.3)  # all of them connected
        times, ticks, ages = watch_loop(fast, 2.0)
        # A well-behaved client is answered meanwhile.
        t0 = time.monotonic()
        try:
            snap = request(fast, "snapshot")
        except OSError as e:
            snap = repr(e)
        answered_in = time.monotonic() - t0
    finally:
        loiter.close()
    assert loiter.opened >= 24
    elapsed = times[-1] - times[0]
    expected = elapsed * 1000 / TICK_MS
    # Loose bounds for a shared machine: half the cadence, no stall of 10 ticks.
    assert ticks[-1] - ticks[0] >= expected / 2, (ticks, expected)
    assert longest_stall(times, ticks) < 0.5, ticks
    assert max(ages) < 0.5, ages
    assert snap.startswith("ok\n") and json.loads(snap.split("\n", 1)[1])["tick"] > 0, snap
    assert answered_in < 1.0


def test_concurrent_clients_all_get_correct_replies(fast):
    """8 clients x 12 requests of every kind at once, while 10 silent clients are
    held: each reply is the right one for its request."""
    time.sleep(0.3)
    loiter = Loiterers(sock_path(fast), silent=10, dribblers=0)
    failures: list[str] = []
    counts = {"n": 0}
    lock = threading.Lock()

    def check(line: str, reply: str) -> None:
        head, _, body = reply.partition("\n")
        cmd = line.split()[0]
        if cmd == "bogus":
            assert reply == UNKNOWN
        elif cmd == "approve":
            assert reply == "error\nno pending approval with id 'nosuchid' (ids are hex digits: see sluicectl pending)\n"
        elif cmd == "pending" and line.endswith("json"):
            assert head == "ok" and json.loads(body) == []
        elif cmd == "pending":
            assert reply == "ok\nno pending approvals\n"
        elif cmd == "audit":
            assert head == "ok" and isinstance(json.loads(body), list)
        elif cmd == "snapshot":
            s = json.loads(body)
            assert head == "ok" and [t["name"] for t in s["tiers"]] == ["enterprise", "free"]
        elif cmd == "overview":
            o = json.loads(body)
            assert head == "ok" and o["pending"] == [] and o["governance"]["approved"] == 0
        else:
            raise AssertionError(line)

    lines = ["bogus", "approve nosuchid", "pending json", "pending", "audit 0 json", "snapshot", "overview"]

    def client(k: int) -> None:
        for i in range(12):
            line = lines[(k + i) % len(lines)]
            try:
                check(line, request(fast, line))
                with lock:
                    counts["n"] += 1
            except Exception as e:  # noqa: BLE001 - collected and reported below
                with lock:
                    failures.append(f"{line}: {e!r}")

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        loiter.close()
    assert not failures, failures[:5]
    assert counts["n"] == 8 * 12


def test_concurrent_approvals_of_one_id_are_serialized(fast):
    """8 approvers race on one pending id: exactly one approves it, the others are
    told it is gone, and the trail and the counters say one approval."""
    deadline = time.monotonic() + 15
    items: list[dict] = []
    while not items and time.monotonic() < deadline:
        governance_pressure(fast.segment, 0.3)
        items = json.loads(request(fast, "pending json").split("\n", 1)[1])
    assert items, "no approval was requested"
    pid = items[0]["id"]
    barrier = threading.Barrier(8)
    replies: list[str] = []
    lock = threading.Lock()

    def approver() -> None:
        barrier.wait(timeout=10)
        r = request(fast, f"approve {pid}")
        with lock:
            replies.append(r)

    threads = [threading.Thread(target=approver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    wins = [r for r in replies if r.startswith("ok\napproved " + pid)]
    gone = [r for r in replies if r == f"error\nno pending approval with id '{pid}'\n"]
    assert len(wins) == 1 and len(gone) == 7, replies
    audit = json.loads(request(fast, "audit 0 json").split("\n", 1)[1])
    assert len([a for a in audit if a["event"] == "approved" and a["approval_id"] == pid]) == 1
    overview = json.loads(request(fast, "overview").split("\n", 1)[1])
    assert overview["governance"]["approved"] == 1


def test_sluicectl_audit_since_falls_back_for_a_sluiced_without_audit_ago(fast):
    """`--since` is counted back by sluiced on its trail clock (`audit-ago`); an
    older sluiced answers "unknown command", and sluicectl then sends the old form,
    counted back on its own clock, instead of showing the wrong records."""
    import os
    path = sock_path(fast)
    os.unlink(path)  # a stand-in for an older sluiced takes the name
    seen = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(10)

    def serve():
        for _ in range(2):
            c, _ = srv.accept()
            with c:
                line = c.makefile().readline().strip()
                seen.append(line)
                c.sendall(b"error\nunknown command 'audit-ago' (pending, approve, reject, audit, snapshot, overview)\n"
                          if line.startswith("audit-ago") else b"ok\n[]\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = fast.ctl("audit", "--since", "1h", "--json")
    finally:
        t.join(10)
        srv.close()
        os.unlink(path)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
    assert seen[0] == "audit-ago 3600000 json", seen
    verb, from_ms, fmt = seen[1].split()
    assert verb == "audit" and fmt == "json", seen
    assert abs(int(from_ms) - (time.time() * 1000 - 3_600_000)) < 60_000, seen
