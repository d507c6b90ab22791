"""Scripted and random policies: baselines and test fixtures that drive a `PromptEditEnv`.

A scripted typist reads the current task from the environment (which a learned policy must not do) and
types a fixed text for it, one token per step, then EOS. Typing the target is the oracle; typing the
unedited source is the "do nothing" baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from promptgym.envs import EditTask, PromptEditEnv

TEXTS: dict[str, Callable[[EditTask], str]] = {
    "target": lambda task: task.target if task.target is not None else task.source,
    "source": lambda task: task.source,
}


class TypistPolicy:
    """Types `text_for(task)` for the env's current task, token by token, then EOS."""

    def __init__(self, env: PromptEditEnv, text_for: Callable[[EditTask], str] | str = "target") -> None:
        if isinstance(text_for, str):
            if text_for not in TEXTS:
                raise ValueError(f"text_for={text_for!r}; expected a callable or one of {sorted(TEXTS)}")
            text_for = TEXTS[text_for]
        self.env = env.unwrapped
        self.text_for = text_for
        self._tokens: list[int] = []

    def __call__(self, observation: dict[str, np.ndarray]) -> int:
        start = self.env.episodes.max_context_tokens
        written = int(observation["attention_mask"][start:].sum())
        if written == 0:
            completion = self.env.episodes.template.completion(self.text_for(self.env.task))
            ids = self.env.tokenizer(completion, add_special_tokens=False)["input_ids"]
            self._tokens = [*ids, self.env.tokenizer.eos_token_id]
        return self._tokens[min(written, len(self._tokens) - 1)]


class RandomPolicy:
    """Uniformly random token ids from the env's action space (seeded)."""

    def __init__(self, env: Any, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.vocab_size = int(env.action_space.n)

    def __call__(self, observation: dict[str, np.ndarray]) -> int:
        return int(self.rng.integers(self.vocab_size))


def run_episode(
    env: PromptEditEnv, policy: Callable[[dict[str, np.ndarray]], int], seed: int | None = None, options=None
) -> tuple[float, dict[str, Any]]:
    """Play one episode; returns the summed reward and the final step's info."""
    observation, _ = env.reset(seed=seed, options=options)
    total, done, info = 0.0, False, {}
    while not done:
        observation, reward, terminated, truncated, info = env.step(policy(observation))
        total += float(reward)
        done = terminated or truncated
    return total, info
