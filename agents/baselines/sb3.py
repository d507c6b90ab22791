"""Stable-Baselines3 PPO on promptgym's token env, held to a budget of reward calls: the "no LM" baseline.

`run_sb3_ppo` trains `stable_baselines3.PPO` with "MultiInputPolicy" on the token env. `SB3VecEnv` exposes a
`PromptEditVectorEnv` through SB3's `VecEnv` API (instead of a `DummyVecEnv` of `PromptEditEnv`s), so episodes
finishing on the same step are scored in one batched reward call, as for our agent; `TokenFeaturesExtractor` turns
the token observation into features. The policy learns from scratch over the whole vocabulary, with no language-model
prior (optionally its token embedding starts from the SFT'd LM's), so on a few hundred episodes it should stay near
the reward of random text.

The reward calls are counted by a `CountingReward` around the caller's reward; training stops at the first rollout
boundary at or past the budget, and the learning curve has one point per rollout. The global RNG states (SB3 seeds
`random`, numpy and torch globally) are restored afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import DictInfoToList
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from promptgym.agents.baselines.common import (
    RunResult,
    as_tasks,
    check_positive_int,
    check_seed,
    preserved_global_rngs,
    run_result,
)
from promptgym.agents.policy import PolicyWithValue
from promptgym.envs import EditTask, EditTemplate, PromptEditVectorEnv
from promptgym.rewards import CompositeReward, CountingReward, Scorer


class TokenFeaturesExtractor(BaseFeaturesExtractor):
    """SB3 features of a `PromptEditEnv` observation; padding (attention mask 0) never changes them.

    features[B, 4 * embed_dim] = [mean embedding of the context tokens (what was asked),
                                  mean embedding of the generated tokens (what was written; 0 before the first),
                                  embedding of the last real token (what was just written),
                                  a learned embedding of the number of generated tokens (where the episode is)].
    The split between context and generated columns is the env's `max_context_tokens` (`context_length`).
    SB3 hands Box observations over as float tensors; token ids are exact in float32 (vocabularies < 2**24).
    `embedding_init[V, D]` (e.g. an LM's input embeddings) initialises the token embedding and sets its width.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        context_length: int,
        embed_dim: int = 64,
        embedding_init: torch.Tensor | None = None,
    ) -> None:
        if not isinstance(observation_space, spaces.Dict) or set(observation_space.spaces) != {
            "input_ids",
            "attention_mask",
        }:
            raise ValueError(
                f"observation_space={observation_space!r}; expected a Dict with 'input_ids' and 'attention_mask'"
            )
        ids_space = observation_space["input_ids"]
        length = int(ids_space.shape[0])
        vocab_size = int(np.max(ids_space.high)) + 1
        if isinstance(context_length, bool) or not isinstance(context_length, int) or not 0 < context_length < length:
            raise ValueError(f"context_length={context_length!r}; expected an integer in [1, {length - 1}]")
        if embedding_init is not None:
            if embedding_init.ndim != 2 or embedding_init.shape[0] != vocab_size:
                raise ValueError(
                    f"embedding_init has shape {tuple(embedding_init.shape)}; expected [{vocab_size}, embed_dim] "
                    "(one row per token id of the observation space)"
                )
            embed_dim = int(embedding_init.shape[1])
        check_positive_int("embed_dim", embed_dim)
        super().__init__(observation_space, features_dim=4 * embed_dim)
        self.context_length = context_length
        self.tokens = nn.Embedding(vocab_size, embed_dim)
        if embedding_init is not None:
            with torch.no_grad():
                self.tokens.weight.copy_(embedding_init.detach().float())
        self.progress = nn.Embedding(length - context_length + 1, embed_dim)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = observations["input_ids"].long()  # [B, L]
        mask = observations["attention_mask"].float()  # [B, L]
        emb = self.tokens(ids) * mask.unsqueeze(-1)  # [B, L, D], padding rows zeroed
        c = self.context_length
        context = emb[:, :c].sum(1) / mask[:, :c].sum(1, keepdim=True).clamp(min=1.0)  # [B, D]
        written = mask[:, c:].sum(1)  # [B] number of generated tokens
        generated = emb[:, c:].sum(1) / written.unsqueeze(1).clamp(min=1.0)  # [B, D]
        positions = torch.arange(1, ids.shape[1] + 1, device=ids.device, dtype=mask.dtype)
        last_index = (mask * positions).argmax(1)  # [B] the last column with mask 1 (0 if none: a zero row)
        last = emb[torch.arange(ids.shape[0], device=ids.device), last_index]  # [B, D]
        progress = self.progress(written.long())  # [B, D]
        return torch.cat([context, generated, last, progress], dim=-1)


