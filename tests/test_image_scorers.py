"""AestheticScorer and PickScoreScorer: formulas against independent recomputation, shared renders, round trips."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from image_helpers import SENTENCES, SpyPipeline, make_tokenizer, rng_state

from promptgym.rewards.base import EditResult, EditTask, Scorer
from promptgym.rewards.image_scorers import (
    LAION_AESTHETIC_KEYS,
    AestheticScorer,
    PickScoreScorer,
    load_aesthetic_mlp,
    preprocess_images,
)
from promptgym.rewards.render import DiffusersRenderer, build_tiny_sd_pipeline

OPENAI_CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
OPENAI_CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])

TASKS = [
    EditTask("a photo of a cat sleeping on a sofa", "make it night time"),
    EditTask("a red car in the snow", "add a castle on a hill at sunset"),
    EditTask("oil painting of a forest with a river", "turn the dog into a wolf", target="a forest at night"),
]
PROMPTS = [
    "a photo of a cat sleeping on a sofa at night",
    "a red car in the snow with a castle on a hill at sunset",
    "a painting of a forest at night",
]
RESULTS = [EditResult(task, prompt) for task, prompt in zip(TASKS, PROMPTS)]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def renderer(tokenizer):
    return DiffusersRenderer(
        SpyPipeline(build_tiny_sd_pipeline(tokenizer, seed=0)),
        num_inference_steps=4,
        height=32,
        width=32,
        images_per_prompt=2,
    )


@pytest.fixture(scope="module")
def images(renderer):
    return renderer.render(PROMPTS)


@pytest.fixture(scope="module")
def varied_images(renderer):
    """Renders `[7, 2, 3, 32, 32]` of seven distinct prompts."""
    return renderer.render(SENTENCES)


@pytest.fixture(scope="module")
def aesthetic():
    return AestheticScorer.tiny(seed=0)


@pytest.fixture(scope="module")
def pickscore(tokenizer):
    scorer = PickScoreScorer.tiny(tokenizer, seed=0)
    with torch.no_grad():
        scorer.model.logit_scale.fill_(math.log(50.0))  # a scale far from 1, so a missing exp() would show
    return scorer


def reference_pixel_values(processor, images):
    return processor(images=list(images.flatten(0, 1)), do_rescale=False, return_tensors="pt")["pixel_values"]


def pooled(output):
    """transformers 5 get_*_features return a model output with the projection in pooler_output; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# ---------------------------------------------------------------------- preprocessing


