"""The one cache class (rewards/cache.py) and the reward state that checkpoints carry (CompositeReward.state_dict)."""

import pytest
import torch

from promptgym.envs import default_tokenizer, load_tasks
from promptgym.rewards import EditResult, build_reward
from promptgym.rewards.cache import LRU


def test_lru_evicts_the_least_recently_used_and_round_trips_its_order():
    cache = LRU(3)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache["a"] == "A" and "b" in cache  # `in` does not refresh "b"
    cache.put("d", "D")
    assert cache.keys() == ["c", "a", "d"] and cache.get("b") is None
    copy = LRU(3)
    copy.load(cache.items())
    copy.put("e", "E")
    cache.put("e", "E")
    assert copy.items() == cache.items() == [("a", "A"), ("d", "D"), ("e", "E")]
    off = LRU(0)
    off.put("x", 1)
    assert len(off) == 0 and off.get("x", 7) == 7
    with pytest.raises(ValueError, match="maxsize must be an int >= 0"):
        LRU(-1)


def _results(tasks, start, n):
    return [EditResult(task, f"{task.source}, edited {i}") for i, task in enumerate(tasks[start : start + n])]


@pytest.mark.slow
def test_a_reward_restored_from_its_state_scores_and_counts_as_the_original():
    tokenizer, tasks = default_tokenizer(), load_tasks("demo", split="test")
    original = build_reward("tiny", tokenizer=tokenizer, normalize=True, renderer={"images_per_prompt": 1})
    original(_results(tasks, 0, 12))
    state = original.state_dict()
    restored = build_reward("tiny", tokenizer=tokenizer, normalize=True, renderer={"images_per_prompt": 1})
    restored.load_state_dict(state)
    batch = _results(tasks, 6, 12)  # half of it seen before: hits and misses in one batch
    a, b = original(batch), restored(batch)
    assert torch.equal(a.total, b.total)
    assert all(torch.equal(a.components[k], b.components[k]) for k in a.components)
    renderer_a = original.terms["aesthetic"][0].renderer
    renderer_b = restored.terms["aesthetic"][0].renderer
    assert renderer_a.cache_info() == renderer_b.cache_info() and renderer_a.hits > 0
    assert original.state_dict()["stats"] == restored.state_dict()["stats"]


def test_an_older_checkpoint_state_of_statistics_alone_still_loads():
    reward = build_reward("tiny", tokenizer=default_tokenizer(), normalize=True)
    reward.load_state_dict({"integrity": {"mean": 0.5, "var": 2.0, "count": 3.0}})
    assert reward.stats["integrity"].mean == 0.5
