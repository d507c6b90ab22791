"""Benchmark: does a policy trained on conversations keep earlier edits better than one trained on single edits?

    python -m promptgym.experiments.bench_chat [--seeds 1] [--out runs/bench_chat] [--samples 2] [--set k=v ...]
    python -m promptgym.experiments.bench_chat --run single-turn=RUN[,RUN..] --run chat=RUN[,RUN..]   # no training

Per seed it trains (or reuses, when `OUT/<policy>-s<seed>` already holds the finished run of the same config) the
`single-turn` policy (`promptgym train --config synth`, the default: SFT on single edits, PPO on single edits) and
the `chat` policy (`promptgym train --config chat`: SFT on single edits plus chat turns, PPO on conversations), with
the same `--set` overrides. Each run's SFT start (`sft`) and final policy (`ppo`) then play every test conversation
(`load_conversations("demo", "test")`: 60 conversations of 2-4 turns) in the chat env, `--samples` times each
(sampling seeds 12345, 12346, ..., full policy distribution at temperature 1), every turn scored by the synth
reward; the proxy is its unnormalised weighted sum, beside the gold metrics.

Printed, per policy (means over conversations, then over seeds and samples; [95% percentile-bootstrap CI over the
conversations]):
- `gold content, last turn`: gold content (`gold/content`, what the judge reads off the render against the scene
  known after the turn) of each conversation's last turn, all 60 conversations;
- `gold content, turn k` (k = 1..3): at turn k, over the conversations that have a turn k (turn 3: the 41 of 3+);
- `turn-1 edit at turn 3` (gold and text): over the conversations of 3+ turns whose turn 1 changed an attribute
  that turns 2-3 left alone, the share of those attributes that the turn-3 render (judge; `text`: the turn-3
  prompt's own words) still shows with turn 1's value: does the edit of turn 1 survive turn 3?
- `proxy reward, mean turn`;
then each policy minus `single-turn ppo`, paired per conversation ([95% CI]), and each policy's held-out completion
loss on the test split's single-turn tasks and on the test conversations' turns in their chat context (what the SFT
mix changes). The CIs are over conversations: they
hold the evaluation's noise, not the training's; the per-seed means are printed beside them for that. Everything
goes to `OUT/bench_chat.md` and `OUT/bench_chat.json` (every turn's scores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptgym.agents.rollout import sample_episodes
from promptgym.agents.sft import chat_examples, completion_loss
from promptgym.envs import ChatTemplate, Conversation, load_conversations, load_tasks
from promptgym.envs.chat import ChatEpisodes
from promptgym.experiments.builders import build_chat_env, build_run_reward, build_tokenizer
from promptgym.experiments.chat import CHAT_CONTEXT_TOKENS
from promptgym.experiments.config import load_config
from promptgym.experiments.rundir import START, load_run_config, load_run_policy
from promptgym.experiments.stats import mean_ci
from promptgym.rewards.composite import UNNORMALIZED_COMPONENT
from promptgym.rewards.gold import scene_labels
from promptgym.rewards.scene import ATTRIBUTES, parse_scene

POLICIES = {"single-turn": "synth", "chat": "chat"}  # policy name -> the preset that trains it
STAGES = {"sft": START, "ppo": None}  # stage -> the run's checkpoint (START: its SFT policy; None: the latest)
BASELINE = "single-turn ppo"
EVAL_SEED = 12345
SURVIVAL_TURN = 2  # 0-based: "does the edit of turn 1 survive turn 3?"
METRICS = {  # column -> what it reads off a conversation's records (NaN: the conversation does not count)
    "gold content, last turn": lambda c: c["turns"][-1]["gold/content"],
    **{f"gold content, turn {k + 1}": (lambda c, k=k: c["turns"][k]["gold/content"] if len(c["turns"]) > k
                                       else math.nan) for k in range(3)},
    "turn-1 edit at turn 3 (gold)": lambda c: c.get("survival_gold", math.nan),
    "turn-1 edit at turn 3 (text)": lambda c: c.get("survival_text", math.nan),
    "proxy reward, mean turn": lambda c: float(np.mean([t["proxy"] for t in c["turns"]])),
}


@dataclass
class Evaluation:
    """One policy (name, stage) of one seed, `samples` plays of every conversation: `conversations[sample][i]` =
    {"id", "turns": [{"prompt", "proxy", "gold/content", ...} per turn], "survival_gold"?, "survival_text"?}."""

    policy: str
    seed: int
    run: str
    conversations: list[list[dict[str, Any]]] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)  # held-out completion loss (nats/token) per data set

    def per_conversation(self, metric: str) -> np.ndarray:
        """`[conversations]`: the metric's mean over the samples of each conversation (NaN where it does not count)."""
        values = np.array([[METRICS[metric](c) for c in sample] for sample in self.conversations], dtype=np.float64)
        return values.mean(0)  # a conversation that does not count is NaN in every sample


