"""`evaluate_lm`: the final evaluation of a causal LM, the same for our PPO variants and the TRL baselines."""

from __future__ import annotations

import torch
from torch import nn

from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.rollout import sample_episodes
from promptgym.envs import PromptEditVectorEnv


@torch.no_grad()
def evaluate_lm(model: nn.Module, env: PromptEditVectorEnv, seed: int) -> tuple[float, dict[str, float]]:
    """Mean reward and components of one episode per sub-env of `env` (each on the task its seeded reset draws),
    sampled from causal LM `model` by `sample_episodes` (full distribution, temperature 1): the evaluation our PPO
    variants get."""
    batch = sample_episodes(PolicyWithValue(model), env, seed)
    return float(batch.scores.mean()), {name: float(values.mean()) for name, values in batch.components.items()}