def test_preprocessing_does_not_rescale_twice(aesthetic):
    ones, zeros = torch.ones(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    pixel_values = preprocess_images(aesthetic.processor, torch.cat([ones, zeros]))
    assert pixel_values.shape == (2, 3, 32, 32)
    expected_ones = ((1 - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD)[:, None, None].expand(3, 32, 32)
    expected_zeros = ((0 - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD)[:, None, None].expand(3, 32, 32)
    torch.testing.assert_close(pixel_values[0], expected_ones, atol=1e-4, rtol=0)
    torch.testing.assert_close(pixel_values[1], expected_zeros, atol=1e-4, rtol=0)


def test_same_size_path_gives_the_processors_exact_pixels(aesthetic, varied_images):
    from promptgym.rewards.image_scorers import _SAME_SIZE_FORM

    flat = varied_images.flatten(0, 1)  # real renders, 32 x 32: the processor keeps the size
    assert torch.equal(preprocess_images(aesthetic.processor, flat), reference_pixel_values(aesthetic.processor,
                                                                                            varied_images))
    # the batched path was taken (a form was found for 32 x 32), and the two forms differ on these renders
    assert [form for key, form in _SAME_SIZE_FORM[aesthetic.processor].items() if key[:2] == (32, 32)] in (
        ["8-bit"], ["float"])
    assert not torch.equal(torch.floor(flat * 255) / 255, flat)


def test_same_size_path_is_rechecked_when_the_processor_changes(aesthetic):
    processor = copy.deepcopy(aesthetic.processor)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = preprocess_images(processor, images)
    processor.image_mean = [0.5, 0.5, 0.5]  # a new normalisation: a new check, and the processor's new pixels
    after = preprocess_images(processor, images)
    assert not torch.equal(before, after)
    assert torch.equal(after, reference_pixel_values(processor, images[:, None]))
    assert len(_same_size_checks(processor)) == 2


def test_processor_that_resizes_takes_its_own_path(aesthetic):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))  # upsized to 32 by the processor
    pixel_values = preprocess_images(aesthetic.processor, images)
    assert pixel_values.shape == (2, 3, 32, 32)
    assert torch.equal(pixel_values, reference_pixel_values(aesthetic.processor, images[:, None]))
    assert [form for key, form in _same_size_checks(aesthetic.processor).items() if key[:2] == (16, 16)] == [None]


def _same_size_checks(processor):
    from promptgym.rewards.image_scorers import _SAME_SIZE_FORM

    return _SAME_SIZE_FORM[processor]


# ---------------------------------------------------------------------- aesthetic


def test_aesthetic_equals_mlp_of_normalised_embedding(aesthetic, images):
    with torch.no_grad():
        embeds = aesthetic.clip(pixel_values=reference_pixel_values(aesthetic.processor, images)).image_embeds
        assert not torch.allclose(embeds.norm(dim=-1), torch.ones(len(embeds)), atol=1e-2)  # normalising matters
        x = embeds / embeds.norm(dim=-1, keepdim=True)
        for i in (0, 2, 4, 6, 7):  # the Linear layers; dropout is identity at inference
            layer = aesthetic.mlp.layers[i]
            x = x @ layer.weight.T + layer.bias
        expected = x.reshape(3, 2).mean(dim=1)
    scores = aesthetic.score_images(images)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert scores.unique().numel() == 3  # depends on the image


def test_aesthetic_mlp_layout_matches_laion():
    mlp = AestheticScorer.tiny().mlp
    assert tuple(mlp.state_dict()) == LAION_AESTHETIC_KEYS
    dims = [(mlp.layers[i].in_features, mlp.layers[i].out_features) for i in (0, 2, 4, 6, 7)]
    assert dims == [(32, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    assert [mlp.layers[i].p for i in (1, 3, 5)] == [0.2, 0.2, 0.1]


def test_tiny_aesthetic_varies_across_renders(aesthetic, varied_images):
    # default inits embedded every render alike (cosine > 0.99) and scored them alike to 1e-5
    embeds = aesthetic.embed(varied_images)[:, 0]  # [7, D], unit norm, noise k = 0
    cosine = embeds @ embeds.T
    off_diagonal = cosine[~torch.eye(len(embeds), dtype=torch.bool)]
    assert off_diagonal.mean() < 0.95, f"renders collapse to one embedding: mean cosine {off_diagonal.mean():.4f}"
    scores = aesthetic.score_images(varied_images)
    assert scores.std() > 0.1, f"aesthetic score ~constant across renders: {scores.tolist()}"
    assert scores.abs().mean() < 5.0


def test_tiny_aesthetic_mlp_is_variance_preserving(aesthetic):
    mlp = aesthetic.mlp
    for i in (0, 2, 4, 6, 7):
        assert torch.count_nonzero(mlp.layers[i].bias) == 0
    embeds = torch.nn.functional.normalize(torch.randn(4096, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        scores = mlp(embeds).squeeze(1)
    assert 0.3 < scores.std() < 3.0  # ~N(0, 1) for random unit-norm embeddings (PyTorch's default init: ~0.06)
    assert scores.mean().abs() < 0.2


def test_tiny_processors_use_the_pil_backend_directly(aesthetic, pickscore):
    import transformers

    pil = getattr(transformers, "CLIPImageProcessorPil", None)
    if pil is None:
        pytest.skip("transformers < 5 has no CLIPImageProcessorPil")
    assert type(aesthetic.processor) is pil and type(pickscore.processor.image_processor) is pil


def test_scoring_uses_eval_mode(aesthetic, images):
    expected = aesthetic.score_images(images)
    aesthetic.mlp.train()
    aesthetic.clip.train()
    torch.testing.assert_close(aesthetic.score_images(images), expected)  # dropout would make this random
    assert not aesthetic.mlp.training


def test_tiny_scorers_are_seeded_and_leave_global_rng_alone(tokenizer, images):
    state = rng_state()
    a, b, c = AestheticScorer.tiny(seed=1), AestheticScorer.tiny(seed=1), AestheticScorer.tiny(seed=2)
    p, q = PickScoreScorer.tiny(tokenizer, seed=1), PickScoreScorer.tiny(tokenizer, seed=1)
    assert torch.equal(rng_state(), state)
    assert torch.equal(a.score_images(images), b.score_images(images))
    assert not torch.equal(a.score_images(images), c.score_images(images))
    assert torch.equal(p.score_images(images, PROMPTS), q.score_images(images, PROMPTS))


def test_aesthetic_from_pretrained_round_trip(aesthetic, images, tmp_path):
    aesthetic.clip.save_pretrained(tmp_path / "clip")
    aesthetic.processor.save_pretrained(tmp_path / "clip")
    state = {key: value.clone() for key, value in aesthetic.mlp.state_dict().items()}
    assert sorted(state) == sorted(LAION_AESTHETIC_KEYS)
    torch.save(state, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    loaded = AestheticScorer.from_pretrained(clip=tmp_path / "clip", mlp=tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    torch.testing.assert_close(loaded.score_images(images), aesthetic.score_images(images), atol=1e-6, rtol=0)


def test_aesthetic_loads_vision_tower_from_full_clip_checkpoint(pickscore, images, tmp_path):
    pickscore.model.save_pretrained(tmp_path / "clip")
    pickscore.processor.save_pretrained(tmp_path / "clip")
    torch.save(AestheticScorer.tiny().mlp.state_dict(), tmp_path / "mlp.pth")
    loaded = AestheticScorer.from_pretrained(clip=tmp_path / "clip", mlp=tmp_path / "mlp.pth")
    assert not hasattr(loaded.clip, "text_model")
    pixel_values = reference_pixel_values(pickscore.processor, images)
    with torch.no_grad():
        expected = pooled(pickscore.model.get_image_features(pixel_values=pixel_values))
        got = loaded.clip(pixel_values=pixel_values).image_embeds
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_load_aesthetic_mlp_rejects_other_state_dicts(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="layers.0.weight"):
        load_aesthetic_mlp(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_aesthetic_mlp(tmp_path / "missing.pth")


# ---------------------------------------------------------------------- PickScore


def test_pickscore_equals_scaled_cosine(pickscore, images):
    model, processor = pickscore.model, pickscore.processor
    tokens = processor.tokenizer(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    assert (tokens["input_ids"] == processor.tokenizer.eos_token_id).sum() == len(PROMPTS)  # one eos per text
    with torch.no_grad():
        text = pooled(model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))
        image = pooled(model.get_image_features(pixel_values=reference_pixel_values(processor, images)))
        cosine = torch.nn.functional.cosine_similarity(text[:, None, :], image.reshape(3, 2, -1), dim=-1)
        expected = (50.0 * cosine).mean(dim=1)
    scores = pickscore.score_images(images, PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-5)
    swapped = pickscore.score_images(images, PROMPTS[::-1])
    assert not torch.allclose(swapped, scores)  # the text matters


def test_tiny_pickscore_responds_to_image_and_text(tokenizer, varied_images):
    scorer = PickScoreScorer.tiny(tokenizer, seed=0)
    n = len(SENTENCES)
    image_side = scorer.score_images(varied_images, [SENTENCES[0]] * n)  # one text, different renders
    text_side = scorer.score_images(varied_images[:1].expand(n, -1, -1, -1, -1).contiguous(), SENTENCES)
    assert text_side.std() > 0.2
    # CLIP's default vision init made the image side ~20x weaker than the text side
    assert image_side.std() > 0.3 * text_side.std(), f"image side {image_side.std():.4f}, text {text_side.std():.4f}"


@pytest.mark.parametrize(
    "text, texts",
    [
        ("prompt", PROMPTS),
        ("source", [task.source for task in TASKS]),
        ("intent", [f"{task.source} {task.instruction}" for task in TASKS]),
    ],
)
def test_pickscore_text_choice(pickscore, renderer, images, text, texts):
    scorer = PickScoreScorer(pickscore.model, pickscore.processor, renderer=renderer, text=text)
    assert scorer.texts_for(RESULTS) == texts
    torch.testing.assert_close(scorer(RESULTS), scorer.score_images(images, texts))


def test_pickscore_rejects_unknown_text_choice(pickscore):
    with pytest.raises(ValueError, match="'target'"):
        PickScoreScorer(pickscore.model, pickscore.processor, text="target")


def test_tiny_pickscore_does_not_modify_the_tokenizer(tokenizer):
    before = tokenizer("a cat")["input_ids"]
    scorer = PickScoreScorer.tiny(tokenizer)
    assert tokenizer("a cat")["input_ids"] == before
    ids = scorer.processor.tokenizer("a cat")["input_ids"]
    assert ids == [tokenizer.bos_token_id, *before, tokenizer.eos_token_id]
    assert scorer.model.config.text_config.vocab_size == len(tokenizer)


def test_pickscore_text_embeddings_are_batch_independent_with_a_left_padding_tokenizer(tokenizer, images):
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"  # the policy tokenizer's convention; the tiny CLIP text tower must still pad right
    scorer = PickScoreScorer.tiny(left, seed=0)
    assert scorer.processor.tokenizer.padding_side == "right" and left.padding_side == "left"
    batch = scorer.score_images(images, PROMPTS)  # texts of different lengths, padded to the longest
    single = torch.cat([scorer.score_images(images[i : i + 1], PROMPTS[i : i + 1]) for i in range(len(PROMPTS))])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)


def test_pickscore_from_pretrained_round_trip(pickscore, images, tmp_path):
    pickscore.model.save_pretrained(tmp_path / "model")
    pickscore.processor.save_pretrained(tmp_path / "processor")
    loaded = PickScoreScorer.from_pretrained(model=tmp_path / "model", processor=tmp_path / "processor")
    torch.testing.assert_close(
        loaded.score_images(images, PROMPTS), pickscore.score_images(images, PROMPTS), atol=1e-6, rtol=0
    )


# ---------------------------------------------------------------------- shared renders and __call__


def test_image_scorers_share_one_render(tokenizer):
    renderer = DiffusersRenderer(
        SpyPipeline(build_tiny_sd_pipeline(tokenizer, seed=0)),
        num_inference_steps=4,
        height=32,
        width=32,
        images_per_prompt=2,
    )
    aesthetic = AestheticScorer.tiny(renderer=renderer)
    pickscore = PickScoreScorer.tiny(tokenizer, renderer=renderer)
    assert isinstance(aesthetic, Scorer) and isinstance(pickscore, Scorer)
    a, p = aesthetic(RESULTS), pickscore(RESULTS)
    assert len(renderer.pipeline.calls) == 1 and renderer.images_rendered == 6
    images = renderer.render(PROMPTS)
    torch.testing.assert_close(a, aesthetic.score_images(images))
    torch.testing.assert_close(p, pickscore.score_images(images, PROMPTS))
    for scores in (a, p):
        assert scores.dtype == torch.float32 and scores.device.type == "cpu" and scores.shape == (3,)
        assert torch.isfinite(scores).all()


def test_call_without_renderer_explains(aesthetic):
    with pytest.raises(ValueError, match="renderer"):
        aesthetic(RESULTS)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(3, 2, 32, 32), r"\[N, K, 3, H, W\]"),
        (torch.rand(3, 2, 3, 32, 32) + 1.0, r"\[0, 1\]"),
        (torch.full((3, 2, 3, 32, 32), float("nan")), r"\[0, 1\]"),
        (torch.zeros(3, 2, 3, 32, 32, dtype=torch.uint8), "float"),
        (torch.rand(2, 2, 3, 32, 32), "3 texts"),
    ],
)
def test_bad_images_are_rejected(pickscore, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pickscore.score_images(bad, PROMPTS)


def test_missing_real_checkpoints_offline_fail_fast_with_download_hint(aesthetic, tmp_path):
    with pytest.raises(OSError, match="huggingface-cli download yuvalkirstain/PickScore_v1"):
        PickScoreScorer.from_pretrained()
    with pytest.raises(OSError, match="huggingface-cli download openai/clip-vit-large-patch14"):
        AestheticScorer.from_pretrained()
    aesthetic.clip.save_pretrained(tmp_path / "clip")
    aesthetic.processor.save_pretrained(tmp_path / "clip")
    with pytest.raises(OSError, match="huggingface-cli download trl-lib/ddpo-aesthetic-predictor aesthetic-model.pth"):
        AestheticScorer.from_pretrained(clip=tmp_path / "clip")



def test_score_cache_skips_render_and_forward_for_seen_prompts():
    from promptgym.envs import EditTask
    from promptgym.rewards import EditResult, build_reward, clear_reward_caches

    reward = build_reward("tiny", weights={"integrity": 0.0})
    aesthetic, pickscore = reward.terms["aesthetic"][0], reward.terms["pickscore"][0]
    task = EditTask("a red dog", "make it blue")
    results = [EditResult(task, "a blue dog"), EditResult(task, "a blue dog at night")]
    first = reward(results)
    calls = aesthetic.renderer.pipeline_calls
    forwards = []
    handle = pickscore.model.vision_model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        again = reward(results[::-1])
        assert aesthetic.renderer.pipeline_calls == calls and not forwards  # no render, no CLIP forward
        assert torch.equal(again.total, first.total.flip(0))
        clear_reward_caches(reward)  # also resets the renderer's counters
        fresh = reward(results)
        assert aesthetic.renderer.pipeline_calls == 1 and forwards  # rendered and scored again
        torch.testing.assert_close(fresh.total, first.total)
    finally:
        handle.remove()
    assert aesthetic.score_cache.hits >= 4 and pickscore.score_cache.misses >= 4


def test_score_cache_size_is_validated_and_zero_disables_it():
    from promptgym.rewards.image_scorers import ScoreCache

    with pytest.raises(ValueError, match="score_cache_size must be an int >= 0"):
        ScoreCache(-1)
    cache = ScoreCache(0)
    cache._store(("f", "p", "t"), 1.0)
    assert len(cache._scores) == 0


def test_score_cache_returns_hits_that_the_same_call_evicts():
    """A full cache evicts while it stores a call's new scores; the call's own hits were read before that."""
    from promptgym.rewards.image_scorers import ScoreCache

    class Renderer:
        def fingerprint(self):
            return "f"

        def render(self, prompts):
            return torch.tensor([float(len(p)) for p in prompts])

    def score(images, texts):
        return images * 10

    cache = ScoreCache(1)
    assert cache.scores(Renderer(), ["a"], [""], score).tolist() == [10.0]
    assert cache.scores(Renderer(), ["a", "bb", "ccc", "a"], [""] * 4, score).tolist() == [10.0, 20.0, 30.0, 10.0]
    assert (cache.hits, cache.misses, len(cache._scores)) == (2, 3, 1)
    assert cache._scores.keys() == [("f", "ccc", "")]  # the least recently used went first
