"""Multi-turn PPO: GAE across a conversation against a plain loop, the conversation collector against teacher forcing
and the env, the agent's chat path (per-turn negatives, whole-conversation minibatches, reward calls per turn),
chat SFT examples, and the chat preset."""

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from agent_helpers import assert_equals_teacher_forcing, assert_resume_equals_uninterrupted

from promptgym.agents.conversation import ConversationPacking, conversation_gae
from promptgym.agents.gae import compute_gae
from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.ppo import PPOAgent, PPOConfig
from promptgym.agents.rollout import ChatRolloutCollector, RolloutBatch
from promptgym.agents.sft import ContextExample, SFTConfig, chat_examples, encode_example, sft_warm_start
from promptgym.envs import (
    ChatTemplate,
    ChatTurn,
    Conversation,
    EditTemplate,
    PromptChatEnv,
    PromptChatVectorEnv,
    load_conversations,
)
from promptgym.envs.chat import ChatEpisodes
from promptgym.experiments.bench_chat import Evaluation, summary, survival, turn_one_attributes
from promptgym.experiments.builders import build_training_env, sft_examples, stage_conversations
from promptgym.experiments.config import load_config
from promptgym.rewards import ContentIntegrityScorer, EditResult


# --------------------------------------------------------------------------------------- GAE across conversations
def reference_conversation_gae(rewards, values, mask, episode, turn, gamma, lam, integrity=None, coef=0.0):
    """A plain Python loop: each conversation's tokens in turn order, backwards, V' = V + coef * CI."""
    advantages, targets = torch.zeros_like(rewards), torch.zeros_like(rewards)
    for e in sorted(set(episode.tolist())):
        rows = sorted((b for b in range(len(episode)) if episode[b] == e), key=lambda b: int(turn[b]))
        tokens = [(b, t) for b in rows for t in range(int(mask[b].sum()))]
        bonus = [coef * float(integrity[b, t]) if integrity is not None else 0.0 for b, t in tokens]
        v = [float(values[b, t]) + bonus[i] for i, (b, t) in enumerate(tokens)]
        running = 0.0
        for i in reversed(range(len(tokens))):
            b, t = tokens[i]
            next_v = v[i + 1] if i + 1 < len(tokens) else 0.0
            running = float(rewards[b, t]) + gamma * next_v - v[i] + gamma * lam * running
            advantages[b, t] = running
            targets[b, t] = running + v[i] - bonus[i]
    return advantages, targets


def random_rows(lengths_per_conversation, width, seed=0, shuffle=True):
    """Rows for conversations given as lists of turn lengths; rows shuffled so order is not relied on."""
    generator = torch.Generator().manual_seed(seed)
    spec = [(e, k, n) for e, lengths in enumerate(lengths_per_conversation) for k, n in enumerate(lengths)]
    if shuffle:
        random.Random(seed).shuffle(spec)
    b = len(spec)
    mask = torch.zeros(b, width, dtype=torch.bool)
    for row, (_, _, n) in enumerate(spec):
        mask[row, :n] = True
    rewards = torch.randn(b, width, generator=generator, dtype=torch.float64)
    values = torch.randn(b, width, generator=generator, dtype=torch.float64)
    integrity = torch.rand(b, width, generator=generator, dtype=torch.float64)
    episode = torch.tensor([e * 7 + 3 for e, _, _ in spec])  # ids need not be 0..E-1
    turn = torch.tensor([k for _, k, _ in spec])
    return rewards, values, mask, episode, turn, integrity


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_conversation_gae_equals_a_plain_loop_over_each_conversations_tokens(gamma, lam):
    # conversations of different lengths in one batch, turns of one token, a turn at the token limit (width 6)
    lengths = [[3, 6, 2], [1, 1], [6], [2, 6, 1, 4]]
    rewards, values, mask, episode, turn, integrity = random_rows(lengths, width=6)
    for ci, coef in ((None, 0.0), (integrity, 0.5)):
        got = conversation_gae(rewards, values, mask, episode, turn, gamma, lam, ci, coef)
        expected = reference_conversation_gae(rewards, values, mask, episode, turn, gamma, lam, ci, coef)
        torch.testing.assert_close(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1])
        assert (got[0][~mask] == 0).all() and (got[1][~mask] == 0).all()


def test_one_turn_conversations_are_exactly_single_turn_gae():
    rewards, values, mask, episode, turn, _ = random_rows([[3], [1], [5], [5]], width=7, shuffle=False)
    got = conversation_gae(rewards, values, mask, episode, turn, 1.0, 0.95)
    expected = compute_gae(rewards, values, mask, 1.0, 0.95)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1] * mask)


