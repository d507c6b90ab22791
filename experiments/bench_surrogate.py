"""Benchmark: the text-only surrogate reward (`surrogate`) against the image reward it stands in for (`synth`): what a
reward call costs, and how well the surrogate ranks what the image reward ranks.

    python -m promptgym.experiments.bench_surrogate [--rounds 3] [--batch 64] [--threads 1] [--seed 1]

Measured in one run, both rewards on the same batch of episodes: the demo *test* tasks (sources no fit row came
from) with edited prompts drawn as the fit draws them (`surrogate_fit.pairs_of`: targets and their variants; with
`--seed` other than the fit's, mostly prompts the fit never saw). Printed:

- *reward calls per second* (episodes scored per second), medians of `--rounds` rounds after a warm-up round; each
  round clears every render, score and embedding cache of both rewards and calls them back to back, in alternating
  order (so slow drifts of a shared machine's load cancel in the per-round ratio). Three settings:
  *cold* (nothing cached: the sources are rendered or embedded too), *warm sources* (the sources scored just
  before: the steady state of training, where each task's source recurs), both with `monitors=False` (the proxy
  reward alone); and *with gold monitors* (warm sources, what `promptgym train --config surrogate` runs: the gold
  monitors render every edited prompt, so there the surrogate saves only the image scorers' CLIP passes).
- *Spearman* of each surrogate term against the image term on that batch (absolute and delta against the source),
  and of the reward deltas combined (0.7 : 0.3 on standardised deltas, against the image deltas weighted the same
  and weighted 1 : 1 as `synth` does); then the fit's held-out figures recomputed from the shipped `pairs.jsonl`
  with the shipped heads, beside the shipped `eval.json` (they must agree).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch

from promptgym.envs import load_tasks
from promptgym.experiments import surrogate_fit
from promptgym.rewards import CompositeReward, EditResult, build_reward, clear_reward_caches
from promptgym.rewards.surrogate import SURROGATE_TARGETS, SentenceEmbedder, SurrogateScorer, surrogate_path

SPEED_TARGET = 20.0  # the surrogate's reward calls per second over the image reward's (issue 13)


def bench_results(n: int, seed: int) -> list[EditResult]:
    """`n` episodes on the demo test tasks, edited prompts drawn like the fit's held-out pairs (no source rows)."""
    tasks = load_tasks("demo", "test")
    rows = surrogate_fit.pairs_of(tasks, 2 * n + len(tasks), random.Random(seed), "held_out", variants=3)
    by_id = {task.id: task for task in tasks}
    edits = [row for row in rows if row["prompt"] != row["source"]]
    if len(edits) < n:
        raise ValueError(f"--batch {n}: the demo test tasks give only {len(edits)} edited prompts")
    return [EditResult(by_id[row["task"]], row["prompt"]) for row in edits[:n]]


def timed_call(reward: CompositeReward, results: Sequence[EditResult], warm_sources: bool) -> float:
    """Seconds of one reward call on `results` after clearing its caches (and, with `warm_sources`, scoring the
    sources first, untimed)."""
    clear_reward_caches(reward)
    if warm_sources:
        reward([EditResult(r.task, r.task.source) for r in results])
    start = time.perf_counter()
    reward(results)
    return time.perf_counter() - start


def calls_per_second(surrogate: CompositeReward, synth: CompositeReward, results: Sequence[EditResult],
                     rounds: int, warm_sources: bool) -> dict[str, float]:
    """Median episodes/s of each reward and the median per-round ratio surrogate/synth."""
    timed_call(surrogate, results, warm_sources), timed_call(synth, results, warm_sources)  # warm-up round
    per_round = []
    for i in range(rounds):
        pair = [(surrogate, "surrogate"), (synth, "synth")][:: 1 if i % 2 == 0 else -1]
        per_round.append({name: timed_call(reward, results, warm_sources) for reward, name in pair})
    n = len(results)
    return {
        "surrogate_calls_per_s": statistics.median(n / r["surrogate"] for r in per_round),
        "synth_calls_per_s": statistics.median(n / r["synth"] for r in per_round),
        "ratio": statistics.median(r["synth"] / r["surrogate"] for r in per_round),
    }


def batch_spearman(surrogate: CompositeReward, synth: CompositeReward, results: Sequence[EditResult]) -> dict:
    """Spearman of each surrogate term against the image term on `results` (absolute and delta), and of the reward
    deltas combined as the fit's eval combines them (`surrogate_fit.reward_delta_spearman`)."""
    ours, theirs = surrogate(results), synth(results)
    report = {}
    for term in SURROGATE_TARGETS:
        report[term] = {
            "spearman": surrogate_fit.spearman(ours.components[term], theirs.components[term]),
            "spearman_delta": surrogate_fit.spearman(ours.components[f"{term}/delta"], theirs.components[f"{term}/delta"]),
        }
    report["reward_delta"] = surrogate_fit.reward_delta_spearman(
        {t: ours.components[f"{t}/delta"].numpy() for t in SURROGATE_TARGETS},
        {t: theirs.components[f"{t}/delta"].numpy() for t in SURROGATE_TARGETS})
    return report


