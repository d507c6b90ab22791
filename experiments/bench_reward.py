"""Benchmark: what the image reward costs on top of rendering, what the render cache saves, and batch-size scaling.

    python -m promptgym.experiments.bench_reward [--preset tiny|synth] [--rounds 3] [--batch 16]
        [--sizes 1,2,4,8,16,32] [--chunk 8] [--threads N] [--quick]

Measured in one run on the tiny stack (`build_reward("tiny", tokenizer=default_tokenizer())`), or with `--preset
synth` on the synth world's trained stack with its gold monitors (`build_reward("synth", score_table=None)`: no
source-score table, so every source is rendered and scored as the raw pipeline renders it), with the demo tasks
(edited prompt = the task's reference target). The reward scores its image terms in delta mode, so every edit also
renders its source prompt: a batch of B edits renders 2 * B * K images (K = images per prompt). Each round:

- *raw pipeline*: `renderer.pipeline(...)` called directly on exactly the (prompt, k) pairs the reward renders,
  with the renderer's settings (steps, guidance, size, initial latents, generators) and chunking;
- *reward, uncached*: `CompositeReward` on the batch after `clear_reward_caches(reward)` (render + score everything);
- *reward, cached*: the same batch again (every image score is in the scorers' `ScoreCache`: no render, no CLIP forward).

Printed: medians over `--rounds` rounds (after one warm-up round) of images/s, counting the images the renderer
actually rendered (its counters); the scoring overhead `(reward time - raw time) / raw time` (target <= 15% on
tiny, whose renderer is as tiny as its scorers; <= 5% on synth); the cached batch's time as a fraction of the uncached one (target <= 2%); both ratios are medians of per-round
ratios (the raw and the uncached reward calls are adjacent and swap order every round, so slow load drifts
cancel). Then where the scoring time goes (`scoring_split`: each image term's `score_images` on the renders of the
edits and their sources, content integrity, and each gold monitor on the edits, with every image already rendered;
medians, as fractions of the raw renders' time), and throughput versus batch size.

On a small shared machine torch's default intra-op threads can make tiny-model timings swing tenfold when other
processes compete for the cores; `--threads 1` gives stable figures there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from promptgym.envs import default_tokenizer, load_tasks
from promptgym.rewards import CompositeReward, DiffusersRenderer, EditResult, build_reward, clear_reward_caches

OVERHEAD_TARGETS = {"tiny": 0.15, "synth": 0.05}
CACHED_TARGET = 0.02


def timed_reward(preset: str) -> CompositeReward:
    """The reward the benchmark times: the tiny stack, or the synth stack with its gold monitors and no
    source-score table (so that the reward renders exactly the pairs `rendered_pairs` lists)."""
    if preset == "tiny":
        return build_reward("tiny", tokenizer=default_tokenizer())
    if preset == "synth":
        return build_reward("synth", score_table=None)
    raise ValueError(f"preset must be one of {list(OVERHEAD_TARGETS)}, got {preset!r}")


def shared_renderer(reward: CompositeReward) -> DiffusersRenderer:
    """The one renderer behind a reward's image scorers (the benchmark assumes they share it, as presets do)."""
    found = [getattr(scorer, "renderer", None) for scorer, _ in reward.terms.values()]
    renderers = {id(r): r for r in found if r is not None}
    if len(renderers) != 1:
        raise ValueError(f"reward={reward!r} has {len(renderers)} renderers; expected exactly one shared renderer")
    return next(iter(renderers.values()))


def rendered_pairs(reward: CompositeReward, results: Sequence[EditResult], k: int) -> list[tuple[str, int]]:
    """The distinct (prompt, k) pairs an uncached reward call renders, in the renderer's order."""
    image_terms = [name for name, (scorer, _) in reward.terms.items() if getattr(scorer, "renderer", None) is not None]
    delta = any(name in reward.delta for name in image_terms)
    prompts = [r.prompt for r in results] + ([r.task.source for r in results] if delta else [])
    return list(dict.fromkeys((prompt, i) for prompt in prompts for i in range(k)))


def render_raw(renderer: DiffusersRenderer, pairs: Sequence[tuple[str, int]]) -> torch.Tensor:
    """Images `[len(pairs), 3, H, W]` from direct pipeline calls with the renderer's settings and chunking."""
    images = []
    with torch.no_grad():
        for start in range(0, len(pairs), renderer.batch_size):
            chunk = pairs[start : start + renderer.batch_size]
            latents = torch.stack([renderer.initial_latents(k) for _, k in chunk])
            unet = renderer.pipeline.unet
            out = renderer.pipeline(
                prompt=[prompt for prompt, _ in chunk],
                num_inference_steps=renderer.num_inference_steps,
                guidance_scale=renderer.guidance_scale,
                height=renderer.height,
                width=renderer.width,
                num_images_per_prompt=1,
                generator=[renderer.step_generator(k) for _, k in chunk],
                latents=latents.to(device=unet.device, dtype=unet.dtype),
                output_type="pt",
                **renderer.call_kwargs,
            ).images
            images.append(out.detach().to(device="cpu", dtype=torch.float32))
    return torch.cat(images)


