"""DiffChat's integrity-aware value: the critic's estimate plus eta times the content integrity of the prefix.

V'(s_t) = V(s_t) + eta * CI(s_t), where CI(s_t) is the partial content integrity of the prompt written before
token t (`ContentIntegrityScorer.partial`: the reward's own keyword matching, in `promptgym.rewards.integrity`).
GAE runs on V'; the critic keeps learning V, so its targets are the GAE returns minus the same bonus.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from promptgym.agents.gae import compute_gae
from promptgym.agents.rollout import RolloutBatch
from promptgym.rewards import TaskLike


def prefix_integrity(
    batch: RolloutBatch, tokenizer, template, partial: Callable[[TaskLike, str], float]
) -> torch.Tensor:
    """CI(s_t) `[B, T]`: `partial(task, text)` of the prompt written before token t (0 on padding)."""
    out = torch.zeros(batch.mask.shape)
    for i, task in enumerate(batch.tasks):
        ids = batch.actions[i, : int(batch.mask[i].sum())].tolist()
        for t in range(len(ids)):
            text = template.clean(tokenizer.decode(ids[:t], skip_special_tokens=True))
            out[i, t] = partial(task, text)
    return out


def integrity_bonus(integrity: torch.Tensor | None, coef: float) -> torch.Tensor | float:
    """eta * CI(s_t) `[B, T]` (eta = `coef`), or 0.0 when CI was not computed."""
    return coef * integrity if integrity is not None else 0.0


def integrity_aware_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    integrity: torch.Tensor | None,
    coef: float,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, critic targets) `[B, T]`: GAE on V' = values + coef * integrity, targets for V itself."""
    bonus = integrity_bonus(integrity, coef)
    advantages, returns = compute_gae(rewards, values + bonus, mask, gamma, lam)  # V'(s_t) = V(s_t) + eta * CI(s_t)
    return advantages, (returns - bonus) * mask
