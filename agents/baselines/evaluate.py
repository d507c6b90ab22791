"""`evaluate_lm`: the final evaluation of a causal LM, the same for our PPO variants and the TRL baselines
(`evaluate_lm_with_kl` adds the KL to the start)."""

from __future__ import annotations

import torch
from torch import nn

from promptgym.agents.kl import kl_estimate
from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.rollout import RolloutBatch, evaluate_actions, sample_episodes
from promptgym.envs import PromptEditVectorEnv


@torch.no_grad()
def evaluate_lm(model: nn.Module, env: PromptEditVectorEnv, seed: int) -> tuple[float, dict[str, float]]:
    """Mean reward and components of one episode per sub-env of `env` (each on the task its seeded reset draws),
    sampled from causal LM `model` by `sample_episodes` (full distribution, temperature 1): the evaluation our PPO
    variants get."""
    return _means(sample_episodes(PolicyWithValue(model), env, seed))


@torch.no_grad()
def evaluate_lm_with_kl(
    model: nn.Module, env: PromptEditVectorEnv, seed: int, reference: nn.Module
) -> tuple[float, dict[str, float], float]:
    """`evaluate_lm` on the same episodes, plus the KL of `model` to `reference` (the run's start) on them: the
    mean over episodes of the summed log-ratio log pi(a_t|s_t) - log pi_ref(a_t|s_t) of the sampled tokens (the
    k1 estimate of KL(pi || pi_ref), nats per episode; the x axis of an over-optimisation plot)."""
    batch = sample_episodes(PolicyWithValue(model), env, seed)
    return (*_means(batch), episode_kl(batch, PolicyWithValue(reference)))


def _means(batch: RolloutBatch) -> tuple[float, dict[str, float]]:
    return float(batch.scores.mean()), {name: float(values.mean()) for name, values in batch.components.items()}


@torch.no_grad()
def episode_kl(batch: RolloutBatch, reference: PolicyWithValue) -> float:
    """Mean over the batch's episodes of sum_t (log pi_old(a_t|s_t) - log pi_ref(a_t|s_t)) over generated tokens."""
    ref_logprobs = evaluate_actions(reference, batch)[0].cpu()
    return float((kl_estimate(batch.logprobs, ref_logprobs, "k1") * batch.mask).sum(1).mean())