class SB3VecEnv(VecEnv):
    """Stable-Baselines3's `VecEnv` API over a `PromptEditVectorEnv` (built with `autoreset_mode="disabled"`).

    SB3 expects `reset() -> obs`, `step -> (obs, rewards, dones, infos: list[dict])` and an immediate reset of
    finished sub-envs with the last observation in `info["terminal_observation"]`. Finished sub-envs are reset
    with `reset(options={"reset_mask": done})` on the step they end, so every episode that ends on a step is
    still scored in one batched reward call. `info["episode"]` carries SB3's episode statistics (r, l, t).

    `bootstrap_truncated=False` (default) reports `TimeLimit.truncated=False` when an episode reaches
    `max_new_tokens`: the edited prompt is scored then and nothing follows, so there is nothing to bootstrap
    (as our PPO treats it). True makes SB3 add gamma * V(terminal observation) as for a time-out.
    """

    def __init__(self, env: PromptEditVectorEnv, bootstrap_truncated: bool = False) -> None:
        if not isinstance(env, PromptEditVectorEnv):
            raise TypeError(f"env={env!r}; expected a PromptEditVectorEnv")
        if env.autoreset_mode != AutoresetMode.DISABLED:
            raise ValueError(
                f"env has autoreset_mode={env.autoreset_mode.value!r}; build it with autoreset_mode='disabled' "
                "(SB3VecEnv resets finished episodes itself, on the step they end)"
            )
        self.vector_env = env
        self.env = DictInfoToList(env)  # Gymnasium's per-env info dicts, as SB3 wants them
        self.bootstrap_truncated = bool(bootstrap_truncated)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(env.num_envs, dtype=np.float64)
        self._lengths = np.zeros(env.num_envs, dtype=np.int64)
        self._start = time.perf_counter()
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

    def reset(self) -> dict[str, np.ndarray]:
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        options = [o for o in self._options if o]
        if options and (len(options) != self.num_envs or any(o != options[0] for o in options)):
            raise ValueError(f"reset options differ between sub-environments ({self._options}); give one for all")
        obs, infos = self.env.reset(seed=seeds, options=dict(options[0]) if options else None)
        self.reset_infos = infos
        self._returns[:], self._lengths[:] = 0.0, 0
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64)

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions)")
        obs, rewards, terminated, truncated, infos = self.env.step(self._actions)
        self._actions = None
        done = terminated | truncated
        self._returns += rewards
        self._lengths += 1
        for i in np.flatnonzero(done):
            infos[i]["terminal_observation"] = {key: value[i].copy() for key, value in obs.items()}
            infos[i]["TimeLimit.truncated"] = bool(truncated[i]) and self.bootstrap_truncated
            infos[i]["episode"] = {
                "r": float(self._returns[i]),
                "l": int(self._lengths[i]),
                "t": round(time.perf_counter() - self._start, 6),
            }
        if done.any():
            obs, reset_infos = self.env.reset(options={"reset_mask": done})
            for i in np.flatnonzero(done):
                self.reset_infos[i] = reset_infos[i]
            self._returns[done], self._lengths[done] = 0.0, 0
        return obs, rewards.astype(np.float32), done, infos

    def close(self) -> None:
        self.vector_env.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        # One PromptEditVectorEnv holds every sub-environment: an attribute is shared by all of them.
        default = () if attr_name != "render_mode" else (None,)  # SB3 asks for render_mode on construction
        return [getattr(self.vector_env, attr_name, *default)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        raise NotImplementedError("SB3VecEnv sub-environments share one PromptEditVectorEnv; set it there")

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        raise NotImplementedError("SB3VecEnv sub-environments share one PromptEditVectorEnv; call it there")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices=None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)


