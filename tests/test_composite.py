"""CompositeReward: weighted sums, delta mode, running normalisation and the error policy."""

import math

import pytest
import torch

from promptgym.envs import EditTask
from promptgym.rewards import (
    CompositeReward,
    EditResult,
    RewardOutput,
    RewardWrapper,
    ScorerError,
    as_composite,
    monitoring,
)


class LengthScorer:
    """Score = number of words in the prompt (a deterministic, hand-checkable scorer)."""

    name = "length"

    def __init__(self):
        self.calls = 0

    def __call__(self, results):
        self.calls += 1
        return torch.tensor([float(len(r.prompt.split())) for r in results])


class FixedScorer:
    def __init__(self, name, values):
        self.name, self.values = name, values

    def __call__(self, results):
        return torch.tensor(self.values[: len(results)], dtype=torch.float64)


class RaisingScorer:
    name = "broken"

    def __call__(self, results):
        raise RuntimeError("model exploded")


def results(*prompts):
    task = EditTask("a red dog", "make it blue", id="t")
    return [EditResult(task, p) for p in prompts]


def test_weighted_sum_and_components():
    reward = CompositeReward({"length": (LengthScorer(), 0.5), "fixed": (FixedScorer("fixed", [1.0, -2.0]), 2.0)})
    out = reward(results("one two", "one two three four"))
    assert isinstance(out, RewardOutput)
    torch.testing.assert_close(out.components["length"], torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(out.components["fixed"], torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(out.total, torch.tensor([0.5 * 2 + 2 * 1.0, 0.5 * 4 + 2 * -2.0]))
    assert out.total.dtype == torch.float32 and out.components["fixed"].dtype == torch.float32
    assert out.row(1) == {"length": 4.0, "fixed": -2.0}


def test_delta_mode_subtracts_source_score_in_one_call():
    scorer = LengthScorer()
    reward = CompositeReward({"length": (scorer, 1.0)}, delta=True)
    out = reward(results("a red dog now blue", "dog"))  # source "a red dog" has 3 words
    torch.testing.assert_close(out.components["length/source"], torch.tensor([3.0, 3.0]))
    torch.testing.assert_close(out.components["length/delta"], torch.tensor([2.0, -2.0]))
    torch.testing.assert_close(out.components["length"], torch.tensor([5.0, 1.0]))
    torch.testing.assert_close(out.total, torch.tensor([2.0, -2.0]))
    assert scorer.calls == 1  # edited and source prompts are scored in one batch


def test_delta_for_selected_terms_only():
    reward = CompositeReward({"a": (LengthScorer(), 1.0), "b": (FixedScorer("b", [7.0]), 1.0)}, delta=["a"])
    out = reward(results("x"))
    assert "a/delta" in out.components and "b/delta" not in out.components
    torch.testing.assert_close(out.total, torch.tensor([1.0 - 3.0 + 7.0]))


def test_running_normalisation_matches_batch_statistics():
    reward = CompositeReward({"length": (LengthScorer(), 1.0)}, normalize=True)
    first = ["a", "a b", "a b c"]
    second = ["a b c d", "a b c d e"]
    reward(results(*first))
    out = reward(results(*second))
    seen = torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64)
    expected = (torch.tensor([4.0, 5.0], dtype=torch.float64) - seen.mean()) / math.sqrt(seen.var(unbiased=False) + 1e-8)
    torch.testing.assert_close(out.components["length/normalized"], expected.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.total, expected.float(), atol=1e-4, rtol=1e-4)
    state = reward.state_dict()
    fresh = CompositeReward({"length": (LengthScorer(), 1.0)}, normalize=True)
    fresh.load_state_dict(state)
    assert fresh.stats["length"] == reward.stats["length"]


def test_a_normalised_reward_also_reports_its_stationary_unnormalised_sum_and_can_reset():
    reward = CompositeReward({"length": (LengthScorer(), 2.0), "b": (FixedScorer("b", [7.0, 1.0]), 1.0)},
                             normalize=["length"])
    first = reward(results("a b", "a b c d"))
    again = reward(results("a b", "a b c d"))
    expected = torch.tensor([2 * 2.0 + 7.0, 2 * 4.0 + 1.0])  # by hand: weight x raw value, summed
    torch.testing.assert_close(first.components["reward/unnormalized"], expected)
    torch.testing.assert_close(again.components["reward/unnormalized"], expected)  # the same prompts, the same sum
    assert not torch.allclose(first.total, again.total)  # while the normalised total moved with the statistics
    reward.reset_stats()
    torch.testing.assert_close(reward(results("a b", "a b c d")).total, first.total)  # fresh statistics again
    assert "reward/unnormalized" not in CompositeReward({"length": (LengthScorer(), 1.0)})(results("a")).components


def test_raise_mode_names_scorer_and_prompts_for_nan():
    reward = CompositeReward({"nanny": (FixedScorer("nanny", [1.0, float("nan")]), 1.0)})
    with pytest.raises(ScorerError, match=r"'nanny'.*\['second'\]"):
        reward(results("first", "second"))


def test_raise_mode_wraps_exceptions_with_name():
    with pytest.raises(ScorerError, match="'broken' raised RuntimeError: model exploded"):
        CompositeReward({"broken": (RaisingScorer(), 1.0)})(results("x"))


def test_zero_mode_counts_failed_episodes():
    reward = CompositeReward(
        {"nanny": (FixedScorer("nanny", [1.0, float("inf")]), 1.0), "length": (LengthScorer(), 1.0)},
        on_error="zero",
    )
    out = reward(results("one", "one two"))
    torch.testing.assert_close(out.components["reward_errors"], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out.total, torch.tensor([2.0, 2.0]))  # the inf term counts as 0
    out = CompositeReward({"broken": (RaisingScorer(), 1.0)}, on_error="zero")(results("a", "b"))
    torch.testing.assert_close(out.components["reward_errors"], torch.tensor([1.0, 1.0]))


def test_wrong_shape_is_reported():
    with pytest.raises(ScorerError, match=r"shape \(1,\), expected \(2,\)"):
        CompositeReward({"fixed": (FixedScorer("fixed", [1.0]), 1.0)})(results("a", "b"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"terms": {}}, "terms is empty"),
        ({"terms": {"a": LengthScorer()}}, r"terms\['a'\]"),
        ({"terms": {"a": (LengthScorer(), float("nan"))}}, "weight=nan"),
        ({"terms": {"a": (LengthScorer(), 1.0)}, "on_error": "ignore"}, "on_error='ignore'"),
        ({"terms": {"a": (LengthScorer(), 1.0)}, "delta": ["b"]}, r"unknown terms \['b'\]"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompositeReward(**kwargs)


def test_as_composite_wraps_a_scorer():
    composite = as_composite(LengthScorer())
    assert list(composite.terms) == ["length"]
    assert as_composite(composite) is composite
    with pytest.raises(TypeError, match="expected a CompositeReward or a Scorer"):
        as_composite(42)


def test_monitors_can_be_skipped_and_turned_on_for_a_block():
    """`monitoring = False` (a run whose gold is measured in its evaluations only) scores no monitor and changes
    nothing else; `with monitoring(reward)` scores them inside the block, through a wrapper too, and restores."""
    monitor = LengthScorer()
    reward = CompositeReward({"fixed": (FixedScorer("fixed", [1.0, 2.0]), 1.0)}, monitors={"gold/length": monitor})
    batch = results("one two", "one two three")
    on = reward(batch)
    assert on.components["gold/length"].tolist() == [2.0, 3.0] and monitor.calls == 1
    reward.monitoring = False
    off = reward(batch)
    assert monitor.calls == 1 and set(off.components) == {"fixed"}
    torch.testing.assert_close(off.total, on.total)
    with monitoring(RewardWrapper(reward)) as wrapped:
        assert wrapped(batch).components["gold/length"].tolist() == [2.0, 3.0]
    assert reward.monitoring is False and monitor.calls == 2
    reward.monitoring = True
    with monitoring(reward, on=False):
        assert "gold/length" not in reward(batch).components
    assert reward.monitoring is True
    scorer = LengthScorer()
    with monitoring(scorer) as same:  # not a composite reward: nothing to switch
        assert same is scorer
