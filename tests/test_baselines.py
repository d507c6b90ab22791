"""Baselines: the SB3 features extractor and VecEnv adapter, and SB3 PPO / TRL GRPO / RLOO runs held to a budget of
reward calls (tiny budgets: each run takes a second or two). The reward-call counter is tested in test_counting.py."""

from __future__ import annotations

import math
import os
import random
import tempfile

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from reward_helpers import integrity_and_length  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from promptgym.agents import PolicyWithValue  # noqa: E402
from promptgym.agents.baselines import (  # noqa: E402
    RunResult,
    SB3VecEnv,
    TokenFeaturesExtractor,
    preserved_global_rngs,
    run_sb3_ppo,
    run_trl,
)
from promptgym.envs import PromptEditEnv, PromptEditVectorEnv, default_tokenizer, load_tasks  # noqa: E402
from promptgym.rewards import ContentIntegrityScorer, CountingReward  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture(scope="module")
def tasks():
    return load_tasks("demo", "train")[:8]


def rng_states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()


def assert_same_rng_states(before, after):
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert torch.equal(before[2], after[2])


# ------------------------------------------------------------------------------- TokenFeaturesExtractor
@pytest.fixture(scope="module")
def small_env(tokenizer, tasks):
    return PromptEditVectorEnv(
        4,
        tasks=tasks,
        tokenizer=tokenizer,
        reward=ContentIntegrityScorer(),
        max_new_tokens=5,
        autoreset_mode="disabled",
    )


def as_tensors(obs):
    """What SB3 hands a features extractor: float tensors."""
    return {key: torch.as_tensor(value).float() for key, value in obs.items()}


def stepped_observation(env, steps):
    obs, _ = env.reset(seed=3)
    for t in range(steps):
        obs, *_ = env.step(np.array([10 + t, 20 + t, 30 + t, 40 + t]))
    return obs


def test_features_equal_a_by_hand_computation(small_env):
    torch.manual_seed(0)
    extractor = TokenFeaturesExtractor(small_env.single_observation_space, context_length=64, embed_dim=8)
    obs = stepped_observation(small_env, steps=2)
    features = extractor(as_tensors(obs))
    assert features.shape == (4, 32) and extractor.features_dim == 32
    table, progress = extractor.tokens.weight.detach(), extractor.progress.weight.detach()
    for i in range(4):
        ids, mask = obs["input_ids"][i], obs["attention_mask"][i].astype(bool)
        context_ids = ids[:64][mask[:64]]
        generated_ids = ids[64:][mask[64:]]
        assert list(generated_ids) == [10 + i * 10, 11 + i * 10]
        expected = torch.cat(
            [
                table[context_ids].mean(0),
                table[generated_ids].mean(0),
                table[generated_ids[-1]],
                progress[len(generated_ids)],
            ]
        )
        torch.testing.assert_close(features[i], expected)


def test_features_before_the_first_token(small_env):
    extractor = TokenFeaturesExtractor(small_env.single_observation_space, context_length=64, embed_dim=8)
    obs, _ = small_env.reset(seed=3)
    features = extractor(as_tensors(obs))
    table = extractor.tokens.weight.detach()
    for i in range(4):
        ids, mask = obs["input_ids"][i], obs["attention_mask"][i].astype(bool)
        torch.testing.assert_close(features[i, 8:16], torch.zeros(8))  # nothing written yet
        torch.testing.assert_close(features[i, 16:24], table[ids[mask][-1]])  # last token of the context
        torch.testing.assert_close(features[i, 24:], extractor.progress.weight[0].detach())