class BudgetCallback(BaseCallback):
    """Stops SB3 once `counter.reward_calls >= budget` and records a curve point at the end of each rollout."""

    def __init__(self, counter: CountingReward, budget: int) -> None:
        super().__init__()
        self.counter = counter
        self.budget = budget
        self.curve: list[tuple[int, float]] = []
        self._marked = 0

    def _on_step(self) -> bool:
        return self.counter.reward_calls < self.budget

    def _on_rollout_end(self) -> None:
        self.mark()

    def mark(self) -> None:
        """Add (reward calls so far, mean reward since the last point) if episodes were scored since then."""
        if self.counter.reward_calls > self._marked:
            self.curve.append((self.counter.reward_calls, self.counter.mean_since(self._marked)))
            self._marked = self.counter.reward_calls


SB3_PPO_DEFAULTS: dict[str, Any] = dict(  # plus n_steps and batch_size, sized from the rollout in run_sb3_ppo
    learning_rate=3e-4,
    n_epochs=4,
    gamma=1.0,  # one reward at the end of a short episode, undiscounted, as our PPO
    gae_lambda=0.95,
    clip_range=0.2,
    ent_coef=0.0,
    vf_coef=0.5,
    max_grad_norm=0.5,
)


def _input_embeddings(policy_init: PolicyWithValue | nn.Module) -> torch.Tensor:
    model = policy_init.model if isinstance(policy_init, PolicyWithValue) else policy_init
    if not hasattr(model, "get_input_embeddings"):
        raise TypeError(f"policy_init={type(policy_init).__name__}; expected a PolicyWithValue or a transformers LM")
    return model.get_input_embeddings().weight.detach().cpu().clone()


