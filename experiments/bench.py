"""`promptgym bench`: PPO variants and baselines trained for the same budget of reward calls, over several seeds.

    promptgym bench [--variants sft,ppo,ppo+adm,ppo+neg,ppo+civalue,diffchat,sb3-ppo,grpo,rloo] [--seeds 3]
                    [--budget 4096] [--reward config|integrity] [--out runs/bench] [--set key=value ...]

The rules that make the comparison fair:

- **Budget.** A *reward call* is one edited prompt scored (one finished episode; our PPO's keyword-corrupted
  negatives count too: `PPOAgent.num_reward_calls`). Every variant trains until it has used at least `budget`
  reward calls and stops at the first update / rollout / generation batch at or past it (so it uses between
  `budget` and `budget + batch - 1`; the table reports the calls actually used).
- **Start.** Per seed, SFT runs once and every language-model variant (our PPO variants, GRPO, RLOO) starts from a
  deep copy of that SFT'd policy. SB3 PPO has no language model: it starts from scratch (the table says so). The
  `sft` row is that start evaluated with no RL; the "reward vs SFT" column pairs each variant's seed with it.
- **Config.** Every variant of a seed uses the tiny preset (for the baselines) or its own ablation preset, with the
  same `--set` overrides and `seed`; the presets differ only in their `ppo` section (checked: the shared SFT start
  would be wrong otherwise). Baselines use the config's env sizes, task splits, `ppo.n_episodes` (episodes per
  batch), `ppo.learning_rate` and `ppo.kl_coef` (as TRL's `beta`).
- **Final score.** The same evaluation for every variant, not counted in the budget: mean reward (and each
  component) of `eval_episodes` fresh episodes on the config's eval split (`data.eval_split`), sampled with the
  same seed from the full policy distribution at temperature 1 (`agents.baselines.evaluate_lm` for the LM
  variants, `evaluate_sb3` for SB3).
- **Reward.** `--reward config` (default) is the config's reward (tiny preset: tiny-model aesthetic and PickScore
  deltas plus binary content integrity; its image terms exercise the pipeline and say nothing about image quality).
  `--reward integrity` scores content integrity only, as a ratio (the share of the task's key words the edited
  prompt keeps): no renders, so several times faster, and the one term that means something on the tiny stack.

Outputs in OUT: `bench.md` and `bench.csv` (per variant: mean and 95% bootstrap CI over seeds of the final eval
reward and each component, mean wall time, reward calls), `learning_curves.png` (x = reward calls, one line per
variant) and `bench.json` (every run's raw numbers: curves, eval scores, timings).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from promptgym.agents import PPOAgent, sft_warm_start
from promptgym.envs import load_tasks
from promptgym.experiments.builders import (
    build_policy,
    build_run_reward,
    build_tokenizer,
    build_vector_env,
    seed_everything,
)
from promptgym.experiments.config import load_config
from promptgym.experiments.plots import plot_learning_curves
from promptgym.experiments.stats import mean_ci
from promptgym.rewards import clear_reward_caches

if TYPE_CHECKING:  # agents.baselines imports stable-baselines3 and trl (seconds): loaded when a run needs it
    from promptgym.agents.baselines import RunResult

REFERENCE = "sft"  # the shared SFT start itself, evaluated without any RL: what every LM variant has to beat
PPO_VARIANTS = ("ppo", "ppo+adm", "ppo+neg", "ppo+civalue", "diffchat")
BASELINES = ("sb3-ppo", "grpo", "rloo")
VARIANTS = (REFERENCE,) + PPO_VARIANTS + BASELINES
REWARDS = ("config", "integrity")
# --reward integrity: content integrity only, as a ratio (no image terms, so no renders)
INTEGRITY_OVERRIDES = (
    "reward.weights.aesthetic=0",
    "reward.weights.pickscore=0",
    "reward.integrity={mode: ratio}",
)
SHARED_SECTIONS = ("data", "env", "policy", "reward", "sft")  # must agree across variants of a seed
EVAL_SEED = 12345
# A run's entry in bench.json: these fields of its RunResult, in this order
RUN_FIELDS = ("variant", "seed", "curve", "eval_reward", "eval_components", "reward_calls", "budget", "wall_time_s",
              "start", "start_sha256", "info")


@dataclass
class BenchResult:
    """Every run of a benchmark, the settings it ran with, and where its files went."""

    runs: list[RunResult]
    variants: list[str]
    seeds: list[int]
    budget: int
    reward: str
    overrides: list[str]
    eval_episodes: int
    sft_wall_time_s: dict[int, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def of(self, variant: str) -> list[RunResult]:
        return [run for run in self.runs if run.variant == variant]


# ------------------------------------------------------------------------------------------------- inputs
def parse_variants(text: str | Sequence[str]) -> list[str]:
    """"ppo,grpo" or ["ppo", "grpo"] -> a checked list of variant names (order kept, no repeats)."""
    names = [v.strip() for v in text.split(",")] if isinstance(text, str) else [str(v).strip() for v in text]
    names = [v for v in names if v]
    unknown = [v for v in names if v not in VARIANTS]
    if not names or unknown:
        raise ValueError(f"variants={text!r}: unknown {unknown or 'empty list'}; expected names from {list(VARIANTS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"variants={text!r} names a variant twice; expected each at most once")
    return names


def variant_config(variant: str, seed: int | None, overrides: Sequence[str] = (), reward: str = "config"):
    """The config a variant runs with on `seed` (None: the config's): its preset (baselines: tiny), `overrides`,
    the reward choice."""

    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}; expected one of {list(VARIANTS)}")
    if reward not in REWARDS:
        raise ValueError(f"reward={reward!r}; expected one of {list(REWARDS)}")
    preset = variant if variant in PPO_VARIANTS else "tiny"  # the reference and the baselines: the tiny preset
    extra = list(INTEGRITY_OVERRIDES) if reward == "integrity" else []
    return load_config(preset, [*overrides, *extra, *([f"seed={seed}"] if seed is not None else [])])


def _check_shared(configs: dict[str, Any]) -> None:
    """The variants of a seed must agree on everything but `ppo` (they share one SFT start and one reward)."""
    first_name, first = next(iter(configs.items()))
    for name, config in configs.items():
        for section in SHARED_SECTIONS:
            if getattr(config, section) != getattr(first, section):
                raise ValueError(
                    f"variant {name!r} has a different {section!r} section than {first_name!r}; bench variants may "
                    "differ only in 'ppo' (they share one SFT start and one reward)"
                )


def weights_sha256(module: torch.nn.Module) -> str:
    """A fingerprint of a module's parameters and buffers (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# -------------------------------------------------------------------------------------------------- runs
def run_ppo_variant(
    variant: str,
    config: Any,
    policy: Any,
    tokenizer: Any,
    reward: Any,
    budget: int,
    eval_tasks: Sequence[Any],
    eval_episodes: int,
    eval_seed: int = EVAL_SEED,
) -> RunResult:
    """Our PPO (`config.ppo`) on `policy` (trained in place) until `PPOAgent.num_reward_calls >= budget`."""
    from promptgym.agents.baselines import RunResult, evaluate_lm

    start_sha = weights_sha256(policy)
    train_tasks = load_tasks(config.data.tasks, split=config.data.train_split)
    env = build_vector_env(config, train_tasks, tokenizer, reward, config.ppo.n_episodes)
    agent = PPOAgent(policy, env, config.ppo)
    curve: list[tuple[int, float]] = []
    last: dict[str, float] = {}
    start = time.perf_counter()
    while agent.num_reward_calls < budget:
        last = agent.step()
        curve.append((agent.num_reward_calls, float(last["env/reward_mean"])))
    wall_time_s = time.perf_counter() - start
    eval_env = _eval_env(config, eval_tasks, eval_episodes, tokenizer, reward)
    eval_reward, eval_components = evaluate_lm(policy.model, eval_env, eval_seed)
    info = {
        "updates": agent.num_updates,
        "episodes": agent.num_episodes,
        "last_kl": last.get("objective/kl"),
        "ppo": {k: v for k, v in dataclasses.asdict(config.ppo).items()},
    }
    return RunResult(variant, config.seed, curve, eval_reward, eval_components, agent.num_reward_calls, budget,
                     wall_time_s, "sft", start_sha, info)


def run_reference(
    config: Any, policy: Any, tokenizer: Any, reward: Any, budget: int, eval_tasks: Sequence[Any], eval_episodes: int,
    eval_seed: int = EVAL_SEED,
) -> RunResult:
    """The `sft` row: the seed's SFT policy evaluated as every variant is, with no training (0 reward calls)."""
    from promptgym.agents.baselines import RunResult, evaluate_lm

    start_sha = weights_sha256(policy)
    eval_reward, eval_components = evaluate_lm(policy.model, _eval_env(config, eval_tasks, eval_episodes, tokenizer,
                                                                       reward), eval_seed)
    return RunResult(REFERENCE, config.seed, [], eval_reward, eval_components, 0, budget, 0.0, "sft", start_sha, {})


def _eval_env(config: Any, eval_tasks: Sequence[Any], eval_episodes: int, tokenizer: Any, reward: Any):
    return build_vector_env(config, eval_tasks, tokenizer, reward, eval_episodes)


def run_baseline(
    variant: str,
    config: Any,
    policy: Any,
    tokenizer: Any,
    reward: Any,
    budget: int,
    eval_tasks: Sequence[Any],
    eval_episodes: int,
    eval_seed: int = EVAL_SEED,
    num_generations: int = 4,
) -> RunResult:
    """SB3 PPO (from scratch) or TRL GRPO / RLOO (on a copy of `policy`) with the config's env, tasks and sizes."""
    from promptgym.agents.baselines import run_sb3_ppo, run_trl

    tasks = load_tasks(config.data.tasks, split=config.data.train_split)
    common = dict(
        max_new_tokens=config.env.max_new_tokens,
        max_context_tokens=config.env.max_context_tokens,
        eval_tasks=list(eval_tasks),
        eval_episodes=eval_episodes,
        eval_seed=eval_seed,
    )
    if variant == "sb3-ppo":
        result = run_sb3_ppo(tasks, tokenizer, reward, budget, config.seed, n_envs=config.ppo.n_episodes, **common)
        start, start_sha = "scratch", None
    else:
        start, start_sha = "sft", weights_sha256(policy)
        result = run_trl(
            variant,
            policy,
            tokenizer,
            tasks,
            reward,
            budget,
            config.seed,
            batch_size=config.ppo.n_episodes,
            num_generations=num_generations,
            learning_rate=config.ppo.learning_rate,
            beta=config.ppo.kl_coef,
            **common,
        )
    info = {k: v for k, v in result.info.items() if k != "last_log"}
    return dataclasses.replace(result, variant=variant, curve=[(int(x), float(y)) for x, y in result.curve],
                               eval_reward=float(result.eval_reward), eval_components=dict(result.eval_components),
                               budget=budget, start=start, start_sha256=start_sha, info=info, trained=None)


def run_bench(
    variants: Sequence[str] = VARIANTS,
    seeds: int = 3,
    budget: int = 4096,
    out: str | os.PathLike = "runs/bench",
    overrides: Sequence[str] = (),
    reward: str = "config",
    eval_episodes: int = 64,
    progress: bool = True,
    on_run: Callable[[RunResult], Any] | None = None,
) -> BenchResult:
    """Train every variant on `seeds` seeds (config seed, +1, ...) for `budget` reward calls; write the table, plot
    and raw numbers into `out` (see the module doc). `on_run(run)` is called after each run."""


    variants = parse_variants(variants)
    for name, value in (("seeds", seeds), ("budget", budget), ("eval_episodes", eval_episodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}; expected a positive integer")
    first_seed = variant_config(variants[0], None, overrides, reward).seed  # --set seed=S starts from S
    seed_list = [first_seed + i for i in range(seeds)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = BenchResult([], variants, seed_list, budget, reward, list(overrides), eval_episodes)
    bar = tqdm(total=len(variants) * len(seed_list), desc="bench", unit="run", disable=not progress)
    try:
        for seed in seed_list:
            configs = {v: variant_config(v, seed, overrides, reward) for v in variants}
            _check_shared(configs)
            base = next(iter(configs.values()))
            seed_everything(seed)
            tokenizer = build_tokenizer(base)
            eval_tasks = load_tasks(base.data.tasks, split=base.data.eval_split)
            sft_policy = None
            if any(v != "sb3-ppo" for v in variants):
                bar.set_postfix_str(f"seed {seed}: SFT")
                sft_policy = build_policy(base, tokenizer)
                start = time.perf_counter()
                if base.sft.enabled:
                    train_tasks = load_tasks(base.data.tasks, split=base.data.train_split)
                    sft_warm_start(
                        sft_policy,
                        tokenizer,
                        [t for t in train_tasks if t.target is not None],
                        [t for t in eval_tasks if t.target is not None][:256],
                        config=base.sft,
                        progress=False,
                    )
                result.sft_wall_time_s[seed] = time.perf_counter() - start
            reward_fn = build_run_reward(base, tokenizer)
            for variant in variants:
                bar.set_postfix_str(f"seed {seed}: {variant}")
                config = configs[variant]
                clear_reward_caches(reward_fn)  # no variant profits from renders cached by an earlier one
                seed_everything(seed)
                policy = copy.deepcopy(sft_policy) if sft_policy is not None and variant != "sb3-ppo" else None
                if variant == REFERENCE:
                    run = run_reference(config, policy, tokenizer, reward_fn, budget, eval_tasks, eval_episodes)
                elif variant in PPO_VARIANTS:
                    run = run_ppo_variant(variant, config, policy, tokenizer, reward_fn, budget, eval_tasks,
                                          eval_episodes)
                else:
                    run = run_baseline(variant, config, policy, tokenizer, reward_fn, budget, eval_tasks,
                                       eval_episodes)
                result.runs.append(run)
                if on_run is not None:
                    on_run(run)
                bar.update(1)
                bar.write(
                    f"{variant:>12} seed {seed}: eval reward {run.eval_reward:.3f}, {run.reward_calls} reward calls, "
                    f"{run.wall_time_s:.0f} s"
                )
    finally:
        bar.close()
    result.files = write_bench(result, out)
    return result


# -------------------------------------------------------------------------------------------------- table
def display_components(names: Sequence[str]) -> list[str]:
    """One column per reward term: its delta when the term is scored in delta mode (what the total adds up), and
    the gold metrics (`gold/...`) of the synth world beside them."""
    names = list(names)
    terms = [n for n in names if "/" not in n or n.startswith("gold/")]
    return [f"{n}/delta" if f"{n}/delta" in names else n for n in terms]


def summary_rows(result: BenchResult, n_resamples: int = 2000) -> list[dict[str, Any]]:
    """Per variant: mean and 95% bootstrap CI over seeds of the eval reward and each component; means of the rest."""

    components = display_components(sorted({n for run in result.runs for n in run.eval_components}))
    rows = []
    for variant in result.variants:
        runs = result.of(variant)
        if not runs:
            continue
        row: dict[str, Any] = {"variant": variant, "start": runs[0].start, "seeds": len(runs)}
        for key, values in [("reward", [r.eval_reward for r in runs])] + [
            (name, [r.eval_components.get(name, math.nan) for r in runs]) for name in components
        ]:
            finite = [v for v in values if math.isfinite(v)]
            mean, low, high = mean_ci(finite, n_resamples=n_resamples) if finite else (math.nan,) * 3
            row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"] = mean, low, high
        row["reward_vs_sft"], row["reward_vs_sft_ci_low"], row["reward_vs_sft_ci_high"] = _paired_change(
            result, runs, n_resamples
        )
        row["wall_time_s"] = float(np.mean([r.wall_time_s for r in runs]))
        row["reward_calls"] = float(np.mean([r.reward_calls for r in runs]))
        row["reward_calls_min"] = min(r.reward_calls for r in runs)
        row["reward_calls_max"] = max(r.reward_calls for r in runs)
        rows.append(row)
    return rows


def _paired_change(result: BenchResult, runs: list[RunResult], n_resamples: int) -> tuple[float, float, float]:
    """Mean and 95% bootstrap CI over seeds of (eval reward - the same seed's SFT reference), for a variant that
    starts from SFT; nan when there is no reference row (or for SB3, which does not start from SFT)."""

    reference = {run.seed: run.eval_reward for run in result.of(REFERENCE)}
    changes = [run.eval_reward - reference[run.seed] for run in runs if run.start == "sft" and run.seed in reference]
    if not changes or all(run.variant == REFERENCE for run in runs):
        return (math.nan,) * 3
    return mean_ci(changes, n_resamples=n_resamples)


def _value_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys = list(rows[0]) if rows else []
    return [k for k in keys if k not in ("variant", "start", "seeds") and not k.endswith(("_ci_low", "_ci_high"))
            and not k.startswith(("wall_time", "reward_calls", "reward_vs_sft"))]


def _has_reference(rows: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(row["reward_vs_sft"]) for row in rows)


def _signed_ci_text(row: dict[str, Any], key: str) -> str:
    if not math.isfinite(row[key]):
        return "—"
    return f"{row[key]:+.3f} [{row[f'{key}_ci_low']:+.3f}, {row[f'{key}_ci_high']:+.3f}]"


def _ci_text(row: dict[str, Any], key: str) -> str:
    if not math.isfinite(row[key]):
        return "n/a"
    return f"{row[key]:.3f} [{row[f'{key}_ci_low']:.3f}, {row[f'{key}_ci_high']:.3f}]"


START_TEXT = {"sft": "SFT", "scratch": "scratch (no LM)"}


def markdown_table(result: BenchResult, rows: list[dict[str, Any]]) -> str:
    keys = _value_keys(rows)
    paired = ["reward vs SFT (95% CI)"] if _has_reference(rows) else []
    header = ["variant", "start", "seeds", *[f"eval {k} (95% CI)" for k in keys], *paired, "wall time (s)",
              "reward calls"]
    lines = [
        "# promptgym bench",
        "",
        f"- budget: {result.budget} reward calls per run; seeds {result.seeds}; reward: `{result.reward}`"
        + (" (content integrity ratio only)" if result.reward == "integrity" else " (the config's reward)"),
        f"- overrides: {result.overrides or 'none'}",
        f"- final score: mean over seeds of the eval reward of {result.eval_episodes} fresh episodes on the eval "
        "split (seeded, not counted in the budget); [95% percentile-bootstrap CI over seeds]",
        "- start: SFT = a copy of the seed's SFT'd tiny policy (shared by every LM variant of the seed); "
        "scratch = SB3 PPO, which has no language model",
        "- wall time: training only (mean over seeds; SFT and evaluation excluded)",
        *(["- sft: the SFT start evaluated with no RL; reward vs SFT: eval reward minus the same seed's sft row, "
           "mean [95% CI] over seeds"] if paired else []),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        calls = (f"{row['reward_calls']:.0f}" if row["reward_calls_min"] == row["reward_calls_max"]
                 else f"{row['reward_calls_min']}–{row['reward_calls_max']}")
        cells = [row["variant"], START_TEXT.get(row["start"], row["start"]), str(row["seeds"]),
                 *[_ci_text(row, k) for k in keys], *([_signed_ci_text(row, "reward_vs_sft")] if paired else []),
                 f"{row['wall_time_s']:.1f}", calls]
        lines.append("| " + " | ".join(cells) + " |")
    if result.reward == "config":
        lines += ["", "On the tiny stack the image terms come from random tiny models: they exercise the pipeline "
                      "and say nothing about image quality."]
    return "\n".join(lines) + "\n"


def print_table(result: BenchResult, rows: list[dict[str, Any]]) -> None:
    """The summary as a rich table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    keys = _value_keys(rows)
    paired = ["reward vs SFT [95% CI]"] if _has_reference(rows) else []
    table = Table(title=f"bench: {result.budget} reward calls, {len(result.seeds)} seed(s), reward={result.reward}")
    for column in ["variant", "start", *[f"{k} [95% CI]" for k in keys], *paired, "wall s", "reward calls"]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["variant"], START_TEXT.get(row["start"], row["start"]), *[_ci_text(row, k) for k in keys],
                      *([_signed_ci_text(row, "reward_vs_sft")] if paired else []), f"{row['wall_time_s']:.1f}",
                      f"{row['reward_calls']:.0f}")
    Console(width=max(160, Console().width)).print(table)


def write_bench(result: BenchResult, out: str | os.PathLike) -> list[Path]:
    """bench.md, bench.csv, bench.json and learning_curves.png in `out`."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(result)
    md = out / "bench.md"
    md.write_text(markdown_table(result, rows), encoding="utf-8")
    csv_path = out / "bench.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["variant"])
        writer.writeheader()
        writer.writerows(rows)
    raw = {
        "variants": result.variants,
        "seeds": result.seeds,
        "budget": result.budget,
        "reward": result.reward,
        "overrides": result.overrides,
        "eval_episodes": result.eval_episodes,
        "eval_seed": EVAL_SEED,
        "sft_wall_time_s": {str(k): v for k, v in result.sft_wall_time_s.items()},
        "summary": rows,
        "runs": [run.to_dict(RUN_FIELDS) for run in result.runs],
    }
    json_path = out / "bench.json"
    json_path.write_text(json.dumps(raw, indent=2, default=_json_default), encoding="utf-8")
    curves = {v: [run.curve for run in result.of(v)] for v in result.variants if result.of(v) and v != REFERENCE}
    if not curves:  # only the reference was run: nothing trained, no curve
        return [md, csv_path, json_path]
    plot = plot_learning_curves(curves, out / "learning_curves.png",
                                title=f"Learning curves, reward={result.reward} (mean over seeds)")
    return [md, csv_path, json_path, plot]


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)
