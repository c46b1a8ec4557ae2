"""Start a real HTTP server (uvicorn, gunicorn) on 127.0.0.1, drive it with concurrent
clients, stop it: every step bounded in time, the whole process group killed on exit."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import pytest

APPS = Path(__file__).resolve().parent
PYTHON = "/usr/bin/python3"  # Debian's: it has fastapi, uvicorn, flask, gunicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict  # lowercased names
    body: bytes
    done: float = 0.0  # time.monotonic() when the reply was read

    def json(self):
        return json.loads(self.body)


@dataclass
class Server:
    argv: Sequence[str]
    port: int
    log_path: Path
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(list(self.argv), cwd=APPS, env={**os.environ, **self.env},
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path: str, headers: dict | None = None, timeout: float = 10.0, body: bytes | None = None) -> Reply:
        """GET, or POST when ``body`` is given (JSON)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if body is not None:
            headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            conn.request("GET" if body is None else "POST", path, body=body,
                         headers={"Connection": "close", **(headers or {})})
            r = conn.getresponse()
            body = r.read()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, body, time.monotonic())
        finally:
            conn.close()

    def wait_ready(self, path: str = "/healthz", timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.get(path, timeout=2).status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def warm_pids(self, want: int, path: str = "/healthz", timeout: float = 20.0) -> set:
        """Hit `path` (unlimited) until `want` distinct workers answered or `timeout`:
        workers still importing the app would otherwise sit out the burst."""
        pids: set = set()
        deadline = time.monotonic() + timeout
        lock = threading.Lock()

        def hit() -> None:
            while time.monotonic() < deadline:
                with lock:
                    if len(pids) >= want:
                        return
                try:
                    r = self.get(path, timeout=2)
                    with lock:
                        pids.add(r.headers.get("x-pid"))
                except OSError:
                    time.sleep(0.05)

        threads = [threading.Thread(target=hit) for _ in range(want * 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 5)
        return pids

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # the server and every worker it started
            try:
                self.proc.wait(timeout=wait)
                # workers may outlive the master for a moment: make sure the group is gone
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()

    def log_tail(self, n: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n:]


@contextlib.contextmanager
def serve(argv_for_port, log_path: Path, env: dict, ready_path: str = "/healthz") -> Iterator[Server]:
    port = free_port()
    server = Server(argv_for_port(port), port, log_path, env)
    server.start()
    try:
        server.wait_ready(ready_path)
        yield server
    finally:
        server.stop()


def burst(server: Server, path: str, headers: dict, n: int, threads: int,
          body: bytes | None = None) -> tuple[list[Reply], float]:
    """n GET requests (POST with `body`) from `threads` threads released together, one
    connection each. Returns the replies and the seconds from release to the last reply."""
    replies: list[Reply] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(threads + 1)
    per = [n // threads + (i < n % threads) for i in range(threads)]

    def work(count: int) -> None:
        go.wait(30)
        for _ in range(count):
            try:
                r = server.get(path, headers, body=body)
            except BaseException as e:  # noqa: BLE001 - reported by the caller
                with lock:
                    errors.append(e)
                return
            with lock:
                replies.append(r)

    ts = [threading.Thread(target=work, args=(c,)) for c in per]
    for t in ts:
        t.start()
    go.wait(30)
    start = time.monotonic()
    for t in ts:
        t.join(60)
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]!r}\n{server.log_tail()}")
    return replies, max(r.done for r in replies) - start


PRO_LIMIT = 5  # TEST_POLICY: pro = 5 per 2 s


def check_burst(replies, limit, check_ok=None):
    """One burst inside one window: exactly `limit` 200s, the rest proper 429s;
    `check_ok(reply)` on each 200 when given."""
    statuses = Counter(r.status for r in replies)
    assert set(statuses) <= {200, 429}, statuses
    ok = [r for r in replies if r.status == 200]
    denied = [r for r in replies if r.status == 429]
    assert len(ok) == limit, f"{statuses}: a per-process limiter would admit up to 4 x {limit}"
    assert sorted(int(r.headers["ratelimit-remaining"]) for r in ok) == list(range(limit))
    for r in ok:
        assert r.headers["ratelimit-limit"] == str(limit) and r.headers["x-ratelimit-limit-requests"] == str(limit)
        assert "retry-after" not in r.headers
        if check_ok is not None:
            check_ok(r)
    for r in denied:
        assert 1 <= int(r.headers["retry-after"]) <= 2, r.headers
        assert r.headers["ratelimit-remaining"] == "0" and r.headers["ratelimit-limit"] == str(limit)
        assert r.json()["error"]["type"] == "rate_limit_exceeded" and r.json()["error"]["tier"] == "pro"
    return len(ok), len(denied)


def run_bursts(server, path, key_prefix, limit, n=30, threads=10, tries=3, body=None, check_ok=None):
    """Bursts on fresh keys until one fits inside the 2 s window (a loaded machine can
    stretch one); returns (200s, 429s) summed over all bursts and the pids seen.
    With `body`: POSTs it; `check_ok(reply)` checks each 200 of the counted burst."""
    total_ok = total_denied = 0
    pids = set()
    for attempt in range(tries):
        replies, elapsed = burst(server, path, {"x-api-key": f"{key_prefix}-{attempt}"}, n, threads, body)
        pids |= {r.headers.get("x-pid") for r in replies}
        print(f"burst {attempt}: {len(replies)} replies in {elapsed:.3f} s, "
              f"{Counter(r.status for r in replies)}, workers {Counter(r.headers.get('x-pid') for r in replies)}")
        if elapsed < 1.8:
            ok, denied = check_burst(replies, limit, check_ok)
            return total_ok + ok, total_denied + denied, pids
        total_ok += sum(r.status == 200 for r in replies)
        total_denied += sum(r.status == 429 for r in replies)
    pytest.fail(f"no burst of {n} requests fitted in one 2 s window in {tries} tries (machine overloaded?)")
