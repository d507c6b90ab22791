"""Benchmark: how good the synth world's trained models are, measured against the world's truth.

    python -m promptgym.experiments.bench_world [--world DIR] [--captions 500] [--out runs/bench_world] [--threads 2]

Everything is measured in one run on fresh scenes (seeds disjoint from the build's):

1. **judge** accuracy per attribute on fresh procedural renders (held-out subject-colour pairs and scenes without
   a subject included), with chance (1 / number of values) beside it;
2. the judge on **trained-SD renders** of `--captions` captions, half of them subject-colour pairs the SD never
   saw in training (`HELD_OUT_PAIRS`), per attribute and all attributes of a render right together, seen and
   unseen pairs apart;
3. the trained **CLIP** on those SD renders: top-1 of the right caption among 10 that differ from it in exactly one
   attribute, and among 10 random captions;
4. the **aesthetic proxy** (trained CLIP + LAION-format MLP) against `gold_aesthetic`: Spearman on fresh
   procedural renders and on SD renders;
5. **speed**: renders/s at batch 16 of the trained pipeline, `SceneRenderer` and the random `tiny` pipeline, and the
   time of one uncached `synth` reward call (32 demo targets, delta mode, gold monitors) relative to `tiny`'s.

Writes `world.json`, `world.md` (the table) and `samples.png` (procedural vs SD renders of the same captions).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from promptgym.experiments.world_build import judge_accuracy, perturb_scene
from promptgym.rewards.gold import SceneJudge, gold_aesthetic
from promptgym.rewards.scene import ATTRIBUTES, HELD_OUT_PAIRS, Scene, attribute_values, describe, sample_scene
from promptgym.rewards.world import SYNTH_ENV, synth_path

TARGETS = {"subject": 0.8, "count": 0.8, "colour": 0.9, "accessory": 0.7, "background": 0.9, "weather": 0.9,
           "style": 0.7, "all": 0.5}


def chance() -> dict[str, float]:
    return {name: 1.0 / len(values) for name, values in attribute_values().items()}


def fresh_scenes(n: int, seed: int, held_out: str) -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng, held_out=held_out) for _ in range(n)]


def one_attribute_captions(scene: Scene, rng: random.Random, n: int = 9) -> list[str]:
    """`n` distinct captions that each differ from `scene` in exactly one content attribute."""
    truth, found = describe(scene), {}
    while len(found) < n:
        text = describe(perturb_scene(scene, rng))
        if text != truth:
            found[text] = None
    return list(found)


def clip_top1(model, processor, images: torch.Tensor, candidates: Sequence[Sequence[str]]) -> float:
    """Fraction of images whose first candidate caption has the highest CLIP similarity."""
    from promptgym.rewards.image_scorers import image_embeddings, preprocess_images, text_embeddings

    with torch.no_grad():
        image = torch.nn.functional.normalize(image_embeddings(model, preprocess_images(processor, images)), dim=-1)
        hits = 0
        for i, texts in enumerate(candidates):
            text = torch.nn.functional.normalize(text_embeddings(model, processor.tokenizer, list(texts)), dim=-1)
            hits += int((text @ image[i]).argmax() == 0)
    return hits / len(candidates)


def renders_per_second(renderer, prompts: Sequence[str], rounds: int = 3) -> float:
    """Median images/s of `renderer.render(prompts)`, its cache and last-batch memo emptied before every round."""
    rates = []
    for _ in range(rounds):
        renderer.clear_cache()
        start = time.perf_counter()
        images = renderer.render(prompts)
        rates.append(images.shape[0] * images.shape[1] / (time.perf_counter() - start))
    return statistics.median(rates)


def run(world: Path | None, n_captions: int, out: Path, seed: int = 12345) -> dict:
    from transformers import CLIPModel, CLIPProcessor

    from promptgym.envs import default_tokenizer
    from promptgym.rewards import build_reward, clear_reward_caches
    from promptgym.rewards.image_scorers import AestheticScorer
    from promptgym.rewards.presets import synth_renderer
    from promptgym.rewards.render import DiffusersRenderer
    from promptgym.rewards.scene_render import SceneRenderer, draw_scene

    if world is not None:
        os.environ[SYNTH_ENV] = str(world)
    report: dict = {"chance": chance(), "targets": TARGETS}
    judge = SceneJudge.from_pretrained(str(synth_path("judge"))).eval()

    # 1. judge on procedural renders
    rng = random.Random(seed)
    scenes = [sample_scene(rng, subject=False, held_out="any") for _ in range(2000)]
    procedural = torch.stack([torch.from_numpy(draw_scene(s, k=rng.randrange(1 << 20), seed=seed)).permute(2, 0, 1) for s in scenes])
    report["judge_procedural"] = judge_accuracy(judge, procedural, scenes)

    # 2. judge on trained-SD renders: seen and unseen subject-colour pairs
    half = n_captions // 2
    seen, unseen = fresh_scenes(half, seed + 1, "exclude"), fresh_scenes(n_captions - half, seed + 2, "only")
    renderer = synth_renderer(seed=seed, overrides={"images_per_prompt": 1, "cache_size": 0})
    captions = [describe(s) for s in seen + unseen]
    sd = renderer.render(captions)[:, 0]
    report["judge_sd_seen"] = judge_accuracy(judge, sd[:half], seen)
    report["judge_sd_unseen"] = judge_accuracy(judge, sd[half:], unseen)
    report["judge_sd"] = judge_accuracy(judge, sd, seen + unseen)

    # 3. CLIP on SD renders
    clip = CLIPModel.from_pretrained(synth_path("clip")).eval()
    processor = CLIPProcessor.from_pretrained(synth_path("clip"))
    text_rng = random.Random(seed + 3)
    hard = [[describe(s), *one_attribute_captions(s, text_rng)] for s in seen + unseen]
    pool = [describe(s) for s in fresh_scenes(4000, seed + 4, "any")]
    easy = [[describe(s), *text_rng.sample([p for p in pool if p != describe(s)], 9)] for s in seen + unseen]
    report["clip_sd"] = {"one_attribute_top1": clip_top1(clip, processor, sd, hard),
                         "random_top1": clip_top1(clip, processor, sd, easy)}

    # 4. aesthetic proxy vs gold
    aesthetic = AestheticScorer.from_pretrained(clip=synth_path("clip"), mlp=synth_path("aesthetic", "aesthetic-model.safetensors"))
    fresh = fresh_scenes(600, seed + 5, "any")
    proc = torch.stack([torch.from_numpy(draw_scene(s, k=i, seed=seed)).permute(2, 0, 1) for i, s in enumerate(fresh)])[:, None]
    report["aesthetic_spearman"] = {
        "procedural": float(spearmanr(aesthetic.score_images(proc).numpy(), gold_aesthetic(proc).numpy()).statistic),
        "sd": float(spearmanr(aesthetic.score_images(sd[:, None]).numpy(), gold_aesthetic(sd[:, None]).numpy()).statistic),
    }

    # 5. speed
    prompts = captions[:16]
    scene_renderer = SceneRenderer(images_per_prompt=1, cache_size=0)
    tiny = DiffusersRenderer.tiny(default_tokenizer(), images_per_prompt=1, cache_size=0, batch_size=16)
    trained = synth_renderer(seed=seed, overrides={"images_per_prompt": 1, "cache_size": 0, "batch_size": 16})
    report["renders_per_second_batch16"] = {
        "synth_sd": renders_per_second(trained, prompts),
        "scene_renderer": renders_per_second(scene_renderer, prompts),
        "tiny_sd": renders_per_second(tiny, prompts),
    }
    report["reward_call_seconds"] = reward_call_seconds(build_reward, clear_reward_caches)
    report["reward_call_seconds"]["synth_over_tiny"] = report["reward_call_seconds"]["synth"] / report["reward_call_seconds"]["tiny"]

    out.mkdir(parents=True, exist_ok=True)
    (out / "world.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "world.md").write_text(table(report) + "\n")
    save_samples(seen[:4] + unseen[:4], sd[list(range(4)) + list(range(half, half + 4))], out / "samples.png", seed)
    return report


def reward_call_seconds(build_reward, clear_reward_caches, rounds: int = 3) -> dict[str, float]:
    """Median seconds of one uncached reward call on 32 demo targets, synth vs tiny (each with its own defaults)."""
    from promptgym.envs import default_tokenizer, load_tasks
    from promptgym.rewards import EditResult

    tasks = load_tasks("demo", "test")[:32]
    results = [EditResult(t, t.target) for t in tasks]
    seconds = {}
    for preset in ("synth", "tiny"):
        reward = build_reward(preset, tokenizer=default_tokenizer() if preset == "tiny" else None)
        times = []
        for _ in range(rounds):
            clear_reward_caches(reward)
            start = time.perf_counter()
            reward(results)
            times.append(time.perf_counter() - start)
        seconds[preset] = statistics.median(times)
    return seconds


def table(report: dict) -> str:
    ch = report["chance"]
    lines = ["| attribute | chance | judge, procedural | judge, SD (seen pairs) | judge, SD (unseen pairs) | target on SD |",
             "|---|---|---|---|---|---|"]
    for name in (*ATTRIBUTES, "all"):
        lines.append(
            f"| {name} | {ch.get(name, float('nan')):.3f} | {report['judge_procedural'][name]:.3f} | "
            f"{report['judge_sd_seen'][name]:.3f} | {report['judge_sd_unseen'][name]:.3f} | >= {TARGETS[name]:.2f} |"
        )
    clip, aes, speed, call = report["clip_sd"], report["aesthetic_spearman"], report["renders_per_second_batch16"], report["reward_call_seconds"]
    lines += [
        "",
        f"CLIP on SD renders: right caption among 10 differing in one attribute {clip['one_attribute_top1']:.3f} "
        f"(target >= 0.70), among 10 random captions {clip['random_top1']:.3f} (target >= 0.95)",
        f"aesthetic proxy vs gold_aesthetic, Spearman: procedural renders {aes['procedural']:.3f}, SD renders {aes['sd']:.3f}",
        f"renders/s at batch 16: trained SD {speed['synth_sd']:.1f}, SceneRenderer {speed['scene_renderer']:.1f}, "
        f"random tiny SD {speed['tiny_sd']:.1f}",
        f"one uncached reward call (32 edits, delta mode): synth {call['synth']:.2f} s, tiny {call['tiny']:.2f} s "
        f"({call['synth_over_tiny']:.2f}x)",
    ]
    return "\n".join(lines)


def save_samples(scenes: Sequence[Scene], sd: torch.Tensor, path: Path, seed: int) -> Path:
    """Procedural render (top) and trained-SD render (bottom) of the same captions, seen pairs then unseen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from promptgym.rewards.scene_render import draw_scene

    fig, axes = plt.subplots(2, len(scenes), figsize=(1.9 * len(scenes), 4.6), squeeze=False)
    for i, scene in enumerate(scenes):
        axes[0, i].imshow(draw_scene(scene, k=0, seed=seed), interpolation="nearest")
        axes[1, i].imshow(sd[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        unseen = " (unseen pair)" if (scene.subject, scene.colour) in HELD_OUT_PAIRS else ""
        axes[0, i].set_title(_wrap(describe(scene)) + unseen, fontsize=6)
        for row in (0, 1):
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
    axes[0, 0].set_ylabel("SceneRenderer")
    axes[1, 0].set_ylabel("trained SD")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 24) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptgym.experiments.bench_world", description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, default=None, help=f"a built world directory (default: ${SYNTH_ENV} or the shipped one)")
    parser.add_argument("--captions", type=int, default=500, help="captions rendered by the trained SD (default 500)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_world"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = run(args.world, args.captions, args.out)
    print(table(report))
    print(f"written to {args.out}: world.json, world.md, samples.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
