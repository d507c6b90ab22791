"""DiffChat's PPO for token-level prompt editing.

One update, in the paper's and CleanRL's terms:

1. collect `n_episodes` episodes with the policy (KV-cached, optionally from the locally typical set:
   *action-space dynamic modification*), and, for a `negative_fraction` of them, the task's target with
   keywords corrupted (*negative samples*), teacher-forced and scored by the same reward; with
   `samples_per_task` k > 1, n_episodes / k tasks, each sampled k times;
2. per-token reward r_t = env reward_t - kl_coef * KL_t (the episode reward sits on the last token; with k > 1 and
   `group_baseline`, minus the mean reward of the task's other k - 1 episodes: RLOO's baseline, `groups.py`);
3. GAE on V'(s_t) = V(s_t) + eta * CI(s_t) (*integrity-aware value*, eta = `integrity_value_coef`);
4. `n_epochs` passes of minibatches of whole episodes: clipped surrogate, clipped value loss, entropy bonus,
   advantage normalisation, gradient clipping, early stop when approx-KL exceeds 1.5 * `target_kl`; with
   `kl_loss_coef`, also the exact per-token KL to the reference (over the whole vocabulary) as a loss term; with
   `sil_coef` (groups only), a self-imitation term: the negative log-likelihood of the episodes whose `sil_score`
   beats the mean of their task's other episodes.

Each DiffChat idea lives in its own file, and this one calls it: typical-set sampling in `sampling.py`,
negatives in `negatives.py`, the integrity-aware value in `integrity_value.py`, GAE in `gae.py`, the KL penalty
and its control in `kl.py`; data-parallel bookkeeping in `distributed.py`. Below: the config, the pure loss
functions, then the agent in loop order, `collect -> advantages -> update -> step`.

Hyperparameter names follow Stable-Baselines3; the KL-penalty knobs (`kl_coef`, `kl_target`) are separate
from PPO's early-stop `target_kl`.

On the multi-turn chat env (`PromptChatVectorEnv(..., sync_turns=True)`) an episode is a conversation: the agent
collects one per sub-env with `ChatRolloutCollector` (one row per turn, the turn's reward on its last token), runs
GAE across each whole conversation (`conversation_gae`: turn 1's tokens see the rewards of later turns), and
draws minibatches of whole conversations (`batch_size` conversations, all their turns together: a minibatch then
holds every turn of the conversations it has, and the data-parallel split stays by episode). A reward call is one
turn scored (`num_reward_calls`: what costs renders); `negative_fraction` is the share of conversations that get
one negative, a uniformly drawn turn whose target is corrupted and teacher-forced after that turn's own context,
standing as an episode of its own. Per-token metrics (reward, KL, length) are per turn; `chat/...` metrics add
per-conversation returns and each turn's reward terms.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from promptgym.agents.conversation import conversation_gae
from promptgym.agents.distributed import SINGLE_PROCESS, DataParallel, GlobalRows
from promptgym.agents.groups import (
    TaskReplay,
    group_improvers,
    group_task_indices,
    last_token_index,
    leave_one_out_baseline,
)
from promptgym.agents.integrity_value import integrity_aware_gae, integrity_bonus, prefix_integrity
from promptgym.agents.kl import AdaptiveKLController, FixedKLController, exact_kl, kl_estimate
from promptgym.agents.negatives import NegativeSampler
from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.rollout import (
    ChatRolloutCollector,
    RolloutBatch,
    RolloutCollector,
    action_logits,
    reference_action_logits,
    score_actions,
)
from promptgym.agents.validation import ConfigError, config_dataclass
from promptgym.envs import PromptChatVectorEnv, PromptEditVectorEnv
from promptgym.rewards import ContentIntegrityScorer, reward_seconds

TERM_NAMES = ("policy_loss", "value_loss", "entropy_loss", "approx_kl", "clipfrac")
LOGRATIO_FLOOR = -20.0  # an action outside the current typical set has log-ratio -inf; floor it for the stats


@config_dataclass
class PPOConfig:
    """PPO hyperparameters (SB3 names) plus DiffChat's refinements; every field is validated (its range is on it).

    `n_episodes` episodes are collected per update (one per env); `batch_size` episodes form a minibatch.
    `old_logprob` chooses the importance ratio: "policy" uses the full policy's log-probs for old and new
    (the sampling restriction is treated as exploration, as generate()-based RLHF does); "restricted" uses
    the log-probs under the typical set for both (the new set recomputed from the current logits; an action
    that left the set has ratio 0). Negatives always use the full policy: they were not sampled.
    """

    learning_rate: Annotated[float, Field(gt=0, description="AdamW learning rate of the policy and value head")] = 1e-4
    n_episodes: Annotated[int, Field(ge=1, description=(
        "episodes collected per update, one per env (data-parallel: the global batch; chat env: conversations)"
    ))] = 32
    batch_size: Annotated[int, Field(ge=1, description=(
        "episodes per minibatch (at most n_episodes; chat env: whole conversations, every turn of each)"
    ))] = 16
    n_epochs: Annotated[int, Field(ge=1, description="passes over an update's episodes")] = 4
    clip_range: Annotated[float, Field(gt=0, description=(
        "surrogate clip: the probability ratio is kept within 1 +- clip_range"
    ))] = 0.2
    clip_range_vf: Annotated[float | None, Field(gt=0, description=(
        "value clip: new values kept within this of the old ones in the value loss; null: unclipped"
    ))] = 0.2
    gamma: Annotated[float, Field(ge=0, le=1, description="discount factor")] = 1.0
    gae_lambda: Annotated[float, Field(ge=0, le=1, description="GAE lambda (bias-variance trade-off)")] = 0.95
    ent_coef: Annotated[float, Field(description="entropy-bonus coefficient of the loss")] = 0.0
    vf_coef: Annotated[float, Field(ge=0, description="value-loss coefficient of the loss")] = 0.5
    max_grad_norm: Annotated[float, Field(gt=0, description="clip the global gradient norm to this")] = 1.0
    target_kl: Annotated[float | None, Field(gt=0, description=(
        "PPO early stop: end an update's epochs once approx-KL exceeds 1.5 * target_kl; null: never"
    ))] = None
    normalize_advantage: Annotated[bool, Field(description="whiten the advantages of each minibatch")] = True
    kl_coef: Annotated[float, Field(ge=0, description=(
        "per-token KL penalty against the reference (SFT) policy, in the reward"
    ))] = 0.05
    kl_target: Annotated[float | None, Field(gt=0, description=(
        "target KL of the adaptive controller that then tunes kl_coef; null: kl_coef stays fixed"
    ))] = None
    kl_horizon: Annotated[int, Field(ge=1, description="horizon (in episodes) of the adaptive KL controller")] = 10_000
    kl_estimator: Annotated[Literal["k1", "k2", "k3"], Field(description=(
        "per-token KL estimator (Schulman's k1, k2 or k3)"
    ))] = "k1"
    kl_loss_coef: Annotated[float, Field(ge=0, description=(
        "exact KL(policy || reference) over the vocabulary at every generated token, as a loss term with this "
        "coefficient (where GRPO puts a sampled estimate); 0: off"
    ))] = 0.0
    typical_mass: Annotated[float | None, Field(gt=0, le=1, description=(
        "DiffChat's action-space dynamic modification: sample from the locally typical set of this probability "
        "mass; null: off"
    ))] = None
    old_logprob: Annotated[Literal["policy", "restricted"], Field(description=(
        "importance ratio from the full policy's log-probs, or from those restricted to the typical set "
        "(needs typical_mass)"
    ))] = "policy"
    negative_fraction: Annotated[float, Field(ge=0, le=1, description=(
        "DiffChat's negative samples: share of the batch added as keyword-corrupted targets (chat env: share of "
        "the conversations that get one, on a random turn); 0: off"
    ))] = 0.0
    corruption_rate: Annotated[float, Field(gt=0, le=1, description=(
        "share of a target's keywords deleted or replaced in a negative sample"
    ))] = 0.3
    integrity_value_coef: Annotated[float, Field(ge=0, description=(
        "DiffChat's integrity-aware value: eta in V'(s) = V(s) + eta * CI(s); 0: off"
    ))] = 0.0
    samples_per_task: Annotated[int, Field(ge=1, description=(
        "episodes of each task in an update: n_episodes / samples_per_task tasks, each sampled this many times "
        "(n_episodes must be a multiple; single edits only)"
    ))] = 1
    group_baseline: Annotated[bool, Field(description=(
        "with samples_per_task > 1, subtract from each episode's reward the mean reward of its task's other "
        "episodes (RLOO's leave-one-out baseline) before GAE"
    ))] = True
    replay_fraction: Annotated[float, Field(ge=0, lt=1, description=(
        "with samples_per_task > 1: the share of an update's tasks drawn again from tasks seen before, with "
        "probability proportional to how much their last group's replay_score differed (a simplified Prioritized "
        "Level Replay; agents/groups.py TaskReplay); 0: every task drawn uniformly"
    ))] = 0.0
    replay_score: Annotated[str, Field(min_length=1, description=(
        "what a group's spread is measured on for replay_fraction: 'return' (the episode's reward as PPO sees it) or "
        "the name of a reward component (e.g. 'integrity', 'reward/unnormalized')"
    ))] = "return"
    sil_coef: Annotated[float, Field(ge=0, description=(
        "with samples_per_task > 1: weight of a self-imitation loss (minus the mean log probability per token) on "
        "the episodes whose sil_score beats the mean of their task's other episodes (agents/groups.py "
        "group_improvers); 0: off"
    ))] = 0.0
    sil_score: Annotated[str, Field(min_length=1, description=(
        "what sil_coef's episodes are chosen by: 'return' (the episode's reward) or the name of a reward component "
        "(e.g. 'integrity': imitate the samples that kept more of the content than their siblings)"
    ))] = "integrity"
    seed: Annotated[int, Field(description="seeds token sampling and minibatch order")] = 0

    def __post_init__(self) -> None:
        if self.batch_size > self.n_episodes:
            raise ConfigError(f"PPOConfig.batch_size={self.batch_size} exceeds n_episodes={self.n_episodes}")
        if self.n_episodes % self.samples_per_task:
            raise ConfigError(f"PPOConfig.n_episodes={self.n_episodes} is not a multiple of "
                              f"samples_per_task={self.samples_per_task}")
        if self.old_logprob == "restricted" and self.typical_mass is None:
            raise ConfigError("PPOConfig.old_logprob='restricted' needs typical_mass (the restricted set)")
        if self.replay_fraction > 0 and self.samples_per_task < 2:
            raise ConfigError(f"PPOConfig.replay_fraction={self.replay_fraction} needs samples_per_task > 1 (a task's "
                              "score is the spread of its group)")
        if self.sil_coef > 0 and self.samples_per_task < 2:
            raise ConfigError(f"PPOConfig.sil_coef={self.sil_coef} needs samples_per_task > 1 (an episode is imitated "
                              "when it beats its task's other episodes)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PPOConfig:
        """Build from a mapping; unknown keys are an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown PPOConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**values)


