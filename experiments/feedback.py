"""`promptgym reward simulate-feedback` and `promptgym reward fit-feedback`: the feedback-trained reward model.

    promptgym reward simulate-feedback --out labels.jsonl [--n 2000] [--noise 0.0] [--seed 0]
                                       [--held-out exclude|only|any] [--mismatch-share 0.5] [--images DIR]
    promptgym reward fit-feedback --labels labels.jsonl --out DIR [--aux-weight 0.5] [--perturbations 3]
                                  [--epochs 40] [--val-share 0.1] [--seed 0] [--cache FILE | --no-cache]

`simulate-feedback` labels synth renders with the gold judge (`promptgym.rewards.feedback_data`): rows with a
`seed` (the render is reproducible), or, with `--images DIR`, PNG files and `image` paths, the form real feedback
takes; for seed rows it also fills fit-feedback's default embedding cache (`LABELS.embeddings.pt`, synth CLIP), so
the renders are drawn once. `fit-feedback` embeds every image (seed rows rendered by the synth renderer, files loaded) and text with the
frozen CLIP (default: the synth world's), caches the embeddings (default `LABELS.embeddings.pt`, keyed by the CLIP's
and the renderer's weights), holds out `--val-share` of the rows, trains a `FeedbackRewardModel` (MSE +
aux-weight x perturbed-prompt classification), and writes `save_pretrained` files plus `eval.json` (the command,
the labels file's sha256, the settings, the losses and the validation agreement of the model and of the plain CLIP
similarity baseline, against the file's labels and, where the rows carry it, the gold label).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptgym.rewards.feedback import (
    SYNTH_CLIP,
    FeedbackData,
    FrozenCLIP,
    agreement,
    best_threshold,
    fit_feedback_model,
    roc_auc,
)
from promptgym.rewards.feedback_data import (
    FeedbackRow,
    perturbed_prompts,
    read_feedback_labels,
    render_feedback_images,
    simulate_feedback,
    write_feedback_labels,
)

COMMANDS = ("simulate-feedback", "fit-feedback")
CACHE_FORMAT = 1


def synth_feedback_renderer() -> Any:
    """The synth renderer that draws seed rows (renderer seed 0, the synth settings; no image cache: each once)."""
    from promptgym.rewards.presets import synth_renderer

    return synth_renderer(0, {"cache_size": 0})


# ------------------------------------------------------------------------------------------- embeddings


class EmbeddingCache:
    """Image and text embeddings by key, saved with `torch.save`; valid only for the CLIP and renderer it was made
    with (their weight digests are part of the file, and a file of other weights starts empty)."""

    def __init__(self, path: Path | None, identity: dict[str, str]) -> None:
        self.path, self.identity = path, identity
        self.images: dict[str, torch.Tensor] = {}
        self.texts: dict[str, torch.Tensor] = {}
        if path is not None and path.is_file():
            blob = torch.load(path, weights_only=True)
            if blob.get("format") == CACHE_FORMAT and blob.get("identity") == identity:
                self.images = dict(zip(blob["image_keys"], blob["image_embeds"]))
                self.texts = dict(zip(blob["text_keys"], blob["text_embeds"]))

    def save(self) -> None:
        if self.path is None:
            return
        dim = next(iter(self.texts.values())).shape[-1] if self.texts else 0
        stack = lambda d: torch.stack(list(d.values())) if d else torch.zeros(0, dim)  # noqa: E731
        tmp = self.path.with_suffix(".tmp")
        torch.save({"format": CACHE_FORMAT, "identity": self.identity, "image_keys": list(self.images),
                    "image_embeds": stack(self.images), "text_keys": list(self.texts), "text_embeds": stack(self.texts)},
                   tmp)
        tmp.replace(self.path)


def default_cache_path(labels: Path) -> Path:
    """`LABELS.embeddings.pt` beside the labels file."""
    return labels.with_name(labels.name + ".embeddings.pt")


def clip_identity(clip: FrozenCLIP, renderer: Any) -> dict[str, str]:
    """What the cached embeddings depend on: the CLIP's weights and the renderer's config (weights included)."""
    from promptgym.rewards.render import pipeline_weights_digest

    return {"clip": pipeline_weights_digest(clip.model), "renderer": renderer.fingerprint() if renderer else ""}


def embed_rows(rows: Sequence[FeedbackRow], texts: Sequence[str], clip: FrozenCLIP, renderer: Any,
               cache: EmbeddingCache, images: torch.Tensor | None = None,
               progress: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(image embeddings `[N, D]` of the rows, {text: embedding} for `texts`), computing only what `cache` lacks
    (and adding it there). Image files are keyed by their content's sha256, seed rows by (seed, rendered prompt).
    `images[N, 3, H, W]`, when given, are the rows' images already at hand (`simulate_feedback`'s): not redrawn."""
    keys = [f"sha256:{hashlib.sha256(r.image.read_bytes()).hexdigest()}" if r.image is not None else r.image_key()
            for r in rows]
    todo = {key: i for i, key in enumerate(keys) if key not in cache.images}
    if todo:
        drawn = (render_feedback_images([rows[i] for i in todo.values()], renderer, progress=progress)
                 if images is None else [images[i] for i in todo.values()])
        cache.images.update(zip(todo, clip.embed_images(drawn)))
    new_texts = [text for text in dict.fromkeys(texts) if text not in cache.texts]
    if new_texts:
        cache.texts.update(zip(new_texts, clip.embed_texts(new_texts)))
    if todo or new_texts:
        cache.save()
    return torch.stack([cache.images[key] for key in keys]), {text: cache.texts[text] for text in texts}


