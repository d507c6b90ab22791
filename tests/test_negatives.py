"""corrupt_keywords: negative samples made by deleting or replacing keywords of a prompt."""

import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import simplemma
from hypothesis import given, settings
from hypothesis import strategies as st

from promptgym.agents.negatives import corrupt_keywords

# Keyword lemmas and the surface forms the prompts use for them.
FORMS = {
    "dog": ["dog", "dogs", "Dog", "DOGS"],
    "cat": ["cat", "cats", "Cat"],
    "city": ["city", "cities", "City"],
    "mouse": ["mouse", "mice"],
    "tree": ["tree", "trees", "Trees"],
    "star": ["star", "stars"],
}
FILLER = ["a", "the", "big", "red", "in", "at", "under", "night", "glowing", "painting", "of", "with", "Hyperrealistic"]
VOCAB = ["ocean", "robot", "castle", "forest", "dragon", "bridge", "lantern"]
SEPARATORS = [" ", " ", " ", ", ", ". ", " - ", "; "]
WORD = re.compile(r"[A-Za-z]+")


def lemma(word):
    return simplemma.lemmatize(word.lower(), lang="en")


def test_word_pools_are_disjoint_under_lemmatisation():
    assert all(lemma(form) == key for key, forms in FORMS.items() for form in forms)
    assert not {lemma(w) for w in FILLER + VOCAB} & set(FORMS)
    assert not {lemma(w) for w in FILLER} & {lemma(w) for w in VOCAB}


@st.composite
def prompts(draw):
    """A prompt of filler words and keyword forms joined by single separators, plus the keyword lemmas."""
    words = draw(
        st.lists(st.sampled_from(FILLER + [f for forms in FORMS.values() for f in forms]), min_size=1, max_size=14)
    )
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(words) - 1, max_size=len(words) - 1))
    prompt = words[0] + "".join(s + w for s, w in zip(seps, words[1:])) + draw(st.sampled_from(["", ".", "!"]))
    keywords = draw(st.lists(st.sampled_from(sorted(FORMS)), unique=True, max_size=len(FORMS)))
    return prompt, keywords


def make_rng(kind, seed):
    return random.Random(seed) if kind == "random" else np.random.default_rng(seed)


rates = st.floats(min_value=0.0, max_value=1.0)
rng_kinds = st.sampled_from(["random", "numpy"])
seeds = st.integers(0, 2**32 - 1)


def keyword_words(text, keywords):
    return [w for w in WORD.findall(text) if lemma(w) in keywords]


def other_words(text, keywords):
    return [w for w in WORD.findall(text) if lemma(w) not in keywords and w.lower() not in VOCAB]


@settings(max_examples=300, deadline=None)
@given(prompts(), rates, rng_kinds, seeds)
def test_properties(prompt_and_keywords, rate, kind, seed):
    prompt, keywords = prompt_and_keywords
    out = corrupt_keywords(prompt, keywords, rate, make_rng(kind, seed), VOCAB)
    # Non-keyword words survive, in order; punctuation survives, in order.
    assert other_words(out, keywords) == other_words(prompt, keywords)
    assert re.sub(r"[A-Za-z\s]", "", out) == re.sub(r"[A-Za-z\s]", "", prompt)
    # Whitespace stays tidy: the generated prompts have no double, leading or trailing spaces or space before punctuation.
    assert "  " not in out and out == out.strip() and not re.search(r"\s[,.;!]", out)
    # Exactly max(1, round(rate * n)) of the n distinct keywords present are corrupted, every occurrence of each.
    present_before = {lemma(w) for w in keyword_words(prompt, keywords)}
    present_after = {lemma(w) for w in keyword_words(out, keywords)}
    assert present_after <= present_before
    for key in present_after:
        assert [w for w in keyword_words(out, keywords) if lemma(w) == key] == [
            w for w in keyword_words(prompt, keywords) if lemma(w) == key
        ]
    if rate == 0 or not present_before:
        assert out == prompt
    else:
        expected = max(1, int(rate * len(present_before) + 0.5))
        assert len(present_before) - len(present_after) == expected
    # Deterministic for a fixed seed.
    assert corrupt_keywords(prompt, keywords, rate, make_rng(kind, seed), VOCAB) == out


@settings(max_examples=200, deadline=None)
@given(
    prompts(),
    rng_kinds,
    seeds,
    st.lists(st.sampled_from([f for forms in FORMS.values() for f in forms] + VOCAB), max_size=6),
)
def test_a_replacement_never_equals_the_word_it_replaces(prompt_and_keywords, kind, seed, vocabulary):
    prompt, _ = prompt_and_keywords
    present = sorted({lemma(w) for w in WORD.findall(prompt)} & set(FORMS))
    if not present:
        return
    target = present[0]  # a single keyword at rate 1: it must be gone, even if the vocabulary holds its forms
    out = corrupt_keywords(prompt, [target], 1.0, make_rng(kind, seed), vocabulary)
    assert not [w for w in WORD.findall(out) if lemma(w) == target]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60), st.lists(st.sampled_from(sorted(FORMS)), max_size=3), rng_kinds, seeds)
def test_rate_zero_or_no_keywords_returns_the_prompt_unchanged(prompt, keywords, kind, seed):
    assert corrupt_keywords(prompt, keywords, 0.0, make_rng(kind, seed), VOCAB) == prompt
    assert corrupt_keywords(prompt, [], 1.0, make_rng(kind, seed), VOCAB) == prompt
    assert corrupt_keywords(prompt, set(), 0.5, make_rng(kind, seed), VOCAB) == prompt


