"""`build_reward` presets: validation, term sets, the tiny stack's wiring, determinism, batch independence,
render counters, the offline failure of real presets, `byte_tokenizer`, and a smoke run of the reward benchmark."""

from __future__ import annotations

import math

import pytest
import torch

from promptgym.envs import EditTask, default_tokenizer, load_tasks
from promptgym.rewards import (
    AestheticScorer,
    CompositeReward,
    ContentIntegrityScorer,
    DiffusersRenderer,
    EditResult,
    PickScoreScorer,
    build_reward,
    byte_tokenizer,
    clear_reward_caches,
    reward_stats,
)
from promptgym.rewards.presets import SD15

IMAGE_COMPONENTS = [f"{term}{suffix}" for term in ("aesthetic", "pickscore") for suffix in ("", "/source", "/delta")]


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer) -> CompositeReward:
    return build_reward("tiny", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def results() -> list[EditResult]:
    """Four demo edits of different lengths (so a batch pads its texts), edited prompt = the reference target."""
    tasks = load_tasks("demo", "train")[:4]
    return [EditResult(task, task.target) for task in tasks]


def renderer_of(reward: CompositeReward) -> DiffusersRenderer:
    return reward.terms["aesthetic"][0].renderer


# ----------------------------------------------------------------------------- validation


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match=r"preset='sd-xl'.*\['tiny', 'synth', 'synth-gold', 'surrogate', 'diffchat-sd15'\]"):
        build_reward("sd-xl")


def test_unknown_weight_names_are_named():
    with pytest.raises(ValueError, match=r"\['aesthetics'\].*\['aesthetic', 'integrity', 'pickscore'\]"):
        build_reward("tiny", weights={"aesthetics": 1.0})


def test_all_zero_weights_are_rejected():
    with pytest.raises(ValueError, match="no term with a non-zero weight"):
        build_reward("tiny", weights={"aesthetic": 0.0, "pickscore": 0.0, "integrity": 0.0})