def feedback_data(rows: Sequence[FeedbackRow], clip: FrozenCLIP, renderer: Any, cache: EmbeddingCache, *,
                  perturbations: int = 3, seed: int = 0, images: torch.Tensor | None = None,
                  progress: bool = True) -> FeedbackData:
    """Training tensors of `rows`: embeddings, labels and `perturbations` perturbed prompts per row (drawn from a
    `random.Random(seed)`; fewer where a prompt has fewer, none for prompts the scene grammar does not write).
    `images`: the rows' images when already rendered (see `embed_rows`)."""
    rng = random.Random(f"{seed}/perturbations")
    perturbed = [perturbed_prompts(row.prompt, perturbations, rng) for row in rows]
    texts = [row.prompt for row in rows] + [text for alternatives in perturbed for text in alternatives]
    image_embeds, text_embeds = embed_rows(rows, texts, clip, renderer, cache, images, progress)
    dim = image_embeds.shape[1]
    perturbed_embeds = torch.zeros(len(rows), perturbations, dim)
    mask = torch.zeros(len(rows), perturbations, dtype=torch.bool)
    for i, alternatives in enumerate(perturbed):
        for j, text in enumerate(alternatives):
            perturbed_embeds[i, j], mask[i, j] = text_embeds[text], True
    return FeedbackData(image_embeds, torch.stack([text_embeds[row.prompt] for row in rows]),
                        torch.tensor([row.label for row in rows], dtype=torch.float32), perturbed_embeds, mask)


def clip_similarity(data: FeedbackData) -> np.ndarray:
    """The baseline: cosine of the CLIP image and text embeddings (PickScore up to its fixed scale)."""
    return torch.nn.functional.cosine_similarity(data.image_embeds, data.text_embeds, dim=-1).numpy()


def agreement_report(scores: np.ndarray, labels: Sequence[int], threshold: float) -> dict[str, float | None]:
    """Accuracy of `scores >= threshold` and ROC AUC against `labels`, rounded; None where undefined (one class)."""
    values = {"accuracy": agreement(scores, labels, threshold), "roc_auc": roc_auc(scores, labels)}
    return {name: None if np.isnan(value) else round(value, 4) for name, value in values.items()}


