"""Diversity of the K candidates a policy writes for one task (Prompt Expansion's question: do they differ?).

Three views, each computed per task over its K sampled edited prompts, then averaged over tasks by the evaluation
(with a percentile-bootstrap CI over tasks, like every other eval metric):

- `distinct_n(texts, n)`, n = 1, 2 (Li et al., 2016, "A diversity-promoting objective function for neural
  conversation models"): the number of distinct n-grams divided by the total number of n-grams, pooled over the K
  texts. Tokens are whitespace-separated words, lowercased (`words`); n-grams never cross from one text into the
  next. K identical texts of distinct words give 1/K; K texts sharing no n-gram give 1. Texts without an n-gram
  (empty, or shorter than n words) add nothing; if no text has one the value is undefined (NaN).
- `diversity` (`promptgym.experiments.stats.task_diversities`): the mean pairwise cosine distance, 1 - cos, of the
  candidates' sentence embeddings (the bundled all-MiniLM-L6-v2 in `promptgym eval`), over the K(K-1)/2 pairs:
  0 for identical candidates, 1 for orthogonal ones.
- `distinct_prompts(texts)`: how many of the K candidates are different prompts, 1..K (compared as their distinct-n
  words, so case and spacing do not count): the plainest sign of a collapsed policy, which writes one prompt K
  times.
- `distinct_scenes(texts)`: how many different synth-world scenes the K candidates ask for, 1..K. A candidate's
  scene is what its *words* state (`promptgym.rewards.scene.parse_scene`), reduced to the content attributes the
  gold judge reads (`Scene.content()`: subject, count, colour, accessory, background, weather, style; quality
  modifiers are how a picture looks, not what it shows, and are left out). The words are used rather than the
  judge's reading of the renders because the parse is exact and free, and because a reading of renders mixes
  the renderer's and judge's noise into the count: two identical candidates, rendered with different seeds or
  read once wrongly, would count as two scenes. The judge's accuracy on the candidates is reported separately as
  `gold/content`; `distinct_scenes` counts what the policy asked for.

With K = 1 none of them says anything about the spread of candidates: `task_diversity` gives NaN for such tasks
(the evaluation adds a note), never an error.

Measured on the previous (60-update) default synth run, SFT start vs PPO after 60 updates (`promptgym eval RUN
--samples 4 --max-tasks 32 --seed 1 --against start`; 32 test tasks, paired changes with 95% CIs over tasks, the README's eval section has the
table): RL collapses diversity. `diversity` 0.062 -> 0.024 (-0.039 [-0.054, -0.022], -62%), distinct-1 0.366 ->
0.238 (-35%), distinct-2 0.419 -> 0.264 (-37%), distinct prompts 3.66 -> 1.44 of 4 (PPO writes one prompt 4 times
on 23 of 32 tasks), distinct scenes 1.25 -> 1.25 (the start's variation was wording and modifiers, not content).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from promptgym.experiments.stats import task_diversities
from promptgym.rewards.scene import parse_scene

__all__ = ["DIVERSITY_METRICS", "distinct_n", "distinct_prompts", "distinct_scenes", "ngrams", "task_diversity", "words"]

# name -> description, in the order the evaluation table lists them
DIVERSITY_METRICS = {
    "diversity": "mean pairwise cosine distance (1 - cos) of a task's samples' sentence embeddings",
    "distinct_1": "distinct words / words over a task's samples (Li et al. 2016; lowercased whitespace words)",
    "distinct_2": "distinct bigrams / bigrams over a task's samples (bigrams within one sample)",
    "distinct_prompts": "number of different prompts among a task's samples (lowercased, whitespace collapsed)",
    "distinct_scenes": "number of different scenes a task's samples ask for (parse_scene of the words, content "
    "attributes only)",
}


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError(f"texts must be a sequence of str, got {texts!r:.80}")
    return list(texts)


def words(text: str) -> list[str]:
    """The tokens of distinct-n: `text` lowercased and split on whitespace (punctuation stays on its word)."""
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The contiguous n-grams of one token sequence (none when it is shorter than n)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}; expected a positive integer")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / total n-grams over `texts` (each text's own n-grams, pooled), in (0, 1]; NaN when the
    texts have no n-gram at all (all empty, or all shorter than n words)."""
    grams = [gram for text in _check_texts(texts) for gram in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def distinct_prompts(texts: Sequence[str]) -> int:
    """How many different prompts `texts` hold, compared as their `words` (case and spacing do not count)."""
    return len({tuple(words(text)) for text in _check_texts(texts)})


def distinct_scenes(texts: Sequence[str]) -> int:
    """How many different scenes (`parse_scene`, content attributes only: modifiers dropped) `texts` ask for."""
    return len({dataclasses.replace(parse_scene(text).scene, modifiers=()) for text in _check_texts(texts)})


def task_diversity(texts_per_task: Sequence[Sequence[str]], embeddings_per_task: Sequence[torch.Tensor] | None = None
                   ) -> dict[str, np.ndarray]:
    """Per task, every `DIVERSITY_METRICS` value of its candidates: `{name: float64 array [tasks]}`.

    `texts_per_task[t]` are task t's K candidate prompts; `embeddings_per_task[t]` their sentence embeddings
    `[K, dim]` (None: `diversity` is NaN everywhere). A task with fewer than 2 candidates is NaN in every metric,
    as is a distinct-n with no n-gram among the task's candidates.
    """
    texts_per_task = [_check_texts(texts) for texts in texts_per_task]
    if embeddings_per_task is not None and len(embeddings_per_task) != len(texts_per_task):
        raise ValueError(f"{len(embeddings_per_task)} embedding sets for {len(texts_per_task)} tasks; expected one "
                         "[K, dim] tensor per task")
    out = {name: np.full(len(texts_per_task), np.nan) for name in DIVERSITY_METRICS}
    if embeddings_per_task is not None:
        for t, (texts, embeddings) in enumerate(zip(texts_per_task, embeddings_per_task)):
            if len(embeddings) != len(texts):
                raise ValueError(f"embeddings_per_task[{t}] has {len(embeddings)} rows for {len(texts)} texts")
        out["diversity"] = task_diversities(embeddings_per_task)
    for t, texts in enumerate(texts_per_task):
        if len(texts) < 2:
            out["diversity"][t] = np.nan
            continue
        out["distinct_1"][t] = distinct_n(texts, 1)
        out["distinct_2"][t] = distinct_n(texts, 2)
        out["distinct_prompts"][t] = distinct_prompts(texts)
        out["distinct_scenes"][t] = distinct_scenes(texts)
    return out
