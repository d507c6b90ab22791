"""Headroom on the synth world: what a policy could reach on held-out tasks, beside what its samples reach.

    python -m promptgym.experiments.headroom SAMPLES_JSONL [--max-modifiers 3] [--max-tasks N] [--out DIR]
        [--candidates HEADROOM_JSONL] [--threads N]

`SAMPLES_JSONL` is a run's evaluation samples (`RUN/eval/start_test_samples.jsonl`, the SFT start's, or
`RUN/eval/eval_test_samples.jsonl`, the final policy's, as `promptgym eval RUN --against start` writes them). For
every task of the file whose target is a synth scene, the tool writes that scene exactly (`describe`) with every set
of at most `--max-modifiers` of the world's quality modifiers (`MODIFIERS` order), scores each prompt with the run's
reward (its config; unnormalised, with the gold monitors) and pairs it per task with the samples (mean over a
task's samples; 95% percentile-bootstrap CIs over tasks):

- every fixed suffix, one rule for all tasks ("the target scene, soft lighting");
- the per-task gold pick: the candidate with the highest gold aesthetic among those whose gold content is at least
  the samples' (what a policy could reach on both gold metrics at once);
- the per-task proxy pick: the candidate with the highest proxy reward (what a perfect optimiser of the proxy would
  write among these prompts).

A run whose samples trail the fixed suffixes on gold content lost it by writing the wrong content, not because the
world has no room; the proxy pick says whether the proxy points at the room. Written to `--out` (default: beside the
samples), named after the samples file (`headroom_start_test.md` for `start_test_samples.jsonl`): the table (`.md`),
every candidate's prompt and reward components (`.jsonl`) and a plot (`.png`: gold content against gold aesthetic,
the samples, every suffix and the two picks, with CIs). The candidates' scores depend on the tasks and the reward
only, so `--candidates` reuses an earlier `.jsonl` (same tasks and config) to pair other samples with them (another
seed's start, a final policy) without rendering again. The proxy column compares only samples and candidates
scored by the same reward (an oracle run's samples carry the gold reward's total).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptgym.rewards import CompositeReward, EditResult, EditTask
from promptgym.rewards.scene import MODIFIERS, describe

GOLD_CONTENT, GOLD_AESTHETIC = "gold/content", "gold/aesthetic"
PROXY = "proxy"  # the reward before normalisation (`reward/unnormalized` where the reward normalises)
METRICS = (GOLD_CONTENT, GOLD_AESTHETIC, PROXY)
GOLD_PICK, PROXY_PICK = "per-task gold pick", "per-task proxy pick"


def modifier_sets(max_modifiers: int) -> list[tuple[str, ...]]:
    """Every set of at most `max_modifiers` of the world's modifiers, in `MODIFIERS` order, smallest first."""
    if not 0 <= max_modifiers <= len(MODIFIERS):
        raise ValueError(f"max_modifiers={max_modifiers}; expected 0..{len(MODIFIERS)}")
    return [combo for k in range(max_modifiers + 1) for combo in itertools.combinations(MODIFIERS, k)]


def sample_tasks(samples: Sequence[Mapping[str, Any]]) -> list[EditTask]:
    """The distinct tasks of a samples file, in order, that have a synth target scene."""
    tasks: dict[str, EditTask] = {}
    for record in samples:
        if record["task_id"] not in tasks:
            tasks[record["task_id"]] = EditTask(record["source"], record["instruction"], record.get("target"),
                                                record["task_id"])
    return [task for task in tasks.values() if task.target_scene is not None]


def candidate_records(reward: CompositeReward, tasks: Sequence[EditTask], sets: Sequence[tuple[str, ...]],
                      progress: bool = True) -> list[dict[str, Any]]:
    """One record per (task, modifier set): the target scene with those modifiers, scored by `reward`."""
    from tqdm.auto import tqdm

    records = []
    for task in tqdm(tasks, desc="headroom", unit="task", disable=not progress):
        scene = task.target_scene
        results = [EditResult(task, describe(dataclasses.replace(scene, modifiers=tuple(s)))) for s in sets]
        out = reward(results)
        for i, modifiers in enumerate(sets):
            components = out.row(i)
            records.append({"task_id": task.id, "modifiers": list(modifiers), "prompt": results[i].prompt,
                            "reward": float(out.total[i]), "components": components})
    return records


