"""Speed per result: the training time a bench variant took to reach what a reference variant reached.

A bench holds every variant to the same budget of reward calls, so its table compares results per call; what a
user pays is time, and variants spend different time per call (a group of GRPO samples shares its task's source
render, our PPO's negatives are extra calls, ...). `time_to_reach` reads off a run's learning curve (one point per
update / rollout / generation batch, `RunResult.curve_components`) the training seconds spent until the trailing
mean of a metric over `smooth` points first reached a level. `speed_rows` sets that level, per seed, to the
reference variant's own final trailing mean (TRL GRPO by default, the yardstick of issue 11) and reports, per
variant, the reference's time to it divided by the variant's: above 1, the variant got there faster.

    rows = speed_rows(runs, reference="grpo", metrics=("gold/aesthetic",), clock="cpu_s")

Times are the curve points' `cpu_s` / `wall_s` (training time so far, evaluation excluded). Runs recorded before
those existed (benches before this module) have only their total (`info.cpu_time_s`, `wall_time_s`): their points
are placed linearly in reward calls, and the row says so (`estimated`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

CLOCKS = {"cpu_s": "CPU seconds", "wall_s": "wall seconds"}
DEFAULT_METRICS = ("gold/aesthetic", "reward/unnormalized")  # gold first: a speed-up on the proxy alone is no result


def elapsed(run: Any, clock: str = "cpu_s") -> tuple[list[float], bool]:
    """Per curve point, the training seconds spent so far, and whether they are estimated (spread linearly over the
    reward calls from the run's total, for runs without per-point times); `[]` when there is no time at all."""
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}; expected one of {sorted(CLOCKS)}")
    components = run.curve_components
    if components and len(components) == len(run.curve) and all(clock in c for c in components):
        return [float(c[clock]) for c in components], False
    total = run.info.get("cpu_time_s") if clock == "cpu_s" else run.wall_time_s
    if not run.curve or not total:
        return [], False
    last = float(run.curve[-1][0])
    return [float(total) * float(x) / last for x, _ in run.curve], True


def trailing_means(values: Sequence[float], smooth: int) -> np.ndarray:
    """Mean of each value with the `smooth - 1` before it (fewer at the start)."""
    if smooth < 1:
        raise ValueError(f"smooth={smooth}; expected >= 1")
    x = np.asarray(values, dtype=float)  # each window's own mean (a running sum would not give ties exactly)
    return np.array([x[max(0, i + 1 - smooth): i + 1].mean() for i in range(len(x))])


def metric_curve(run: Any, metric: str) -> list[float] | None:
    """The metric at every curve point, or None when some point lacks it."""
    values = [c.get(metric) for c in run.curve_components]
    if not values or len(values) != len(run.curve) or any(v is None or not np.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def final_level(run: Any, metric: str, smooth: int = 4) -> float | None:
    """The trailing mean of `metric` over the run's last `smooth` points (None when the curve lacks it)."""
    values = metric_curve(run, metric)
    return None if values is None else float(trailing_means(values, smooth)[-1])


def time_to_reach(run: Any, metric: str, level: float, smooth: int = 4, clock: str = "cpu_s") -> float | None:
    """Training seconds until the trailing mean of `metric` (over `smooth` points) first reached `level`; None when it
    never did within the run (or the run lacks the metric or times)."""
    values = metric_curve(run, metric)
    times, _ = elapsed(run, clock)
    if values is None or not times:
        return None
    reached = np.flatnonzero(trailing_means(values, smooth) >= level)
    return float(times[reached[0]]) if reached.size else None


def speed_rows(runs: Iterable[Any], reference: str = "grpo", metrics: Sequence[str] = DEFAULT_METRICS,
               smooth: int = 4, clock: str = "cpu_s", skip: dict[str, Sequence[str]] | None = None
               ) -> list[dict[str, Any]]:
    """Per (metric, variant with that metric's curve): per seed, the reference's seconds to its own final level
    and the variant's seconds to the same level; `speed` = reference time / variant time per seed (0 where the
    variant never reached it: it did not get there within the budget), its median over the seeds the reference ran,
    `reached` seeds and `estimated` (some times spread linearly, see `elapsed`). `skip[metric]`: variants whose curve
    of that metric measures something else (e.g. the proxy of a row trained on another reward)."""
    runs = list(runs)
    by_seed = {run.seed: run for run in runs if run.variant == reference}
    rows = []
    for metric in metrics:
        levels = {seed: final_level(run, metric, smooth) for seed, run in by_seed.items()}
        levels = {seed: level for seed, level in levels.items() if level is not None}
        variants = dict.fromkeys(run.variant for run in runs if metric_curve(run, metric) is not None)
        for variant in variants:
            if variant in (skip or {}).get(metric, ()):
                continue
            row = _speed_row(variant, [r for r in runs if r.variant == variant and r.seed in levels], by_seed, levels,
                             metric, smooth, clock)
            if row is not None:
                rows.append(row)
    return rows


def _speed_row(variant: str, runs: list[Any], by_seed: dict[int, Any], levels: dict[int, float], metric: str,
               smooth: int, clock: str) -> dict[str, Any] | None:
    seeds, speeds, times, reference_times, estimated = [], [], [], [], False
    for run in sorted(runs, key=lambda r: r.seed):
        reference = by_seed[run.seed]
        ref_time = time_to_reach(reference, metric, levels[run.seed], smooth, clock)
        own_times, own_estimated = elapsed(run, clock)
        if ref_time is None or not own_times:
            continue
        own = time_to_reach(run, metric, levels[run.seed], smooth, clock)
        estimated |= own_estimated or elapsed(reference, clock)[1]
        seeds.append(run.seed)
        reference_times.append(ref_time)
        times.append(own)
        speeds.append(ref_time / own if own is not None else 0.0)
    if not seeds:
        return None
    reached = [t for t in times if t is not None]
    return {"metric": metric, "variant": variant, "seeds": seeds, "level": [levels[s] for s in seeds],
            "reference_time": reference_times, "time": times, "speed": speeds,
            "median_speed": float(np.median(speeds)), "median_time": float(np.median(reached)) if reached else None,
            "reached": len(reached), "estimated": estimated, "clock": clock, "smooth": smooth}
