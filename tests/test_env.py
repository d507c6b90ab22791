"""PromptEditEnv: the Gymnasium contract, determinism, rewards of scripted policies and error paths."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptgym.agents.scripted import RandomPolicy, TypistPolicy, run_episode
from promptgym.envs import ENV_ID, EditTask, PromptEditEnv
from promptgym.rewards import ContentIntegrityScorer, PotentialShaping

REPLACE = EditTask("a brown dog in a park, watercolor", "replace the dog with a cat", "a brown cat in a park, watercolor")


@pytest.fixture(scope="module")
def env():
    """A render-free env (content integrity only): fast, and what most env mechanics tests need."""
    return PromptEditEnv(reward=ContentIntegrityScorer())


@pytest.mark.slow
def test_default_env_scores_renders_and_integrity():
    env = PromptEditEnv()
    _, info = run_episode(env, TypistPolicy(env, "target"), seed=0)
    components = info["reward_components"]
    assert {"aesthetic", "aesthetic/delta", "pickscore", "pickscore/delta", "integrity"} <= set(components)
    assert components["integrity"] == 1.0
    expected = components["aesthetic/delta"] + components["pickscore/delta"] + components["integrity"]
    _, again = run_episode(env, TypistPolicy(env, "target"), seed=0)
    assert again["reward_components"] == components  # the default reward is a fixed function of the prompt
    total, _ = run_episode(env, TypistPolicy(env, "target"), seed=0)
    assert total == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_gymnasium_check_env_passes_on_registered_env():
    made = gym.make(ENV_ID)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning is a failure
        check_env(made.unwrapped, skip_render_check=True)


def test_stable_baselines3_check_env_passes():
    sb3_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_checker.check_env(gym.make(ENV_ID).unwrapped, warn=True)


def test_observation_layout(env):
    obs, info = env.reset(seed=0)
    ids, mask = obs["input_ids"], obs["attention_mask"]
    episodes = env.episodes
    assert ids.shape == mask.shape == (episodes.max_context_tokens + episodes.max_new_tokens,)
    assert ids.dtype == np.int64 and mask.dtype == np.int8
    context = env.tokenizer(env.episodes.template.context(env.task))["input_ids"]
    n = len(context)
    assert info["context_tokens"] == n
    # left-padded context ending exactly at max_context_tokens, nothing generated yet
    assert ids[episodes.max_context_tokens - n : episodes.max_context_tokens].tolist() == context
    assert mask.tolist() == [0] * (episodes.max_context_tokens - n) + [1] * n + [0] * episodes.max_new_tokens
    assert (ids[mask == 0] == env.tokenizer.pad_token_id).all()
    token = int(env.tokenizer.convert_tokens_to_ids("a"))
    obs, *_ = env.step(token)
    assert obs["input_ids"][episodes.max_context_tokens] == token and obs["attention_mask"][episodes.max_context_tokens] == 1
    assert obs["attention_mask"][episodes.max_context_tokens + 1 :].sum() == 0


def test_reset_is_seeded(env):
    first = [env.reset(seed=s)[1]["task_id"] for s in range(5)]
    second = [env.reset(seed=s)[1]["task_id"] for s in range(5)]
    assert first == second and len(set(first)) > 1
    env.reset(seed=7)
    a = [env.reset()[1]["task_id"] for _ in range(5)]
    env.reset(seed=7)
    b = [env.reset()[1]["task_id"] for _ in range(5)]
    assert a == b


def test_episode_is_deterministic_under_seed(env):
    policy = RandomPolicy(env, seed=3)
    r1, i1 = run_episode(env, policy, seed=11)
    policy = RandomPolicy(env, seed=3)
    r2, i2 = run_episode(env, policy, seed=11)
    assert (r1, i1["prompt"], i1["num_tokens"]) == (r2, i2["prompt"], i2["num_tokens"])


def test_typing_the_target_keeps_integrity(env):
    policy = TypistPolicy(env, "target")
    for index in range(0, len(env.tasks), max(1, len(env.tasks) // 25)):
        reward, info = run_episode(env, policy, options={"task_index": index})
        assert info["prompt"] == env.tasks[index].target
        assert info["reward_components"]["integrity"] == 1.0 and reward == 1.0


def test_typing_the_source_of_a_replace_task_fails_integrity(env):
    reward, info = run_episode(env, TypistPolicy(env, "source"), options={"task": REPLACE})
    assert info["prompt"] == REPLACE.source and reward == 0.0
    reward, info = run_episode(env, TypistPolicy(env, "target"), options={"task": REPLACE})
    assert info["prompt"] == REPLACE.target and reward == 1.0


def test_typing_garbage_gets_zero(env):
    reward, info = run_episode(env, TypistPolicy(env, lambda task: "zzz qqq xyzzy"), options={"task": REPLACE})
    assert info["prompt"] == "zzz qqq xyzzy" and reward == 0.0


def test_terminates_at_eos_and_truncates_at_max_new_tokens():
    env = PromptEditEnv(max_new_tokens=3, reward=ContentIntegrityScorer())
    env.reset(seed=0)
    *_, terminated, truncated, info = env.step(env.tokenizer.eos_token_id)
    assert terminated and not truncated and info["num_tokens"] == 1 and info["prompt"] == ""
    env.reset(seed=0)
    a = int(env.tokenizer.convert_tokens_to_ids("a"))
    for step in range(3):
        _, reward, terminated, truncated, info = env.step(a)
        assert not terminated
        assert truncated == (step == 2)
        assert (reward == 0.0 and info == {}) if step < 2 else "prompt" in info
    assert info["num_tokens"] == 3 and info["task_id"] == env.task.id


def test_final_info_has_the_documented_keys(env):
    _, info = run_episode(env, TypistPolicy(env, "target"), seed=1)
    assert set(info) == {"prompt", "reward_components", "task_id", "num_tokens", "unparsed"}


@pytest.mark.parametrize("action", [-1, 10**6, 1.5, "3", None, True, np.float32(2.0), np.array([1, 2])])
def test_bad_actions_raise_value_error_naming_the_range(env, action):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=rf"action.*\[0, {env.action_space.n}\)"):
        env.step(action)


@pytest.mark.parametrize("action", [np.int64(5), np.array(5), 5])
def test_integer_like_actions_are_accepted(env, action):
    env.reset(seed=0)
    obs, *_ = env.step(action)
    assert obs["input_ids"][env.episodes.max_context_tokens] == 5


def test_step_after_end_or_before_reset_raises():
    env = PromptEditEnv(reward=ContentIntegrityScorer())
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)
    env.reset(seed=0)
    env.step(env.tokenizer.eos_token_id)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)


def test_reset_options(env):
    _, info = env.reset(options={"task_index": 3})
    assert env.task == env.tasks[3] and info["task_id"] == env.tasks[3].id
    env.reset(options={"task": REPLACE})
    assert env.task == REPLACE
    with pytest.raises(ValueError, match=r"unknown reset options \['taks'\]"):
        env.reset(options={"taks": REPLACE})
    with pytest.raises(ValueError, match="exclusive"):
        env.reset(options={"task": REPLACE, "task_index": 0})
    with pytest.raises(ValueError, match=r"task_index'\]=-1"):
        env.reset(options={"task_index": -1})
    with pytest.raises(TypeError, match="expected an EditTask"):
        env.reset(options={"task": "a dog"})


def test_a_task_given_at_reset_is_tokenized_once(env, monkeypatch):
    """`options["task"]` contexts come from a cache (the PPO agent pins every sub-env's task each update): the same ids
    as tokenizing the task, read-only, one tokenizer call per new task, the oldest dropped past the cache's size."""
    import promptgym.envs.prompt_edit as prompt_edit

    episodes = env.episodes
    monkeypatch.setattr(episodes, "_seen_context_ids", {})
    monkeypatch.setattr(prompt_edit, "CONTEXT_CACHE_SIZE", 2)
    calls = []
    encode = episodes.encode
    monkeypatch.setattr(episodes, "encode", lambda tasks: calls.append(len(tasks)) or encode(tasks))
    others = [EditTask(f"a red fox in a forest, {style}", "make it night") for style in ("oil painting", "sketch")]
    for task in (REPLACE, REPLACE, *others, REPLACE):
        obs, _ = env.reset(options={"task": task})
        context = encode([task])[0]
        np.testing.assert_array_equal(obs["input_ids"][episodes.max_context_tokens - len(context) : episodes.max_context_tokens], context)
    assert calls == [1, 1, 1, 1]  # REPLACE, the two others, then REPLACE again: dropped when the second other came
    assert not episodes.context_ids(REPLACE).flags.writeable and not episodes.context_ids(env.tasks[0]).flags.writeable
    calls.clear()
    episodes.context_ids(env.tasks[0])
    assert calls == []  # a known task's context was tokenized with the env


def test_constructor_validation():
    with pytest.raises(ValueError, match="tasks is empty"):
        PromptEditEnv(tasks=[])
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        PromptEditEnv(max_new_tokens=0)
    with pytest.raises(ValueError, match=r"exceed max_context_tokens=8.*Raise max_context_tokens to at least \d+"):
        PromptEditEnv(tasks=[REPLACE], max_context_tokens=8)
    with pytest.raises(ValueError, match="render_mode='human'"):
        PromptEditEnv(render_mode="human")


def test_too_long_task_in_options_is_an_error():
    env = PromptEditEnv(tasks=[REPLACE], reward=ContentIntegrityScorer())
    long = EditTask("word " * 200, "make it blue")
    with pytest.raises(ValueError, match="exceed max_context_tokens"):
        env.reset(options={"task": long})


def test_a_single_scorer_is_accepted_as_reward():
    env = PromptEditEnv(tasks=[REPLACE], reward=ContentIntegrityScorer(mode="ratio"))
    reward, info = run_episode(env, TypistPolicy(env, "source"), seed=0)
    assert set(info["reward_components"]) == {"integrity"} and 0.0 <= reward < 1.0


def test_shaping_rewards_sum_to_telescoped_potential():
    gamma = 0.9
    shaping = PotentialShaping(gamma=gamma, zero_at_terminal=False)
    env = PromptEditEnv(tasks=[REPLACE], shaping=shaping, reward=ContentIntegrityScorer())
    env.reset(seed=0)
    policy = TypistPolicy(env, "target")
    obs, _ = env.reset(seed=0)
    discounted, t, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        discounted += gamma**t * info["shaping"]
        t += 1
        done = terminated or truncated
    phi_start = shaping.phi(REPLACE, "")
    phi_end = shaping.phi(REPLACE, REPLACE.target)
    assert discounted == pytest.approx(gamma**t * phi_end - phi_start)
    assert reward == pytest.approx(1.0 + info["shaping"])


def test_ansi_render_shows_context_and_text():
    env = PromptEditEnv(tasks=[REPLACE], render_mode="ansi", reward=ContentIntegrityScorer())
    env.reset(seed=0)
    for token in env.tokenizer(" a brown cat", add_special_tokens=False)["input_ids"]:
        env.step(token)
    assert env.render().endswith("Edited prompt: a brown cat")
    assert REPLACE.instruction in env.render()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(st.integers(min_value=-5, max_value=1100), max_size=60), seed=st.integers(0, 2**31 - 1))