def test_padding_tokens_do_not_change_the_features(small_env):
    extractor = TokenFeaturesExtractor(small_env.single_observation_space, context_length=64, embed_dim=8)
    obs = stepped_observation(small_env, steps=2)
    features = extractor(as_tensors(obs))
    scrambled = {key: value.copy() for key, value in obs.items()}
    padding = scrambled["attention_mask"] == 0
    assert padding.any(1).all()
    scrambled["input_ids"][padding] = np.random.default_rng(0).integers(0, small_env.episodes.vocab_size, padding.sum())
    torch.testing.assert_close(extractor(as_tensors(scrambled)), features)
    # ... while a real token does change them.
    changed = {key: value.copy() for key, value in obs.items()}
    changed["input_ids"][0, 65] += 1
    assert not torch.allclose(extractor(as_tensors(changed))[0], features[0])


def test_features_extractor_embedding_init_and_errors(small_env, tokenizer):
    policy = PolicyWithValue.tiny(tokenizer, seed=0, hidden_size=16)
    weight = policy.model.get_input_embeddings().weight.detach()
    space = small_env.single_observation_space
    extractor = TokenFeaturesExtractor(space, context_length=64, embed_dim=8, embedding_init=weight)
    assert extractor.features_dim == 64  # the LM's width replaces embed_dim
    assert torch.equal(extractor.tokens.weight.detach(), weight)
    assert extractor.tokens.weight.data_ptr() != weight.data_ptr()  # a copy: training it leaves the LM alone
    with pytest.raises(ValueError, match="embedding_init"):
        TokenFeaturesExtractor(space, context_length=64, embedding_init=weight[:-1])
    with pytest.raises(ValueError, match="context_length=69"):
        TokenFeaturesExtractor(space, context_length=69)
    with pytest.raises(ValueError, match="observation_space"):
        TokenFeaturesExtractor(space["input_ids"], context_length=64)


# ------------------------------------------------------------------------------------------- SB3VecEnv
def scripted_actions(tokenizer, rng, steps, num_envs):
    """Word tokens and often EOS, so episodes end at different steps."""
    words = tokenizer(" a red dog cat blue in park", add_special_tokens=False)["input_ids"]
    return rng.choice(np.array([*words, tokenizer.eos_token_id]), size=(steps, num_envs))


def test_sb3_vec_env_matches_a_dummy_vec_env_of_single_envs(tokenizer, tasks):
    """The adapter is SB3's DummyVecEnv semantics (auto-reset, terminal_observation), with batched scoring."""
    n, kwargs = 4, dict(tasks=tasks, tokenizer=tokenizer, max_new_tokens=4)
    counter = CountingReward(integrity_and_length())
    ours = SB3VecEnv(PromptEditVectorEnv(n, reward=counter, autoreset_mode="disabled", **kwargs))
    reference = DummyVecEnv([lambda: PromptEditEnv(reward=integrity_and_length(), **kwargs) for _ in range(n)])
    ours.seed(7)
    reference.seed(7)
    obs, ref_obs = ours.reset(), reference.reset()
    actions = scripted_actions(tokenizer, np.random.default_rng(0), 30, n)
    finished = positive = 0
    for t in range(30):
        for key in ("input_ids", "attention_mask"):
            np.testing.assert_array_equal(obs[key], ref_obs[key])
        obs, rewards, dones, infos = ours.step(actions[t])
        ref_obs, ref_rewards, ref_dones, ref_infos = reference.step(actions[t])
        assert rewards.dtype == np.float32 and dones.dtype == bool and len(infos) == n
        np.testing.assert_array_equal(dones, ref_dones)
        np.testing.assert_allclose(rewards, ref_rewards)
        for i in np.flatnonzero(dones):
            finished += 1
            for key in ("input_ids", "attention_mask"):
                np.testing.assert_array_equal(
                    infos[i]["terminal_observation"][key], ref_infos[i]["terminal_observation"][key]
                )
            assert infos[i]["prompt"] == ref_infos[i]["prompt"]
            assert infos[i]["episode"]["r"] == pytest.approx(rewards[i])
            positive += rewards[i] > 0
            assert infos[i]["TimeLimit.truncated"] is False  # scored at the token limit: nothing to bootstrap
            assert obs["attention_mask"][i, 64:].sum() == 0  # already the next episode's first observation
    assert finished > 2 * n and positive > n  # episodes of different lengths, most with a non-zero reward
    assert counter.reward_calls == finished
    assert counter.num_batches < finished  # episodes ending on the same step shared one reward call


