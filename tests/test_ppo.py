"""PPO: loss terms by hand, config validation, integrity-aware advantages, checkpoint resume."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from agent_helpers import assert_resume_equals_uninterrupted

from promptgym.agents.distributed import DataParallel, GlobalRows
from promptgym.agents.gae import compute_gae
from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.ppo import (
    PPOAgent,
    PPOConfig,
    explained_variance,
    masked_mean,
    masked_whiten,
    ppo_losses,
    token_rewards,
)
from promptgym.envs import PromptEditVectorEnv, default_tokenizer
from promptgym.rewards import ContentIntegrityScorer


def test_ppo_losses_by_hand():
    new = torch.tensor([[0.0, -1.0, -2.0]])
    old = torch.tensor([[-0.5, -1.0, -1.0]])
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    values = torch.tensor([[0.5, 1.0, 2.0]])
    old_values = torch.tensor([[0.0, 1.0, 0.0]])
    targets = torch.tensor([[1.0, 1.0, 1.0]])
    entropy = torch.tensor([[1.0, 2.0, 9.0]])
    mask = torch.tensor([[True, True, False]])
    out = ppo_losses(new, old, adv, values, old_values, targets, entropy, mask, clip_range=0.2, clip_range_vf=0.1)
    # token 0: ratio e^0.5 = 1.6487 > 1.2 -> clipped objective min(1.6487, 1.2) * 1 = 1.2; token 1: ratio 1, -2
    assert out["policy_loss"].item() == pytest.approx(-(1.2 + -2.0) / 2)
    # value: token 0 unclipped (0.5-1)^2 = 0.25, clipped (0.1-1)^2 = 0.81 -> 0.81; token 1: 0
    assert out["value_loss"].item() == pytest.approx(0.5 * (0.81 + 0.0) / 2)
    assert out["entropy_loss"].item() == pytest.approx(-(1.0 + 2.0) / 2)
    r = math.exp(0.5)
    assert out["approx_kl"].item() == pytest.approx(((r - 1) - 0.5 + 0.0) / 2)
    assert out["clipfrac"].item() == pytest.approx(0.5)
    no_vf_clip = ppo_losses(new, old, adv, values, old_values, targets, entropy, mask, 0.2, None)
    assert no_vf_clip["value_loss"].item() == pytest.approx(0.5 * 0.25 / 2)


def test_policy_loss_gradient_vanishes_outside_the_clip():
    new = torch.tensor([[0.5]], requires_grad=True)
    out = ppo_losses(new, torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 1), torch.zeros(1, 1),
                     torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), 0.2, None)
    out["policy_loss"].backward()
    assert new.grad.item() == 0.0


def test_minus_inf_new_logprob_is_floored():
    out = ppo_losses(torch.tensor([[-math.inf]]), torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 1),
                     torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool),
                     0.2, None)
    assert all(math.isfinite(v.item()) for v in out.values())


def test_masked_helpers():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    w = masked_whiten(x, mask)
    real = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(w[mask], (real - real.mean()) / real.std(unbiased=False), atol=1e-4, rtol=1e-4)
    assert (w[~mask] == 0).all()
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0
    r = token_rewards(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.5, 0.5, 5.0]]), 0.1, mask[:1])
    torch.testing.assert_close(r, torch.tensor([[-0.05, 0.95, 0.0]]))
    assert explained_variance(real, real, torch.ones(3, dtype=torch.bool)) == pytest.approx(1.0)
    assert math.isnan(explained_variance(real, torch.ones(3), torch.ones(3, dtype=torch.bool)))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("learning_rate", 0.0, r"learning_rate=0.0: expected a number > 0"),
        ("gamma", 1.5, r"gamma=1.5: expected a number in \[0, 1\]"),
        ("gae_lambda", -0.1, "gae_lambda=-0.1"),
        ("clip_range", float("nan"), "clip_range=nan"),
        ("clip_range_vf", -1.0, "clip_range_vf=-1.0"),
        ("target_kl", 0.0, "target_kl=0.0"),
        ("typical_mass", 1.2, "typical_mass=1.2"),
        ("negative_fraction", 1.5, "negative_fraction=1.5"),
        ("corruption_rate", 0.0, "corruption_rate=0.0"),
        ("integrity_value_coef", -1.0, "integrity_value_coef=-1.0"),
        ("n_epochs", 0, "n_epochs=0: expected an integer >= 1"),
        ("batch_size", 64, "batch_size=64 exceeds n_episodes=32"),
        ("kl_estimator", "k4", "kl_estimator='k4'"),
        ("old_logprob", "restricted", "needs typical_mass"),
        ("vf_coef", True, "vf_coef=True"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(**{field: value})


def test_config_from_dict_rejects_unknown_keys():
    assert PPOConfig.from_dict({"gamma": 0.9}).gamma == 0.9
    with pytest.raises(ValueError, match=r"unknown PPOConfig field\(s\) \['lr'\]"):
        PPOConfig.from_dict({"lr": 1e-3})


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def make_agent(tok, **overrides):
    config = PPOConfig(**{"n_episodes": 4, "batch_size": 2, "n_epochs": 2, "seed": 0} | overrides)
    env = PromptEditVectorEnv(
        config.n_episodes, tokenizer=tok, reward=ContentIntegrityScorer(mode="ratio"), max_new_tokens=10,
        autoreset_mode="disabled",
    )
    return PPOAgent(PolicyWithValue.tiny(tok, seed=0), env, config)


def test_integrity_aware_value_enters_gae(tok):
    agent = make_agent(tok, integrity_value_coef=0.5, negative_fraction=0.5)
    batch = agent.collect().batch
    assert batch.integrity is not None and batch.negative.sum() == 2
    rewards, advantages, targets, kl = agent.advantages(batch)
    shifted = batch.values + 0.5 * batch.integrity
    expected_adv, expected_returns = compute_gae(rewards, shifted, batch.mask, 1.0, 0.95)
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(targets, (expected_returns - 0.5 * batch.integrity) * batch.mask)
    plain = make_agent(tok)
    assert plain.collect().batch.integrity is None  # not computed when eta = 0


def test_global_rows_split_minibatches_of_the_global_batch():
    # rank 1 of 2 over 4 episodes holds episodes 2, 3 and the negatives of episodes 2 and 3 (global rows 5, 6)
    rows = GlobalRows(torch.tensor([2, 3, 5, 6]), 7)
    order = torch.tensor([6, 3, 2, 0, 1, 4, 5])
    assert [mb.tolist() for mb in rows.minibatches(order, 3)] == [[3, 1, 0], [], [2]]
    whole = DataParallel().rows_of(4, derived=[1, 3])
    assert whole.held.tolist() == [0, 1, 2, 3, 4, 5] and whole.size == 6
    assert [mb.tolist() for mb in whole.minibatches(torch.tensor([5, 0, 2, 1, 4, 3]), 4)] == [[5, 0, 2, 1], [4, 3]]


def test_update_changes_the_policy_and_reports_metrics(tok):
    agent = make_agent(tok, negative_fraction=0.5, typical_mass=0.9, target_kl=10.0)
    before = [p.clone() for p in agent.policy.parameters()]
    metrics = agent.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))
    for key in ("env/reward_mean", "objective/kl", "objective/entropy", "ppo/approx_kl", "ppo/clipfrac",
                "ppo/policy_loss", "ppo/value_loss", "ppo/explained_variance", "episode/length_mean",
                "negatives/reward_mean", "positives/reward_mean", "env/integrity", "counters/reward_calls"):
        assert key in metrics, key
    assert metrics["counters/reward_calls"] == 6 and metrics["negatives/count"] == 2


def test_the_time_profile_splits_the_collection_into_its_parts(tok):
    # the arithmetic, on given counters: (reference, reward calls, renders) seconds before and after a collection
    profile = PPOAgent._collect_profile(10.0, (1.0, 2.0, 1.5), (1.5, 7.0, 5.5))
    assert profile == pytest.approx({"time/reference_s": 0.5, "time/render_s": 4.0, "time/score_s": 1.0,
                                     "time/rollout_s": 4.5})  # 10 - 0.5 reference - 5 in the reward
    assert PPOAgent._collect_profile(3.0, (1.0, None, None), (2.0, None, None)) == {
        "time/reference_s": 1.0, "time/rollout_s": 2.0}  # a reward that keeps no counters: no render/score split
    # a step reports every part (the values are timings: only their presence is checked here)
    metrics = make_agent(tok).step()
    assert {f"time/{name}_s" for name in ("collect", "update", "reference", "render", "score", "rollout")} <= set(
        metrics)


def test_reward_seconds_counts_each_renderer_once():
    from promptgym.rewards import CompositeReward, CountingReward, reward_seconds

    shared, other = SimpleNamespace(render_seconds=3.0), SimpleNamespace(render_seconds=1.0)

    class Scorer:
        def __init__(self, name, renderer):
            self.name, self.renderer = name, renderer

        def __call__(self, results):
            return torch.zeros(len(results))

    reward = CompositeReward({"a": (Scorer("a", shared), 1.0), "b": (Scorer("b", shared), 1.0),
                              "integrity": (ContentIntegrityScorer(), 1.0)}, monitors={"m": Scorer("m", other)})
    reward.call_seconds = 5.0
    assert reward_seconds(reward) == (5.0, 4.0)  # the shared renderer once, the monitor's renderer too
    assert reward_seconds(CountingReward(reward)) == (5.0, 4.0)  # through a wrapper
    assert reward_seconds(ContentIntegrityScorer()) is None  # not a CompositeReward: no counters


def test_restricted_old_logprob_mode_runs(tok):
    metrics = make_agent(tok, typical_mass=0.8, old_logprob="restricted", negative_fraction=0.5).step()
    assert math.isfinite(metrics["ppo/policy_loss"]) and math.isfinite(metrics["ppo/approx_kl"])


def test_resume_equals_uninterrupted(tok, tmp_path):
    overrides = {"negative_fraction": 0.5, "typical_mass": 0.9, "kl_target": 0.1}
    assert_resume_equals_uninterrupted(lambda: make_agent(tok, **overrides), tmp_path / "ckpt")


def test_agent_checks_env_size(tok):
    env = PromptEditVectorEnv(3, tokenizer=tok, reward=ContentIntegrityScorer(), autoreset_mode="disabled")
    with pytest.raises(ValueError, match="n_episodes=32"):
        PPOAgent(PolicyWithValue.tiny(tok), env, PPOConfig())


def test_config_round_trips_through_asdict():
    config = PPOConfig(typical_mass=0.9, negative_fraction=0.25)
    assert PPOConfig.from_dict(dataclasses.asdict(config)) == config


def _exact_kl_to_reference(agent: PPOAgent) -> float:
    """Mean exact KL(policy || reference) per generated token on a fresh batch, computed apart from the agent."""
    from promptgym.agents.kl import exact_kl
    from promptgym.agents.rollout import generated_slice

    batch = agent.collector.collect(seed=123)
    cols = generated_slice(batch.context_length, batch.actions.shape[1])
    with torch.no_grad():
        logits = agent.policy(batch.input_ids, batch.attention_mask).logits[:, cols]
        ref = agent.policy._reference[0](input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, cols]
    return float(masked_mean(exact_kl(logits, ref), batch.mask))


def test_exact_kl_loss_is_reported_and_holds_the_policy_near_the_reference(tok):
    free = make_agent(tok, learning_rate=3e-3, n_epochs=4)
    held = make_agent(tok, learning_rate=3e-3, n_epochs=4, kl_loss_coef=5.0)
    assert "ppo/kl_loss" not in free.step()
    first = held.step()
    assert 0.0 <= first["ppo/kl_loss"] < 1.0 and math.isfinite(first["ppo/policy_loss"])  # starts at the reference
    for _ in range(3):
        free.step(), held.step()
    drift_free, drift_held = _exact_kl_to_reference(free), _exact_kl_to_reference(held)
    assert drift_free > 0.0
    assert drift_held < 0.5 * drift_free, (drift_held, drift_free)