def test_a_later_turns_reward_reaches_the_first_turns_tokens():
    # two turns of two tokens, reward only at the end of turn 2: with gamma = lambda = 1 and V = 0 every token's
    # advantage is that reward; split into two one-turn conversations, turn 1 would see nothing
    mask = torch.ones(2, 2, dtype=torch.bool)
    rewards = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    together = conversation_gae(rewards, torch.zeros(2, 2), mask, torch.tensor([0, 0]), torch.tensor([0, 1]), 1, 1)
    apart = conversation_gae(rewards, torch.zeros(2, 2), mask, torch.tensor([0, 1]), torch.tensor([0, 0]), 1, 1)
    assert together[0].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert apart[0].tolist() == [[0.0, 0.0], [1.0, 1.0]]


def test_packing_round_trips_and_puts_turns_in_order():
    rewards, _, mask, episode, turn, _ = random_rows([[2, 3], [1]], width=4)
    packing = ConversationPacking.of(episode, turn, mask)
    assert packing.packed_shape == (2, 5) and packing.mask.sum(1).tolist() == [5, 1]
    torch.testing.assert_close(packing.unpack(packing.pack(rewards)), rewards * mask)
    first = [b for b in range(len(turn)) if episode[b] == episode.min() and turn[b] == 0][0]
    assert packing.pack(rewards)[0, :2].tolist() == rewards[first, :2].tolist()


@pytest.mark.parametrize("episode, turn, mask, message", [
    (torch.tensor([0, 0]), torch.tensor([1, 1]), torch.ones(2, 2), r"\(episode, turn\)=\(0, 1\) appears"),
    (torch.tensor([0, 1]), torch.tensor([0]), torch.ones(2, 2), "turn must be an integer tensor of shape"),
    (torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), torch.ones(2, 2), "episode must be an integer"),
    (torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([[0, 1], [1, 1]]), "right-padded"),
])
def test_bad_conversation_rows_are_clear_errors(episode, turn, mask, message):
    with pytest.raises(ValueError, match=message):
        conversation_gae(torch.zeros(mask.shape), torch.zeros(mask.shape), mask, episode, turn, 1.0, 0.95)


# --------------------------------------------------------------------------------------- the conversation collector

INTEGRITY = ContentIntegrityScorer(mode="ratio")
CONVERSATIONS = load_conversations("demo", "train")[:12]


def chat_env(tok, n=4, sync_turns=True, max_new_tokens=8):
    return PromptChatVectorEnv(n, CONVERSATIONS, tok, INTEGRITY, max_new_tokens=max_new_tokens,
                               max_context_tokens=96, autoreset_mode="disabled", sync_turns=sync_turns)


class CountingPrefills(torch.nn.Module):
    """The policy, counting forwards of more than one new token (prefills)."""

    def __init__(self, policy):
        super().__init__()
        self.policy, self.prefills = policy, 0

    def forward(self, input_ids, attention_mask, **kwargs):
        self.prefills += int(input_ids.shape[1] > 1)
        return self.policy(input_ids, attention_mask, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.policy, name)


@pytest.mark.parametrize("typical_mass", [None, 0.9])
def test_chat_rollout_rows_are_the_envs_turns_and_equal_teacher_forcing(tok, valued_policy, typical_mass):
    env = chat_env(tok)
    counting = CountingPrefills(valued_policy)
    batch = ChatRolloutCollector(counting, env, typical_mass, torch.Generator().manual_seed(1)).collect(seed=5)
    turns = [len(c.turns) for c in env.conversations]
    assert counting.prefills == max(turns)  # one prefill per turn for the whole batch
    assert batch.episode.tolist() == [i for i, n in enumerate(turns) for _ in range(n)]
    assert batch.turn.tolist() == [k for n in turns for k in range(n)]
    for r, (i, k) in enumerate(zip(batch.episode.tolist(), batch.turn.tolist())):
        prompts = env.prompts(i)
        assert batch.prompts[r] == prompts[k + 1] and batch.tasks[r].source == prompts[k]
        context, _, _ = env.chats.context(env.conversations[i], prompts[: k + 1])
        row = batch.input_ids[r, : batch.context_length][batch.attention_mask[r, : batch.context_length] == 1]
        assert row.tolist() == context.tolist()  # the turn's context, history included, as the env showed it
        n = int(batch.mask[r].sum())
        expected = float(INTEGRITY([EditResult(batch.tasks[r], batch.prompts[r])])[0])
        assert batch.env_rewards[r, n - 1] == pytest.approx(expected) and batch.scores[r] == pytest.approx(expected)
        assert (batch.env_rewards[r, : n - 1] == 0).all()
    assert_equals_teacher_forcing(valued_policy, batch, typical_mass)
    assert (batch.ref_logprobs[batch.mask] != 0).any()


