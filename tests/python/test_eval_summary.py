"""bench/eval_policy.py's summary of a run: the revenue it reports, and the ceiling
(every offered request admitted) that bounds the adaptive / static ratio."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

# The script sets sys.path and PYTHONPATH for the client processes it starts; keep
# this test process's as they were for the suites that run after it.
_saved = (list(sys.path), os.environ.get("PYTHONPATH"))
_SPEC = importlib.util.spec_from_file_location(
    "eval_policy", Path(__file__).resolve().parents[2] / "bench" / "eval_policy.py")
eval_policy = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(eval_policy)
sys.path[:] = _saved[0]
if _saved[1] is None:
    os.environ.pop("PYTHONPATH", None)
else:
    os.environ["PYTHONPATH"] = _saved[1]


def _run(per_second):
    return {"per_second": per_second, "flags": [], "samples": []}


def test_surge_revenue_counts_admitted_and_offered_requests_of_the_ramp_and_surge_only():
    rev = {n: r for n, _, _, r in eval_policy.TIERS}
    per = {
        (10, "enterprise"): (100, 100),   # normal phase: not in the surge figures
        (25, "enterprise"): (200, 50),    # ramp
        (35, "pro"): (400, 100),          # surge
        (50, "free"): (1000, 10),         # DDoS: not in the surge figures
    }
    s = eval_policy.summarize(_run(per), 80)
    offered = 200 * rev["enterprise"] + 400 * rev["pro"]
    admitted = 50 * rev["enterprise"] + 100 * rev["pro"]
    assert s["revenue_offered_surge_phase"] == pytest.approx(offered, abs=0.01)
    assert s["revenue_surge_phase"] == pytest.approx(admitted, abs=0.01)
    assert s["share_of_offered_surge_revenue"] == pytest.approx(admitted / offered, abs=1e-4)
    total = admitted + 100 * rev["enterprise"] + 10 * rev["free"]
    assert s["revenue_total"] == pytest.approx(total, abs=0.01)


def test_a_run_that_admits_everything_has_all_of_the_offered_revenue():
    per = {(s, "enterprise"): (40, 40) for s in range(20, 40)}
    s = eval_policy.summarize(_run(per), 80)
    assert s["share_of_offered_surge_revenue"] == 1.0


def test_the_surge_peak_scales_paying_tiers_only_and_defaults_to_five():
    import random
    p = eval_policy.phases(80)
    peak = (p["surge"][0] + p["surge"][1]) / 2
    for tier in ("enterprise", "pro"):
        calm = eval_policy.rate(tier, 5.0, 80, random.Random(1))
        at5 = eval_policy.rate(tier, peak, 80, random.Random(1))
        at10 = eval_policy.rate(tier, peak, 80, random.Random(1), surge_peak=10.0)
        assert at5 / calm == pytest.approx(5.0, rel=0.2)
        assert at10 == pytest.approx(2 * at5)
    assert eval_policy.rate("free", peak, 80, random.Random(1), surge_peak=10.0) == \
        eval_policy.rate("free", peak, 80, random.Random(1))


@pytest.mark.parametrize("peak", ["0", "-3", "0.5", "1000", "nan"])
def test_a_surge_peak_outside_1_to_50_is_refused_with_the_reason(peak):
    import subprocess
    r = subprocess.run([sys.executable, eval_policy.__file__, "--surge-peak", peak],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "--surge-peak" in r.stderr and "1 to 50" in r.stderr
