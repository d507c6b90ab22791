"""`promptgym reward fit-surrogate`: fit the text-only surrogate rewards `aes_rm` and `ps_rm` (BeautifulPrompt) to
the synth world's image scores, deterministically.

    promptgym reward fit-surrogate --out DIR [--prompts 2400] [--held-out 0.2] [--seed 0] [--steps 6000]
                                   [--pickscore-reads prompt|pair] [--pairs FILE] [--threads 1]

The shipped heads (`promptgym/rewards/data/synth/surrogate/`) were made by the one command

    OMP_NUM_THREADS=1 nice -n 19 promptgym reward fit-surrogate --out rewards/data/synth/surrogate

Stages:

1. *pairs to score*: (source, prompt) pairs that resemble what a prompt-editing policy writes, drawn with `--seed`
   from the demo tasks: each task's source (scored as an edit of itself: the delta's baseline) and target, and
   `--variants` variants of the target (`VARIANT_KINDS`: modifiers re-drawn (twice as often as each other kind),
   a style set or removed, keywords of the keyword lexicons that the world does not know appended, DiffChat's
   keyword corruption, a truncation, a repeated phrase, the instruction pasted in). Training pairs come from the
   demo *train* tasks; a `--held-out` share comes from the demo *test* tasks, whose sources no train task has.
2. *collect*: every pair's prompt rendered by the synth SD exactly as `build_reward("synth")` renders it (reward
   seed 0, `SYNTH_RENDER_SETTINGS`: K=2 images) and scored by the synth `AestheticScorer` and `PickScoreScorer`
   (the prompt's renders against the prompt's text, as that reward does), plus `gold_aesthetic` of the renders.
   Rows are appended to `OUT/pairs.jsonl` as they come; a rerun resumes after the last complete row.
   `--pairs FILE` fits from an existing pairs file instead (no render).
3. *fit*: frozen bundled all-MiniLM-L6-v2 embeddings of every text, then one `SurrogateHead` per target (MSE on the
   standardised score, AdamW, cosine schedule, seeded minibatches) on the training rows. The aesthetic head reads
   the prompt; the PickScore head reads the prompt too (`--pickscore-reads prompt`: the synth PickScore compares
   the prompt's renders with the prompt itself, so the source carries nothing about it) or the (source, prompt)
   pair (`pair`); the other choice is fitted as well and its held-out figures reported, not saved.
4. *eval*: Spearman (scipy) of each head against the image score on the held-out rows, of the delta form
   (score(prompt) - score(source)) against the image reward's delta, of the combined reward (0.7 aes + 0.3 ps on
   per-term standardised deltas, as the `surrogate` config normalises them) against the image scores combined
   the same way and as `synth` combines them (1 : 1), and of each aesthetic against gold aesthetic.

Outputs: `OUT/aesthetic/` and `OUT/pickscore/` (`SurrogateHead.save_pretrained`: config.json + model.safetensors),
`OUT/eval.json`, `OUT/pairs.jsonl` and `OUT/build.json` (command, settings, timings, sha256 of every file).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from promptgym.experiments.world_build import file_hashes, stage_seed
from promptgym.rewards.jsonl import jsonl_objects
from promptgym.rewards.presets import SURROGATE_ALPHA as ALPHA
from promptgym.rewards.surrogate import SURROGATE_TARGETS, SentenceEmbedder, SurrogateHead

SPLITS = ("train", "held_out")
PAIR_FIELDS = ("split", "source", "prompt", "aesthetic", "pickscore")  # required in every row of a pairs file
VARIANT_KINDS = ("modifiers", "style", "keywords", "corrupt", "truncate", "repeat", "instruction")
# Modifiers are drawn twice as often: they are what moves the aesthetic score, and what PPO tries first
VARIANT_WEIGHTS = (2, 1, 1, 1, 1, 1, 1)
PAIRS_FILE, EVAL_FILE, RECORD_FILE = "pairs.jsonl", "eval.json", "build.json"


@dataclasses.dataclass
class FitConfig:
    """Settings of one fit (recorded in build.json)."""

    seed: int = 0
    prompts: int = 2400
    held_out: float = 0.2
    variants: int = 3
    steps: int = 6000
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    hidden_size: int = 128
    dropout: float = 0.1
    pickscore_reads: str = "prompt"  # "prompt" or "pair": what the PickScore head reads (see fit_surrogate)
    threads: int = 1


# ------------------------------------------------------------------------------------------- 1. pairs to score


def _segments(prompt: str) -> list[str]:
    return [part.strip() for part in prompt.split(",") if part.strip()]


def _lexicon_words() -> list[str]:
    """Style, time/weather and colour words of the keyword lexicons that the synth world does not know, sorted."""
    from promptgym.rewards.keywords import CATEGORY_LEXICONS
    from promptgym.rewards.scene import COLOURS, STYLES, WEATHERS

    known = set(COLOURS) | set(STYLES) | {w for w, _ in WEATHERS}
    return sorted(w for name in ("style", "time_weather", "colour") for w in CATEGORY_LEXICONS[name] if w not in known)


class VariantMaker:
    """Variants of a target prompt of the kinds a prompt-editing policy writes (`VARIANT_KINDS`)."""

    def __init__(self, tasks: Sequence[Any]) -> None:
        from promptgym.agents.negatives import keyword_vocabulary

        self.vocabulary = keyword_vocabulary(tasks)
        self.lexicon = _lexicon_words()

    def __call__(self, kind: str, task: Any, rng: random.Random) -> str:
        from promptgym.agents import corrupt_keywords
        from promptgym.rewards import extract_keywords
        from promptgym.rewards.scene import MODIFIERS, STYLES

        parts = _segments(task.target)
        scene, rest = parts[0], parts[1:]
        styles = [p for p in rest if p in STYLES]
        if kind == "modifiers":  # the modifier set re-drawn: 0 to 5 of them, in a random order
            return ", ".join([scene, *styles, *rng.sample(MODIFIERS, rng.randint(0, len(MODIFIERS)))])
        modifiers = [p for p in rest if p in MODIFIERS]
        if kind == "style":  # a style set, swapped or removed
            style = rng.choice([None, *STYLES])
            return ", ".join([scene, *([style] if style else []), *modifiers])
        if kind == "keywords":  # 1-2 keywords of the lexicons that the world does not know
            return ", ".join([*parts, *rng.sample(self.lexicon, rng.randint(1, 2))])
        if kind == "corrupt":  # DiffChat's negatives: some of the task's keywords deleted or replaced
            keywords = extract_keywords(task.source, task.instruction).required
            return corrupt_keywords(task.target, keywords, rng.uniform(0.2, 0.6), rng, self.vocabulary)
        if kind == "truncate":  # an episode cut short
            words = task.target.split()
            return " ".join(words[: rng.randint(1, max(1, len(words) - 1))]).rstrip(",")
        if kind == "repeat":  # a phrase written twice
            repeated = rng.choice(parts)
            at = rng.randint(1, len(parts))
            return ", ".join([*parts[:at], repeated, *parts[at:]])
        if kind == "instruction":  # the instruction pasted into the prompt
            return f"{task.target}, {task.instruction.rstrip('.').lower()}"
        raise ValueError(f"kind={kind!r}; expected one of {list(VARIANT_KINDS)}")


def plan_pairs(n: int, seed: int = 0, held_out: float = 0.2, variants: int = 3) -> list[dict[str, str]]:
    """`n` distinct (split, task, kind, source, prompt) rows to score: `round(n * held_out)` from the demo test tasks
    (split "held_out"), the rest from the demo train tasks. Tasks are visited in a seeded random order; each gives
    its source (once per source), its target and `variants` variants of random kinds."""
    from promptgym.envs import load_tasks

    if n < 2:
        raise ValueError(f"prompts={n}; expected at least 2 (one training and one held-out pair)")
    if not 0 < held_out < 1:
        raise ValueError(f"held_out={held_out}; expected a share strictly between 0 and 1")
    n_held = min(n - 1, max(1, round(n * held_out)))
    rows = []
    for split, spec, count in (("train", "train", n - n_held), ("held_out", "test", n_held)):
        tasks = load_tasks("demo", split=spec)
        rows += pairs_of(tasks, count, random.Random(stage_seed(seed, f"surrogate/pairs/{split}")), split, variants)
    return rows


def pairs_of(tasks: Sequence[Any], n: int, rng: random.Random, split: str, variants: int) -> list[dict[str, str]]:
    """`n` distinct (split, task, kind, source, prompt) rows of `tasks`, in `plan_pairs`' way."""
    make = VariantMaker(tasks)
    order = list(range(len(tasks)))
    rng.shuffle(order)
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for index in order:
        task = tasks[index]
        candidates = [("source", task.source), ("target", task.target)]
        candidates += [(kind, make(kind, task, rng)) for kind in rng.choices(VARIANT_KINDS, VARIANT_WEIGHTS, k=variants)]
        for kind, prompt in candidates:
            key = (task.source, prompt)
            if key not in rows and len(rows) < n:
                rows[key] = {"split": split, "task": task.id, "kind": kind, "source": task.source, "prompt": prompt}
        if len(rows) >= n:
            break
    if len(rows) < n:
        raise ValueError(f"the demo {split} tasks give only {len(rows)} distinct pairs; asked for {n}")
    return list(rows.values())