# --------------------------------------------------------------------------------------------------- turn-1 edits
def turn_one_attributes(conversation: Conversation) -> list[str]:
    """The content attributes turn 1 changed and turns 2-3 left at turn 1's value, drawn in the turn-3 scene
    (empty for a conversation of fewer than 3 turns or without targets)."""
    turns = conversation.turns
    if len(turns) <= SURVIVAL_TURN or any(t.target is None for t in turns[: SURVIVAL_TURN + 1]):
        return []
    before, after, later = (parse_scene(text).scene for text in
                            (conversation.source, turns[0].target, turns[SURVIVAL_TURN].target))
    return [name for name in ATTRIBUTES if getattr(after, name) != getattr(before, name)
            and getattr(later, name) == getattr(after, name) and name in later.drawn_attributes()]


def survival(prompts: Sequence[str], conversations: Sequence[Conversation], reward: Any) -> list[tuple[float, float]]:
    """Per conversation: (gold, text) share of `turn_one_attributes` that the turn-3 prompt `prompts[i]` still
    shows: read off its renders by the reward's gold judge, and off its own words; NaN without such attributes."""
    gold_scorer = reward.monitors["gold/content"]
    names = [turn_one_attributes(c) for c in conversations]
    wanted = [scene_labels(parse_scene(c.turns[SURVIVAL_TURN].target).scene) if n else {}
              for c, n in zip(conversations, names)]
    images = gold_scorer.renderer.render(list(prompts))  # [N, K, 3, H, W]
    read = gold_scorer.judge.read(images.flatten(0, 1))
    k = images.shape[1]
    out = []
    for i, (attributes, labels) in enumerate(zip(names, wanted)):
        if not attributes:
            out.append((math.nan, math.nan))
            continue
        gold = np.mean([float(read[a][i * k + j] == labels[a]) for a in attributes for j in range(k)])
        asked = scene_labels(parse_scene(prompts[i]).scene)
        out.append((float(gold), float(np.mean([asked[a] == labels[a] for a in attributes]))))
    return out


# --------------------------------------------------------------------------------------------------- evaluation
def play(policy: Any, tokenizer: Any, config: Any, reward: Any, conversations: list[Conversation],
         sample_seed: int) -> list[dict[str, Any]]:
    """Every conversation played once by `policy` in the chat env (sampling seed `sample_seed`): each turn's
    prompt, proxy (unnormalised weighted sum) and reward terms, and the turn-1 survival at turn 3."""
    env = build_chat_env(config, conversations, tokenizer, reward)
    batch = sample_episodes(policy, env, sample_seed, conversations)
    records = [{"id": c.id, "turns": []} for c in conversations]
    for r, (i, k) in enumerate(zip(batch.episode.tolist(), batch.turn.tolist())):
        terms = {name: float(values[r]) for name, values in batch.components.items()}
        proxy = terms.get(UNNORMALIZED_COMPONENT, float(batch.scores[r]))
        records[i]["turns"].append({"turn": k, "prompt": batch.prompts[r], "proxy": proxy, **terms})
    deep = [i for i, c in enumerate(conversations) if turn_one_attributes(c)]
    scores = survival([records[i]["turns"][SURVIVAL_TURN]["prompt"] for i in deep], [conversations[i] for i in deep],
                      reward)
    for i, (gold, text) in zip(deep, scores):
        records[i]["survival_gold"], records[i]["survival_text"] = gold, text
    return records


def evaluate_run(run: Path, name: str, seed: int, conversations: list[Conversation], samples: int,
                 reward: Any) -> list[Evaluation]:
    """The run's SFT start and final policy, each playing every conversation `samples` times in the chat env (the
    run's sizes, with the chat preset's room for the history) and scored by `reward`."""
    config = load_run_config(run)
    env = dataclasses.replace(config.env, max_context_tokens=max(config.env.max_context_tokens, CHAT_CONTEXT_TOKENS))
    chat_config = dataclasses.replace(config, env=env)
    evaluations = []
    for stage, checkpoint in STAGES.items():
        policy, tokenizer, _, _ = load_run_policy(run, checkpoint)
        evaluation = Evaluation(f"{name} {stage}", seed, str(run), losses=heldout_losses(policy, tokenizer, chat_config,
                                                                                           conversations))
        for j in range(samples):
            evaluation.conversations.append(play(policy, tokenizer, chat_config, reward, conversations, EVAL_SEED + j))
        evaluations.append(evaluation)
    return evaluations


