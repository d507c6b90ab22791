"""Benchmark: how well does the feedback-trained reward model agree with gold, with and without the auxiliary loss?

    python -m promptgym.experiments.bench_feedback [--train 3000] [--eval 600] [--noise 0,0.2] [--aux 0,0.5,2]
                                                   [--seeds 0,1] [--epochs 40] [--out runs/bench_feedback]

One run: simulated feedback (`simulate_feedback`, the gold judge's labels) on `--train` synth renders (held-out
subject-colour pairs excluded), and two noise-free evaluation sets: `--eval` fresh captions of the training
distribution (another seed) and `--eval` captions of *unseen attribute combinations* (`held_out="only"`: every caption
has a `HELD_OUT_PAIRS` subject-colour pair, which neither the training feedback, its perturbed prompts, nor the synth
world's CLIP ever saw). Every label-noise level flips the training labels exactly as `simulate-feedback --noise`
does (same images); each (noise, aux weight, seed) trains one `FeedbackRewardModel` on the cached embeddings.

Reported against the gold labels of the evaluation sets: accuracy of `reward >= 0.5` (the MSE target is the label),
ROC AUC, and `pick`: on the gold-positive rows, the share where the true caption outscores 3 one-attribute-changed
captions (what the auxiliary loss trains). The baseline is the plain CLIP similarity (PickScore up to its scale),
thresholded where it agrees best with the (noisy) training labels. Numbers are the mean over the seeds, with the
range.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from promptgym.experiments.feedback import (
    EmbeddingCache,
    clip_identity,
    clip_similarity,
    feedback_data,
    synth_feedback_renderer,
)
from promptgym.rewards.feedback import FeedbackData, FrozenCLIP, agreement, best_threshold, fit_feedback_model, roc_auc
from promptgym.rewards.feedback_data import apply_label_noise, simulate_feedback


def pick_accuracy(scores_true: np.ndarray, scores_perturbed: np.ndarray, mask: np.ndarray, rows: np.ndarray) -> float:
    """Share of `rows` (with at least one perturbation) where the true prompt outscores every perturbed one."""
    rows = rows & mask.any(1)
    beaten = np.where(mask, scores_perturbed, -np.inf).max(1) < scores_true
    return float(beaten[rows].mean())


def model_scores(model: torch.nn.Module, data: FeedbackData) -> tuple[np.ndarray, np.ndarray]:
    """(scores[N] of the true prompts, scores[N, P] of the perturbed ones)."""
    n, p, d = data.perturbed_embeds.shape
    with torch.no_grad():
        true = model(data.image_embeds, data.text_embeds).numpy()
        images = data.image_embeds[:, None].expand(n, p, d).reshape(n * p, d)
        perturbed = model(images, data.perturbed_embeds.reshape(n * p, d)).reshape(n, p).numpy()
    return true, perturbed


def clip_scores(data: FeedbackData) -> tuple[np.ndarray, np.ndarray]:
    """The baseline's (scores[N], perturbed scores[N, P]): CLIP cosine similarity."""
    perturbed = torch.nn.functional.cosine_similarity(data.image_embeds[:, None], data.perturbed_embeds, dim=-1)
    return clip_similarity(data), perturbed.numpy()


def evaluate(scores: tuple[np.ndarray, np.ndarray], data: FeedbackData, threshold: float) -> dict[str, float]:
    gold = data.labels.numpy().astype(bool)
    true, perturbed = scores
    return {"accuracy": agreement(true, gold, threshold), "roc_auc": roc_auc(true, gold),
            "pick": pick_accuracy(true, perturbed, data.perturbed_mask.numpy(), gold)}


def summarise(runs: list[dict[str, float]]) -> dict[str, list[float]]:
    """{metric: [mean, min, max]} over runs."""
    return {k: [float(np.mean([r[k] for r in runs])), min(r[k] for r in runs), max(r[k] for r in runs)] for k in runs[0]}