def run_sb3_ppo(
    tasks: Sequence[EditTask] | str | os.PathLike,
    tokenizer: Any,
    reward: CompositeReward | Scorer,
    budget_reward_calls: int,
    seed: int = 0,
    *,
    policy_init: PolicyWithValue | nn.Module | None = None,
    progress: bool = False,
    template: EditTemplate | None = None,
    max_new_tokens: int = 48,
    max_context_tokens: int = 64,
    n_envs: int = 32,
    n_steps: int | None = None,
    embed_dim: int = 64,
    ppo_kwargs: Mapping[str, Any] | None = None,
    device: str = "cpu",
    final_episodes: int = 64,
    eval_tasks: Sequence[EditTask] | str | os.PathLike | None = None,
    eval_episodes: int = 64,
    eval_seed: int = 12345,
) -> RunResult:
    """Train SB3's PPO ("MultiInputPolicy" + `TokenFeaturesExtractor`) on the token env until the reward has
    scored `budget_reward_calls` episodes.

    `n_envs` episodes run side by side (SB3's rollout of `n_steps` per env, default `max_new_tokens`: about one
    episode per env, like one update of our PPO on `n_envs` episodes). `policy_init` (the SFT'd policy) only
    initialises the token embedding from the LM's input embeddings (its width replaces `embed_dim`); SB3's policy
    has no language model. `ppo_kwargs` override `SB3_PPO_DEFAULTS` (and may add `policy_kwargs`).
    """
    budget = check_positive_int("budget_reward_calls", budget_reward_calls)
    seed = check_seed(seed)
    n_envs = check_positive_int("n_envs", n_envs)
    n_steps = check_positive_int("n_steps", n_steps if n_steps is not None else max_new_tokens)
    final_episodes = check_positive_int("final_episodes", final_episodes)
    from stable_baselines3 import PPO

    counter = CountingReward(reward)
    env_kwargs = dict(
        tokenizer=tokenizer,
        template=template,
        max_new_tokens=max_new_tokens,
        max_context_tokens=max_context_tokens,
        autoreset_mode="disabled",
    )
    vector_env = PromptEditVectorEnv(n_envs, tasks=as_tasks(tasks), reward=counter, **env_kwargs)
    extractor_kwargs: dict[str, Any] = {"context_length": max_context_tokens, "embed_dim": embed_dim}
    if policy_init is not None:
        extractor_kwargs["embedding_init"] = _input_embeddings(policy_init)
    rollout = n_steps * n_envs
    # Four minibatches per epoch when the rollout divides evenly (SB3 warns about a truncated last minibatch).
    batch_size = rollout // 4 if rollout % 4 == 0 and rollout >= 8 else rollout
    kwargs = dict(SB3_PPO_DEFAULTS, n_steps=n_steps, batch_size=batch_size) | dict(ppo_kwargs or {})
    policy_kwargs = {
        "features_extractor_class": TokenFeaturesExtractor,
        "features_extractor_kwargs": extractor_kwargs,
    } | dict(kwargs.pop("policy_kwargs", None) or {})
    # Every env finishes an episode at least every max_new_tokens steps: this many env steps always reach the budget.
    total_timesteps = (budget + n_envs) * max_new_tokens + 2 * n_envs * n_steps
    with preserved_global_rngs():
        start = time.perf_counter()
        model = PPO(
            "MultiInputPolicy",
            SB3VecEnv(vector_env),
            policy_kwargs=policy_kwargs,
            seed=seed,
            device=device,
            verbose=0,
            **kwargs,
        )
        callback = BudgetCallback(counter, budget)
        model.learn(total_timesteps=total_timesteps, callback=callback, progress_bar=progress)
        callback.mark()  # the rollout the budget cut short (collected and scored, not trained on)
        wall_time_s = time.perf_counter() - start
        if counter.reward_calls < budget:
            raise RuntimeError(
                f"SB3 PPO stopped after {counter.reward_calls} reward calls, before the budget of {budget}"
            )
        info = {
            "algorithm": "sb3-ppo",
            "n_envs": n_envs,
            "n_steps": n_steps,
            "env_steps": int(model.num_timesteps),
            "ppo_updates": int(model._n_updates // max(1, kwargs["n_epochs"])),
            "reward_batches": counter.num_batches,
            "features_dim": model.policy.features_extractor.features_dim,
            "embedding_from_policy": policy_init is not None,
            "ppo_kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))},
        }
        result = run_result(
            "sb3-ppo", counter, callback.curve, budget, seed, wall_time_s, final_episodes, "scratch", info, model
        )
        if eval_tasks is not None:
            eval_env = PromptEditVectorEnv(
                check_positive_int("eval_episodes", eval_episodes),
                tasks=as_tasks(eval_tasks, "eval_tasks"),
                reward=reward,
                **env_kwargs,
            )
            result.eval_reward, result.eval_components = evaluate_sb3(model, eval_env, eval_seed)
    return result


@torch.no_grad()
def evaluate_sb3(model: Any, env: PromptEditVectorEnv, seed: int) -> tuple[float, dict[str, float]]:
    """Mean reward and components of one sampled episode per sub-env of `env` (autoreset "disabled")."""
    if env.autoreset_mode != AutoresetMode.DISABLED:
        raise ValueError("evaluate_sb3 needs a PromptEditVectorEnv with autoreset_mode='disabled'")
    obs, _ = env.reset(seed=seed)
    done = np.zeros(env.num_envs, dtype=bool)
    rewards = np.zeros(env.num_envs)
    components: list[dict[str, float]] = [{} for _ in range(env.num_envs)]
    with preserved_global_rngs():
        torch.manual_seed(seed)  # SB3 samples actions from torch's global generator
        while not done.all():
            actions, _ = model.predict(obs, deterministic=False)
            obs, step_rewards, terminated, truncated, infos = env.step(actions)
            ended = (terminated | truncated) & ~done
            rewards[ended] += step_rewards[ended]
            for i in np.flatnonzero(ended):
                components[i] = {k: float(v[i]) for k, v in infos["reward_components"].items() if not k.startswith("_")}
            done |= ended
    names = sorted({name for row in components for name in row})
    return float(rewards.mean()), {name: float(np.mean([row[name] for row in components])) for name in names}
