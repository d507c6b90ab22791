"""Several episodes per task (`PPOConfig.samples_per_task`) and the leave-one-out baseline (RLOO's)."""

import json

import numpy as np
import pytest
import torch
from agent_helpers import assert_resume_equals_uninterrupted

from promptgym.agents.gae import compute_gae
from promptgym.agents.groups import (
    TaskReplay,
    group_improvers,
    group_spread,
    group_task_indices,
    last_token_index,
    leave_one_out_baseline,
)
from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.ppo import PPOAgent, PPOConfig, self_imitation_loss
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


# ------------------------------------------------------------------------------------------ prioritised task replay
def test_group_spread_by_hand():
    values = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 2.0, 4.0, 4.0, 6.0])
    expected = [0.0, 0.5, float(np.std([2.0, 4.0, 4.0, 6.0]))]  # population std, an independent computation
    assert group_spread(values, 4).tolist() == pytest.approx(expected)
    assert group_spread(torch.tensor([3.0]), 1).tolist() == [0.0]  # a single sample: no spread
    with pytest.raises(ValueError, match="groups of 4"):
        group_spread(torch.ones(6), 4)


def test_task_replay_draws_seen_tasks_by_their_spread():
    replay = TaskReplay(num_tasks=100, fraction=0.5)
    tasks, replayed = replay.draw(np.random.default_rng(0), 16, 4)  # nothing seen yet: all four drawn uniformly
    assert replayed == 0 and len(tasks) == 16 and all(len(set(tasks[g:g + 4])) == 1 for g in range(0, 16, 4))
    # task 7's samples differed most, task 3's less, task 5's not at all (never replayed)
    replay.observe([7] * 4 + [3] * 4 + [5] * 4, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.4, 2.0, 2.0, 2.0, 2.0]), 4)
    assert replay.scores == pytest.approx({7: 0.5, 3: float(np.std([0, 0, 0, 0.4])), 5: 0.0})
    counts = {3: 0, 7: 0}
    for seed in range(2000):
        tasks, replayed = replay.draw(np.random.default_rng(seed), 16, 4)  # 2 of 4 tasks replayed: both candidates
        assert replayed == 2 and sorted(tasks[:8:4]) == [3, 7]
    rng = np.random.default_rng(1)
    replay_one = TaskReplay(num_tasks=100, fraction=0.25)  # one task replayed an update: 7 three times as often as 3
    replay_one.scores = dict(replay.scores)
    for _ in range(4000):
        tasks, _ = replay_one.draw(rng, 16, 4)
        counts[tasks[0]] += 1
    share = counts[7] / 4000
    assert share == pytest.approx(0.5 / (0.5 + replay.scores[3]), abs=0.03)


def test_task_replay_rescores_a_task_seen_again_and_round_trips_its_state():
    replay = TaskReplay(num_tasks=10, fraction=0.5)
    replay.observe([2, 2], torch.tensor([0.0, 1.0]), 2)
    replay.observe([2, 2], torch.tensor([1.0, 1.0]), 2)  # learned: the samples now agree
    assert replay.scores == {2: 0.0}
    tasks, replayed = replay.draw(np.random.default_rng(0), 4, 2)
    assert replayed == 0  # a task whose samples agree is not replayed
    replay.observe([4, 4, 9, 9], torch.tensor([0.0, 2.0, 1.0, 0.0]), 2)
    again = TaskReplay(num_tasks=10, fraction=0.5)
    again.load_state_dict(json.loads(json.dumps(replay.state_dict())))  # JSON-able, as checkpoints store it
    assert again.scores == replay.scores
    assert again.draw(np.random.default_rng(5), 8, 2) == replay.draw(np.random.default_rng(5), 8, 2)


def test_task_replay_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fraction=1.0"):
        TaskReplay(10, 1.0)
    with pytest.raises(ValueError, match="num_tasks=0"):
        TaskReplay(0, 0.5)
    with pytest.raises(ValueError, match="not a multiple"):
        TaskReplay(10, 0.5).draw(np.random.default_rng(0), 6, 4)
    with pytest.raises(ValueError, match="3 task indices for 4 values"):
        TaskReplay(10, 0.5).observe([1, 1, 1], torch.zeros(4), 2)


def test_an_agent_with_replay_revisits_tasks_whose_samples_differed(tok):
    agent = make_agent(tok, n_episodes=8, samples_per_task=2, replay_fraction=0.5, replay_score="integrity")
    metrics = agent.step()
    assert metrics["replay/tasks"] == 0  # nothing seen before the first update
    first = agent.replay.scores
    batch = agent.collect().batch  # update 1: half of its 4 tasks come from the scored ones, if any differed
    ids = [task.id for task in batch.tasks]
    scored = [t for t, score in first.items() if score > 0]
    expected_replayed = min(2, len(scored))
    tasks = agent.env.episodes.tasks
    assert {ids[2 * g] for g in range(expected_replayed)} <= {tasks[t].id for t in scored}
    # the scores are the integrity spreads of the groups the agent just collected (observed at collection)
    values = batch.components["integrity"].reshape(-1, 2)
    for g in range(4):
        index = [t.id for t in tasks].index(ids[2 * g])
        assert agent.replay.scores[index] == pytest.approx(float(values[g].double().std(correction=0)))


