"""CountingReward: a wrapper that scores with the wrapped reward, records every call (the unit of a benchmark's budget)
and passes everything else through, so envs, the TRL adapter and the reward helpers use it as the reward itself."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from reward_helpers import integrity_and_length

from promptgym.envs import PromptEditVectorEnv, default_tokenizer, load_tasks
from promptgym.rewards import (
    CompositeReward,
    ContentIntegrityScorer,
    CountingReward,
    EditResult,
    as_composite,
    as_trl_reward_func,
    clear_reward_caches,
    reward_stats,
)


@pytest.fixture(scope="module")
def tasks():
    return load_tasks("demo", "train")[:8]


def test_counting_reward_records_every_call_and_returns_the_inner_output(tasks):
    inner = integrity_and_length()
    counter = CountingReward(inner)
    batches = [
        [EditResult(tasks[0], tasks[0].target), EditResult(tasks[1], "a blank canvas")],
        [EditResult(tasks[2], tasks[2].target), EditResult(tasks[3], "x"), EditResult(tasks[4], tasks[4].source)],
    ]
    outputs = [counter(batch) for batch in batches]
    for batch, output in zip(batches, outputs):
        expected = inner(batch)
        assert torch.equal(output.total, expected.total)
        assert output.components.keys() == expected.components.keys()
    assert counter.reward_calls == 5 and counter.num_batches == 2 and counter.batch_sizes == [2, 3]
    totals = torch.cat([o.total for o in outputs]).tolist()
    assert counter.totals == totals
    assert counter.components[3] == outputs[1].row(1)
    assert counter.mean_since(2) == pytest.approx(np.mean(totals[2:]))
    assert math.isnan(counter.mean_since(5))
    means = counter.component_means(last=3)
    assert means["integrity"] == pytest.approx(float(outputs[1].components["integrity"].mean()))
    assert means["chars"] == pytest.approx(float(outputs[1].components["chars"].mean()))
    assert counter.component_means(last=0) == {}
    assert repr(counter) == f"CountingReward({inner!r}, reward_calls=5)"


def test_counting_reward_stamps_each_call_with_the_training_time_so_far(tasks, monkeypatch):
    # a fake clock: this checks the bookkeeping (which call's stamp a curve point gets), not how fast anything runs
    clock = {"wall": 100.0, "cpu": 50.0}
    monkeypatch.setattr("promptgym.rewards.counting.time.perf_counter", lambda: clock["wall"])
    monkeypatch.setattr("promptgym.rewards.counting.time.process_time", lambda: clock["cpu"])
    counter = CountingReward(integrity_and_length())
    for size, (wall, cpu) in zip([2, 3, 1], [(1.5, 1.0), (4.0, 2.5), (6.0, 3.0)]):
        clock.update(wall=100.0 + wall, cpu=50.0 + cpu)
        counter([EditResult(task, task.source) for task in tasks[:size]])
    assert counter.elapsed == [{"wall_s": 1.5, "cpu_s": 1.0}, {"wall_s": 4.0, "cpu_s": 2.5}, {"wall_s": 6.0, "cpu_s": 3.0}]
    # Episode n (1-based) was scored by the call whose cumulative count first reaches n.
    assert [counter.elapsed_at(n)["cpu_s"] for n in range(1, 7)] == [1.0, 1.0, 2.5, 2.5, 2.5, 3.0]
    with pytest.raises(ValueError, match="only 6 episodes"):
        counter.elapsed_at(7)


def test_counting_reward_is_used_as_the_reward_and_shares_the_inner_state():
    inner = CompositeReward({"integrity": (ContentIntegrityScorer(), 1.0)}, normalize=True)
    counter = CountingReward(inner)
    assert as_composite(counter) is counter  # envs and the TRL adapter use it as it is
    assert counter.terms is inner.terms and counter.stats is inner.stats
    assert (counter.normalize, counter.delta, counter.on_error) == (inner.normalize, inner.delta, inner.on_error)
    assert counter.monitors is inner.monitors
    assert reward_stats(counter) == reward_stats(inner)
    clear_reward_caches(counter)  # reads the terms through the wrapper
    counter([EditResult(load_tasks("demo", "train")[0], "a cat")])
    assert inner.stats["integrity"].count > 1  # the running statistics updated are the inner reward's
    assert counter.state_dict() == inner.state_dict()
    state = copy.deepcopy(counter.state_dict())
    inner([EditResult(load_tasks("demo", "train")[1], "a dog")])
    counter.load_state_dict(state)  # restores the inner reward's statistics
    assert inner.state_dict() == state
    # A bare scorer is wrapped like as_composite does.
    assert list(CountingReward(ContentIntegrityScorer()).terms) == ["integrity"]
    with pytest.raises(AttributeError, match="no_such_attribute"):
        counter.no_such_attribute  # noqa: B018 - the error names the attribute


def test_counting_reward_copies_and_nests(tasks):
    counter = CountingReward(integrity_and_length())
    counter([EditResult(tasks[0], "a cat")])
    clone = copy.deepcopy(counter)  # no recursion through the pass-through while the copy is built
    assert clone.reward_calls == 1 and clone.inner is not counter.inner
    outer = CountingReward(counter)  # counting a counted reward counts in both
    outer([EditResult(tasks[1], "a dog"), EditResult(tasks[2], "a cow")])
    assert outer.reward_calls == 2 and counter.reward_calls == 3 and outer.terms is counter.terms


def test_counting_reward_counts_episodes_through_the_vector_env_and_the_trl_adapter(tasks):
    tokenizer = default_tokenizer()
    counter = CountingReward(ContentIntegrityScorer())
    env = PromptEditVectorEnv(3, tasks=tasks, tokenizer=tokenizer, reward=counter, max_new_tokens=2)
    env.reset(seed=0)
    for _ in range(2):
        env.step(np.full(3, 5))
    assert counter.reward_calls == 3 and counter.batch_sizes == [3]  # three episodes, one batched call
    func = as_trl_reward_func(counter)
    func(prompts=["", ""], completions=["a", "b"], source=["a dog", "a cat"], instruction=["x", "y"])
    assert counter.reward_calls == 5 and counter.batch_sizes == [3, 2]
