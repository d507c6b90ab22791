"""`PromptEditVectorEnv`: N prompt-editing episodes stepped together, scored in one reward call per step.

Rendering-based rewards are only affordable in batches, so every episode that finishes on the same step is
scored by **one** call to the reward. Results equal those of N `PromptEditEnv`s seeded `seed, seed+1, ...`
(or a `SyncVectorEnv` of them).

Autoreset modes (Gymnasium's names):
- `"next_step"` (default): the step after an episode ends resets that sub-environment, ignores its action and
  returns reward 0, as `SyncVectorEnv` does;
- `"disabled"`: a finished sub-environment stays finished — its actions are ignored, its observation is
  frozen, reward 0, terminated and truncated False — until `reset(options={"reset_mask": mask})` or a full
  `reset()`. A rollout collector uses this to gather exactly one episode per sub-environment.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from transformers import PreTrainedTokenizerBase

from promptgym.envs.prompt_edit import build_episodes
from promptgym.envs.tasks import EditTask
from promptgym.envs.templates import EditTemplate
from promptgym.rewards import CompositeReward, EditResult, PotentialShaping, Scorer
from promptgym.rewards.scene import parse_scene

AUTORESET_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED)


def autoreset_mode_of(value: str | AutoresetMode) -> AutoresetMode:
    """The `AutoresetMode` a promptgym vector env accepts for `value` ("next_step"/"disabled", either case)."""
    modes = {m.name.lower(): m for m in AUTORESET_MODES} | {m.value: m for m in AUTORESET_MODES}
    mode = value if isinstance(value, AutoresetMode) else modes.get(str(value))
    if mode not in AUTORESET_MODES:
        raise ValueError(f"autoreset_mode={value!r}; expected one of {sorted(modes)}")
    return mode


def check_num_envs(num_envs: object) -> int:
    if not isinstance(num_envs, (int, np.integer)) or isinstance(num_envs, bool) or num_envs < 1:
        raise ValueError(f"num_envs={num_envs!r}; expected a positive integer")
    return int(num_envs)


class TokenVectorEnv(VectorEnv):
    """What promptgym's vector envs share: token observation buffers over `self.episodes` (an `EditEpisodes`),
    Gymnasium's seeding and reset-mask conventions, per-sub-env reset options, argument checks and autoreset.
    A subclass sets `self.episodes`, calls `_allocate`, and implements `_reset_one(i, options) -> info`;
    `PER_ENV_OPTIONS` maps each per-sub-env reset option (a sequence, one per sub-env) to its single form."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
    AUTORESET_MODES = AUTORESET_MODES
    PER_ENV_OPTIONS: dict[str, str] = {}

    def _allocate(self, num_envs: int, autoreset_mode: AutoresetMode) -> None:
        """Batch size, spaces (from `self.episodes`), all-padding observation buffers, token counts, per-sub-env
        RNGs, and every sub-env needing a reset."""
        self.autoreset_mode = autoreset_mode
        self.metadata = {**self.metadata, "autoreset_mode": autoreset_mode}
        self.num_envs = num_envs
        self.single_observation_space = self.episodes.observation_space
        self.single_action_space = self.episodes.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._input_ids = np.full((num_envs, self.episodes.length), self.episodes.pad_id, dtype=np.int64)
        self._attention_mask = np.zeros((num_envs, self.episodes.length), dtype=np.int8)
        self._num_tokens = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.ones(num_envs, dtype=bool)
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]
        self._was_reset = False

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.episodes.tokenizer

    def _reset_one(self, i: int, options: dict[str, Any] | None) -> dict[str, Any]:
        raise NotImplementedError

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset sub-environments; `seed=s` seeds sub-environment i with `s + i`, as Gymnasium does.
        `options={"reset_mask": bool[num_envs]}` resets only the masked sub-environments."""
        options = dict(options or {})
        reset_mask = self._reset_mask(options.pop("reset_mask", None))
        per_env = self._per_env_options(options)
        seeds = self._seeds(seed)
        self._was_reset = True
        infos: dict[str, Any] = {}
        for i in np.flatnonzero(reset_mask):
            if seeds[i] is not None:
                self._rngs[i] = seeding.np_random(seeds[i])[0]
            infos = self._add_info(infos, self._reset_one(i, per_env[i]), int(i))
        return self._observation(), infos

    def _begin_step(self, actions, idle: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Check the actions, autoreset ("next_step") the sub-envs that finished last step, and write each other
        sub-env's token, but not those of the `idle` sub-envs (bool[num_envs], e.g. chat turns waiting for the
        others). Returns (actions, the sub-envs that reset or were frozen, infos so far)."""
        if not self._was_reset:
            raise RuntimeError("step() called before reset(); call reset() first")
        actions = self._check_actions(actions)
        infos: dict[str, Any] = {}
        resetting = self._needs_reset.copy()  # "disabled": finished episodes stay frozen instead
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            for i in np.flatnonzero(resetting):
                infos = self._add_info(infos, self._reset_one(i, None), int(i))
        stepping = np.flatnonzero(~resetting if idle is None else ~(resetting | idle))
        positions = self.episodes.max_context_tokens + self._num_tokens[stepping]
        self._input_ids[stepping, positions] = actions[stepping]
        self._attention_mask[stepping, positions] = 1
        self._num_tokens[stepping] += 1
        return actions, resetting, infos

    def _end_step(self, done: np.ndarray, resetting: np.ndarray) -> None:
        self._needs_reset = done | (resetting & (self.autoreset_mode == AutoresetMode.DISABLED))

    def _per_env_options(self, options: dict[str, Any]) -> list[dict[str, Any]]:
        """Split the per-sub-environment options (`PER_ENV_OPTIONS`) into one options dict per sub-env."""
        for key, single in self.PER_ENV_OPTIONS.items():
            if key in options:
                values = list(options.pop(key))
                if len(values) != self.num_envs:
                    raise ValueError(f"options[{key!r}] has {len(values)} entries; expected one per sub-env ({self.num_envs})")
                return [{**options, single: value} for value in values]
        return [options] * self.num_envs

    def _generated(self, i: int) -> np.ndarray:
        start = self.episodes.max_context_tokens
        return self._input_ids[i, start : start + self._num_tokens[i]]

    def _reset_mask(self, mask: Any) -> np.ndarray:
        if mask is None:
            return np.ones(self.num_envs, dtype=bool)
        if not isinstance(mask, np.ndarray) or mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
            got = f"{type(mask).__name__} {getattr(mask, 'shape', '')} {getattr(mask, 'dtype', '')}".strip()
            raise ValueError(f"options['reset_mask'] is {got}; expected a bool numpy array of shape ({self.num_envs},)")
        return mask

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed has {len(seeds)} entries; expected one per sub-environment ({self.num_envs})")
        return seeds

    def _check_actions(self, actions) -> np.ndarray:
        array = np.asarray(actions)
        if array.shape != (self.num_envs,) or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"actions has shape {array.shape} and dtype {array.dtype}; expected {self.num_envs} integer token ids"
            )
        bad = np.flatnonzero((array < 0) | (array >= self.episodes.vocab_size))
        if len(bad):
            raise ValueError(
                f"actions[{int(bad[0])}]={int(array[bad[0]])} is outside the action space; "
                f"expected [0, {self.episodes.vocab_size})"
            )
        return array.astype(np.int64, copy=False)

    def _observation(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._input_ids.copy(), "attention_mask": self._attention_mask.copy()}