def test_sb3_vec_env_can_bootstrap_truncations_and_rejects_next_step_envs(tokenizer, tasks):
    env = SB3VecEnv(
        PromptEditVectorEnv(
            2,
            tasks=tasks,
            tokenizer=tokenizer,
            reward=ContentIntegrityScorer(),
            max_new_tokens=2,
            autoreset_mode="disabled",
        ),
        bootstrap_truncated=True,
    )
    env.reset()
    env.step(np.array([5, 5]))
    _, _, dones, infos = env.step(np.array([5, 5]))
    assert dones.all() and all(info["TimeLimit.truncated"] for info in infos)
    assert env.get_attr("render_mode") == [None, None] and env.env_is_wrapped(object) == [False, False]
    with pytest.raises(ValueError, match="autoreset_mode"):
        SB3VecEnv(PromptEditVectorEnv(2, tasks=tasks, tokenizer=tokenizer, reward=ContentIntegrityScorer()))


# ------------------------------------------------------------------------------------------ SB3 PPO run
def check_result(result: RunResult, budget: int, batch: int) -> None:
    """Budget reached within one batch; a monotone curve over the calls; finite numbers; consistent summaries."""
    assert budget <= result.reward_calls < budget + batch
    xs = [x for x, _ in result.curve]
    assert xs == sorted(set(xs)) and xs[-1] == result.reward_calls
    assert all(math.isfinite(y) for _, y in result.curve)
    assert len(result.episode_rewards) == result.reward_calls
    assert all(math.isfinite(r) for r in result.episode_rewards)
    # Each curve point is the mean of the episodes scored since the previous point.
    previous = 0
    for x, y in result.curve:
        assert y == pytest.approx(np.mean(result.episode_rewards[previous:x]))
        previous = x
    last = result.final_episodes
    assert result.final_reward == pytest.approx(np.mean(result.episode_rewards[-last:]))
    assert result.wall_time_s > 0 and result.budget == budget
    data = result.to_dict()
    assert set(data) >= {"curve", "final_reward", "final_components", "reward_calls", "wall_time_s", "variant"}
    assert "trained" not in data and data["curve"] == [list(point) for point in result.curve]
    assert result.to_dict(["variant", "budget"]) == {"variant": result.variant, "budget": budget}


def test_sb3_ppo_runs_to_its_budget(tmp_path, monkeypatch, tokenizer, tasks):
    monkeypatch.chdir(tmp_path)
    policy = PolicyWithValue.tiny(tokenizer, seed=0, hidden_size=16)
    policy_before = {k: v.clone() for k, v in policy.state_dict().items()}
    states = rng_states()
    kwargs = dict(
        tasks=tasks,
        tokenizer=tokenizer,
        reward=integrity_and_length(),
        budget_reward_calls=20,
        seed=1,
        n_envs=4,
        max_new_tokens=4,
        final_episodes=8,
    )
    result = run_sb3_ppo(**kwargs, policy_init=policy, eval_tasks=tasks[:2], eval_episodes=4)
    assert_same_rng_states(states, rng_states())
    check_result(result, budget=20, batch=4)
    assert result.variant == "sb3-ppo" and result.start == "scratch" and result.seed == 1
    assert result.info["ppo_updates"] >= 3
    assert set(result.final_components) >= {"integrity", "chars"}
    # The total is integrity + 0.1 * chars episode by episode, so the means over the same episodes add up too.
    components = result.final_components
    assert result.final_reward == pytest.approx(components["integrity"] + 0.1 * components["chars"], rel=1e-5)
    assert result.eval_reward is not None and math.isfinite(result.eval_reward)
    assert set(result.eval_components) == {"integrity", "chars"}
    # The SFT'd policy only seeded the embedding: it is unchanged, while SB3's copy trained.
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in policy_before.items())
    sb3_embedding = result.trained.policy.features_extractor.tokens.weight.detach()
    assert sb3_embedding.shape == policy.model.get_input_embeddings().weight.shape
    assert not torch.equal(sb3_embedding, policy.model.get_input_embeddings().weight)
    assert list(tmp_path.iterdir()) == []  # nothing written in the working directory
    # Same seed, same run.
    again = run_sb3_ppo(**kwargs, policy_init=policy)
    assert again.episode_rewards == result.episode_rewards


