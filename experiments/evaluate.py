"""Evaluate a prompt-editing policy on test tasks, in the spirit of the DiffChat results table.

For every task the policy writes `samples_per_task` edited prompts. Per sample we record the total reward, each
reward term's raw score, content integrity (ratio and pass/fail at the scorer's threshold), semantic consistency,
the prompt length in words, and whether it beats the *unedited source prompt* (on the total reward and on each
term; ties count half). Per task we also measure the diversity of its samples (`promptgym.experiments.diversity`):
distinct-1 and distinct-2 (distinct / total word n-grams), the mean pairwise cosine distance of their semantic
embeddings (`diversity`) and the number of different scenes their words ask for (`distinct_scenes`); with one
sample per task these are NaN, with a note.

Every metric is reported with a 95% percentile-bootstrap confidence interval. The resampling unit is the **task**
(per-sample values are first averaged within their task): samples of one task are not independent, so
resampling samples would give intervals that are too narrow. `EvalResult.tasks` keeps every metric's per-task
value, so two evaluations pair per task (`paired_tables`, what `promptgym eval --against` prints).

Multi-step expansion (Prompt Expansion's multi-step, `steps=S`): each sample is a chain; step s gives the policy
the task with its source replaced by the chain's step s-1 prompt, the instruction and target unchanged
(`expansion_tasks`), and every step is scored against the original task, one table column per step.

    result = evaluate_policy(policy, tokenizer, tasks, reward, SemanticConsistencyScorer.from_pretrained())
    print(format_eval_table(result))
    write_eval(result, run_dir / "eval", "test")  # eval_test.csv/.md/_samples.jsonl/_tasks.csv, quality_diversity_test.png

`evaluate_run(run_dir)` does the same for a training run directory: its config, its latest checkpoint.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
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
from promptgym.experiments.diversity import DIVERSITY_METRICS, task_diversity
from promptgym.experiments.rundir import load_run_config, load_run_policy
from promptgym.experiments.stats import PairedChange, format_paired_table, mean_ci, paired_changes, win_indicators
from promptgym.rewards import (
    CompositeReward,
    ContentIntegrityScorer,
    EditResult,
    Scorer,
    SemanticConsistencyScorer,
    as_composite,
)
from promptgym.rewards.composite import UNNORMALIZED_COMPONENT
from promptgym.rewards.gold import attribute_misses, target_scene

__all__ = [
    "EvalResult",
    "Metric",
    "SemanticModel",
    "evaluate_policy",
    "evaluate_run",
    "expansion_tasks",
    "format_eval_table",
    "paired_changes_of",
    "paired_tables",
    "sample_edits",
    "step_seed",
    "write_eval",
    "write_task_records",
]


# ============================================================================================== results
@dataclass(frozen=True)
class Metric:
    """One row of the results table: the value, its 95% bootstrap CI over tasks and the number of tasks used, at
    multi-step expansion step `step` (1 = the policy's first edit, the only step of a one-step evaluation)."""

    name: str
    value: float
    low: float
    high: float
    n: int
    description: str = ""
    step: int = 1


@dataclass
class EvalResult:
    """Evaluation of a policy: the metrics table (every step's), every sample, the per-task values behind each
    metric (`tasks`: one `{"task_id", "step", metric: value}` record per task and step), the settings used and
    notes (e.g. NaN reasons).

    `result["reward"]` is step 1's metric; `result["reward", 2]` step 2's of a multi-step evaluation.
    """

    split: str
    metrics: list[Metric]
    samples: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)

    def __getitem__(self, key: str | tuple[str, int]) -> Metric:
        name, step = key if isinstance(key, tuple) else (key, 1)
        for metric in self.metrics:
            if metric.name == name and metric.step == step:
                return metric
        raise KeyError(f"no metric {name!r} at step {step}; metrics are {sorted({m.name for m in self.metrics})} "
                       f"at steps 1..{self.steps}")

    def __contains__(self, key: object) -> bool:
        name, step = key if isinstance(key, tuple) else (key, 1)
        return any(metric.name == name and metric.step == step for metric in self.metrics)

    @property
    def steps(self) -> int:
        """The number of multi-step expansion steps evaluated (1 for a plain evaluation)."""
        return max((m.step for m in self.metrics), default=1)

    def rows(self) -> list[dict[str, Any]]:
        """The table as plain dicts: metric, step, value, ci_low, ci_high, n_tasks, description."""
        return [
            {
                "metric": m.name,
                "step": m.step,
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


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of expansion step `step`: `seed` itself for step 1 (a one-step evaluation is unchanged),
    an independent stream (`numpy.random.SeedSequence([seed, step])`) for every later step."""
    if step == 1:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step)]).generate_state(1)[0])


def expansion_tasks(tasks: Sequence[EditTask], prompts: Sequence[str]) -> list[EditTask]:
    """The tasks of the next multi-step expansion step: `tasks[i]` with its source replaced by `prompts[i]` (the
    policy's own output of the previous step). The instruction, target and id stay: the policy is asked to apply
    the same instruction again, and gold content still compares with the scene the user asked for."""
    if len(tasks) != len(prompts):
        raise ValueError(f"{len(tasks)} tasks and {len(prompts)} prompts; expected one previous prompt per task")
    return [dataclasses.replace(task, source=prompt) for task, prompt in zip(tasks, prompts)]


def _context_tokens(tasks: Sequence[EditTask], tokenizer: Any, template: EditTemplate | None, minimum: int) -> int:
    """The longest templated context of `tasks` in tokens, at least `minimum`."""
    template = template or EditTemplate()
    lengths = [len(ids) for ids in tokenizer([template.context(task) for task in tasks])["input_ids"]]
    return max([minimum, *lengths])


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
    steps: int = 1,
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

    `steps` > 1 is multi-step expansion: each of a task's `samples_per_task` candidates is a chain, and step s
    edits the chain's step s-1 output with the same instruction (`expansion_tasks`; its own sampling seed,
    `step_seed`). Every step is scored against the *original* task (its source for the gains and win rates, its
    target for gold content, its intent for semantic consistency), so the steps' tables compare directly. A
    context longer than `max_context_tokens` in a later step widens the context for that step (with a note).
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks is empty; expected at least one EditTask to evaluate on")
    samples_per_task = _check_int("samples_per_task", samples_per_task, 1)
    steps = _check_int("steps", steps, 1)
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("batch_size", batch_size, 1)
    reward = as_composite(reward)
    reward_state = copy.deepcopy(reward.state_dict())
    notes: list[str] = []
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
        outputs = [(prompts, totals, components)]
        for step in range(2, steps + 1):
            chain = expansion_tasks(edit_tasks, outputs[-1][0])
            context = _context_tokens(chain, tokenizer, template, max_context_tokens)
            if context > max_context_tokens:
                notes.append(f"step {step}: contexts widened from max_context_tokens={max_context_tokens} to "
                             f"{context} tokens to hold the previous step's prompts")
            # The env's own reward would measure each edit against the previous step's prompt; a text-only scorer
            # stands in for it while sampling, and the edits are scored once, below, against the original tasks.
            _, step_prompts, _, _ = sample_edits(policy, tokenizer, chain, ContentIntegrityScorer(), 1, max_new_tokens,
                                                 step_seed(seed, step), typical_mass, template, context, batch_size)
            scored = reward([EditResult(task, prompt) for task, prompt in zip(edit_tasks, step_prompts)])
            outputs.append((step_prompts, scored.total, scored.components))
    finally:
        reward.load_state_dict(reward_state)
    k = samples_per_task
    metrics: list[Metric] = []
    samples: list[dict[str, Any]] = []
    task_records: list[dict[str, Any]] = []
    step_sources = [task.source for task in edit_tasks]
    for step, (prompts, totals, components) in enumerate(outputs, start=1):
        table = _step_table(tasks, edit_tasks, prompts, totals, components, source, reward, semantic_scorer, k)
        metrics += [_metric(name, values, description, confidence, n_resamples, seed, step)
                    for name, values, description in table.rows]
        for record, step_source in zip(table.samples, step_sources):
            record.update(step=step, step_source=step_source)
        samples += table.samples
        task_records += [
            {"task_id": task.id, "step": step, **{name: float(values[t]) for name, values, _ in table.rows}}
            for t, task in enumerate(tasks)
        ]
        notes += [f"step {step}: {note}" if steps > 1 and step > 1 else note for note in table.notes]
        step_sources = prompts
    settings = {
        "split": split,
        "num_tasks": len(tasks),
        "samples_per_task": k,
        "steps": steps,
        "max_new_tokens": int(max_new_tokens),
        "seed": int(seed),
        "typical_mass": typical_mass,
        "confidence": confidence,
        "n_resamples": int(n_resamples),
        "reward": repr(reward),
        "ci_unit": "task",
    }
    return EvalResult(split=split, metrics=metrics, samples=samples, settings=settings, notes=_unique(notes),
                      tasks=task_records)


def _unique(notes: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(notes))


@dataclass
class _StepTable:
    rows: list[tuple[str, np.ndarray, str]]  # (name, per-task values [T], description)
    samples: list[dict[str, Any]]
    notes: list[str]


def _step_table(tasks, edit_tasks, prompts, totals, components, source, reward, semantic_scorer, k) -> _StepTable:
    """The metrics of one step's edits (task-major, `k` per task) against the original tasks and their sources."""
    results = [EditResult(task, prompt) for task, prompt in zip(edit_tasks, prompts)]
    notes: list[str] = []
    rows: list[tuple[str, np.ndarray, str]] = []

    def add(name: str, per_sample: Any, description: str) -> None:
        rows.append((name, _per_task_means(np.asarray(per_sample, dtype=np.float64), k), description))

    source_total = np.repeat(source.total.double().numpy(), k)
    add("reward", totals.double().numpy(), "total reward of the edited prompt")
    if UNNORMALIZED_COMPONENT in components:
        add(UNNORMALIZED_COMPONENT, components[UNNORMALIZED_COMPONENT].double().numpy(),
            "weighted sum of the reward terms before normalisation (comparable between evaluations)")
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
    if "gold/text_content" in getattr(reward, "monitors", {}):  # the synth world: where the words miss the target
        rows += _attribute_miss_rows(edit_tasks, prompts, k)
    details = [integrity.details(result) for result in results]
    add("integrity_pass_rate", [d.passed for d in details], f"content integrity ratio >= {integrity.threshold:g}")
    add("integrity_ratio", [d.ratio for d in details], "fraction of required keywords kept (minus forbidden)")
    embeddings = None
    if semantic_scorer is None:
        notes.append("semantic_consistency and diversity are NaN: no semantic_scorer was given")
        add("semantic_consistency", np.full(len(results), np.nan), "cosine(intent, edited prompt), sentence embeddings")
    else:
        semantic = semantic_scorer(results).detach().cpu().double().numpy()
        add("semantic_consistency", semantic, f"cosine(intent, edited prompt) under {semantic_scorer.name!r}")
        embeddings = list(semantic_scorer.embed(prompts).detach().cpu().reshape(len(tasks), k, -1))
    add("prompt_words", [len(prompt.split()) for prompt in prompts], "edited prompt length in words")
    rows += _diversity_rows(prompts, embeddings, k, notes)
    add("win_rate_reward", win_indicators(totals, source_total), "P(edited total reward > source's), ties half")
    for name in term_names:
        before = np.repeat(source.components[name].double().numpy(), k)
        add(f"win_rate_{name}", win_indicators(components[name], before), f"P(edited {name} > source's), ties half")
    samples = _sample_records(edit_tasks, prompts, totals, components, source_total, details, k)
    if semantic_scorer is not None:
        for record, value in zip(samples, semantic):
            record["semantic_consistency"] = float(value)
    return _StepTable(rows, samples, notes)


def _attribute_miss_rows(edit_tasks: Sequence[EditTask], prompts: Sequence[str], k: int
                         ) -> list[tuple[str, np.ndarray, str]]:
    """`text_missed/<attribute>/<kept|edited>` per task (`attribute_misses`): the share of its samples whose words ask
    for another value of the attribute than the target scene's, for the attributes its instruction kept (copying
    errors) or changed (edits not done); a row only where some task has that attribute of that kind."""
    misses = attribute_misses(prompts, [task.source for task in edit_tasks], [target_scene(task) for task in edit_tasks])
    rows = []
    for name, values in misses.items():
        per_task = _per_task_means(values.double().numpy(), k)  # NaN for a whole task or none of its samples
        if np.isfinite(per_task).any():
            attribute, kind = name.split("/")
            which = "kept (a copying error)" if kind == "kept" else "changed (an edit not done)"
            rows.append((f"text_missed/{name}", per_task,
                         f"share of samples asking for another {attribute} than the target's, which the instruction {which}"))
    return rows


def _diversity_rows(prompts: Sequence[str], embeddings: list[torch.Tensor] | None, k: int, notes: list[str]
                    ) -> list[tuple[str, np.ndarray, str]]:
    """`DIVERSITY_METRICS` per task (NaN with a note where undefined: k < 2, or no n-gram in a task's samples)."""
    per_task = task_diversity([prompts[i : i + k] for i in range(0, len(prompts), k)], embeddings)
    if k < 2:
        notes.append(f"{', '.join(DIVERSITY_METRICS)} are NaN: they measure how a task's samples differ and need "
                     f"samples_per_task >= 2 (got {k})")
    else:
        for name in ("distinct_1", "distinct_2"):
            missing = int(np.isnan(per_task[name]).sum())
            if missing:
                notes.append(f"{name} is NaN for {missing} of {len(per_task[name])} tasks whose samples have no "
                             f"{name[-1]}-word sequence (empty or shorter prompts); left out of its mean")
    return [(name, per_task[name], description) for name, description in DIVERSITY_METRICS.items()]


def _metric(
    name: str, per_task: np.ndarray, description: str, confidence: float, n_resamples: int, seed: int, step: int = 1
) -> Metric:
    finite = per_task[np.isfinite(per_task)]
    if len(finite) == 0:
        return Metric(name, math.nan, math.nan, math.nan, 0, description, step)
    value, low, high = mean_ci(finite, confidence, n_resamples, seed)
    return Metric(name, value, low, high, len(finite), description, step)


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


def _metrics_by_name(result: EvalResult) -> list[tuple[str, str, dict[int, Metric]]]:
    """(name, description, {step: metric}) per metric, in table order."""
    table: dict[str, tuple[str, dict[int, Metric]]] = {}
    for m in result.metrics:
        table.setdefault(m.name, (m.description, {}))[1][m.step] = m
    return [(name, description, by_step) for name, (description, by_step) in table.items()]


def _cell(m: Metric | None) -> str:
    return "" if m is None else f"{_fmt(m.value)} [{_fmt(m.low)}, {_fmt(m.high)}]"


def _title(result: EvalResult) -> str:
    s = result.settings
    steps = f", {result.steps} expansion steps" if result.steps > 1 else ""
    return (f"eval on {result.split}: {s.get('num_tasks', '?')} tasks x {s.get('samples_per_task', '?')} samples"
            f"{steps}, {int(100 * s.get('confidence', 0.95))}% bootstrap CI over tasks")


def format_eval_table(result: EvalResult) -> str:
    """The results table as text (a rich table), for printing; a multi-step evaluation has a column per step."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=_title(result))
    table.add_column("metric", overflow="fold")
    if result.steps == 1:
        for column in ("value", "CI", "n"):
            table.add_column(column, justify="right", overflow="fold")
    else:
        for step in range(1, result.steps + 1):
            table.add_column(f"step {step} [CI]", justify="right", overflow="fold")
    table.add_column("what", overflow="fold")
    for name, description, by_step in _metrics_by_name(result):
        if result.steps == 1:
            m = by_step[1]
            table.add_row(name, _fmt(m.value), f"[{_fmt(m.low)}, {_fmt(m.high)}]", str(m.n), description)
        else:
            table.add_row(name, *(_cell(by_step.get(step)) for step in range(1, result.steps + 1)), description)
    buffer = io.StringIO()
    console = Console(file=buffer, width=120 + 12 * (result.steps - 1), color_system=None, force_terminal=False)
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    return buffer.getvalue()


def _markdown(result: EvalResult) -> str:
    s = result.settings
    steps = (f", {result.steps} multi-step expansion steps (step s edits step s-1's prompt with the same "
             "instruction; every step scored against the original task)" if result.steps > 1 else "")
    lines = [
        f"# Evaluation on `{result.split}`",
        "",
        f"{s.get('num_tasks')} tasks x {s.get('samples_per_task')} samples per task{steps}, seed {s.get('seed')}, "
        f"typical_mass {s.get('typical_mass')}; {int(100 * s.get('confidence', 0.95))}% percentile-bootstrap "
        f"CI over tasks ({s.get('n_resamples')} resamples). Reward: `{s.get('reward')}`.",
        "",
    ]
    if result.steps == 1:
        lines += ["| metric | value | 95% CI | n tasks | what |", "|---|---:|---:|---:|---|"]
        for name, description, by_step in _metrics_by_name(result):
            m = by_step[1]
            lines.append(f"| {name} | {_fmt(m.value)} | [{_fmt(m.low)}, {_fmt(m.high)}] | {m.n} | {description} |")
    else:
        steps_header = " | ".join(f"step {step} [95% CI]" for step in range(1, result.steps + 1))
        lines += [f"| metric | {steps_header} | what |", "|---|" + "---:|" * result.steps + "---|"]
        for name, description, by_step in _metrics_by_name(result):
            cells = " | ".join(_cell(by_step.get(step)) for step in range(1, result.steps + 1))
            lines.append(f"| {name} | {cells} | {description} |")
    if result.notes:
        lines += ["", *[f"- note: {note}" for note in result.notes]]
    return "\n".join(lines) + "\n"


def write_eval(result: EvalResult, out_dir: str | os.PathLike, split: str | None = None) -> list[Path]:
    """Write `eval_<split>.csv` (one row per metric and step), `eval_<split>.md`, `eval_<split>_samples.jsonl`,
    `eval_<split>_tasks.csv` (every metric's per-task values) and, when a task has two or more samples,
    `quality_diversity_<split>.png` (`plots.plot_quality_diversity`) to `out_dir`; return the paths."""
    split = _check_split_name(result.split if split is None else split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, samples_path = (
        out / f"eval_{split}.csv",
        out / f"eval_{split}.md",
        out / f"eval_{split}_samples.jsonl",
    )
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        fields = ["metric", "step", "value", "ci_low", "ci_high", "n_tasks", "description"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in result.rows():
            writer.writerow({**row, **{k: repr(float(row[k])) for k in ("value", "ci_low", "ci_high")}})
    md_path.write_text(_markdown(result), encoding="utf-8")
    write_samples(result.samples, samples_path)
    paths = [csv_path, md_path, samples_path, write_task_records(result.tasks, out / f"eval_{split}_tasks.csv")]
    if any(math.isfinite(record.get("diversity", math.nan)) or math.isfinite(record.get("distinct_1", math.nan))
           for record in result.tasks):
        from promptgym.experiments.plots import plot_quality_diversity

        label = str(result.settings.get("label", "policy"))
        paths.append(plot_quality_diversity({label: result.tasks}, out / f"quality_diversity_{split}.png",
                                            title=f"{_title(result)}"))
    return paths


def write_task_records(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """`EvalResult.tasks` as CSV: task_id, step, then one column per metric (its per-task mean; nan = undefined)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for record in records for key in record))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields or ["task_id", "step"])
        writer.writeheader()
        for record in records:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in record.items()})
    return path


