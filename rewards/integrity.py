"""Content-integrity reward (DiffChat): does the edited prompt keep what it should and drop what it should?

ratio = |required found| / |required|  -  forbidden_penalty * |forbidden found| / |forbidden|, floored at 0
(an empty required set counts as fully kept, an empty forbidden set costs nothing). With `edit_weight` w != 1 the
first term is weighted: each required keyword the source lacks (what the instruction asks for, "blue" in "make the
rabbits blue") counts w, each kept one 1. "Found" means the lemma
is in `prompt_lemmas(edited prompt)`, normalised exactly like the keywords (`promptgym.rewards.keywords`).
`mode="binary"` gives DiffChat's thresholded reward, 1.0 where ratio >= threshold else 0.0;
`mode="ratio"` gives the ratio itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from promptgym.rewards.base import EditResult, TaskLike
from promptgym.rewards.keywords import KeywordSpec, extract_keywords, prompt_lemmas

MODES = ("binary", "ratio")
_TOLERANCE = 1e-9  # ratio == threshold passes even when the float ratio lands a hair below it


@dataclass(frozen=True)
class IntegrityDetails:
    """Which keywords an edited prompt kept, missed, or wrongly still contains (sorted, for logs)."""

    kept: tuple[str, ...]
    missing: tuple[str, ...]
    forbidden_present: tuple[str, ...]
    forbidden_absent: tuple[str, ...]
    ratio: float
    passed: bool


def integrity_ratio(
    spec: KeywordSpec,
    prompt: str,
    forbidden_penalty: float = 1.0,
    edit_weight: float = 1.0,
    source_lemmas: frozenset[str] = frozenset(),
) -> float:
    """Fraction of required keywords in `prompt` minus the penalised fraction of forbidden ones, floored at 0.

    With `edit_weight` != 1 a required keyword not in `source_lemmas` (one the edit adds) weighs `edit_weight`
    in the fraction, the others 1.
    """
    present = prompt_lemmas(prompt)
    weights = {word: (1.0 if word in source_lemmas else edit_weight) for word in spec.required}
    total = sum(weights.values())
    kept = sum(w for word, w in weights.items() if word in present) / total if total else 1.0
    bad = len(spec.forbidden & present) / len(spec.forbidden) if spec.forbidden else 0.0
    return max(0.0, kept - forbidden_penalty * bad)


class ContentIntegrityScorer:
    """Scores edited prompts by the keywords of their task (`extract_keywords(task.source, task.instruction)`).

    `threshold` in [0, 1] is the binary cut (a ratio equal to it passes), `mode` is "binary" or "ratio",
    `forbidden_penalty` >= 0 weights the fraction of forbidden keywords still present; `edit_weight` > 0 weights
    each required keyword the source lacks (what the instruction adds) against a kept one (1: all equal, DiffChat).
    """

    name = "integrity"

    def __init__(
        self,
        threshold: float = 0.8,
        mode: Literal["binary", "ratio"] = "binary",
        forbidden_penalty: float = 1.0,
        edit_weight: float = 1.0,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"ContentIntegrityScorer: threshold={threshold!r}, expected a number in [0, 1]")
        if mode not in MODES:
            raise ValueError(f"ContentIntegrityScorer: mode={mode!r}, expected one of {MODES}")
        if (
            isinstance(forbidden_penalty, bool)
            or not isinstance(forbidden_penalty, (int, float))
            or not math.isfinite(forbidden_penalty)
            or forbidden_penalty < 0
        ):
            raise ValueError(
                f"ContentIntegrityScorer: forbidden_penalty={forbidden_penalty!r}, expected a finite number >= 0"
            )
        if isinstance(edit_weight, bool) or not isinstance(edit_weight, (int, float)) or not (
            math.isfinite(edit_weight) and edit_weight > 0
        ):
            raise ValueError(f"ContentIntegrityScorer: edit_weight={edit_weight!r}, expected a finite number > 0")
        self.edit_weight = float(edit_weight)
        self.threshold = float(threshold)
        self.mode = mode
        self.forbidden_penalty = float(forbidden_penalty)

    def __repr__(self) -> str:
        return (
            f"ContentIntegrityScorer(threshold={self.threshold}, mode={self.mode!r}, "
            f"forbidden_penalty={self.forbidden_penalty}, edit_weight={self.edit_weight})"
        )

    def keywords(self, task: TaskLike) -> KeywordSpec:
        """The task's keyword spec (cached by `extract_keywords`)."""
        return extract_keywords(task.source, task.instruction)

    def ratio(self, task: TaskLike, prompt: str) -> float:
        """Integrity ratio of `prompt` as an edit of `task`, in [0, 1]."""
        return integrity_ratio(self.keywords(task), prompt, self.forbidden_penalty, *self._edit_weights(task))

    def _edit_weights(self, task: TaskLike) -> tuple[float, frozenset[str]]:
        """(`edit_weight`, the source's lemmas) for `integrity_ratio`; no lemmatising when the weight is 1."""
        return (1.0, frozenset()) if self.edit_weight == 1.0 else (self.edit_weight, prompt_lemmas(task.source))

    def score(self, task: TaskLike, prompt: str) -> float:
        """One episode's score: the ratio, or 1.0/0.0 against `threshold` in binary mode."""
        ratio = self.ratio(task, prompt)
        if self.mode == "ratio":
            return ratio
        return 1.0 if ratio >= self.threshold - _TOLERANCE else 0.0

    def __call__(self, results: Sequence[EditResult]) -> torch.Tensor:
        """Scores `[N]` float32 on CPU, one per finished episode, in order."""
        scores = []
        for i, result in enumerate(results):
            if not isinstance(getattr(result, "prompt", None), str) or not hasattr(result, "task"):
                raise TypeError(
                    f"ContentIntegrityScorer: results[{i}] is {type(result).__name__}, "
                    "expected an EditResult with a task and a str prompt"
                )
            scores.append(self.score(result.task, result.prompt))
        return torch.tensor(scores, dtype=torch.float32)

    def partial(self, task: TaskLike, prefix_text: str) -> float:
        """Integrity ratio of an unfinished prompt, never thresholded, so reward shaping sees a smooth signal.

        The text is scored as typed (an unfinished last word counts as the word it is so far). While a
        prompt without forbidden words is typed word by word the value never decreases.
        """
        return self.ratio(task, prefix_text)

    def details(self, result: EditResult) -> IntegrityDetails:
        """Kept, missing and forbidden-present keywords of one episode, with its ratio and pass/fail."""
        spec = self.keywords(result.task)
        present = prompt_lemmas(result.prompt)
        ratio = integrity_ratio(spec, result.prompt, self.forbidden_penalty, *self._edit_weights(result.task))
        return IntegrityDetails(
            kept=tuple(sorted(spec.required & present)),
            missing=tuple(sorted(spec.required - present)),
            forbidden_present=tuple(sorted(spec.forbidden & present)),
            forbidden_absent=tuple(sorted(spec.forbidden - present)),
            ratio=ratio,
            passed=ratio >= self.threshold - _TOLERANCE,
        )