def test_sb3_ppo_rejects_bad_arguments(tokenizer, tasks):
    with pytest.raises(ValueError, match="budget_reward_calls=0"):
        run_sb3_ppo(tasks, tokenizer, ContentIntegrityScorer(), 0)
    with pytest.raises(ValueError, match="n_envs=-1"):
        run_sb3_ppo(tasks, tokenizer, ContentIntegrityScorer(), 4, n_envs=-1)
    with pytest.raises(TypeError, match="policy_init"):
        run_sb3_ppo(tasks, tokenizer, ContentIntegrityScorer(), 4, policy_init=object(), n_envs=2, max_new_tokens=2)


# ------------------------------------------------------------------------------------------------- TRL
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_trl_runs_to_its_budget_and_leaves_the_policy_alone(algorithm, tmp_path, monkeypatch, tokenizer, tasks):
    pytest.importorskip("trl")
    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # the default working dir is a temporary one
    policy = PolicyWithValue.tiny(tokenizer, seed=0, hidden_size=16)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    states = rng_states()
    result = run_trl(
        algorithm,
        policy,
        tokenizer,
        tasks[:3],
        integrity_and_length(),
        budget_reward_calls=20,
        seed=0,
        batch_size=8,
        num_generations=2,
        max_new_tokens=6,
        learning_rate=1e-2,
        final_episodes=8,
        eval_tasks=tasks[:2],
        eval_episodes=4,
    )
    assert_same_rng_states(states, rng_states())
    check_result(result, budget=20, batch=8)
    assert result.reward_calls == 24 and [x for x, _ in result.curve] == [8, 16, 24]  # ceil(20 / 8) batches
    assert result.variant == f"trl-{algorithm}" and result.start == "policy" and result.seed == 0
    assert result.info["optimizer_steps"] == 3
    # What TRL itself logged as the last step's reward is our last curve point.
    assert result.info["last_log"]["reward"] == pytest.approx(result.curve[-1][1], rel=1e-5)
    assert result.info["beta"] == (0.0 if algorithm == "grpo" else 0.05)
    assert result.eval_reward is not None and set(result.eval_components) == {"integrity", "chars"}
    # The caller's policy is untouched; the trained copy moved.
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())
    trained = result.trained.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in policy.model.state_dict().items())
    assert trained.keys() == policy.model.state_dict().keys()
    assert list(tmp_path.iterdir()) == [scratch] and list(scratch.iterdir()) == []  # nothing left anywhere


@pytest.mark.slow
def test_trl_writes_only_under_output_dir(tmp_path, monkeypatch, tokenizer, tasks):
    pytest.importorskip("trl")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    result = run_trl(
        "grpo",
        PolicyWithValue.tiny(tokenizer, seed=0, hidden_size=16),
        tokenizer,
        tasks,
        ContentIntegrityScorer(),
        budget_reward_calls=4,
        batch_size=4,
        num_generations=2,
        max_new_tokens=3,
        output_dir=out,
        num_iterations=2,
    )
    assert result.reward_calls == 4 and result.info["optimizer_steps"] == 2  # one batch, used twice
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["policy", "trainer"]


