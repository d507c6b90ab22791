"""Evaluate a prompt-editing policy on test tasks, in the spirit of the DiffChat results table.

For every task the policy writes `samples_per_task` edited prompts. Per sample we record the total reward, each
reward term's raw score, content integrity (ratio and pass/fail at the scorer's threshold), semantic consistency,
the prompt length in words, and whether it beats the *unedited source prompt* (on the total reward and on each
term; ties count half). Per task we also measure diversity: the mean pairwise cosine distance between the
semantic embeddings of its samples.

Every metric is reported with a 95% percentile-bootstrap confidence interval. The resampling unit is the **task**
(per-sample values are first averaged within their task): samples of one task are not independent, so
resampling samples would give intervals that are too narrow.

    result = evaluate_policy(policy, tokenizer, tasks, reward, SemanticConsistencyScorer.from_pretrained())
    print(format_eval_table(result))
    write_eval(result, run_dir / "eval", "test")      # eval_test.csv, eval_test.md, eval_test_samples.jsonl

`evaluate_run(run_dir)` does the same for a training run directory: its config, its latest checkpoint.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.rollout import sample_episodes
from promptgym.envs import EditTask, EditTemplate, PromptEditVectorEnv, load_tasks
from promptgym.experiments.builders import build_run_reward
from promptgym.experiments.config import config_from_dict
from promptgym.experiments.rundir import load_run_config, load_run_policy
from promptgym.experiments.stats import mean_ci, task_diversities, win_indicators
from promptgym.rewards import (
    CompositeReward,
    ContentIntegrityScorer,
    EditResult,
    Scorer,
    SemanticConsistencyScorer,
    as_composite,
)

__all__ = [
    "EvalResult",
    "Metric",
    "SemanticModel",
    "evaluate_policy",
    "evaluate_run",
    "format_eval_table",
    "sample_edits",
    "write_eval",
]


# ============================================================================================== results
@dataclass(frozen=True)
class Metric:
    """One row of the results table: the value, its 95% bootstrap CI over tasks and the number of tasks used."""

    name: str
    value: float
    low: float
    high: float
    n: int
    description: str = ""


@dataclass
class EvalResult:
    """Evaluation of a policy: the metrics table, every sample, the settings used and notes (e.g. NaN reasons)."""

    split: str
    metrics: list[Metric]
    samples: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"no metric {name!r}; metrics are {[m.name for m in self.metrics]}")

    def __contains__(self, name: object) -> bool:
        return any(metric.name == name for metric in self.metrics)

    def rows(self) -> list[dict[str, Any]]:
        """The table as plain dicts: metric, value, ci_low, ci_high, n_tasks, description."""
        return [
            {
                "metric": m.name,
                "value": m.value,
                "ci_low": m.low,
                "ci_high": m.high,
                "n_tasks": m.n,
                "description": m.description,
            }
            for m in self.metrics
        ]


class SemanticModel(Protocol):
    """What evaluation needs from a semantic scorer (`promptgym.rewards.SemanticConsistencyScorer` fits)."""

    name: str

    def __call__(self, results: Sequence[EditResult]) -> torch.Tensor: ...

    def embed(self, texts: Sequence[str]) -> torch.Tensor: ...


# ============================================================================================== sampling
def sample_edits(
    policy: PolicyWithValue,
    tokenizer: Any,
    tasks: Sequence[EditTask],
    reward: CompositeReward,
    samples_per_task: int,
    max_new_tokens: int,
    seed: int,
    typical_mass: float | None = None,
    template: EditTemplate | None = None,
    max_context_tokens: int = 64,
    batch_size: int = 32,
) -> tuple[list[EditTask], list[str], torch.Tensor, dict[str, torch.Tensor]]:
    """`samples_per_task` edited prompts per task: (tasks, prompts, total reward [M], components {name: [M]}).

    Rows are task-major (task 0's samples first). Episodes run in batches of `batch_size` through
    `RolloutCollector`, all drawing from one torch generator seeded by `seed`.
    """
    repeated = [task for task in tasks for _ in range(samples_per_task)]
    generator = torch.Generator().manual_seed(seed)
    prompts: list[str] = []
    scores: list[torch.Tensor] = []
    components: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(repeated), batch_size):
        chunk = repeated[start : start + batch_size]
        env = PromptEditVectorEnv(
            len(chunk),
            tasks=chunk,
            autoreset_mode="disabled",
            tokenizer=tokenizer,
            reward=reward,
            template=template,
            max_new_tokens=max_new_tokens,
            max_context_tokens=max_context_tokens,
        )
        batch = sample_episodes(policy, env, seed + start, chunk, typical_mass, generator)
        prompts += batch.prompts
        scores.append(batch.scores)
        for name, values in batch.components.items():
            components.setdefault(name, []).append(values)
    return repeated, prompts, torch.cat(scores), {k: torch.cat(v) for k, v in components.items()}


# ============================================================================================== evaluation
def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r}; expected an integer >= {low}")
    return int(value)


def _integrity_scorer(reward: CompositeReward) -> ContentIntegrityScorer:
    """The reward's content-integrity scorer (its threshold and penalty), else the default one."""
    for scorer, _ in reward.terms.values():
        if isinstance(scorer, ContentIntegrityScorer):
            return scorer
    return ContentIntegrityScorer()


def _per_task_means(values: np.ndarray, samples_per_task: int) -> np.ndarray:
    return values.reshape(-1, samples_per_task).mean(1)


def evaluate_policy(
    policy: PolicyWithValue,
    tokenizer: Any,
    tasks: Sequence[EditTask],
    reward: CompositeReward | Scorer,
    semantic_scorer: SemanticModel | None,
    samples_per_task: int = 4,
    max_new_tokens: int = 48,
    seed: int = 0,
    typical_mass: float | None = None,
    *,
    template: EditTemplate | None = None,
    max_context_tokens: int = 64,
    batch_size: int = 32,
    split: str = "test",
    confidence: float = 0.95,
    n_resamples: int = 2000,
) -> EvalResult:
    """Sample `samples_per_task` edits per task and compute the results table (see the module docstring).

    `reward` scores the edits and their unedited sources (its running normalisation statistics, if any, are
    restored afterwards, so evaluation never changes training state). `semantic_scorer` (e.g.
    `SemanticConsistencyScorer.from_pretrained()`) gives semantic consistency and the embeddings for diversity;
    with None both are NaN and a note says so.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks is empty; expected at least one EditTask to evaluate on")
    samples_per_task = _check_int("samples_per_task", samples_per_task, 1)
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("batch_size", batch_size, 1)
    reward = as_composite(reward)
    reward_state = copy.deepcopy(reward.state_dict())
    try:
        edit_tasks, prompts, totals, components = sample_edits(
            policy,
            tokenizer,
            tasks,
            reward,
            samples_per_task,
            max_new_tokens,
            seed,
            typical_mass,
            template,
            max_context_tokens,
            batch_size,
        )
        source = reward([EditResult(task, task.source) for task in tasks])  # once per task; renders are cached
    finally:
        reward.load_state_dict(reward_state)
    k = samples_per_task
    results = [EditResult(task, prompt) for task, prompt in zip(edit_tasks, prompts)]
    notes: list[str] = []
    rows: list[tuple[str, np.ndarray, str]] = []  # (name, per-task values [T], description)

    def add(name: str, per_sample: Any, description: str) -> None:
        rows.append((name, _per_task_means(np.asarray(per_sample, dtype=np.float64), k), description))

    source_total = np.repeat(source.total.double().numpy(), k)
    add("reward", totals.double().numpy(), "total reward of the edited prompt")
    integrity = _integrity_scorer(reward)
    term_names = list(reward.terms)
    for name in term_names:
        if isinstance(reward.terms[name][0], ContentIntegrityScorer):
            continue
        edited = components[name].double().numpy()
        before = np.repeat(source.components[name].double().numpy(), k)
        add(name, edited, f"{name} score of the edited prompt (raw, not delta)")
        add(f"{name}_gain", edited - before, f"{name}: edited minus unedited source prompt")
    for name in getattr(reward, "monitors", {}):  # gold metrics of the synth world: beside the proxy, never in it
        edited = components[name].double().numpy()
        missing = int(np.isnan(edited).sum())
        if missing:
            notes.append(f"{name} is NaN for {missing} of {len(edited)} samples: their tasks have no target scene "
                         "(NaN means unknown, not 0)")
        before = np.repeat(source.components[name].double().numpy(), k)
        add(name, edited, f"{name} of the edited prompt's renders (a monitor, not in the reward)")
        add(f"{name}_gain", edited - before, f"{name}: edited minus unedited source prompt")
    details = [integrity.details(result) for result in results]
    add("integrity_pass_rate", [d.passed for d in details], f"content integrity ratio >= {integrity.threshold:g}")
    add("integrity_ratio", [d.ratio for d in details], "fraction of required keywords kept (minus forbidden)")
    per_task_embeddings: list[torch.Tensor] | None = None
    if semantic_scorer is None:
        notes.append("semantic_consistency and diversity are NaN: no semantic_scorer was given")
        add("semantic_consistency", np.full(len(results), np.nan), "cosine(intent, edited prompt), sentence embeddings")
    else:
        semantic = semantic_scorer(results).detach().cpu().double().numpy()
        add("semantic_consistency", semantic, f"cosine(intent, edited prompt) under {semantic_scorer.name!r}")
        embeddings = semantic_scorer.embed(prompts).detach().cpu()
        per_task_embeddings = list(embeddings.reshape(len(tasks), k, -1))
    add("prompt_words", [len(prompt.split()) for prompt in prompts], "edited prompt length in words")
    if per_task_embeddings is not None and k >= 2:
        rows.append(
            ("diversity", task_diversities(per_task_embeddings), "mean pairwise cosine distance of a task's samples")
        )
    else:
        if semantic_scorer is not None:
            notes.append(f"diversity is NaN: it needs samples_per_task >= 2 (got {k})")
        rows.append(("diversity", np.full(len(tasks), np.nan), "mean pairwise cosine distance of a task's samples"))
    add("win_rate_reward", win_indicators(totals, source_total), "P(edited total reward > source's), ties half")
    for name in term_names:
        before = np.repeat(source.components[name].double().numpy(), k)
        add(f"win_rate_{name}", win_indicators(components[name], before), f"P(edited {name} > source's), ties half")
    metrics = [_metric(name, values, description, confidence, n_resamples, seed) for name, values, description in rows]
    samples = _sample_records(edit_tasks, prompts, totals, components, source_total, details, k)
    if semantic_scorer is not None:
        for record, value in zip(samples, semantic):
            record["semantic_consistency"] = float(value)
    settings = {
        "split": split,
        "num_tasks": len(tasks),
        "samples_per_task": k,
        "max_new_tokens": int(max_new_tokens),
        "seed": int(seed),
        "typical_mass": typical_mass,
        "confidence": confidence,
        "n_resamples": int(n_resamples),
        "reward": repr(reward),
        "ci_unit": "task",
    }
    return EvalResult(split=split, metrics=metrics, samples=samples, settings=settings, notes=notes)


def _metric(
    name: str, per_task: np.ndarray, description: str, confidence: float, n_resamples: int, seed: int
) -> Metric:
    finite = per_task[np.isfinite(per_task)]
    if len(finite) == 0:
        return Metric(name, math.nan, math.nan, math.nan, 0, description)
    value, low, high = mean_ci(finite, confidence, n_resamples, seed)
    return Metric(name, value, low, high, len(finite), description)


def _sample_records(tasks, prompts, totals, components, source_total, details, k) -> list[dict[str, Any]]:
    records = []
    for i, (task, prompt) in enumerate(zip(tasks, prompts)):
        records.append(
            {
                "task_id": task.id,
                "sample": i % k,
                "source": task.source,
                "instruction": task.instruction,
                "target": task.target,
                "prompt": prompt,
                "reward": float(totals[i]),
                "source_reward": float(source_total[i]),
                "components": {name: float(values[i]) for name, values in components.items()},
                "integrity_ratio": details[i].ratio,
                "integrity_passed": details[i].passed,
                "prompt_words": len(prompt.split()),
            }
        )
    return records


# ============================================================================================== output
def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def format_eval_table(result: EvalResult) -> str:
    """The results table as text (a rich table), for printing."""
    from rich.console import Console
    from rich.table import Table

    s = result.settings
    title = (
        f"eval on {result.split}: {s.get('num_tasks', '?')} tasks x {s.get('samples_per_task', '?')} samples, "
        f"{int(100 * s.get('confidence', 0.95))}% bootstrap CI over tasks"
    )
    table = Table(title=title)
    for column, justify in (("metric", "left"), ("value", "right"), ("CI", "right"), ("n", "right"), ("what", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for m in result.metrics:
        table.add_row(m.name, _fmt(m.value), f"[{_fmt(m.low)}, {_fmt(m.high)}]", str(m.n), m.description)
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, color_system=None, force_terminal=False)
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    return buffer.getvalue()


def _markdown(result: EvalResult) -> str:
    s = result.settings
    lines = [
        f"# Evaluation on `{result.split}`",
        "",
        f"{s.get('num_tasks')} tasks x {s.get('samples_per_task')} samples per task, seed {s.get('seed')}, "
        f"typical_mass {s.get('typical_mass')}; {int(100 * s.get('confidence', 0.95))}% percentile-bootstrap "
        f"CI over tasks ({s.get('n_resamples')} resamples). Reward: `{s.get('reward')}`.",
        "",
        "| metric | value | 95% CI | n tasks | what |",
        "|---|---:|---:|---:|---|",
    ]
    for m in result.metrics:
        lines.append(f"| {m.name} | {_fmt(m.value)} | [{_fmt(m.low)}, {_fmt(m.high)}] | {m.n} | {m.description} |")
    if result.notes:
        lines += ["", *[f"- note: {note}" for note in result.notes]]
    return "\n".join(lines) + "\n"


def write_eval(result: EvalResult, out_dir: str | os.PathLike, split: str | None = None) -> list[Path]:
    """Write `eval_<split>.csv`, `eval_<split>.md` and `eval_<split>_samples.jsonl` to `out_dir`; return paths."""
    split = _check_split_name(result.split if split is None else split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, samples_path = (
        out / f"eval_{split}.csv",
        out / f"eval_{split}.md",
        out / f"eval_{split}_samples.jsonl",
    )
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["metric", "value", "ci_low", "ci_high", "n_tasks", "description"])
        writer.writeheader()
        for row in result.rows():
            writer.writerow({**row, **{k: repr(float(row[k])) for k in ("value", "ci_low", "ci_high")}})
    md_path.write_text(_markdown(result), encoding="utf-8")
    write_samples(result.samples, samples_path)
    return [csv_path, md_path, samples_path]


def write_samples(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """One JSON object per sample record (`EvalResult.samples`), parent folders made; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def _check_split_name(split: str) -> str:
    """The split names the eval files (`eval_<split>.csv`): a non-empty name without path separators."""
    if not split or any(c in split for c in "/\\"):
        raise ValueError(f"split={split!r}; expected a non-empty name without path separators")
    return split


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str = "test",
    *,
    samples_per_task: int = 4,
    seed: int = 0,
    config: Any = None,
    checkpoint: str | os.PathLike | None = None,
    tasks: Sequence[EditTask] | None = None,
    reward: CompositeReward | None = None,
    semantic_scorer: SemanticModel | None = None,
    typical_mass: float | None | str = "config",
    write: bool = True,
) -> EvalResult:
    """Evaluate a run's latest checkpoint on `split` and (with `write`) save the table to `run_dir/eval/`.

    What is not given comes from the run's `config.yaml` (`config`: an `ExperimentConfig` or its dict to use
    instead): the tasks (`data.tasks`), the reward (built exactly as training built it), `env.max_new_tokens`,
    `env.max_context_tokens` and `typical_mass` ("config" = `ppo.typical_mass`, i.e. sample as training did).
    The semantic scorer defaults to the offline all-MiniLM-L6-v2.
    """
    if isinstance(config, Mapping):
        config = config_from_dict(config)
    if write:
        _check_split_name(split)
    config = load_run_config(run_dir) if config is None else config
    tasks = load_tasks(config.data.tasks, split=split) if tasks is None else tasks  # a bad split fails before loading
    policy, tokenizer, config, policy_dir = load_run_policy(run_dir, checkpoint, config)
    reward = build_run_reward(config, tokenizer) if reward is None else reward
    semantic_scorer = SemanticConsistencyScorer.from_pretrained() if semantic_scorer is None else semantic_scorer
    result = evaluate_policy(
        policy,
        tokenizer,
        tasks,
        reward,
        semantic_scorer,
        samples_per_task=samples_per_task,
        max_new_tokens=config.env.max_new_tokens,
        seed=seed,
        typical_mass=config.ppo.typical_mass if typical_mass == "config" else typical_mass,
        max_context_tokens=config.env.max_context_tokens,
        split=split,
    )
    result.settings["checkpoint"] = str(policy_dir.parent)
    result.settings["run_dir"] = str(run_dir)
    if write:
        write_eval(result, Path(run_dir) / "eval", split)
    return result