def test_replay_configs_are_checked(tok):
    with pytest.raises(ConfigError, match="replay_fraction=0.5 needs samples_per_task > 1"):
        PPOConfig(n_episodes=4, batch_size=2, replay_fraction=0.5)
    agent = make_agent(tok, replay_fraction=0.5, replay_score="no-such-term")
    with pytest.raises(ConfigError, match="replay_score='no-such-term' is not a component.*'integrity'"):
        agent.collect()


def test_a_resumed_run_replays_what_the_uninterrupted_one_does(tok, tmp_path):
    """The replay scores travel in the checkpoint: the second update (which replays) is the same after a reload."""
    agent = make_agent(tok, replay_fraction=0.5)
    agent.step()
    assert sum(score > 0 for score in agent.replay.scores.values()) >= 1  # the second update has tasks to replay
    assert_resume_equals_uninterrupted(lambda: make_agent(tok, replay_fraction=0.5), tmp_path / "ckpt")
    plain = make_agent(tok)
    plain.step()
    plain.save(tmp_path / "plain")
    with pytest.raises(ValueError, match="no task replay state"):
        make_agent(tok, replay_fraction=0.5).load(tmp_path / "plain")


# ------------------------------------------------------------------------------------------ group self-imitation
def test_group_improvers_against_a_loop():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.857, 0.857, 0.857, 0.857, 1.0, 0.2, 0.5, 0.5, 0.5])
    loop = []
    for g in range(3):
        group = scores[g * 4:g * 4 + 4].tolist()
        loop += [s > np.mean(group[:i] + group[i + 1:]) + 1e-9 for i, s in enumerate(group)]
    assert group_improvers(scores, 4).tolist() == loop == [True] * 3 + [False] * 4 + [True, False] + [True] * 3


def test_group_improvers_edge_cases():
    assert not group_improvers(torch.full((6,), 0.7), 3).any()  # ties: nobody to imitate
    assert group_improvers(torch.tensor([0.0, 1.0]), 2).tolist() == [False, True]
    assert not group_improvers(torch.tensor([1.0, 1.0 + 1e-12]), 2).any()  # within the tolerance: a tie
    assert group_improvers(torch.zeros(0), 2).shape == (0,)
    with pytest.raises(ValueError, match="at least 2"):
        group_improvers(torch.ones(4), 1)
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        group_improvers(torch.ones(2, 2), 2)


def test_self_imitation_loss_against_a_loop():
    logprobs = torch.tensor([[-0.5, -1.0, -float("inf")], [-2.0, -0.1, -0.3], [-0.7, -0.2, -0.4]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    imitate = torch.tensor([True, False, True])
    # the imitated rows' real tokens: -0.5, -1.0 (row 0) and -0.7 (row 2); a token mean over all 6 real tokens
    assert float(self_imitation_loss(logprobs, mask, imitate)) == pytest.approx((0.5 + 1.0 + 0.7) / 6)
    assert float(self_imitation_loss(logprobs, mask, imitate, num_tokens=11.0)) == pytest.approx(2.2 / 11)
    assert float(self_imitation_loss(logprobs, mask, torch.zeros(3, dtype=torch.bool))) == 0.0
    assert float(self_imitation_loss(logprobs, torch.zeros_like(mask), imitate)) == 0.0  # all padding


def test_an_agent_imitates_the_episodes_that_beat_their_siblings(tok):
    agent = make_agent(tok, negative_fraction=0.25, sil_coef=0.5)
    collected = agent.collect()
    batch = collected.batch
    imitate = agent.imitated(batch)
    integrity = batch.components["integrity"][:8].double().reshape(2, 4)
    for g in range(2):
        for i in range(4):
            others = torch.cat([integrity[g, :i], integrity[g, i + 1:]]).mean()
            assert bool(imitate[4 * g + i]) == bool(integrity[g, i] > others + 1e-9)
    assert not imitate[8:].any()  # negatives are never imitated
    metrics = agent.update(collected)
    assert metrics["sil/episodes"] == float(imitate.sum()) and np.isfinite(metrics["ppo/sil_loss"])
    plain = make_agent(tok).step()
    assert "sil/episodes" not in plain and "ppo/sil_loss" not in plain


def test_self_imitation_changes_an_update_only_when_an_episode_beats_its_siblings(tok):
    def parameters_after_one_update(agent):
        agent.step()
        return torch.cat([p.detach().flatten() for p in agent.policy.parameters()])

    plain = parameters_after_one_update(make_agent(tok))
    probe = make_agent(tok, sil_coef=1.0)
    assert probe.imitated(probe.collect().batch).any(), "the test needs a group whose integrity differs"
    assert not torch.equal(parameters_after_one_update(make_agent(tok, sil_coef=1.0)), plain)
    nobody = make_agent(tok, sil_coef=1.0)
    nobody.imitated = lambda batch: torch.zeros(len(batch), dtype=torch.bool)  # every group tied
    assert torch.equal(parameters_after_one_update(nobody), plain)


def test_self_imitation_configs_are_checked(tok):
    with pytest.raises(ConfigError, match="sil_coef=0.5 needs samples_per_task > 1"):
        PPOConfig(n_episodes=4, batch_size=2, sil_coef=0.5)
    with pytest.raises(ValueError, match="sil_coef"):
        PPOConfig(sil_coef=-1.0)
    agent = make_agent(tok, sil_coef=0.5, sil_score="no-such-term")
    with pytest.raises(ConfigError, match="sil_score='no-such-term' is not a component.*'integrity'"):
        agent.update(agent.collect())