# -------------------------------------------------------------------------------------- pure functions
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over the True entries of `mask` (0 when there are none)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, mean_of: Callable = masked_mean
) -> torch.Tensor:
    """(x - mean) / std over the masked entries; 0 elsewhere. `mean_of(x, mask)` takes the means (a
    `DataParallel.masked_mean` makes them means over every process's entries)."""
    mean = mean_of(x, mask)
    var = mean_of((x - mean) ** 2, mask)
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
    num_tokens: torch.Tensor | float | None = None,
) -> dict[str, torch.Tensor]:
    """CleanRL's PPO terms, as token means over `mask`: policy, value and entropy losses, approx-KL, clipfrac.

    `num_tokens` divides the token sums instead of `mask.sum()`: data-parallel processes pass the global count,
    so the terms summed over processes are the global token means.
    """
    denominator = mask.sum().clamp(min=1) if num_tokens is None else num_tokens

    def mean(x: torch.Tensor) -> torch.Tensor:
        return (x * mask).sum() / denominator

    logratio = (new_logprobs - old_logprobs).clamp(min=LOGRATIO_FLOOR)
    ratio = logratio.exp()
    pg_loss = mean(torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)))
    v_loss = (new_values - value_targets) ** 2
    if clip_range_vf is not None:
        clipped = old_values + (new_values - old_values).clamp(-clip_range_vf, clip_range_vf)
        v_loss = torch.max(v_loss, (clipped - value_targets) ** 2)
    with torch.no_grad():
        approx_kl = mean((ratio - 1) - logratio)
        clipfrac = mean(((ratio - 1).abs() > clip_range).float())
    return {
        "policy_loss": pg_loss,
        "value_loss": 0.5 * mean(v_loss),
        "entropy_loss": -mean(entropy),
        "approx_kl": approx_kl,
        "clipfrac": clipfrac,
    }