def test_tokenizer_given_to_the_real_preset_is_rejected_before_loading(tokenizer, monkeypatch):
    from promptgym.rewards import presets

    def no_loading(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded before the tokenizer was rejected")

    monkeypatch.setattr(presets.DiffusersRenderer, "from_pretrained", no_loading)
    with pytest.raises(ValueError, match="tokenizer is only used by the tiny preset"):
        build_reward("diffchat-sd15", tokenizer=tokenizer)


def test_non_finite_weight_is_rejected():
    with pytest.raises(ValueError, match="weight=nan"):
        build_reward("tiny", weights={"aesthetic": 0.0, "pickscore": 0.0, "integrity": math.nan})


# ----------------------------------------------------------------------------- term sets


@pytest.mark.parametrize(
    ("weights", "terms", "delta"),
    [
        ({}, {"aesthetic": 1.0, "pickscore": 1.0, "integrity": 1.0}, {"aesthetic", "pickscore"}),
        ({"pickscore": 0.0}, {"aesthetic": 1.0, "integrity": 1.0}, {"aesthetic"}),
        ({"aesthetic": 0.0, "integrity": 0.5}, {"pickscore": 1.0, "integrity": 0.5}, {"pickscore"}),
        ({"aesthetic": 0.0, "pickscore": 0.0}, {"integrity": 1.0}, set()),
        ({"aesthetic": 2.0, "pickscore": -1.0, "integrity": 0.0}, {"aesthetic": 2.0, "pickscore": -1.0}, None),
    ],
)
def test_weights_choose_the_terms(tokenizer, weights, terms, delta):
    reward = build_reward("tiny", tokenizer=tokenizer, weights=weights)
    assert {name: weight for name, (_, weight) in reward.terms.items()} == terms
    assert reward.delta == (delta if delta is not None else {"aesthetic", "pickscore"})
    if not {"aesthetic", "pickscore"} & set(terms):
        assert reward_stats(reward) == {}  # no image term: no renderer was built


def test_real_preset_without_image_terms_needs_no_download():
    reward = build_reward("diffchat-sd15", weights={"aesthetic": 0.0, "pickscore": 0.0})
    assert list(reward.terms) == ["integrity"]
    task = EditTask("a red dog on a beach", "make it night")
    assert reward([EditResult(task, "a red dog on a beach at night")]).total.tolist() == [1.0]


def test_overrides_reach_the_parts(tokenizer):
    reward = build_reward(
        "tiny",
        tokenizer=tokenizer,
        renderer={"images_per_prompt": 1, "num_inference_steps": 2, "batch_size": 3},
        integrity={"threshold": 0.5, "mode": "ratio"},
        delta=False,
        on_error="zero",
        seed=7,
    )
    renderer = renderer_of(reward)
    settings = (renderer.images_per_prompt, renderer.num_inference_steps, renderer.batch_size, renderer.seed)
    assert settings == (1, 2, 3, 7)
    integrity = reward.terms["integrity"][0]
    assert (integrity.threshold, integrity.mode) == (0.5, "ratio")
    assert reward.delta == frozenset() and reward.on_error == "zero"


def test_normalize_names_only_the_listed_terms(tokenizer):
    reward = build_reward("tiny", tokenizer=tokenizer, weights={"pickscore": 0.0}, normalize=["integrity"])
    assert reward.normalize == {"integrity"}
    assert build_reward("tiny", tokenizer=tokenizer, normalize=True).normalize == {
        "aesthetic",
        "pickscore",
        "integrity",
    }
    with pytest.raises(ValueError, match="unknown terms"):
        build_reward("tiny", tokenizer=tokenizer, weights={"pickscore": 0.0}, normalize=["pickscore"])


def test_normalize_is_off_by_default(tiny):
    assert tiny.normalize == frozenset()


# ----------------------------------------------------------------------------- the tiny preset


def test_tiny_preset_components(tiny):
    aesthetic, pickscore, integrity = (tiny.terms[name][0] for name in ("aesthetic", "pickscore", "integrity"))
    assert isinstance(aesthetic, AestheticScorer) and isinstance(pickscore, PickScoreScorer)
    assert isinstance(integrity, ContentIntegrityScorer)
    assert (integrity.threshold, integrity.mode) == (0.8, "binary")
    assert pickscore.text == "prompt"
    renderer = aesthetic.renderer
    assert isinstance(renderer, DiffusersRenderer) and pickscore.renderer is renderer  # one shared renderer
    assert (renderer.height, renderer.width, renderer.num_inference_steps, renderer.images_per_prompt) == (32, 32, 4, 2)
    assert tiny.delta == {"aesthetic", "pickscore"} and tiny.on_error == "raise"
    assert [weight for _, weight in tiny.terms.values()] == [1.0, 1.0, 1.0]


def test_tiny_delta_mode_components_and_total(tiny, results):
    out = tiny(results)
    assert set(out.components) == {*IMAGE_COMPONENTS, "integrity"}
    for term in ("aesthetic", "pickscore"):
        torch.testing.assert_close(
            out.components[f"{term}/delta"], out.components[term] - out.components[f"{term}/source"]
        )
        assert out.components[f"{term}/delta"].abs().max() > 0  # the edit changed the renders' scores
    torch.testing.assert_close(
        out.total, out.components["aesthetic/delta"] + out.components["pickscore/delta"] + out.components["integrity"]
    )
    assert out.components["integrity"].tolist() == [1.0] * len(results)  # the reference edits keep the content


def test_unedited_prompt_has_zero_delta(tiny, results):
    unedited = [EditResult(r.task, r.task.source) for r in results[:2]]
    out = tiny(unedited)
    for term in ("aesthetic", "pickscore"):
        # The same images (rendered once: the pair is a within-batch cache hit) scored at different rows of one
        # CLIP batch: equal up to float round-off of the batched matmuls, not necessarily bit for bit.
        torch.testing.assert_close(out.components[f"{term}/delta"], torch.zeros(2), rtol=0, atol=1e-5)
        torch.testing.assert_close(out.components[term], out.components[f"{term}/source"], rtol=0, atol=1e-5)


def test_tiny_aesthetic_equals_independently_built_parts(tiny, tokenizer, results):
    """The preset's aesthetic term = AestheticScorer.tiny(seed 0) on DiffusersRenderer.tiny(tokenizer, seed 0) renders."""
    renderer = DiffusersRenderer.tiny(tokenizer, seed=0)
    scorer = AestheticScorer.tiny(seed=0, image_size=32)
    results = results[:2]
    prompts = [r.prompt for r in results] + [r.task.source for r in results]
    expected = scorer.score_images(renderer.render(prompts))
    out = tiny(results)
    n = len(results)
    torch.testing.assert_close(out.components["aesthetic"], expected[:n])
    torch.testing.assert_close(out.components["aesthetic/source"], expected[n:])


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_rewards_other_seed_other_rewards(tokenizer, results):
    results = results[:2]
    first = build_reward("tiny", tokenizer=tokenizer, seed=3)(results)
    second = build_reward("tiny", tokenizer=tokenizer, seed=3)(results)
    other = build_reward("tiny", tokenizer=tokenizer, seed=4)(results)
    for name in first.components:
        assert torch.equal(first.components[name], second.components[name]), name
    assert torch.equal(first.total, second.total)
    assert not torch.equal(first.components["pickscore"], other.components["pickscore"])
    assert not torch.equal(first.components["aesthetic"], other.components["aesthetic"])


def test_reward_is_a_fixed_function_of_the_prompt(tiny, results):
    results = results[:2]
    clear_reward_caches(tiny)
    fresh = tiny(results)
    cached = tiny(results)  # every image from the cache
    clear_reward_caches(tiny)
    rerendered = tiny(results)
    reordered = tiny(results[::-1])  # same texts, so the same padded length
    for name in fresh.components:
        assert torch.equal(fresh.components[name], cached.components[name]), name
        assert torch.equal(fresh.components[name], rerendered.components[name]), name
        assert torch.equal(fresh.components[name], reordered.components[name].flip(0)), name


@pytest.fixture(scope="module")
def batch_and_single(tiny, results):
    """The 4 edits (different lengths) rewarded in one call, and one call each, rendered afresh every time (the
    texts pad to a different length in the batch than alone)."""
    clear_reward_caches(tiny)
    batch = tiny(results)
    single = []
    for result in results:
        clear_reward_caches(tiny)
        single.append(tiny([result]))
    return batch, single


@pytest.mark.parametrize(
    "component", ["aesthetic", "aesthetic/source", "pickscore", "pickscore/source", "integrity", "total"]
)
def test_batch_scores_equal_one_by_one_scores(batch_and_single, component):
    batch, single = batch_and_single

    def get(out):
        return out.total if component == "total" else out.components[component]

    # Renders of different batch sizes agree to ~1e-5 per pixel (conv/matmul round-off, thread-count dependent); the
    # tiny aesthetic head amplifies that to ~5e-4, against score spreads of ~0.4 (a padding bug shifted PickScore by ~2).
    torch.testing.assert_close(get(batch), torch.cat([get(out) for out in single]), rtol=1e-3, atol=2e-3)


# ----------------------------------------------------------------------------- render counters


def test_one_render_per_batch_shared_by_both_image_scorers(tokenizer, results):
    reward = build_reward("tiny", tokenizer=tokenizer, renderer={"batch_size": 64})
    renderer = renderer_of(reward)
    decoded: list[int] = []  # images the VAE decoded, per pipeline call (independent of the renderer's counters)
    handle = renderer.pipeline.vae.decoder.register_forward_hook(lambda mod, args, out: decoded.append(out.shape[0]))
    try:
        n, k = len(results), renderer.images_per_prompt
        images = 2 * n * k  # edited + source prompts (delta mode), K images each, all distinct
        reward(results)
        assert decoded == [images]  # one pipeline call rendered everything, for both image scorers
        prompts = 2 * n  # edited + source
        assert reward_stats(reward) == {
            "score_cache/aesthetic_hits": 0.0,
            "score_cache/aesthetic_misses": float(prompts),
            "score_cache/aesthetic_table_hits": 0.0,  # the tiny stack has no score table
            "score_cache/pickscore_hits": 0.0,
            "score_cache/pickscore_misses": float(prompts),
            "score_cache/pickscore_table_hits": 0.0,
            "render/cache_hits": float(images),  # the second image scorer found every image
            "render/cache_misses": float(images),
            "render/pipeline_calls": 1.0,
            "render/images_rendered": float(images),
        }
        reward(results)  # the same batch again: scores come from the score caches, no render and no forward
        assert decoded == [images]
        stats = reward_stats(reward)
        assert stats["render/pipeline_calls"] == 1.0 and stats["render/images_rendered"] == float(images)
        assert stats["render/cache_hits"] == float(images) and stats["render/cache_misses"] == float(images)
        assert stats["score_cache/aesthetic_hits"] == stats["score_cache/pickscore_hits"] == float(prompts)
    finally:
        handle.remove()


def test_render_chunks_follow_the_renderer_batch_size(tokenizer, results):
    reward = build_reward("tiny", tokenizer=tokenizer, renderer={"batch_size": 5, "images_per_prompt": 1})
    reward(results[:3])  # 6 images in chunks of 5
    stats = reward_stats(reward)
    assert stats["render/pipeline_calls"] == 2.0 and stats["render/images_rendered"] == 6.0


# ----------------------------------------------------------------------------- real preset offline


def test_real_preset_offline_fails_fast_naming_the_checkpoint(monkeypatch):
    from promptgym.rewards.render import _in_hub_cache

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if _in_hub_cache(SD15):
        pytest.skip(f"{SD15} is in this machine's Hugging Face cache")
    with pytest.raises(OSError) as info:  # offline mode: no network attempt, so no hang
        build_reward("diffchat-sd15")
    message = str(info.value)
    assert SD15 in message
    assert f"huggingface-cli download {SD15}" in message


# ----------------------------------------------------------------------------- byte_tokenizer


@pytest.mark.parametrize("text", ["a red car in the snow", "café, 東京 at night 🌙", "  tabs\tand\nnewlines  ", ""])
def test_byte_tokenizer_round_trips_text(text):
    tokenizer = byte_tokenizer()
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no special tokens added
    assert tokenizer.decode(ids) == text


def test_byte_tokenizer_specials_and_vocabulary():
    tokenizer = byte_tokenizer(model_max_length=40)
    assert len(tokenizer) == 3 + 256
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    assert tokenizer.model_max_length == 40
    ids = tokenizer("ab")["input_ids"]
    assert min(ids) >= 3 and tokenizer.decode([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]) == "<s>ab</s>"


def test_default_tiny_preset_uses_the_byte_tokenizer(results):
    reward = build_reward("tiny", weights={"aesthetic": 0.0})
    clip_tokenizer = reward.terms["pickscore"][0].processor.tokenizer
    assert len(clip_tokenizer) == len(byte_tokenizer())
    out = reward(results[:2])
    assert torch.isfinite(out.total).all()


# ----------------------------------------------------------------------------- benchmark smoke run


def test_bench_reward_quick_runs(capsys):
    from promptgym.experiments.bench_reward import main

    report = main(["--quick"])
    printed = capsys.readouterr().out
    for line in (
        "raw pipeline call",
        "CompositeReward uncached",
        "CompositeReward cached",
        "ratio scoring overhead",
        "ratio cached / uncached batch",
        "throughput vs batch size",
    ):
        assert line in printed
    assert [row["edits"] for row in report["sweep"]] == [1, 2]
    assert [row["images"] for row in report["sweep"]] == [4, 8]  # (edits + their sources) x K=2
    head = report["headline"]
    assert head["edits"] == 1 and head["images"] == 4
    assert head["raw_s"] > 0 and head["reward_s"] > 0 and 0 < head["cached_fraction"] < 1
    assert "where the scoring goes" in printed and set(report["split"]) == {"aesthetic", "pickscore", "integrity"}


def test_bench_reward_times_the_synth_stack_with_its_monitors(capsys):
    """`--preset synth`: the trained stack without the source-score table (the reward renders exactly the pairs
    the raw pipeline does, or `time_round` raises), its gold monitors in the split, the 5% target."""
    from promptgym.experiments.bench_reward import main

    report = main(["--quick", "--preset", "synth", "--sizes", "1"])
    printed = capsys.readouterr().out
    assert "synth reward stack" in printed and "target <= 5%" in printed
    assert report["headline"]["images"] == 4
    assert set(report["split"]) == {"aesthetic", "pickscore", "integrity", "gold/content", "gold/aesthetic",
                                    "gold/text_content"}
    split_lines = printed[printed.index("where the scoring goes"):printed.index("throughput vs batch size")]
    assert all(f"monitor {name}" in split_lines for name in ("gold/content", "gold/aesthetic", "gold/text_content"))
    assert all(f"term    {name}" in split_lines for name in ("aesthetic", "pickscore", "integrity"))


def test_bench_raw_pipeline_call_matches_the_renderer(tokenizer):
    """The benchmark's direct pipeline call renders exactly what the renderer does (an apples-to-apples baseline)."""
    from promptgym.experiments.bench_reward import render_raw

    renderer = DiffusersRenderer.tiny(tokenizer, seed=0, batch_size=3)
    prompts = ["a red car in the snow", "an oil painting of a forest at night"]
    pairs = [(p, k) for p in prompts for k in range(renderer.images_per_prompt)]
    raw = render_raw(renderer, pairs)
    assert torch.equal(raw, renderer.render(prompts).flatten(0, 1))