# ------------------------------------------------------------------------------------------- commands


def simulate_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="promptgym reward simulate-feedback",
                                     description="label synth renders with the gold judge (simulated feedback)")
    parser.add_argument("--out", type=Path, required=True, help="the labels file to write (JSON lines)")
    parser.add_argument("--n", type=int, default=2000, help="rows (default: 2000)")
    parser.add_argument("--noise", type=float, default=0.0, help="probability of flipping each label (default: 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", choices=("exclude", "only", "any"), default="exclude",
                        help="HELD_OUT_PAIRS subject-colour pairs: never (default), always, or as they come")
    parser.add_argument("--mismatch-share", type=float, default=0.5,
                        help="share of rows whose render shows a one-attribute-changed caption (default: 0.5)")
    parser.add_argument("--images", type=Path, default=None,
                        help="also write each render as a PNG under DIR and reference it by `image` path")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    torch.set_num_threads(args.threads)
    from promptgym.rewards.gold import SceneJudge
    from promptgym.rewards.world import synth_path

    renderer = synth_feedback_renderer()
    try:
        rows, images = simulate_feedback(args.n, renderer=renderer, judge=SceneJudge.from_pretrained(str(synth_path("judge"))),
                                 seed=args.seed, noise=args.noise, held_out=args.held_out,
                                 mismatch_share=args.mismatch_share)
    except ValueError as error:
        parser.error(str(error))
    if args.images is not None:
        rows = write_pngs(rows, images, args.images)
    write_feedback_labels(rows, args.out)
    if args.images is None:  # fit-feedback's default cache, so that it does not draw the renders a second time
        clip = FrozenCLIP.from_pretrained(SYNTH_CLIP)
        cache = EmbeddingCache(default_cache_path(args.out), clip_identity(clip, renderer))
        embed_rows(rows, [], clip, renderer, cache, images, progress=False)
    flipped = sum(row.label != row.meta["gold_label"] for row in rows)
    print(f"wrote {len(rows)} rows to {args.out}: {sum(r.label for r in rows)} labelled 1, "
          f"{sum(r.meta['gold_label'] for r in rows)} gold 1, {flipped} flipped by noise {args.noise}")
    return 0


def write_pngs(rows: Sequence[FeedbackRow], images: torch.Tensor, folder: Path) -> list[FeedbackRow]:
    """Write the renders `images[N, 3, H, W]` of seed rows as `folder/<i>.png` (8-bit RGB) and return the rows as
    image rows (their seed and rendered prompt kept in `meta`). The gold label was read off the float render."""
    import dataclasses

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (row, image) in enumerate(zip(rows, images)):
        path = (folder / f"{i:06d}.png").resolve()
        pixels = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(path)
        out.append(dataclasses.replace(row, image=path, seed=None, render_prompt=None,
                                       meta={**row.meta, "seed": row.seed, "render_prompt": row.rendered}))
    return out


