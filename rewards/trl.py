"""Use a promptgym reward as a TRL reward function (GRPOTrainer, RLOOTrainer).

TRL calls each entry of `reward_funcs` as `f(prompts, completions, **columns)`, where `columns` holds the
batch's other dataset columns as lists. `promptgym.envs.tasks_to_dataset` builds such a dataset from edit
tasks (a `prompt` column in promptgym's template plus `source`, `instruction`, `target`, `task_id`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from promptgym.rewards.base import EditResult, Scorer
from promptgym.rewards.composite import CompositeReward, as_composite

REQUIRED_COLUMNS = ("source", "instruction")


@dataclass(frozen=True)
class _Task:
    source: str
    instruction: str
    target: str | None = None
    id: str = ""


def _completion_text(completion: Any) -> str:
    """The edited prompt of one completion: a string, or the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion.strip()
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", "")).strip()
    raise TypeError(f"completion={completion!r}; expected a string or a list of chat messages")


def as_trl_reward_func(reward: CompositeReward | Scorer) -> Callable[..., list[float]]:
    """A TRL reward function scoring completions as edited prompts of the `source`/`instruction` columns."""
    composite = as_composite(reward)

    def promptgym_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise KeyError(
                f"the dataset has no column(s) {missing} (got {sorted(columns)}); build it with "
                "promptgym.envs.tasks_to_dataset so TRL passes source and instruction to the reward"
            )
        n = len(completions)
        targets = columns.get("target") or [None] * n
        ids = columns.get("task_id") or [""] * n
        results = [
            EditResult(_Task(src, ins, tgt or None, str(i)), _completion_text(c))
            for src, ins, tgt, i, c in zip(
                columns["source"], columns["instruction"], targets, ids, completions, strict=True
            )
        ]
        return composite(results).total.tolist()

    promptgym_reward.__name__ = "promptgym_reward"  # TRL logs rewards under the function's name
    return promptgym_reward