class PromptEditVectorEnv(TokenVectorEnv):
    """A batch of `num_envs` prompt-editing episodes with batched reward calls.

    Takes the same arguments as `PromptEditEnv` (all sub-environments share tasks, tokenizer and reward).
    Observations are `{"input_ids": int64 [N, L], "attention_mask": int8 [N, L]}`; infos follow Gymnasium's
    vector convention (`info["prompt"]` with mask `info["_prompt"]` on the steps where episodes end).
    """

    PER_ENV_OPTIONS = {"tasks": "task", "task_indices": "task_index"}

    def __init__(
        self,
        num_envs: int,
        tasks: Sequence[EditTask] | str | os.PathLike = "demo",
        tokenizer: PreTrainedTokenizerBase | None = None,
        reward: CompositeReward | Scorer | None = None,
        template: EditTemplate | None = None,
        max_new_tokens: int = 48,
        max_context_tokens: int = 64,
        shaping: PotentialShaping | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
    ) -> None:
        mode, num_envs = autoreset_mode_of(autoreset_mode), check_num_envs(num_envs)
        self.episodes, self.reward = build_episodes(
            tasks, tokenizer, reward, template, max_new_tokens, max_context_tokens
        )
        self.shaping = shaping
        self._allocate(num_envs, mode)
        self._tasks: list[EditTask | None] = [None] * num_envs
        self._phi = np.zeros(num_envs, dtype=np.float64)

    @property
    def tasks(self) -> list[EditTask | None]:
        """The task of each sub-environment's current episode."""
        return list(self._tasks)

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset sub-environments; `seed=s` seeds sub-environment i with `s + i`, as Gymnasium does.

        `options={"reset_mask": bool[num_envs]}` resets only the masked sub-environments. `task` and
        `task_index` apply to every sub-environment that is reset; `tasks` (a sequence of `EditTask`) and
        `task_indices` (a sequence of ints) give one per sub-environment, e.g. to evaluate fixed tasks.
        """
        return super().reset(seed=seed, options=options)

    def step(self, actions):
        actions, resetting, infos = self._begin_step(actions)
        stepping = np.flatnonzero(~resetting)
        terminated = ~resetting & (actions == self.episodes.eos_id)
        truncated = ~resetting & ~terminated & (self._num_tokens >= self.episodes.max_new_tokens)
        done = terminated | truncated
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        finished = np.flatnonzero(done)
        if len(finished):
            infos = self._score(finished, rewards, infos)
        if self.shaping is not None:
            infos = self._add_shaping(stepping, done, rewards, infos)
        self._end_step(done, resetting)
        return self._observation(), rewards, terminated, truncated, infos

    def _score(self, finished: np.ndarray, rewards: np.ndarray, infos: dict[str, Any]) -> dict[str, Any]:
        """Decode every finished episode and score them all in one reward call."""
        prompts = self.episodes.decode_batch([self._generated(i) for i in finished])
        output = self.reward([EditResult(self._tasks[i], p) for i, p in zip(finished, prompts)])
        rewards[finished] = output.total.double().numpy()
        for row, (i, prompt) in enumerate(zip(finished, prompts)):
            info = {
                "prompt": prompt,
                "reward_components": output.row(row),
                "task_id": self._tasks[i].id,
                "num_tokens": int(self._num_tokens[i]),
                "unparsed": " ".join(parse_scene(prompt).unparsed),
            }
            infos = self._add_info(infos, info, int(i))
        return infos

    def _add_shaping(self, stepping: np.ndarray, done: np.ndarray, rewards: np.ndarray, infos: dict[str, Any]):
        for i in stepping:
            text = self.episodes.decode(self._generated(i))
            phi_after = self.shaping.phi(self._tasks[i], text, terminal=bool(done[i]))
            term = self.shaping.term(float(self._phi[i]), phi_after)
            self._phi[i] = phi_after
            rewards[i] += term
            infos = self._add_info(infos, {"shaping": term}, int(i))
        return infos

    def _reset_one(self, i: int, options: dict[str, Any] | None) -> dict[str, Any]:
        task, context = self.episodes.choose(self._rngs[i], options)
        self._input_ids[i], self._attention_mask[i] = self.episodes.start(context)
        self._num_tokens[i] = 0
        self._needs_reset[i] = False
        self._tasks[i] = task
        if self.shaping is not None:
            self._phi[i] = self.shaping.phi(task, "")
        return {"task_id": task.id, "context_tokens": len(context)}