def shipped_held_out() -> tuple[dict, dict]:
    """(the fit's held-out report recomputed from the shipped pairs with the shipped heads, the shipped eval's)."""
    rows = [row for row in surrogate_fit.read_pairs(surrogate_path(surrogate_fit.PAIRS_FILE)) if row["split"] == "held_out"]
    embedder = SentenceEmbedder.from_pretrained(cache_size=0)
    table = surrogate_fit.embed_texts(embedder, [text for row in rows for text in (row["prompt"], row["source"])])
    predicted = {}
    for target in SURROGATE_TARGETS:
        scorer = SurrogateScorer.from_pretrained(surrogate_path(target), embedder=embedder)
        with torch.no_grad():
            predicted[target] = scorer.head(torch.stack([table[row["prompt"]] for row in rows]),
                                            torch.stack([table[row["source"]] for row in rows])).numpy()
    shipped = json.loads(surrogate_path(surrogate_fit.EVAL_FILE).read_text())["held_out"]
    return surrogate_fit.evaluate(rows, predicted), shipped


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print the report and return the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per setting; medians are reported")
    parser.add_argument("--batch", type=int, default=64, help="episodes per reward call")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=1, help="draws the batch's edited prompts")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch < 3 or args.threads < 1:
        parser.error("--rounds and --threads must be >= 1 and --batch >= 3")
    torch.set_num_threads(args.threads)
    results = bench_results(args.batch, args.seed)
    fast = {name: build_reward(name, monitors=False) for name in ("surrogate", "synth")}
    gold = {name: build_reward(name) for name in ("surrogate", "synth")}
    print(f"batch: {len(results)} episodes on demo test tasks; torch threads {torch.get_num_threads()}; "
          f"medians of {args.rounds} rounds; surrogate {fast['surrogate']!r}; synth {fast['synth']!r}")
    report: dict = {"speed": {}}
    settings = (("cold (nothing cached), no monitors", fast, False), ("warm sources, no monitors", fast, True),
                ("warm sources, with gold monitors", gold, True))
    for label, rewards, warm in settings:
        speed = calls_per_second(rewards["surrogate"], rewards["synth"], results, args.rounds, warm)
        report["speed"][label] = speed
        print(f"{label:<36}: surrogate {speed['surrogate_calls_per_s']:8.1f} calls/s, synth "
              f"{speed['synth_calls_per_s']:6.2f} calls/s: ratio {speed['ratio']:6.1f}x")
    headline = report["speed"]["warm sources, no monitors"]["ratio"]
    print(f"speed target >= {SPEED_TARGET:.0f}x (warm sources, the reward alone): "
          f"{'met' if headline >= SPEED_TARGET else 'NOT met'}")
    report["batch_spearman"] = batch_spearman(fast["surrogate"], fast["synth"], results)
    for term in SURROGATE_TARGETS:
        figures = report["batch_spearman"][term]
        print(f"Spearman on this batch, {term:<9}: {figures['spearman']:+.3f} absolute, "
              f"{figures['spearman_delta']:+.3f} delta vs source")
    combined = report["batch_spearman"]["reward_delta"]
    print(f"Spearman on this batch, reward delta 0.7 aes + 0.3 ps (standardised) vs the image deltas weighted the "
          f"same: {combined['spearman_vs_image_same_weights']:+.3f}; vs synth's 1:1: "
          f"{combined['spearman_vs_synth_reward']:+.3f}")
    recomputed, shipped = shipped_held_out()
    report["held_out"] = {"recomputed": recomputed, "shipped": shipped}
    print(f"fit's held-out pairs ({recomputed['rows']} rows, {recomputed['delta_rows']} deltas), recomputed | shipped:")
    for term in SURROGATE_TARGETS:
        a, b = recomputed[term], shipped[term]
        print(f"  {term:<9}: Spearman {a['spearman']:+.3f} | {b['spearman']:+.3f}, "
              f"delta {a['spearman_delta']:+.3f} | {b['spearman_delta']:+.3f}")
    a, b = recomputed["reward_delta"], shipped["reward_delta"]
    print(f"  reward delta vs image, same weights: {a['spearman_vs_image_same_weights']:+.3f} | "
          f"{b['spearman_vs_image_same_weights']:+.3f}; vs synth's 1:1: {a['spearman_vs_synth_reward']:+.3f} | "
          f"{b['spearman_vs_synth_reward']:+.3f}")
    if not np.isclose(a["spearman_vs_image_same_weights"], b["spearman_vs_image_same_weights"], atol=1e-3):  # 1e-7 noise
        print("  WARNING: the recomputed held-out figures differ from the shipped eval.json")
    return report


if __name__ == "__main__":
    main()
