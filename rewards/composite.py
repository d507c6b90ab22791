"""`CompositeReward`: a weighted sum of scorers, with every term reported.

Optional per-term transforms, both off by default:
- *delta* (BeautifulPrompt): a term scores the edited prompt minus the unedited source prompt, so the
  reward measures what the edit changed rather than how good the subject already was;
- *normalize*: a term is standardised by its running mean and std over all episodes seen so far.

*Monitors* (`monitors={name: scorer}`) are scored on the edited prompt and reported as components under their
own names, but never enter the total: that is how the synth world logs its gold metrics beside the proxy reward.
A monitor may return NaN (e.g. gold content of a task without a known target); NaN is reported, not an error.
`reward.monitoring = False` skips them (a run that measures gold only in its evaluations: `with monitoring(reward)`
turns them on for a block).

Scorer failures follow `on_error`: "raise" stops with the scorer's name and the offending prompts;
"zero" gives those episodes 0 for that term and counts them in the `reward_errors` component.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from promptgym.rewards.base import EditResult, RewardOutput, Scorer, check_scores

ERRORS_COMPONENT = "reward_errors"
# With normalisation, the weighted sum of the terms before it: a fixed function of the prompt, unlike the total
UNNORMALIZED_COMPONENT = "reward/unnormalized"


class ScorerError(RuntimeError):
    """A scorer raised or returned a non-finite score; names the scorer and the prompts."""


@dataclass
class RunningMeanStd:
    """Running mean and variance over batches (Chan et al. parallel update, as in SB3's VecNormalize)."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 1e-4

    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        batch_mean, batch_var, batch_count = float(x.mean()), float(x.var(unbiased=False)), x.numel()
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def normalize(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        return ((x.double() - self.mean) / math.sqrt(self.var + eps)).float()


def _names(flag: bool | Iterable[str], terms: Mapping[str, object], arg: str) -> frozenset[str]:
    """Which terms a per-term flag applies to: all (True), none (False) or the given names."""
    if isinstance(flag, bool):
        return frozenset(terms) if flag else frozenset()
    names = frozenset(flag)
    unknown = sorted(names - set(terms))
    if unknown:
        raise ValueError(f"{arg}={sorted(names)} names unknown terms {unknown}; terms are {sorted(terms)}")
    return names


STATE_FORMAT = 2  # of CompositeReward.state_dict: statistics and caches (1, unmarked: statistics alone)


class CompositeReward:
    """Weighted sum of scorers: `total = sum_i weight_i * transformed_score_i`.

    `terms` maps a term name to `(scorer, weight)`. `components[name]` is always the raw score of the edited
    prompt; with delta mode `name/source` and `name/delta` are added, with normalisation `name/normalized` and
    `reward/unnormalized` (the weighted sum before normalisation: stationary, so comparable across time and runs).
    """

    def __init__(
        self,
        terms: Mapping[str, tuple[Scorer, float]],
        *,
        normalize: bool | Iterable[str] = False,
        delta: bool | Iterable[str] = False,
        on_error: Literal["raise", "zero"] = "raise",
        monitors: Mapping[str, Scorer] | None = None,
    ) -> None:
        if not terms:
            raise ValueError("terms is empty; expected a mapping {name: (scorer, weight)} with at least one term")
        for name, term in terms.items():
            if not (isinstance(term, tuple) and len(term) == 2 and callable(term[0])):
                raise ValueError(f"terms[{name!r}]={term!r}; expected a (scorer, weight) tuple")
            if not math.isfinite(float(term[1])):
                raise ValueError(f"terms[{name!r}] weight={term[1]!r}; expected a finite number")
        if on_error not in ("raise", "zero"):
            raise ValueError(f"on_error={on_error!r}; expected 'raise' or 'zero'")
        self.terms = {name: (scorer, float(weight)) for name, (scorer, weight) in terms.items()}
        self.normalize = _names(normalize, terms, "normalize")
        self.delta = _names(delta, terms, "delta")
        self.on_error = on_error
        self.stats = {name: RunningMeanStd() for name in self.normalize}
        self.monitors = dict(monitors or {})
        self.monitoring = True  # False: the monitors are skipped (not state: never checkpointed)
        self.call_seconds = 0.0  # wall time spent in __call__ (a profile, not state: never checkpointed)
        self.score_table = None  # a ScoreTable of source scores attached by `ScoreTable.attach` (not state)
        for name, scorer in self.monitors.items():
            if not callable(scorer):
                raise ValueError(f"monitors[{name!r}]={scorer!r}; expected a Scorer")
            if name in self.terms:
                raise ValueError(f"monitor {name!r} has the name of a reward term; names must differ")

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={weight:g}*{type(s).__name__}" for name, (s, weight) in self.terms.items())
        watched = ", ".join(self.monitors)
        return f"CompositeReward({parts}{f'; monitors: {watched}' if watched else ''})"

    def __call__(self, results: Sequence[EditResult]) -> RewardOutput:
        start = time.perf_counter()
        try:
            return self._call(results)
        finally:
            self.call_seconds += time.perf_counter() - start

    def _call(self, results: Sequence[EditResult]) -> RewardOutput:
        n = len(results)
        total = torch.zeros(n, dtype=torch.float32)
        components: dict[str, torch.Tensor] = {}
        failed = torch.zeros(n, dtype=torch.bool)
        unnormalized = torch.zeros(n, dtype=torch.float32)
        for name, (scorer, weight) in self.terms.items():
            if name in self.delta:
                sources = [EditResult(r.task, r.task.source) for r in results]
                both, bad = self._score(name, scorer, list(results) + sources)
                score, source_score = both[:n], both[n:]
                bad = bad[:n] | bad[n:]
                value = score - source_score
                components[f"{name}/source"] = source_score
                components[f"{name}/delta"] = value
            else:
                score, bad = self._score(name, scorer, results)
                value = score
            components[name] = score
            failed |= bad
            value = value.masked_fill(bad, 0.0)
            unnormalized += weight * value
            if name in self.normalize:
                if (~bad).any():
                    self.stats[name].update(value[~bad])
                value = self.stats[name].normalize(value).masked_fill(bad, 0.0)
                components[f"{name}/normalized"] = value
            total += weight * value
        if self.normalize:
            components[UNNORMALIZED_COMPONENT] = unnormalized
        for name, scorer in self.monitors.items() if self.monitoring else ():
            components[name] = self._monitor(name, scorer, results)
        if self.on_error == "zero":
            components[ERRORS_COMPONENT] = failed.float()
        return RewardOutput(total=total, components=components)

    def _monitor(self, name: str, scorer: Scorer, results: Sequence[EditResult]) -> torch.Tensor:
        """A monitor's scores `[N]` (NaN allowed); a failure raises in "raise" mode and gives NaN in "zero" mode."""
        try:
            return check_scores(name, scorer(results), len(results))
        except Exception as err:  # noqa: BLE001 - reported by name below, never swallowed
            if self.on_error == "raise":
                prompts = [r.prompt for r in results][:5]
                raise ScorerError(f"monitor {name!r} raised {type(err).__name__}: {err} (prompts: {prompts})") from err
            return torch.full((len(results),), math.nan)

    def _score(self, name: str, scorer: Scorer, results: Sequence[EditResult]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores `[N]` and a bool mask of failed episodes; raises ScorerError in "raise" mode."""
        n = len(results)
        try:
            scores = check_scores(name, scorer(results), n)
        except Exception as err:  # noqa: BLE001 - reported by name below, never swallowed
            if self.on_error == "raise":
                prompts = [r.prompt for r in results][:5]
                raise ScorerError(f"scorer {name!r} raised {type(err).__name__}: {err} (prompts: {prompts})") from err
            return torch.zeros(n), torch.ones(n, dtype=torch.bool)
        bad = ~torch.isfinite(scores)
        if bad.any() and self.on_error == "raise":
            prompts = [results[i].prompt for i in bad.nonzero().flatten().tolist()]
            raise ScorerError(f"scorer {name!r} returned non-finite scores for prompts {prompts}")
        return scores.masked_fill(bad, 0.0), bad

    def reset_stats(self) -> None:
        """Forget the running normalisation statistics (a fresh start, e.g. for the next run of a benchmark)."""
        self.stats = {name: RunningMeanStd() for name in self.normalize}

    def state_dict(self) -> dict:
        """Everything a later reward depends on, for checkpoints: the running normalisation statistics, and the
        render, score and text-embedding caches with their counters. Renders (and sentence embeddings) depend
        slightly on which prompts share a batch, and the caches decide the batches, so a resumed run scores bit for
        bit as an uninterrupted one only with them.
        """
        return {
            "format": STATE_FORMAT,
            "stats": {name: vars(stat).copy() for name, stat in self.stats.items()},
            "caches": {name: save() for name, (save, _) in self._cache_parts().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`; a state without "format" is an older checkpoint's statistics alone."""
        stats = state["stats"] if state.get("format") == STATE_FORMAT else state
        for name, values in stats.items():
            self.stats[name] = RunningMeanStd(**values)
        parts = self._cache_parts()
        for name, saved in (state.get("caches", {}) if state.get("format") == STATE_FORMAT else {}).items():
            if name in parts:  # a cache this reward no longer has is skipped
                parts[name][1](saved)

    def _cache_parts(self) -> dict[str, tuple[Callable[[], Any], Callable[[Any], None]]]:
        """{stable name: (save, load)} for every score cache and every distinct renderer and sentence embedder (the
        surrogate scorers') of the terms and monitors (one shared by several scorers appears once, under the first
        scorer's name)."""
        parts: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        seen: set[int] = set()
        scorers = {**{name: scorer for name, (scorer, _) in self.terms.items()}, **self.monitors}
        for name, scorer in scorers.items():
            cache = getattr(scorer, "score_cache", None)
            if cache is not None and hasattr(cache, "state"):
                parts[f"{name}/scores"] = (cache.state, cache.load_state)
            for attribute, suffix in (("renderer", "renders"), ("embedder", "embeddings")):
                part = getattr(scorer, attribute, None)
                if part is not None and hasattr(part, "cache_state") and id(part) not in seen:
                    seen.add(id(part))
                    parts[f"{name}/{suffix}"] = (part.cache_state, part.load_cache_state)
        return parts


class RewardWrapper:
    """Wraps a reward as `gymnasium.Wrapper` wraps an env: `__call__` scores with `inner`, and every attribute the
    wrapper does not define (terms, flags, running statistics, `state_dict`) is the inner reward's own, so a wrapper
    is used wherever its reward is (`as_composite` returns it as it is). Subclasses override `__call__`."""

    def __init__(self, reward: CompositeReward | Scorer) -> None:
        self.inner = as_composite(reward)

    def __call__(self, results: Sequence[EditResult]) -> RewardOutput:
        return self.inner(results)

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (e.g. while the wrapper is being copied): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


def unwrap(reward: Any) -> Any:
    """The reward inside any `RewardWrapper`s (the reward itself when it is not wrapped)."""
    while isinstance(reward, RewardWrapper):
        reward = reward.inner
    return reward


@contextlib.contextmanager
def monitoring(reward: Any, on: bool = True):
    """Within the block, the monitors of `reward` (a `CompositeReward` or a wrapper of one; anything else is left
    alone) are scored (`on`) or skipped, whatever `reward.monitoring` was; it is restored after."""
    inner = unwrap(reward)
    if not isinstance(inner, CompositeReward):
        yield reward
        return
    before, inner.monitoring = inner.monitoring, on
    try:
        yield reward
    finally:
        inner.monitoring = before


def reward_seconds(reward: Any) -> tuple[float, float] | None:
    """(seconds spent in the reward's calls, seconds its distinct renderers spent rendering) so far, for a
    `CompositeReward` (or a wrapper of one); None for another kind of reward. The difference is the scoring
    overhead on top of the renders."""
    inner = unwrap(reward)
    if not isinstance(inner, CompositeReward):
        return None
    renderers = {id(r): r for scorer in [s for s, _ in inner.terms.values()] + list(inner.monitors.values())
                 if (r := getattr(scorer, "renderer", None)) is not None and hasattr(r, "render_seconds")}
    return inner.call_seconds, sum(r.render_seconds for r in renderers.values())


def as_composite(reward: CompositeReward | RewardWrapper | Scorer) -> CompositeReward | RewardWrapper:
    """A `CompositeReward` from either a composite reward (or a `RewardWrapper` of one, returned as it is) or a single
    scorer (weight 1)."""
    if isinstance(reward, (CompositeReward, RewardWrapper)):
        return reward
    if callable(reward) and isinstance(getattr(reward, "name", None), str):
        return CompositeReward({reward.name: (reward, 1.0)})
    raise TypeError(
        f"reward={reward!r}; expected a CompositeReward or a Scorer (an object with a `name` and "
        "`__call__(results) -> Tensor[N]`)"
    )
