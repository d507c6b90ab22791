"""Speed per result (`promptgym.experiments.speed`): seconds until a run's smoothed learning curve first reaches the
reference variant's final level, checked against hand-computed curves (linear-time fallback, never-reached runs,
ties at the level, missing metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from promptgym.agents.baselines import RunResult
from promptgym.experiments.speed import elapsed, final_level, speed_rows, time_to_reach, trailing_means


def run(variant, seed, values, seconds=None, calls_per_point=32, total_cpu=None, metric="gold/aesthetic"):
    """A run with one curve point per value; per-point CPU times `seconds` (or only a total, as older benches)."""
    curve = [((i + 1) * calls_per_point, 0.0) for i in range(len(values))]
    components = [{metric: v} | ({"cpu_s": t, "wall_s": 2 * t} if seconds else {})
                  for v, t in zip(values, seconds or [None] * len(values))]
    info = {"cpu_time_s": total_cpu} if total_cpu is not None else {}
    calls = curve[-1][0] if curve else 0
    return RunResult(variant, seed, curve, 0.0, {}, calls, 1024, 2.0 * (total_cpu or 0), "sft",
                     info=info, curve_components=components)


def test_trailing_means_match_a_loop():
    x = [3.0, -1.0, 4.0, 1.0, 5.0]
    for smooth in (1, 2, 3, 7):
        expected = [np.mean(x[max(0, i - smooth + 1): i + 1]) for i in range(len(x))]
        np.testing.assert_allclose(trailing_means(x, smooth), expected)
    with pytest.raises(ValueError, match="smooth"):
        trailing_means(x, 0)


def test_time_to_reach_reads_the_first_point_whose_trailing_mean_reaches_the_level():
    r = run("ppo", 0, [0.1, 0.3, 0.5, 0.5, 0.9], seconds=[10, 20, 30, 40, 50])
    # trailing means over 2 points: 0.1, 0.2, 0.4, 0.5, 0.7
    assert time_to_reach(r, "gold/aesthetic", 0.4, smooth=2) == 30
    assert time_to_reach(r, "gold/aesthetic", 0.5, smooth=2) == 40  # equal to the level counts as reached
    assert time_to_reach(r, "gold/aesthetic", 0.71, smooth=2) is None  # never within the run
    assert time_to_reach(r, "gold/aesthetic", 0.3, smooth=1, clock="wall_s") == 40
    assert time_to_reach(r, "gold/content", 0.0) is None  # no such curve
    assert final_level(r, "gold/aesthetic", smooth=2) == pytest.approx(0.7)
    assert final_level(r, "gold/content") is None


def test_runs_without_point_times_spread_their_total_linearly_over_reward_calls():
    r = run("grpo", 0, [0.1, 0.2, 0.3, 0.4], total_cpu=80.0)
    assert elapsed(r, "cpu_s") == ([20.0, 40.0, 60.0, 80.0], True)
    assert elapsed(r, "wall_s") == ([40.0, 80.0, 120.0, 160.0], True)  # from wall_time_s
    assert elapsed(run("x", 0, [0.1], seconds=[5]), "cpu_s") == ([5.0], False)
    assert elapsed(run("x", 0, [0.1]), "cpu_s") == ([], False)  # no time recorded at all
    with pytest.raises(ValueError, match="clock"):
        elapsed(r, "gpu_s")


def test_speed_rows_compare_each_variant_with_the_reference_per_seed():
    runs = [
        # reference: final level (trailing mean of 2) 0.45 reached only at its last point, 100 s
        run("grpo", 0, [0.2, 0.3, 0.4, 0.5], seconds=[25, 50, 75, 100]),
        run("grpo", 1, [0.1, 0.2, 0.3, 0.3], seconds=[20, 40, 60, 80]),  # level 0.3, first reached at 80 s
        run("ppo", 0, [0.4, 0.6, 0.7, 0.7], seconds=[30, 60, 90, 120]),  # 0.5 >= 0.45 at 60 s
        run("ppo", 1, [0.1, 0.1, 0.2, 0.2], seconds=[30, 60, 90, 120]),  # never reaches 0.3
        run("rloo", 0, [0.5, 0.5], total_cpu=50.0),                        # estimated: 0.5 at 25 s
        run("sft", 0, [], seconds=[]),                                     # no curve: no row
    ]
    rows = {row["variant"]: row for row in speed_rows(runs, "grpo", ["gold/aesthetic"], smooth=2)}
    assert set(rows) == {"grpo", "ppo", "rloo"}
    assert rows["grpo"]["speed"] == [1.0, 1.0] and rows["grpo"]["reference_time"] == [100.0, 80.0]
    ppo = rows["ppo"]
    assert ppo["seeds"] == [0, 1] and ppo["level"] == pytest.approx([0.45, 0.3])
    assert ppo["time"] == [60.0, None] and ppo["speed"] == [100.0 / 60.0, 0.0]
    assert ppo["median_speed"] == pytest.approx((100.0 / 60.0) / 2) and ppo["reached"] == 1
    assert ppo["median_time"] == 60.0 and not ppo["estimated"]
    assert rows["rloo"]["seeds"] == [0] and rows["rloo"]["speed"] == [4.0] and rows["rloo"]["estimated"]
    skipped = speed_rows(runs, "grpo", ["gold/aesthetic"], smooth=2, skip={"gold/aesthetic": ["rloo"]})
    assert "rloo" not in {row["variant"] for row in skipped}
    assert speed_rows(runs, "no-such-variant", ["gold/aesthetic"]) == []