def self_imitation_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, imitate: torch.Tensor, num_tokens: torch.Tensor | float | None = None
) -> torch.Tensor:
    """-sum of log pi(a_t|s_t) over the real tokens of the rows where `imitate[B]` is True, divided by `num_tokens`
    (default: the real tokens of all rows, so the term is a token mean over the minibatch, like `ppo_losses`')."""
    denominator = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
    chosen = mask & imitate[:, None]
    return -torch.where(chosen, logprobs, 0.0).sum() / denominator


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[target - prediction] / Var[target] over masked entries (nan when the targets are constant)."""
    t, p = targets[mask], predictions[mask]
    var = t.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (t - p).var(unbiased=False) / var)


# ---------------------------------------------------------------------------------------------- the agent
@dataclasses.dataclass
class Collected:
    """What `PPOAgent.collect` hands to `PPOAgent.update`: this process's episodes (positives, then negatives)
    and which rows of the global batch they are (`GlobalRows.whole(len(batch))` in one process). For conversations
    `rows` counts episodes, and `batch.episode` says which global episode each row (turn) belongs to."""

    batch: RolloutBatch
    rows: GlobalRows


def run_updates(step: Callable[[], dict[str, float]], num_updates: int, desc: str,
                callback: Callable[[dict[str, float]], Any] | None = None, progress: bool = True) -> list[dict[str, float]]:
    """`step()` `num_updates` times under a progress bar showing reward and KL; `callback(metrics)` after each
    (return False to stop). Returns every update's metrics. The `learn` loop of every agent."""
    from tqdm.auto import tqdm

    history = []
    bar = tqdm(range(num_updates), desc=desc, disable=not progress)
    for _ in bar:
        metrics = step()
        history.append(metrics)
        bar.set_postfix(reward=f"{metrics['env/reward_mean']:.3f}", kl=f"{metrics['objective/kl']:.3f}")
        if callback is not None and callback(metrics) is False:
            break
    return history


