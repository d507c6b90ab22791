"""Rollouts: KV-cached sampling equals teacher forcing; typical-set sampling; negatives; prefix integrity."""

import numpy as np
import pytest
import torch
from agent_helpers import assert_equals_teacher_forcing

from promptgym.agents import rollout
from promptgym.agents.integrity_value import prefix_integrity
from promptgym.agents.negatives import keyword_vocabulary, negative_samples
from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.rollout import (
    RolloutBatch,
    RolloutCollector,
    distinct_contexts,
    evaluate_actions,
    reference_logprobs,
)
from promptgym.agents.sampling import typical_mask
from promptgym.envs import EditTemplate, PromptEditVectorEnv, load_tasks
from promptgym.rewards import ContentIntegrityScorer, EditResult


def make_env(tok, n=6, max_new_tokens=12, **kwargs):
    return PromptEditVectorEnv(
        n, tokenizer=tok, reward=ContentIntegrityScorer(mode="ratio"), max_new_tokens=max_new_tokens,
        autoreset_mode="disabled", **kwargs,
    )


@pytest.mark.parametrize("typical_mass", [None, 0.9])
def test_cached_rollout_logprobs_equal_teacher_forced_recompute(tok, valued_policy, typical_mass):
    env = make_env(tok)
    batch = RolloutCollector(valued_policy, env, typical_mass, torch.Generator().manual_seed(1)).collect(seed=3)
    assert_equals_teacher_forcing(valued_policy, batch, typical_mass)


def test_rollout_layout_rewards_and_prompts(tok, valued_policy):
    env = make_env(tok, n=5, max_new_tokens=10)
    batch = RolloutCollector(valued_policy, env).collect(seed=0)
    assert batch.mask.shape == batch.actions.shape and batch.mask.shape[1] <= 10
    lengths = batch.lengths.tolist()
    for i in range(len(batch)):
        n = lengths[i]
        assert batch.mask[i, :n].all() and not batch.mask[i, n:].any()  # right-padded
        ended_at_eos = batch.actions[i, n - 1] == tok.eos_token_id
        assert ended_at_eos or n == 10
        assert batch.env_rewards[i, : n - 1].abs().sum() == 0  # reward only on the last token
        assert batch.env_rewards[i, n - 1] == batch.scores[i]
        text = EditTemplate.clean(tok.decode(batch.actions[i, :n].tolist(), skip_special_tokens=True))
        assert batch.prompts[i] == text
        expected = ContentIntegrityScorer(mode="ratio").ratio(batch.tasks[i], text)
        assert batch.scores[i].item() == pytest.approx(expected)
        assert batch.components["integrity"][i].item() == pytest.approx(expected)
    context = batch.input_ids[:, : batch.context_length]
    assert (batch.attention_mask[:, : batch.context_length].any(0)).all()  # all-padding columns trimmed
    assert context.shape[1] <= env.episodes.max_context_tokens


