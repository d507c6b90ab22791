"""`CountingReward`: records every call of a reward, the unit of a benchmark's budget of reward calls.

A *reward call* is one edited prompt scored (one finished episode; a batched call of N episodes counts N), as
`PPOAgent.num_reward_calls` counts them. The baselines count their calls with this wrapper around the caller's
reward instead of inferring them from an algorithm's settings, and read their learning curves off its records.
"""

from __future__ import annotations

import math
import time
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
        self._clock = (time.perf_counter(), time.process_time())
        self.elapsed: list[dict[str, float]] = []  # per call: wall and CPU seconds since construction when it ended

    def __repr__(self) -> str:
        return f"CountingReward({self.inner!r}, reward_calls={self.reward_calls})"

    def __call__(self, results: Sequence[EditResult]) -> RewardOutput:
        output = self.inner(results)
        self.batch_sizes.append(len(output))
        self.totals.extend(output.total.tolist())
        self.components.extend(output.row(i) for i in range(len(output)))
        self.elapsed.append({"wall_s": time.perf_counter() - self._clock[0], "cpu_s": time.process_time() - self._clock[1]})
        return output

    def elapsed_at(self, reward_calls: int) -> dict[str, float]:
        """Wall and CPU seconds from construction to the end of the call that scored episode `reward_calls` (1-based;
        the training time a learning-curve point at that many reward calls cost; CPU seconds are the process's)."""
        end = 0
        for size, stamp in zip(self.batch_sizes, self.elapsed, strict=True):
            end += size
            if end >= reward_calls:
                return dict(stamp)
        raise ValueError(f"reward_calls={reward_calls}; only {self.reward_calls} episodes were scored")

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
