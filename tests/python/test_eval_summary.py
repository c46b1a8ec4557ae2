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


def test_bots_earn_nothing_and_are_counted_apart():
    per = {(50, "free"): (100, 100), (50, eval_policy.BOT): (800, 700)}
    s = eval_policy.summarize(_run(per), 80)
    assert s["revenue_total"] == pytest.approx(100 * 0.01, abs=1e-6)
    assert s["bot_requests_offered_ddos"] == 800 and s["bot_requests_admitted_ddos"] == 700


def test_a_second_over_capacity_fails_its_excess_evenly():
    cap = eval_policy.CAPACITY_RPS
    # Second 50 (DDoS) admits twice the capacity: half of everything fails.
    per = {(50, "enterprise"): (100, 100), (50, eval_policy.BOT): (int(2 * cap) - 100, int(2 * cap) - 100),
           (51, "enterprise"): (100, 90)}
    s = eval_policy.summarize(_run(per), 80)
    assert s["enterprise_denial_rate_ddos"] == pytest.approx(10 / 200)
    assert s["enterprise_unserved_rate_ddos"] == pytest.approx(1 - (50 + 90) / 200)
    assert s["seconds_over_capacity"] == 1
    assert s["revenue_served_per_trace_hour"] == pytest.approx((50 + 90) * 0.2 * 3600 / 80)


def test_each_level_is_scored_against_its_own_window_and_the_lag_is_from_the_labelled_start():
    flags = [(t, lvl, {}) for t, lvl in [
        (10.0, "surge"),    # a false alarm in the normal phase
        (19.5, "normal"),
        (20.0, "normal"), (22.0, "normal"), (24.0, "surge"), (30.0, "ddos"), (36.0, "surge"),  # labelled surge
        (42.0, "normal"),
        (50.0, "ddos"), (55.0, "surge"),  # labelled DDoS
        (62.0, "surge"),  # the flag's tail after the DDoS
        (70.0, "normal"),
    ]]
    s = eval_policy.summarize({"per_second": {}, "flags": flags, "samples": []}, 80)
    assert s["precision_surge"] == pytest.approx(2 / 5, abs=1e-3)  # 24, 36 against 10, 55, 62
    assert s["recall_surge"] == pytest.approx(2 / 5, abs=1e-3)  # 30 s, called a DDoS, is a miss
    assert s["surge_window_share_flagged_ddos"] == pytest.approx(1 / 5, abs=1e-3)
    assert s["precision_ddos"] == pytest.approx(1 / 2, abs=1e-3)  # 30 s is a false DDoS
    assert s["recall_ddos"] == pytest.approx(1 / 2, abs=1e-3)
    assert s["precision_any_level"] == pytest.approx(5 / 7, abs=1e-3)
    assert s["recall_any_level"] == pytest.approx(5 / 7, abs=1e-3)
    assert s["flag_lag_after_start_s"] == pytest.approx(4.0, abs=1e-3)
    assert s["lead_before_peak_s"] == pytest.approx(35.0 - 24.0, abs=1e-3)
    assert s["flagged_just_before_start"] is False


def test_a_dump_is_rescored_to_the_same_report(tmp_path):
    per = {(25, "enterprise"): (200, 50), (50, eval_policy.BOT): (800, 700)}
    samples = [{"asked": 24.0, "returned": 24.01, "snapshot": {"host_surge": "surge"}},
               {"asked": 70.0, "returned": 70.01, "snapshot": {"host_surge": "normal"}}]
    runs = {m: {"per_second": per, "samples": samples, "max_client_lag_s": 0.1,
                "flags": [(x["returned"], x["snapshot"]["host_surge"], {}) for x in samples]}
            for m in ("adaptive", "static")}
    meta = {"seconds": 80, "seed": 5, "tick_ms": 250, "surge_peak": 5.0, "approval_ratio": 1000}
    dump = tmp_path / "d.json.gz"
    eval_policy.write_dump(str(dump), runs, meta)
    again, meta2 = eval_policy.read_dump(str(dump), {})
    assert meta2["seed"] == 5 and meta2["rescored_from"] == "d.json.gz"
    first, second = eval_policy.report(runs, meta), eval_policy.report(again, meta2)
    second.pop("rescored_from")
    assert first == second and first["same_offered_trace"] is True


def test_a_file_that_is_not_a_dump_is_refused(tmp_path):
    import subprocess
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    r = subprocess.run([sys.executable, eval_policy.__file__, "--rescore", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "not a dump" in r.stderr, r.stderr


@pytest.mark.parametrize("args,msg", [(["--tick-ms", "10"], "--tick-ms"), (["--seed", "x"], "--seed")])
def test_bad_seed_or_tick_is_refused(args, msg):
    import subprocess
    r = subprocess.run([sys.executable, eval_policy.__file__, *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and msg in r.stderr, r.stderr