def test_reference_logprobs_equal_policy_before_training(tok, valued_policy):
    batch = RolloutCollector(valued_policy, make_env(tok)).collect(seed=1)
    torch.testing.assert_close(batch.ref_logprobs[batch.mask], batch.logprobs[batch.mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(reference_logprobs(valued_policy, batch), batch.ref_logprobs)


def test_typical_sampling_only_draws_typical_tokens(tok, valued_policy):
    env = make_env(tok, n=4, max_new_tokens=8)
    batch = RolloutCollector(valued_policy, env, 0.5, torch.Generator().manual_seed(0)).collect(seed=0)
    with torch.no_grad():
        out = valued_policy.eval()(batch.input_ids, batch.attention_mask)
    cols = slice(batch.context_length - 1, batch.context_length - 1 + batch.actions.shape[1])
    keep = typical_mask(out.logits[:, cols].float(), 0.5)
    chosen = keep.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    assert chosen[batch.mask].all()


def test_collection_is_seeded(tok, valued_policy):
    a = RolloutCollector(valued_policy, make_env(tok), 0.9, torch.Generator().manual_seed(5)).collect(seed=2)
    b = RolloutCollector(valued_policy, make_env(tok), 0.9, torch.Generator().manual_seed(5)).collect(seed=2)
    assert torch.equal(a.actions, b.actions) and a.prompts == b.prompts


def test_collector_needs_disabled_autoreset(tok, valued_policy):
    with pytest.raises(ValueError, match="autoreset_mode='disabled'"):
        RolloutCollector(valued_policy, PromptEditVectorEnv(2, tokenizer=tok, reward=ContentIntegrityScorer()))
    with pytest.raises(ValueError, match="typical_mass=1.5"):
        RolloutCollector(valued_policy, make_env(tok), typical_mass=1.5)


def test_negatives_score_lower_than_their_targets(tok, valued_policy):
    env = make_env(tok, n=2, max_new_tokens=40)
    tasks = load_tasks("demo", "test")[:40]
    negatives = negative_samples(valued_policy, env, tasks, 0.5, np.random.default_rng(0), keyword_vocabulary(tasks))
    targets = env.reward([EditResult(t, t.target) for t in tasks]).total
    assert (negatives.scores <= targets).all() and (negatives.scores < targets).float().mean() > 0.9
    assert negatives.negative.all() and all(p != t.target for p, t in zip(negatives.prompts, tasks))
    with torch.no_grad():
        logprobs, values, _, _ = evaluate_actions(valued_policy.eval(), negatives)
    torch.testing.assert_close(negatives.logprobs[negatives.mask], logprobs[negatives.mask], atol=1e-4, rtol=1e-4)
    last = negatives.lengths - 1
    assert (negatives.actions[torch.arange(len(tasks)), last] == tok.eos_token_id).all()


def test_concat_pads_context_left_and_tokens_right(tok, valued_policy):
    env = make_env(tok, n=3, max_new_tokens=6)
    a = RolloutCollector(valued_policy, env).collect(seed=0)
    tasks = load_tasks("demo", "test")[:2]
    b = negative_samples(valued_policy, env, tasks, 0.5, np.random.default_rng(0), keyword_vocabulary(tasks))
    both = RolloutBatch.concat([a, b], pad_id=tok.pad_token_id)
    assert len(both) == 5 and both.negative.tolist() == [False] * 3 + [True] * 2
    with torch.no_grad():
        logprobs, *_ = evaluate_actions(valued_policy.eval(), both)
    torch.testing.assert_close(both.logprobs[both.mask], logprobs[both.mask], atol=1e-4, rtol=1e-4)


def test_prefix_integrity_is_partial_integrity_of_each_prefix(tok, valued_policy):
    env = make_env(tok, n=2, max_new_tokens=40)
    tasks = load_tasks("demo", "test")[:3]
    batch = negative_samples(valued_policy, env, tasks, 0.0001, np.random.default_rng(0), keyword_vocabulary(tasks))
    scorer = ContentIntegrityScorer()
    ci = prefix_integrity(batch, tok, EditTemplate(), scorer.partial)
    for i, task in enumerate(tasks):
        n = int(batch.lengths[i])
        assert ci[i, 0] == scorer.partial(task, "")
        before_last = tok.decode(batch.actions[i, : n - 1].tolist(), skip_special_tokens=True)
        assert ci[i, n - 1] == pytest.approx(scorer.partial(task, EditTemplate.clean(before_last)))
        assert ci[i, n:].abs().sum() == 0
    assert ci[:, 1:].max() > 0  # prefixes of (nearly uncorrupted) targets do keep keywords


# ------------------------------------------------------------------------------ contexts shared by a task's samples
def test_distinct_contexts_against_a_loop():
    pad = 3
    ids = torch.tensor([[pad, 5, 6], [7, 5, 6], [pad, 5, 6], [pad, pad, 6], [9, 5, 6], [7, 5, 6]])
    mask = (ids != pad).long()
    mask[3, 1] = 0
    ids[2, 0] = 8  # another id under padding: the same context as row 0
    first, inverse = distinct_contexts(ids, mask)
    for i in range(len(ids)):
        j = int(first[inverse[i]])
        same = torch.equal(mask[i], mask[j]) and torch.equal(ids[i][mask[i] == 1], ids[j][mask[j] == 1])
        assert same and j == min(k for k in range(len(ids)) if torch.equal(inverse[k], inverse[i]))
    groups = {tuple(k for k in range(len(ids)) if inverse[k] == inverse[i]) for i in range(len(ids))}
    assert groups == {(0, 2), (1, 5), (3,), (4,)}
    assert distinct_contexts(ids[[0, 1, 3, 4]], mask[[0, 1, 3, 4]]) is None  # every context its own
    one = distinct_contexts(ids[[1, 5]], mask[[1, 5]])
    assert one[0].tolist() == [0] and one[1].tolist() == [0, 0]


def grouped_env(tok, picked, k, max_new_tokens=10):
    env = make_env(tok, n=len(picked) * k, max_new_tokens=max_new_tokens)
    return env, {"tasks": [task for task in picked for _ in range(k)]}


def collect_unshared(monkeypatch, collector, **kwargs):
    """What the collector did before contexts were shared: every row prefilled and reference-encoded on its own."""
    with monkeypatch.context() as patch:
        patch.setattr(rollout, "distinct_contexts", lambda ids, mask: None)
        return collector.collect(**kwargs)


@pytest.mark.parametrize("typical_mass", [None, 0.9])
@pytest.mark.parametrize("separate_critic", [False, True])
def test_shared_contexts_sample_what_every_row_prefilled_alone_would(tok, monkeypatch, typical_mass, separate_critic):
    policy = PolicyWithValue.tiny(tok, seed=2, num_layers=2, separate_critic=separate_critic).eval()
    tasks = load_tasks("demo", "test")
    env, options = grouped_env(tok, [tasks[3], tasks[11], tasks[3], tasks[20]], k=3)  # tasks 3 twice: 6 rows
    calls = []
    with monkeypatch.context() as patch:
        patch.setattr(rollout, "distinct_contexts", lambda *a: calls.append(distinct_contexts(*a)) or calls[-1])
        shared = RolloutCollector(policy, env, typical_mass, torch.Generator().manual_seed(4)).collect(
            seed=0, options=options)
    assert len(calls[0][0]) == 3 and len(calls[1][0]) == 3  # prefill and reference pass: 3 distinct contexts
    env, _ = grouped_env(tok, [tasks[3], tasks[11], tasks[3], tasks[20]], k=3)
    alone = collect_unshared(monkeypatch, RolloutCollector(policy, env, typical_mass, torch.Generator().manual_seed(4)),
                             seed=0, options=options)
    assert torch.equal(shared.actions, alone.actions) and shared.prompts == alone.prompts
    m = shared.mask
    for name in ("logprobs", "sample_logprobs", "values", "entropy", "ref_logprobs"):
        torch.testing.assert_close(getattr(shared, name)[m], getattr(alone, name)[m], atol=1e-5, rtol=1e-5)
    assert_equals_teacher_forcing(policy, shared, typical_mass)


def test_shared_context_reference_pass_equals_one_full_forward(tok):
    """Through a trained policy (the reference differs from it), a GPT-2 (position ids) and a single generated
    column."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=128))
    tasks = load_tasks("demo", "test")
    for policy in (PolicyWithValue.tiny(tok, seed=1), PolicyWithValue(gpt2)):
        policy.freeze_reference()
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        for max_new_tokens in (1, 9):
            env, options = grouped_env(tok, tasks[:3], k=4, max_new_tokens=max_new_tokens)
            batch = RolloutCollector(policy.eval(), env).collect(seed=1, options=options)
            steps = batch.actions.shape[1]
            full = policy.reference_logits(batch.input_ids, batch.attention_mask)[:, batch.context_length - 1 :][:, :steps]
            expected = full.log_softmax(-1).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1).masked_fill(~batch.mask, 0)
            torch.testing.assert_close(batch.ref_logprobs, expected, atol=1e-5, rtol=1e-5)
            policy_logprobs = evaluate_actions(policy, batch)[0]
            assert (policy_logprobs - batch.ref_logprobs)[batch.mask].abs().max() > 1e-3  # a real reference
