"""`check_scorer`: the counterpart of Gymnasium's `check_env` for rewards, for users' own tests.

It calls a `Scorer` (or a `CompositeReward` / `RewardWrapper`) on a batch of finished episodes and checks the
contract promptgym relies on (`rewards/base.py`):

| property           | what is checked                                                                   | on failure |
|--------------------|-----------------------------------------------------------------------------------|------------|
| `type`             | a `torch.Tensor` (a `RewardOutput` for a composite reward)                        | error      |
| `dtype`            | a floating dtype; float32 as the protocol says                                    | error; warning if float but not float32 |
| `device`           | on `device` (CPU by default)                                                      | warning (`check_scores` moves it) |
| `grad`             | no autograd graph attached                                                        | warning    |
| `shape`            | `[N]` for N results, `[0]` for the empty batch                                    | error      |
| `empty_batch`      | scoring no results returns a `[0]` tensor instead of raising (N may be 0)         | error      |
| `finite`           | no NaN/inf (NaN allowed in composite monitors, or everywhere with `allow_nan`)    | error      |
| `determinism`      | a repeated call, cached and recomputed, gives the same scores (`determinism` tol) | error      |
| `batch_invariance` | each row scores as it does alone and in the reversed batch (`batch_invariance` tol) | error    |
| `no_mutation`      | the results (list, records, tasks) are equal to a deep copy taken before the call | error      |

Time per call is measured and reported in `ScorerReport.seconds`, never asserted. Errors are `ScorerCheckError`
(an `AssertionError`, so a failing check reads as a failing test) naming the property and the offending rows;
soft issues are `ScorerCheckWarning`s and are also listed in the report.

Image scorers cache renders and scores; with `clear_caches=True` (default) every call starts from empty caches,
so determinism and batch invariance compare recomputed scores, not cache hits (this resets the caches' counters).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal

import torch

from promptgym.rewards.base import EditResult, RewardOutput, TaskLike
from promptgym.rewards.composite import CompositeReward, RewardWrapper

__all__ = ["BATCH_TOLERANCE", "ScorerCheckError", "ScorerCheckWarning", "ScorerReport", "check_scorer"]

# Renders of different batch sizes differ by ~1e-5 per pixel (conv/matmul round-off); the tiny aesthetic head
# amplifies that to ~5e-4 (tests/test_presets.py). Scores must agree within atol + rtol * |score|, both this value.
BATCH_TOLERANCE = 2e-3
Tolerance = Literal["exact"] | float


class ScorerCheckError(AssertionError):
    """A scorer broke its contract: `property` names the check, `rows` the offending rows of the batch."""

    def __init__(self, message: str, property: str, rows: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.property = property
        self.rows = tuple(rows)


class ScorerCheckWarning(UserWarning):
    """A soft issue: the reward still works (e.g. `check_scores` converts float64 to float32), but it should change."""


@dataclass(frozen=True)
class ScorerReport:
    """What `check_scorer` checked and measured.

    `outputs` are the checked tensors (`scores`, or `total` and each component of a composite reward);
    `checks` the properties that passed; `seconds` the wall time of the calls: `empty`, `batch` (first full
    call), `cached` (the repeat with warm caches), `recomputed`, `singleton` (mean of the one-row calls) and
    `per_item` (`batch / N`); `max_batch_deviation` the largest |batch - singleton| difference seen.
    """

    name: str
    batch_size: int
    outputs: tuple[str, ...]
    checks: tuple[str, ...]
    seconds: dict[str, float]
    max_batch_deviation: float
    warnings: tuple[str, ...]


def check_scorer(
    scorer: Any,
    tasks_or_results: Sequence[EditResult] | Sequence[TaskLike],
    *,
    prompts: Sequence[str] | None = None,
    batch_invariance: Tolerance = BATCH_TOLERANCE,
    determinism: Tolerance = "exact",
    allow_nan: bool = False,
    clear_caches: bool = True,
    device: str | torch.device = "cpu",
) -> ScorerReport:
    """Check that `scorer` keeps the `Scorer` contract on a batch; raise `ScorerCheckError` naming what broke.

    Args:
        scorer: a `Scorer` (`name`, `__call__(results) -> Tensor[N]`), a `CompositeReward` or a `RewardWrapper`.
        tasks_or_results: the batch: `EditResult`s, or tasks whose edited prompt is `prompts[i]` (default: the
            task's target, else its source). Use at least 2 rows (batch invariance needs them); repeat a row to
            check ties.
        prompts: edited prompts for tasks (only with tasks).
        batch_invariance: "exact" (bitwise) or a tolerance t: |batch - alone| <= t + t * |alone| for every row.
            The default `BATCH_TOLERANCE` covers the float noise of batched rendering.
        determinism: "exact" or a tolerance (as above) for repeated calls on the same batch.
        allow_nan: accept NaN scores (e.g. `GoldContentScorer` on tasks without a target). Composite monitors may
            always be NaN.
        clear_caches: empty render and score caches before every call, so each call recomputes.
        device: where the scores are expected (the protocol says CPU).
    """
    if not callable(scorer):
        raise TypeError(f"scorer={scorer!r}; expected a Scorer, CompositeReward or RewardWrapper (a callable)")
    results = _results(tasks_or_results, prompts)
    for arg, tolerance in (("batch_invariance", batch_invariance), ("determinism", determinism)):
        if tolerance != "exact" and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                     or not math.isfinite(tolerance) or tolerance < 0):
            raise ValueError(f"{arg}={tolerance!r}; expected 'exact' or a finite tolerance >= 0")
    return _Checker(scorer, results, batch_invariance, determinism, allow_nan, clear_caches, torch.device(device)).run()


def _results(items: Sequence[Any], prompts: Sequence[str] | None) -> list[EditResult]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise ValueError(f"tasks_or_results={items!r:.80}; expected a non-empty sequence of EditResults or tasks")
    if all(isinstance(item, EditResult) for item in items):
        if prompts is not None:
            raise ValueError("prompts is given with EditResults, which carry their prompts; give tasks or drop prompts")
        return list(items)
    for i, item in enumerate(items):
        if not isinstance(item, TaskLike):
            raise TypeError(f"tasks_or_results[{i}]={item!r:.80}; expected an EditResult or a task (source, "
                            "instruction, target, id)")
    if prompts is None:
        prompts = [task.target or task.source for task in items]
    if isinstance(prompts, str) or len(prompts) != len(items):
        raise ValueError(f"prompts={prompts!r:.80}; expected one str per task ({len(items)})")
    return [EditResult(task, prompt) for task, prompt in zip(items, prompts)]


def _clear_caches(scorer: Any) -> None:
    """Empty the score and render caches behind a scorer, a composite reward (terms and monitors) or a wrapper."""
    while isinstance(scorer, RewardWrapper):
        scorer = scorer.inner
    if isinstance(scorer, CompositeReward):
        for part in [*(term for term, _ in scorer.terms.values()), *scorer.monitors.values()]:
            _clear_caches(part)
        return
    if (cache := getattr(scorer, "score_cache", None)) is not None:
        cache.clear()
    if callable(clear := getattr(getattr(scorer, "renderer", None), "clear_cache", None)):
        clear()


def _same(a: Any, b: Any) -> bool:
    """Structural equality: `==`, falling back to fields / attributes for records without `__eq__`."""
    if a is b or a == b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    if hasattr(a, "__dict__"):
        return vars(a).keys() == vars(b).keys() and all(_same(v, vars(b)[k]) for k, v in vars(a).items())
    return False


def _close(a: torch.Tensor, b: torch.Tensor, tolerance: Tolerance) -> torch.Tensor:
    """Rows where a and b agree (NaN equals NaN): bitwise for "exact", else within t + t * |b|."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if tolerance == "exact":
        return (a == b) | (a.isnan() & b.isnan())
    return torch.isclose(a, b, rtol=float(tolerance), atol=float(tolerance), equal_nan=True)


class _Checker:
    """One run of `check_scorer` (state: the warnings given and the outputs' names)."""

    def __init__(self, scorer, results, batch_invariance, determinism, allow_nan, clear_caches, device) -> None:
        self.scorer = scorer
        self.results = results
        self.name = str(getattr(scorer, "name", None) or type(scorer).__name__)
        self.batch_invariance = batch_invariance
        self.determinism = determinism
        self.allow_nan = allow_nan
        self.clear_caches = clear_caches
        self.device = device
        composite = isinstance(scorer, (CompositeReward, RewardWrapper))
        self.nan_ok = set(getattr(scorer, "monitors", None) or {}) if composite else set()  # monitors may be NaN
        self.warned: dict[str, None] = {}
        self.seconds: dict[str, float] = {}
        self.labels: tuple[str, ...] | None = None

    def fail(self, prop: str, detail: str, rows: Sequence[int] = ()) -> None:
        shown = [self.results[i].prompt for i in rows[:5] if i < len(self.results)]
        where = f"; rows {list(rows)} (prompts {shown})" if rows else ""
        raise ScorerCheckError(f"check_scorer({self.name!r}) {prop}: {detail}{where}", prop, rows)

    def warn(self, message: str) -> None:
        message = f"check_scorer({self.name!r}): {message}"
        if message not in self.warned:
            self.warned[message] = None
            warnings.warn(message, ScorerCheckWarning, stacklevel=4)

    def call(self, rows: Sequence[int], what: str, clear: bool = True) -> dict[str, torch.Tensor]:
        """Call the scorer on the results `rows` (caches cleared if `clear` and asked), time it, check types,
        shapes, values and mutation."""
        results = [self.results[i] for i in rows]
        if clear and self.clear_caches:
            _clear_caches(self.scorer)
        before = copy.deepcopy(results)
        argument = list(results)
        start = time.perf_counter()
        try:
            value = self.scorer(argument)
        except Exception as err:  # noqa: BLE001 - re-raised as the failed check, with the cause chained
            prop = "empty_batch" if not results else "call"
            raise ScorerCheckError(f"check_scorer({self.name!r}) {prop}: the {what} call raised "
                                   f"{type(err).__name__}: {err}", prop) from err
        elapsed = time.perf_counter() - start
        if not _same(argument, before):
            changed = [rows[i] for i in range(len(before)) if i >= len(argument) or not _same(argument[i], before[i])]
            self.fail("no_mutation", f"the {what} call changed its input (the list has {len(argument)} rows, "
                      f"had {len(before)})", changed)
        outputs = self.outputs(value, rows, what)
        self.seconds[what] = elapsed
        return outputs

    def outputs(self, value: Any, rows: Sequence[int], what: str) -> dict[str, torch.Tensor]:
        n = len(rows)
        if isinstance(value, RewardOutput):
            outputs = {"total": value.total, **value.components}
        elif isinstance(value, torch.Tensor):
            outputs = {"scores": value}
        else:
            self.fail("type", f"the {what} call returned {type(value).__name__}; expected a torch.Tensor of shape "
                      f"[{n}] (or a RewardOutput from a composite reward)")
        if self.labels is None:
            self.labels = tuple(outputs)
        elif tuple(outputs) != self.labels:
            self.fail("type", f"the {what} call returned outputs {list(outputs)}, an earlier call {list(self.labels)}")
        for label, scores in outputs.items():
            self.check_tensor(label, scores, rows, what)
        return outputs

    def check_tensor(self, label: str, scores: Any, rows: Sequence[int], what: str) -> None:
        n = len(rows)
        if not isinstance(scores, torch.Tensor):
            self.fail("type", f"{label} of the {what} call is {type(scores).__name__}; expected a torch.Tensor")
        if not scores.is_floating_point():
            self.fail("dtype", f"{label} has dtype {scores.dtype}; expected torch.float32")
        if scores.dtype != torch.float32:
            self.warn(f"{label} has dtype {scores.dtype}; the Scorer protocol says float32 (it is converted)")
        if scores.device != self.device:
            self.warn(f"{label} is on {scores.device}; expected {self.device} (it is moved)")
        if scores.requires_grad:
            self.warn(f"{label} requires grad; a reward should be detached (it is detached)")
        if tuple(scores.shape) != (n,):
            self.fail("shape", f"{label} of the {what} call has shape {tuple(scores.shape)}; expected ({n},)")
        values = scores.detach().cpu()
        bad = ~torch.isfinite(values)
        if self.allow_nan or label in self.nan_ok:
            bad &= ~values.isnan()
        if bad.any():
            positions = bad.nonzero().flatten().tolist()
            self.fail("finite", f"{label} of the {what} call has non-finite values {values[bad].tolist()}",
                      [rows[i] for i in positions])

    def compare(self, prop: str, got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                tolerance: Tolerance, what: str) -> float:
        """Fail unless `got` equals `expected` row by row within `tolerance`; the largest difference."""
        worst = 0.0
        for label, want in expected.items():
            ok = _close(got[label], want, tolerance)
            if not ok.all():
                rows = (~ok).nonzero().flatten().tolist()
                self.fail(prop, f"{label}: the {what} gives {got[label][rows].tolist()}, expected "
                          f"{want[rows].tolist()} (tolerance {tolerance})", rows)
            diff = (got[label].detach().double() - want.detach().double()).abs().nan_to_num(0.0)
            worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        return worst

    def run(self) -> ScorerReport:
        n = len(self.results)
        everything = list(range(n))
        checks = ["type", "dtype", "shape", "finite"]
        self.call([], "empty")
        checks.append("empty_batch")
        first = self.call(everything, "batch")
        cached = self.call(everything, "cached", clear=False)
        self.compare("determinism", cached, first, self.determinism, "repeated call (warm caches)")
        recomputed = self.call(everything, "recomputed")
        self.compare("determinism", recomputed, first, self.determinism, "repeated call")
        checks.append("determinism")
        alone = [self.call([i], f"singleton {i}") for i in everything]
        self.seconds["singleton"] = sum(self.seconds.pop(f"singleton {i}") for i in everything) / n
        singles = {label: torch.cat([out[label] for out in alone]) for label in first}
        deviation = self.compare("batch_invariance", first, singles, self.batch_invariance, "batch call, by row,")
        reversed_out = self.call(everything[::-1], "reversed")
        flipped = {label: scores.flip(0) for label, scores in reversed_out.items()}
        deviation = max(deviation, self.compare("batch_invariance", flipped, first, self.batch_invariance,
                                                "reversed batch, by row,"))
        checks += ["batch_invariance", "no_mutation"]
        if n < 2:
            self.warn("a batch of 1 row cannot show batch dependence; give at least 2 rows")
        self.seconds["per_item"] = self.seconds["batch"] / n
        return ScorerReport(
            name=self.name,
            batch_size=n,
            outputs=self.labels or (),
            checks=tuple(checks),
            seconds=dict(self.seconds),
            max_batch_deviation=deviation,
            warnings=tuple(self.warned),
        )
