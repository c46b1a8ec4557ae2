"""The demo's traffic plan and its static-limit replay (pure functions)."""

from __future__ import annotations

import random

from sluice import demo_traffic as dt


def test_phases_cover_the_run_in_order():
    ph = dt.phase_bounds(90)
    assert [p["name"] for p in ph] == ["awakening", "ramp", "surge", "ddos", "recovery"]
    assert ph[0]["start_s"] == 0 and ph[-1]["end_s"] == 90
    assert all(a["end_s"] == b["start_s"] for a, b in zip(ph, ph[1:]))
    assert dt.phase_at(ph, 50)["name"] == "surge"


def test_each_plan_lasts_the_run_and_the_cast_mixes_languages_on_shared_keys():
    cast = dt.clients()
    for c in cast:
        assert abs(sum(float(step.split(":")[0]) for step in c.plan(90).split(",")) - 90) < 0.01
    by_keys = {}
    for c in cast:
        by_keys.setdefault((c.tier, c.prefix), set()).add(c.language)
    assert by_keys[("enterprise", "acme")] == {"c", "python"}
    assert by_keys[("pro", "startup")] == {"c", "python"}
    assert [c.prefix for c in cast if c.attack] == ["bot"]


def test_static_replay_is_an_exact_sliding_window():
    ev = [(t, "pro", "k-1", 1) for t in (0, 100_000, 200_000, 1_050_000, 1_150_000)]
    assert dt.static_replay(ev, {"pro": 2}, {"pro": 1.0}) == [1, 1, 0, 1, 1]


def test_static_replay_never_admits_more_than_the_limit_in_any_window():
    rng = random.Random(5)
    ev = sorted((rng.randrange(5_000_000), "free", f"k-{rng.randrange(3)}", 1) for _ in range(3000))
    flags = dt.static_replay(ev, {"free": 4}, {"free": 0.5})
    for key in ("k-0", "k-1", "k-2"):
        times = [e[0] for e, f in zip(ev, flags) if f and e[2] == key]
        denied = [e[0] for e, f in zip(ev, flags) if not f and e[2] == key]
        for i, t in enumerate(times):  # the window ending at each admission
            assert sum(1 for u in times[:i + 1] if u > t - 500_000) <= 4
        for t in denied:  # and each denial met a full window
            assert sum(1 for u in times if t - 500_000 < u <= t) == 4


def test_per_second_counts_all_admissions_but_only_legitimate_revenue():
    ev = [(100, "free", "hobbyist-1", 1), (200, "free", "bot-7", 1), (1_500_000, "free", "bot-7", 1)]
    out = dt.per_second(ev, [1, 1, 0], ["free"], 2, {"free": 0.01}, {"bot"})
    assert out["tiers"]["free"]["admitted_rps"] == [2, 0]
    assert out["tiers"]["free"]["revenue_rate"] == [0.01, 0]