def _value(record: Mapping[str, Any], metric: str) -> float:
    if metric == PROXY:
        return float(record.get("components", {}).get("reward/unnormalized", record["reward"]))
    return float(record.get("components", {}).get(metric, math.nan))


def task_means(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """`{task_id: {metric: mean over the task's samples}}` for the three metrics."""
    values: dict[str, list[list[float]]] = {}
    for record in samples:
        values.setdefault(record["task_id"], []).append([_value(record, m) for m in METRICS])
    return {task: dict(zip(METRICS, np.mean(rows, axis=0).tolist())) for task, rows in values.items()}


def picks(candidates: Sequence[Mapping[str, Any]], base: Mapping[str, Mapping[str, float]]
          ) -> dict[str, dict[str, dict[str, float]]]:
    """Per-task choices among the candidates: every fixed modifier set, the gold pick and the proxy pick."""
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for record in candidates:
        by_task.setdefault(record["task_id"], []).append(record)
    chosen: dict[str, dict[str, dict[str, float]]] = {}
    for task, options in by_task.items():
        scored = [{m: _value(r, m) for m in METRICS} | {"modifiers": ", ".join(r["modifiers"]) or "(none)"}
                  for r in options]
        for row in scored:
            chosen.setdefault(row["modifiers"], {})[task] = row
        if task in base:
            keeping = [r for r in scored if r[GOLD_CONTENT] >= base[task][GOLD_CONTENT]] or scored
            chosen.setdefault(GOLD_PICK, {})[task] = max(keeping, key=lambda r: (r[GOLD_AESTHETIC], r[GOLD_CONTENT]))
        chosen.setdefault(PROXY_PICK, {})[task] = max(scored, key=lambda r: r[PROXY])
    return chosen


def paired(choice: Mapping[str, Mapping[str, float]], base: Mapping[str, Mapping[str, float]], metric: str,
           seed: int = 0) -> tuple[float, float, float, float, int]:
    """`(mean of the choice, change, low, high, tasks)`: the choice minus the samples, paired per task."""
    from promptgym.experiments.stats import paired_task_change

    change = paired_task_change(metric, {t: values[metric] for t, values in base.items()},
                                {t: values[metric] for t, values in choice.items()}, seed=seed)
    if change is None:
        return math.nan, math.nan, math.nan, math.nan, 0
    return change.after, change.change, change.low, change.high, change.n


def headroom_rows(candidates: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One row per choice (the two picks first, then the fixed suffixes by gold aesthetic): its mean and paired
    change against the samples for each metric."""
    base = task_means(samples)
    rows = []
    for name, choice in picks(candidates, base).items():
        row: dict[str, Any] = {"choice": name}
        for metric in METRICS:
            mean, change, low, high, n = paired(choice, base, metric)
            row[metric] = {"mean": mean, "change": change, "low": low, "high": high, "tasks": n}
        rows.append(row)
    first = {GOLD_PICK: 0, PROXY_PICK: 1}
    rows.sort(key=lambda r: (first.get(r["choice"], 2), -r[GOLD_AESTHETIC]["mean"]))
    return rows


def format_headroom(rows: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]], source: str) -> str:
    base = task_means(samples)
    means = {m: float(np.nanmean([v[m] for v in base.values()])) for m in METRICS}
    lines = [f"# Headroom of {source}", "",
             f"{len(base)} tasks; the samples: gold content {means[GOLD_CONTENT]:.3f}, gold aesthetic "
             f"{means[GOLD_AESTHETIC]:.3f}, proxy {means[PROXY]:.3f} (mean over a task's samples, then over tasks). "
             "Each row writes every task's target scene exactly with a modifier choice; cells: mean, and change "
             "against the samples paired per task [95% bootstrap CI].", "",
             "| choice | gold content | change | gold aesthetic | change | proxy | change |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[m]['mean']:.3f} | {row[m]['change']:+.3f} [{row[m]['low']:+.3f}, {row[m]['high']:+.3f}]"
                 for m in METRICS]
        lines.append(f"| {row['choice']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_headroom(rows: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Gold content (x) against gold aesthetic (y): the samples, every fixed suffix and the two picks, with CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = task_means(samples)
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    sx, sy = (float(np.nanmean([v[m] for v in base.values()])) for m in (GOLD_CONTENT, GOLD_AESTHETIC))
    ax.scatter([sx], [sy], marker="s", s=80, color="black", zorder=3, label="the samples")
    for row in rows:
        x, y = row[GOLD_CONTENT], row[GOLD_AESTHETIC]
        special = row["choice"] in (GOLD_PICK, PROXY_PICK)
        color = {GOLD_PICK: "tab:green", PROXY_PICK: "tab:orange"}.get(row["choice"], "tab:blue")
        ax.errorbar(x["mean"], y["mean"], xerr=[[x["change"] - x["low"]], [x["high"] - x["change"]]],
                    yerr=[[y["change"] - y["low"]], [y["high"] - y["change"]]], fmt="o" if special else ".",
                    color=color, alpha=1.0 if special else 0.45, label=row["choice"] if special else None)
        if not special:
            ax.annotate(row["choice"], (x["mean"], y["mean"]), fontsize=6, alpha=0.7)
    ax.axvline(sx, color="black", lw=0.6, ls=":")
    ax.axhline(sy, color="black", lw=0.6, ls=":")
    ax.set_xlabel("gold content (the target scene exactly; blue: one modifier suffix for every task)")
    ax.set_ylabel("gold aesthetic")
    ax.set_title("Headroom: target scenes with chosen modifiers vs the samples (CIs: paired change)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def reward_for(samples_path: Path, config: str | None) -> CompositeReward:
    """The reward of the run the samples came from (`RUN/config.yaml` above `RUN/eval/`), or of `config`."""
    from promptgym.experiments.builders import build_run_reward
    from promptgym.experiments.config import load_config
    from promptgym.experiments.rundir import load_run_config

    run_dir = samples_path.resolve().parent.parent
    cfg = load_config(config) if config else (
        load_run_config(run_dir) if (run_dir / "config.yaml").exists() else load_config("synth"))
    if cfg.reward.preset not in ("synth", "synth-gold", "surrogate"):
        raise ValueError(f"headroom needs a synth-world reward (with gold monitors); the config's preset is "
                         f"{cfg.reward.preset!r}")
    return build_run_reward(cfg, None)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path, help="a run's eval samples JSONL (eval/start_test_samples.jsonl, ...)")
    parser.add_argument("--max-modifiers", type=int, default=3, help="largest modifier set written (default 3)")
    parser.add_argument("--max-tasks", type=int, default=None, help="only the first N tasks of the file")
    parser.add_argument("--config", default=None, help="the reward's config (default: the run's config.yaml)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: beside the samples)")
    parser.add_argument("--candidates", type=Path, default=None,
                        help="reuse the scored candidates of an earlier run of this tool (its .jsonl)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.samples.is_file():
        parser.error(f"{args.samples} is not a file; expected a samples JSONL such as RUN/eval/start_test_samples.jsonl")
    samples = [json.loads(line) for line in args.samples.read_text().splitlines() if line.strip()]
    tasks = sample_tasks(samples)[: args.max_tasks]
    if not tasks:
        parser.error(f"{args.samples} has no task with a synth target scene")
    kept = {task.id for task in tasks}
    samples = [record for record in samples if record["task_id"] in kept]
    if args.candidates:
        candidates = [json.loads(line) for line in args.candidates.read_text().splitlines() if line.strip()]
        missing = kept - {c["task_id"] for c in candidates}
        if missing:
            parser.error(f"{args.candidates} has no candidates for {len(missing)} of the tasks, e.g. {sorted(missing)[0]}")
        candidates = [c for c in candidates if c["task_id"] in kept]
    else:
        sets = modifier_sets(args.max_modifiers)
        print(f"{len(tasks)} tasks x {len(sets)} modifier sets = {len(tasks) * len(sets)} prompts to score")
        candidates = candidate_records(reward_for(args.samples, args.config), tasks, sets)
    rows = headroom_rows(candidates, samples)
    out = args.out or args.samples.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = args.samples.stem.removesuffix("_samples")
    if not args.candidates:  # reused candidates stay where they are
        (out / f"headroom_{stem}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in candidates))
    text = format_headroom(rows, samples, str(args.samples))
    (out / f"headroom_{stem}.md").write_text(text)
    plot_headroom(rows, samples, out / f"headroom_{stem}.png")
    print(text)
    print(f"written to {out}/: headroom_{stem}.md, {'' if args.candidates else '.jsonl, '}.png")
    return {"rows": rows, "candidates": candidates}


if __name__ == "__main__":
    main()
