"""The reward interface: one finished episode (`EditResult`), the `Scorer` protocol and `RewardOutput`.

`promptgym.rewards` imports nothing from the other promptgym packages, so a task is typed structurally
(`TaskLike`): anything with `source`, `instruction`, `target` and `id` attributes, such as
`promptgym.envs.EditTask`, works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TaskLike(Protocol):
    """What a reward needs to know about an edit task (satisfied by `promptgym.envs.EditTask`)."""

    @property
    def source(self) -> str: ...

    @property
    def instruction(self) -> str: ...

    @property
    def target(self) -> str | None: ...

    @property
    def id(self) -> str: ...


@dataclass(frozen=True)
class EditResult:
    """One finished episode: the task and the edited prompt the policy wrote."""

    task: TaskLike
    prompt: str


@runtime_checkable
class Scorer(Protocol):
    """Scores a batch of finished episodes.

    `__call__` returns a float32 CPU tensor of shape `[N]`, one score per `EditResult`, in order.
    """

    name: str

    def __call__(self, results: Sequence[EditResult]) -> torch.Tensor: ...


@dataclass(frozen=True)
class RewardOutput:
    """Total reward `[N]` and every weighted term's raw score `[N]`, keyed by term name."""

    total: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.total.shape[0])

    def row(self, i: int) -> dict[str, float]:
        """Components of episode `i` as plain floats (what an env puts in `info`)."""
        return {name: float(value[i]) for name, value in self.components.items()}


def check_scores(name: str, scores: torch.Tensor, n: int) -> torch.Tensor:
    """Validate a scorer's output: a tensor of shape `[n]`; returns it as float32 on CPU."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scorer {name!r} returned {type(scores).__name__}, expected a torch.Tensor of shape [{n}]")
    if scores.shape != (n,):
        raise ValueError(f"scorer {name!r} returned shape {tuple(scores.shape)}, expected ({n},)")
    return scores.detach().to(device="cpu", dtype=torch.float32)
