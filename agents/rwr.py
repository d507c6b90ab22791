"""Reward-weighted likelihood (RWR): the policy trained on its own samples, each weighted by its reward.

Lee et al. 2023 ("Aligning text-to-image models using human feedback") fine-tune on the model's own samples with
the loss E[r(x, z) * -log p(x | z)] plus a term that keeps the model near its start; Peters & Schaal's
reward-weighted regression uses exp(r / temperature) as the weight. `RWRAgent` does both on a
`PromptEditVectorEnv`: per update it samples `n_episodes` edits with the collector PPO uses (one reward call each),
weights them (`rwr_weights`) and takes `epochs` passes of weighted maximum-likelihood steps over minibatches of
whole episodes, with an anchor to the start policy: the exact KL(pi || pi_start) over the vocabulary at every
visited state (`kl.exact_kl`), times `kl_coef`. There is no critic, no ratio clipping and no importance weight: each
batch is fresh from the current policy, and `epochs > 1` reuses it off-policy as RWR does.

Weighting, over the episodes of one update (rewards r_1..r_N):
- "exp": w_i = N * softmax(z / temperature)_i with z the batch-standardised rewards (RWR; temperature -> inf is
  plain behaviour cloning of the samples, -> 0 keeps only the best);
- "linear": w_i proportional to r_i - min r, scaled to mean 1 (Lee et al.'s r * NLL with binary rewards, made
  shift-invariant).
Equal rewards give every episode weight 1 in both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch

from promptgym.agents.kl import exact_kl, kl_estimate
from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.ppo import masked_mean, run_updates
from promptgym.agents.rollout import RolloutBatch, RolloutCollector, action_logits, reference_action_logits
from promptgym.envs import PromptEditVectorEnv
from promptgym.rewards import reward_seconds

Weighting = Literal["exp", "linear"]
WEIGHTINGS = ("exp", "linear")


@dataclass
class RWRConfig:
    """Settings of `RWRAgent` (see the module docstring for the weighting)."""

    n_episodes: int = 32  # episodes (reward calls) per update, one sub-environment each
    learning_rate: float = 3e-4
    epochs: int = 1  # passes of weighted likelihood over each batch
    minibatch_size: int = 8  # episodes per gradient step
    weighting: Weighting = "exp"
    temperature: float = 1.0  # of the "exp" weights, on batch-standardised rewards
    kl_coef: float = 0.05  # weight of the exact per-token KL(pi || pi_start) anchor; 0 = no anchor
    max_grad_norm: float = 1.0
    typical_mass: float | None = None  # sample from the locally typical set (DiffChat's ADM); None = full policy
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_episodes", "epochs", "minibatch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RWRConfig.{name}={value!r}; expected a positive integer")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"RWRConfig.weighting={self.weighting!r}; expected one of {list(WEIGHTINGS)}")
        for name in ("learning_rate", "temperature", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RWRConfig.{name}={getattr(self, name)!r}; expected a positive number")
        if not self.kl_coef >= 0:
            raise ValueError(f"RWRConfig.kl_coef={self.kl_coef!r}; expected a number >= 0")
        if self.typical_mass is not None and not 0.0 < self.typical_mass <= 1.0:
            raise ValueError(f"RWRConfig.typical_mass={self.typical_mass!r}; expected None or a number in (0, 1]")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RWRConfig:
        """A config from a mapping; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown RWRConfig field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**dict(values))


def rwr_weights(scores: torch.Tensor, weighting: Weighting = "exp", temperature: float = 1.0) -> torch.Tensor:
    """Per-episode weights `[N]` with mean 1 from the episodes' rewards `[N]` (see the module docstring)."""
    if scores.ndim != 1 or scores.numel() == 0:
        raise ValueError(f"scores has shape {tuple(scores.shape)}; expected a non-empty 1-D tensor")
    if not torch.isfinite(scores).all():
        raise ValueError("scores holds a non-finite reward; RWR weights need finite rewards")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}; expected one of {list(WEIGHTINGS)}")
    scores = scores.double()
    n = scores.numel()
    spread = scores.std(unbiased=False) if n > 1 else scores.new_zeros(())
    if spread <= 1e-12 * max(1.0, float(scores.abs().max())):
        return torch.ones(n, dtype=torch.float32)
    if weighting == "exp":
        z = (scores - scores.mean()) / spread
        return (n * torch.softmax(z / temperature, 0)).float()
    shifted = scores - scores.min()
    return (shifted / shifted.mean()).float()


