"""Keyword extraction for the content-integrity reward: every instruction kind, normalisation, edge cases."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promptgym.rewards.keywords import (
    STOP_KEEP,
    STOP_WORDS,
    KeywordSpec,
    extract_keywords,
    lemma,
    prompt_lemmas,
)

DOGS = "two red dogs in a park, watercolor"
DOGS_REQ = {"two", "red", "dog", "park", "watercolor"}
CAT_HAT = "a black cat with a hat on a beach at sunset, oil painting"
CAT_HAT_REQ = {"black", "cat", "hat", "beach", "sunset", "oil", "paint"}


def _case(source, instruction, required, forbidden=()):
    return pytest.param(source, instruction, set(required), set(forbidden), id=f"{instruction or '<empty>'}")


CASES = [
    # colour: the old colour is superseded (dropped), or forbidden when named as the old value
    _case(DOGS, "make the dogs blue", DOGS_REQ - {"red"} | {"blue"}),
    _case(DOGS, "Make the dogs blue.", DOGS_REQ - {"red"} | {"blue"}),
    _case(DOGS, "change the color of the dogs to blue", DOGS_REQ - {"red"} | {"blue"}),
    _case(DOGS, "Change the colour of the dogs to blue", DOGS_REQ - {"red"} | {"blue"}),
    _case(DOGS, "change the dogs to blue", DOGS_REQ - {"red"} | {"blue"}),
    _case(DOGS, "change the red dogs to blue dogs", DOGS_REQ - {"red"} | {"blue"}, {"red"}),
    _case(DOGS, "make the dogs blue instead of red", DOGS_REQ - {"red"} | {"blue"}, {"red"}),
    _case(DOGS, "change the color from red to blue", DOGS_REQ - {"red"} | {"blue"}, {"red"}),
    _case(DOGS, "turn the red dogs blue", DOGS_REQ - {"red"} | {"blue"}, {"red"}),
    # count: "two" is content; the new count supersedes it
    _case(DOGS, "make it three dogs", DOGS_REQ - {"two"} | {"three"}),
    _case(DOGS, "change the number of dogs to three", DOGS_REQ - {"two"} | {"three"}),
    _case(DOGS, "change the number of dogs to 3", DOGS_REQ - {"two"} | {"3"}),
    _case(DOGS, "show three dogs instead of two", DOGS_REQ - {"two"} | {"three"}, {"two"}),
    _case(DOGS, "instead of two dogs, show three dogs", DOGS_REQ - {"two"} | {"three"}, {"two"}),
    _case(DOGS, "there should be four dogs", DOGS_REQ - {"two"} | {"four"}),
    _case(DOGS, "make it a dog", DOGS_REQ - {"two"}),
    # background: the source's location phrase is superseded, or forbidden when named
    _case(DOGS, "change the background to a beach", DOGS_REQ - {"park"} | {"beach"}),
    _case(DOGS, "move the dogs to a beach", DOGS_REQ - {"park"} | {"beach"}),
    _case(DOGS, "put the dogs on a beach", DOGS_REQ - {"park"} | {"beach"}),
    _case(DOGS, "make the background a beach", DOGS_REQ - {"park"} | {"beach"}),
    _case(DOGS, "replace the park with a beach", DOGS_REQ - {"park"} | {"beach"}, {"park"}),
    _case(DOGS, "change the setting from a park to a beach", DOGS_REQ - {"park"} | {"beach"}, {"park"}),
    _case(CAT_HAT, "change the background to a forest", CAT_HAT_REQ - {"beach"} | {"forest"}),  # keeps "at sunset"
    _case(
        "two deer by a lake in foggy weather, watercolor",
        "Change the background to a library",
        {"two", "deer", "foggy", "weather", "watercolor", "library"},
    ),
    # add: new content is required, nothing is superseded
    _case(DOGS, "add a hat", DOGS_REQ | {"hat"}),
    _case(DOGS, "put a hat on the dog", DOGS_REQ | {"hat"}),
    _case(DOGS, "include a blue balloon", DOGS_REQ | {"blue", "balloon"}),  # the dogs stay red
    _case(DOGS, "give the dogs hats", DOGS_REQ | {"hat"}),
    _case(DOGS, "Add hats to the dogs", DOGS_REQ | {"hat"}),
    # remove
    _case(CAT_HAT, "remove the hat", CAT_HAT_REQ - {"hat"}, {"hat"}),
    _case(CAT_HAT, "without the hat", CAT_HAT_REQ - {"hat"}, {"hat"}),
    _case(CAT_HAT, "Get rid of the hat.", CAT_HAT_REQ - {"hat"}, {"hat"}),
    _case(CAT_HAT, "delete the hat", CAT_HAT_REQ - {"hat"}, {"hat"}),
    _case(CAT_HAT, "erase the hat", CAT_HAT_REQ - {"hat"}, {"hat"}),
    _case(CAT_HAT, "take the hat away", CAT_HAT_REQ - {"hat"}, {"hat"}),
    _case(CAT_HAT, "remove the hat from the cat", CAT_HAT_REQ - {"hat"}, {"hat"}),
    _case(CAT_HAT, "no hat", CAT_HAT_REQ - {"hat"}, {"hat"}),
    _case(CAT_HAT, "show the cat with no hat", CAT_HAT_REQ - {"hat"}, {"hat"}),
    _case(CAT_HAT, "don't show the hat", CAT_HAT_REQ - {"hat"}, {"hat"}),
    # style: the old style (including multi-word styles) is superseded
    _case(DOGS, "make it an oil painting", DOGS_REQ - {"watercolor"} | {"oil", "paint"}),
    _case(DOGS, "change the style to pixel art", DOGS_REQ - {"watercolor"} | {"pixel", "art"}),
    _case(DOGS, "turn it into a pencil sketch", DOGS_REQ - {"watercolor"} | {"pencil", "sketch"}),
    _case(CAT_HAT, "make it a watercolor", CAT_HAT_REQ - {"oil", "paint"} | {"watercolor"}),
    _case("a dog in a park, stained glass", "turn it into claymation", {"dog", "park", "claymation"}),
    _case("a dog in a park, woodcut print", "change the style to anime", {"dog", "park", "anime"}),
    _case(DOGS, "in oil painting style", DOGS_REQ - {"watercolor"} | {"oil", "paint"}),
    # time / weather
    _case(CAT_HAT, "make it night", CAT_HAT_REQ - {"sunset"} | {"night"}),
    _case(CAT_HAT, "change the time of day to dawn", CAT_HAT_REQ - {"sunset"} | {"dawn"}),
    _case(CAT_HAT, "make it rainy", CAT_HAT_REQ - {"sunset"} | {"rainy"}),
    _case(CAT_HAT, "make it snowy", CAT_HAT_REQ - {"sunset"} | {"snowy"}),
    _case(CAT_HAT, "show it at dawn", CAT_HAT_REQ - {"sunset"} | {"dawn"}),
    _case(CAT_HAT, "at night", CAT_HAT_REQ - {"sunset"} | {"night"}),
    _case(CAT_HAT, "make it dawn instead of sunset", CAT_HAT_REQ - {"sunset"} | {"dawn"}, {"sunset"}),
    _case("a fox in a park in foggy weather", "make it night", {"fox", "park", "night"}),
    _case(DOGS, "Change the weather to rainy", DOGS_REQ | {"rainy"}),
    # replace: the old object is forbidden
    _case(DOGS, "replace the dog with a cat", DOGS_REQ - {"dog"} | {"cat"}, {"dog"}),
    _case(DOGS, "Replace the dogs with cats.", DOGS_REQ - {"dog"} | {"cat"}, {"dog"}),
    _case(DOGS, "change the dogs to cats", DOGS_REQ - {"dog"} | {"cat"}, {"dog"}),
    _case(DOGS, "swap the dog for a cat", DOGS_REQ - {"dog"} | {"cat"}, {"dog"}),
    _case(DOGS, "turn the dog into a cat", DOGS_REQ - {"dog"} | {"cat"}, {"dog"}),
    _case(DOGS, "transform the dogs into cats", DOGS_REQ - {"dog"} | {"cat"}, {"dog"}),
    _case(DOGS, "substitute the dog with a cat", DOGS_REQ - {"dog"} | {"cat"}, {"dog"}),
    _case(DOGS, "substitute a cat for the dog", DOGS_REQ - {"dog"} | {"cat"}, {"dog"}),
    _case(DOGS, "cats instead of dogs", DOGS_REQ - {"dog"} | {"cat"}, {"dog"}),
    _case(DOGS, "change it from dogs to cats", DOGS_REQ - {"dog"} | {"cat"}, {"dog"}),
    # several edits in one instruction
    _case(CAT_HAT, "remove the hat and make it night", CAT_HAT_REQ - {"hat", "sunset"} | {"night"}, {"hat"}),
    _case(DOGS, "Add a hat, then replace the park with a beach.", DOGS_REQ - {"park"} | {"hat", "beach"}, {"park"}),
    # plurals (regular and irregular), possessives, punctuation, case, hyphens
    _case("three mice in a barn", "", {"three", "mouse", "barn"}),
    _case("two wolves under the moon", "", {"two", "wolf", "moon"}),
    _case("The Dog's HAT!!! On a BEACH...", "", {"dog", "hat", "beach"}),
    _case("the dogs' hats; the wolves' den", "", {"dog", "hat", "wolf", "den"}),
    _case("a cat, pixel-art", "", {"cat", "pixel", "art"}),
    _case("a dog", "Replace the DOG with a Cat!!!", {"cat"}, {"dog"}),
    _case("a grey dog", "", {"gray", "dog"}),  # British spellings map to American ones
    # the stop-word keep-list: counts, sizes and positions are content; articles and "one" are not
    _case("a big dog on top of a small box", "", {"big", "dog", "top", "small", "box"}),
    _case("one dog in front of a man", "", {"dog", "front", "man"}),
    # empty sets
    _case("", "", set()),
    _case("", "the of and", set()),
    _case("the of and", "please", set()),
    _case("a dog", "", {"dog"}),
    _case("a dog", "make it", {"dog"}),
]


@pytest.mark.parametrize(("source", "instruction", "required", "forbidden"), CASES)
def test_extract_keywords_table(source, instruction, required, forbidden):
    spec = extract_keywords(source, instruction)
    assert set(spec.required) == required
    assert set(spec.forbidden) == forbidden


def test_spec_is_frozen_with_frozensets():
    spec = extract_keywords(DOGS, "replace the dog with a cat")
    assert isinstance(spec, KeywordSpec)
    assert isinstance(spec.required, frozenset) and isinstance(spec.forbidden, frozenset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.required = frozenset()  # type: ignore[misc]


def test_spec_rejects_overlap():
    with pytest.raises(ValueError, match=r"overlap.*dog"):
        KeywordSpec(required=frozenset({"dog", "cat"}), forbidden=frozenset({"dog"}))


def test_extraction_is_cached():
    extract_keywords.cache_clear()
    first = extract_keywords(DOGS, "make it night")
    second = extract_keywords(DOGS, "make it night")
    assert first is second
    info = extract_keywords.cache_info()
    assert (info.hits, info.misses) == (1, 1)


@pytest.mark.parametrize(("source", "instruction", "name"), [(None, "x", "source"), ("x", 3, "instruction")])
def test_non_string_input_is_rejected(source, instruction, name):
    with pytest.raises(TypeError, match=rf"{name} must be a str"):
        extract_keywords(source, instruction)


def test_stop_words_keep_list():
    assert {"two", "three", "big", "small", "top", "front"} <= STOP_KEEP
    assert not ({"two", "three", "big", "small", "top", "front", "man"} & STOP_WORDS)
    assert {"a", "an", "the", "one", "of", "with"} <= STOP_WORDS


@pytest.mark.parametrize(
    ("word", "expected"),
    [("dogs", "dog"), ("mice", "mouse"), ("wolves", "wolf"), ("geese", "goose"), ("paintings", "paint"),
     ("painting", "paint"), ("skies", "sky"), ("colours", "color"), ("3", "3")],
)  # fmt: skip
def test_lemma(word, expected):
    assert lemma(word) == expected


def test_prompt_lemmas_normalise_like_keywords():
    assert prompt_lemmas("Two MICE, in the wolves' den; Oil-Paintings!") == {
        "two", "mouse", "in", "the", "wolf", "den", "oil", "paint",
    }  # fmt: skip
    assert prompt_lemmas("") == frozenset()


WORDS = ["dog", "dogs", "cat", "red", "blue", "two", "three", "park", "beach", "hat", "night", "watercolor",
         "a", "the", "with", "in", "on", "replace", "change", "make", "remove", "add", "to", "into", "instead",
         "of", "without", "no", "from", "color", "background", "and", ",", "."]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=10), st.lists(st.sampled_from(WORDS), max_size=8))
def test_invariants_on_random_word_salad(source_words, instruction_words):
    """Whatever the text: disjoint sets, keywords come from the texts, every keyword is its own lemma."""
    source, instruction = " ".join(source_words), " ".join(instruction_words)
    spec = extract_keywords(source, instruction)
    assert not spec.required & spec.forbidden
    assert spec.forbidden <= prompt_lemmas(instruction)
    assert spec.required <= prompt_lemmas(source) | prompt_lemmas(instruction)
    assert not (spec.required | spec.forbidden) & STOP_WORDS
    for word in spec.required | spec.forbidden:
        assert prompt_lemmas(word) == {word}
