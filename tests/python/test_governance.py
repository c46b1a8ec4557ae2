"""Governance end to end through sluicectl against a running sluiced: a large
change waits for approval, approve publishes it, reject does not, expiry drops it,
another uid is refused, and pending items survive a kill -9 and restart."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

import sluice
from conftest import Daemon, governance_policy, governance_pressure, unshare_or_skip

POLICY = governance_policy(approval_ttl_s=3)


@pytest.fixture
def gov(tmp_path):
    d = Daemon(tmp_path, POLICY)
    yield d
    d.stop()


def wait_pending(d: Daemon, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        governance_pressure(d.segment, 0.3)
        out = d.ctl("pending", "--json")
        assert out.returncode == 0, out.stderr
        items = json.loads(out.stdout)
        if items:
            return items
    raise AssertionError("no approval was requested")


def current_limit(segment: str) -> int:
    with sluice.Client(segment) as c:
        return c.peek("probe", "enterprise").limit


def assert_approval_published(d: Daemon, p: dict) -> None:
    """The approved limit was published: clients see it now, or the loop has since
    moved on from it (a tick may ease it the moment the pressure stops)."""
    now = current_limit(d.segment)
    audit = json.loads(d.ctl("audit", "--json").stdout)
    approved = [a for a in audit if a["event"] == "approved" and a["approval_id"] == p["id"]]
    assert approved and approved[0]["new_limit"] == p["new_limit"] and approved[0]["generation"] > 0
    if now != p["new_limit"]:
        later = [a for a in audit if a["event"] == "published" and a["id"] > approved[0]["id"]
                 and a["old_limit"] == p["new_limit"]]
        assert later, f"limit is {now}, neither the approved {p['new_limit']} nor a later publication from it"


def test_a_large_change_waits_then_approve_publishes_it(gov):
    items = wait_pending(gov)
    assert len(items) == 1
    p = items[0]
    assert p["tier"] == "enterprise" and p["old_limit"] == 10 and p["new_limit"] / 10 > 1.8
    assert "denied" in p["reason"]
    # Small moves (<= 1.8x) may publish on their own; the large one waits.
    assert current_limit(gov.segment) <= 18, "no change above 1.8x before a human approves"

    refused = gov.ctl("approve", p["id"], user="nobody")
    assert refused.returncode == 3 and "not an approver" in refused.stderr
    assert current_limit(gov.segment) <= 18

    ok = gov.ctl("approve", p["id"])
    assert ok.returncode == 0, ok.stderr
    assert_approval_published(gov, p)
    audit = json.loads(gov.ctl("audit", "--since", "1h", "--json").stdout)
    events = [(a["event"], a["approval_id"]) for a in audit]
    assert ("pending", p["id"]) in events and ("approved", p["id"]) in events
    approved = next(a for a in audit if a["event"] == "approved")
    assert approved["actor"] == "human:0" and approved["generation"] > 0
    text = gov.ctl("audit").stdout
    assert "approved" in text and "enterprise" in text


def test_reject_keeps_the_limit(gov):
    p = wait_pending(gov)[0]
    out = gov.ctl("reject", p["id"], "--reason", "launch week: hold")
    assert out.returncode == 0, out.stderr
    assert current_limit(gov.segment) <= 18, "the rejected change was not published"
    assert json.loads(gov.ctl("pending", "--json").stdout) == [] or \
        all(x["id"] != p["id"] for x in json.loads(gov.ctl("pending", "--json").stdout))
    audit = json.loads(gov.ctl("audit", "--json").stdout)
    rej = [a for a in audit if a["event"] == "rejected"]
    assert rej and "launch week" in rej[0]["reason"]


def test_expiry_drops_an_unanswered_question(gov):
    p = wait_pending(gov)[0]
    time.sleep(3.6)  # approval_ttl_s = 3
    audit = json.loads(gov.ctl("audit", "--json").stdout)
    assert any(a["event"] == "expired" and a["approval_id"] == p["id"] for a in audit)
    assert gov.ctl("approve", p["id"]).returncode == 3, "an expired approval cannot be approved"


def test_pending_survives_kill_9_and_restart(gov):
    p = wait_pending(gov)[0]
    gov.kill9()
    gov.start()
    items = json.loads(gov.ctl("pending", "--json").stdout)
    assert any(x["id"] == p["id"] for x in items)
    assert gov.ctl("approve", p["id"]).returncode == 0
    assert_approval_published(gov, p)


def test_an_audit_store_removed_under_sluiced_is_restored_whole(tmp_path):
    d = Daemon(tmp_path, governance_policy(approval_ttl_s=60))
    try:
        p = wait_pending(d)[0]
        before = json.loads(d.ctl("audit", "--json").stdout)
        removed = sorted(tmp_path.glob(f"{d.segment}.db*"))
        assert removed, list(tmp_path.iterdir())
        for f in removed:  # the database, its -wal and -shm: as `rm -f state/*` would
            f.unlink()
        deadline = time.monotonic() + 5
        while "restored it from the open store" not in d.log_path.read_text():
            assert time.monotonic() < deadline, d.log_path.read_text()
            time.sleep(0.05)
        assert (tmp_path / f"{d.segment}.db").stat().st_mode & 0o777 == 0o640
        # The operator sees it counted in the live view too, not only on /metrics.
        deadline = time.monotonic() + 5
        while "audit store errors 1 since start" not in (top := d.ctl("top", "--once").stdout):
            assert time.monotonic() < deadline, top
            time.sleep(0.1)
        # A record after the restoration lands in the restored file, and a restart
        # reads every one of them (before: the restart found an empty trail).
        assert d.ctl("reject", p["id"], "--reason", "after the removal").returncode == 0
        d.proc.terminate()
        assert d.proc.wait(timeout=10) == 0
        d.start()
        after = json.loads(d.ctl("audit", "--json").stdout)
        ids = {a["id"] for a in after}
        assert all(a["id"] in ids for a in before), "a record from before the removal was lost"
        assert any(a["event"] == "rejected" and a["approval_id"] == p["id"] and "after the removal" in a["reason"]
                   for a in after), after
    finally:
        d.stop()


def test_non_adaptive_tier_is_never_changed(gov):
    with sluice.Client(gov.segment) as c:
        for _ in range(3):
            for k in range(50):
                c.acquire(f"f{k}", "free")
            time.sleep(0.25)
        assert c.peek("x", "free").limit == 3


def test_sluicectl_errors_are_clear(gov, tmp_path):
    assert gov.ctl("approve").returncode == 2
    assert gov.ctl("reject", "abc").returncode == 2  # needs --reason
    bad = gov.ctl("audit", "--since", "yesterday")
    assert bad.returncode == 2 and "duration" in bad.stderr
    unknown = gov.ctl("approve", "deadbeef")
    assert unknown.returncode == 3 and "no pending approval" in unknown.stderr
    gov.stop()
    down = gov.ctl("pending")
    assert down.returncode == 1 and "is sluiced running" in down.stderr


def test_snapshot_shows_the_loop_view(gov):
    governance_pressure(gov.segment, 0.8)
    snap = json.loads(gov.ctl("snapshot").stdout)
    assert snap["tick"] > 0 and snap["host_surge"] in ("normal", "surge", "ddos")
    ent = snap["tiers"][0]
    assert ent["name"] == "enterprise" and ent["offered_rps"] > 0 and ent["denied_rps"] > 0


def test_text_from_outside_is_shown_on_the_terminal_never_obeyed(tmp_path):
    """A model's rationale and a reason end up on an approver's terminal: a newline
    in one forged a whole record line there, and ESC sequences rewrote the screen."""
    import socket
    import sqlite3

    d = Daemon(tmp_path, governance_policy(approval_ttl_s=600))
    try:
        d.stop()  # write the store as a hostile model's answer would have filled it
        forged = "2026-12-03T11:00:00Z  approved  enterprise  10 -> 80  by human:0  [deadbeef]"
        evil = f"advisor: fine\n{forged}\n    \x1b[31mRED\x1b[0m\r\u202eLRO\u0085"
        now = int(time.time() * 1000)
        db = sqlite3.connect(str(tmp_path / f"{d.segment}.db"))
        db.execute("INSERT INTO audit(unix_ms,event,actor,tier,old_limit,new_limit,reason,confidence,approval_id,"
                   "generation) VALUES(?,?,?,?,?,?,?,?,?,?)", (now, "advisor", "advisor", "*", -1, -1, evil, 1.0, "", 0))
        db.execute("INSERT INTO pending VALUES(?,?,?,?,?,?,?,?,?,?)",
                   ("00000000abcd1234", 0, "enterprise", 10, 80, evil, "advisor", 0.9, now, now + 600_000))
        db.commit()
        db.close()
        d.log = open(d.log_path, "a")
        d.start()
        for args in (("pending",), ("audit",)):
            out = d.ctl(*args).stdout
            assert "\x1b" not in out and "\r" not in out and "\u202e" not in out and "\u0085" not in out, (args, out)
            assert not any(line.startswith(forged[:20]) for line in out.splitlines()), (args, out)
            assert "advisor: fine\\x0a2026-12-03T11:00:00Z" in out and "\\x1b[31mRED" in out, (args, out)
            assert "\\u202eLRO\\u0085" in out, (args, out)
        # --json keeps the exact text, escaped as JSON.
        assert json.loads(d.ctl("pending", "--json").stdout)[0]["reason"] == evil

        # The daemon refuses what sluicectl refuses, for any client of its socket.
        def raw(line: bytes) -> str:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(f"/dev/shm/{d.segment}.sock")
                s.sendall(line + b"\n")
                s.shutdown(socket.SHUT_WR)
                return b"".join(iter(lambda: s.recv(4096), b"")).decode("utf-8", "replace")
        got = raw(b"reject 00000000abcd1234 held \x1b[2J")
        assert got.startswith("error\n") and "control character" in got, got
        got = raw(b"approve \x1b[2Jabc")
        assert got.startswith("error\n") and "\x1b" not in got and "hex digits" in got, got
        assert json.loads(d.ctl("pending", "--json").stdout)[0]["id"] == "00000000abcd1234", "nothing was run"
    finally:
        d.stop()


def test_an_approval_waits_while_the_audit_disk_is_full_and_goes_through_after(tmp_path):
    # The audit store on its own small tmpfs, in sluiced's private mount namespace,
    # which the test then fills (as another writer on the disk would) and frees.
    unshare_or_skip()
    state = tmp_path / "state"
    state.mkdir()
    mount_then_run = ("unshare", "-m", "--propagation", "private", "sh", "-c",
                      'mount -t tmpfs -o size=4m,mode=0700 tmpfs "$0" && exec "$@"', str(state))
    d = Daemon(tmp_path, governance_policy(approval_ttl_s=60), state_dir=state, wrap=mount_then_run)

    def in_its_namespace(script: str) -> None:
        subprocess.run(["nsenter", "-t", str(d.proc.pid), "-m", "sh", "-c", script], check=True, capture_output=True)
    try:
        p = wait_pending(d)[0]
        in_its_namespace(f'dd if=/dev/zero of="{state}/filler" bs=64k 2> /dev/null; sync; df -k "{state}"')
        before = current_limit(d.segment)
        refused = d.ctl("approve", p["id"])
        assert refused.returncode != 0, refused.stdout
        assert "full" in refused.stderr, refused.stderr
        assert current_limit(d.segment) == before, "published without its record"
        assert d.proc.poll() is None, "sluiced died on a full audit disk"
        in_its_namespace(f'rm "{state}/filler"')
        ok = d.ctl("approve", p["id"])
        assert ok.returncode == 0, ok.stderr
        assert_approval_published(d, p)
    finally:
        d.stop()


def test_a_record_made_after_the_store_was_removed_reaches_its_name_at_a_clean_stop(tmp_path):
    # No tick between the removal and the stop: the stop itself restores the store.
    d = Daemon(tmp_path, governance_policy(approval_ttl_s=600))
    try:
        p = wait_pending(d)[0]
        d.proc.terminate()
        assert d.proc.wait(timeout=10) == 0
        d.args = ["--tick-ms", "600000"]
        d.start()
        for f in tmp_path.glob(f"{d.segment}.db*"):
            f.unlink()
        assert d.ctl("reject", p["id"], "--reason", "after the removal").returncode == 0
        d.proc.terminate()
        assert d.proc.wait(timeout=10) == 0
        assert "restored it from the open store" in d.log_path.read_text(), d.log_path.read_text()
        d.args = []
        d.start()
        audit = json.loads(d.ctl("audit", "--json").stdout)
        assert any(a["event"] == "rejected" and a["approval_id"] == p["id"] for a in audit), audit
    finally:
        d.stop()
