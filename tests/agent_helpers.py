"""Shared helpers for the rollout and PPO tests: a tiny policy with a non-zero value head, and the resume check."""

from __future__ import annotations

import torch

from promptgym.agents.policy import PolicyWithValue


def valued_tiny_policy(tok) -> PolicyWithValue:
    """The seeded tiny policy with a random (non-zero) value head, so value equality is a real check; its KL
    reference frozen."""
    policy = PolicyWithValue.tiny(tok, seed=0)
    with torch.no_grad():
        policy.value_head.summary.weight.normal_(generator=torch.Generator().manual_seed(0))
    policy.freeze_reference()
    return policy


def assert_resume_equals_uninterrupted(make_agent, path) -> None:
    """An agent checkpointed after one update and reloaded into a fresh one (same starting policy: the KL reference)
    makes the same second update as the agent that went on: metrics but timings, and weights."""
    a = make_agent()
    a.step()
    a.save(path)
    expected = a.step()
    b = make_agent()
    b.load(path)
    got = b.step()
    timing = {k for k in expected if k.startswith("time/")}
    assert {k: v for k, v in got.items() if k not in timing} == {k: v for k, v in expected.items() if k not in timing}
    for p, q in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(p, q)


def assert_equals_teacher_forcing(policy, batch, typical_mass) -> None:
    """The log-probs, values, entropies (and typical-set log-probs) a collector recorded token by token with the KV
    cache equal one teacher-forced pass over the batch."""
    from promptgym.agents.rollout import evaluate_actions

    with torch.no_grad():
        logprobs, values, entropy, restricted = evaluate_actions(policy.eval(), batch, typical_mass)
    m = batch.mask
    torch.testing.assert_close(batch.logprobs[m], logprobs[m], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batch.values[m], values[m], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batch.entropy[m], entropy[m], atol=1e-4, rtol=1e-4)
    if typical_mass is None:
        torch.testing.assert_close(batch.sample_logprobs, batch.logprobs)
    else:
        torch.testing.assert_close(batch.sample_logprobs[m], restricted[m], atol=1e-4, rtol=1e-4)
        assert (batch.sample_logprobs[m] >= batch.logprobs[m] - 1e-6).all()  # renormalised: never less likely
