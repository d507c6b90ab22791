"""DiffChat's PPO for token-level prompt editing.

One update, in the paper's and CleanRL's terms:

1. collect `n_episodes` episodes with the policy (KV-cached, optionally from the locally typical set:
   *action-space dynamic modification*), and, for a `negative_fraction` of them, the task's target with
   keywords corrupted (*negative samples*), teacher-forced and scored by the same reward;
2. per-token reward r_t = env reward_t - kl_coef * KL_t (the episode reward sits on the last token);
3. GAE on V'(s_t) = V(s_t) + eta * CI(s_t) (*integrity-aware value*, eta = `integrity_value_coef`);
4. `n_epochs` passes of minibatches of whole episodes: clipped surrogate, clipped value loss, entropy bonus,
   advantage normalisation, gradient clipping, early stop when approx-KL exceeds 1.5 * `target_kl`.

Hyperparameter names follow Stable-Baselines3; the KL-penalty knobs (`kl_coef`, `kl_target`) are separate
from PPO's early-stop `target_kl`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from promptgym.agents.gae import compute_gae
from promptgym.agents.kl import AdaptiveKLController, FixedKLController, kl_estimate
from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.rollout import (
    RolloutBatch,
    RolloutCollector,
    evaluate_actions,
    keyword_vocabulary,
    negative_samples,
    prefix_integrity,
)
from promptgym.envs import PromptEditVectorEnv
from promptgym.rewards import ContentIntegrityScorer

LOGRATIO_FLOOR = -20.0  # an action outside the current typical set has log-ratio -inf; floor it for the stats


@dataclass
class PPOConfig:
    """PPO hyperparameters (SB3 names) plus DiffChat's refinements; every field is validated.

    `n_episodes` episodes are collected per update (one per env); `batch_size` episodes form a minibatch.
    `old_logprob` chooses the importance ratio: "policy" uses the full policy's log-probs for old and new
    (the sampling restriction is treated as exploration, as generate()-based RLHF does); "restricted" uses
    the log-probs under the typical set for both (the new set recomputed from the current logits; an action
    that left the set has ratio 0). Negatives always use the full policy: they were not sampled.
    """

    learning_rate: float = 1e-4
    n_episodes: int = 32
    batch_size: int = 16
    n_epochs: int = 4
    clip_range: float = 0.2
    clip_range_vf: float | None = 0.2
    gamma: float = 1.0
    gae_lambda: float = 0.95
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 1.0
    target_kl: float | None = None
    normalize_advantage: bool = True
    kl_coef: float = 0.05
    kl_target: float | None = None
    kl_horizon: int = 10_000
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    typical_mass: float | None = None
    old_logprob: Literal["policy", "restricted"] = "policy"
    negative_fraction: float = 0.0
    corruption_rate: float = 0.3
    integrity_value_coef: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low, high, low_open in (
            ("learning_rate", 0.0, math.inf, True),
            ("clip_range", 0.0, math.inf, True),
            ("gamma", 0.0, 1.0, False),
            ("gae_lambda", 0.0, 1.0, False),
            ("ent_coef", -math.inf, math.inf, False),
            ("vf_coef", 0.0, math.inf, False),
            ("max_grad_norm", 0.0, math.inf, True),
            ("kl_coef", 0.0, math.inf, False),
            ("negative_fraction", 0.0, 1.0, False),
            ("corruption_rate", 0.0, 1.0, True),
            ("integrity_value_coef", 0.0, math.inf, False),
        ):
            _check_number(name, getattr(self, name), low, high, low_open)
        for name in ("clip_range_vf", "target_kl", "kl_target"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), 0.0, math.inf, True)
        if self.typical_mass is not None:
            _check_number("typical_mass", self.typical_mass, 0.0, 1.0, True)
        for name in ("n_episodes", "batch_size", "n_epochs", "kl_horizon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PPOConfig.{name}={value!r}; expected a positive integer")
        if self.batch_size > self.n_episodes:
            raise ValueError(f"PPOConfig.batch_size={self.batch_size} exceeds n_episodes={self.n_episodes}")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"PPOConfig.kl_estimator={self.kl_estimator!r}; expected 'k1', 'k2' or 'k3'")
        if self.old_logprob not in ("policy", "restricted"):
            raise ValueError(f"PPOConfig.old_logprob={self.old_logprob!r}; expected 'policy' or 'restricted'")
        if self.old_logprob == "restricted" and self.typical_mass is None:
            raise ValueError("PPOConfig.old_logprob='restricted' needs typical_mass (the restricted set)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"PPOConfig.seed={self.seed!r}; expected an integer")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PPOConfig:
        """Build from a mapping; unknown keys are an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown PPOConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**values)