class PPOAgent:
    """Trains a `PolicyWithValue` on a `PromptEditVectorEnv` (with `autoreset_mode="disabled"`), or on conversations
    of a `PromptChatVectorEnv` (also with `sync_turns=True`; see the module docstring).

    The KL reference is the policy as it is when the agent is built (call after SFT). `integrity` is the
    content-integrity scorer whose `partial` gives CI(s_t) for the integrity-aware value. Rollouts and losses
    run where the policy is (`policy.to("cuda")` first to train on a GPU).

    With `parallel` (a `DataParallel` of W processes), `n_episodes` is the global batch: each process's env has
    `n_episodes / W` sub-environments, collects its shard, and the gradients and every mean are global (see
    `promptgym.agents.distributed`), so the update is the one a single process would make on the whole batch.
    """

    def __init__(
        self,
        policy: PolicyWithValue,
        env: PromptEditVectorEnv | PromptChatVectorEnv,
        config: PPOConfig | None = None,
        integrity: ContentIntegrityScorer | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        parallel: DataParallel | None = None,
    ) -> None:
        self.config = config or PPOConfig()
        self.parallel = parallel or SINGLE_PROCESS
        world = self.parallel.world_size
        if self.config.n_episodes % world or env.num_envs * world != self.config.n_episodes:
            raise ValueError(
                f"env.num_envs={env.num_envs} with {world} process(es) but PPOConfig.n_episodes="
                f"{self.config.n_episodes}; build the env with n_episodes / processes sub-environments "
                "(one per episode) and make n_episodes a multiple of the number of processes"
            )
        self.policy = policy
        self.env = env
        self.integrity = integrity or ContentIntegrityScorer()
        self.optimizer = optimizer or torch.optim.AdamW(policy.parameters(), lr=self.config.learning_rate)
        c = self.config
        self.kl_controller = (
            AdaptiveKLController(c.kl_coef, c.kl_target, c.kl_horizon) if c.kl_target else FixedKLController(c.kl_coef)
        )
        # token sampling and minibatch order; every process draws the same numbers from both
        self.generator = torch.Generator().manual_seed(c.seed)
        self.conversations = isinstance(env, PromptChatVectorEnv)  # episodes are conversations, rows are turns
        if self.conversations and c.samples_per_task > 1:
            raise ConfigError("PPOConfig.samples_per_task > 1 is for single edits; the chat env draws conversations")
        collector = ChatRolloutCollector if self.conversations else RolloutCollector
        self.collector = collector(policy, env, c.typical_mass, self.generator)
        self.num_updates = 0
        self.num_episodes = 0
        self.num_reward_calls = 0
        self.negatives = NegativeSampler(c.negative_fraction, c.corruption_rate, c.seed, c.n_episodes)
        self.replay = TaskReplay(len(env.episodes.tasks), c.replay_fraction) if c.replay_fraction > 0 else None
        self._replayed = 0  # tasks the last collection replayed (a metric)
        self.parallel.broadcast_parameters(policy)
        policy.freeze_reference()

    # -- collection
    def collect(self) -> Collected:
        """Positives from the policy plus keyword-corrupted negatives, with CI(s_t) when the value needs it.

        Every random choice of an update derives from (seed, update, global episode index), so a process's
        shard holds exactly the rows a single process would collect for them; `Collected.rows` says which rows
        of the global batch (positives first, then negatives) those are.
        """
        c, dp = self.config, self.parallel
        shard = dp.shard(c.n_episodes)
        seed = c.seed * 1_000_003 + self.num_updates * c.n_episodes  # fresh, reproducible tasks per update
        options, tasks = None, None
        if c.samples_per_task > 1:  # the same tasks in every process: drawn from the update's seed, then sharded
            rng = np.random.default_rng(seed)
            if self.replay is None:
                tasks = group_task_indices(rng, len(self.env.episodes.tasks), c.n_episodes, c.samples_per_task)
            else:
                tasks, self._replayed = self.replay.draw(rng, c.n_episodes, c.samples_per_task)
            options = {"task_indices": tasks[shard]}
        batch = self.collector.collect(seed=seed + shard.start, options=options, shard=(shard.start, c.n_episodes))
        if self.replay is not None:
            scores = self._episode_scores(batch, c.replay_score, "replay_score")
            self.replay.observe(tasks, self.parallel.gather(scores), c.samples_per_task)
        candidates = self._negative_rows(batch, shard.start)  # per local episode: the row a negative would copy
        picked = self.negatives.choose([batch.tasks[r] for r in candidates], self.num_updates, dp)  # global episodes
        mine = [g for g in picked if shard.start <= g < shard.stop]
        if mine:
            rows = [candidates[g - shard.start] for g in mine]
            tasks = [batch.tasks[r] for r in rows]
            contexts = [_context_ids(batch, r) for r in rows] if self.conversations else None
            negatives = self.negatives.samples(self.policy, self.env, tasks, mine, self.num_updates, contexts)
            if self.conversations:  # each negative is an episode of its own, after the global positives
                negatives.episode = torch.tensor([c.n_episodes + picked.index(g) for g in mine])
                negatives.turn = batch.turn[rows]
            batch = RolloutBatch.concat([batch, negatives], pad_id=self.env.episodes.pad_id)
        if c.integrity_value_coef > 0:
            batch.integrity = prefix_integrity(
                batch, self.env.tokenizer, self.env.episodes.template, self.integrity.partial
            )
        return Collected(batch, dp.rows_of(c.n_episodes, derived=picked))

    @staticmethod
    def _episode_scores(batch: RolloutBatch, name: str, field: str) -> torch.Tensor:
        """This process's episodes' score `name` (the config's `field` names it): the return (reward summed over the
        episode) or a reward component (the collector's batch: positives only, one row per episode)."""
        if name == "return":
            return (batch.env_rewards * batch.mask).sum(dim=1)
        if name not in batch.components:
            raise ConfigError(f"PPOConfig.{field}={name!r} is not a component of this reward; expected 'return' "
                              f"or one of {sorted(batch.components)}")
        return batch.components[name].float()

    def _negative_rows(self, batch: RolloutBatch, start: int) -> list[int]:
        """For each of this process's episodes, the row of `batch` whose task a negative would corrupt: the episode
        itself, or for a conversation (global index `start + i`) the row of its turn `NegativeSampler.turn_of`."""
        if not self.conversations:
            return list(range(len(batch)))
        episodes = batch.episode.tolist()
        rows = []
        for i in range(self.env.num_envs):
            own = [r for r, e in enumerate(episodes) if e == start + i]
            rows.append(own[self.negatives.turn_of(start + i, len(own), self.num_updates)])
        return rows

    # -- advantages
    def advantages(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-token rewards, advantages, critic targets, per-token KL), all `[B, T]`."""
        c = self.config
        kl = kl_estimate(batch.logprobs, batch.ref_logprobs, c.kl_estimator) * batch.mask
        env_rewards = self._group_centred(batch) if c.samples_per_task > 1 and c.group_baseline else batch.env_rewards
        rewards = token_rewards(env_rewards, kl, self.kl_controller.value, batch.mask)
        if batch.episode is not None:  # turns of conversations: GAE across each whole conversation
            advantages, targets = conversation_gae(rewards, batch.values, batch.mask, batch.episode, batch.turn,
                                                   c.gamma, c.gae_lambda, batch.integrity, c.integrity_value_coef)
            return rewards, advantages, targets, kl
        advantages, targets = integrity_aware_gae(
            rewards, batch.values, batch.integrity, c.integrity_value_coef, batch.mask, c.gamma, c.gae_lambda
        )
        return rewards, advantages, targets, kl

    def _group_centred(self, batch: RolloutBatch) -> torch.Tensor:
        """`batch.env_rewards` with each positive episode's last token lowered by the leave-one-out mean return of
        its task's other episodes; negatives as they are."""
        positive = torch.nonzero(~batch.negative).flatten()
        returns = (batch.env_rewards * batch.mask).sum(dim=1)[positive]
        rewards = batch.env_rewards.clone()
        rewards[positive, last_token_index(batch.mask[positive])] -= self._over_groups(returns, leave_one_out_baseline)
        return rewards

    def imitated(self, batch: RolloutBatch) -> torch.Tensor:
        """Bool `[B]`: the positive episodes whose `sil_score` beats the mean of their task's other episodes; negatives
        never. What `sil_coef` imitates."""
        positive = torch.nonzero(~batch.negative).flatten()
        scores = self._episode_scores(batch, self.config.sil_score, "sil_score")[positive]
        imitate = torch.zeros(len(batch), dtype=torch.bool, device=batch.mask.device)
        imitate[positive] = self._over_groups(scores, group_improvers)
        return imitate

    def _over_groups(self, values: torch.Tensor, per_group: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
        """`per_group(all values, samples_per_task)` over every process's positives (groups may straddle shards),
        then this process's part of it. `values`: one per positive episode of this process, in batch order."""
        start = self.parallel.shard(self.config.n_episodes).start
        return per_group(self.parallel.gather(values), self.config.samples_per_task)[start : start + len(values)]

    # -- update
    def update(self, collected: Collected) -> dict[str, float]:
        """PPO epochs over minibatches of whole episodes; returns the update's (global) metrics.

        Minibatches are drawn from a permutation of the global batch's episodes; each process steps on its rows of
        them (for conversations, every turn of each of its conversations in the minibatch).
        """
        c = self.config
        batch, rows = collected.batch.to(self.policy.device), collected.rows
        rewards, advantages, targets, kl = self.advantages(batch)
        old = batch.sample_logprobs if c.old_logprob == "restricted" else batch.logprobs
        old = torch.where(batch.negative[:, None], batch.logprobs, old)
        imitate = self.imitated(batch) if c.sil_coef > 0 else None
        stats: dict[str, list[float]] = {}
        unit = _local_episode_of_rows(batch, rows)
        self.policy.train()
        epochs_run = 0
        for _ in range(c.n_epochs):
            epochs_run += 1
            order = torch.randperm(rows.size, generator=self.generator)
            approx_kls = []
            for mb in rows.minibatches(order, c.batch_size):
                if unit is not None:  # this process's episodes of the minibatch -> all their rows
                    mb = torch.nonzero(torch.isin(unit, mb)).flatten()
                terms = self._minibatch_step(batch.rows(mb), advantages[mb], targets[mb], old[mb],
                                             None if imitate is None else imitate[mb])
                for name, value in terms.items():
                    stats.setdefault(name, []).append(value)
                approx_kls.append(terms["approx_kl"])
            if c.target_kl is not None and float(np.mean(approx_kls)) > 1.5 * c.target_kl:
                break
        metrics = self._metrics(batch, rewards, advantages, targets, kl, stats, epochs_run)
        if imitate is not None:
            metrics["sil/episodes"] = self.parallel.sum_float(float(imitate.sum()))[0]
        return metrics

    def _minibatch_step(self, mb: RolloutBatch, advantages, targets, old_logprobs,
                        imitate: torch.Tensor | None = None) -> dict[str, float]:
        """One gradient step on this process's rows of a minibatch (possibly none); returns global terms. `imitate`
        (bool per row, with `sil_coef`): the rows the self-imitation term trains on."""
        c, dp = self.config, self.parallel
        num_tokens = dp.sum(mb.mask.sum().float()).clamp(min=1)
        if c.normalize_advantage:
            advantages = masked_whiten(advantages, mb.mask, mean_of=dp.masked_mean)
        names = TERM_NAMES + (("kl_loss",) if c.kl_loss_coef else ()) + (("sil_loss",) if imitate is not None else ())
        self.optimizer.zero_grad()
        if len(mb):
            logits, values = action_logits(self.policy, mb)
            logprobs, entropy, restricted = score_actions(logits, mb.actions, c.typical_mass)
            if imitate is not None:  # on the full policy's log-probs, before a typical-set restriction
                sil_loss = self_imitation_loss(logprobs, mb.mask, imitate, num_tokens)
            if c.old_logprob == "restricted":
                logprobs = torch.where(mb.negative[:, None], logprobs, restricted)
            terms = ppo_losses(
                logprobs, old_logprobs, advantages, values, mb.values, targets, entropy, mb.mask,
                c.clip_range, c.clip_range_vf, num_tokens,
            )  # fmt: skip
            loss = terms["policy_loss"] + c.ent_coef * terms["entropy_loss"] + c.vf_coef * terms["value_loss"]
            if c.kl_loss_coef:
                terms["kl_loss"] = self._exact_kl_loss(mb, logits, num_tokens)
                loss = loss + c.kl_loss_coef * terms["kl_loss"]
            if imitate is not None:
                terms["sil_loss"] = sil_loss
                loss = loss + c.sil_coef * sil_loss
            loss.backward()
            values_now = [float(terms[name].detach()) for name in names]
        else:
            values_now = [0.0] * len(names)
        dp.all_reduce_gradients(self.policy.parameters())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
        self.optimizer.step()
        return dict(zip(names, dp.sum_float(*values_now))) | {"grad_norm": float(grad_norm)}

    def _exact_kl_loss(self, mb: RolloutBatch, logits: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
        """Token mean (over the global minibatch) of the exact KL(policy || reference) at each generated token."""
        return (exact_kl(logits, reference_action_logits(self.policy, mb)) * mb.mask).sum() / num_tokens

    # -- the loop
    def _profile_counters(self) -> tuple[float, float | None, float | None]:
        """(reference-pass seconds, reward-call seconds, render seconds) so far (None: not a CompositeReward)."""
        seconds = reward_seconds(self.env.reward)
        return (self.collector.reference_seconds, *(seconds if seconds is not None else (None, None)))

    @staticmethod
    def _collect_profile(collect_s: float, before: tuple, after: tuple) -> dict[str, float]:
        """Where the collection's time went: `time/reference_s` (the KL reference pass), `time/render_s` (the
        renderer), `time/score_s` (the reward's scoring on top of the renders), `time/rollout_s` (the rest:
        sampling, env bookkeeping, negatives' forward passes, integrity prefixes). They add up to collect_s."""
        reference = after[0] - before[0]
        if after[1] is None:
            return {"time/reference_s": reference, "time/rollout_s": collect_s - reference}
        reward, render = after[1] - before[1], after[2] - before[2]
        return {"time/reference_s": reference, "time/render_s": render, "time/score_s": reward - render,
                "time/rollout_s": collect_s - reference - reward}

    def step(self) -> dict[str, float]:
        """One PPO update: collect, update, adapt the KL coefficient. Returns metrics (with timings)."""
        start, before = time.perf_counter(), self._profile_counters()
        collected = self.collect()
        collect_end, after = time.perf_counter(), self._profile_counters()
        metrics = self.update(collected)
        batch = collected.batch
        positives, tokens, calls, episodes = self.parallel.sum_float(
            float((~batch.negative).sum()), float(batch.mask[~batch.negative].sum()), float(len(batch)),
            float(self.env.num_envs),
        )
        self.kl_controller.update(metrics["objective/kl"], int(positives))  # objective/kl is per row (turn)
        self.num_updates += 1
        self.num_episodes += int(episodes)  # sampled episodes (conversations on the chat env)
        self.num_reward_calls += int(calls)
        end = time.perf_counter()
        metrics |= {
            "time/collect_s": collect_end - start,
            "time/update_s": end - collect_end,
            **self._collect_profile(collect_end - start, before, after),
            "time/tokens_per_s": tokens / max(collect_end - start, 1e-9),
            "counters/updates": float(self.num_updates),
            "counters/episodes": float(self.num_episodes),
            "counters/reward_calls": float(self.num_reward_calls),
        }
        if self.replay is not None:
            metrics |= {"replay/tasks": float(self._replayed),
                        "replay/scored_tasks": float(sum(score > 0 for score in self.replay.scores.values()))}
        return metrics

    def learn(
        self, num_updates: int, callback: Callable[[dict[str, float]], Any] | None = None, progress: bool = True
    ) -> list[dict[str, float]]:
        """Run `num_updates` updates with a progress bar; `callback(metrics)` after each (return False to stop)."""
        return run_updates(self.step, num_updates, "PPO", callback, progress)

    # -- metrics
    def _metrics(self, batch, rewards, advantages, targets, kl, stats, epochs_run) -> dict[str, float]:
        dp = self.parallel
        positive = ~batch.negative
        ci = integrity_bonus(batch.integrity, self.config.integrity_value_coef)

        def mean(x: torch.Tensor, where: torch.Tensor) -> float:
            return float(dp.masked_mean(x, where))

        reward_mean = mean(batch.scores, positive)
        num_negatives = dp.sum_float(float(batch.negative.sum()))[0]
        metrics = {
            "env/reward_mean": reward_mean,
            "env/reward_std": mean((batch.scores - reward_mean) ** 2, positive) ** 0.5,
            "objective/kl": mean(kl.sum(1), positive),
            "objective/kl_coef": float(self.kl_controller.value),
            "objective/entropy": mean(batch.entropy, batch.mask & positive[:, None]),
            "objective/non_score_reward": mean(rewards.sum(1) - batch.scores, positive),
            "ppo/epochs": float(epochs_run),
            "ppo/explained_variance": self._explained_variance(batch.values + ci, targets + ci, batch.mask),
            "ppo/advantage_mean": mean(advantages, batch.mask),
            "episode/length_mean": mean(batch.lengths.float(), positive),
            "positives/reward_mean": reward_mean,
            "negatives/count": num_negatives,
        }
        if num_negatives:
            metrics["negatives/reward_mean"] = mean(batch.scores, batch.negative)
        for name in sorted(batch.components):  # one order in every process: each mean is a collective
            metrics[f"env/{name}"] = mean(batch.components[name], positive)
        for name, values in stats.items():
            metrics[f"ppo/{name}"] = float(np.mean(values))
        if batch.episode is not None:
            metrics |= self._conversation_metrics(batch)
        return metrics

    def _conversation_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        """`chat/return_mean` (sum of a conversation's turn rewards), `chat/turns_mean`, and per turn k (1-based)
        and for each conversation's last turn: `chat/turn{k}/reward`, `chat/last/reward` and each reward term
        (`chat/last/gold/content`: the gold content after the last turn), over the sampled conversations."""
        dp, positive = self.parallel, ~batch.negative
        last = positive & _is_last_turn(batch)
        episodes = self.env.num_envs
        returns_sum, turns_sum = dp.sum_float(float(batch.scores[positive].sum()), float(positive.sum()))
        total = dp.sum_float(float(episodes))[0]
        metrics = {"chat/return_mean": returns_sum / total, "chat/turns_mean": turns_sum / total}
        max_turn = int(dp.gather(batch.turn.max().reshape(1).to(dp.device)).max())  # same keys in every process
        groups = {f"turn{k + 1}": positive & (batch.turn == k) for k in range(max_turn + 1)} | {"last": last}
        for group, where in groups.items():
            metrics[f"chat/{group}/reward"] = float(dp.masked_mean(batch.scores, where))
            for name in sorted(batch.components):
                metrics[f"chat/{group}/{name}"] = float(dp.masked_mean(batch.components[name], where))
        return metrics

    def _explained_variance(self, predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
        """`explained_variance` over the global batch."""
        dp = self.parallel
        residual = targets - predictions
        var_t = dp.masked_mean((targets - dp.masked_mean(targets, mask)) ** 2, mask)
        var_r = dp.masked_mean((residual - dp.masked_mean(residual, mask)) ** 2, mask)
        return float("nan") if var_t == 0 else float(1 - var_r / var_t)

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
            extra={"ppo_config": dataclasses.asdict(self.config)}
            | ({"task_replay": self.replay.state_dict()} if self.replay is not None else {}),
            generators={"sampling": self.generator},
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
            generators={"sampling": self.generator},
        )
        if self.replay is not None:
            if "task_replay" not in state.extra:
                raise ValueError(f"checkpoint {str(directory)!r} has no task replay state; it was saved with "
                                 "ppo.replay_fraction=0")
            self.replay.load_state_dict(state.extra["task_replay"])
        self.num_updates = int(state.counters["updates"])
        self.num_episodes = int(state.counters["episodes"])
        self.num_reward_calls = int(state.counters["reward_calls"])

    def _counters(self) -> dict[str, int]:
        return {"updates": self.num_updates, "episodes": self.num_episodes, "reward_calls": self.num_reward_calls}


def _context_ids(batch: RolloutBatch, row: int) -> np.ndarray:
    """Row `row`'s context token ids (without the left padding)."""
    context = slice(0, batch.context_length)
    return batch.input_ids[row, context][batch.attention_mask[row, context] == 1].cpu().numpy()


def _local_episode_of_rows(batch: RolloutBatch, rows: GlobalRows) -> torch.Tensor | None:
    """`[B]`: for each row of a conversation batch, the index of its episode among this process's episodes
    (`rows.held`, global ids); None for a single-turn batch, whose rows are its episodes."""
    if batch.episode is None:
        return None
    local_of = {int(g): u for u, g in enumerate(rows.held.tolist())}
    return torch.tensor([local_of[int(g)] for g in batch.episode.tolist()], dtype=torch.long)


def _is_last_turn(batch: RolloutBatch) -> torch.Tensor:
    """`[B]` bool: the row is the last turn of its episode in `batch`."""
    latest: dict[int, tuple[int, int]] = {}  # episode -> (turn, row)
    for r, (e, k) in enumerate(zip(batch.episode.tolist(), batch.turn.tolist())):
        latest[e] = max(latest.get(e, (k, r)), (k, r))
    last = torch.zeros(len(batch), dtype=torch.bool)
    last[[r for _, r in latest.values()]] = True
    return last.to(batch.turn.device)
