"""DiffusersRenderer: shapes, common random numbers, batching independence, LRU cache, from_pretrained round trip."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from image_helpers import SENTENCES, SpyPipeline, make_tokenizer, rng_state

from promptgym.rewards.render import (
    DiffusersRenderer,
    build_tiny_sd_pipeline,
    clip_style_tokenizer,
    derive_seed,
    quiet_torchvision_fallback,
)

SOURCE = "a photo of a cat sleeping on a sofa"
EDIT = "a painting of a cat sleeping on a sofa at night"
OTHER = "a red car in the snow"


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def pipeline(tokenizer):
    return build_tiny_sd_pipeline(tokenizer, seed=0)


def make_renderer(pipeline, **kwargs) -> DiffusersRenderer:
    kwargs = {"num_inference_steps": 4, "height": 32, "width": 32, "images_per_prompt": 2, **kwargs}
    return DiffusersRenderer(SpyPipeline(pipeline), **kwargs)


def test_render_shape_dtype_and_range(pipeline):
    images = make_renderer(pipeline).render([SOURCE, EDIT, OTHER])
    assert images.shape == (3, 2, 3, 32, 32)
    assert images.dtype == torch.float32 and images.device.type == "cpu"
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 0.05  # not a constant image


def test_empty_batch(pipeline):
    renderer = make_renderer(pipeline)
    assert renderer.render([]).shape == (0, 2, 3, 32, 32)
    assert renderer.pipeline.calls == []


def test_same_prompt_renders_identically_and_second_time_from_cache(pipeline):
    renderer = make_renderer(pipeline)
    first = renderer.render([SOURCE, EDIT])
    assert len(renderer.pipeline.calls) == 1 and renderer.cache_info().misses == 4
    second = renderer.render([SOURCE, EDIT])
    assert torch.equal(first, second)
    assert len(renderer.pipeline.calls) == 1, "a cached prompt must not reach the pipeline"
    info = renderer.cache_info()
    assert (info.hits, info.misses, info.currsize) == (4, 4, 4)


def test_only_uncached_pairs_reach_the_pipeline(pipeline):
    renderer = make_renderer(pipeline)
    renderer.render([SOURCE])
    renderer.render([OTHER, SOURCE, OTHER])
    assert [call["prompt"] for call in renderer.pipeline.calls] == [[SOURCE, SOURCE], [OTHER, OTHER]]
    assert renderer.images_rendered == 4
    assert renderer.cache_info().hits == 4  # SOURCE x2 from cache, the repeated OTHER x2 from this batch


def test_different_k_give_different_images_and_prompts_matter(pipeline):
    images = make_renderer(pipeline).render([SOURCE, OTHER])
    assert (images[:, 0] - images[:, 1]).abs().mean() > 1e-2
    assert (images[0] - images[1]).abs().mean() > 1e-3


def test_batch_equals_one_by_one(pipeline):
    prompts = [SOURCE, EDIT, OTHER, "add a castle on a hill at sunset"]
    batched = make_renderer(pipeline, batch_size=8).render(prompts)
    one_by_one = make_renderer(pipeline, batch_size=1)
    single = torch.stack([one_by_one.render([prompt])[0] for prompt in prompts])
    assert len(one_by_one.pipeline.calls) == 2 * len(prompts)
    # float noise of batched BLAS calls only: renders of different prompts differ by ~0.1
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)


def test_source_and_edit_use_the_same_initial_latents(pipeline):
    renderer = make_renderer(pipeline, batch_size=8)
    renderer.render([SOURCE, EDIT])
    (call,) = renderer.pipeline.calls
    assert call["prompt"] == [SOURCE, SOURCE, EDIT, EDIT]
    latents = call["latents"]  # [(SOURCE,0), (SOURCE,1), (EDIT,0), (EDIT,1)]
    assert torch.equal(latents[0], latents[2]) and torch.equal(latents[1], latents[3])
    assert not torch.equal(latents[0], latents[1])
    assert torch.equal(latents[0], renderer.initial_latents(0)) and torch.equal(latents[1], renderer.initial_latents(1))
    # independently: image k's noise is N(0, 1) from a CPU generator seeded by derive_seed(seed, k, 0)
    expected = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(derive_seed(0, 1, 0)))
    assert torch.equal(latents[1], expected)


def test_seed_changes_the_noise(pipeline):
    a = make_renderer(pipeline, seed=0).render([SOURCE])
    b = make_renderer(pipeline, seed=1).render([SOURCE])
    assert (a - b).abs().mean() > 1e-2
    assert derive_seed(0, 1) != derive_seed(1, 0)


def test_stochastic_scheduler_is_still_batch_independent(tokenizer):
    from diffusers import EulerAncestralDiscreteScheduler

    pipe = build_tiny_sd_pipeline(tokenizer, seed=0)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    batched = make_renderer(pipe).render([OTHER, SOURCE])[1]
    alone = make_renderer(pipe).render([SOURCE])[0]
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=0)


def test_lru_eviction_order(pipeline):
    renderer = make_renderer(pipeline, images_per_prompt=1, cache_size=2)
    renderer.render(["a"])
    renderer.render(["b"])
    renderer.render(["a"])  # a is now most recent
    renderer.render(["c"])  # evicts b
    assert renderer.cache_info().currsize == 2
    renderer.render(["a"])
    assert renderer.cache_info().misses == 3
    renderer.render(["b"])
    assert renderer.cache_info().misses == 4
    assert [call["prompt"] for call in renderer.pipeline.calls] == [["a"], ["b"], ["c"], ["b"]]


def test_last_batch_is_shared_even_without_cache(pipeline):
    renderer = make_renderer(pipeline, cache_size=0)
    first = renderer.render([SOURCE, EDIT])
    second = renderer.render([SOURCE, EDIT])  # e.g. the second image scorer on the same batch
    assert torch.equal(first, second)
    assert len(renderer.pipeline.calls) == 1 and renderer.cache_info().currsize == 0
    renderer.render([OTHER])
    renderer.render([SOURCE])
    assert len(renderer.pipeline.calls) == 3, "with cache_size=0 only the latest batch is kept"


def test_config_change_invalidates_cache(pipeline):
    renderer = make_renderer(pipeline)
    four_steps = renderer.render([SOURCE])
    fingerprint = renderer.fingerprint()
    renderer.num_inference_steps = 6
    assert renderer.fingerprint() != fingerprint
    six_steps = renderer.render([SOURCE])
    assert len(renderer.pipeline.calls) == 2
    assert not torch.allclose(four_steps, six_steps)


def test_clear_cache_resets(pipeline):
    renderer = make_renderer(pipeline)
    renderer.render([SOURCE])
    renderer.clear_cache()
    assert tuple(renderer.cache_info()) == (0, 0, 1024, 0)
    renderer.render([SOURCE])
    assert len(renderer.pipeline.calls) == 2


def test_tiny_is_seeded_and_leaves_global_rng_and_tokenizer_alone(tokenizer):
    state = rng_state()
    max_length = tokenizer.model_max_length
    a = DiffusersRenderer.tiny(tokenizer, seed=3)
    b = DiffusersRenderer.tiny(tokenizer, seed=3)
    c = DiffusersRenderer.tiny(tokenizer, seed=4)
    assert torch.equal(rng_state(), state)
    assert tokenizer.model_max_length == max_length
    assert a.pipeline.tokenizer.model_max_length == 77
    assert a.pipeline.text_encoder.config.vocab_size == len(tokenizer)
    assert a.pipeline.text_encoder.config.eos_token_id == tokenizer.eos_token_id
    assert torch.equal(a.render([SOURCE]), b.render([SOURCE]))
    assert not torch.allclose(a.render([SOURCE]), c.render([SOURCE]))


def test_tiny_renders_depend_on_the_prompt(pipeline):
    # default random init rendered every prompt alike: pixel std across prompts ~0.001 against ~0.11 across noise
    images = make_renderer(pipeline).render(SENTENCES)  # 7 distinct prompts x K=2
    across_prompts = images.std(dim=0).mean()  # per-pixel std over prompts, same noise k
    across_noise = images.std(dim=1).mean()  # per-pixel std over k, same prompt
    assert across_prompts > 0.04, f"renders barely depend on the prompt: pixel std across prompts {across_prompts:.4f}"
    assert across_prompts > 0.3 * across_noise
    again = make_renderer(pipeline).render(SENTENCES[:2])  # a different batch: same images up to float noise
    torch.testing.assert_close(again, images[:2], atol=1e-4, rtol=0)


def test_tiny_pipeline_tokenizes_like_clip_whatever_the_callers_padding_side(tokenizer, pipeline):
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"  # the policy tokenizer's convention
    clip = clip_style_tokenizer(left)
    assert left.padding_side == "left" and clip.padding_side == "right" and clip.model_max_length == 77
    ids = clip(["a cat", "a red car"], padding="max_length", max_length=8)["input_ids"]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    assert ids[0] == [bos, *tokenizer("a cat")["input_ids"], eos] + [pad] * 4
    assert ids[1] == [bos, *tokenizer("a red car")["input_ids"], eos] + [pad] * 3
    assert pipeline.tokenizer.padding_side == "right"
    from_left = make_renderer(build_tiny_sd_pipeline(left, seed=0)).render([SOURCE])
    assert torch.equal(from_left, make_renderer(pipeline).render([SOURCE]))


def test_clip_style_tokenizer_rejects_slow_tokenizers():
    class Slow:
        pad_token_id = eos_token_id = bos_token_id = 0

    with pytest.raises(TypeError, match="fast"):
        clip_style_tokenizer(Slow())


def test_quiet_torchvision_fallback_drops_only_that_notice():
    logger = logging.getLogger("transformers.utils.import_utils")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    notice = "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` ..."
    logger.addHandler(handler)
    try:
        with quiet_torchvision_fallback():
            logger.warning(notice)
            logger.warning("another warning")
        logger.warning(notice)  # outside the block it is shown again
    finally:
        logger.removeHandler(handler)
    assert seen == ["another warning", notice]


def test_from_pretrained_round_trip(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "sd")
    loaded = DiffusersRenderer.from_pretrained(
        tmp_path / "sd", num_inference_steps=4, height=32, width=32, images_per_prompt=2
    )
    assert loaded.pipeline.safety_checker is None
    expected = make_renderer(pipeline).render([SOURCE, OTHER])
    torch.testing.assert_close(loaded.render([SOURCE, OTHER]), expected, atol=1e-6, rtol=0)


def test_missing_checkpoint_offline_fails_fast_with_download_hint():
    with pytest.raises(OSError) as excinfo:
        DiffusersRenderer.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    message = str(excinfo.value)
    assert "huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5" in message


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"images_per_prompt": -1}, "images_per_prompt"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"cache_size": -1}, "cache_size"),
        ({"call_kwargs": {"latents": None}}, "call_kwargs"),
    ],
)
def test_bad_constructor_arguments(pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_renderer(pipeline, **kwargs)


def test_bad_prompts(pipeline):
    renderer = make_renderer(pipeline)
    with pytest.raises(TypeError, match="sequence of str"):
        renderer.render(SOURCE)
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        renderer.render([SOURCE, 3])


def test_renders_are_normal_tensors_even_under_inference_mode(pipeline):
    renderer = make_renderer(pipeline)
    with torch.inference_mode():
        images = renderer.render([SOURCE])
    assert not images.is_inference()
    cached = renderer.render([SOURCE])
    assert not cached.is_inference() and len(renderer.pipeline.calls) == 1
    weight = torch.ones(3, requires_grad=True)
    (cached.mean(dim=(0, 1, 3, 4)) * weight).sum().backward()  # usable as training data
    assert weight.grad is not None


def test_truncated_prompts_are_counted_and_announced_once(pipeline, caplog):
    """The pipeline truncates prompts longer than its text encoder takes and diffusers logs every one; the renderer
    says it once and counts the rest."""
    import logging
    import warnings

    renderer = DiffusersRenderer(pipeline, num_inference_steps=2, height=32, width=32)
    limit = pipeline.tokenizer.model_max_length
    long = " ".join(["dog"] * (limit + 5))
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        renderer.render([long, "a cat", long + " again"])
        renderer.render([long + " third"])
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1 and f"2 of 3 prompts are longer than the text encoder's {limit} tokens" in messages[0]
    assert renderer.prompts_truncated == 3
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]  # no per-prompt diffusers log
    renderer.clear_cache()
    assert renderer.prompts_truncated == 0


@pytest.mark.slow
def test_fingerprint_names_the_weights_not_the_object_or_the_process(tokenizer):
    """Cache keys hold the fingerprint and checkpoints hold the caches, so it must be the same for the same weights
    in another process (another str hash seed), and differ for other weights."""
    import os
    import subprocess
    import sys

    code = (
        "from promptgym.rewards import build_reward; from promptgym.envs import default_tokenizer; "
        "print(build_reward('tiny', tokenizer=default_tokenizer()).terms['aesthetic'][0].renderer.fingerprint())"
    )
    printed = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, check=True,
                       capture_output=True, text=True).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(printed) == 1
    first = DiffusersRenderer(build_tiny_sd_pipeline(tokenizer, seed=0), height=32, width=32)
    again = DiffusersRenderer(build_tiny_sd_pipeline(tokenizer, seed=0), height=32, width=32)
    other = DiffusersRenderer(build_tiny_sd_pipeline(tokenizer, seed=1), height=32, width=32)
    assert first.fingerprint() == again.fingerprint() != other.fingerprint()
    with torch.no_grad():
        next(first.pipeline.unet.parameters()).add_(1.0)  # weights changed in place: clear_cache says so
    first.clear_cache()
    assert first.fingerprint() != again.fingerprint()