def _check_number(name: str, value: Any, low: float, high: float, low_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"PPOConfig.{name}={value!r}; expected a number in {bracket}{low}, {high}]")


# -------------------------------------------------------------------------------------- pure functions
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over the True entries of `mask` (0 when there are none)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries; 0 elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return ((x - mean) * torch.rsqrt(var + eps)) * mask


def token_rewards(env_rewards: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor) -> torch.Tensor:
    """r_t = env reward_t - kl_coef * KL_t on real tokens `[B, T]`."""
    return (env_rewards - kl_coef * kl) * mask


def ppo_losses(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    value_targets: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    clip_range_vf: float | None,
) -> dict[str, torch.Tensor]:
    """CleanRL's PPO terms, as token means over `mask`: policy, value and entropy losses, approx-KL, clipfrac."""
    logratio = (new_logprobs - old_logprobs).clamp(min=LOGRATIO_FLOOR)
    ratio = logratio.exp()
    pg_loss = masked_mean(torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)), mask)
    v_loss = (new_values - value_targets) ** 2
    if clip_range_vf is not None:
        clipped = old_values + (new_values - old_values).clamp(-clip_range_vf, clip_range_vf)
        v_loss = torch.max(v_loss, (clipped - value_targets) ** 2)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - logratio, mask)
        clipfrac = masked_mean(((ratio - 1).abs() > clip_range).float(), mask)
    return {
        "policy_loss": pg_loss,
        "value_loss": 0.5 * masked_mean(v_loss, mask),
        "entropy_loss": -masked_mean(entropy, mask),
        "approx_kl": approx_kl,
        "clipfrac": clipfrac,
    }


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[target - prediction] / Var[target] over masked entries (nan when the targets are constant)."""
    t, p = targets[mask], predictions[mask]
    var = t.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (t - p).var(unbiased=False) / var)


# ---------------------------------------------------------------------------------------------- the agent
class PPOAgent:
    """Trains a `PolicyWithValue` on a `PromptEditVectorEnv` (with `autoreset_mode="disabled"`).

    The KL reference is the policy as it is when the agent is built (call after SFT). `integrity` is the
    content-integrity scorer whose `partial` gives CI(s_t) for the integrity-aware value.
    """

    def __init__(
        self,
        policy: PolicyWithValue,
        env: PromptEditVectorEnv,
        config: PPOConfig | None = None,
        integrity: ContentIntegrityScorer | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.config = config or PPOConfig()
        if env.num_envs != self.config.n_episodes:
            raise ValueError(
                f"env.num_envs={env.num_envs} but PPOConfig.n_episodes={self.config.n_episodes}; "
                "build the env with one sub-environment per episode"
            )
        self.policy = policy
        self.env = env
        self.integrity = integrity or ContentIntegrityScorer()
        self.optimizer = optimizer or torch.optim.AdamW(policy.parameters(), lr=self.config.learning_rate)
        c = self.config
        self.kl_controller = (
            AdaptiveKLController(c.kl_coef, c.kl_target, c.kl_horizon) if c.kl_target else FixedKLController(c.kl_coef)
        )
        self.generator = torch.Generator().manual_seed(c.seed)
        self.rng = np.random.default_rng(c.seed)
        self.collector = RolloutCollector(policy, env, c.typical_mass, self.generator)
        self.num_updates = 0
        self.num_episodes = 0
        self.num_reward_calls = 0
        self._vocabulary: list[str] | None = None
        policy.freeze_reference()

    # -- collection
    def collect(self) -> RolloutBatch:
        """Positives from the policy plus keyword-corrupted negatives, with CI(s_t) when the value needs it."""
        c = self.config
        seed = c.seed * 1_000_003 + self.num_updates * self.env.num_envs  # fresh, reproducible tasks per update
        batch = self.collector.collect(seed=seed)
        self.num_reward_calls += len(batch)
        n_negatives = round(c.negative_fraction * len(batch))
        with_target = [task for task in batch.tasks if task.target]
        if n_negatives and with_target:
            picked = self.rng.choice(len(with_target), size=min(n_negatives, len(with_target)), replace=False)
            if self._vocabulary is None:
                self._vocabulary = keyword_vocabulary(self.env.episodes.tasks)
            negatives = negative_samples(
                self.policy,
                self.env,
                [with_target[i] for i in sorted(picked)],
                c.corruption_rate,
                self.rng,
                self._vocabulary,
            )
            self.num_reward_calls += len(negatives)
            batch = RolloutBatch.concat([batch, negatives], pad_id=self.env.episodes.pad_id)
        if c.integrity_value_coef > 0:
            batch.integrity = prefix_integrity(batch, self.env.tokenizer, self.env.episodes.template, self.integrity.partial)
        return batch

    # -- advantages
    def advantages(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-token rewards, advantages, critic targets, per-token KL), all `[B, T]`."""
        c = self.config
        kl = kl_estimate(batch.logprobs, batch.ref_logprobs, c.kl_estimator) * batch.mask
        rewards = token_rewards(batch.env_rewards, kl, self.kl_controller.value, batch.mask)
        ci_bonus = c.integrity_value_coef * batch.integrity if batch.integrity is not None else 0.0
        values = batch.values + ci_bonus  # V'(s_t) = V(s_t) + eta * CI(s_t)
        advantages, returns = compute_gae(rewards, values, batch.mask, c.gamma, c.gae_lambda)
        return rewards, advantages, (returns - ci_bonus) * batch.mask, kl

    # -- update
    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """PPO epochs over minibatches of whole episodes; returns the update's metrics."""
        c = self.config
        rewards, advantages, targets, kl = self.advantages(batch)
        old = batch.sample_logprobs if c.old_logprob == "restricted" else batch.logprobs
        old = torch.where(batch.negative[:, None], batch.logprobs, old)
        stats: dict[str, list[float]] = {}
        self.policy.train()
        epochs_run = 0
        for _ in range(c.n_epochs):
            epochs_run += 1
            order = torch.randperm(len(batch), generator=self.generator)
            approx_kls = []
            for start in range(0, len(batch), c.batch_size):
                rows = order[start : start + c.batch_size]
                terms = self._minibatch_step(batch.rows(rows), advantages[rows], targets[rows], old[rows])
                for name, value in terms.items():
                    stats.setdefault(name, []).append(value)
                approx_kls.append(terms["approx_kl"])
            if c.target_kl is not None and float(np.mean(approx_kls)) > 1.5 * c.target_kl:
                break
        return self._metrics(batch, rewards, advantages, targets, kl, stats, epochs_run)

    def _minibatch_step(self, mb: RolloutBatch, advantages, targets, old_logprobs) -> dict[str, float]:
        c = self.config
        if c.normalize_advantage:
            advantages = masked_whiten(advantages, mb.mask)
        logprobs, values, entropy, restricted = evaluate_actions(self.policy, mb, c.typical_mass)
        if c.old_logprob == "restricted":
            logprobs = torch.where(mb.negative[:, None], logprobs, restricted)
        terms = ppo_losses(
            logprobs, old_logprobs, advantages, values, mb.values, targets, entropy, mb.mask, c.clip_range, c.clip_range_vf
        )
        loss = terms["policy_loss"] + c.ent_coef * terms["entropy_loss"] + c.vf_coef * terms["value_loss"]
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
        self.optimizer.step()
        return {name: float(value.detach()) for name, value in terms.items()} | {"grad_norm": float(grad_norm)}

    def _metrics(self, batch, rewards, advantages, targets, kl, stats, epochs_run) -> dict[str, float]:
        positive = ~batch.negative
        sequence_kl = kl.sum(1)
        ci = self.config.integrity_value_coef * batch.integrity if batch.integrity is not None else 0.0
        metrics = {
            "env/reward_mean": float(batch.scores[positive].mean()),
            "env/reward_std": float(batch.scores[positive].std(unbiased=False)),
            "objective/kl": float(sequence_kl[positive].mean()),
            "objective/kl_coef": float(self.kl_controller.value),
            "objective/entropy": float(masked_mean(batch.entropy, batch.mask & positive[:, None])),
            "objective/non_score_reward": float((rewards.sum(1) - batch.scores)[positive].mean()),
            "ppo/epochs": float(epochs_run),
            "ppo/explained_variance": explained_variance(batch.values + ci, targets + ci, batch.mask),
            "ppo/advantage_mean": float(masked_mean(advantages, batch.mask)),
            "episode/length_mean": float(batch.lengths[positive].float().mean()),
            "positives/reward_mean": float(batch.scores[positive].mean()),
            "negatives/count": float(batch.negative.sum()),
        }
        if batch.negative.any():
            metrics["negatives/reward_mean"] = float(batch.scores[batch.negative].mean())
        for name, values in batch.components.items():
            metrics[f"env/{name}"] = float(values[positive].mean())
        for name, values in stats.items():
            metrics[f"ppo/{name}"] = float(np.mean(values))
        return metrics

    # -- the loop
    def step(self) -> dict[str, float]:
        """One PPO update: collect, update, adapt the KL coefficient. Returns metrics (with timings)."""
        start = time.perf_counter()
        batch = self.collect()
        collected = time.perf_counter()
        metrics = self.update(batch)
        self.kl_controller.update(metrics["objective/kl"], int((~batch.negative).sum()))
        self.num_updates += 1
        self.num_episodes += int((~batch.negative).sum())
        end = time.perf_counter()
        tokens = int(batch.mask[~batch.negative].sum())
        metrics |= {
            "time/collect_s": collected - start,
            "time/update_s": end - collected,
            "time/tokens_per_s": tokens / max(collected - start, 1e-9),
            "counters/updates": float(self.num_updates),
            "counters/episodes": float(self.num_episodes),
            "counters/reward_calls": float(self.num_reward_calls),
        }
        return metrics

    def learn(
        self, num_updates: int, callback: Callable[[dict[str, float]], Any] | None = None, progress: bool = True
    ) -> list[dict[str, float]]:
        """Run `num_updates` updates with a progress bar; `callback(metrics)` after each (return False to stop)."""
        from tqdm.auto import tqdm

        history = []
        bar = tqdm(range(num_updates), desc="PPO", disable=not progress)
        for _ in bar:
            metrics = self.step()
            history.append(metrics)
            bar.set_postfix(reward=f"{metrics['env/reward_mean']:.3f}", kl=f"{metrics['objective/kl']:.3f}")
            if callback is not None and callback(metrics) is False:
                break
        return history

    # -- checkpoints
    def save(self, directory, tokenizer: Any = None, **kwargs) -> Any:
        """Atomic checkpoint of policy, optimizer, KL controller, reward stats, RNGs and counters."""
        from promptgym.agents.checkpoint import save_checkpoint

        return save_checkpoint(
            directory,
            policy=self.policy,
            optimizer=self.optimizer,
            kl_controller=self.kl_controller,
            reward=self.env.reward,
            counters=self._counters(),
            extra={"ppo_config": dataclasses.asdict(self.config)},
            generators={"sampling": self.generator, "negatives": self.rng},
            tokenizer=tokenizer if tokenizer is not None else self.env.tokenizer,
            **kwargs,
        )

    def load(self, directory) -> None:
        """Restore a checkpoint written by `save` into this agent (same config and model shapes)."""
        from promptgym.agents.checkpoint import load_checkpoint

        state = load_checkpoint(
            directory,
            policy=self.policy,
            optimizer=self.optimizer,
            kl_controller=self.kl_controller,
            reward=self.env.reward,
            generators={"sampling": self.generator, "negatives": self.rng},
        )
        self.num_updates = int(state.counters["updates"])
        self.num_episodes = int(state.counters["episodes"])
        self.num_reward_calls = int(state.counters["reward_calls"])

    def _counters(self) -> dict[str, int]:
        return {"updates": self.num_updates, "episodes": self.num_episodes, "reward_calls": self.num_reward_calls}