@pytest.mark.parametrize(
    "prompt,keywords,expected",
    [
        ("A dog runs.", ["dog"], "A runs."),
        ("a big dog, running at night", ["dog"], "a big, running at night"),
        ("two dogs and a Cat", ["dog", "cat"], "two and a"),
        ("Dogs at night", ["dog"], "at night"),
        ("a dog", ["dog"], "a"),
        ("dog", ["dog"], ""),
        ("a dog and a dog and dogs", ["dog"], "a and a and"),
        ("a (dog running) under  the stars", ["dog"], "a (running) under  the stars"),  # original double space kept
        ("a big dog\nat night", ["dog"], "a big\nat night"),
        ("an old dog's bone", ["dog"], "an old bone"),
        ("hot-dog stand", ["dog"], "hot- stand"),  # whole words only: hyphens split words, punctuation stays
        ("a doggy dogma", ["dog"], "a doggy dogma"),  # no substring matches
    ],
)
def test_deletions_by_hand(prompt, keywords, expected):
    # An empty vocabulary leaves deletion as the only corruption.
    assert corrupt_keywords(prompt, keywords, 1.0, random.Random(0), []) == expected


def test_replacement_or_deletion_is_chosen_at_random_and_keeps_case():
    outcomes = {
        corrupt_keywords("Dogs chase a dog.", ["dog"], 1.0, random.Random(s), ["cat", "owl"]) for s in range(200)
    }
    # One replacement per keyword, used for every occurrence; the capital is carried over.
    assert outcomes == {"chase a.", "Cat chase a cat.", "Owl chase a owl."}
    outcomes = {corrupt_keywords("DOGS chase a dog", ["dog"], 1.0, random.Random(s), ["owl"]) for s in range(50)}
    assert outcomes == {"chase a", "OWL chase a owl"}


def test_default_matching_is_the_integrity_reward_normalisation():
    # the reward's lemma maps "leaves" to "leaf" and "grey" to "gray" (plain simplemma does neither)
    assert corrupt_keywords("red leaves", ["leaf"], 1.0, random.Random(0), []) == "red"
    assert corrupt_keywords("a grey cat", ["gray"], 1.0, random.Random(0), []) == "a cat"


def test_a_custom_lemmatizer_decides_what_matches():
    assert corrupt_keywords("red leaves", ["leaf"], 1.0, random.Random(0), [], lemmatize=str.lower) == "red leaves"
    out = corrupt_keywords("red leaves", ["leaves"], 1.0, random.Random(0), [], lemmatize=str.lower)
    assert out == "red"


def test_vocabulary_with_only_the_target_falls_back_to_deletion():
    for seed in range(50):
        assert corrupt_keywords("a dog runs", ["dog"], 1.0, random.Random(seed), ["dog", "Dogs", "DOG"]) == "a runs"


@pytest.mark.parametrize(
    "rate,expected_corrupted",
    [(0.1, 1), (0.25, 1), (0.3, 1), (0.375, 2), (0.5, 2), (0.6, 2), (0.625, 3), (0.65, 3), (1.0, 4)],
)
def test_rate_rounds_half_up_with_at_least_one(rate, expected_corrupted):
    prompt = "a dog, a cat, a tree and a star"
    out = corrupt_keywords(prompt, ["dog", "cat", "tree", "star"], rate, np.random.default_rng(0), [])
    assert 4 - len(keyword_words(out, {"dog", "cat", "tree", "star"})) == expected_corrupted


def test_different_seeds_choose_different_keywords():
    prompt = "a dog, a cat, a tree and a star"
    outs = {corrupt_keywords(prompt, ["dog", "cat", "tree", "star"], 0.25, random.Random(s), []) for s in range(100)}
    assert len(outs) == 4


def test_keyword_order_does_not_change_the_result():
    prompt = "a dog, a cat, a tree and a star"
    a = corrupt_keywords(prompt, ["dog", "cat", "tree", "star"], 0.5, random.Random(7), VOCAB)
    b = corrupt_keywords(prompt, ["star", "tree", "cat", "dog"], 0.5, random.Random(7), VOCAB)
    assert a == b


@pytest.mark.slow
def test_same_seed_gives_the_same_result_across_processes():
    # Set iteration order changes with PYTHONHASHSEED; the result must not.
    code = (
        "import random; from promptgym.agents.negatives import corrupt_keywords; "
        "print([corrupt_keywords('a dog, a cat, a tree, a star and a city', {'dog', 'cat', 'tree', 'star', 'city'}, 0.4,"
        " random.Random(s), ['owl', 'fox', 'elk']) for s in range(20)])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(h)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for h in (1, 2, 3)
    }
    assert len(outputs) == 1


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"rate": -0.1}, ValueError, r"rate.*\[0, 1\].*-0.1"),
        ({"rate": 1.5}, ValueError, r"rate"),
        ({"rate": float("nan")}, ValueError, r"rate"),
        ({"rate": True}, ValueError, r"rate"),
        ({"keywords": "dog"}, TypeError, r"keywords.*str"),
        ({"keywords": ["oil painting"]}, ValueError, r"keywords.*single word.*'oil painting'"),
        ({"keywords": [3]}, TypeError, r"keywords"),
        ({"rng": 0}, TypeError, r"rng.*random.Random.*numpy.random.Generator"),
        ({"vocabulary": "cat"}, TypeError, r"vocabulary.*str"),
        ({"vocabulary": ["cat", ""]}, ValueError, r"vocabulary.*single word.*''"),
        ({"prompt": None}, TypeError, r"prompt"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = {"prompt": "a dog", "keywords": ["dog"], "rate": 0.5, "rng": random.Random(0), "vocabulary": ["cat"]}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        corrupt_keywords(**args)
