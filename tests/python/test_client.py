"""The sluice package over a real sluiced: every method, every exception, str and
bytes keys, one client shared by threads, and exactness across processes."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import struct
import subprocess
import sys
import threading
import time

import pytest

import sluice
from sluice import errors

from conftest import BUILD


def test_acquire_until_the_limit_then_denied_with_headers(client):
    decisions = [client.acquire("cust-1", "pro") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    first, last = decisions[0], decisions[-1]
    assert first.limit == 5 and first.remaining == 4 and first.reason == "allowed"
    assert first.retry_after == 0 and 1.9 < first.reset_after <= 2.0
    assert first.tier == "pro" and first.tier_index == 1 and first.window == 2.0
    assert not last and last.reason == "window_full" and last.remaining == 0
    assert 1.5 < last.retry_after <= 2.0
    h = last.headers()
    assert h["Retry-After"] == "2"
    assert h["RateLimit-Limit"] == "5" and h["RateLimit-Remaining"] == "0" and h["RateLimit-Reset"] == "2"
    assert h["x-ratelimit-limit-requests"] == "5" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"].endswith("s")
    assert "Retry-After" not in first.headers()
    assert "allowed=True" in repr(first)


def test_peek_records_nothing(client):
    for _ in range(5):
        assert client.peek("p", "free").allowed
    assert client.acquire("p", "free").remaining == 1
    assert client.peek("p", "free").remaining == 0
    assert client.acquire("p", "free").allowed
    assert not client.peek("p", "free").allowed


def test_str_and_bytes_keys(client):
    assert client.acquire("ключ", "tiny").allowed
    assert not client.acquire("ключ".encode(), "tiny").allowed, "str is its UTF-8 bytes"
    assert client.acquire(b"a\x00b", "tiny").allowed
    assert client.acquire(b"a\x00c", "tiny").allowed, "bytes after a NUL count"
    assert client.acquire(bytearray(b"ba"), "tiny").allowed
    assert not client.acquire(memoryview(b"ba"), "tiny").allowed
    with pytest.raises(TypeError):
        client.acquire(12345, "tiny")


def test_cost_is_all_or_nothing(client):
    assert client.acquire("c", "pro", cost=3).remaining == 2
    d = client.acquire("c", "pro", cost=3)
    assert not d.allowed and d.remaining == 2
    assert client.acquire("c", "pro", cost=2).allowed


@pytest.mark.parametrize(
    "call, exc, code",
    [
        (lambda c: c.acquire("", "pro"), errors.EmptyKeyError, -3),
        (lambda c: c.acquire(b"", "pro"), errors.EmptyKeyError, -3),
        (lambda c: c.acquire("k" * 65, "pro"), errors.KeyTooLongError, -4),
        (lambda c: c.acquire("k", "gold"), errors.UnknownTierError, -5),
        (lambda c: c.acquire("k", "pro\x00x"), errors.UnknownTierError, -5),
        (lambda c: c.acquire("k", "pro", cost=0), errors.CostZeroError, -6),
        (lambda c: c.acquire("k", "pro", cost=26), errors.CostAboveCapacityError, -7),
        (lambda c: c.peek("k", "pro", cost=0), errors.CostZeroError, -6),
    ],
)
def test_every_bad_input_raises_its_own_class(client, call, exc, code):
    with pytest.raises(exc) as info:
        call(client)
    assert isinstance(info.value, sluice.SluiceError)
    assert info.value.code == code and len(info.value.message) > 5
    assert client.acquire("k", "pro").remaining == 4, "the bad call consumed nothing"


def test_negative_or_huge_cost_is_a_value_error(client):
    # An int of the wrong value is a ValueError (it was a TypeError: corrected).
    for cost in (-1, 2**32, 2**40, 2**64, -(2**64)):
        with pytest.raises(ValueError, match=r"^cost must be an int in 1\.\.4294967295$"):
            client.acquire("k", "pro", cost=cost)
        with pytest.raises(ValueError):
            client.peek("k", "pro", cost=cost)
    for cost in ("3", 1.0, None):
        with pytest.raises(TypeError, match="cost must be an int"):
            client.acquire("k", "pro", cost=cost)
    with pytest.raises(errors.CostZeroError):  # 0 still reaches the C call
        client.acquire("k", "pro", cost=0)
    assert client.acquire("k", "pro", cost=2).remaining == 3, "the bad calls consumed nothing"


def test_a_non_contiguous_buffer_key_keeps_its_buffer_error(client):
    with pytest.raises(BufferError, match="contiguous"):
        client.acquire(memoryview(b"abcdef")[::2], "tiny")
    assert client.acquire(memoryview(b"abcdef")[::1], "tiny").allowed


def test_a_segment_name_with_a_nul_is_refused(daemon):
    with pytest.raises(ValueError, match="NUL"):
        sluice.Client(daemon.segment + "\0rest")  # would open daemon.segment
    with pytest.raises(ValueError, match="NUL"):
        sluice.Client("\0")


def test_decision_cannot_be_made_from_python(client):
    import copy
    import pickle

    with pytest.raises(TypeError):
        sluice.Decision()
    with pytest.raises(TypeError):
        sluice.Decision.__new__(sluice.Decision)
    d = client.acquire("k", "pro")
    for clone in (copy.copy, lambda x: pickle.loads(pickle.dumps(x))):
        with pytest.raises(TypeError):
            clone(d)
    assert d.tier == "pro" and "tier='pro'" in repr(d)


@pytest.mark.parametrize("seconds, text", [
    (0, "0ms"), (0.0000001, "1ms"), (0.02, "20ms"), (0.999, "999ms"), (0.9990001, "1s"),
    (0.9996, "1s"), (1, "1s"), (1.0004, "1.001s"), (1.5, "1.5s"), (1.25, "1.25s"),
    (59.999, "59.999s"), (59.9990001, "1m0s"), (59.9996, "1m0s"), (60, "1m0s"), (60.0004, "1m1s"), (360, "6m0s"),
    (3599.9996, "1h0m0s"), (3661, "1h1m1s"),
])
def test_duration_text_rounds_up_to_whole_ms_before_choosing_the_unit(seconds, text):
    import _sluice  # private helper behind x-ratelimit-reset-requests

    assert _sluice._format_duration(seconds) == text


def test_both_reset_headers_follow_reset_after(client):
    import math

    import _sluice

    client.acquire("r", "pro")
    time.sleep(0.4)
    for _ in range(4):
        client.acquire("r", "pro")
    d = client.acquire("r", "pro")
    assert not d.allowed and d.reset_after - d.retry_after > 0.3, "the oldest unit leaves first"
    h = d.headers()
    assert h["x-ratelimit-reset-requests"] == _sluice._format_duration(d.reset_after)
    assert h["x-ratelimit-reset-requests"] != _sluice._format_duration(d.retry_after)
    assert h["RateLimit-Reset"] == str(math.ceil(d.reset_after))
    assert h["Retry-After"] == str(max(1, math.ceil(d.retry_after)))
    ok = client.acquire("r2", "pro")
    assert ok.headers()["x-ratelimit-reset-requests"] == _sluice._format_duration(ok.reset_after)


def test_missing_segment(tmp_path):
    with pytest.raises(errors.NoSegmentError) as info:
        sluice.Client("sluicetest-py-no-such-segment")
    assert info.value.code == -8 and "sluiced" in info.value.message


def test_environment_names_the_default_segment(daemon, monkeypatch):
    monkeypatch.setenv("SLUICE_SEGMENT", daemon.segment)
    with sluice.Client() as c:
        assert c.acquire("e", "pro").allowed


def _patch_state_header(segment: str, offset: int, value: bytes) -> bytes:
    with open(f"/dev/shm/{segment}.state", "r+b") as f, mmap.mmap(f.fileno(), 4096) as m:
        old = m[offset:offset + len(value)]
        m[offset:offset + len(value)] = value
        return old


def test_version_mismatch_corrupt_header_and_not_ready(daemon):
    fmt = _patch_state_header(daemon.segment, 8, b"\x00" * 8)  # format word: not ready
    with pytest.raises(errors.NotReadyError):
        sluice.Client(daemon.segment)
    word = struct.unpack("<Q", fmt)[0] + (1 << 48)  # next major version
    _patch_state_header(daemon.segment, 8, struct.pack("<Q", word))
    with pytest.raises(errors.VersionMismatchError):
        sluice.Client(daemon.segment)
    _patch_state_header(daemon.segment, 8, fmt)
    magic = _patch_state_header(daemon.segment, 0, b"XXXXXXXX")
    with pytest.raises(errors.CorruptSegmentError):
        sluice.Client(daemon.segment)
    _patch_state_header(daemon.segment, 0, magic)
    sluice.Client(daemon.segment).close()


def test_table_full(tmp_path):
    from conftest import Daemon

    d = Daemon(tmp_path, {"segment": {"max_keys": 4, "max_key_bytes": 16},
                          "tiers": [{"name": "t", "limit": 1, "window_ms": 1000, "max_limit": 1}]})
    try:
        with sluice.Client(d.segment) as c:
            with pytest.raises(errors.TableFullError):
                for i in range(100):
                    c.acquire(f"k{i}", "t")
            assert i == 16  # 16 slots, then a clear error
    finally:
        d.stop()


def test_every_status_code_maps_to_one_class():
    classes = {errors.error_for(code, "m").__class__ for code in range(-15, 0)}
    assert len(classes) == 15
    assert type(errors.error_for(-99, "m")) is sluice.SluiceError


def test_context_manager_and_closed(daemon):
    with sluice.Client(daemon.segment) as c:
        assert not c.closed
    assert c.closed
    with pytest.raises(ValueError):
        c.acquire("k", "pro")


def test_a_client_whose_init_never_ran_is_closed_not_a_crash(daemon):
    # Before: close() freed a garbage pointer (abort) and closed said False.
    kept = []

    class Failing(sluice.Client):
        def __init__(self):
            kept.append(self)
            raise RuntimeError("before super().__init__()")

    with pytest.raises(RuntimeError):
        Failing()
    for c in (sluice.Client.__new__(sluice.Client), kept[0]):
        assert c.closed
        with pytest.raises(ValueError, match="closed"):
            c.acquire("k", "pro")
        with pytest.raises(ValueError, match="closed"):
            c.peek("k", "pro")
        c.close()
        with c as same:
            assert same is c
        assert c.closed
    with pytest.raises(TypeError):
        sluice.Client.close(42)  # the method checks its self's type


@pytest.mark.parametrize("protocol", range(0, 6))
def test_pickle_and_copy_refuse_a_client_and_a_decision(client, protocol):
    import copy
    import pickle

    # Before: protocols 0 and 1 aborted the interpreter in pybind11's tp_new.
    for obj in (client, sluice.Client.__new__(sluice.Client), client.acquire("k", "pro")):
        with pytest.raises(TypeError, match="cannot pickle"):
            pickle.dumps(obj, protocol=protocol)
        with pytest.raises(TypeError):
            copy.copy(obj)
    assert not client.closed and client.acquire("k", "pro").remaining == 3


def test_the_extension_can_be_imported_before_the_package(daemon):
    code = (
        "import _sluice, sluice, sys\n"
        "assert sluice.Decision is _sluice.Decision\n"
        "c = _sluice.Client(sys.argv[1])\n"
        "try:\n"
        "    c.acquire('', 'pro')\n"
        "except sluice.EmptyKeyError as e:\n"
        "    print('EmptyKeyError', e.code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, daemon.segment], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["EmptyKeyError", "-3"]


def test_argument_errors_name_the_method_and_the_whole_keyword(client):
    with pytest.raises(TypeError, match=r"^peek\(\) takes at most 3"):
        client.peek("k", "pro", 1, 2)
    with pytest.raises(TypeError, match=r"^acquire\(\) missing required argument 'tier'"):
        client.acquire("k")
    # A keyword with a NUL in it is not the keyword before the NUL.
    for name in ("key\0x", "tier\0", "cost\0y"):
        args = {"key": "k", "tier": "pro"}
        args[name] = args.pop(name.split("\0")[0], 1)
        with pytest.raises(TypeError, match="unexpected or repeated argument"):
            client.acquire(**args)
    for key, tier in (("\ud800", "pro"), ("k", "pro\udfff")):  # no UTF-8 form
        with pytest.raises(UnicodeEncodeError):
            client.acquire(key, tier)
    assert client.acquire(key="k", tier="pro", cost=2).remaining == 3, "nothing was consumed before"


def test_a_segment_name_must_be_str(daemon):
    with pytest.raises(TypeError, match="segment must be str or None, not bytes"):
        sluice.Client(daemon.segment.encode())
    with pytest.raises(UnicodeEncodeError):  # was pybind11's RuntimeError, naming nothing
        sluice.Client("seg\ud800")


# With another pybind11 base the instance holds two value slots; Client's
# methods used to take the first one and read Other's bytes as the handle
# (a segfault). Run in a child so a crash is a failure, not a dead suite.
MIXED_BASES_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[2])
import sluice
from _other_pybind_class import Other

class OtherFirst(Other, sluice.Client):
    def __init__(self, segment):
        Other.__init__(self)
        sluice.Client.__init__(self, segment)

class ClientFirst(sluice.Client, Other):
    def __init__(self, segment):
        sluice.Client.__init__(self, segment)
        Other.__init__(self)

class OtherOnly(Other, sluice.Client):
    def __init__(self, segment):
        Other.__init__(self)  # Client's __init__ never runs

for cls in (OtherFirst, ClientFirst):
    x = cls(sys.argv[1])
    assert not x.closed, cls
    assert x.acquire("mixed-" + cls.__name__, "pro").allowed, cls
    assert x.peek("mixed-" + cls.__name__, "pro").remaining == 3, cls  # after one more
    assert x.a == 0x4141414141414141, cls
    with x:
        pass
    assert x.closed, cls
    try:
        x.acquire("k", "pro")
        raise SystemExit(f"{cls.__name__}: acquire after close was allowed")
    except ValueError:
        pass
try:  # pybind11 itself refuses this one
    OtherOnly(sys.argv[1])
    raise SystemExit("a Client base left uninitialised was accepted")
except TypeError as e:
    assert "must be called" in str(e), e
y = OtherOnly.__new__(OtherOnly)  # no __init__ at all: closed, never a crash
assert y.closed
try:
    y.acquire("k", "pro")
    raise SystemExit("acquire on an uninitialised Client was allowed")
except ValueError:
    pass
y.close()
print("ok")
"""


