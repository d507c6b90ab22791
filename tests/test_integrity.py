"""ContentIntegrityScorer: hand-computed ratios, thresholds, validation, prefixes and the bundled demo set."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from promptgym.rewards.base import EditResult, EditTask, Scorer
from promptgym.rewards.integrity import (
    ContentIntegrityScorer,
    IntegrityDetails,
    integrity_ratio,
)
from promptgym.rewards.keywords import extract_keywords, prompt_lemmas

# required = {two, red, cat, park, watercolor} (5 words), forbidden = {dog} (1 word)
REPLACE = EditTask("two red dogs in a park, watercolor", "replace the dog with a cat")
# required = {black, cat, beach, sunset, oil, paint} (6 words), forbidden = {hat, scarf} (2 words)
REMOVE2 = EditTask("a black cat with a hat and a scarf on a beach at sunset, oil painting", "remove the hat and the scarf")


def reference_ratio(required: set[str], forbidden: set[str], present: set[str], penalty: float) -> float:
    kept = len(required & present) / len(required) if required else 1.0
    bad = len(forbidden & present) / len(forbidden) if forbidden else 0.0
    return max(0.0, kept - penalty * bad)


def test_keyword_sets_the_hand_computations_use():
    assert extract_keywords(REPLACE.source, REPLACE.instruction).required == {"two", "red", "cat", "park", "watercolor"}
    assert extract_keywords(REPLACE.source, REPLACE.instruction).forbidden == {"dog"}
    spec = extract_keywords(REMOVE2.source, REMOVE2.instruction)
    assert spec.required == {"black", "cat", "beach", "sunset", "oil", "paint"}
    assert spec.forbidden == {"hat", "scarf"}


@pytest.mark.parametrize(
    ("task", "prompt", "penalty", "expected"),
    [
        (REPLACE, "two red cats in a park, watercolor, highly detailed", 1.0, 1.0),
        (REPLACE, "two red cats in a park", 1.0, 4 / 5),
        (REPLACE, "two cats in a park", 1.0, 3 / 5),
        (REPLACE, "two red cats and a dog in a park, watercolor", 1.0, 0.0),  # 1 - 1
        (REPLACE, "two red cats and a dog in a park, watercolor", 0.5, 0.5),
        (REPLACE, "two red dogs in a park, watercolor", 1.0, 0.0),  # 4/5 - 1 floored
        (REPLACE, "two red dogs in a park, watercolor", 0.1, 4 / 5 - 0.1),
        (REPLACE, "two red dogs in a park, watercolor", 0.0, 4 / 5),
        (REMOVE2, "a black cat with a hat on a beach at sunset, oil painting", 1.0, 1 - 1 / 2),
        (REMOVE2, "a black cat with a hat on a beach at sunset, oil painting", 0.4, 1 - 0.4 / 2),
        (REMOVE2, "a black cat on a beach, oil painting", 0.4, 5 / 6),
        (REMOVE2, "a cat with a hat and a scarf", 0.4, max(0.0, 1 / 6 - 0.4)),
        (REMOVE2, "", 1.0, 0.0),
    ],
)
def test_ratio_matches_hand_computation(task, prompt, penalty, expected):
    scorer = ContentIntegrityScorer(mode="ratio", forbidden_penalty=penalty)
    assert scorer.ratio(task, prompt) == pytest.approx(expected)
    out = scorer([EditResult(task, prompt)])
    assert out.shape == (1,) and out.dtype == torch.float32
    assert out[0].item() == pytest.approx(expected, abs=1e-6)


def test_ratio_matches_reference_on_many_prompts():
    spec = extract_keywords(REMOVE2.source, REMOVE2.instruction)
    prompts = ["a cat", "a black cat with a scarf on a beach", "hat scarf", "oil painting of a beach at sunset"]
    for prompt in prompts:
        for penalty in (0.0, 0.3, 1.0, 2.5):
            present = set(prompt_lemmas(prompt))
            expected = reference_ratio(set(spec.required), set(spec.forbidden), present, penalty)
            assert integrity_ratio(spec, prompt, penalty) == pytest.approx(expected)


def test_binary_threshold_boundary_passes():
    prompt = "two red cats in a park"  # ratio exactly 4/5
    assert ContentIntegrityScorer(threshold=0.8)([EditResult(REPLACE, prompt)]).tolist() == [1.0]
    assert ContentIntegrityScorer(threshold=0.81)([EditResult(REPLACE, prompt)]).tolist() == [0.0]
    assert ContentIntegrityScorer(threshold=0.0)([EditResult(REPLACE, "nothing at all")]).tolist() == [1.0]
    # 1 - 1 * (1/5) lands exactly on the threshold too
    task = EditTask("a cat, a dog, a fox, an owl, a bat", "without the dog, the fox, the owl, the bat or the cow")
    spec = extract_keywords(task.source, task.instruction)
    assert spec.required == {"cat"} and len(spec.forbidden) == 5
    assert ContentIntegrityScorer(threshold=0.8)([EditResult(task, "a cat and a cow")]).tolist() == [1.0]


def test_binary_vs_ratio_on_a_batch():
    results = [
        EditResult(REPLACE, "two red cats in a park, watercolor"),  # 1.0
        EditResult(REPLACE, "two red cats in a park"),  # 0.8
        EditResult(REPLACE, "two cats in a park"),  # 0.6
        EditResult(REPLACE, "two red dogs in a park, watercolor"),  # 0.0
    ]
    ratio = ContentIntegrityScorer(mode="ratio")(results)
    binary = ContentIntegrityScorer(mode="binary", threshold=0.7)(results)
    assert ratio.dtype == torch.float32 and binary.dtype == torch.float32
    assert ratio.shape == (4,) and binary.shape == (4,)
    assert ratio.tolist() == pytest.approx([1.0, 0.8, 0.6, 0.0])
    assert binary.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_empty_required_set_counts_as_kept():
    empty = EditTask("", "")
    only_forbidden = EditTask("", "remove the hat")
    assert extract_keywords(only_forbidden.source, only_forbidden.instruction).required == frozenset()
    scorer = ContentIntegrityScorer(mode="ratio")
    assert scorer([EditResult(empty, "anything"), EditResult(empty, "")]).tolist() == [1.0, 1.0]
    assert scorer.ratio(only_forbidden, "a dog") == 1.0
    assert scorer.ratio(only_forbidden, "a dog with a hat") == 0.0


def test_empty_batch_and_scorer_protocol():
    scorer = ContentIntegrityScorer()
    out = scorer([])
    assert out.shape == (0,) and out.dtype == torch.float32
    assert isinstance(scorer, Scorer)
    assert scorer.name == "integrity"


def test_bad_result_is_rejected():
    with pytest.raises(TypeError, match=r"results\[1\].*EditResult"):
        ContentIntegrityScorer()([EditResult(REPLACE, "a cat"), "a cat"])


def test_details_name_kept_missing_and_forbidden_words():
    scorer = ContentIntegrityScorer(threshold=0.5)
    details = scorer.details(EditResult(REPLACE, "two cats and a dog in a park"))
    assert isinstance(details, IntegrityDetails)
    assert details.kept == ("cat", "park", "two")
    assert details.missing == ("red", "watercolor")
    assert details.forbidden_present == ("dog",)
    assert details.forbidden_absent == ()
    assert details.ratio == 0.0 and details.passed is False
    good = scorer.details(EditResult(REPLACE, "two cats in a park"))
    assert good.ratio == pytest.approx(0.6) and good.passed is True and good.forbidden_absent == ("dog",)


def test_partial_is_the_unthresholded_ratio():
    scorer = ContentIntegrityScorer(threshold=0.8, mode="binary")
    assert scorer.partial(REPLACE, "two cats in a") == pytest.approx(2 / 5)
    assert scorer.partial(REPLACE, "") == 0.0
    assert scorer.partial(REPLACE, "two red cats in a park, watercolor") == 1.0


@pytest.mark.parametrize(
    ("task", "target"),
    [
        (EditTask("two red dogs in a park, watercolor", "make the dogs blue"), "two blue dogs in a park, watercolor, 8k"),
        (EditTask("a black cat on a beach at sunset", "make it night"), "a black cat on a beach at night, sharp focus"),
        (EditTask("three mice in a barn", "add a hat"), "three mice wearing hats in a barn, highly detailed"),
        (EditTask("a fox in a park, oil painting", "change the style to pixel art"), "a fox in a park, pixel-art"),
    ],
)
def test_partial_is_monotone_while_typing_the_target(task, target):
    scorer = ContentIntegrityScorer()
    assert not extract_keywords(task.source, task.instruction).forbidden
    words = target.split(" ")
    values = [scorer.partial(task, " ".join(words[:i])) for i in range(len(words) + 1)]
    assert all(a <= b for a, b in itertools.pairwise(values)), values
    assert values[0] == 0.0 and values[-1] == 1.0


# REPLACE with edit_weight w: "cat" is the one required keyword the source lacks; the other four weigh 1 each
@pytest.mark.parametrize(
    ("prompt", "weight", "expected"),
    [
        ("two red cats in a park, watercolor", 3.0, 1.0),
        ("two red cats in a park", 3.0, 6 / 7),  # watercolor (1) of 4 + 3 missing
        ("two red birds in a park, watercolor", 3.0, 4 / 7),  # the edit (3) not made, no forbidden word left
        ("two red birds in a park, watercolor", 0.5, 4 / 4.5),
        ("two red dogs in a park, watercolor", 3.0, 0.0),  # 4/7 - 1, floored
        ("two red birds in a park, watercolor", 1.0, 4 / 5),  # w = 1: the unweighted ratio
    ],
)
def test_edit_weight_weighs_the_keywords_the_edit_adds(prompt, weight, expected):
    scorer = ContentIntegrityScorer(mode="ratio", edit_weight=weight)
    assert scorer.ratio(REPLACE, prompt) == pytest.approx(expected)
    assert scorer.partial(REPLACE, prompt) == pytest.approx(expected)
    assert scorer.details(EditResult(REPLACE, prompt)).ratio == pytest.approx(expected)
    present = set(prompt_lemmas(prompt))
    spec = extract_keywords(REPLACE.source, REPLACE.instruction)
    added = set(spec.required) - set(prompt_lemmas(REPLACE.source))
    assert added == {"cat"}
    weights = {word: weight if word in added else 1.0 for word in spec.required}
    by_hand = sum(w for word, w in weights.items() if word in present) / sum(weights.values())
    by_hand -= 1.0 if spec.forbidden & present else 0.0
    assert max(0.0, by_hand) == pytest.approx(expected)


def test_edit_weight_without_added_keywords_is_the_plain_ratio():
    # "remove the hat and the scarf" adds nothing: every weight stays 1
    prompt = "a black cat with a hat on a beach, oil painting"
    assert ContentIntegrityScorer(mode="ratio", edit_weight=5.0).ratio(REMOVE2, prompt) == pytest.approx(
        ContentIntegrityScorer(mode="ratio").ratio(REMOVE2, prompt)
    )


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"threshold": 1.5}, r"threshold=1\.5.*\[0, 1\]"),
        ({"threshold": -0.1}, r"threshold=-0\.1.*\[0, 1\]"),
        ({"threshold": math.nan}, r"threshold=nan.*\[0, 1\]"),
        ({"threshold": "0.8"}, r"threshold='0\.8'.*\[0, 1\]"),
        ({"mode": "soft"}, r"mode='soft'.*binary.*ratio"),
        ({"forbidden_penalty": -1.0}, r"forbidden_penalty=-1\.0.*>= 0"),
        ({"forbidden_penalty": math.inf}, r"forbidden_penalty=inf.*>= 0"),
        ({"edit_weight": 0.0}, r"edit_weight=0\.0.*> 0"),
        ({"edit_weight": math.nan}, r"edit_weight=nan.*> 0"),
        ({"edit_weight": True}, r"edit_weight=True.*> 0"),
    ],
)
def test_constructor_validation_messages(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ContentIntegrityScorer(**kwargs)


def test_constructor_accepts_the_range_ends():
    assert ContentIntegrityScorer(threshold=0, forbidden_penalty=0).threshold == 0.0
    assert ContentIntegrityScorer(threshold=1, mode="ratio").mode == "ratio"


# ------------------------------------------------------------------------------ the bundled demo set

DEMO_FILES = [path for path in sorted((Path(__file__).resolve().parents[1] / "envs" / "data").glob("demo_*.jsonl"))
              if not path.name.startswith("demo_chat_")]  # the task files (conversations have no instruction)


def _demo_rows() -> list[dict]:
    return [json.loads(line) for path in DEMO_FILES for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.skipif(not DEMO_FILES, reason="bundled demo files envs/data/demo_*.jsonl not generated yet")
def test_whole_demo_set():
    """Every target keeps everything (ratio 1), every unedited replace source fails, garbage scores 0."""
    rows = _demo_rows()
    assert rows, f"no rows in {DEMO_FILES}"
    ratio, binary = ContentIntegrityScorer(mode="ratio"), ContentIntegrityScorer(mode="binary")
    tasks = [EditTask(r["source"], r["instruction"], r["target"], r["id"]) for r in rows]
    targets = ratio([EditResult(t, t.target) for t in tasks])
    bad_targets = [(t.id, binary.details(EditResult(t, t.target))) for t, s in zip(tasks, targets) if s != 1.0]
    assert not bad_targets, bad_targets[:5]
    replace = [t for t, r in zip(tasks, rows) if r["kind"] == "replace"]
    assert replace, "the demo set has no replace tasks"
    sources = binary([EditResult(t, t.source) for t in replace])
    assert sources.tolist() == [0.0] * len(replace), [t.id for t, s in zip(replace, sources) if s != 0.0][:5]
    garbage = ratio([EditResult(t, "qwzx vlorp fnarg!!") for t in tasks])
    assert torch.all(garbage == 0.0)
