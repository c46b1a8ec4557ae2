"""bench/c_reference_module.c (`_sluice_cref`), bench_python.py's "C alone": it makes
real decisions in the segment the Python calls use, on the same key objects, and
refuses what is not a key instead of timing nothing."""
import sys

import pytest

import sluice
from conftest import BUILD

if not (BUILD / "bench").is_dir():  # the asan/tsan trees are built without the bench targets
    pytest.skip(f"{BUILD} has no bench targets", allow_module_level=True)
sys.path.insert(0, str(BUILD / "bench"))
import _sluice_cref  # noqa: E402  (where the bench targets are built, it must be there)


def test_its_decisions_are_the_ledgers_own(daemon):
    keys = ["cref-a"] * 7 + [b"cref-b"] * 3  # pro: 5 per 2 s
    ns, admitted = _sluice_cref.time_acquire(daemon.segment, "pro", keys)
    assert ns > 0 and admitted == 5 + 3
    with sluice.Client(daemon.segment) as c:
        assert not c.acquire("cref-a", "pro").allowed  # counted where Python counts
        assert c.acquire(b"cref-b", "pro").remaining == 1


def test_bad_input_is_refused_with_the_reason(daemon):
    with pytest.raises(TypeError, match="key 1 is int"):
        _sluice_cref.time_acquire(daemon.segment, "pro", ["k", 5])
    with pytest.raises(RuntimeError, match="sluice_acquire"):
        _sluice_cref.time_acquire(daemon.segment, "no-such-tier", ["k"])
    with pytest.raises(RuntimeError, match="sluice_open"):
        _sluice_cref.time_acquire("sluice-no-such-segment", "pro", ["k"])