def test_chat_collection_is_seeded_and_sharded(tok, valued_policy):
    def collect(shard=None, n=4):
        return ChatRolloutCollector(valued_policy, chat_env(tok, n), None, torch.Generator().manual_seed(2)).collect(
            seed=9, shard=shard)

    a, b = collect(), collect()
    assert torch.equal(a.actions, b.actions) and a.prompts == b.prompts
    upper = collect(shard=(2, 4), n=2)  # sub-envs 2, 3 of the whole batch (seeded s + 2 ...): the same rows
    rows = torch.nonzero(a.episode >= 2).flatten()
    assert upper.episode.tolist() == a.episode[rows].tolist() and upper.prompts == [a.prompts[r] for r in rows]


def test_the_chat_collector_needs_synchronous_turns(tok, valued_policy):
    with pytest.raises(ValueError, match="sync_turns=True"):
        ChatRolloutCollector(valued_policy, chat_env(tok, sync_turns=False))
    from promptgym.envs import PromptEditVectorEnv

    with pytest.raises(ValueError, match="PromptChatVectorEnv"):
        ChatRolloutCollector(valued_policy, PromptEditVectorEnv(2, tokenizer=tok, reward=INTEGRITY, autoreset_mode="disabled"))


def test_concat_keeps_episode_and_turn_and_refuses_a_mix(tok, valued_policy):
    batch = ChatRolloutCollector(valued_policy, chat_env(tok, 2)).collect(seed=1, reference=False)
    both = RolloutBatch.concat([batch, batch.rows(torch.tensor([0]))], pad_id=tok.pad_token_id)
    assert both.episode.tolist() == [*batch.episode.tolist(), int(batch.episode[0])]
    plain = batch.rows(torch.tensor([0]))
    plain.episode = plain.turn = None
    with pytest.raises(ValueError, match="some batches have 'episode'"):
        RolloutBatch.concat([batch, plain], pad_id=tok.pad_token_id)


# --------------------------------------------------------------------------------------- PPO on conversations
def make_chat_agent(tok, n=4, **overrides):
    config = PPOConfig(**{"n_episodes": n, "batch_size": 2, "n_epochs": 2, "seed": 0} | overrides)
    return PPOAgent(PolicyWithValue.tiny(tok, seed=0), chat_env(tok, n), config)


def test_chat_advantages_run_gae_across_each_conversation(tok):
    agent = make_chat_agent(tok, integrity_value_coef=0.5, negative_fraction=0.5)
    batch = agent.collect().batch
    rewards, advantages, targets, _ = agent.advantages(batch)
    expected = reference_conversation_gae(rewards.double(), batch.values.double(), batch.mask, batch.episode,
                                          batch.turn, 1.0, 0.95, batch.integrity.double(), 0.5)
    torch.testing.assert_close(advantages.double(), expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(targets.double(), expected[1], atol=1e-5, rtol=1e-5)


def test_chat_negatives_are_one_turn_of_chosen_conversations_after_that_turns_context(tok):
    agent = make_chat_agent(tok, negative_fraction=0.5)
    batch = agent.collect().batch
    negatives = torch.nonzero(batch.negative).flatten().tolist()
    assert len(negatives) == 2 and sorted(batch.episode[negatives].tolist()) == [4, 5]  # episodes of their own
    for r in negatives:
        source = [s for s in range(len(batch)) if not batch.negative[s] and batch.tasks[s] == batch.tasks[r]]
        assert len(source) == 1 and batch.turn[source[0]] == batch.turn[r]
        c = batch.context_length
        assert torch.equal(batch.input_ids[r, :c][batch.attention_mask[r, :c] == 1],
                           batch.input_ids[source[0], :c][batch.attention_mask[source[0], :c] == 1])


def test_chat_update_trains_on_whole_conversations_and_counts_turns(tok):
    agent = make_chat_agent(tok, negative_fraction=0.5, typical_mass=0.9)
    seen = []
    step = agent._minibatch_step
    agent._minibatch_step = lambda mb, *rest: seen.append(mb.episode.tolist()) or step(mb, *rest)
    before = [p.clone() for p in agent.policy.parameters()]
    metrics = agent.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))
    turns = [len(c.turns) for c in agent.env.conversations]
    assert len(seen) == 2 * 3  # 2 epochs of 3 minibatches of 2 of the 6 episodes (4 conversations + 2 negatives)
    for episodes in seen:  # every minibatch: 2 whole episodes (conversations or negatives), all their rows
        assert len(set(episodes)) == 2
        for e in set(episodes):
            assert episodes.count(e) == (turns[e] if e < 4 else 1)
    assert metrics["counters/reward_calls"] == sum(turns) + 2 and metrics["counters/episodes"] == 4
    assert metrics["chat/turns_mean"] == pytest.approx(sum(turns) / 4)
    for key in ("chat/return_mean", "chat/turn1/reward", "chat/turn2/integrity", "chat/last/reward",
                "chat/last/integrity", "env/reward_mean", "ppo/policy_loss"):
        assert np.isfinite(metrics[key]), key


