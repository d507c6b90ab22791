"""The reward interface: the task record (`EditTask`), one finished episode (`EditResult`), the `Scorer`
protocol and `RewardOutput`.

`EditTask` is defined here, in the bottom layer, so that rewards, envs, agents and tests share one record
(`promptgym.envs` re-exports it). A reward only reads a task's attributes, so it is typed structurally
(`TaskLike`): a user's own record with `source`, `instruction`, `target` and `id` works too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from promptgym.rewards.scene import Scene, target_scene


@dataclass(frozen=True)
class EditTask:
    """One prompt-editing task.

    `source` is the prompt to edit, `instruction` says how ("make it night time"), `target` is an
    optional reference edit (InstructPE-style), `id` a stable identifier used in logs.
    """

    source: str
    instruction: str
    target: str | None = None
    id: str = ""

    @property
    def target_scene(self) -> Scene | None:
        """The synth-world scene the target asks for (`parse_scene(target).scene`), None without a target."""
        return target_scene(self)


@runtime_checkable
class TaskLike(Protocol):
    """What a reward needs to know about an edit task (satisfied by `EditTask`)."""

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
