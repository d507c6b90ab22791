"""PromptEditVectorEnv: equal to N single envs, one reward call per step, Gymnasium vector conventions."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from promptgym.envs import ENV_ID, PromptEditEnv, PromptEditVectorEnv
from promptgym.rewards import CompositeReward, ContentIntegrityScorer


class CountingIntegrity(ContentIntegrityScorer):
    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def __call__(self, results):
        self.batch_sizes.append(len(results))
        return super().__call__(results)


def scripted_actions(env, rng, steps, num_envs):
    """Actions that often end episodes early (EOS) and otherwise type common words."""
    words = env.tokenizer(" a red dog cat blue in park", add_special_tokens=False)["input_ids"]
    choices = np.array([*words, env.tokenizer.eos_token_id])
    return rng.choice(choices, size=(steps, num_envs))


def run_side_by_side(make_vec, make_single, num_envs=4, steps=40, seed=123, reward_tolerance=0.0):
    """Step a vector env and N single envs (seeds seed+i) with the same actions; compare everything."""
    vec = make_vec(num_envs)
    singles = [make_single() for _ in range(num_envs)]
    actions = scripted_actions(vec, np.random.default_rng(0), steps, num_envs)
    obs, _ = vec.reset(seed=seed)
    single_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    needs_reset = [False] * num_envs
    episodes_ended = 0
    for t in range(steps):
        for key in ("input_ids", "attention_mask"):
            np.testing.assert_array_equal(obs[key], np.stack([o[key] for o in single_obs]))
        obs, rewards, terminated, truncated, infos = vec.step(actions[t])
        for i, env in enumerate(singles):
            if needs_reset[i]:
                single_obs[i], _ = env.reset()
                needs_reset[i] = False
                assert rewards[i] == 0.0 and not terminated[i] and not truncated[i]
                continue
            single_obs[i], r, term, trunc, info = env.step(actions[t, i])
            assert (terminated[i], truncated[i]) == (term, trunc)
            assert rewards[i] == pytest.approx(r, abs=reward_tolerance, rel=reward_tolerance)
            if term or trunc:
                episodes_ended += 1
                needs_reset[i] = True
                assert infos["_prompt"][i] and infos["prompt"][i] == info["prompt"]
                assert infos["reward_components"]["integrity"][i] == info["reward_components"]["integrity"]
    assert episodes_ended >= num_envs  # the comparison covered autoresets


def test_vector_env_equals_single_envs_with_the_same_seeds():
    kwargs = {"max_new_tokens": 6, "reward": ContentIntegrityScorer(mode="ratio")}
    run_side_by_side(lambda n: PromptEditVectorEnv(n, **kwargs), lambda: PromptEditEnv(**kwargs))


@pytest.mark.slow
def test_vector_env_with_image_rewards_matches_single_envs_up_to_batch_numerics():
    # renders and CLIP scores of a batch differ from one-by-one ones only by float rounding (~1e-5 per pixel)
    run_side_by_side(
        lambda n: PromptEditVectorEnv(n, max_new_tokens=6),
        lambda: PromptEditEnv(max_new_tokens=6),
        num_envs=3,
        steps=16,
        reward_tolerance=1e-2,
    )


def test_matches_gymnasium_sync_vector_env():
    num_envs, steps = 3, 30
    kwargs = {"max_new_tokens": 5, "reward": ContentIntegrityScorer()}
    ours = gym.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    sync = gym.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode="sync", **kwargs)
    assert isinstance(ours.unwrapped, PromptEditVectorEnv)
    actions = scripted_actions(ours.unwrapped, np.random.default_rng(1), steps, num_envs)
    a, _ = ours.reset(seed=5)
    b, _ = sync.reset(seed=5)
    for t in range(steps):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        a, ra, ta, ua, _ = ours.step(actions[t])
        b, rb, tb, ub, _ = sync.step(actions[t])
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(ua, ub)


def test_episodes_finishing_together_are_scored_in_one_call():
    scorer = CountingIntegrity()
    vec = PromptEditVectorEnv(8, reward=CompositeReward({"integrity": (scorer, 1.0)}), max_new_tokens=3)
    vec.reset(seed=0)
    a = vec.tokenizer.convert_tokens_to_ids("a")
    for _ in range(3):
        vec.step(np.full(8, a))
    assert scorer.batch_sizes == [8]
    eos = vec.tokenizer.eos_token_id
    vec.step(np.full(8, a))  # autoreset step
    vec.step(np.array([eos] * 3 + [a] * 5))
    assert scorer.batch_sizes == [8, 3]


def test_spaces_and_observation_batch():
    vec = PromptEditVectorEnv(2, reward=ContentIntegrityScorer())
    obs, infos = vec.reset(seed=0)
    assert vec.observation_space.contains(obs)
    assert obs["input_ids"].shape == (2, vec.episodes.length)
    assert infos["_task_id"].all()
    assert vec.action_space.shape == (2,)


@pytest.mark.parametrize(
    "actions, message",
    [
        (np.array([1, 2, 3]), r"shape \(3,\)"),
        (np.array([1.0, 2.0]), "dtype float64"),
        (np.array([1, -1]), r"actions\[1\]=-1"),
    ],
)
def test_bad_actions(actions, message):
    vec = PromptEditVectorEnv(2, reward=ContentIntegrityScorer())
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        vec.step(actions)


def test_step_before_reset_and_bad_num_envs():
    with pytest.raises(RuntimeError, match="before reset"):
        PromptEditVectorEnv(2, reward=ContentIntegrityScorer()).step(np.array([1, 2]))
    with pytest.raises(ValueError, match="num_envs=0"):
        PromptEditVectorEnv(0)
    with pytest.raises(ValueError, match="seed has 1 entries"):
        PromptEditVectorEnv(2, reward=ContentIntegrityScorer()).reset(seed=[1])


def test_rewards_are_float64_and_finite():
    vec = PromptEditVectorEnv(3, max_new_tokens=2)
    vec.reset(seed=0)
    for _ in range(4):
        _, rewards, *_ = vec.step(vec.action_space.sample())
        assert rewards.dtype == np.float64 and np.isfinite(rewards).all()
    assert torch.is_tensor(torch.as_tensor(rewards))


def test_disabled_autoreset_freezes_finished_episodes_until_reset_mask():
    vec = PromptEditVectorEnv(3, max_new_tokens=4, autoreset_mode="disabled", reward=ContentIntegrityScorer())
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.DISABLED
    obs, _ = vec.reset(seed=0)
    a, eos = vec.tokenizer.convert_tokens_to_ids("a"), vec.tokenizer.eos_token_id
    obs, rewards, terminated, truncated, infos = vec.step(np.array([eos, a, a]))
    assert terminated.tolist() == [True, False, False] and infos["_prompt"].tolist() == [True, False, False]
    frozen = obs["input_ids"][0].copy()
    for _ in range(3):
        obs, rewards, terminated, truncated, infos = vec.step(np.array([a, a, a]))
        np.testing.assert_array_equal(obs["input_ids"][0], frozen)
        assert rewards[0] == 0.0 and not terminated[0] and not truncated[0]
    assert truncated.tolist() == [False, True, True]
    obs, rewards, terminated, truncated, _ = vec.step(np.array([a, a, a]))
    assert not (terminated | truncated).any() and (rewards == 0).all()
    obs, infos = vec.reset(options={"reset_mask": np.array([True, False, False])})
    assert infos["_task_id"].tolist() == [True, False, False]
    _, _, _, truncated, _ = vec.step(np.array([a, a, a]))
    assert obs["attention_mask"][0, vec.episodes.max_context_tokens :].sum() == 0
    assert not truncated.any()


def test_reset_mask_and_autoreset_mode_validation():
    with pytest.raises(ValueError, match="autoreset_mode='same_step'"):
        PromptEditVectorEnv(2, autoreset_mode="same_step")
    vec = PromptEditVectorEnv(2, reward=ContentIntegrityScorer())
    with pytest.raises(ValueError, match=r"reset_mask.*shape \(2,\)"):
        vec.reset(options={"reset_mask": [True, False]})


def test_per_env_task_options_pin_each_sub_env():
    vec = PromptEditVectorEnv(3, reward=ContentIntegrityScorer())
    _, infos = vec.reset(seed=0, options={"task_indices": [5, 0, 5]})
    assert [t.id for t in vec.tasks] == [vec.episodes.tasks[i].id for i in (5, 0, 5)]
    picked = vec.episodes.tasks[7:10]
    vec.reset(options={"tasks": picked})
    assert vec.tasks == list(picked)
    with pytest.raises(ValueError, match=r"options\['tasks'\] has 2 entries; expected one per sub-env \(3\)"):
        vec.reset(options={"tasks": picked[:2]})
