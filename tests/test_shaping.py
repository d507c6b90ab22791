"""Potential-based shaping: the discounted sum of shaping terms telescopes."""

import pytest

from promptgym.envs import EditTask
from promptgym.rewards import PotentialShaping

TASK = EditTask("a red dog in a park", "make the dog blue", target="a blue dog in a park")


def word_count(task, text):
    return float(len(text.split()))


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.5])
@pytest.mark.parametrize("zero_at_terminal", [True, False])
def test_discounted_sum_telescopes(gamma, zero_at_terminal):
    shaping = PotentialShaping(word_count, gamma=gamma, zero_at_terminal=zero_at_terminal)
    prefixes = ["", "a", "a blue", "a blue dog", "a blue dog in", "a blue dog in a park"]
    phis = [shaping.phi(TASK, p, terminal=(i == len(prefixes) - 1)) for i, p in enumerate(prefixes)]
    terms = [shaping.term(phis[t], phis[t + 1]) for t in range(len(prefixes) - 1)]
    discounted = sum(gamma**t * f for t, f in enumerate(terms))
    end = 0.0 if zero_at_terminal else word_count(TASK, prefixes[-1])
    T = len(terms)
    assert discounted == pytest.approx(gamma**T * end - word_count(TASK, ""))


def test_default_potential_is_partial_integrity():
    shaping = PotentialShaping()
    assert shaping.phi(TASK, "") == 0.0
    assert shaping.phi(TASK, TASK.target) == 1.0
    assert shaping.phi(TASK, TASK.target, terminal=True) == 0.0


@pytest.mark.parametrize("gamma", [-0.1, 1.5])
def test_gamma_validated(gamma):
    with pytest.raises(ValueError, match=f"gamma={gamma}"):
        PotentialShaping(word_count, gamma=gamma)


def test_potential_must_be_callable():
    with pytest.raises(TypeError, match="potential=3"):
        PotentialShaping(3)