def test_chat_resume_equals_uninterrupted(tok, tmp_path):
    overrides = {"negative_fraction": 0.5, "typical_mass": 0.9, "kl_target": 0.1}
    assert_resume_equals_uninterrupted(lambda: make_chat_agent(tok, **overrides), tmp_path / "ckpt")


# --------------------------------------------------------------------------------------- SFT on chat turns


def test_chat_examples_are_each_turns_env_context_along_the_reference_path(tok):
    conversations = CONVERSATIONS[:3]
    chats = ChatEpisodes(conversations, tok, ChatTemplate(), 32, 160)
    examples = chat_examples(chats, conversations)
    assert len(examples) == sum(len(c.turns) for c in conversations)
    env = PromptChatEnv(conversations, tok, INTEGRITY, max_new_tokens=32, max_context_tokens=160)
    e = 0
    for i, conversation in enumerate(conversations):
        obs, _ = env.reset(options={"conversation_index": i})
        for turn in conversation.turns:  # type each target: the env's next context is the example's
            context = obs["input_ids"][:160][obs["attention_mask"][:160] == 1]
            assert list(examples[e].context_ids) == context.tolist() and examples[e].target == turn.target
            ids = tok(" " + turn.target)["input_ids"][len(tok("")["input_ids"]):] + [tok.eos_token_id]
            for token in ids:
                obs, *_ = env.step(token)
            e += 1
    encoded, n_context = encode_example(tok, examples[1], EditTemplate())
    assert encoded[:n_context] == list(examples[1].context_ids) and encoded[-1] == tok.eos_token_id


def test_sft_trains_on_a_mix_of_tasks_and_chat_turns(tok):
    from promptgym.envs import load_tasks

    chats = ChatEpisodes(CONVERSATIONS, tok, ChatTemplate(), 32, 160)
    examples = chat_examples(chats, CONVERSATIONS)
    mixed = [*load_tasks("demo")[:16], *examples]
    policy = PolicyWithValue.tiny(tok, seed=0)
    result = sft_warm_start(policy, tok, mixed, examples, config=SFTConfig(max_steps=30, batch_size=8),
                            progress=False)
    assert result.eval_loss_after < result.eval_loss_before - 1.0
    with pytest.raises(ValueError, match="have no target"):
        sft_warm_start(policy, tok, [ContextExample((1, 2), None, "x")], config=SFTConfig(max_steps=1))


# --------------------------------------------------------------------------------------- config and builders


def test_the_chat_preset_trains_on_conversations_with_chat_sft(tok):
    config = load_config("chat")
    assert (config.env.kind, config.env.max_context_tokens, config.sft.chat_turns) == ("chat", 160, True)
    synth = load_config("synth")
    assert config.policy == synth.policy  # what the comparison holds fixed, and the reward but for integrity's weight
    assert config.reward.weights["integrity"] == 2.0 and synth.reward.weights["integrity"] == 4.0  # chat as measured
    assert dataclasses.replace(config.reward, weights=synth.reward.weights) == synth.reward
    assert config.ppo.samples_per_task == 1  # the chat env draws whole conversations
    assert load_config().env.kind == "edit" and not load_config().sft.chat_turns  # the default stays single-turn
    sft, ppo = stage_conversations(config)
    assert sft and ppo and not {c.source for c in sft} & {c.source for c in ppo}  # disjoint sources (sft_share)
    env = build_training_env(config, tok, INTEGRITY, 3)
    assert isinstance(env, PromptChatVectorEnv) and env.sync_turns and env.num_envs == 3
    assert {c.id for c in env.chats.conversations} == {c.id for c in ppo}
    examples = sft_examples(config, tok)
    chat_part = [e for e in examples if isinstance(e, ContextExample)]
    assert len(chat_part) == sum(len(c.turns) for c in sft) and len(examples) > len(chat_part)


# --------------------------------------------------------------------------------------- the bench's turn-1 metric


