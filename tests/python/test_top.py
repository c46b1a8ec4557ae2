"""`sluicectl top` against a real sluiced: the live view in an 80x24 tmux pane
(header, tiers, rates that follow admissions, the banner, the loop view, q /
Ctrl-C / SIGTERM quitting with the terminal restored), `--once`, and its errors."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import sluice
from conftest import SLUICECTL, Daemon, governance_policy

TMUX = shutil.which("tmux") or "/usr/bin/tmux"
TIERS = ("enterprise", "pro", "free", "tiny")


class Pane:
    """sluicectl top in a detached 80x24 tmux session on a private server.

    The command runs under sh, which afterwards records top's exit status and the
    terminal's modes (stty -a) and sleeps, so a test can check how top left the
    terminal. remain-on-exit keeps the pane if sh itself dies early."""

    def __init__(self, tmp: Path, segment: str, *args: str, width: int = 80, height: int = 24) -> None:
        self.socket = f"sluicetest-top-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.rc_path = tmp / f"{self.socket}.rc"
        self.stty_path = tmp / f"{self.socket}.stty"
        conf = tmp / f"{self.socket}.conf"
        conf.write_text("set -g remain-on-exit on\nset -g status off\n")
        top = " ".join(shlex.quote(a) for a in [str(SLUICECTL), "--segment", segment, "top", *args])
        # sh keeps running through a Ctrl-C (SIGINT goes to the whole foreground
        # group); `trap :` is reset to the default in top itself by exec.
        # Then sh stays (sleeps) so that the pane's modes can be read after top exited.
        rc, stty = shlex.quote(str(self.rc_path)), shlex.quote(str(self.stty_path))
        script = f"trap : INT; {top}; echo $? > {rc}; stty -a > {stty}.tmp; mv {stty}.tmp {stty}; exec sleep 600"
        self.tmux("-f", str(conf), "new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height),
                  "sh", "-c", script)

    def tmux(self, *args: str, check: bool = True) -> str:
        r = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        if check and r.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {r.stderr}")
        return r.stdout

    def rows(self, escapes: bool = False) -> list[str]:
        out = self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "top")
        return out.split("\n")[:-1] if out.endswith("\n") else out.split("\n")

    def text(self) -> str:
        return "\n".join(self.rows())

    def fmt(self, f: str) -> str:
        return self.tmux("display-message", "-p", "-t", "top", f).strip()

    def dead(self) -> bool:
        return self.fmt("#{pane_dead}") == "1"

    def top_pid(self) -> int:
        """The pid of sluicectl: the child of the pane's sh."""
        sh = self.fmt("#{pane_pid}")
        kids = subprocess.run(["ps", "-o", "pid=", "--ppid", sh], capture_output=True, text=True).stdout.split()
        assert len(kids) == 1, f"children of the pane's sh: {kids}"
        return int(kids[0])

    def wait_for(self, pred, what: str, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        rows = self.rows()
        while time.monotonic() < deadline:
            rows = self.rows()
            if pred(rows):
                return rows
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; screen:\n" + "\n".join(rows))

    def wait_exit(self, timeout: float = 5.0) -> int:
        """Waits until top exited (sh recorded its status); returns that status."""
        deadline = time.monotonic() + timeout
        while not self.stty_path.exists():
            if self.dead():
                raise AssertionError("the pane's sh died: " + self.text())
            if time.monotonic() > deadline:
                raise AssertionError("sluicectl top did not exit; screen:\n" + self.text())
            time.sleep(0.05)
        return int(self.rc_path.read_text().strip())

    def assert_terminal_restored(self) -> None:
        assert self.fmt("#{alternate_on}") == "0", "still on the alternate screen"
        assert self.fmt("#{cursor_flag}") == "1", "cursor still hidden"
        modes = self.stty_path.read_text().split()
        assert "icanon" in modes and "echo" in modes, f"termios not restored: {modes}"

    def kill(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def pane_factory(tmp_path):
    if not os.access(TMUX, os.X_OK):
        pytest.fail("tmux is needed for the live-view tests (.ci/deps installs it)")
    panes: list[Pane] = []

    def make(segment: str, *args: str, **kw) -> Pane:
        p = Pane(tmp_path, segment, *args, **kw)
        panes.append(p)
        return p

    yield make
    for p in panes:
        p.kill()


def tier_row(rows: list[str], tier: str) -> list[str]:
    """The tier table's row for `tier`, split into columns (the first such row:
    the totals table below repeats the names)."""
    for r in rows:
        cols = r.split()
        if cols and cols[0] == tier and len(cols) == 10:
            return cols
    raise AssertionError(f"no table row for {tier}:\n" + "\n".join(rows))


def header_ok(rows: list[str], segment: str) -> bool:
    return bool(rows) and rows[0].startswith("sluice top  segment " + segment)


def test_live_view_follows_admissions_and_q_quits(daemon, client, pane_factory, tmp_path):
    banner = tmp_path / "banner.txt"
    banner.write_text("demo phase 1 of 3: warm-up\nsecond line is not shown\n")
    pane = pane_factory(daemon.segment, "--interval-ms", "200", "--banner", str(banner))
    rows = pane.wait_for(lambda r: header_ok(r, daemon.segment) and all(any(x in l for l in r) for x in TIERS)
                         and any("pending approvals" in l for l in r), "the first frame with the loop view")
    assert pane.fmt("#{alternate_on}") == "1", "top draws on the alternate screen"
    # Header: the segment, the daemon's pid and state, a clock right up to column 80
    # (a full row must not lose its last character).
    assert re.search(r" \d\d:\d\d:\d\d$", rows[0]), rows[0]
    assert len(rows[0]) == 80, rows[0]
    assert f"daemon pid {daemon.proc.pid} alive" in rows[1], rows[1]
    assert "host normal" in rows[1], rows[1]
    assert rows[2] == "demo phase 1 of 3: warm-up"
    assert "second line" not in pane.text()
    assert "advisor  rules only" in pane.text()
    # Nothing scrolled off: 24 rows at most, the footer on the last used row.
    used = [r for r in rows if r.strip()]
    assert len(rows) <= 24 and "q quit" in used[-1]
    assert all(len(r) <= 80 for r in rows)
    # In a terminal the surge levels are coloured.
    assert "\x1b[32mnormal" in "\n".join(pane.rows(escapes=True))

    row = tier_row(rows, "enterprise")
    assert row[1] == "20" and row[-1] == "0", row  # limit 20, nothing admitted yet

    # 30 admissions over ~1.5 s on 10 keys (limit 20 per 2 s per key: all admitted);
    # the view follows: a non-zero admitted rate, then the total.
    rates: list[float] = []
    for i in range(30):
        d = client.acquire(f"top-key-{i % 10}", "enterprise")
        assert d.allowed
        time.sleep(0.05)
        admit = tier_row(pane.rows(), "enterprise")[4]
        if admit != "-":
            rates.append(float(admit))
    assert max(rates) > 0, f"admit/s never moved: {rates}"
    rows = pane.wait_for(lambda r: tier_row(r, "enterprise")[-1] == "30", "30 admitted in the enterprise row")
    ent = next(t for t in daemon.status()["tiers"] if t["name"] == "enterprise")
    assert ent["admitted"] == 30
    assert tier_row(rows, "enterprise")[2] == str(ent["keys"])  # keys in use
    # Once the traffic stops the rate falls back to 0.
    pane.wait_for(lambda r: tier_row(r, "enterprise")[4] == "0.0", "admit/s back to 0.0")

    # The banner is read again on every frame.
    banner.write_text("demo phase 2 of 3: surge\n")
    pane.wait_for(lambda r: len(r) > 2 and r[2] == "demo phase 2 of 3: surge", "the new banner")
    banner.unlink()
    pane.wait_for(lambda r: not any("demo phase" in l for l in r), "the banner gone with its file")

    pane.tmux("send-keys", "-t", "top", "q")
    assert pane.wait_exit(5.0) == 0
    pane.assert_terminal_restored()


def test_fits_a_small_terminal(daemon, pane_factory):
    pane = pane_factory(daemon.segment, "--interval-ms", "200", width=60, height=12)
    rows = pane.wait_for(lambda r: header_ok(r, daemon.segment) and any("q quit" in l for l in r),
                         "a frame in 60x12")
    assert len(rows) <= 12 and all(len(r) <= 60 for r in rows)
    assert "q quit" in [r for r in rows if r.strip()][-1], rows  # the footer did not scroll away
    assert all(any(l.startswith(t) for l in rows) for t in TIERS), rows  # the tier rows stay
    # Resized to 80x24 it shows everything again.
    pane.tmux("resize-window", "-t", "top", "-x", "80", "-y", "24")
    pane.wait_for(lambda r: any(l.startswith("totals") for l in r), "the full view after a resize")
    pane.tmux("send-keys", "-t", "top", "Q")
    assert pane.wait_exit(5.0) == 0


def test_ctrl_c_and_sigterm_restore_the_terminal(daemon, pane_factory):
    pane = pane_factory(daemon.segment)
    pane.wait_for(lambda r: header_ok(r, daemon.segment), "the first frame")
    pane.tmux("send-keys", "-t", "top", "C-c")
    assert pane.wait_exit(5.0) == 0
    pane.assert_terminal_restored()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        pane = pane_factory(daemon.segment)
        pane.wait_for(lambda r: header_ok(r, daemon.segment), "the first frame")
        os.kill(pane.top_pid(), sig)
        assert pane.wait_exit(5.0) == 128 + sig
        pane.assert_terminal_restored()


def test_daemon_going_away_is_shown_not_fatal(daemon, pane_factory):
    pane = pane_factory(daemon.segment, "--interval-ms", "200")
    pane.wait_for(lambda r: any("pending approvals" in l for l in r), "the loop view")
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(timeout=10)
    rows = pane.wait_for(lambda r: any("daemon not running: loop view unavailable" in l for l in r),
                         "the daemon-down line")
    assert "NOT RUNNING" in rows[1] and "stopped cleanly" in rows[1], rows[1]
    assert all(any(l.startswith(t) for l in rows) for t in TIERS), rows  # the counters are still shown
    assert not pane.rc_path.exists(), "top exited when the daemon went away"
    pane.tmux("send-keys", "-t", "top", "q")
    assert pane.wait_exit(5.0) == 0

    out = daemon.ctl("top", "--once")
    assert out.returncode == 0, out.stderr
    assert "NOT RUNNING" in out.stdout and "daemon not running: loop view unavailable" in out.stdout
    assert "enterprise" in out.stdout


def test_once_prints_one_plain_frame(daemon, client, tmp_path):
    for i in range(5):
        assert client.acquire(f"once-{i}", "pro").allowed
    banner = tmp_path / "b.txt"
    banner.write_text("phase: once\n")
    out = daemon.ctl("top", "--once", "--banner", str(banner))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert header_ok(lines, daemon.segment)
    assert f"daemon pid {daemon.proc.pid} alive" in lines[1]
    assert lines[2] == "phase: once"
    assert "\x1b" not in out.stdout, "no escapes in --once output"
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    row = tier_row(lines, "pro")
    assert row[1] == "5" and row[2] == "5" and row[-1] == "5", row  # limit, keys, admitted
    assert row[3:6] == ["-", "-", "-"], row  # no rates from a single frame
    for part in ("pending approvals  0", "governance  requested", "advisor  rules only"):
        assert part in out.stdout, out.stdout
    assert "q quit" not in out.stdout
    assert daemon.ctl("top", "--once", "--banner", str(tmp_path / "missing")).returncode == 0


def test_once_without_a_segment_fails_with_the_whole_reason():
    out = subprocess.run([str(SLUICECTL), "--segment", "sluice-top-no-such-segment", "top", "--once"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "segment unavailable" in out.stdout  # the frame still says so, clipped to its width
    assert "does not exist (is sluiced running?)" in out.stderr, out.stderr
    assert "/dev/shm/sluice-top-no-such-segment.state" in out.stderr, out.stderr  # not cut at 80 columns


GOV_POLICY = governance_policy(approval_ttl_s=30)


def test_once_shows_a_pending_approval(tmp_path):
    d = Daemon(tmp_path, GOV_POLICY)
    try:
        items: list[dict] = []
        deadline = time.monotonic() + 15
        with sluice.Client(d.segment) as c:
            while not items and time.monotonic() < deadline:
                end = time.monotonic() + 0.3
                while time.monotonic() < end:
                    for k in range(3):
                        c.acquire(f"cust-{k}", "enterprise")
                    time.sleep(0.001)
                items = json.loads(d.ctl("pending", "--json").stdout)
        assert items, "no approval was requested"
        p = items[0]
        # The loop publishes its view once per tick: give it one.
        deadline = time.monotonic() + 5
        while True:
            out = d.ctl("top", "--once")
            assert out.returncode == 0, out.stderr
            if p["id"] in out.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "pending approvals  1" in out.stdout, out.stdout
        line = next(line for line in out.stdout.splitlines() if p["id"] in line)
        assert "enterprise" in line and f"{p['old_limit']} -> {p['new_limit']}" in line, line
        assert "expires in" in line and "by rules" in line, line
        assert re.search(r"governance  requested [1-9]", out.stdout), out.stdout
    finally:
        d.stop()


@pytest.mark.parametrize("bad", ["50", "99", "60001", "abc", "1000ms", "", "-5", "1e3"])
def test_bad_interval_is_refused(daemon, bad):
    out = daemon.ctl("top", "--interval-ms", bad, "--once")
    assert out.returncode == 2
    assert "--interval-ms" in out.stderr and "100 to 60000" in out.stderr, out.stderr
    assert out.stdout == ""


def test_interval_bounds_are_accepted(daemon):
    for ok in ("100", "60000"):
        assert daemon.ctl("top", "--interval-ms", ok, "--once").returncode == 0


def test_top_needs_a_terminal(daemon):
    out = subprocess.run([str(SLUICECTL), "--segment", daemon.segment, "top"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 2
    assert "top needs a terminal; use --once" in out.stderr
    assert out.stdout == ""
    # Top's options belong to top.
    assert daemon.ctl("status", "--once").returncode == 2


def test_a_hung_daemon_costs_a_second_not_the_view(daemon):
    """sluiced stopped (SIGSTOP) but alive: top gives up on the loop view after its
    1 s control timeout and still shows the counters."""
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        out = daemon.ctl("top", "--once")
        took = time.monotonic() - t0
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert out.returncode == 0, out.stderr
    assert took < 5, took
    assert "did not answer within 1000 ms" in out.stdout, out.stdout
    assert tier_row(out.stdout.splitlines(), "pro"), out.stdout


def test_a_banner_without_newlines_is_read_only_in_part(daemon, tmp_path):
    out = daemon.ctl("top", "--once", "--banner", "/dev/zero")  # endless, no newline
    assert out.returncode == 0, out.stderr
    big = tmp_path / "big"
    big.write_text("x" * 1_000_000)
    out = daemon.ctl("top", "--once", "--banner", str(big))
    assert out.returncode == 0 and "x" * 70 in out.stdout
