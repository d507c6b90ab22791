"""Baselines on promptgym's env, reward and budget of reward calls: Stable-Baselines3 PPO, TRL GRPO and RLOO.

Every baseline is held to the same budget as our PPO variants: a *reward call* is one edited prompt scored (one
finished episode, as `PPOAgent.num_reward_calls` counts them), and each baseline stops at the first batch
boundary at or past `budget_reward_calls`, so it uses between `budget` and `budget + batch - 1` calls. The calls
are counted by `CountingReward`, a proxy around the caller's reward, never inferred from the algorithm's
settings; the learning curve is read off the same records: one point (reward calls so far, mean total reward of
the episodes scored since the previous point) per SB3 rollout or TRL generation batch.

- `run_sb3_ppo`: `stable_baselines3.PPO` with "MultiInputPolicy" on the token env. `SB3VecEnv` exposes a
  `PromptEditVectorEnv` through SB3's `VecEnv` API (instead of a `DummyVecEnv` of `PromptEditEnv`s), so episodes
  finishing on the same step are scored in one batched reward call, as for our agent; `TokenFeaturesExtractor`
  turns the token observation into features. The policy learns from scratch over the whole vocabulary, with no
  language-model prior (optionally its token embedding starts from the SFT'd LM's), so on a few hundred episodes
  it should stay near the reward of random text: it is the "no LM" baseline.
- `run_trl`: TRL's `GRPOTrainer` / `RLOOTrainer` on the caller's (SFT'd) policy LM, with the reward through
  `promptgym.rewards.as_trl_reward_func`. The trainer loads its own copy of the LM from a temporary directory,
  so the caller's policy is never modified (TRL mirrors the pad token into the model config, may disable
  dropout, and RLOO builds its KL reference from the model's path).

Both restore the global RNG states (SB3 and TRL seed `random`, numpy and torch globally) and write nothing
outside a temporary (or the given) directory.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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

from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.rollout import RolloutCollector
from promptgym.envs import EditTask, EditTemplate, PromptEditVectorEnv, load_tasks, tasks_to_dataset
from promptgym.envs.prompt_edit import EditEpisodes
from promptgym.rewards import CompositeReward, EditResult, RewardOutput, Scorer, as_composite, as_trl_reward_func

TRL_ALGORITHMS = ("grpo", "rloo")


# ---------------------------------------------------------------------------------------- reward calls
class CountingReward(CompositeReward):
    """A `CompositeReward` that scores with `reward` and records every call: how many episodes, their totals
    and components. `reward_calls` (episodes scored) is the unit of the benchmark's budget."""

    def __init__(self, reward: CompositeReward | Scorer) -> None:
        # CompositeReward.__init__ is not called on purpose: the terms, flags and running statistics are the
        # inner reward's own objects, so code that reads them (reward_stats, clear_reward_caches) sees the real one.
        self.inner = as_composite(reward)
        self.terms = self.inner.terms
        self.normalize = self.inner.normalize
        self.delta = self.inner.delta
        self.on_error = self.inner.on_error
        self.stats = self.inner.stats
        self.batch_sizes: list[int] = []  # episodes scored by each call
        self.totals: list[float] = []  # total reward of each episode, in order
        self.components: list[dict[str, float]] = []  # components of each episode, in order

    def __repr__(self) -> str:
        return f"CountingReward({self.inner!r}, reward_calls={self.reward_calls})"

    def __call__(self, results: Sequence[EditResult]) -> RewardOutput:
        output = self.inner(results)
        self.batch_sizes.append(len(output))
        self.totals.extend(output.total.tolist())
        self.components.extend(output.row(i) for i in range(len(output)))
        return output

    @property
    def reward_calls(self) -> int:
        """Episodes scored so far (the budget's unit; one batched call of N episodes counts N)."""
        return len(self.totals)

    @property
    def num_batches(self) -> int:
        """How many times the reward was invoked."""
        return len(self.batch_sizes)

    def mean_since(self, start: int) -> float:
        """Mean total reward of the episodes scored after the first `start` (nan when there are none)."""
        tail = self.totals[start:]
        return float(np.mean(tail)) if tail else math.nan

    def component_means(self, last: int) -> dict[str, float]:
        """Mean of each component over the last `last` episodes (components absent from an episode are skipped)."""
        rows = self.components[-last:] if last > 0 else []
        names = sorted({name for row in rows for name in row})
        return {name: float(np.mean([row[name] for row in rows if name in row])) for name in names}

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Mapping[str, float]]) -> None:
        self.inner.load_state_dict(state)