# ------------------------------------------------------------------------------------------- 2. collect


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a pairs file; a row without a `PAIR_FIELDS` field, with a non-numeric or non-finite score, or with
    an unknown split is a ValueError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist; collect one with `promptgym reward fit-surrogate`")
    rows = []
    for line, row in jsonl_objects(path.read_text(encoding="utf-8"), str(path), "a pair row"):
        missing = [name for name in PAIR_FIELDS if name not in row]
        if missing:
            raise ValueError(f"{path}: line {line} lacks {missing}; every row needs {list(PAIR_FIELDS)}")
        if row["split"] not in SPLITS:
            raise ValueError(f"{path}: line {line}: split={row['split']!r}; expected one of {list(SPLITS)}")
        for name in ("source", "prompt"):
            if not isinstance(row[name], str):
                raise ValueError(f"{path}: line {line}: {name}={row[name]!r}; expected a string")
        for name in ("aesthetic", "pickscore", "gold_aesthetic"):
            value = row.get(name, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{path}: line {line}: {name}={value!r}; expected a finite number")
        rows.append(row)
    return rows


def collect_pairs(plan: Sequence[dict[str, str]], path: Path, *, seed: int = 0, chunk: int = 32) -> list[dict]:
    """Score every planned pair with the synth image scorers (see the module doc), appending rows to `path`; rows
    already there (a previous, interrupted collection of the same plan) are kept and not rendered again."""
    from promptgym.rewards.gold import gold_aesthetic
    from promptgym.rewards.presets import synth_image_scorers, synth_renderer

    done = read_pairs(path) if path.exists() else []
    for i, row in enumerate(done):
        if i >= len(plan) or (row["source"], row["prompt"]) != (plan[i]["source"], plan[i]["prompt"]):
            raise ValueError(f"{path}: line {i + 1} is not the pair this fit plans there (other --prompts, --seed or "
                             f"--held-out?); delete the file or pass another --out")
    renderer = synth_renderer(seed)
    scorers = synth_image_scorers(list(SURROGATE_TARGETS), renderer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file, tqdm(total=len(plan), initial=len(done), desc="render + score",
                                                        mininterval=2.0, file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(len(done), len(plan), chunk):
            rows = plan[start : start + chunk]
            prompts = list(dict.fromkeys(row["prompt"] for row in rows))
            images = renderer.render(prompts)
            scores = {
                "aesthetic": scorers["aesthetic"].score_images(images),
                "pickscore": scorers["pickscore"].score_images(images, prompts),
                "gold_aesthetic": gold_aesthetic(images),
            }
            at = {prompt: i for i, prompt in enumerate(prompts)}
            for row in rows:
                row = {**row, **{name: float(values[at[row["prompt"]]]) for name, values in scores.items()}}
                file.write(json.dumps(row) + "\n")
                done.append(row)
            file.flush()
            bar.update(len(rows))
    return done


# ------------------------------------------------------------------------------------------- 3. fit


def embed_texts(embedder: SentenceEmbedder, texts: Sequence[str], chunk: int = 256) -> dict[str, torch.Tensor]:
    """{text: embedding [D]} of the distinct texts, in chunks of `chunk` (progress bar)."""
    distinct = list(dict.fromkeys(texts))
    out: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(distinct), chunk), desc="embed", mininterval=2.0, file=sys.stderr):
        part = distinct[start : start + chunk]
        out |= dict(zip(part, embedder.embed(part), strict=True))
    return out


def fit_head(target: str, pair: bool, prompts: torch.Tensor, sources: torch.Tensor, y: torch.Tensor, cfg: FitConfig,
             encoder: str | None = None) -> SurrogateHead:
    """A `SurrogateHead` for `target` (reading the (source, prompt) pair, or only the prompt) fitted to scores `y[N]`
    from prompt and source embeddings `[N, D]`: MSE on the standardised score, `cfg.steps` AdamW steps on seeded
    minibatches with a cosine learning-rate schedule. Deterministic given `cfg.seed` (torch's RNG is restored)."""
    if len(y) < 2:
        raise ValueError(f"{target}: {len(y)} training rows; expected at least 2")
    mean, std = float(y.mean()), float(y.std())
    if not std > 0:
        raise ValueError(f"{target}: every training score is {mean}; a regressor needs scores that vary")
    seed = stage_seed(cfg.seed, f"surrogate/fit/{target}{'/pair' if pair else ''}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = SurrogateHead(prompts.shape[1], pair, cfg.hidden_size, cfg.dropout, target, mean, std, encoder)
        optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps)
        generator = torch.Generator().manual_seed(seed)
        features = head.features(prompts, sources if head.pair else None)
        standardised = (y - mean) / std
        head.train()
        bar = tqdm(range(cfg.steps), desc=f"fit {target}", mininterval=2.0, file=sys.stderr, dynamic_ncols=True)
        for _ in bar:
            index = torch.randint(0, len(y), (min(cfg.batch_size, len(y)),), generator=generator)
            loss = nn.functional.mse_loss(head.standardised(features[index]), standardised[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return head.eval()


# ------------------------------------------------------------------------------------------- 4. eval


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (scipy); NaN for fewer than 3 points or a constant input."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def delta_rows(rows: Sequence[dict]) -> list[tuple[int, int]]:
    """(edited row index, its source row index) for every row whose prompt differs from its source and whose source
    was scored as a row of its own (prompt == source)."""
    source_at = {row["source"]: i for i, row in enumerate(rows) if row["prompt"] == row["source"]}
    return [(i, source_at[row["source"]]) for i, row in enumerate(rows)
            if row["prompt"] != row["source"] and row["source"] in source_at]


def _standardised(x: np.ndarray) -> np.ndarray:
    return x / x.std() if x.std() > 0 else x


def reward_delta_spearman(surrogate: dict[str, np.ndarray], image: dict[str, np.ndarray]) -> dict[str, float]:
    """Spearman of the surrogate's reward delta (ALPHA * aesthetic + (1 - ALPHA) * pickscore, each delta divided by
    its standard deviation, as running normalisation does) against the image deltas combined with the same weights,
    and with `synth`'s 1 : 1. Arguments: {"aesthetic": deltas [N], "pickscore": deltas [N]}."""
    def combined(deltas: dict[str, np.ndarray], weights: tuple[float, float]) -> np.ndarray:
        return sum(w * _standardised(np.asarray(deltas[t], dtype=float)) for w, t in zip(weights, SURROGATE_TARGETS))

    ours = combined(surrogate, (ALPHA, 1 - ALPHA))
    return {"spearman_vs_image_same_weights": spearman(ours, combined(image, (ALPHA, 1 - ALPHA))),
            "spearman_vs_synth_reward": spearman(ours, combined(image, (1.0, 1.0)))}


def evaluate(rows: Sequence[dict], predicted: dict[str, np.ndarray]) -> dict[str, Any]:
    """Spearman of the surrogate against the image scores on `rows` (see the module doc); `predicted[target]` are
    the heads' scores of the rows, in order."""
    report: dict[str, Any] = {"rows": len(rows)}
    pairs = delta_rows(rows)
    edited, source = np.array([i for i, _ in pairs], dtype=int), np.array([j for _, j in pairs], dtype=int)
    report["delta_rows"] = len(pairs)
    deltas: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for target, guess in predicted.items():
        image = np.array([row[target] for row in rows])
        deltas[target] = (guess[edited] - guess[source], image[edited] - image[source])
        report[target] = {"spearman": spearman(guess, image), "spearman_delta": spearman(*deltas[target]),
                          "rmse": float(np.sqrt(np.mean((guess - image) ** 2)))}
    if {"aesthetic", "pickscore"} <= set(deltas) and pairs:
        report["reward_delta"] = reward_delta_spearman({t: d[0] for t, d in deltas.items()},
                                                       {t: d[1] for t, d in deltas.items()})
    if "aesthetic" in predicted and all("gold_aesthetic" in row for row in rows):
        gold = np.array([row["gold_aesthetic"] for row in rows])
        image = np.array([row["aesthetic"] for row in rows])
        gold_delta = gold[edited] - gold[source]
        report["gold_aesthetic"] = {
            "surrogate_spearman": spearman(predicted["aesthetic"], gold),
            "image_spearman": spearman(image, gold),
            "surrogate_spearman_delta": spearman(deltas["aesthetic"][0], gold_delta) if pairs else math.nan,
            "image_spearman_delta": spearman(deltas["aesthetic"][1], gold_delta) if pairs else math.nan,
        }
    return report


# ------------------------------------------------------------------------------------------- driver


def world_digest(root: Path) -> str:
    """sha256 of the synth world's recorded file hashes (its build.json "files"): which world's scores were fitted."""
    files = json.loads((root / RECORD_FILE).read_text())["files"]
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def fit_surrogate(out: Path, cfg: FitConfig, pairs: Path | None = None, command: str = "") -> dict[str, Any]:
    """Collect (unless `pairs` is given), fit, evaluate and save into `out`; returns the eval report."""
    from promptgym.rewards.world import synth_path

    if cfg.pickscore_reads not in ("prompt", "pair"):
        raise ValueError(f"pickscore_reads={cfg.pickscore_reads!r}; expected 'prompt' or 'pair'")
    out = Path(out)
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    if pairs is None:
        plan = plan_pairs(cfg.prompts, cfg.seed, cfg.held_out, cfg.variants)
        before = len(read_pairs(out / PAIRS_FILE)) if (out / PAIRS_FILE).exists() else 0
        rows = collect_pairs(plan, out / PAIRS_FILE)
    else:
        before = len(rows := read_pairs(pairs))
    collected = time.perf_counter()
    train = [row for row in rows if row["split"] == "train"]
    held = [row for row in rows if row["split"] == "held_out"]
    if not train or not held:
        raise ValueError(f"the pairs have {len(train)} training and {len(held)} held-out rows; expected both")
    embedder = SentenceEmbedder.from_pretrained(cache_size=0)
    table = embed_texts(embedder, [text for row in rows for text in (row["prompt"], row["source"])])

    def stack(part: Sequence[dict], field: str) -> torch.Tensor:
        return torch.stack([table[row[field]] for row in part])

    def fitted(target: str, pair: bool) -> tuple[SurrogateHead, np.ndarray]:
        y = torch.tensor([row[target] for row in train], dtype=torch.float32)
        head = fit_head(target, pair, stack(train, "prompt"), stack(train, "source"), y, cfg)
        with torch.no_grad():
            return head, head(stack(held, "prompt"), stack(held, "source")).numpy()

    reads_pair = {"aesthetic": False, "pickscore": cfg.pickscore_reads == "pair"}
    heads, predicted = {}, {}
    for target in SURROGATE_TARGETS:
        heads[target], predicted[target] = fitted(target, reads_pair[target])
    report = {"held_out": evaluate(held, predicted), "train_rows": len(train), "held_out_rows": len(held),
              "held_out_sources": len({row["source"] for row in held})}
    # The PickScore head with the other input, fitted the same way, for comparison only (not saved)
    other = "prompt" if reads_pair["pickscore"] else "pair"
    _, guess = fitted("pickscore", not reads_pair["pickscore"])
    report["pickscore_other_input"] = {"reads": other, **evaluate(held, {"pickscore": guess})["pickscore"]}
    out.mkdir(parents=True, exist_ok=True)
    for target, head in heads.items():
        head.save_pretrained(out / target)
    (out / EVAL_FILE).write_text(json.dumps(report, indent=2) + "\n")
    pairs_file = out / PAIRS_FILE if pairs is None else Path(pairs)
    record = {
        "command": command,
        "config": dataclasses.asdict(cfg),
        "pairs": {"file": PAIRS_FILE if pairs is None else str(pairs), "rows": len(rows),
                  "sha256": hashlib.sha256(pairs_file.read_bytes()).hexdigest()},
        "world_sha256": world_digest(synth_path()),
        "rendered": len(rows) - before,  # rows rendered by this invocation (a rerun resumes a collection)
        "seconds": {"collect": round(collected - started, 1), "fit": round(time.perf_counter() - collected, 1)},
    }
    record["files"] = file_hashes(out)
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promptgym reward fit-surrogate", description=__doc__.split("\n")[0])
    defaults = FitConfig()
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory (the shipped heads live in promptgym/rewards/data/synth/surrogate)")
    parser.add_argument("--prompts", type=int, default=defaults.prompts, help="pairs to render and score")
    parser.add_argument("--held-out", type=float, default=defaults.held_out,
                        help="share of the pairs drawn from the demo test tasks (evaluation only)")
    parser.add_argument("--variants", type=int, default=defaults.variants, help="variants of each task's target")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per head")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    parser.add_argument("--pickscore-reads", choices=("prompt", "pair"), default=defaults.pickscore_reads,
                        help="what the PickScore head reads: the prompt (default: the synth PickScore compares the "
                             "render with the prompt itself) or the (source, prompt) pair")
    parser.add_argument("--pairs", type=Path, default=None,
                        help="fit from this pairs file (e.g. a previous OUT/pairs.jsonl) instead of rendering")
    args = parser.parse_args(argv)
    for name in ("prompts", "steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive int, got {getattr(args, name)}")
    if args.variants < 0:
        parser.error(f"--variants must be >= 0, got {args.variants}")
    cfg = FitConfig(seed=args.seed, prompts=args.prompts, held_out=args.held_out, variants=args.variants,
                    steps=args.steps, threads=args.threads, pickscore_reads=args.pickscore_reads)
    command = "promptgym reward fit-surrogate " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        report = fit_surrogate(args.out, cfg, args.pairs, command)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(json.dumps(report["held_out"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
