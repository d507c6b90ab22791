"""Hypothesis fuzz of `PromptEditEnv` and `PromptEditVectorEnv` (content-integrity reward: no renders).

Random seeds, reset options (valid and invalid, arbitrary task texts) and action sequences (token ids, EOS, and
invalid actions: out of range, negative, floats, bools, None, strings). Properties: every observation is in the
observation space; the only exceptions are the documented ones (ValueError/TypeError for bad actions and options,
RuntimeError for stepping a finished episode), and an invalid call changes nothing; rewards are finite floats;
an episode ends exactly at EOS (terminated) or at `max_new_tokens` (truncated); the same seed gives the same
trajectory.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptgym.envs import EditTask, PromptEditEnv, PromptEditVectorEnv, default_tokenizer
from promptgym.rewards import ContentIntegrityScorer

TOKENIZER = default_tokenizer()
VOCAB = len(TOKENIZER)
EOS = int(TOKENIZER.eos_token_id)
MAX_NEW_TOKENS = (1, 3, 12)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def single_env(max_new_tokens: int) -> PromptEditEnv:
    return PromptEditEnv(tokenizer=TOKENIZER, reward=ContentIntegrityScorer(mode="ratio"), max_new_tokens=max_new_tokens)


@cache
def vector_env(num_envs: int, max_new_tokens: int, autoreset_mode: str) -> PromptEditVectorEnv:
    return PromptEditVectorEnv(num_envs, tokenizer=TOKENIZER, reward=ContentIntegrityScorer(mode="ratio"),
                               max_new_tokens=max_new_tokens, autoreset_mode=autoreset_mode)


def is_valid(action) -> bool:
    return isinstance(action, (int, np.integer)) and not isinstance(action, bool) and 0 <= action < VOCAB


tokens = st.one_of(st.integers(0, VOCAB - 1), st.just(EOS), st.integers(0, VOCAB - 1).map(np.int64))
invalid_actions = st.one_of(
    st.integers(-5, -1), st.integers(VOCAB, VOCAB + 5), st.sampled_from([1.5, True, None, "a", np.array([1])])
)
actions = st.lists(st.one_of(tokens, tokens, tokens, invalid_actions), max_size=40)
texts = st.text(max_size=40)
options = st.one_of(
    st.none(),
    st.fixed_dictionaries({"task_index": st.integers(0, 20)}),
    st.fixed_dictionaries({"task": st.builds(EditTask, source=texts, instruction=texts)}),
    st.fixed_dictionaries({"task_index": st.one_of(st.integers(-3, -1), st.just(10**9), st.just(True))}),
    st.just({"bogus": 1}),
    st.just({"task": "a red dog"}),
)


def observe(env, obs) -> tuple[bytes, bytes]:
    assert env.observation_space.contains(obs), obs
    return obs["input_ids"].tobytes(), obs["attention_mask"].tobytes()


def run_single(env: PromptEditEnv, seed: int, reset_options, script) -> list:
    """Play `script` from `reset(seed, options)`; check every step; the trajectory for comparison."""
    try:
        obs, info = env.reset(seed=seed, options=reset_options)
    except (ValueError, TypeError) as err:  # invalid options, or a task whose context does not fit
        assert "options" in str(err) or "max_context_tokens" in str(err), err
        obs, info = env.reset(seed=seed)  # the env is still usable
    trajectory = [observe(env, obs), info["task_id"]]
    length = 0
    for action in script:
        if not is_valid(action):
            with pytest.raises(ValueError, match="action"):
                env.step(action)
            continue
        obs, reward, terminated, truncated, info = env.step(action)
        length += 1
        assert isinstance(reward, float) and math.isfinite(reward)
        assert terminated == (action == EOS)
        assert truncated == (not terminated and length == env.episodes.max_new_tokens)
        assert length <= env.episodes.max_new_tokens
        assert int(obs["attention_mask"][env.episodes.max_context_tokens:].sum()) == length
        trajectory.append((observe(env, obs), reward, terminated, truncated, info.get("prompt")))
        if terminated or truncated:
            assert info["num_tokens"] == length and isinstance(info["prompt"], str)
            assert 0.0 <= reward <= 1.0  # the integrity ratio
            with pytest.raises(RuntimeError, match="reset"):
                env.step(EOS)
            obs, info = env.reset()
            trajectory.append((observe(env, obs), info["task_id"]))
            length = 0
        else:
            assert reward == 0.0 and info == {}
    return trajectory


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), max_new_tokens=st.sampled_from(MAX_NEW_TOKENS), reset_options=options,
       script=actions)
def test_single_env_fuzz(seed, max_new_tokens, reset_options, script):
    env = single_env(max_new_tokens)
    first = run_single(env, seed, reset_options, script)
    assert run_single(env, seed, reset_options, script) == first  # same seed, same trajectory


def vector_actions(num_envs: int):
    valid = st.lists(tokens, min_size=num_envs, max_size=num_envs).map(lambda a: np.array(a, dtype=np.int64))
    invalid = st.one_of(
        st.lists(st.integers(-3, VOCAB + 3), min_size=num_envs, max_size=num_envs).map(np.array),
        st.lists(tokens, min_size=num_envs + 1, max_size=num_envs + 1).map(np.array),
        st.just(np.full(num_envs, 1.5)),
    )
    return st.lists(st.one_of(valid, valid, valid, invalid), max_size=30)


def run_vector(env: PromptEditVectorEnv, seed: int, script) -> list:
    n, limit = env.num_envs, env.episodes.max_new_tokens
    next_step = env.autoreset_mode.value == "NextStep"
    obs, infos = env.reset(seed=seed)
    trajectory = [observe(env, obs)]
    lengths = np.zeros(n, dtype=int)
    finished = np.zeros(n, dtype=bool)
    for actions in script:
        if actions.shape != (n,) or actions.dtype.kind != "i" or ((actions < 0) | (actions >= VOCAB)).any():
            with pytest.raises(ValueError, match="actions"):
                env.step(actions)
            continue
        obs, rewards, terminated, truncated, infos = env.step(actions)
        assert rewards.shape == (n,) and np.isfinite(rewards).all()
        for i in range(n):
            if finished[i]:  # autoreset step ("next_step") or frozen ("disabled"): no reward, no end
                assert rewards[i] == 0 and not terminated[i] and not truncated[i]
                lengths[i] = 0 if next_step else lengths[i]
                continue
            lengths[i] += 1
            assert terminated[i] == (actions[i] == EOS)
            assert truncated[i] == (not terminated[i] and lengths[i] == limit)
            assert lengths[i] <= limit
        done = terminated | truncated
        assert np.array_equal(infos.get("_prompt", np.zeros(n, bool)), done)
        finished = done | (finished & (not next_step))
        trajectory.append((observe(env, obs), rewards.tobytes(), terminated.tobytes(), truncated.tobytes()))
        if not next_step and finished.all():
            obs, _ = env.reset(options={"reset_mask": finished.copy()})
            trajectory.append(observe(env, obs))
            finished[:] = False
            lengths[:] = 0
    return trajectory


@FUZZ
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), num_envs=st.integers(1, 3),
       max_new_tokens=st.sampled_from(MAX_NEW_TOKENS), autoreset_mode=st.sampled_from(["next_step", "disabled"]))
@pytest.mark.slow
def test_vector_env_fuzz(data, seed, num_envs, max_new_tokens, autoreset_mode):
    env = vector_env(num_envs, max_new_tokens, autoreset_mode)
    script = data.draw(vector_actions(num_envs))
    first = run_vector(env, seed, script)
    assert run_vector(env, seed, script) == first  # same seed, same trajectory
