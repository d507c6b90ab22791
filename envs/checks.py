"""`check_shaping`: verify numerically, on random episodes of an env, that its shaping term is potential-based.

Potential-based shaping (Ng, Harada & Russell, 1999) pays F_t = gamma * Phi(s_{t+1}) - Phi(s_t) at every step, so
an episode's discounted sum of shaping terms telescopes to gamma^T * Phi(s_T) - Phi(s_0) and cannot change which
policy is optimal. `check_shaping` steps the env with random valid actions and, at every step, recomputes Phi
itself, from the task and the prompt written so far (decoded from the observation's generated tokens), with the
shaping's public `phi` and `gamma`, never with its `term`. It then compares what the env paid (`info["shaping"]`,
and the step's reward, which on a non-final step is the shaping term alone) with gamma * Phi(s') - Phi(s), and each
episode's discounted sum with gamma^T Phi(s_T) - Phi(s_0). The env's termination semantics are used: the state after
the last step (EOS, or truncation at `max_new_tokens`) is terminal, so `phi(..., terminal=True)` gives its Phi.

It lives in `promptgym.envs`, not beside `PotentialShaping` in `promptgym.rewards`: Phi is a function of the task and
the prefix text, and neither is in the Gymnasium API on an intermediate step (the observation holds token ids; text
needs the env's tokenizer and template), so recomputing Phi needs the env's decoder, and rewards/ imports nothing
of envs/.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from promptgym.envs.prompt_edit import EditEpisodes
from promptgym.rewards import PotentialShaping

__all__ = ["ShapingCheckError", "ShapingCheckWarning", "ShapingReport", "check_shaping"]

REL_TOL = 1e-9  # relative float round-off allowed on top of `atol` (large potentials round in absolute terms)


class ShapingCheckError(AssertionError):
    """The env's shaping is not potential-based: names the `episode` and `step` (0-based) where it breaks."""

    def __init__(self, message: str, episode: int, step: int) -> None:
        super().__init__(message)
        self.episode = episode
        self.step = step


class ShapingCheckWarning(UserWarning):
    """A soft issue: the sums telescope, but the shaping may still change the optimal policy."""


@dataclass(frozen=True)
class ShapingReport:
    """What `check_shaping` ran: episodes (terminated at EOS / truncated), steps, and the largest deviations of a
    step's term from gamma*Phi(s') - Phi(s) and of an episode's discounted sum from gamma^T Phi(s_T) - Phi(s_0);
    `max_abs_phi` is the largest |Phi| met (0: the potential never moved, so the check saw nothing)."""

    episodes: int
    terminated: int
    truncated: int
    steps: int
    max_step_error: float
    max_sum_error: float
    max_abs_phi: float
    warnings: tuple[str, ...]


class _Episode:
    """One episode's bookkeeping: its task, Phi(s_t) recomputed here, and the discounted sum of paid terms."""

    def __init__(self, index: int, task: Any, shaping: PotentialShaping, target_ids: list[int]) -> None:
        self.index, self.task, self.shaping = index, task, shaping
        self.phi0 = self.phi = shaping.phi(task, "")
        self.steps = 0
        self.discounted = 0.0
        self.target_ids = target_ids  # the tokens a "follow the target" action writes, in order
        self.followed = 0


