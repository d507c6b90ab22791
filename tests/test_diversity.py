"""Diversity of a task's samples (distinct-n, pairwise embedding distance, distinct scenes) and multi-step expansion:
the pure functions against independent hand computations, and their place in `evaluate_policy` on the tiny stack."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diversity_reference import reference_distinct, reference_pairwise_distance

from promptgym.experiments.diversity import (
    DIVERSITY_METRICS,
    distinct_n,
    distinct_prompts,
    distinct_scenes,
    ngrams,
    task_diversity,
    words,
)


# ============================================================================================== distinct-n
def test_distinct_n_hand_counts():
    texts = ["a red dog", "a blue dog"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # a, red, dog, blue of 6 words
    assert distinct_n(texts, 2) == 1.0  # (a red) (red dog) (a blue) (blue dog): no bigram repeats
    assert distinct_n(["A Dog", "a dog"], 1) == pytest.approx(2 / 4)  # lowercased
    assert distinct_n(["dog, cat", "dog cat"], 1) == pytest.approx(3 / 4)  # whitespace words: "dog," is not "dog"
    assert distinct_n(["x y", "x y"], 2) == 0.5  # n-grams never cross texts (else "y x" would make it 2/3)
    assert words("  Two  RED\tdogs\n") == ["two", "red", "dogs"]
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")] and ngrams(["a"], 2) == []


def test_distinct_n_identical_candidates_give_one_over_k():
    for k in (2, 3, 4):
        assert distinct_n(["x y z"] * k, 1) == pytest.approx(1 / k)
        assert distinct_n(["x y z"] * k, 2) == pytest.approx(1 / k)
    assert distinct_n(["x x y"] * 2, 1) == pytest.approx(2 / 6)  # repetition inside a text counts too


def test_distinct_n_empty_and_short_texts():
    assert math.isnan(distinct_n(["", ""], 1)) and math.isnan(distinct_n(["", "   "], 2))
    assert math.isnan(distinct_n(["dog", "cat"], 2))  # no text has a bigram
    assert distinct_n(["dog", "cat"], 1) == 1.0
    assert distinct_n(["", "a b"], 1) == 1.0  # the empty text adds nothing
    assert math.isnan(distinct_n([], 1))
    with pytest.raises(ValueError, match="n=0"):
        distinct_n(["a"], 0)
    with pytest.raises(TypeError, match="sequence of str"):
        distinct_n("a dog", 1)


def test_distinct_n_matches_the_reference_on_random_texts():
    rng = np.random.default_rng(0)
    vocabulary = ["a", "Red", "red", "dog", "dogs,", "in", "park", "soft", "lighting"]
    for _ in range(50):
        texts = [" ".join(rng.choice(vocabulary, size=rng.integers(0, 7))) for _ in range(rng.integers(1, 6))]
        for n in (1, 2, 3):
            expected = reference_distinct(texts, n)
            got = distinct_n(texts, n)
            assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected), (texts, n)


# ============================================================================================== distinct prompts, scenes
def test_distinct_prompts_ignores_case_and_spacing_only():
    assert distinct_prompts(["a red dog", "A  red dog ", "a red dog,"]) == 2  # the comma is part of a word
    assert distinct_prompts(["x"] * 4) == 1 and distinct_prompts(["", " "]) == 1 and distinct_prompts(["a", "b"]) == 2


def test_distinct_scenes_counts_content_not_modifiers_or_wording():
    assert distinct_scenes(["two red dogs in a park", "two red dogs in a park, soft lighting"]) == 1
    assert distinct_scenes(["Two RED dogs in a park", "two red dogs in the park"]) == 1  # same scene, other words
    assert distinct_scenes(["a red dog", "a blue dog", "a red dog"]) == 2
    assert distinct_scenes(["a red dog at night", "a red dog", "two red dogs", "a red cat"]) == 4
    assert distinct_scenes(["", ""]) == 1 and distinct_scenes(["", "a dog"]) == 2


# ============================================================================================== per task
def test_task_diversity_against_references_and_edge_cases():
    rng = np.random.default_rng(1)
    random_vectors = rng.normal(size=(4, 8))
    texts = [
        ["a red dog", "a blue cat at night", "two owls", ""],  # varied, one empty
        ["two red dogs in the park"] * 3,  # identical, six different words
        ["", ""],  # all empty
        ["a lone frog"],  # one candidate: undefined
    ]
    embeddings = [
        torch.tensor(random_vectors, dtype=torch.float32),
        torch.tensor([[0.3, -1.0, 2.0]] * 3),
        torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
        torch.tensor([[1.0, 2.0]]),
    ]
    out = task_diversity(texts, embeddings)
    assert list(out) == list(DIVERSITY_METRICS)
    assert out["diversity"][0] == pytest.approx(reference_pairwise_distance(random_vectors), abs=1e-6)
    assert out["distinct_1"][0] == pytest.approx(reference_distinct(texts[0], 1))
    assert out["distinct_2"][0] == pytest.approx(reference_distinct(texts[0], 2))
    assert out["distinct_scenes"][0] == 4  # red dog, blue cat at night, two owls, the empty scene
    assert out["distinct_prompts"][0] == 4 and out["distinct_prompts"][1] == 1 and out["distinct_prompts"][2] == 1
    assert out["diversity"][1] == pytest.approx(0.0, abs=1e-7)
    assert out["distinct_1"][1] == pytest.approx(1 / 3) and out["distinct_scenes"][1] == 1
    assert out["distinct_2"][1] == pytest.approx(reference_distinct(texts[1], 2))
    assert math.isnan(out["distinct_1"][2]) and math.isnan(out["distinct_2"][2])  # no word at all: undefined
    assert out["distinct_scenes"][2] == 1 and out["diversity"][2] == pytest.approx(0.0)
    assert all(math.isnan(out[name][3]) for name in DIVERSITY_METRICS)  # K = 1
    no_embeddings = task_diversity(texts)
    assert np.isnan(no_embeddings["diversity"]).all()
    np.testing.assert_array_equal(no_embeddings["distinct_1"], out["distinct_1"])
    with pytest.raises(ValueError, match="1 embedding sets for 2 tasks"):
        task_diversity([["a"], ["b"]], [torch.ones(1, 2)])
    with pytest.raises(ValueError, match=r"embeddings_per_task\[0\] has 1 rows for 2 texts"):
        task_diversity([["a", "b"]], [torch.ones(1, 2)])
