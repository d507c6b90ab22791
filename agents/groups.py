"""Several episodes of one task in an update, and the leave-one-out baseline they allow (RLOO; Ahmadian et al. 2024).

With one episode per task the critic has to tell an easy instruction from a hard one before an advantage says
anything about the tokens, and its explained variance on prompt editing stays low. With `k` episodes of each task
in a batch, the mean return of a task's *other* `k - 1` episodes is an unbiased baseline for each one (it does not
depend on the episode's own actions), so subtracting it from the episode's reward removes the task's difficulty and
leaves what this sample did better or worse than its siblings. PPO's critic and GAE then work on that residual.

`group_task_indices` draws the tasks of an update (each repeated `k` times, groups contiguous), and
`leave_one_out_baseline` is the pure baseline over a flat vector of returns in that order.

`group_improvers` marks the episodes that scored above their siblings' mean (what `PPOConfig.sil_coef` imitates: a
group-relative self-imitation, Oh et al. 2018, on a score such as content integrity).

`TaskReplay` draws part of an update's tasks again from those already seen, by how much their last group's samples
differed (a simplified Prioritized Level Replay; Jiang et al. 2021). A group whose `k` samples all scored the same
gives the leave-one-out baseline nothing to compare, so a task that some samples edit right and some wrong is where
a group can teach; uniform draws over ~1,000 training tasks revisit one such task about twice in a run.
"""

from __future__ import annotations

import numpy as np
import torch


def group_task_indices(rng: np.random.Generator, num_tasks: int, n_episodes: int, group_size: int) -> list[int]:
    """Task indices of `n_episodes` episodes: `n_episodes / group_size` tasks drawn uniformly (with replacement,
    as the env draws them), each repeated `group_size` times in a row."""
    if group_size < 1 or n_episodes % group_size:
        raise ValueError(f"n_episodes={n_episodes} is not a multiple of group_size={group_size}")
    if num_tasks < 1:
        raise ValueError(f"num_tasks={num_tasks}; expected at least one task")
    tasks = rng.integers(num_tasks, size=n_episodes // group_size)
    return np.repeat(tasks, group_size).tolist()


def group_spread(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """For `values[N]` laid out as consecutive groups of `group_size`, each group's population standard deviation
    (`[N / group_size]`): 0 when the group's samples scored alike."""
    if values.dim() != 1 or group_size < 1 or values.numel() % group_size:
        raise ValueError(f"values of shape {tuple(values.shape)} cannot be split into groups of {group_size}")
    return values.double().reshape(-1, group_size).std(dim=1, correction=0)


class TaskReplay:
    """Which tasks an update's groups draw: `round(fraction x tasks)` of them again from the tasks seen before, with
    probability proportional to their score (the spread of their last group, `group_spread`), without replacement
    within an update; the rest uniformly from all tasks, as `group_task_indices` draws them.

    Only seen tasks with a score above 0 are replayed (if fewer than asked, the rest are drawn uniformly). `observe`
    records each group's score after its collection (a task seen again gets its new score), so a task the policy
    has learned (its samples now agree) drops out. `state_dict`/`load_state_dict` (JSON-able) let a resumed run
    draw what the uninterrupted one would."""

    def __init__(self, num_tasks: int, fraction: float) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks={num_tasks}; expected at least one task")
        if isinstance(fraction, bool) or not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction={fraction!r}; expected a number in [0, 1)")
        self.num_tasks = num_tasks
        self.fraction = fraction
        self.scores: dict[int, float] = {}

    def draw(self, rng: np.random.Generator, n_episodes: int, group_size: int) -> tuple[list[int], int]:
        """(task index of every episode, each task repeated `group_size` times in a row, replayed tasks first; how
        many tasks were replayed)."""
        if group_size < 1 or n_episodes % group_size:
            raise ValueError(f"n_episodes={n_episodes} is not a multiple of group_size={group_size}")
        n_tasks = n_episodes // group_size
        candidates = np.array(sorted(task for task, score in self.scores.items() if score > 0), dtype=np.int64)
        n_replay = min(round(self.fraction * n_tasks), len(candidates))
        replayed = np.empty(0, dtype=np.int64)
        if n_replay:
            weights = np.array([self.scores[int(task)] for task in candidates])
            replayed = rng.choice(candidates, size=n_replay, replace=False, p=weights / weights.sum())
        fresh = group_task_indices(rng, self.num_tasks, (n_tasks - n_replay) * group_size, group_size)
        return np.repeat(replayed, group_size).tolist() + fresh, int(n_replay)

    def observe(self, task_indices: list[int], values: torch.Tensor, group_size: int) -> None:
        """Record the score of every group of an update: `task_indices` and `values[N]` per episode, as drawn."""
        if len(task_indices) != values.numel():
            raise ValueError(f"{len(task_indices)} task indices for {values.numel()} values")
        for task, spread in zip(task_indices[::group_size], group_spread(values, group_size).tolist()):
            self.scores[int(task)] = spread

    def state_dict(self) -> dict:
        return {"scores": [[task, score] for task, score in sorted(self.scores.items())]}

    def load_state_dict(self, state: dict) -> None:
        self.scores = {int(task): float(score) for task, score in state["scores"]}


def leave_one_out_baseline(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """For `returns[N]` laid out as consecutive groups of `group_size`, each entry's mean over the other entries of
    its group: (group sum - own) / (group_size - 1)."""
    if returns.dim() != 1:
        raise ValueError(f"returns must have shape [N], got {tuple(returns.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size={group_size}; a leave-one-out baseline needs at least 2 episodes a group")
    if returns.numel() % group_size:
        raise ValueError(f"{returns.numel()} returns cannot be split into groups of {group_size}")
    groups = returns.reshape(-1, group_size)
    return ((groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)).reshape(-1)


def group_improvers(scores: torch.Tensor, group_size: int, tol: float = 1e-9) -> torch.Tensor:
    """For `scores[N]` laid out as consecutive groups of `group_size`, which entries score above the mean of their
    group's other entries (by more than `tol`): bool `[N]`. A group whose entries tie has none."""
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape [N], got {tuple(scores.shape)}")
    scores = scores.double()
    return scores - leave_one_out_baseline(scores, group_size) > tol


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token in a right-padded `mask[B, T]` (-1 for an all-padding row)."""
    return mask.long().sum(dim=1) - 1
