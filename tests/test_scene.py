"""The synth world: scene grammar, procedural renderer, gold metrics."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import numpy as np
import pytest
import torch

from promptgym.rewards.base import EditResult, EditTask
from promptgym.rewards.composite import CompositeReward
from promptgym.rewards.gold import (
    GOLD_AESTHETIC,
    GoldAestheticScorer,
    GoldContentScorer,
    GoldTextContentScorer,
    SceneJudge,
    aesthetic_statistics,
    attribute_misses,
    gold_aesthetic,
    gold_content,
    scene_labels,
    text_content,
)
from promptgym.rewards.scene import (
    ATTRIBUTES,
    HELD_OUT_PAIRS,
    MODIFIERS,
    Scene,
    attribute_values,
    describe,
    parse_scene,
    sample_scene,
)
from promptgym.rewards.scene_render import SceneRenderer, draw_scene

FULL = Scene("dog", 2, "red", "hat", "park", "sunset", "watercolor", ("vibrant colors",))




# ------------------------------------------------------------------------------------------- grammar


def test_describe_writes_the_demo_grammar():
    assert describe(FULL) == "two red dogs with hats in a park at sunset, watercolor, vibrant colors"
    assert describe(Scene("owl", 1, None, "umbrella", "beach")) == "an owl with an umbrella on a beach"
    assert describe(Scene("cat", 3, weather="foggy", style="pixel art")) == "three cats in foggy weather, pixel art"


def test_parse_inverts_describe_on_random_scenes():
    rng = random.Random(0)
    for _ in range(500):
        scene = sample_scene(rng, held_out="any")
        parsed = parse_scene(describe(scene))
        assert parsed == (scene, ()), describe(scene)


def test_parse_reports_unknown_words_and_second_values_instead_of_guessing():
    parsed = parse_scene("A cat and a dog on the moon, 8k, pixel art, Pixel Art")
    assert parsed.scene == Scene("cat", 1, style="pixel art")
    assert parsed.unparsed == ("dog", "moon", "8k")
    assert parse_scene("a red blue dog").unparsed == ("blue",)
    assert parse_scene("").scene == Scene() and parse_scene("").unparsed == ()


def test_parse_counts():
    assert parse_scene("two dogs").scene.count == 2
    assert parse_scene("a dog").scene.count == 1
    assert parse_scene("dogs in a park").scene.count == 2  # a plural without a number means two
    assert parse_scene("three dogs with a hat, two").unparsed == ("two",)


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError, match="prompt must be a str"):
        parse_scene(None)  # type: ignore[arg-type]


def test_scene_validates_its_fields():
    with pytest.raises(ValueError, match="Scene.subject='unicorn'"):
        Scene("unicorn")
    with pytest.raises(ValueError, match="Scene.count=4"):
        Scene("dog", 4)
    with pytest.raises(ValueError, match="modifiers"):
        Scene("dog", modifiers=("8k",))
    with pytest.raises(ValueError, match="modifiers"):
        Scene("dog", modifiers=("bokeh", "bokeh"))


def test_sample_scene_respects_held_out_pairs():
    rng = random.Random(1)
    assert all((s.subject, s.colour) not in HELD_OUT_PAIRS for s in (sample_scene(rng) for _ in range(300)))
    assert all((s.subject, s.colour) in HELD_OUT_PAIRS for s in (sample_scene(rng, held_out="only") for _ in range(50)))
    assert len({s for s, _ in HELD_OUT_PAIRS}) == len(HELD_OUT_PAIRS)  # one held-out colour per subject


# ------------------------------------------------------------------------------------------- renderer


def test_every_attribute_value_changes_the_picture():
    """Each word of the vocabulary is visible: changing one attribute of a scene changes many pixels."""
    base = Scene("dog", 1, "red", None, "park")
    reference = draw_scene(base, k=3)
    for name, values in attribute_values().items():
        for value in values:
            if value == getattr(base, name):
                continue
            changed = draw_scene(dataclasses.replace(base, **{name: value}), k=3)
            assert np.abs(changed - reference).max(-1).__gt__(0.1).sum() >= 4, (name, value)
    for modifier in MODIFIERS:
        changed = draw_scene(dataclasses.replace(base, modifiers=(modifier,)), k=3)
        assert np.abs(changed - reference).mean() > 0.005, modifier


def test_draw_is_deterministic_and_modifier_order_free():
    a = draw_scene(dataclasses.replace(FULL, modifiers=("vibrant colors", "soft lighting")), k=1, seed=5)
    b = draw_scene(dataclasses.replace(FULL, modifiers=("soft lighting", "vibrant colors")), k=1, seed=5)
    assert a.dtype == np.float32 and a.shape == (32, 32, 3) and 0 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw_scene(FULL, k=2, seed=5))


def test_renderer_common_random_numbers_and_cache():
    renderer = SceneRenderer(images_per_prompt=3, seed=7)
    prompts = [describe(FULL), "a blue cat on a beach", describe(FULL)]
    images = renderer.render(prompts)
    assert images.shape == (3, 3, 3, 32, 32) and images.dtype == torch.float32
    torch.testing.assert_close(images[0], images[2])
    for k in range(3):  # image k of every prompt is drawn from the randomness of (seed, k) alone
        expected = draw_scene(parse_scene(prompts[1]).scene, k=k, seed=7)
        torch.testing.assert_close(images[1, k], torch.from_numpy(expected).permute(2, 0, 1))
    assert renderer.cache_info().misses == 6 and renderer.cache_info().hits == 3
    renderer.render(prompts[:1])
    assert renderer.cache_info().hits == 6
    assert SceneRenderer.unparsed("a dog on the moon") == ("moon",)


def test_renderer_draws_what_it_parses_of_prompts_outside_the_grammar():
    renderer = SceneRenderer(images_per_prompt=1)
    odd = renderer.render(["a red dog in a park, trending on artstation, ???", "", "purple"])
    torch.testing.assert_close(odd[0], renderer.render(["a red dog in a park"])[0])
    assert odd.shape == (3, 1, 3, 32, 32)


def test_renderer_rejects_bad_sizes():
    with pytest.raises(ValueError, match="size must be a multiple of 4"):
        SceneRenderer(size=30)


# ------------------------------------------------------------------------------------------- gold aesthetic


def _reference_statistics(image: np.ndarray) -> dict[str, float]:
    """An independent numpy computation of the gold-aesthetic statistics of one `[H, W, 3]` image."""
    lum = image @ np.array([0.299, 0.587, 0.114])
    rg, yb = image[..., 0] - image[..., 1], 0.5 * (image[..., 0] + image[..., 1]) - image[..., 2]
    lap = np.abs(4 * lum[1:-1, 1:-1] - lum[:-2, 1:-1] - lum[2:, 1:-1] - lum[1:-1, :-2] - lum[1:-1, 2:]).ravel()
    top = np.sort(lap)[::-1][: lap.size // 8].sum()
    return {
        "exposure": lum.mean(), "contrast": lum.std(),
        "colourfulness": math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()),
        "focus": top / (lap.sum() + 1e-6), "clipped": ((image < 0.02) | (image > 0.98)).any(-1).mean(),
        "noise": float(np.sort(lap)[(lap.size - 1) // 2]),
    }


def test_aesthetic_statistics_match_a_numpy_reference():
    image = draw_scene(FULL, k=0)
    stats = aesthetic_statistics(torch.from_numpy(image).permute(2, 0, 1))
    for name, value in _reference_statistics(image.astype(np.float64)).items():
        assert float(stats[name]) == pytest.approx(value, abs=1e-4), name
    # the formula, by hand
    score = np.mean([math.exp(-0.5 * ((float(stats[n]) - mu) / w) ** 2) for n, (mu, w) in
                     ((n, GOLD_AESTHETIC[n]) for n in ("exposure", "contrast", "colourfulness", "focus"))])
    score -= GOLD_AESTHETIC["clipped_weight"] * float(stats["clipped"])
    score -= GOLD_AESTHETIC["noise_weight"] * max(float(stats["noise"]) - GOLD_AESTHETIC["noise_free"], 0)
    images = torch.from_numpy(image).permute(2, 0, 1)[None, None]
    assert float(gold_aesthetic(images)[0]) == pytest.approx(score, abs=1e-5)


@pytest.mark.slow
def test_gold_aesthetic_has_an_interior_optimum():
    """Some modifiers in moderation beat the plain render; stacking all of them scores below it."""
    rng = random.Random(3)
    scenes = [dataclasses.replace(sample_scene(rng, held_out="any"), modifiers=()) for _ in range(60)]
    subsets = [()] + [c for r in (1, 2, 5) for c in itertools.combinations(MODIFIERS, r)]
    renderer = SceneRenderer(images_per_prompt=2)
    scores = torch.stack([
        gold_aesthetic(renderer.render([describe(dataclasses.replace(s, modifiers=m)) for s in scenes])) for m in subsets
    ], dim=1)  # [scenes, subsets]
    plain, stacked = scores[:, 0], scores[:, -1]
    best = scores.max(dim=1)
    assert float(best.values.mean()) > float(plain.mean()) + 0.15
    assert float(stacked.mean()) < float(plain.mean())
    best_size = torch.tensor([len(subsets[i]) for i in best.indices])
    assert float(((best_size >= 1) & (best_size <= 2)).float().mean()) > 0.8
    assert len({subsets[i] for i in best.indices}) >= 4  # which modifiers help depends on the scene


def test_gold_aesthetic_checks_images():
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        gold_aesthetic(torch.full((1, 1, 3, 8, 8), 2.0))
    assert gold_aesthetic(torch.rand(3, 2, 3, 16, 16)).shape == (3,)


# ------------------------------------------------------------------------------------------- gold content


class OracleJudge(SceneJudge):
    """A judge that reads the scene it was told was drawn (to test `gold_content`'s bookkeeping)."""

    def __init__(self, truth: list[Scene]) -> None:
        super().__init__(width=4, hidden=8)
        self.truth = truth

    def read(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        assert images.shape[0] == len(self.truth)
        return {name: torch.tensor([scene_labels(s)[name] for s in self.truth]) for name in ATTRIBUTES}


def test_gold_content_is_the_fraction_of_attributes_read_and_nan_without_target():
    drawn = [FULL, FULL, dataclasses.replace(FULL, colour="blue", style=None), FULL]  # N=2 prompts x K=2 images
    judge = OracleJudge(drawn)
    images = torch.rand(3, 2, 3, 32, 32)
    targets = [FULL, None, FULL]
    scores = gold_content(images[[0, 2]], [FULL, FULL], judge)
    assert scores.tolist() == pytest.approx([1.0, (5 / 7 + 1) / 2])
    judge.truth = drawn[:2] + drawn[2:]
    scores = gold_content(images, targets, judge)
    assert scores[0] == 1.0 and math.isnan(scores[1]) and scores[2] == pytest.approx((5 / 7 + 1) / 2)
    assert math.isnan(gold_content(images[:1], [None], judge)[0])


def test_gold_content_of_a_scene_without_subject_counts_only_what_is_drawn():
    empty = Scene(subject=None, count=2, colour="red", accessory="hat", background="beach", weather="night")
    assert empty.drawn_attributes() == ("subject", "background", "weather", "style")
    assert FULL.drawn_attributes() == ATTRIBUTES
    # the judge reads count, colour and accessory wrong, which a picture without a subject cannot show anyway
    read_as = dataclasses.replace(empty, count=1, colour=None, accessory=None)
    assert gold_content(torch.rand(1, 1, 3, 32, 32), [empty], OracleJudge([read_as])).item() == 1.0
    # a wrong weather costs one of the four drawn attributes
    read_as = dataclasses.replace(read_as, weather="foggy")
    assert gold_content(torch.rand(1, 1, 3, 32, 32), [empty], OracleJudge([read_as])).item() == pytest.approx(3 / 4)


def test_text_content_counts_the_drawn_attributes_the_prompt_states():
    target = Scene(subject="dog", count=2, colour="red", accessory="hat", background="beach", weather="snowy",
                   style="anime", modifiers=("soft lighting",))
    prompts = [describe(target),  # everything, and modifiers are not content
               "two red dogs with hats on a beach in snowy weather, anime, depth of field",
               "two blue dogs with hats on a beach in snowy weather, anime",  # colour wrong
               "a red dog with a hat on a beach",  # count, weather and style lost: 4 of 7
               "two red cats with hats on a beach in snowy weather, anime, dog"]  # a second subject does not count
    expected = [1.0, 1.0, 6 / 7, 4 / 7, 6 / 7]
    assert text_content(prompts, [target] * 5).tolist() == pytest.approx(expected)
    empty = Scene(subject=None, background="beach", weather="night")
    assert text_content(["a beach at night, red"], [empty]).tolist() == [1.0]  # colour is not drawn without subject
    assert math.isnan(text_content(["a dog"], [None])[0])
    with pytest.raises(ValueError, match="one target scene per prompt"):
        text_content(["a dog"], [])
    scorer = GoldTextContentScorer()
    scores = scorer([EditResult(EditTask("a dog", "x", describe(target)), prompts[2]),
                     EditResult(EditTask("a dog", "x", None), prompts[2])])
    assert scores[0].item() == pytest.approx(6 / 7) and math.isnan(scores[1])


def test_attribute_misses_split_text_content_into_copying_errors_and_undone_edits():
    target = Scene(subject="dog", count=2, colour="blue", accessory="hat", background="beach", weather="snowy",
                   style="anime")
    source = "two red dogs with hats on a beach in snowy weather, anime"  # the instruction changed the colour only
    prompts = ["two blue dogs with hats on a beach in snowy weather, anime",  # right
               "two red cats with hats on a beach in snowy weather, anime",  # subject not copied, colour not edited
               "two blue cats on a beach, anime, vibrant colors",  # subject, accessory and weather not copied
               "a dog"]
    misses = attribute_misses(prompts, [source] * 4, [target] * 4)
    assert set(misses) == {f"{a}/{k}" for a in ATTRIBUTES for k in ("kept", "edited")}
    assert misses["colour/edited"].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert all(math.isnan(x) for x in misses["colour/kept"])  # the colour is an edited attribute here
    assert misses["subject/kept"].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert misses["accessory/kept"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert misses["count/kept"].tolist() == [0.0, 0.0, 0.0, 1.0]  # "a dog" is one
    assert all(math.isnan(x) for name in ATTRIBUTES if name != "colour" for x in misses[f"{name}/edited"])
    # the misses of both kinds add up to what text_content misses
    total = sum(torch.nan_to_num(values) for values in misses.values())
    assert total.tolist() == pytest.approx(((1 - text_content(prompts, [target] * 4)) * 7).tolist())
    empty = Scene(subject=None, background="beach", weather="night")  # no subject: no count, colour or accessory
    no_subject = attribute_misses(["a park at night, red"], ["a beach at night"], [empty])
    assert no_subject["background/kept"].tolist() == [1.0] and no_subject["weather/kept"].tolist() == [0.0]
    assert math.isnan(no_subject["colour/kept"][0]) and math.isnan(no_subject["colour/edited"][0])
    assert all(math.isnan(v[0]) for v in attribute_misses(["a dog"], ["a cat"], [None]).values())
    with pytest.raises(ValueError, match="one source and one target scene per prompt"):
        attribute_misses(["a dog"], [], [target])


def test_gold_scorers_are_monitors_beside_the_reward():
    renderer = SceneRenderer(images_per_prompt=1)
    target = describe(FULL)
    judge = OracleJudge([FULL, FULL])

    class Constant:
        name = "constant"

        def __call__(self, results):
            return torch.ones(len(results))

    reward = CompositeReward({"constant": (Constant(), 2.0)},
                             monitors={"gold/content": GoldContentScorer(judge, renderer),
                                       "gold/aesthetic": GoldAestheticScorer(renderer)})
    results = [EditResult(EditTask("a dog", "x", target), target), EditResult(EditTask("a dog", "x", None), target)]
    judge.truth = [FULL]  # only rows with a target scene are read
    out = reward(results)
    assert out.total.tolist() == [2.0, 2.0]  # monitors never enter the total
    assert out.components["gold/content"][0] == 1.0 and math.isnan(out.components["gold/content"][1])
    expected = gold_aesthetic(renderer.render([target]))
    assert out.components["gold/aesthetic"].tolist() == pytest.approx([float(expected[0])] * 2)
    with pytest.raises(ValueError, match="name of a reward term"):
        CompositeReward({"constant": (Constant(), 1.0)}, monitors={"constant": Constant()})


def test_judge_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    judge = SceneJudge(width=8, hidden=16).eval()
    judge.save_pretrained(tmp_path / "judge")
    loaded = SceneJudge.from_pretrained(str(tmp_path / "judge")).eval()
    images = torch.rand(4, 3, 32, 32)
    for name in ATTRIBUTES:
        torch.testing.assert_close(judge(images)[name], loaded(images)[name])
    assert set(judge.read(images)) == set(ATTRIBUTES)


def test_gold_aesthetic_of_no_images_is_empty_and_silent():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gold_aesthetic(torch.zeros(0, 2, 3, 32, 32)).shape == (0,)
