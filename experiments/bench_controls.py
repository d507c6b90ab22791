"""Benchmark: what each control prefix does to held-out edits (issue 14, Prompt Expansion's controls).

    python -m promptgym.experiments.bench_controls [--config synth] [--tasks 64] [--samples 2] [--dropout 0.5]

Fine-tunes the config's policy (SFT only, as `promptgym train` does before PPO) with control prefixes
(`data.control_dropout`), then samples `--samples` edits of the first `--tasks` eval-split tasks under every
control and without one, all with the same seed, and scores them with the config's reward. Printed per control,
each as the mean over tasks with a 95% percentile-bootstrap CI: gold aesthetic and gold content of the renders,
gold text content (what the words ask for against the target scene), and adherence (the share of edits whose
quality modifiers are exactly of the control's family: none for `keep`, a non-empty subset of its family
otherwise, in a well-formed world prompt). One SFT run and (1 + controls) x tasks x samples renders: a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from promptgym.agents.rollout import sample_episodes
from promptgym.agents.sft import sft_warm_start
from promptgym.envs import EditTask, load_tasks
from promptgym.envs.controls import CONTROLS, split_control, with_control
from promptgym.experiments.builders import (
    build_policy,
    build_run_reward,
    build_tokenizer,
    build_vector_env,
    seed_everything,
    stage_tasks,
)
from promptgym.experiments.config import load_config
from promptgym.experiments.stats import mean_ci
from promptgym.rewards.scene import parse_scene

METRICS = ("gold/aesthetic", "gold/content", "gold/text_content", "adherence")


def adherence(prompt: str, control: str | None) -> float:
    """1 when the prompt's quality modifiers are exactly what `control` asks for, else 0 (NaN without one)."""
    if control is None:
        return float("nan")
    parsed = parse_scene(prompt)
    if parsed.scene is None or parsed.unparsed:  # not a well-formed world prompt: it follows no control
        return 0.0
    modifiers, family = set(parsed.scene.modifiers), set(CONTROLS[control])
    return float(modifiers <= family and bool(modifiers) == bool(family))


def edits_under_control(policy, config, tokenizer, reward, tasks: list[EditTask], control: str | None,
                        samples: int, seed: int) -> dict[str, np.ndarray]:
    """Per-task means of every metric over `samples` sampled edits of each task under `control`."""
    controlled = [EditTask(t.source, with_control(t.instruction, control), t.target, t.id) for t in tasks]
    repeated = [t for t in controlled for _ in range(samples)]
    env = build_vector_env(config, repeated, tokenizer, reward, len(repeated))
    batch = sample_episodes(policy, env, seed, repeated, config.ppo.typical_mass)
    per_edit = {name: batch.components[name].double().numpy() for name in METRICS[:3]}
    per_edit["adherence"] = np.array([adherence(p, control) for p in batch.prompts])
    return {name: values.reshape(len(tasks), samples).mean(1) for name, values in per_edit.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="synth")
    parser.add_argument("--tasks", type=int, default=64, help="eval-split tasks (the first N)")
    parser.add_argument("--samples", type=int, default=2, help="sampled edits per task and control")
    parser.add_argument("--dropout", type=float, default=0.5, help="control prefix dropout in SFT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_config(args.config, [*args.overrides, f"data.control_dropout={args.dropout}", f"seed={args.seed}"])
    seed_everything(config.seed)
    tokenizer = build_tokenizer(config)
    policy = build_policy(config, tokenizer)
    sft_tasks = stage_tasks(config)[0]
    eval_tasks = [t for t in load_tasks(config.data.tasks, split=config.data.eval_split) if t.target][: args.tasks]
    tagged = sum(split_control(t.instruction)[0] is not None for t in sft_tasks)
    print(f"SFT on {len(sft_tasks)} tasks ({tagged} with a control prefix, dropout {args.dropout})")
    sft_warm_start(policy, tokenizer, sft_tasks, eval_tasks, config=config.sft, progress=True)
    reward = build_run_reward(config, tokenizer)
    print(f"\n{len(eval_tasks)} held-out tasks x {args.samples} samples, mean over tasks [95% CI]")
    print(f"{'control':10s} " + " ".join(f"{name:>26s}" for name in METRICS))
    with torch.no_grad():
        for control in (None, *CONTROLS):
            means = edits_under_control(policy, config, tokenizer, reward, eval_tasks, control, args.samples,
                                        args.seed)
            cells = []
            for name in METRICS:
                values = means[name]
                if np.isnan(values).all():
                    cells.append(f"{'-':>26s}")
                    continue
                mean, low, high = mean_ci(values[~np.isnan(values)])
                cells.append(f"{mean:8.3f} [{low:7.3f}, {high:7.3f}]")
            print(f"{control or '(none)':10s} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