def heldout_losses(policy: Any, tokenizer: Any, config: Any, conversations: list[Conversation]) -> dict[str, float]:
    """Completion loss (nats per target token, EOS included) of the test split's single-turn tasks and of the
    conversations' turns in their chat context along the reference path: what the SFT mix changes."""
    tasks = [t for t in load_tasks(config.data.tasks, split=config.data.eval_split) if t.target is not None]
    chats = ChatEpisodes(conversations, tokenizer, ChatTemplate(), config.env.max_new_tokens,
                         config.env.max_context_tokens)
    return {"single-turn tasks": completion_loss(policy, tokenizer, tasks),
            "chat turns": completion_loss(policy, tokenizer, chat_examples(chats, conversations))}


# --------------------------------------------------------------------------------------------------- training
def train_runs(out: Path, seeds: Sequence[int], overrides: Sequence[str]) -> dict[str, list[tuple[int, Path]]]:
    """Train (or reuse finished runs of the same config, or resume unfinished ones) every policy on every seed:
    `OUT/<policy>-s<seed>`. Returns {policy: [(seed, run directory)]}."""
    from promptgym.experiments.train import train

    runs: dict[str, list[tuple[int, Path]]] = {name: [] for name in POLICIES}
    for seed in seeds:
        for name, preset in POLICIES.items():
            config = load_config(preset, [*overrides, f"seed={seed}"])
            run = out / f"{name}-s{seed}"
            if (run / "config.yaml").is_file() and load_run_config(run) != config:
                raise ValueError(f"{run} holds a run of another config; remove it or use another --out")
            if not (run / "summary.md").is_file():
                resume = (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir())
                print(f"training {name} seed {seed} -> {run}", flush=True)
                train(config, run, resume=resume, overwrite=run.exists() and not resume)
            runs[name].append((seed, run))
    return runs


# --------------------------------------------------------------------------------------------------- the table
def summary(evaluations: Sequence[Evaluation], n_resamples: int = 2000) -> tuple[list[dict[str, Any]],
                                                                              list[dict[str, Any]]]:
    """(rows, paired rows): per policy and metric, the mean over conversations (of the mean over seeds and
    samples) with its 95% bootstrap CI over conversations and the per-seed means; per policy other than
    `BASELINE`, the paired per-conversation difference from it."""
    policies = list(dict.fromkeys(e.policy for e in evaluations))
    means = {p: {m: _seed_mean([e for e in evaluations if e.policy == p], m) for m in METRICS} for p in policies}
    rows, paired = [], []
    for p in policies:
        row: dict[str, Any] = {"policy": p, "seeds": sorted(e.seed for e in evaluations if e.policy == p)}
        for data in ("single-turn tasks", "chat turns"):
            row[f"loss, {data}"] = float(np.mean([e.losses[data] for e in evaluations if e.policy == p and e.losses]
                                                 or [math.nan]))
        for m in METRICS:
            values = means[p][m]
            row[m] = _ci(values[np.isfinite(values)], n_resamples)
            row[f"{m} per seed"] = [_finite_mean(e.per_conversation(m)) for e in evaluations if e.policy == p]
        rows.append(row)
        if p != BASELINE and BASELINE in means:
            diff = {m: means[p][m] - means[BASELINE][m] for m in METRICS}
            paired.append({"policy": p, **{m: _ci(d[np.isfinite(d)], n_resamples) for m, d in diff.items()}})
    return rows, paired


def _seed_mean(evaluations: Sequence[Evaluation], metric: str) -> np.ndarray:
    """`[conversations]`: each conversation's metric averaged over seeds (each seed: over its samples)."""
    return np.stack([e.per_conversation(metric) for e in evaluations]).mean(0)


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def _ci(values: np.ndarray, n_resamples: int) -> tuple[float, float, float, int]:
    if len(values) == 0:
        return (math.nan, math.nan, math.nan, 0)
    return (*mean_ci(values, n_resamples=n_resamples), len(values))