def paired_changes_of(before: EvalResult, after: EvalResult, step: int = 1, confidence: float = 0.95,
                      n_resamples: int = 2000, seed: int = 0) -> list[PairedChange]:
    """Paired per-task changes from `before` to `after` (two evaluations of the same tasks) at expansion `step`:
    the reward, every component and `integrity_ratio` from the samples, then the `DIVERSITY_METRICS` and, on the
    synth world, the `text_missed/...` shares from the per-task records (they exist per task, not per sample)."""
    def at_step(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [record for record in records if record.get("step", 1) == step]

    samples = paired_changes(at_step(before.samples), at_step(after.samples), confidence=confidence,
                             n_resamples=n_resamples, seed=seed)
    tasks_before, tasks_after = at_step(before.tasks), at_step(after.tasks)
    misses = [name for name in (tasks_after[0] if tasks_after else {}) if name.startswith("text_missed/")]
    per_task = paired_changes(tasks_before, tasks_after, names=[*DIVERSITY_METRICS, *misses], confidence=confidence,
                              n_resamples=n_resamples, seed=seed)
    return samples + per_task


def paired_tables(before: EvalResult, after: EvalResult, before_label: str, after_label: str) -> str:
    """Markdown: `paired_changes_of` as a table (`stats.format_paired_table`), one section per expansion step."""
    steps = min(before.steps, after.steps)
    sections = []
    for step in range(1, steps + 1):
        table = "\n".join(format_paired_table(paired_changes_of(before, after, step), before_label, after_label))
        sections.append(table if steps == 1 else f"## step {step}\n\n{table}")
    return "\n\n".join(sections) + "\n"


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
    steps: int = 1,
    write: bool = True,
) -> EvalResult:
    """Evaluate a run's latest checkpoint on `split` and (with `write`) save the table to `run_dir/eval/`.

    What is not given comes from the run's `config.yaml` (`config`: an `ExperimentConfig` or its dict to use
    instead): the tasks (`data.tasks`), the reward (built exactly as training built it), `env.max_new_tokens`,
    `env.max_context_tokens` and `typical_mass` ("config" = `ppo.typical_mass`, i.e. sample as training did).
    The semantic scorer defaults to the offline all-MiniLM-L6-v2. `steps` > 1: multi-step expansion (see
    `evaluate_policy`).
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
        steps=steps,
    )
    result.settings["checkpoint"] = str(policy_dir.parent)
    result.settings["label"] = "latest" if checkpoint is None else Path(checkpoint).name
    result.settings["run_dir"] = str(run_dir)
    if write:
        write_eval(result, Path(run_dir) / "eval", split)
    return result