# ---------------------------------------------------------------------------------------------- results
@dataclass
class BaselineResult:
    """What a baseline run reports; `to_dict()` is JSON-serialisable (it leaves out `trained`).

    curve: (reward calls so far, mean total reward of the episodes scored since the previous point), x increasing.
    final_reward / final_components: means over the last `final_episodes` training episodes.
    eval_reward / eval_components: means over `eval_episodes` fresh episodes on the evaluation tasks (if asked for;
        these calls are not part of the budget).
    episode_rewards: every training episode's total reward, in order (to recompute any other summary).
    trained: the trained model (SB3 `PPO` object or the TRL-trained causal LM).
    """

    name: str
    curve: list[tuple[int, float]]
    final_reward: float
    final_components: dict[str, float]
    final_episodes: int
    reward_calls: int
    budget_reward_calls: int
    wall_time_s: float
    episode_rewards: list[float] = field(default_factory=list)
    eval_reward: float | None = None
    eval_components: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    trained: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "trained"}
        data["curve"] = [list(point) for point in self.curve]
        return data


def _result(
    name: str,
    counter: CountingReward,
    curve: list[tuple[int, float]],
    budget: int,
    wall_time_s: float,
    final_episodes: int,
    info: dict[str, Any],
    trained: Any,
) -> BaselineResult:
    last = min(final_episodes, counter.reward_calls)
    return BaselineResult(
        name=name,
        curve=curve,
        final_reward=float(np.mean(counter.totals[-last:])) if last else math.nan,
        final_components=counter.component_means(last),
        final_episodes=last,
        reward_calls=counter.reward_calls,
        budget_reward_calls=budget,
        wall_time_s=wall_time_s,
        episode_rewards=list(counter.totals),
        info=info,
        trained=trained,
    )


# ------------------------------------------------------------------------------------------ shared checks
def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}; expected a positive integer")
    return int(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed={seed!r}; expected an integer")
    return int(seed)


def _as_tasks(tasks: Sequence[EditTask] | str | os.PathLike, name: str = "tasks") -> list[EditTask]:
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


# ===================================================================================== Stable-Baselines3
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
        _check_positive_int("embed_dim", embed_dim)
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
) -> BaselineResult:
    """Train SB3's PPO ("MultiInputPolicy" + `TokenFeaturesExtractor`) on the token env until the reward has
    scored `budget_reward_calls` episodes.

    `n_envs` episodes run side by side (SB3's rollout of `n_steps` per env, default `max_new_tokens`: about one
    episode per env, like one update of our PPO on `n_envs` episodes). `policy_init` (the SFT'd policy) only
    initialises the token embedding from the LM's input embeddings (its width replaces `embed_dim`); SB3's policy
    has no language model. `ppo_kwargs` override `SB3_PPO_DEFAULTS` (and may add `policy_kwargs`).
    """
    budget = _check_positive_int("budget_reward_calls", budget_reward_calls)
    seed = _check_seed(seed)
    n_envs = _check_positive_int("n_envs", n_envs)
    n_steps = _check_positive_int("n_steps", n_steps if n_steps is not None else max_new_tokens)
    final_episodes = _check_positive_int("final_episodes", final_episodes)
    from stable_baselines3 import PPO

    counter = CountingReward(reward)
    env_kwargs = dict(
        tokenizer=tokenizer,
        template=template,
        max_new_tokens=max_new_tokens,
        max_context_tokens=max_context_tokens,
        autoreset_mode="disabled",
    )
    vector_env = PromptEditVectorEnv(n_envs, tasks=_as_tasks(tasks), reward=counter, **env_kwargs)
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
        result = _result("sb3-ppo", counter, callback.curve, budget, wall_time_s, final_episodes, info, model)
        if eval_tasks is not None:
            eval_env = PromptEditVectorEnv(
                _check_positive_int("eval_episodes", eval_episodes),
                tasks=_as_tasks(eval_tasks, "eval_tasks"),
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


# ================================================================================================= TRL
def _trainer_class(algorithm: str):
    """TRL's trainer for `algorithm`, with the usage-telemetry ping off (a benchmark run must not call out)."""
    import trl

    base = {"grpo": trl.GRPOTrainer, "rloo": trl.RLOOTrainer}[algorithm]
    return type(f"Offline{base.__name__}", (base,), {"_send_telemetry": lambda self: None})


def _trl_config(algorithm: str, overrides: Mapping[str, Any]):
    import trl

    config_cls = {"grpo": trl.GRPOConfig, "rloo": trl.RLOOConfig}[algorithm]
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"config_overrides has unknown {config_cls.__name__} field(s) {unknown}")
    return config_cls(**overrides)