def weighted_nll(logprobs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """-sum_i w_i sum_t log pi(a_it) / (number of generated tokens): reward-weighted likelihood per token."""
    tokens = mask.sum().clamp(min=1)
    return -(weights[:, None] * logprobs * mask).sum() / tokens


class RWRAgent:
    """Reward-weighted likelihood on a `PromptEditVectorEnv` (`autoreset_mode="disabled"`); the KL anchor is the
    policy as it is when the agent is built (call after SFT). Same counters and `step`/`learn` as `PPOAgent`."""

    def __init__(self, policy: PolicyWithValue, env: PromptEditVectorEnv, config: RWRConfig | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self.config = config or RWRConfig()
        if env.num_envs != self.config.n_episodes:
            raise ValueError(f"env.num_envs={env.num_envs} but RWRConfig.n_episodes={self.config.n_episodes}; "
                             "build the env with one sub-environment per episode")
        self.policy = policy
        self.env = env
        self.optimizer = optimizer or torch.optim.AdamW(policy.model.parameters(), lr=self.config.learning_rate)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.collector = RolloutCollector(policy, env, self.config.typical_mass, self.generator)
        self.num_updates = 0
        self.num_episodes = 0
        self.num_reward_calls = 0
        policy.freeze_reference()

    def collect(self) -> RolloutBatch:
        """`n_episodes` fresh episodes of the current policy (reference log-probs included, for the KL metric)."""
        c = self.config
        return self.collector.collect(seed=c.seed * 1_000_003 + self.num_updates * c.n_episodes)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """`epochs` passes of weighted likelihood + KL anchor over minibatches of whole episodes."""
        c = self.config
        batch = batch.to(self.policy.device)
        weights = rwr_weights(batch.scores, c.weighting, c.temperature).to(self.policy.device)
        stats: dict[str, list[float]] = {"loss/nll": [], "loss/kl_anchor": [], "loss/total": []}
        self.policy.train()
        for _ in range(c.epochs):
            order = torch.randperm(len(batch), generator=self.generator)
            for start in range(0, len(batch), c.minibatch_size):
                rows = order[start : start + c.minibatch_size]
                for name, value in self._minibatch_step(batch.rows(rows), weights[rows.to(weights.device)]).items():
                    stats[name].append(value)
        sampled_kl = kl_estimate(batch.logprobs, batch.ref_logprobs, "k1") * batch.mask
        return {
            **{name: float(sum(values) / len(values)) for name, values in stats.items()},
            "rwr/weight_max": float(weights.max()),
            "rwr/effective_sample_size": float(weights.sum() ** 2 / (weights**2).sum()),
            "objective/kl": float(sampled_kl.sum(1).mean()),
            "env/reward_mean": float(batch.scores.mean()),
            "env/reward_std": float(batch.scores.std(unbiased=False)),
            **{f"env/{name}": float(value.float().mean()) for name, value in batch.components.items()},
        }

    def _minibatch_step(self, mb: RolloutBatch, weights: torch.Tensor) -> dict[str, float]:
        c = self.config
        logits, _ = action_logits(self.policy, mb)
        logprobs = logits.log_softmax(-1).gather(-1, mb.actions.unsqueeze(-1)).squeeze(-1)
        mask = mb.mask.float()
        nll = weighted_nll(logprobs, mask, weights)
        loss = nll
        anchor = torch.zeros((), device=logits.device)
        if c.kl_coef > 0:
            anchor = masked_mean(exact_kl(logits, reference_action_logits(self.policy, mb)), mb.mask)
            loss = loss + c.kl_coef * anchor
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.model.parameters(), c.max_grad_norm)
        self.optimizer.step()
        return {"loss/nll": nll.item(), "loss/kl_anchor": anchor.item(), "loss/total": loss.item()}

    def step(self) -> dict[str, float]:
        """One update: collect, weighted-likelihood steps. Returns metrics (with timings)."""
        start, seconds_before = time.perf_counter(), reward_seconds(self.env.reward)
        batch = self.collect()
        collect_end, seconds_after = time.perf_counter(), reward_seconds(self.env.reward)
        metrics = self.update(batch)
        self.num_updates += 1
        self.num_episodes += len(batch)
        self.num_reward_calls += len(batch)
        metrics |= {
            "time/collect_s": collect_end - start,
            "time/update_s": time.perf_counter() - collect_end,
            "counters/updates": float(self.num_updates),
            "counters/episodes": float(self.num_episodes),
            "counters/reward_calls": float(self.num_reward_calls),
        }
        if seconds_before is not None and seconds_after is not None:  # the reward calls (renders included)
            metrics["time/reward_s"] = seconds_after[0] - seconds_before[0]
        return metrics

    def learn(self, num_updates: int, callback: Callable[[dict[str, float]], Any] | None = None,
              progress: bool = True) -> list[dict[str, float]]:
        """Run `num_updates` updates with a progress bar; `callback(metrics)` after each (return False to stop)."""
        return run_updates(self.step, num_updates, "RWR", callback, progress)
