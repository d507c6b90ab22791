"""`CountingReward`: records every call of a reward, the unit of a benchmark's budget of reward calls.

A *reward call* is one edited prompt scored (one finished episode; a batched call of N episodes counts N), as
`PPOAgent.num_reward_calls` counts them. The baselines count their calls with this wrapper around the caller's
reward instead of inferring them from an algorithm's settings, and read their learning curves off its records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from promptgym.rewards.base import EditResult, RewardOutput, Scorer
from promptgym.rewards.composite import CompositeReward, RewardWrapper


class CountingReward(RewardWrapper):
    """Scores with `reward` and records every call: how many episodes, their totals and components.

    Everything else (terms, flags, running statistics, `state_dict`) is the wrapped reward's own, so code that reads
    it (`reward_stats`, `clear_reward_caches`, checkpoints) sees the real one.
    """

    def __init__(self, reward: CompositeReward | Scorer) -> None:
        super().__init__(reward)
        self.batch_sizes: list[int] = []  # episodes scored by each call
        self.totals: list[float] = []  # total reward of each episode, in order
        self.components: list[dict[str, float]] = []  # components of each episode, in order

    def __repr__(self) -> str:
        return f"CountingReward({self.inner!r}, reward_calls={self.reward_calls})"

    def __call__(self, results: Sequence[EditResult]) -> RewardOutput:
        output = self.inner(results)
        self.batch_sizes.append(len(output))
        self.totals.extend(output.total.tolist())
        self.components.extend(output.row(i) for i in range(len(output)))
        return output

    @property
    def reward_calls(self) -> int:
        """Episodes scored so far (the budget's unit; one batched call of N episodes counts N)."""
        return len(self.totals)

    @property
    def num_batches(self) -> int:
        """How many times the reward was invoked."""
        return len(self.batch_sizes)

    def mean_since(self, start: int) -> float:
        """Mean total reward of the episodes scored after the first `start` (nan when there are none)."""
        tail = self.totals[start:]
        return float(np.mean(tail)) if tail else math.nan

    def component_means(self, last: int) -> dict[str, float]:
        """Mean of each component over the last `last` episodes (components absent from an episode are skipped)."""
        rows = self.components[-last:] if last > 0 else []
        names = sorted({name for row in rows for name in row})
        return {name: float(np.mean([row[name] for row in rows if name in row])) for name in names}
