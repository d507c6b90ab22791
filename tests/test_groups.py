"""Several episodes per task (`PPOConfig.samples_per_task`) and the leave-one-out baseline (RLOO's)."""

import numpy as np
import pytest
import torch

from promptgym.agents.gae import compute_gae
from promptgym.agents.groups import group_task_indices, last_token_index, leave_one_out_baseline
from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.ppo import PPOAgent, PPOConfig
from promptgym.agents.validation import ConfigError
from promptgym.envs import PromptChatVectorEnv, PromptEditVectorEnv, default_tokenizer, load_conversations
from promptgym.rewards import ContentIntegrityScorer


def test_leave_one_out_baseline_by_hand():
    returns = torch.tensor([1.0, 2.0, 6.0, 0.0, -3.0, 3.0])
    # groups (1, 2, 6) and (0, -3, 3): each entry's mean over the other two
    expected = torch.tensor([4.0, 3.5, 1.5, 0.0, 1.5, -1.5])
    torch.testing.assert_close(leave_one_out_baseline(returns, 3), expected)
    # an independent loop
    loop = torch.tensor([np.mean([r for j, r in enumerate(returns.tolist()[g * 3:g * 3 + 3]) if j != i])
                         for g in range(2) for i in range(3)], dtype=torch.float32)
    torch.testing.assert_close(leave_one_out_baseline(returns, 3), loop)


def test_leave_one_out_baseline_edge_cases():
    ties = torch.full((4,), 0.7)
    torch.testing.assert_close(ties - leave_one_out_baseline(ties, 4), torch.zeros(4))  # a tie: no signal
    torch.testing.assert_close(leave_one_out_baseline(torch.tensor([1.0, 5.0]), 2), torch.tensor([5.0, 1.0]))
    assert leave_one_out_baseline(torch.zeros(0), 2).shape == (0,)
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_baseline(torch.ones(4), 1)
    with pytest.raises(ValueError, match="5 returns cannot be split into groups of 2"):
        leave_one_out_baseline(torch.ones(5), 2)
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        leave_one_out_baseline(torch.ones(2, 2), 2)


def test_leave_one_out_baseline_is_independent_of_the_own_return():
    returns = torch.tensor([0.0, 1.0, 2.0, 3.0])
    moved = returns.clone()
    moved[1] = 100.0
    assert leave_one_out_baseline(returns, 4)[1] == leave_one_out_baseline(moved, 4)[1]


def test_group_task_indices_repeat_each_drawn_task():
    indices = group_task_indices(np.random.default_rng(0), 50, 12, 4)
    assert len(indices) == 12
    groups = [indices[i:i + 4] for i in range(0, 12, 4)]
    assert all(len(set(g)) == 1 for g in groups) and all(0 <= i < 50 for i in indices)
    assert indices == group_task_indices(np.random.default_rng(0), 50, 12, 4)  # seeded
    assert group_task_indices(np.random.default_rng(0), 1, 3, 1) == [0, 0, 0]
    with pytest.raises(ValueError, match="not a multiple of group_size=4"):
        group_task_indices(np.random.default_rng(0), 50, 10, 4)
    with pytest.raises(ValueError, match="at least one task"):
        group_task_indices(np.random.default_rng(0), 0, 4, 2)


def test_last_token_index():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert last_token_index(mask).tolist() == [1, 2, 0, -1]


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def make_agent(tok, **overrides):
    config = PPOConfig(**{"n_episodes": 8, "batch_size": 4, "n_epochs": 1, "seed": 0, "samples_per_task": 4}
                       | overrides)
    env = PromptEditVectorEnv(config.n_episodes, tokenizer=tok, reward=ContentIntegrityScorer(mode="ratio"),
                              max_new_tokens=10, autoreset_mode="disabled")
    return PPOAgent(PolicyWithValue.tiny(tok, seed=0), env, config)


def test_an_update_samples_each_task_samples_per_task_times(tok):
    agent = make_agent(tok, negative_fraction=0.25)
    batch = agent.collect().batch
    ids = [task.id for task in batch.tasks]
    positives = ids[:8]
    assert len(set(positives[:4])) == 1 and len(set(positives[4:])) == 1
    assert batch.negative.tolist() == [False] * 8 + [True] * 2 and set(ids[8:]) <= set(positives)
    again = agent.collect().batch  # same update counter: the same tasks (they are drawn from the update's seed)
    assert [task.id for task in again.tasks][:8] == positives


def test_group_baseline_centres_each_episode_on_its_siblings(tok):
    agent = make_agent(tok, negative_fraction=0.25, integrity_value_coef=0.5)
    batch = agent.collect().batch
    with torch.no_grad():
        batch.env_rewards[:8] = 0.0  # a reward on each positive's last token, the same number for a tie below
    lengths = batch.mask.sum(1)
    rewards = torch.tensor([0.2, 0.4, 0.6, 1.0, 0.5, 0.5, 0.5, 0.5])
    batch.env_rewards[torch.arange(8), lengths[:8] - 1] = rewards
    got, advantages, targets, kl = agent.advantages(batch)
    # reference: subtract by hand the mean of the three siblings, then the KL penalty, then integrity-aware GAE
    siblings = torch.tensor([(2.2 - 0.2) / 3, (2.2 - 0.4) / 3, (2.2 - 0.6) / 3, (2.2 - 1.0) / 3, 0.5, 0.5, 0.5, 0.5])
    env_rewards = batch.env_rewards.clone()
    env_rewards[torch.arange(8), lengths[:8] - 1] -= siblings
    expected = (env_rewards - agent.kl_controller.value * kl) * batch.mask
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got[8:], ((batch.env_rewards - agent.kl_controller.value * kl) * batch.mask)[8:])
    shifted = batch.values + 0.5 * batch.integrity
    expected_adv, _ = compute_gae(expected, shifted, batch.mask, 1.0, 0.95)
    torch.testing.assert_close(advantages, expected_adv)
    # the tie group's episodes carry no reward left: only the KL penalty
    torch.testing.assert_close(got[4:8], (-agent.kl_controller.value * kl * batch.mask)[4:8])


def test_without_the_group_baseline_the_rewards_are_the_envs(tok):
    agent = make_agent(tok, group_baseline=False)
    batch = agent.collect().batch
    rewards, _, _, kl = agent.advantages(batch)
    torch.testing.assert_close(rewards, (batch.env_rewards - agent.kl_controller.value * kl) * batch.mask)


def test_group_updates_run_and_count_reward_calls(tok):
    agent = make_agent(tok, negative_fraction=0.25)
    metrics = agent.step()
    assert metrics["counters/reward_calls"] == 10 and np.isfinite(metrics["ppo/policy_loss"])


def test_bad_group_configs_are_named(tok):
    with pytest.raises(ConfigError, match="n_episodes=6 is not a multiple of samples_per_task=4"):
        PPOConfig(n_episodes=6, batch_size=2, samples_per_task=4)
    with pytest.raises(ValueError, match="samples_per_task=0"):
        PPOConfig(samples_per_task=0)
    env = PromptChatVectorEnv(4, load_conversations("demo", "train")[:8], tokenizer=tok,
                              reward=ContentIntegrityScorer(), autoreset_mode="disabled", sync_turns=True)
    with pytest.raises(ConfigError, match="single edits"):
        PPOAgent(PolicyWithValue.tiny(tok, seed=0), env, PPOConfig(n_episodes=4, batch_size=2, samples_per_task=2))
