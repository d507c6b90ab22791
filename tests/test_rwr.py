"""Reward-weighted likelihood: the weights, the exact KL anchor and the weighted NLL against independent references;
the agent's counters, its validation and that it learns a simple reward."""

import math

import numpy as np
import pytest
import torch
from scipy.special import rel_entr, softmax

from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.rwr import RWRAgent, RWRConfig, exact_kl, rwr_weights, weighted_nll
from promptgym.envs import PromptEditVectorEnv, default_tokenizer
from promptgym.rewards import CompositeReward
from tests.reward_helpers import CharLength, integrity_and_length


def reference_exp_weights(scores, temperature):
    r = np.asarray(scores, dtype=float)
    z = (r - r.mean()) / r.std()
    return len(r) * softmax(z / temperature)


@pytest.mark.parametrize("temperature", [0.25, 1.0, 3.0])
def test_exp_weights_match_a_numpy_reference(temperature):
    scores = [0.3, -1.2, 2.0, 0.3, 5.5]
    got = rwr_weights(torch.tensor(scores), "exp", temperature)
    np.testing.assert_allclose(got.numpy(), reference_exp_weights(scores, temperature), rtol=1e-5)
    assert got.mean().item() == pytest.approx(1.0)


def test_linear_weights_are_shifted_rewards_with_mean_one():
    scores = [1.0, 0.0, 1.0, 0.0]  # binary feedback: Lee et al.'s r * NLL keeps the positives only
    assert rwr_weights(torch.tensor(scores), "linear").tolist() == [2.0, 0.0, 2.0, 0.0]
    got = rwr_weights(torch.tensor([3.0, 1.0, 2.0]), "linear")
    np.testing.assert_allclose(got.numpy(), np.array([2.0, 0.0, 1.0]) / 1.0, rtol=1e-6)


@pytest.mark.parametrize("weighting", ["exp", "linear"])
@pytest.mark.parametrize("scores", [[0.7], [2.0, 2.0, 2.0], [-1e9, -1e9]])
def test_ties_and_single_episodes_weigh_one(weighting, scores):
    assert rwr_weights(torch.tensor(scores, dtype=torch.float64), weighting).tolist() == [1.0] * len(scores)


def test_temperature_limits():
    scores = torch.tensor([0.0, 1.0, 2.0, 10.0])
    assert rwr_weights(scores, "exp", 1e6) == pytest.approx(torch.ones(4), abs=1e-4)  # behaviour cloning
    assert rwr_weights(scores, "exp", 1e-3).tolist() == pytest.approx([0.0, 0.0, 0.0, 4.0])  # only the best


@pytest.mark.parametrize("scores, message", [
    (torch.tensor([]), "non-empty"),
    (torch.zeros(2, 2), "1-D"),
    (torch.tensor([1.0, math.nan]), "non-finite"),
    (torch.tensor([1.0, math.inf]), "non-finite"),
])
def test_bad_scores_are_errors(scores, message):
    with pytest.raises(ValueError, match=message):
        rwr_weights(scores)


def test_exact_kl_matches_scipy_including_ruled_out_tokens():
    logits = torch.tensor([[[0.5, -1.0, 2.0, -math.inf], [0.0, 0.0, 0.0, 0.0]]])
    ref = torch.tensor([[[0.0, 1.0, -0.5, 3.0], [1.0, -2.0, 0.5, 0.0]]])
    got = exact_kl(logits, ref)
    p, q = torch.softmax(logits, -1).double().numpy(), torch.softmax(ref, -1).double().numpy()
    np.testing.assert_allclose(got.numpy(), rel_entr(p, q).sum(-1), rtol=1e-5)
    assert exact_kl(ref, ref).abs().max().item() < 1e-6
    assert exact_kl(torch.tensor([0.0, 0.0]), torch.tensor([0.0, -math.inf])).item() == math.inf