@dataclass
class Round:
    """One round's timings (seconds) and the images the reward rendered."""

    raw_s: float
    reward_s: float
    cached_s: float
    images: int


def time_raw(renderer: DiffusersRenderer, pairs: Sequence[tuple[str, int]]) -> float:
    """Seconds to render `pairs` with direct pipeline calls."""
    start = time.perf_counter()
    render_raw(renderer, pairs)
    return time.perf_counter() - start


def time_reward(reward: CompositeReward, results: Sequence[EditResult]) -> float:
    """Seconds of one reward call on `results`."""
    start = time.perf_counter()
    reward(results)
    return time.perf_counter() - start


def time_round(
    reward: CompositeReward, renderer: DiffusersRenderer, results: Sequence[EditResult], raw_first: bool = True
) -> Round:
    """The raw pipeline and the reward uncached (cache cleared) back to back, in either order, then the reward on
    the same batch fully cached; checks with the renderer's counters that the calls really were (un)cached."""
    pairs = rendered_pairs(reward, results, renderer.images_per_prompt)
    raw_s = time_raw(renderer, pairs) if raw_first else 0.0
    clear_reward_caches(reward)  # renders and image scores: the next call renders and scores everything
    reward_s = time_reward(reward, results)
    images = renderer.images_rendered
    if images != len(pairs):
        raise RuntimeError(f"the reward rendered {images} images, expected {len(pairs)} (is the cache cleared?)")
    if not raw_first:
        raw_s = time_raw(renderer, pairs)
    cached_s = time_reward(reward, results)
    if renderer.images_rendered != images:
        raise RuntimeError("the repeated batch was not fully cached")
    return Round(raw_s, reward_s, cached_s, images)


def measure(
    reward: CompositeReward,
    renderer: DiffusersRenderer,
    results: Sequence[EditResult],
    rounds: int,
    warmup: bool = True,
) -> dict[str, float]:
    """Medians over `rounds` rounds (after a warm-up round) of times, images/s and per-round ratios."""
    if warmup:
        time_round(reward, renderer, results)  # first calls allocate buffers and pick kernels
    runs = [time_round(reward, renderer, results, raw_first=i % 2 == 0) for i in range(rounds)]
    images = runs[0].images
    raw_s = statistics.median(r.raw_s for r in runs)
    reward_s = statistics.median(r.reward_s for r in runs)
    return {
        "edits": len(results),
        "images": images,
        "raw_s": raw_s,
        "reward_s": reward_s,
        "cached_s": statistics.median(r.cached_s for r in runs),
        "raw_images_per_s": images / raw_s,
        "reward_images_per_s": images / reward_s,
        "edits_per_s": len(results) / reward_s,
        "overhead": statistics.median((r.reward_s - r.raw_s) / r.raw_s for r in runs),
        "cached_fraction": statistics.median(r.cached_s / r.reward_s for r in runs),
    }