def test_a_client_mixed_with_another_pybind11_base_finds_its_own_handle(daemon):
    testing_dir = BUILD / "bindings" / "testing"
    assert list(testing_dir.glob("_other_pybind_class*.so")), "the test module is built with the tests"
    r = subprocess.run(
        [sys.executable, "-c", MIXED_BASES_CHILD, daemon.segment, str(testing_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr[-2000:])


def test_one_client_shared_by_threads_is_exact(client):
    admitted = []
    lock = threading.Lock()

    def work():
        n = sum(client.acquire("shared", "enterprise").allowed for _ in range(200))
        with lock:
            admitted.append(n)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 20


def _worker(segment: str, ready, go, deadline, q) -> None:
    with sluice.Client(segment) as c:
        ready.wait(60)
        go.wait(60)
        n = 0
        # One shared deadline (CLOCK_MONOTONIC is host-wide): a worker scheduled late
        # must not run into the next window.
        while time.monotonic() < deadline.value:
            n += c.acquire("hot", "enterprise").allowed
        q.put(n)


def test_eight_processes_share_one_exact_limit(daemon):
    """8 worker processes on one key: exactly the limit in each window."""
    ctx = mp.get_context("spawn")
    for window in range(2):
        q, go, deadline, ready = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0), ctx.Barrier(9)
        procs = [ctx.Process(target=_worker, args=(daemon.segment, ready, go, deadline, q)) for _ in range(8)]
        for p in procs:
            p.start()
        ready.wait(60)  # every worker has imported sluice and opened its client
        start = time.monotonic()
        deadline.value = start + 0.8  # well inside the 2 s window
        go.set()
        counts = [q.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert sum(counts) == 20, counts  # a per-process limiter would admit 8 x 20
        time.sleep(max(0.0, start + 2.9 - time.monotonic()))  # every unit of this phase has left
    assert daemon.status()["tiers"][0]["admitted"] == 40


def test_a_client_follows_its_segment_across_a_reset(daemon):
    """sluiced restarted with --reset and a new tier: a Client opened before counts
    in the new segment (with every other worker) and finds the new tier."""
    import json
    import signal

    old = sluice.Client(daemon.segment)
    assert old.acquire("k", "tiny").allowed
    assert not old.acquire("k", "tiny").allowed
    with pytest.raises(errors.UnknownTierError):
        old.acquire("k", "gold")
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(timeout=10)
    policy = json.loads(daemon.policy_path.read_text())
    policy["tiers"].append({"name": "gold", "limit": 3, "window_ms": 60000, "max_limit": 3,
                            "revenue_per_request": 0.3})
    daemon.policy_path.write_text(json.dumps(policy))
    daemon.start(reset=True)
    assert old.acquire("k", "tiny").allowed, "the reset wipes the window"
    with sluice.Client(daemon.segment) as new:
        assert not new.acquire("k", "tiny").allowed, "the old client's unit is in the new segment"
        assert old.acquire("g", "gold").allowed
        assert new.acquire("g", "gold").remaining == 1
    old.close()
