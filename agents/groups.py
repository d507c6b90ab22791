"""Several episodes of one task in an update, and the leave-one-out baseline they allow (RLOO; Ahmadian et al. 2024).

With one episode per task the critic has to tell an easy instruction from a hard one before an advantage says
anything about the tokens, and its explained variance on prompt editing stays low. With `k` episodes of each task
in a batch, the mean return of a task's *other* `k - 1` episodes is an unbiased baseline for each one (it does not
depend on the episode's own actions), so subtracting it from the episode's reward removes the task's difficulty and
leaves what this sample did better or worse than its siblings. PPO's critic and GAE then work on that residual.

`group_task_indices` draws the tasks of an update (each repeated `k` times, groups contiguous), and
`leave_one_out_baseline` is the pure baseline over a flat vector of returns in that order.
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


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token in a right-padded `mask[B, T]` (-1 for an all-padding row)."""
    return mask.long().sum(dim=1) - 1