def print_table(results: list[dict], sets: tuple[str, ...]) -> None:
    header = "| training labels | reward | " + " | ".join(
        f"{s}: {m}" for s in sets for m in ("accuracy", "ROC AUC", "pick")) + " |"
    print(header)
    print("|" + "---|" * (2 + 3 * len(sets)))
    for row in results:
        cells = []
        for s in sets:
            for m in ("accuracy", "roc_auc", "pick"):
                mean, low, high = row[s][m]
                cells.append(f"{mean:.3f}" if high - low < 5e-4 else f"{mean:.3f} [{low:.3f}, {high:.3f}]")
        print(f"| noise {row['noise']:g} | {row['reward']} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptgym.experiments.bench_feedback", description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=3000, help="training feedback rows (default: 3000)")
    parser.add_argument("--eval", type=int, default=600, help="rows of each evaluation set (default: 600)")
    parser.add_argument("--noise", default="0,0.2", help="label-noise levels (default: 0,0.2)")
    parser.add_argument("--aux", default="0,0.5,2", help="aux weights (default: 0,0.5,2; 0 is the ablation)")
    parser.add_argument("--seeds", default="0,1", help="training seeds (default: 0,1)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--perturbations", type=int, default=3)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the simulated training feedback")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_feedback"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    noises = [float(x) for x in args.noise.split(",")]
    auxes = [float(x) for x in args.aux.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    from promptgym.rewards.gold import SceneJudge
    from promptgym.rewards.world import synth_path

    started = time.perf_counter()
    renderer, judge, clip = synth_feedback_renderer(), SceneJudge.from_pretrained(str(synth_path("judge"))), FrozenCLIP.from_pretrained()
    specs = {"train": (args.train, args.data_seed, "exclude"), "captions": (args.eval, args.data_seed + 1, "exclude"),
             "unseen": (args.eval, args.data_seed + 2, "only")}
    cache = EmbeddingCache(args.out / "embeddings.pt", clip_identity(clip, renderer))
    data, gold_share = {}, {}
    for name, (n, seed, held_out) in specs.items():
        rows, images = simulate_feedback(n, renderer=renderer, judge=judge, seed=seed, held_out=held_out)
        data[name] = feedback_data(rows, clip, renderer, cache, perturbations=args.perturbations, seed=seed,
                                   images=images)
        gold_share[name] = float(data[name].labels.mean())
    prepared = time.perf_counter() - started
    print(f"data: {json.dumps({k: len(v) for k, v in data.items()})} rows, gold-positive shares "
          f"{json.dumps({k: round(v, 3) for k, v in gold_share.items()})}, {prepared:.0f} s", file=sys.stderr)

    sets = ("captions", "unseen")
    results = []
    for noise in noises:
        labels = apply_label_noise(data["train"].labels.int().tolist(), noise, random.Random(f"{args.data_seed}/label-noise"))
        train = data["train"].with_labels(labels)
        cut = best_threshold(clip_similarity(train), labels)
        results.append({"noise": noise, "reward": "CLIP similarity (baseline)",
                        **{s: summarise([evaluate(clip_scores(data[s]), data[s], cut)]) for s in sets}})
        for aux in auxes:
            runs = {s: [] for s in sets}
            for seed in seeds:
                model, _ = fit_feedback_model(train, aux_weight=aux, epochs=args.epochs, seed=seed, progress=False)
                for s in sets:
                    runs[s].append(evaluate(model_scores(model, data[s]), data[s], 0.5))
            name = "feedback MLP, MSE only (ablation)" if aux == 0 else f"feedback MLP, MSE + {aux:g} aux"
            results.append({"noise": noise, "reward": name, **{s: summarise(runs[s]) for s in sets}})
    seconds = time.perf_counter() - started
    print_table(results, sets)
    print(f"\n{args.train} training rows (seed {args.data_seed}), {args.eval} rows per evaluation set; seeds {seeds}; "
          f"{args.epochs} epochs; gold-positive shares {json.dumps({k: round(v, 3) for k, v in gold_share.items()})}; "
          f"{seconds:.0f} s ({prepared:.0f} s rendering and embedding)")
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "gold_share": gold_share, "results": results,
                                                       "seconds": seconds}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