def _median_seconds(call: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scoring_split(reward: CompositeReward, results: Sequence[EditResult], rounds: int) -> dict[str, float]:
    """Median seconds of each part of an uncached reward call's scoring, with every image already rendered (the
    renders are cached; the image terms' score caches are bypassed by calling `score_images`): each image term on
    the edits' and, in delta mode, the sources' renders; each other term and each monitor on the edits."""
    renderer = shared_renderer(reward)
    clear_reward_caches(reward)
    reward(results)  # renders every pair once, so the parts below time scoring only
    sources = [EditResult(r.task, r.task.source) for r in results]
    split = {}
    for name, (scorer, _) in reward.terms.items():
        scored = list(results) + (sources if name in reward.delta else [])
        if hasattr(scorer, "score_images"):
            images = renderer.render([r.prompt for r in scored])
            texts = scorer.texts_for(scored)
            split[name] = _median_seconds(lambda s=scorer, i=images, t=texts: s.score_images(i, t), rounds)
        else:
            split[name] = _median_seconds(lambda s=scorer, r=scored: s(r), rounds)
    for name, monitor in reward.monitors.items():
        split[name] = _median_seconds(lambda m=monitor: m(results), rounds)
    return split


def edit_results(n: int) -> list[EditResult]:
    """`n` demo edits: the task with its reference target as the edited prompt."""
    tasks = load_tasks("demo", "train")
    if n > len(tasks):
        raise ValueError(f"batch size {n} exceeds the {len(tasks)} demo tasks")
    return [EditResult(task, task.target or task.source) for task in tasks[:n]]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive int")
    return value


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive ints like 1,2,4")
    return sizes


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print the report, and return the measurements (for scripts and tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", choices=list(OVERHEAD_TARGETS), default="tiny",
        help="reward stack: the tiny random one, or the synth world's trained one with its gold monitors",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="timed rounds per measurement; medians are reported"
    )
    parser.add_argument("--batch", type=positive_int, default=16, help="edits per reward call for the headline figures")
    parser.add_argument("--sizes", type=parse_sizes, default=[1, 2, 4, 8, 16, 32], help="batch sizes to sweep")
    parser.add_argument(
        "--chunk", type=positive_int, default=None, help="images per pipeline call (default: the preset's)"
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, no warm-up, batch 1, sizes 1,2")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batch, args.sizes = 1, 1, [1, 2]
    warmup = not args.quick

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    reward = timed_reward(args.preset)
    target = OVERHEAD_TARGETS[args.preset]
    renderer = shared_renderer(reward)
    if args.chunk is not None:
        renderer.batch_size = args.chunk
    k = renderer.images_per_prompt
    print(
        f"{args.preset} reward stack: {renderer.height}x{renderer.width}, {renderer.num_inference_steps} steps, "
        f"guidance {renderer.guidance_scale}, K={k} images per prompt, {renderer.batch_size} images per pipeline "
        f"call, terms {list(reward.terms)}, delta {sorted(reward.delta)}, monitors {list(reward.monitors)}; torch threads {torch.get_num_threads()}; "
        f"medians of {args.rounds} rounds{' (quick: no warm-up, timings are not representative)' if args.quick else ''}"
    )
    head = measure(reward, renderer, edit_results(args.batch), args.rounds, warmup)
    print(f"batch: {args.batch} edits -> {head['images']} images rendered per uncached call (edited + source prompts)")
    print(f"raw pipeline call       : {head['raw_images_per_s']:8.2f} images/s  ({head['raw_s']:.3f} s per batch)")
    print(
        f"CompositeReward uncached: {head['reward_images_per_s']:8.2f} images/s  ({head['reward_s']:.3f} s per batch, "
        f"{head['edits_per_s']:.2f} edits/s)"
    )
    print(f"CompositeReward cached  : {head['cached_s']:.4f} s per batch (every score cached: no render, no CLIP forward)")
    print(
        f"ratio scoring overhead = (reward - raw) / raw = {head['overhead']:+.1%} "
        f"(target <= {target:.0%}: {'met' if head['overhead'] <= target else 'NOT met'})"
    )
    print(
        f"ratio cached / uncached batch = {head['cached_fraction']:.2%} "
        f"(target <= {CACHED_TARGET:.0%}: {'met' if head['cached_fraction'] <= CACHED_TARGET else 'NOT met'})"
    )

    split = scoring_split(reward, edit_results(args.batch), args.rounds)
    print(f"where the scoring goes ({args.batch} edits; medians; % of the raw renders' {head['raw_s']:.3f} s):")
    for name, seconds in split.items():
        kind = "monitor" if name in reward.monitors else "term"
        print(f"  {kind:7} {name:18} {seconds * 1000:9.1f} ms  {seconds / head['raw_s']:6.2%}")
    terms = sum(s for name, s in split.items() if name in reward.terms)
    monitors = sum(s for name, s in split.items() if name in reward.monitors)
    print(f"  terms {terms / head['raw_s']:.2%}, monitors {monitors / head['raw_s']:.2%} of the raw renders")

    print("throughput vs batch size (edits per reward call):")
    header = f"{'batch':>6} {'images':>7} {'raw img/s':>10} {'reward img/s':>13} {'edits/s':>8} {'overhead':>9} {'cached':>7}"
    print(header)
    sweep = []
    for size in args.sizes:
        row = measure(reward, renderer, edit_results(size), args.rounds, warmup)
        sweep.append(row)
        print(
            f"{size:>6} {row['images']:>7} {row['raw_images_per_s']:>10.2f} {row['reward_images_per_s']:>13.2f} "
            f"{row['edits_per_s']:>8.2f} {row['overhead']:>+9.1%} {row['cached_fraction']:>7.2%}"
        )
    return {"headline": head, "split": split, "sweep": sweep}


if __name__ == "__main__":
    main()