def run_trl(
    algorithm: str,
    policy: PolicyWithValue | nn.Module,
    tokenizer: Any,
    tasks: Sequence[EditTask] | str | os.PathLike,
    reward: CompositeReward | Scorer,
    budget_reward_calls: int,
    seed: int = 0,
    *,
    batch_size: int = 32,
    num_generations: int = 4,
    max_new_tokens: int = 48,
    max_context_tokens: int = 64,
    learning_rate: float = 1e-4,
    beta: float | None = None,
    num_iterations: int = 1,
    template: EditTemplate | None = None,
    output_dir: str | os.PathLike | None = None,
    use_cpu: bool = True,
    config_overrides: Mapping[str, Any] | None = None,
    progress: bool = False,
    final_episodes: int = 64,
    eval_tasks: Sequence[EditTask] | str | os.PathLike | None = None,
    eval_episodes: int = 64,
    eval_seed: int = 12345,
) -> BaselineResult:
    """Train a copy of `policy`'s LM with TRL's GRPO or RLOO until the reward has scored `budget_reward_calls`
    completions; the caller's `policy` is left untouched.

    Each generation batch is `batch_size` completions (`batch_size / num_generations` prompts, `num_generations`
    completions each, sampled at temperature 1 from the full distribution as our collector does), scored in one
    reward call and used for `num_iterations` optimizer steps. `beta` is the KL coefficient (None: TRL's default,
    0 for GRPO and 0.05 for RLOO). The learning rate is constant, as in our PPO. `config_overrides` set any other
    `GRPOConfig`/`RLOOConfig` field. Single process only. Files go under `output_dir` (default: a temporary
    directory, removed afterwards).
    """
    if algorithm not in TRL_ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r}; expected one of {list(TRL_ALGORITHMS)}")
    budget = _check_positive_int("budget_reward_calls", budget_reward_calls)
    seed = _check_seed(seed)
    batch_size = _check_positive_int("batch_size", batch_size)
    num_generations = _check_positive_int("num_generations", num_generations)
    num_iterations = _check_positive_int("num_iterations", num_iterations)
    final_episodes = _check_positive_int("final_episodes", final_episodes)
    if num_generations < 2 or batch_size % num_generations:
        raise ValueError(
            f"batch_size={batch_size}, num_generations={num_generations}; expected num_generations >= 2 dividing "
            "batch_size (each prompt gets num_generations completions, compared with each other)"
        )
    model = policy.model if isinstance(policy, PolicyWithValue) else policy
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"policy={type(policy).__name__}; expected a PolicyWithValue or a transformers causal LM")
    tasks = _as_tasks(tasks)
    template = template or EditTemplate()
    # The same context check as the env (a context longer than max_context_tokens is an error, never clipped).
    EditEpisodes(tasks, tokenizer, template, max_new_tokens, max_context_tokens)
    counter = CountingReward(reward)
    reward_func = as_trl_reward_func(counter)
    prompts_per_batch = batch_size // num_generations
    # TRL's sampler draws each batch's prompts without replacement: repeat a short task list to fill one batch.
    dataset = tasks_to_dataset(tasks * math.ceil(prompts_per_batch / len(tasks)), template=template)

    with preserved_global_rngs(), _working_dir(output_dir) as work, _transformers_progress_bars(progress):
        start = time.perf_counter()
        model.save_pretrained(work / "policy")  # TRL trains (and RLOO references) its own copy
        settings = dict(
            output_dir=str(work / "trainer"),
            max_steps=1,  # set below, from the resolved generation batch
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=1,
            steps_per_generation=1,
            num_generations=num_generations,
            num_iterations=num_iterations,
            max_completion_length=max_new_tokens,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            learning_rate=learning_rate,
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=use_cpu,
            bf16=False,
            fp16=False,
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
            disable_tqdm=not progress,
        )
        # TRL turns activation checkpointing on by default (pointless for small models); transformers 5 renamed it.
        settings[_checkpointing_flag(algorithm)] = False
        if beta is not None:
            settings["beta"] = beta
        config = _trl_config(algorithm, settings | dict(config_overrides or {}))
        # One generation batch (generation_batch_size completions, one reward call) feeds
        # steps_per_generation * num_iterations micro-steps, i.e. that / gradient_accumulation_steps optimizer steps.
        micro_steps = config.steps_per_generation * config.num_iterations
        if micro_steps % config.gradient_accumulation_steps:
            raise ValueError(
                f"steps_per_generation * num_iterations = {micro_steps} is not a multiple of "
                f"gradient_accumulation_steps={config.gradient_accumulation_steps}; a reward budget needs whole "
                "generation batches per optimizer step"
            )
        generations = math.ceil(budget / config.generation_batch_size)
        config.max_steps = generations * micro_steps // config.gradient_accumulation_steps
        trainer = _trainer_class(algorithm)(
            model=str(work / "policy"),
            reward_funcs=[reward_func],
            args=config,
            train_dataset=dataset,
            processing_class=copy.deepcopy(tokenizer),
        )
        if not progress:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        trainer.train()
        wall_time_s = time.perf_counter() - start
        expected = generations * config.generation_batch_size
        if counter.reward_calls != expected or counter.num_batches != generations:
            raise RuntimeError(
                f"TRL {algorithm} scored {counter.reward_calls} completions in {counter.num_batches} reward calls; "
                f"expected {expected} in {generations} (generation_batch_size={config.generation_batch_size})"
            )
        trained = trainer.accelerator.unwrap_model(trainer.model)
        curve, seen = [], 0
        for size in counter.batch_sizes:  # one point per generation batch (one reward call each)
            curve.append((seen + size, float(np.mean(counter.totals[seen : seen + size]))))
            seen += size
        logs = [entry for entry in trainer.state.log_history if "loss" in entry or "reward" in entry]
        info = {
            "algorithm": f"trl-{algorithm}",
            "trl_version": _trl_version(),
            "optimizer_steps": int(trainer.state.global_step),
            "generation_batches": generations,
            "generation_batch_size": int(config.generation_batch_size),
            "num_generations": num_generations,
            "num_iterations": num_iterations,
            "learning_rate": learning_rate,
            "beta": float(config.beta),
            "max_new_tokens": max_new_tokens,
            "last_log": logs[-1] if logs else {},
        }
        result = _result(f"trl-{algorithm}", counter, curve, budget, wall_time_s, final_episodes, info, trained)
        if eval_tasks is not None:
            eval_env = PromptEditVectorEnv(
                _check_positive_int("eval_episodes", eval_episodes),
                tasks=_as_tasks(eval_tasks, "eval_tasks"),
                tokenizer=tokenizer,
                reward=reward,
                template=template,
                max_new_tokens=max_new_tokens,
                max_context_tokens=max_context_tokens,
                autoreset_mode="disabled",
            )
            # Our collector runs on the CPU: a model trained on an accelerator is moved there for the evaluation.
            result.eval_reward, result.eval_components = evaluate_lm(trained.to("cpu"), eval_env, eval_seed)
    return result


