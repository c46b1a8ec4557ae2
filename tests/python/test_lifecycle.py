"""sluiced's start and stop against what an operator (or a stray `rm`) may do: a
start that fails after the segment exists, the lock file removed under a running
daemon, a hangup. Each runs real sluiced processes on private segments."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import SLUICECTL, SLUICED, TEST_POLICY, Daemon, unshare_or_skip



def wait_for(pred, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run_sluiced(d: Daemon, policy_path: Path, *extra: str) -> tuple[int, str]:
    """Runs sluiced to its end (a start expected to fail): exit code and its log."""
    r = subprocess.run([str(SLUICED), "--segment", d.segment, "--policy", str(policy_path),
                        "--state-dir", str(d.tmp), *extra], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr


def test_a_restart_that_cannot_listen_on_its_metrics_port_never_publishes_its_policy(tmp_path):
    d = Daemon(tmp_path)
    try:
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(timeout=10)
        before = d.status()
        changed = copy.deepcopy(TEST_POLICY)
        changed["tiers"][0]["limit"] = 7
        policy = tmp_path / "changed.json"
        policy.write_text(json.dumps(changed))
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            rc, log = run_sluiced(d, policy, "--metrics-addr", f"127.0.0.1:{port}")
            assert rc == 1, log
            assert f"cannot listen on 127.0.0.1:{port}" in log
            after = d.status()
            # Nothing was published (the old code published limit 7, then put 20 back:
            # two generations), and no start was counted.
            assert after["policy_generation"] == before["policy_generation"]
            assert after["daemon_starts"] == before["daemon_starts"]
            assert after["tiers"][0]["limit"] == before["tiers"][0]["limit"] == 20
            # --reset on a busy port removes nothing: the pair (and its counters) stay.
            rc, log = run_sluiced(d, policy, "--metrics-addr", f"127.0.0.1:{port}", "--reset")
            assert rc == 1, log
            assert d.status()["policy_generation"] == before["policy_generation"]
    finally:
        d.stop()


def test_a_removed_lock_file_is_made_again_and_a_second_daemon_is_still_refused(tmp_path):
    d = Daemon(tmp_path, args=("--tick-ms", "100"))
    try:
        lock = Path(f"/dev/shm/{d.segment}.lock")
        lock.unlink()
        wait_for(lambda: "made it again" in d.log_path.read_text(), 5, "sluiced to take its lock again")
        assert lock.exists()
        rc, log = run_sluiced(d, d.policy_path)
        assert rc == 75  # EX_TEMPFAIL: another sluiced owns it
        assert "another sluiced" in log
        assert d.proc.poll() is None
    finally:
        d.stop()


def test_a_daemon_whose_lock_file_another_took_stops_and_leaves_the_segment_to_it(tmp_path):
    # A long tick: the second daemon starts before the first looks at its lock.
    first = Daemon(tmp_path, args=("--tick-ms", "6000"))
    second = None
    try:
        Path(f"/dev/shm/{first.segment}.lock").unlink()
        second = Daemon(tmp_path, segment=first.segment, args=("--tick-ms", "100"))
        second.policy_path = first.policy_path
        first.proc.wait(timeout=20)
        assert first.proc.returncode == 1
        assert "cannot be taken again" in first.log_path.read_text()
        # The segment is the second daemon's: still alive, its socket still in place.
        st = second.status()
        assert st["daemon_alive"] and st["daemon_pid"] == second.proc.pid
        assert Path(f"/dev/shm/{first.segment}.sock").exists()
        assert second.ctl("pending").returncode == 0
    finally:
        if second is not None:
            second.stop()
        first.stop()


def test_a_hangup_stops_sluiced_cleanly(tmp_path):
    d = Daemon(tmp_path)
    try:
        d.proc.send_signal(signal.SIGHUP)
        assert d.proc.wait(timeout=10) == 0
        st = d.status()
        assert not st["daemon_alive"]
        assert st["heartbeat_age_ns"] == -1  # stopped cleanly, not a stale heartbeat
        assert st["daemon_state"] == "stopped"
        assert not Path(f"/dev/shm/{d.segment}.sock").exists()
    finally:
        d.stop()


# Runs inside a private mount namespace with a small tmpfs over /dev/shm: sluiced
# makes its segment, something else then fills /dev/shm, and a client inserts
# keys across the whole table. tmpfs allocates a page when it is first touched,
# so a segment that reserved nothing killed that client with SIGBUS (rc 135).
FULL_SHM_SCRIPT = r"""
set -u
mount -t tmpfs -o size=40m tmpfs /dev/shm || exit 90
"$SLUICED" --segment fullshm --policy "$POLICY" --state-dir "$STATE" > "$STATE/sluiced.log" 2>&1 &
pid=$!
i=0
until "$SLUICECTL" --segment fullshm status > /dev/null 2>&1; do
  i=$((i + 1)); [ $i -gt 250 ] && { kill $pid; cat "$STATE/sluiced.log"; exit 91; }
  kill -0 $pid 2> /dev/null || { cat "$STATE/sluiced.log"; exit 92; }
  sleep 0.02