class _Check:
    def __init__(self, shaping: PotentialShaping, episodes: EditEpisodes, atol: float, seed: int,
                 eos_probability: float) -> None:
        self.shaping = shaping
        self.episodes = episodes
        self.atol = atol
        self.rng = np.random.default_rng(seed)
        self.eos_probability = eos_probability
        self.counts = {"terminated": 0, "truncated": 0, "steps": 0, "started": 0}
        self.max_step_error = 0.0
        self.max_sum_error = 0.0
        self.max_abs_phi = 0.0
        self.warned: dict[str, None] = {}

    def start(self, task: Any) -> _Episode:
        text = task.target or task.source
        ids = self.episodes.tokenizer(text, add_special_tokens=False)["input_ids"]
        self.counts["started"] += 1
        return _Episode(self.counts["started"] - 1, task, self.shaping, list(ids))

    def action(self, episode: _Episode) -> int:
        """EOS with `eos_probability`; else the next token of the task's target (so Phi moves) or a random token."""
        u = self.rng.random()
        if u < self.eos_probability:
            return self.episodes.eos_id
        if u < 0.65 and episode.followed < len(episode.target_ids):
            episode.followed += 1
            return int(episode.target_ids[episode.followed - 1])
        return int(self.rng.integers(self.episodes.vocab_size))

    def text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> str:
        """The prompt written so far, from an observation: its generated tokens (mask 1 after the context)."""
        start = self.episodes.max_context_tokens
        generated = input_ids[start:][attention_mask[start:] == 1]
        return self.episodes.decode(np.asarray(generated))

    def fail(self, episode: _Episode, detail: str, step: int | None = None) -> None:
        step = episode.steps if step is None else step
        raise ShapingCheckError(f"check_shaping: episode {episode.index} (task id={episode.task.id!r}), step "
                                f"{step}: {detail}", episode.index, step)

    def step(self, episode: _Episode, text: str, reward: float, paid: Any, terminated: bool, truncated: bool) -> bool:
        """Check one step's shaping term against the recomputed Phi; at the episode's end, its telescoped sum.
        True when the episode ended."""
        done = bool(terminated or truncated)
        if paid is None:
            self.fail(episode, "the env paid no shaping term (info['shaping'] is missing); was it built with shaping=?")
        paid = float(paid)
        phi_after = self.shaping.phi(episode.task, text, terminal=done)
        self.max_abs_phi = max(self.max_abs_phi, abs(phi_after))
        expected = self.shaping.gamma * phi_after - episode.phi
        error = abs(paid - expected)
        if not math.isfinite(paid) or not math.isclose(paid, expected, rel_tol=REL_TOL, abs_tol=self.atol):
            self.fail(episode, f"the env paid F={paid!r}, but gamma*Phi(s')-Phi(s) = {self.shaping.gamma:g}*"
                      f"{phi_after!r} - {episode.phi!r} = {expected!r} (prompt so far {text!r}); not potential-based")
        if not done and reward != paid:
            self.fail(episode, f"the step's reward {reward!r} differs from the shaping term {paid!r} it reports")
        self.max_step_error = max(self.max_step_error, error)
        episode.discounted += self.shaping.gamma**episode.steps * paid
        episode.phi = phi_after
        episode.steps += 1
        self.counts["steps"] += 1
        if not done:
            return False
        self.counts["terminated" if terminated else "truncated"] += 1
        telescoped = self.shaping.gamma**episode.steps * phi_after - episode.phi0
        sum_error = abs(episode.discounted - telescoped)
        if not math.isclose(episode.discounted, telescoped, rel_tol=REL_TOL, abs_tol=self.atol * episode.steps):
            self.fail(episode, f"the discounted sum of shaping terms {episode.discounted!r} != gamma^T*Phi(s_T) - "
                      f"Phi(s_0) = {telescoped!r} (T={episode.steps})", step=episode.steps - 1)
        self.max_sum_error = max(self.max_sum_error, sum_error)
        if phi_after != 0.0 and not self.warned:
            self.warned[f"check_shaping: Phi of a terminal state is not 0 (episode {episode.index}: {phi_after!r}): "
                        "the shaped return then depends on when an episode ends, which can change the optimal "
                        "policy (Ng et al. 1999); use zero_at_terminal=True"] = None
        return True

    def report(self) -> ShapingReport:
        return ShapingReport(
            episodes=self.counts["terminated"] + self.counts["truncated"],
            terminated=self.counts["terminated"],
            truncated=self.counts["truncated"],
            steps=self.counts["steps"],
            max_step_error=self.max_step_error,
            max_sum_error=self.max_sum_error,
            max_abs_phi=self.max_abs_phi,
            warnings=tuple(self.warned),
        )


