"""pytest fixtures: a real sluiced process per test module, on a private segment.

The build tree is found through $SLUICE_BUILD_DIR (default build/default); the
package is imported from python/ and the extension from <build>/bindings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SLUICE_BUILD_DIR", ROOT / "build" / "default"))
SLUICED = BUILD / "daemon" / "sluiced"
SLUICECTL = BUILD / "daemon" / "sluicectl"

for p in (str(ROOT / "python"), str(BUILD / "bindings")):
    if p not in sys.path:
        sys.path.insert(0, p)
# Child processes (multiprocessing, uvicorn/gunicorn workers) import sluice too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "python"), str(BUILD / "bindings")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
)

TEST_POLICY = {
    "segment": {"max_keys": 2000, "max_key_bytes": 64, "idle_ttl_ms": 60000},
    "tiers": [
        {"name": "enterprise", "limit": 20, "window_ms": 2000, "max_limit": 160, "revenue_per_request": 0.2},
        {"name": "pro", "limit": 5, "window_ms": 2000, "max_limit": 25, "revenue_per_request": 0.05},
        {"name": "free", "limit": 2, "window_ms": 2000, "max_limit": 6, "revenue_per_request": 0.01},
        {"name": "tiny", "limit": 1, "window_ms": 60000, "max_limit": 1, "revenue_per_request": 0.0},
    ],
}


def governance_policy(approval_ttl_s: int) -> dict:
    """Two tiers, a 200 ms tick and approvals above 1.8x (the governance tests)."""
    return {
        "segment": {"max_keys": 1000},
        "tiers": [
            {"name": "enterprise", "limit": 10, "window_ms": 1000, "max_limit": 80, "revenue_per_request": 0.2},
            {"name": "free", "limit": 3, "window_ms": 1000, "max_limit": 9, "revenue_per_request": 0.01,
             "adaptive": False},
        ],
        "tick_ms": 200,
        "governance": {"approval_ratio": 1.8, "approval_ttl_s": approval_ttl_s},
    }


def governance_pressure(segment: str, seconds: float) -> None:
    """Offers far more than governance_policy's enterprise 10/s on three keys: the
    rules want ~8x, which waits for approval."""
    import sluice  # on sys.path once this module has run

    with sluice.Client(segment) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for k in range(3):
                c.acquire(f"cust-{k}", "enterprise")
            time.sleep(0.001)


def unshare_or_skip() -> None:
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a private mount namespace (unshare -m: root or CAP_SYS_ADMIN)")


_STARTED: list["Daemon"] = []  # every Daemon made so far, in order (see _stop_leftovers)


class Daemon:
    """A running sluiced on its own segment; stopped (SIGTERM) and removed after."""

    def __init__(self, tmp: Path, policy: dict | None = None, segment: str | None = None,
                 args: tuple[str, ...] = (), state_dir: Path | None = None, wrap: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.state_dir = state_dir or tmp  # the audit store's directory
        self.wrap = list(wrap)  # a command sluiced's own runs under (e.g. unshare), its args last
        self.args = list(args)  # extra sluiced flags, e.g. ("--metrics-addr", "127.0.0.1:0")
        self.segment = segment or f"sluicetest-py-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.policy_path = tmp / f"{self.segment}.json"
        self.policy_path.write_text(json.dumps(policy or TEST_POLICY))
        self.log_path = tmp / f"{self.segment}.log"
        self.log = open(self.log_path, "a")
        _STARTED.append(self)  # before start: one that never got ready is removed too
        self.start(reset=True)

    def start(self, reset: bool = False) -> None:
        """(Re)starts sluiced on the same segment and audit store."""
        self.log_path.write_text("")
        self.proc = subprocess.Popen(
            self.wrap + [str(SLUICED), "--segment", self.segment, "--policy", str(self.policy_path),
                         "--state-dir", str(self.state_dir)] + self.args + (["--reset"] if reset else []),
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while "ready:" not in self.log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sluiced did not start: {self.log_path.read_text()}")
            time.sleep(0.01)

    def ctl(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
        """Runs sluicectl (as `user` via setpriv when given)."""
        cmd = [str(SLUICECTL), "--segment", self.segment, *args]
        if user == "nobody":
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def status(self) -> dict:
        # 0: the daemon is alive, 3: it is not (the status is printed either way).
        r = subprocess.run([str(SLUICECTL), "--segment", self.segment, "status", "--json"],
                           capture_output=True, text=True)
        st = json.loads(r.stdout) if r.returncode in (0, 3) else None
        assert st is not None and r.returncode == (0 if st["daemon_alive"] else 3), (r.returncode, r.stderr)
        return st

    def stop(self) -> None:
        """Idempotent. A sluiced that ignores SIGTERM for 10 s is killed, and the
        test fails: its segment is removed either way."""
        hung = False
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                hung = True
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        for suffix in (".state", ".policy", ".lock", ".sock"):
            try:
                os.unlink(f"/dev/shm/{self.segment}{suffix}")
            except FileNotFoundError:
                pass
        assert not hung, f"sluiced ignored SIGTERM for 10 s: {self.log_path.read_text()[-2000:]}"


@pytest.fixture(autouse=True)
def _stop_leftovers():
    """Stops and removes every Daemon a test made and did not stop (it failed or
    returned early), so no sluiced or /dev/shm segment outlives its test. Daemons
    of wider-scoped fixtures were made before this runs and are left to them."""
    mark = len(_STARTED)
    yield
    hung = []
    while len(_STARTED) > mark:
        try:
            _STARTED.pop().stop()
        except AssertionError as e:  # a hung one: the rest are still stopped and removed
            hung.append(str(e))
    assert not hung, hung


def metrics_port(d: Daemon) -> int:
    """The port a Daemon started with --metrics-addr ...:0 serves /metrics on (from its log)."""
    m = re.search(r"metrics: serving http://127\.0\.0\.1:(\d+)/metrics", d.log_path.read_text())
    assert m, d.log_path.read_text()
    return int(m.group(1))


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A private Prometheus server on a free loopback port, scraping `target`
    (HOST:PORT) every second; a context manager that stops it."""

    def __init__(self, tmp: Path, target: str) -> None:
        prom = shutil.which("prometheus")
        assert prom, "prometheus is not installed (.ci/deps installs it)"
        self.port = free_port()
        self.log_path = tmp / "prometheus.log"
        cfg = tmp / "prometheus.yml"
        cfg.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                       "scrape_configs:\n"
                       f"  - job_name: sluice\n    static_configs: [{{targets: ['{target}']}}]\n")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([prom, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> dict:
        """GET /api/v1/<path>; a 4xx answer (a bad query) is returned as its JSON
        error; OSError while it is not listening yet."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            return json.loads(fetch(url))
        except urllib.error.HTTPError as e:
            return json.loads(e.read().decode())

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def check_alive(self) -> None:
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]

    def __enter__(self) -> "Prometheus":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def daemon(tmp_path):
    if not SLUICED.exists():
        pytest.fail(f"{SLUICED} is not built: run .ci/build first")
    d = Daemon(tmp_path)
    yield d
    d.stop()


@pytest.fixture
def client(daemon):
    import sluice

    with sluice.Client(daemon.segment) as c:
        yield c