done
dd if=/dev/zero of=/dev/shm/filler bs=1M > /dev/null 2>&1  # until ENOSPC
df -k /dev/shm | tail -1
/usr/bin/python3 -c '
import sluice
with sluice.Client("fullshm") as c:
    admitted = sum(c.acquire(b"k%d" % i, "t").allowed for i in range(60000))
print("admitted", admitted)
'
rc=$?
kill $pid; wait $pid
echo "client rc $rc"
"""


def test_a_full_dev_shm_after_the_start_never_kills_a_client(tmp_path):
    unshare_or_skip()
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({
        "segment": {"max_keys": 100000, "max_key_bytes": 16},
        "tiers": [{"name": "t", "limit": 1, "window_ms": 60000, "max_limit": 16, "revenue_per_request": 0.0}],
    }))
    env = dict(os.environ, SLUICED=str(SLUICED), SLUICECTL=str(SLUICECTL), POLICY=str(policy), STATE=str(tmp_path))
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", FULL_SHM_SCRIPT],
                       capture_output=True, text=True, timeout=120, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "client rc 0" in out, out
    assert "admitted 60000" in out, out  # every key got its own ring: nothing lost to the full disk


def test_an_audit_store_on_a_full_disk_fails_the_start_saying_so(tmp_path):
    unshare_or_skip()
    state = tmp_path / "state"
    state.mkdir()
    seg = f"sluicetest-fullaudit-{uuid.uuid4().hex[:8]}"
    script = f'mount -t tmpfs -o size=4k tmpfs "{state}" && exec "{SLUICED}" --segment {seg} --state-dir "{state}"'
    try:
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                           capture_output=True, text=True, timeout=30)
    finally:
        for ext in ("state", "policy", "lock", "sock"):
            Path(f"/dev/shm/{seg}.{ext}").unlink(missing_ok=True)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "disk is full" in out, out
    assert "set audit_db" not in out, out  # a full disk is not a setting to change


def test_the_audit_store_is_created_for_owner_and_group_only(tmp_path):
    d = Daemon(tmp_path)
    try:
        dbs = list(Path(d.tmp).glob("*.db"))
        assert dbs, list(Path(d.tmp).iterdir())
        for f in dbs + list(Path(d.tmp).glob("*.db-wal")):
            assert f.stat().st_mode & 0o777 == 0o640, (f, oct(f.stat().st_mode))
    finally:
        d.stop()


def test_status_tells_a_hung_daemon_from_a_dead_one_and_exits_3_for_both(tmp_path):
    d = Daemon(tmp_path, args=("--tick-ms", "100"))
    try:
        r = d.ctl("status")
        assert r.returncode == 0 and "daemon alive" in r.stdout, r.stdout
        d.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and d.status()["daemon_state"] != "not_answering":
            time.sleep(0.2)
        st = d.status()
        assert st["daemon_state"] == "not_answering" and not st["daemon_alive"]
        r = d.ctl("status")
        assert r.returncode == 3 and "NOT answering" in r.stdout and "NOT running" not in r.stdout, r.stdout
        # A command for the daemon says so at once, not after its 10 s timeout.
        t0 = time.monotonic()
        r = d.ctl("pending")
        assert r.returncode == 1 and "is NOT answering: it is stopped" in r.stderr and "nothing was sent" in r.stderr, r.stderr
        assert time.monotonic() - t0 < 5, "sluicectl pending waited for the hung daemon"
        d.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and d.ctl("status").returncode != 0:
            time.sleep(0.1)
        assert d.status()["daemon_state"] == "alive"
        assert d.ctl("pending").returncode == 0
        d.kill9()
        r = d.ctl("status")
        assert r.returncode == 3 and "pid is gone" in r.stdout, r.stdout
        assert d.status()["daemon_state"] == "gone"
    finally:
        d.proc.send_signal(signal.SIGCONT)
        d.stop()


def test_a_client_moves_to_the_new_pair_after_sluiced_was_killed_and_its_files_removed(tmp_path):
    # kill -9 leaves the pair unretired; `rm /dev/shm/SEG.*` unlinks it; a new
    # sluiced makes a new pair. A client that mapped the old one counted there for
    # good (twice the host's limit with the new pair's clients); now it moves.
    import sluice
    d = Daemon(tmp_path)
    try:
        with sluice.Client(d.segment) as c:
            assert c.acquire("k", "pro").allowed  # pro: 5 per 2 s
            d.kill9()
            for part in ("state", "policy"):
                Path(f"/dev/shm/{d.segment}.{part}").unlink()
            d.start()
            time.sleep(0.3)  # past the client's name check (every 200 ms)
            got = [c.acquire("k", "pro").allowed for _ in range(6)]
            assert got == [True] * 5 + [False], got
        pro = {t["name"]: t for t in d.status()["tiers"]}["pro"]
        assert pro["admitted"] == 5 and pro["denied_window"] == 1, pro
    finally:
        d.stop()