def split_rows(n: int, val_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices: a seeded permutation, `round(n * val_share)` rows held out."""
    if not 0 <= val_share < 1:
        raise ValueError(f"val_share must be in [0, 1), got {val_share}")
    order = np.random.default_rng(seed).permutation(n)
    held = int(round(n * val_share))
    return np.sort(order[held:]), np.sort(order[:held])


def fit_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="promptgym reward fit-feedback",
                                     description="train a FeedbackRewardModel on a labels file")
    parser.add_argument("--labels", type=Path, required=True, help="labels file (JSON lines, see feedback_data)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (save_pretrained + eval.json)")
    parser.add_argument("--aux-weight", type=float, default=0.5,
                        help="weight of the perturbed-prompt classification loss (0: the ablation; default 0.5)")
    parser.add_argument("--perturbations", type=int, default=3, help="perturbed prompts per row (default: 3)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", default="256,64", help="hidden layer widths (default: 256,64)")
    parser.add_argument("--val-share", type=float, default=0.1, help="rows held out for eval.json (default: 0.1)")
    parser.add_argument("--clip", default=SYNTH_CLIP, help="CLIP hub id or directory (default: the synth world's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (default: LABELS.embeddings.pt)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write an embedding cache")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args(argv)
    try:
        hidden = tuple(int(h) for h in args.hidden.split(","))
        if args.perturbations < 0 or min(hidden) < 1:
            raise ValueError("--perturbations must be >= 0 and --hidden positive widths")
        report = fit(args, hidden, "promptgym reward fit-feedback " + " ".join(argv))
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(json.dumps(report["validation"]))
    return 0


def fit(args: argparse.Namespace, hidden: tuple[int, ...], command: str) -> dict[str, Any]:
    """The `fit-feedback` work: rows -> embeddings -> model -> `args.out` (model files and eval.json)."""
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = read_feedback_labels(args.labels)
    clip = FrozenCLIP.from_pretrained(args.clip)
    renderer = synth_feedback_renderer() if any(row.seed is not None for row in rows) else None
    cache_path = None if args.no_cache else (args.cache or default_cache_path(args.labels))
    cache = EmbeddingCache(cache_path, clip_identity(clip, renderer))
    data = feedback_data(rows, clip, renderer, cache, perturbations=args.perturbations, seed=args.seed)
    train_index, val_index = split_rows(len(rows), args.val_share, args.seed)
    train = data.subset(torch.from_numpy(train_index))
    model, history = fit_feedback_model(train, aux_weight=args.aux_weight, epochs=args.epochs,
                                        batch_size=args.batch_size, lr=args.lr, hidden_dims=hidden,
                                        clip=args.clip, seed=args.seed)
    validation = evaluate_split(model, data, train_index, val_index, [rows[i] for i in val_index])
    model.save_pretrained(args.out)
    report = {
        "command": command,
        "labels": {"file": args.labels.name, "sha256": hashlib.sha256(args.labels.read_bytes()).hexdigest(),
                   "rows": len(rows), "train_rows": len(train_index), "validation_rows": len(val_index),
                   "positive_share": round(float(data.labels.mean()), 4)},
        "settings": {"aux_weight": args.aux_weight, "perturbations": args.perturbations, "epochs": args.epochs,
                     "batch_size": args.batch_size, "lr": args.lr, "hidden": list(hidden), "seed": args.seed,
                     "clip": args.clip, "threads": args.threads},
        "losses": history[-1],
        "validation": validation,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def evaluate_split(model: Any, data: FeedbackData, train_index: np.ndarray, val_index: np.ndarray,
                   val_rows: Sequence[FeedbackRow]) -> dict[str, Any]:
    """Validation agreement of the model (threshold 0.5) and of the CLIP-similarity baseline (threshold fitted on
    the training rows' labels), against the file's labels and, where every row carries `meta.gold_label`, gold."""
    if not len(val_index):
        return {}
    with torch.no_grad():
        scores = model(data.image_embeds, data.text_embeds).numpy()
    cosine = clip_similarity(data)
    labels = data.labels.numpy()
    cut = best_threshold(cosine[train_index], labels[train_index])
    report = {"model_vs_labels": agreement_report(scores[val_index], labels[val_index], 0.5),
              "clip_vs_labels": agreement_report(cosine[val_index], labels[val_index], cut)}
    if all("gold_label" in row.meta for row in val_rows):
        gold = [row.meta["gold_label"] for row in val_rows]
        report |= {"model_vs_gold": agreement_report(scores[val_index], gold, 0.5),
                   "clip_vs_gold": agreement_report(cosine[val_index], gold, cut)}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """`promptgym reward COMMAND ...` for the feedback commands."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: promptgym reward {{{','.join(COMMANDS)}}} ... (see --help of each)", file=sys.stderr)
        return 2
    return (simulate_main if argv[0] == "simulate-feedback" else fit_main)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