def run_grpo(*args: Any, **kwargs: Any) -> BaselineResult:
    """`run_trl("grpo", ...)`."""
    return run_trl("grpo", *args, **kwargs)


def run_rloo(*args: Any, **kwargs: Any) -> BaselineResult:
    """`run_trl("rloo", ...)`."""
    return run_trl("rloo", *args, **kwargs)


@torch.no_grad()
def evaluate_lm(model: nn.Module, env: PromptEditVectorEnv, seed: int) -> tuple[float, dict[str, float]]:
    """Mean reward and components of one episode per sub-env of `env`, sampled from causal LM `model` with our
    collector (full distribution, temperature 1): the evaluation our PPO variants get."""
    collector = RolloutCollector(PolicyWithValue(model), env, generator=torch.Generator().manual_seed(seed))
    batch = collector.collect(seed=seed, reference=False)
    return float(batch.scores.mean()), {name: float(values.mean()) for name, values in batch.components.items()}


@contextmanager
def _working_dir(output_dir: str | os.PathLike | None) -> Iterator[Path]:
    if output_dir is not None:
        path = Path(output_dir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="promptgym-trl-") as tmp:
        yield Path(tmp)


def _checkpointing_flag(algorithm: str) -> str:
    import trl

    config_cls = {"grpo": trl.GRPOConfig, "rloo": trl.RLOOConfig}[algorithm]
    names = {f.name for f in dataclasses.fields(config_cls)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


@contextmanager
def _transformers_progress_bars(enabled: bool) -> Iterator[None]:
    """Show transformers' save/load progress bars only when `enabled`; restore the global setting after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _trl_version() -> str:
    import trl

    return str(trl.__version__)
