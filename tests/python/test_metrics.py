"""sluiced's /metrics: valid Prometheus text (promtool), scraped by a real
Prometheus server, and the flag's errors."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import SLUICED, Daemon, Prometheus, fetch, metrics_port


def sample(page: str, series: str) -> float:
    for line in page.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


@pytest.fixture
def metrics_daemon(tmp_path):
    d = Daemon(tmp_path, args=("--metrics-addr", "127.0.0.1:0", "--tick-ms", "200"))
    yield d
    d.stop()


def test_metrics_pass_promtool_after_traffic(metrics_daemon):
    import sluice

    with sluice.Client(metrics_daemon.segment) as c:
        for i in range(30):
            c.acquire(f"k{i % 3}", "pro")
            c.acquire("e", "enterprise", cost=3)
    time.sleep(0.5)
    page = fetch(f"http://127.0.0.1:{metrics_port(metrics_daemon)}/metrics")
    assert sample(page, 'sluice_admissions_total{tier="pro",decision="allowed",reason="allowed"}') == 15
    assert sample(page, 'sluice_admissions_total{tier="pro",decision="denied",reason="window_full"}') == 15
    assert sample(page, 'sluice_cost_units_total{tier="enterprise"}') == 18  # 20 per 2 s, cost 3: 6 admitted
    assert sample(page, 'sluice_keys_in_use{tier="pro"}') == 3
    r = subprocess.run(["promtool", "check", "metrics"], input=page, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


def test_promtool_catches_a_broken_page():
    """The check above can fail: promtool refuses a counter without _total and no HELP."""
    bad = "# TYPE sluice_admissions counter\nsluice_admissions 3\n"
    r = subprocess.run(["promtool", "check", "metrics"], input=bad, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0


def test_a_real_prometheus_scrapes_the_admissions(metrics_daemon, tmp_path):
    import sluice

    with Prometheus(tmp_path, f"127.0.0.1:{metrics_port(metrics_daemon)}") as prom:
        with sluice.Client(metrics_daemon.segment) as c:
            allowed = sum(c.acquire(f"user-{i % 4}", "enterprise").allowed for i in range(57))
            denied = sum(not c.acquire("one", "free").allowed for _ in range(9))
        assert allowed == 57  # 4 keys x 20 per window
        assert denied == 7
        query = ('sum(sluice_admissions_total{tier="enterprise",decision="allowed"}) + '
                 'sum(sluice_admissions_total{tier="free",decision="denied"}) * 1000')
        want = 57 + 7 * 1000
        got = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                res = prom.query(query)
                if res["status"] == "success" and res["data"]["result"]:
                    got = float(res["data"]["result"][0]["value"][1])
                    if got == want:
                        break
            except OSError:
                pass  # not listening yet
            prom.check_alive()
            time.sleep(0.5)
        assert got == want, (got, prom.log_path.read_text()[-2000:])
        # The target is healthy in Prometheus' own view.
        targets = prom.api("targets")
        assert [t["health"] for t in targets["data"]["activeTargets"]] == ["up"]


@pytest.mark.parametrize("bad", ["example.com:9", "127.0.0.1:70000", "127.0.0.1:x", ""])
def test_a_bad_metrics_address_is_refused_by_name(bad, tmp_path):
    r = subprocess.run([str(SLUICED), "--segment", "sluicetest-never", "--state-dir", str(tmp_path),
                        "--metrics-addr", bad], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "--metrics-addr" in r.stderr


def test_a_taken_metrics_port_stops_the_start(metrics_daemon, tmp_path):
    taken = metrics_port(metrics_daemon)
    segment = metrics_daemon.segment + "-second"
    try:
        second = Daemon(tmp_path, segment=segment, args=("--metrics-addr", f"127.0.0.1:{taken}"))
    except RuntimeError as e:
        assert f"cannot listen on 127.0.0.1:{taken}" in str(e)
        # The failed start removed the segment it had created (only its lock file stays).
        assert sorted(p.name for p in Path("/dev/shm").glob(f"{segment}.*")) == [f"{segment}.lock"]
        Path(f"/dev/shm/{segment}.lock").unlink()
        return
    second.stop()
    pytest.fail("a second sluiced started on a metrics port already in use")