def markdown(rows: list[dict[str, Any]], paired: list[dict[str, Any]], samples: int) -> str:
    def cell(v: tuple[float, float, float, int], signed: bool = False) -> str:
        f = "{:+.3f}" if signed else "{:.3f}"
        return "n/a" if not math.isfinite(v[0]) else f"{f.format(v[0])} [{f.format(v[1])}, {f.format(v[2])}]"

    head = "| policy | seeds | " + " | ".join(METRICS) + " |"
    lines = ["# Multi-turn: single-turn-trained vs chat-trained policies on the demo test conversations", "",
             f"Means over conversations [95% bootstrap CI over conversations]; each conversation played {samples} "
             "time(s) per seed. `n` = conversations counted per column: "
             + ", ".join(f"{m}: {rows[0][m][3]}" for m in METRICS) + ".", "", head, "|" + "---|" * (len(METRICS) + 2)]
    for row in rows:
        lines.append(f"| {row['policy']} | {len(row['seeds'])} | " + " | ".join(cell(row[m]) for m in METRICS) + " |")
    lines += ["", "Held-out completion loss (nats per target token, mean over seeds) of the test split's single-turn "
              "tasks and of the test conversations' turns in their chat context (reference path):", "",
              "| policy | single-turn tasks | chat turns |", "|---|---|---|"]
    lines += [f"| {row['policy']} | {row['loss, single-turn tasks']:.3f} | {row['loss, chat turns']:.3f} |"
              for row in rows]
    lines += ["", "Per-seed means (training noise):", ""]
    for row in rows:
        seeds = "; ".join(f"{m}: " + ", ".join(f"{v:.3f}" for v in row[f"{m} per seed"]) for m in list(METRICS)[:1]
                          + ["turn-1 edit at turn 3 (gold)"])
        lines.append(f"- {row['policy']} (seeds {row['seeds']}): {seeds}")
    if paired:
        lines += ["", f"Paired difference from `{BASELINE}` (same conversations; mean [95% CI]):", "", head,
                  "|" + "---|" * (len(METRICS) + 2)]
        for row in paired:
            lines.append(f"| {row['policy']} | | " + " | ".join(cell(row[m], True) for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def run_bench_chat(runs: dict[str, list[tuple[int, Path]]], out: Path, samples: int = 2, split: str = "test",
                   limit: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate every run's SFT start and final policy on the demo conversations of `split` (the first `limit`);
    write `OUT/bench_chat.md` / `.json` and return `summary`'s rows."""
    conversations = load_conversations("demo", split)[:limit]
    configs = [load_run_config(run) for seeded in runs.values() for _, run in seeded]
    if any(c.reward != configs[0].reward for c in configs):
        raise ValueError("the runs were trained with different reward sections; the comparison needs one reward")
    reward = build_run_reward(configs[0], build_tokenizer(configs[0]))  # one reward (and render cache) for all
    evaluations: list[Evaluation] = []
    for name, seeded in runs.items():
        for seed, run in seeded:
            print(f"evaluating {name} seed {seed} ({run})", flush=True)
            evaluations += evaluate_run(run, name, seed, conversations, samples, reward)
    rows, paired = summary(evaluations)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_chat.md").write_text(markdown(rows, paired, samples), encoding="utf-8")
    raw = {"samples": samples, "split": split, "rows": rows, "paired": paired,
           "evaluations": [vars(e) for e in evaluations]}
    (out / "bench_chat.json").write_text(json.dumps(raw, indent=1, default=float), encoding="utf-8")
    return rows, paired


def _parse_runs(items: Sequence[str]) -> dict[str, list[tuple[int, Path]]]:
    runs: dict[str, list[tuple[int, Path]]] = {}
    for item in items:
        name, sep, paths = item.partition("=")
        if not sep or not name or not paths:
            raise ValueError(f"--run {item!r}: expected NAME=RUN[,RUN...]")
        runs[name] = [(load_run_config(p).seed, Path(p)) for p in paths.split(",")]
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptgym.experiments.bench_chat", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds to train (the config seed, +1, ...)")
    parser.add_argument("--out", default="runs/bench_chat", help="run directories and the tables")
    parser.add_argument("--samples", type=int, default=2, help="plays of every conversation per policy and seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both trainings (e.g. train.num_updates=20)")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN[,RUN]",
                        help="evaluate these finished runs instead of training (NAME: single-turn, chat, ...)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--conversations", type=int, default=None, metavar="N",
                        help="evaluate on the first N test conversations only (a quick check; default all 60)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.samples < 1:
        parser.error("--seeds and --samples must be positive")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.run:
        runs = _parse_runs(args.run)
    else:
        first = load_config(POLICIES["single-turn"], args.overrides).seed
        runs = train_runs(out, [first + i for i in range(args.seeds)], args.overrides)
    run_bench_chat(runs, out, args.samples, limit=args.conversations)
    print((out / "bench_chat.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

