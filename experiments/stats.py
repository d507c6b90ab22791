"""Statistics of evaluations and benchmarks: win rates against the source prompt, diversity of samples, and
percentile-bootstrap confidence intervals (`scipy.stats.bootstrap`).

Every function checks its input (finite numbers, matching lengths) and raises naming the bad argument.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
import torch

__all__ = [
    "PairedChange", "bootstrap_ci", "diversity", "format_paired_table", "iqm", "iqm_ci", "mean_ci", "paired_changes",
    "task_diversities", "win_indicators", "win_rate",
]


def _as_1d(name: str, values: Any) -> np.ndarray:
    """`values` as a finite float64 vector; raises naming `name` otherwise."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} has shape {array.shape}; expected a 1-D sequence of numbers")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{name}[{bad}]={float(array[bad])!r}; expected finite numbers")
    return array


def win_indicators(edited_scores: Any, source_scores: Any, atol: float = 0.0) -> np.ndarray:
    """Per pair: 1.0 where the edited score beats the source's, 0.5 on a tie (|diff| <= atol), else 0.0."""
    edited = _as_1d("edited_scores", edited_scores)
    source = _as_1d("source_scores", source_scores)
    if edited.shape != source.shape:
        raise ValueError(
            f"edited_scores has {len(edited)} entries and source_scores {len(source)}; expected one source per edit"
        )
    if not (isinstance(atol, (int, float)) and not isinstance(atol, bool) and atol >= 0):
        raise ValueError(f"atol={atol!r}; expected a number >= 0")
    diff = edited - source
    return np.where(np.abs(diff) <= atol, 0.5, (diff > 0).astype(np.float64))


def win_rate(edited_scores: Any, source_scores: Any, atol: float = 0.0) -> float:
    """Fraction of edits that beat their unedited source prompt (ties count half); needs at least one pair."""
    wins = win_indicators(edited_scores, source_scores, atol)
    if len(wins) == 0:
        raise ValueError("edited_scores is empty; expected at least one (edited, source) pair")
    return float(wins.mean())


def _mean_pairwise_cosine_distance(embeddings: torch.Tensor, index: int) -> float:
    """Mean of 1 - cos(e_i, e_j) over the n(n-1)/2 pairs i < j of `embeddings[n, d]` (n >= 2)."""
    x = embeddings.detach().cpu().double()
    norms = x.norm(dim=1)
    if (norms == 0).any() or not torch.isfinite(x).all():
        raise ValueError(
            f"embeddings_per_task[{index}] has a zero or non-finite embedding; cosine distance is undefined for it"
        )
    unit = x / norms[:, None]
    cos = unit @ unit.T
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    return float((1.0 - cos[i, j]).clamp(0.0, 2.0).mean())  # clamp: rounding only (identical rows give -4e-16)


def task_diversities(embeddings_per_task: Sequence[torch.Tensor]) -> np.ndarray:
    """Per task: mean pairwise cosine distance of its samples' embeddings `[n, d]` (NaN where n < 2)."""
    if isinstance(embeddings_per_task, torch.Tensor) and embeddings_per_task.ndim == 3:
        embeddings_per_task = list(embeddings_per_task)
    out = np.full(len(embeddings_per_task), np.nan)
    for t, embeddings in enumerate(embeddings_per_task):
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings_per_task[{t}] is {shape}; expected a tensor [n_samples, dim]")
        if embeddings.shape[0] >= 2:
            out[t] = _mean_pairwise_cosine_distance(embeddings, t)
    return out


def diversity(embeddings_per_task: Sequence[torch.Tensor]) -> float:
    """Mean over tasks of the mean pairwise cosine distance among each task's samples, in [0, 2].

    0 = every task's samples point the same way, 1 = orthogonal on average. Tasks with fewer than 2 samples
    contribute nothing; if no task has 2, the result is NaN (with a warning saying why).
    """
    per_task = task_diversities(embeddings_per_task)
    if not np.isfinite(per_task).any():
        warnings.warn(
            "diversity is NaN: no task has 2 or more samples (use samples_per_task >= 2)", RuntimeWarning, stacklevel=2
        )
        return math.nan
    return float(np.nanmean(per_task))


