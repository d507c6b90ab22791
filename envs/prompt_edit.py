"""`PromptEditEnv`: edit a text-to-image prompt one token at a time.

An episode is one `EditTask`. The observation is the templated context (left-padded to
`max_context_tokens`) followed by the tokens generated so far (right-padded to `max_new_tokens`):

    input_ids:      [pad ... pad | <s> Prompt: ... Edited prompt: | t0 t1 ... t_k | pad ... pad]
    attention_mask: [ 0  ...  0  |  1  ...                    1   |  1  1 ...  1  |  0  ...  0 ]

Each action is one token id. The episode terminates at EOS and is truncated after `max_new_tokens` tokens.
The edited prompt is decoded once, when the episode ends, and scored by the reward on that final step;
intermediate steps give 0 (plus the shaping term when `shaping` is set).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from transformers import PreTrainedTokenizerBase

from promptgym.envs.tasks import EditTask, load_tasks
from promptgym.envs.templates import EditTemplate
from promptgym.rewards import CompositeReward, EditResult, PotentialShaping, Scorer, as_composite
from promptgym.rewards.scene import parse_scene

OPTION_KEYS = ("task", "task_index")
CONTEXT_CACHE_SIZE = 4096  # contexts of tasks given at reset that an env keeps tokenized


def default_reward() -> CompositeReward:
    """The offline default reward: `build_reward("synth")` — the synth world's trained tiny SD renders scored by
    its trained aesthetic MLP and PickScore CLIP (delta against the source prompt) plus content integrity, with
    the gold content and aesthetic as monitors beside them. `build_reward("tiny", tokenizer=...)` is the fast random
    stack (unit tests)."""
    from promptgym.rewards import build_reward

    return build_reward("synth")


class EditEpisodes:
    """What single and vector envs share: tasks, their encoded contexts, spaces, action checks, decoding.

    Contexts of all tasks are tokenised once, here, so `reset` is O(1); a context longer than
    `max_context_tokens` is an error (never silently clipped).
    """

    def __init__(
        self,
        tasks: Sequence[EditTask] | str | os.PathLike,
        tokenizer: PreTrainedTokenizerBase,
        template: EditTemplate,
        max_new_tokens: int,
        max_context_tokens: int,
    ) -> None:
        for name, value in (("max_new_tokens", max_new_tokens), ("max_context_tokens", max_context_tokens)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive integer")
        self.tasks = load_tasks(tasks) if isinstance(tasks, (str, os.PathLike)) else list(tasks)
        if not self.tasks:
            raise ValueError("tasks is empty; expected at least one EditTask (or a spec such as 'demo')")
        for i, task in enumerate(self.tasks):
            if not isinstance(task, EditTask):
                raise TypeError(f"tasks[{i}]={task!r}; expected an EditTask")
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} needs eos_token_id and pad_token_id "
                f"(got eos={tokenizer.eos_token_id}, pad={tokenizer.pad_token_id}); set tokenizer.pad_token"
            )
        self.tokenizer = tokenizer
        self.template = template
        self.max_new_tokens = int(max_new_tokens)
        self.max_context_tokens = int(max_context_tokens)
        self.length = self.max_context_tokens + self.max_new_tokens
        self.vocab_size = len(tokenizer)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        self.contexts = self.encode(self.tasks)
        # Context ids by task for tasks given at reset (`options["task"]`: the PPO agent pins each sub-env's task, so
        # that a task's samples share a context): no tokenizer call per reset.
        self._known_context_ids: dict[EditTask, np.ndarray] = dict(zip(self.tasks, self.contexts))
        self._seen_context_ids: dict[EditTask, np.ndarray] = {}
        self.action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = spaces.Dict(
            {
                "input_ids": spaces.Box(0, self.vocab_size - 1, shape=(self.length,), dtype=np.int64),
                "attention_mask": spaces.Box(0, 1, shape=(self.length,), dtype=np.int8),
            }
        )

    def encode(self, tasks: Sequence[EditTask]) -> list[np.ndarray]:
        """Context token ids of each task (read-only arrays: the env keeps them); raises if any is longer than
        `max_context_tokens`."""
        texts = [self.template.context(task) for task in tasks]
        encoded = [np.asarray(ids, dtype=np.int64) for ids in self.tokenizer(texts)["input_ids"]]
        for ids in encoded:
            ids.flags.writeable = False
        too_long = [(task, len(ids)) for task, ids in zip(tasks, encoded) if len(ids) > self.max_context_tokens]
        if too_long:
            task, length = max(too_long, key=lambda item: item[1])
            raise ValueError(
                f"{len(too_long)} task context(s) exceed max_context_tokens={self.max_context_tokens}; the longest "
                f"(task id={task.id!r}, source={task.source!r}) has {length} tokens. Raise max_context_tokens to "
                f"at least {length} or shorten the tasks."
            )
        return encoded

    def choose(self, rng: np.random.Generator, options: dict[str, Any] | None) -> tuple[EditTask, np.ndarray]:
        """The episode's task and its context ids: from `options`, else uniformly at random with `rng`."""
        options = options or {}
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; accepted options are {list(OPTION_KEYS)}")
        if "task" in options and "task_index" in options:
            raise ValueError("reset options 'task' and 'task_index' are exclusive; give one of them")
        if "task" in options:
            task = options["task"]
            if not isinstance(task, EditTask):
                raise TypeError(f"options['task']={task!r}; expected an EditTask")
            return task, self.context_ids(task)
        if "task_index" in options:
            index = options["task_index"]
            if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < len(self.tasks):
                raise ValueError(f"options['task_index']={index!r}; expected an integer in [0, {len(self.tasks)})")
        else:
            index = int(rng.integers(len(self.tasks)))
        return self.tasks[index], self.contexts[index]

    def context_ids(self, task: EditTask) -> np.ndarray:
        """The context ids of `task`, tokenized once: the known tasks' with the env, other tasks' when first seen (the
        latest `CONTEXT_CACHE_SIZE` are kept)."""
        ids = self._known_context_ids.get(task)
        if ids is None:
            ids = self._seen_context_ids.get(task)
        if ids is None:
            ids = self.encode([task])[0]
            if len(self._seen_context_ids) >= CONTEXT_CACHE_SIZE:
                del self._seen_context_ids[next(iter(self._seen_context_ids))]  # the oldest
            self._seen_context_ids[task] = ids
        return ids

    def check_action(self, action: Any) -> int:
        """The token id of `action`; raises ValueError unless it is an integer in [0, vocab_size)."""
        if isinstance(action, np.ndarray) and action.shape == ():
            action = action.item()
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
            raise ValueError(f"action={action!r}; expected an integer token id in [0, {self.vocab_size})")
        if not 0 <= action < self.vocab_size:
            raise ValueError(f"action={int(action)} is outside the action space; expected [0, {self.vocab_size})")
        return int(action)

    def decode(self, generated: np.ndarray) -> str:
        """The edited prompt from generated token ids (EOS and other special tokens dropped)."""
        return self.template.clean(self.tokenizer.decode(generated.tolist(), skip_special_tokens=True))

    def decode_batch(self, generated: Sequence[np.ndarray]) -> list[str]:
        """`decode` of each row, in one tokenizer call (a fast tokenizer decodes the batch in Rust)."""
        texts = self.tokenizer.batch_decode([ids.tolist() for ids in generated], skip_special_tokens=True)
        return [self.template.clean(text) for text in texts]

    def blank(self) -> tuple[np.ndarray, np.ndarray]:
        """An all-padding observation buffer: input_ids [L] int64 and attention_mask [L] int8."""
        return np.full(self.length, self.pad_id, dtype=np.int64), np.zeros(self.length, dtype=np.int8)

    def start(self, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first observation of an episode: `context` left-padded to end at `max_context_tokens`."""
        input_ids, attention_mask = self.blank()
        input_ids[self.max_context_tokens - len(context) : self.max_context_tokens] = context
        attention_mask[self.max_context_tokens - len(context) : self.max_context_tokens] = 1
        return input_ids, attention_mask


def build_episodes(
    tasks: Sequence[EditTask] | str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | None,
    reward: CompositeReward | Scorer | None,
    template: EditTemplate | None,
    max_new_tokens: int,
    max_context_tokens: int,
) -> tuple[EditEpisodes, CompositeReward]:
    """Episodes and reward for an env, filling in the offline defaults for what is None."""
    if tokenizer is None:
        from promptgym.envs.tokenizer import default_tokenizer

        tokenizer = default_tokenizer()
    episodes = EditEpisodes(tasks, tokenizer, template or EditTemplate(), max_new_tokens, max_context_tokens)
    return episodes, as_composite(reward if reward is not None else default_reward())


class PromptEditEnv(gym.Env):
    """Token-level prompt-editing environment; `PromptEditEnv()` builds the offline default.

    Args:
        tasks: `EditTask`s or a `load_tasks` spec (default: the bundled demo train split).
        tokenizer: any Hugging Face tokenizer with EOS and pad tokens (default: the embedded BPE tokenizer).
        reward: a `CompositeReward` or a single `Scorer` (default: `build_reward("synth")`, the synth
            world's image terms, content integrity and gold monitors; `build_reward("tiny", tokenizer=...)` is the
            fast random stack; pass `ContentIntegrityScorer()` for a render-free reward).
        template: how a task becomes the policy's context.
        max_new_tokens: episode length limit (truncation).
        max_context_tokens: room for the templated context; longer contexts are an error.
        shaping: optional `PotentialShaping`; when set, every step pays F = gamma*Phi(s') - Phi(s), which
            costs a decode of the prefix per step (the base env decodes only once per episode).
        render_mode: None or "ansi" (`render()` returns the context and the text written so far).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        tasks: Sequence[EditTask] | str | os.PathLike = "demo",
        tokenizer: PreTrainedTokenizerBase | None = None,
        reward: CompositeReward | Scorer | None = None,
        template: EditTemplate | None = None,
        max_new_tokens: int = 48,
        max_context_tokens: int = 64,
        shaping: PotentialShaping | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode={render_mode!r}; expected None or one of {self.metadata['render_modes']}")
        self.episodes, self.reward = build_episodes(
            tasks, tokenizer, reward, template, max_new_tokens, max_context_tokens
        )
        self.shaping = shaping
        self.render_mode = render_mode
        self.action_space = self.episodes.action_space
        self.observation_space = self.episodes.observation_space
        self._input_ids, self._attention_mask = self.episodes.blank()
        self._task: EditTask | None = None
        self._num_tokens = 0
        self._done = True
        self._phi = 0.0

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.episodes.tokenizer

    @property
    def tasks(self) -> list[EditTask]:
        return self.episodes.tasks

    @property
    def task(self) -> EditTask | None:
        """The current episode's task (None before the first reset)."""
        return self._task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._task, context = self.episodes.choose(self.np_random, options)
        self._input_ids, self._attention_mask = self.episodes.start(context)
        self._num_tokens = 0
        self._done = False
        if self.shaping is not None:
            self._phi = self.shaping.phi(self._task, "")
        return self._observation(), {"task_id": self._task.id, "context_tokens": len(context)}

    def step(self, action):
        if self._done:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        token = self.episodes.check_action(action)
        position = self.episodes.max_context_tokens + self._num_tokens
        self._input_ids[position] = token
        self._attention_mask[position] = 1
        self._num_tokens += 1
        terminated = token == self.episodes.eos_id
        truncated = not terminated and self._num_tokens >= self.episodes.max_new_tokens
        self._done = terminated or truncated
        reward, info = 0.0, {}
        if self._done:
            prompt = self.episodes.decode(self._generated())
            output = self.reward([EditResult(self._task, prompt)])
            reward = float(output.total[0])
            info = {
                "prompt": prompt,
                "reward_components": output.row(0),
                "task_id": self._task.id,
                "num_tokens": self._num_tokens,
                "unparsed": " ".join(parse_scene(prompt).unparsed),
            }
        if self.shaping is not None:
            shaping = self._shaping_term(terminal=self._done)
            reward += shaping
            info["shaping"] = shaping
        return self._observation(), reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if self._task is None:
            return ""
        text = self.tokenizer.decode(self._generated().tolist(), skip_special_tokens=True)
        return f"{self.episodes.template.context(self._task)}{text}"

    def _generated(self) -> np.ndarray:
        start = self.episodes.max_context_tokens
        return self._input_ids[start : start + self._num_tokens]

    def _shaping_term(self, terminal: bool) -> float:
        phi_after = self.shaping.phi(self._task, self.episodes.decode(self._generated()), terminal=terminal)
        term = self.shaping.term(self._phi, phi_after)
        self._phi = phi_after
        return term

    def _observation(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._input_ids.copy(), "attention_mask": self._attention_mask.copy()}