def test_trl_rejects_bad_arguments(tokenizer, tasks):
    pytest.importorskip("trl")
    policy = PolicyWithValue.tiny(tokenizer, seed=0, hidden_size=16)
    args = (policy, tokenizer, tasks, ContentIntegrityScorer())
    with pytest.raises(ValueError, match="algorithm='ppo'"):
        run_trl("ppo", *args, 8)
    with pytest.raises(ValueError, match="budget_reward_calls=0"):
        run_trl("grpo", *args, 0)
    with pytest.raises(ValueError, match="num_generations=3"):
        run_trl("grpo", *args, 8, batch_size=8, num_generations=3)
    with pytest.raises(ValueError, match="not_a_field"):
        run_trl("grpo", *args, 8, batch_size=4, num_generations=2, config_overrides={"not_a_field": 1})
    with pytest.raises(ValueError, match="max_context_tokens"):
        run_trl("grpo", *args, 8, batch_size=4, num_generations=2, max_context_tokens=4)
    with pytest.raises(TypeError, match="policy"):
        run_trl("grpo", object(), tokenizer, tasks, ContentIntegrityScorer(), 8)


def test_preserved_global_rngs_restores_every_stream():
    states = rng_states()
    with preserved_global_rngs():
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        random.random(), np.random.rand(), torch.rand(1)
    assert_same_rng_states(states, rng_states())
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest keeps every test offline


# ------------------------------------------------------------------------------- evaluation and records
def test_evaluate_lm_with_kl_is_zero_against_itself_and_matches_a_by_hand_log_ratio(tokenizer, tasks, small_env):
    from promptgym.agents.baselines import evaluate_lm, evaluate_lm_with_kl
    from promptgym.agents.rollout import sample_episodes

    policy = PolicyWithValue.tiny(tokenizer, seed=0, hidden_size=16)
    other = PolicyWithValue.tiny(tokenizer, seed=1, hidden_size=16)
    reward, components = evaluate_lm(policy.model, small_env, seed=5)
    same = evaluate_lm_with_kl(policy.model, small_env, 5, policy.model)
    assert same[:2] == (reward, components) and same[2] == pytest.approx(0.0, abs=1e-6)
    _, _, kl = evaluate_lm_with_kl(policy.model, small_env, 5, other.model)
    batch = sample_episodes(policy, small_env, 5)  # the same episodes, scored by hand token by token
    expected = []
    with torch.no_grad():
        for i in range(len(batch)):
            total = 0.0
            for t in range(int(batch.mask[i].sum())):
                ids = batch.input_ids[i : i + 1, : batch.context_length + t]
                attention = batch.attention_mask[i : i + 1, : batch.context_length + t]
                action = batch.actions[i, t]
                logp = torch.log_softmax(policy.model(input_ids=ids, attention_mask=attention).logits[0, -1].float(), -1)
                logq = torch.log_softmax(other.model(input_ids=ids, attention_mask=attention).logits[0, -1].float(), -1)
                total += float(logp[action] - logq[action])
            expected.append(total)
    assert kl == pytest.approx(float(np.mean(expected)), abs=1e-4)


def test_window_means_and_run_records_round_trip():
    from promptgym.agents.baselines.common import window_means

    rows = [{"a": 1.0}, {"a": 3.0, "b": 1.0}, {"a": 5.0}, {}]
    assert window_means(rows, [2, 4]) == [{"a": 2.0, "b": 1.0}, {"a": 5.0}]
    run = RunResult("ppo", 1, [(8, 0.5), (16, 0.7)], 0.7, {"integrity": 0.7}, 16, 16, 2.0, "sft",
                    curve_components=[{"kl": 0.1}, {"kl": 0.2}], eval_kl=0.3)
    assert RunResult.from_dict(run.to_dict()) == run
    with pytest.raises(ValueError, match="unknown field"):
        RunResult.from_dict({**run.to_dict(), "nope": 1})