def test_weighted_nll_matches_a_loop_and_all_padding_is_zero():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    weights = torch.tensor([2.0, 0.5])
    expected = -(2.0 * (-1.0 - 2.0) + 0.5 * -0.5) / 3
    assert weighted_nll(logprobs, mask, weights).item() == pytest.approx(expected)
    assert weighted_nll(logprobs, torch.zeros_like(mask), weights).item() == 0.0


@pytest.mark.parametrize("field, value", [("n_episodes", 0), ("epochs", 1.5), ("weighting", "softmax"),
                                          ("temperature", 0.0), ("kl_coef", -0.1), ("typical_mass", 1.5),
                                          ("learning_rate", -1.0)])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=f"RWRConfig.{field}"):
        RWRConfig(**{field: value})
    with pytest.raises(ValueError, match=r"unknown RWRConfig field\(s\) \['lr'\]"):
        RWRConfig.from_dict({"lr": 1e-3})


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def make_agent(tok, reward, **overrides):
    config = RWRConfig(**{"n_episodes": 8, "minibatch_size": 4, "seed": 0} | overrides)
    env = PromptEditVectorEnv(config.n_episodes, tokenizer=tok, reward=reward, max_new_tokens=12,
                              autoreset_mode="disabled")
    return RWRAgent(PolicyWithValue.tiny(tok, seed=0), env, config)


def test_step_counts_reward_calls_and_reports_components(tok):
    agent = make_agent(tok, integrity_and_length(), epochs=2)
    metrics = agent.step()
    assert (agent.num_updates, agent.num_episodes, agent.num_reward_calls) == (1, 8, 8)
    assert metrics["counters/reward_calls"] == 8.0
    assert {"env/integrity", "env/chars", "loss/nll", "loss/kl_anchor", "objective/kl"} <= set(metrics)
    assert 1.0 <= metrics["rwr/effective_sample_size"] <= 8.0
    assert metrics["time/reward_s"] >= 0


def test_the_anchor_is_zero_at_the_start_and_grows_as_the_policy_moves(tok):
    agent = make_agent(tok, integrity_and_length(), minibatch_size=8, learning_rate=1e-2)  # one step per update
    assert agent.step()["loss/kl_anchor"] == pytest.approx(0.0, abs=1e-6)
    assert agent.step()["loss/kl_anchor"] > 1e-4


def test_without_an_anchor_the_reference_is_never_asked(tok, monkeypatch):
    agent = make_agent(tok, integrity_and_length(), kl_coef=0.0)
    batch = agent.collect()
    monkeypatch.setattr(agent.policy, "reference_logits", lambda *a, **k: pytest.fail("reference asked"))
    assert agent.update(batch)["loss/kl_anchor"] == 0.0


def test_env_size_must_match_the_config(tok):
    env = PromptEditVectorEnv(4, tokenizer=tok, reward=integrity_and_length(), autoreset_mode="disabled")
    with pytest.raises(ValueError, match="n_episodes=8"):
        RWRAgent(PolicyWithValue.tiny(tok, seed=0), env, RWRConfig(n_episodes=8))


def test_rwr_learns_to_write_longer_prompts(tok):
    """Reward = characters / 10 on a random tiny policy: 15 updates of exp-weighted likelihood raise the mean length
    of 64 fresh episodes by more than 3 standard errors (a statistical test, no timing)."""
    reward = CompositeReward({"chars": (CharLength(), 1.0)})
    agent = make_agent(tok, reward, n_episodes=16, learning_rate=3e-3, temperature=0.5, kl_coef=0.0, epochs=2)

    def fresh_scores(seed):
        env = PromptEditVectorEnv(64, tokenizer=tok, reward=reward, max_new_tokens=12, autoreset_mode="disabled")
        from promptgym.agents.rollout import sample_episodes

        return sample_episodes(agent.policy, env, seed).scores

    before = fresh_scores(123)
    agent.learn(15, progress=False)
    after = fresh_scores(123)
    gain = after.mean() - before.mean()
    se = (before.var() / len(before) + after.var() / len(after)).sqrt()
    assert gain > 3 * se, (float(before.mean()), float(after.mean()), float(se))