def check_shaping(
    shaping: PotentialShaping,
    env: Any,
    *,
    episodes: int = 8,
    seed: int = 0,
    atol: float = 1e-9,
    eos_probability: float = 0.1,
) -> ShapingReport:
    """Run `episodes` random episodes of `env` (a `PromptEditEnv` or `PromptEditVectorEnv`, possibly wrapped, built
    with `shaping=shaping`) and check that every paid shaping term is gamma*Phi(s') - Phi(s), so every episode's
    discounted sum telescopes to gamma^T Phi(s_T) - Phi(s_0). Raises `ShapingCheckError` naming the episode and step.

    Args:
        episodes: finished episodes to check (a vector env finishes at least this many).
        seed: seeds the env's first reset and the random actions.
        atol: absolute tolerance per step (and `atol * T` for an episode's sum of T terms), on top of a relative
            `REL_TOL` = 1e-9.
        eos_probability: chance of EOS at each step, so episodes both terminate and truncate.
    """
    base = env.unwrapped
    if getattr(base, "shaping", None) is None or not isinstance(getattr(base, "episodes", None), EditEpisodes):
        raise ValueError(f"env={env!r}; expected a PromptEditEnv or PromptEditVectorEnv built with shaping=")
    if base.shaping is not shaping:
        raise ValueError(f"env was built with shaping={base.shaping!r}, not the shaping={shaping!r} to check")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes={episodes!r}; expected a positive integer")
    if not (isinstance(atol, (int, float)) and math.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol={atol!r}; expected a finite number >= 0")
    if not 0.0 <= eos_probability <= 1.0:
        raise ValueError(f"eos_probability={eos_probability!r}; expected a probability in [0, 1]")
    check = _Check(shaping, base.episodes, float(atol), seed, eos_probability)
    try:
        if isinstance(base, VectorEnv):
            _run_vector(check, env, base, episodes, seed)
        else:
            _run_single(check, env, base, episodes, seed)
    finally:
        for message in check.warned:
            warnings.warn(message, ShapingCheckWarning, stacklevel=2)
    return check.report()


def _run_single(check: _Check, env: Any, base: Any, episodes: int, seed: int) -> None:
    for e in range(episodes):
        env.reset(seed=seed if e == 0 else None)
        episode = check.start(base.task)
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(check.action(episode))
            text = check.text(obs["input_ids"], obs["attention_mask"])
            done = check.step(episode, text, float(reward), info.get("shaping"), terminated, truncated)


def _run_vector(check: _Check, env: Any, base: Any, episodes: int, seed: int) -> None:
    env.reset(seed=seed)
    current = [check.start(task) for task in base.tasks]
    needs_reset = np.zeros(base.num_envs, dtype=bool)
    next_step = base.autoreset_mode == AutoresetMode.NEXT_STEP
    while check.counts["terminated"] + check.counts["truncated"] < episodes:
        if not next_step and needs_reset.any():
            env.reset(options={"reset_mask": needs_reset.copy()})
            for i in np.flatnonzero(needs_reset):
                current[i] = check.start(base.tasks[i])
            needs_reset[:] = False
        actions = np.array([check.action(episode) for episode in current], dtype=np.int64)
        obs, rewards, terminated, truncated, infos = env.step(actions)
        for i, episode in enumerate(current):
            mask = infos.get("_shaping")
            paid = infos["shaping"][i] if mask is not None and mask[i] else None
            if needs_reset[i]:  # the autoreset step: a new episode begins, nothing is paid
                if paid is not None or rewards[i] != 0:
                    check.fail(episode, f"the autoreset step paid reward {rewards[i]!r}, shaping {paid!r}; expected 0")
                current[i] = check.start(base.tasks[i])
                needs_reset[i] = False
                continue
            text = check.text(obs["input_ids"][i], obs["attention_mask"][i])
            needs_reset[i] = check.step(episode, text, float(rewards[i]), paid, terminated[i], truncated[i])