def bootstrap_ci(
    values: Any,
    stat: Callable[[np.ndarray], float] = np.mean,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval `(low, high)` of `stat(values)` (`scipy.stats.bootstrap`).

    Resamples `values` with replacement `n_resamples` times (numpy Generator seeded by `seed`, so the interval
    is reproducible) and returns the `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles of the stat.
    A single value gives the degenerate interval `(stat, stat)`.
    """
    array = _as_1d("values", values)
    if len(array) == 0:
        raise ValueError("values is empty; expected at least one number to bootstrap")
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence={confidence!r}; expected a number in (0, 1)")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r}; expected a positive integer")
    if len(array) == 1:  # every resample is the one value (scipy refuses a single observation)
        value = float(stat(array))
        return value, value
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    result = scipy.stats.bootstrap(
        (array,), stat, confidence_level=confidence, n_resamples=int(n_resamples), method="percentile", rng=rng
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_ci(
    values: Any, confidence: float = 0.95, n_resamples: int = 2000, seed: int | np.random.Generator = 0
) -> tuple[float, float, float]:
    """`(mean, low, high)`: the mean of `values` and its percentile-bootstrap confidence interval."""
    low, high = bootstrap_ci(values, np.mean, confidence, n_resamples, seed)
    return float(np.mean(_as_1d("values", values))), low, high


# ------------------------------------------------------------------------------ aggregates over runs (rliable)
def _as_runs_by_tasks(scores: Any) -> np.ndarray:
    """`scores` as a finite float64 array [runs, tasks] (a 1-D sequence is one task)."""
    array = np.asarray(scores.detach().cpu().double().numpy() if isinstance(scores, torch.Tensor) else scores,
                       dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"scores has shape {array.shape}; expected a non-empty [runs] or [runs, tasks] array")
    if not np.isfinite(array).all():
        raise ValueError(f"scores has non-finite entries {array[~np.isfinite(array)][:3].tolist()}; expected finite")
    return array


def iqm(scores: Any) -> float:
    """Interquartile mean: the mean of the middle 50% of all scores (`scipy.stats.trim_mean(..., 0.25)` of the
    flattened [runs, tasks] array, as rliable's `aggregate_iqm`); robust to one outlying seed, less noisy than
    the median. With 5 runs it is the mean of the middle 3."""
    return float(scipy.stats.trim_mean(_as_runs_by_tasks(scores), 0.25, axis=None))


def iqm_ci(scores: Any, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """`(iqm, low, high)`: the IQM of `scores` [runs] or [runs, tasks] and its stratified-bootstrap percentile CI.

    Stratified as in rliable (Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice"): each
    resample draws runs with replacement *within each task* (column), so every task keeps its weight. (rliable
    itself was tried: it installs here, but its `arch` dependency fails to import with pandas 3.)
    """
    array = _as_runs_by_tasks(scores)
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence={confidence!r}; expected a number in (0, 1)")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r}; expected a positive integer")
    runs, tasks = array.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, runs, size=(int(n_resamples), runs, tasks))
    resampled = array[rows, np.arange(tasks)[None, None, :]].reshape(int(n_resamples), -1)
    stats = scipy.stats.trim_mean(resampled, 0.25, axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return iqm(array), float(low), float(high)


# ------------------------------------------------------------------------------------------- paired changes
@dataclass(frozen=True)
class PairedChange:
    """One metric of two sets of samples of the same tasks: each mean, and the mean per-task change (after minus
    before) with its bootstrap CI over the tasks both scored."""

    name: str
    before: float
    after: float
    change: float
    low: float
    high: float
    n: int


def _task_means(samples: Sequence[Mapping[str, Any]], name: str) -> dict[str, float]:
    """Mean over each task's records of the total reward (`"reward"`), a record field or a reward component."""
    values: dict[str, list[float]] = {}
    for record in samples:
        value = record.get(name, record.get("components", {}).get(name, math.nan))
        values.setdefault(record["task_id"], []).append(float(value))
    return {task: float(np.mean(v)) for task, v in values.items()}


def paired_changes(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]],
                   names: Sequence[str] | None = None, confidence: float = 0.95, n_resamples: int = 2000,
                   seed: int = 0) -> list[PairedChange]:
    """Paired per-task changes between two lists of sample records (`{"task_id", "reward", "components", ...}`, as
    `samples.jsonl` and `EvalResult.samples` hold them; several samples of a task are averaged first), or of
    per-task records (`EvalResult.tasks`, one `{"task_id", metric: value}` per task: how the diversity metrics,
    which exist per task and not per sample, are paired). Default
    metrics: the total reward, every component but the sources' (constant), and `integrity_ratio` where recorded.
    Tasks missing from either side, or NaN on either (no target scene), are left out of that metric; a metric no
    task has is left out of the list."""
    if names is None:
        first = after[0] if after else {"components": {}}
        names = ["reward", *sorted(c for c in first.get("components", {}) if not c.endswith("/source")),
                 *(["integrity_ratio"] if "integrity_ratio" in first else [])]
    changes = []
    for name in names:
        change = paired_task_change(name, _task_means(before, name), _task_means(after, name), confidence,
                                    n_resamples, seed)
        if change is not None:
            changes.append(change)
    return changes


def paired_task_change(name: str, before: Mapping[str, float], after: Mapping[str, float], confidence: float = 0.95,
                       n_resamples: int = 2000, seed: int = 0) -> PairedChange | None:
    """The change from `before` to `after` (each `{task_id: value}`) over the tasks both have with finite values,
    with its bootstrap CI over tasks (one task: the change itself as both ends); None when no task is shared."""
    tasks = [t for t in before if t in after and math.isfinite(before[t]) and math.isfinite(after[t])]
    if not tasks:
        return None
    diff = np.array([after[t] - before[t] for t in tasks])
    change, low, high = mean_ci(diff, confidence, n_resamples, seed) if len(tasks) > 1 else (diff[0],) * 3
    return PairedChange(name, float(np.mean([before[t] for t in tasks])), float(np.mean([after[t] for t in tasks])),
                        float(change), float(low), float(high), len(tasks))


def format_paired_table(changes: Sequence[PairedChange], before: str, after: str, confidence: float = 0.95) -> list[str]:
    """Markdown lines: metric | before | after | change [CI] | tasks."""
    lines = [f"| metric | {before} | {after} | change ({int(100 * confidence)}% CI over tasks) | tasks |",
             "|---|---|---|---|---|"]
    for c in changes:
        lines.append(f"| {c.name} | {c.before:.3f} | {c.after:.3f} | {c.change:+.3f} [{c.low:+.3f}, {c.high:+.3f}] | {c.n} |")
    return lines