def test_fuzz_actions_only_documented_errors(env, actions, seed):
    env.reset(seed=seed)
    done = False
    for action in actions:
        if done:
            with pytest.raises(RuntimeError):
                env.step(action)
            break
        if 0 <= action < env.action_space.n:
            obs, reward, terminated, truncated, info = env.step(action)
            assert env.observation_space.contains(obs)
            assert np.isfinite(reward)
            done = terminated or truncated
            if done:
                assert 0.0 <= info["reward_components"]["integrity"] <= 1.0
        else:
            with pytest.raises(ValueError):
                env.step(action)


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(source=_text, instruction=_text, target=st.one_of(st.none(), _text))
def test_fuzz_task_strings(source, instruction, target):
    task = EditTask(source, instruction, target)
    env = _fuzz_env()
    try:
        env.reset(options={"task": task})
    except ValueError as err:
        assert "max_context_tokens" in str(err)
        return
    reward, info = run_episode(env, TypistPolicy(env, "target"), options={"task": task})
    assert np.isfinite(reward) and isinstance(info["prompt"], str)


_FUZZ_ENV = []


def _fuzz_env():
    if not _FUZZ_ENV:
        _FUZZ_ENV.append(
            PromptEditEnv(tasks=[REPLACE], max_new_tokens=160, max_context_tokens=200, reward=ContentIntegrityScorer())
        )
    return _FUZZ_ENV[0]


def test_decode_batch_equals_decoding_each_row(env):
    """The vector env, the chat env and the negatives decode finished episodes in one tokenizer call: the same
    prompts as decoding each row (special tokens dropped, the template's cleaning applied), any lengths."""
    episodes = env.unwrapped.episodes
    rng = np.random.default_rng(0)
    specials = [episodes.eos_id, episodes.pad_id]
    rows = [rng.integers(0, episodes.vocab_size, size=n) for n in (0, 1, 5, 17, 48)]
    rows.append(np.array([*rows[3][:4], specials[0], *rows[3][4:8], specials[1]]))
    rows.append(np.array(episodes.tokenizer.encode(" a red dog on a beach, soft lighting")))
    assert episodes.decode_batch(rows) == [episodes.decode(row) for row in rows]
    assert episodes.decode_batch([]) == []