def test_turn_one_attributes_are_those_turn_1_changed_and_later_turns_kept():
    kept = Conversation("a red dog in a park", (
        ChatTurn("make the dog blue", "a blue dog in a park"),
        ChatTurn("add a hat", "a blue dog with a hat in a park"),
        ChatTurn("change the background to a beach", "a blue dog with a hat on a beach"),
    ))
    assert turn_one_attributes(kept) == ["colour"]
    overwritten = Conversation(kept.source, (*kept.turns[:2], ChatTurn("make the dog green",
                                                                       "a green dog with a hat in a park")))
    assert turn_one_attributes(overwritten) == []
    assert turn_one_attributes(Conversation(kept.source, kept.turns[:2])) == []


class FakeJudge:
    """Reads `colour` index `reads[i]` off image i (the bench only reads the attributes it asks for)."""

    def __init__(self, reads):
        self.reads = reads

    def read(self, images):
        return {"colour": torch.tensor(self.reads[: len(images)])}


def test_survival_reads_turn_1s_attributes_off_the_turn_3_render_and_words():
    from types import SimpleNamespace

    from promptgym.rewards.gold import scene_labels
    from promptgym.rewards.scene import parse_scene

    conversation = Conversation("a red dog in a park", (
        ChatTurn("make the dog blue", "a blue dog in a park"),
        ChatTurn("add a hat", "a blue dog with a hat in a park"),
        ChatTurn("change the background to a beach", "a blue dog with a hat on a beach"),
    ))
    blue = scene_labels(parse_scene("a blue dog").scene)["colour"]
    renderer = SimpleNamespace(render=lambda prompts: torch.zeros(len(prompts), 2, 3, 4, 4))  # K = 2 images
    reward = SimpleNamespace(monitors={"gold/content": SimpleNamespace(renderer=renderer,
                                                                        judge=FakeJudge([blue, 0, 0, 0]))})
    got = survival(["a blue dog with a hat on a beach", "a red dog on a beach"], [conversation] * 2, reward)
    assert got == [(0.5, 1.0), (0.0, 0.0)]  # one of two renders still blue; the words: blue, then red


def test_bench_summary_pairs_conversations_and_averages_seeds_then_samples():
    def evaluation(policy, seed, last_gold):  # two conversations of one turn, one sample each
        return Evaluation(policy, seed, "", [[{"id": str(i), "turns": [{"gold/content": g, "proxy": 0.0}]}
                                              for i, g in enumerate(last_gold)]])

    evaluations = [evaluation("single-turn ppo", 0, [0.5, 1.0]), evaluation("single-turn ppo", 1, [0.7, 1.0]),
                   evaluation("chat ppo", 0, [0.9, 1.0]), evaluation("chat ppo", 1, [0.9, 0.8])]
    rows, paired = summary(evaluations, n_resamples=200)
    base, chat = rows
    assert base["gold content, last turn"][0] == pytest.approx((0.6 + 1.0) / 2)
    assert base["gold content, last turn per seed"] == pytest.approx([0.75, 0.85])
    assert chat["gold content, last turn"][0] == pytest.approx((0.9 + 0.9) / 2)
    (diff,) = paired
    assert diff["gold content, last turn"][0] == pytest.approx(((0.9 - 0.6) + (0.9 - 1.0)) / 2)
    assert diff["gold content, last turn"][3] == 2 and math.isnan(chat["gold content, turn 2"][0])


# --------------------------------------------------------------------------------------- a chat training run
@pytest.mark.slow
def test_a_chat_run_trains_logs_turns_and_summarises_them(tmp_path):
    import json

    from promptgym.experiments.train import train

    config = load_config("tiny", [
        "env.kind=chat", "env.max_context_tokens=160", "sft.chat_turns=true", "sft.max_steps=10",
        "ppo.n_episodes=2", "ppo.batch_size=1", "ppo.n_epochs=1", "train.num_updates=2", "train.eval_every=1",
        "data.num_eval_tasks=2", "env.max_new_tokens=12", "reward.renderer={images_per_prompt: 1}",
        "logging.progress=false", "logging.plots=false"])
    train(config, tmp_path)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    first = [s for s in samples if s["update"] == 0]
    assert {s["conversation_id"] for s in first} == {"chat-test-00000", "chat-test-00030"}
    assert len(first) == sum(s["num_turns"] for s in first if s["turn"] == 0)  # one row per turn
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["counters/episodes"] == 4 and "chat/last/integrity" in metrics[-1]
    assert "## Fixed test conversations per turn" in (tmp_path / "summary.md").read_text()
