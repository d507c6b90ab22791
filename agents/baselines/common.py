"""What the baselines share: the run record (`RunResult`, also a row of `promptgym bench`), argument checks and the
guard that keeps SB3 and TRL from changing the caller's global random streams."""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from promptgym.envs import EditTask, load_tasks
from promptgym.rewards import CountingReward


@dataclass
class RunResult:
    """One training run held to a budget of reward calls: what `run_sb3_ppo` / `run_trl` return, and a row of
    `promptgym bench` (our PPO variants and the SFT reference too). `to_dict()` is JSON-serialisable (it leaves out
    `trained`).

    variant: what ran ("sb3-ppo", "trl-grpo", "trl-rloo" from the runners; the bench's variant name in a bench row).
    curve: (reward calls so far, mean total reward of the episodes scored since the previous point) per update /
        rollout / generation batch, x increasing.
    curve_components: per curve point, the mean of each reward component over the same episodes (gold metrics
        included on the synth world), `"kl"` (per-episode KL to the start, nats) where the trainer measures it, and
        `"wall_s"` / `"cpu_s"`: the training time spent up to that point (wall, and the process's CPU seconds).
    eval_reward / eval_components: means over `eval_episodes` fresh episodes on the evaluation tasks (None / {} when
        no evaluation was asked for; these calls are not part of the budget).
    eval_kl: mean over the evaluation episodes of sum_t log pi(a_t|s_t) - log pi_start(a_t|s_t) (k1, nats per episode)
        for a language model evaluated against its start (`evaluate_lm_with_kl`); None otherwise.
    reward_calls / budget: reward calls used, and the budget they were held to.
    wall_time_s: training time (evaluation excluded).
    start: "sft" (a copy of the seed's SFT'd policy), "scratch" (SB3: no language model) or "policy" (run_trl: a copy
        of the caller's policy).
    start_sha256: fingerprint of the starting policy's weights (bench LM variants; equal across a seed's variants).
    final_reward / final_components: means over the last `final_episodes` training episodes (baseline runners only).
    episode_rewards: every training episode's total reward, in order (baseline runners only).
    trained: the trained model (SB3 `PPO` object or the TRL-trained causal LM).
    """

    variant: str
    seed: int
    curve: list[tuple[int, float]]
    eval_reward: float | None
    eval_components: dict[str, float]
    reward_calls: int
    budget: int
    wall_time_s: float
    start: str
    start_sha256: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    final_reward: float | None = None
    final_components: dict[str, float] = field(default_factory=dict)
    final_episodes: int = 0
    episode_rewards: list[float] = field(default_factory=list)
    curve_components: list[dict[str, float]] = field(default_factory=list)
    eval_kl: float | None = None
    trained: Any = field(default=None, repr=False, compare=False)

    def to_dict(self, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """The record as plain data, every field but `trained` (or only `fields`, in that order)."""
        data = dataclasses.asdict(dataclasses.replace(self, trained=None))  # never deep-copies the model
        del data["trained"]
        data["curve"] = [list(point) for point in self.curve]
        return data if fields is None else {name: data[name] for name in fields}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """The record `to_dict()` wrote (fields it left out take their defaults)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"trained"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"a run record has unknown field(s) {unknown}; expected fields of RunResult {sorted(known)}")
        values = dict(data)
        values["curve"] = [(int(x), float(y)) for x, y in values.get("curve", [])]
        return cls(**values)


def window_means(rows: Sequence[dict[str, float]], ends: Sequence[int]) -> list[dict[str, float]]:
    """Per window `rows[ends[i-1]:ends[i]]` (the first from 0), the mean of each key over the rows that have it."""
    out, start = [], 0
    for end in ends:
        window = rows[start:end]
        names = sorted({name for row in window for name in row})
        out.append({name: float(np.mean([row[name] for row in window if name in row])) for name in names})
        start = end
    return out


def run_result(
    variant: str,
    counter: CountingReward,
    curve: list[tuple[int, float]],
    budget: int,
    seed: int,
    wall_time_s: float,
    final_episodes: int,
    start: str,
    info: dict[str, Any],
    trained: Any,
) -> RunResult:
    """A baseline's `RunResult` read off the counter of its reward calls (no evaluation yet)."""
    last = min(final_episodes, counter.reward_calls)
    return RunResult(
        variant=variant,
        seed=seed,
        curve=curve,
        curve_components=[means | counter.elapsed_at(int(x)) for means, (x, _)
                          in zip(window_means(counter.components, [int(x) for x, _ in curve]), curve, strict=True)],
        eval_reward=None,
        eval_components={},
        reward_calls=counter.reward_calls,
        budget=budget,
        wall_time_s=wall_time_s,
        start=start,
        info=info,
        final_reward=float(np.mean(counter.totals[-last:])) if last else math.nan,
        final_components=counter.component_means(last),
        final_episodes=last,
        episode_rewards=list(counter.totals),
        trained=trained,
    )


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}; expected a positive integer")
    return int(value)


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed={seed!r}; expected an integer")
    return int(seed)


def as_tasks(tasks: Sequence[EditTask] | str | os.PathLike, name: str = "tasks") -> list[EditTask]:
    """A non-empty list of `EditTask`s from a list or a `load_tasks` spec."""
    tasks = load_tasks(tasks) if isinstance(tasks, (str, os.PathLike)) else list(tasks)
    if not tasks:
        raise ValueError(f"{name} is empty; expected at least one EditTask (or a load_tasks spec such as 'demo')")
    for i, task in enumerate(tasks):
        if not isinstance(task, EditTask):
            raise TypeError(f"{name}[{i}]={task!r}; expected an EditTask")
    return tasks


@contextmanager
def preserved_global_rngs() -> Iterator[None]:
    """Restore Python's, numpy's and torch's (CPU and CUDA) global RNGs and cuDNN's determinism flags on exit:
    SB3 and TRL seed them globally, and a baseline must not change the caller's random streams."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
