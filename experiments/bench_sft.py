"""Benchmark: the SFT warm start on the tiny default policy, and the same run through TRL's SFTTrainer.

    python -m promptgym.experiments.bench_sft [--threads 2] [--repeats 1] [--max-steps N] [--skip-trl]
                                              [--trl-defaults-steps 20]

Policy: `PolicyWithValue.tiny(default_tokenizer(), seed=0)`; data: demo train split; held-out loss: mean loss
per completion token on the demo test split (`completion_loss`). Printed for `promptgym.agents.sft.sft_warm_start`
with the default `SFTConfig`: held-out loss before/after, wall time, training tokens/s and process CPU seconds.

With TRL installed, the same data, hyperparameters and number of steps go through `trl.SFTTrainer`
(prompt-completion dataset, `completion_only_loss=True`), configured for CPU (`bf16=False`,
`gradient_checkpointing=False`, `report_to="none"`, `save_strategy="no"`, output_dir in a temporary directory);
runs alternate (loop, TRL, loop, TRL, ...) so both see the same machine load, and medians are reported.
`--trl-defaults-steps` also times a few steps with TRL's own defaults (bf16 autocast and gradient
checkpointing on). Printed for TRL: import and setup seconds, held-out loss, time, per-step cost, the files it
wrote and what it left changed on the model (a patched `forward`, gradient checkpointing, `use_cache`).

On a 2-core machine shared with other processes, torch's default two intra-op threads can slow down several
times (threads wait on each other); `--threads 1` gives steadier numbers. CPU seconds per step are reported
because they are much less sensitive to the machine's load than wall time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.sft import SFTConfig, completion_loss, sft_warm_start
from promptgym.envs import EditTemplate, default_tokenizer, load_tasks


@dataclasses.dataclass
class Run:
    """One timed SFT run: held-out loss after, wall and CPU seconds of training, steps."""

    name: str
    loss_after: float
    train_wall_s: float
    train_cpu_s: float
    steps: int
    setup_s: float = 0.0
    notes: str = ""


def run_loop(tokenizer, train, test, config: SFTConfig) -> tuple[Run, float]:
    """`sft_warm_start` on a fresh tiny policy; returns the run and the held-out loss before training."""
    policy = PolicyWithValue.tiny(tokenizer, seed=0)
    cpu = time.process_time()
    result = sft_warm_start(policy, tokenizer, train, test, config=config, progress=False)
    cpu = time.process_time() - cpu
    # CPU time of the call includes the two held-out evaluations; scale to training only by wall-time share
    train_cpu = cpu * result.train_time_s / result.wall_time_s
    run = Run("loop", result.eval_loss_after, result.train_time_s, train_cpu, result.num_steps,
              setup_s=result.wall_time_s - result.train_time_s,
              notes=f"{result.tokens_per_s:,.0f} tokens/s")
    return run, result.eval_loss_before


def trl_args(config: SFTConfig, steps: int, output_dir: str, cpu_fit: bool = True):
    """TRL SFTConfig with the same hyperparameters as `config` (cpu_fit=False keeps TRL's bf16/checkpointing)."""
    import trl

    extra = {"bf16": False, "gradient_checkpointing": False} if cpu_fit else {}
    return trl.SFTConfig(
        output_dir=output_dir, learning_rate=config.learning_rate, max_steps=steps,
        per_device_train_batch_size=config.batch_size, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio, lr_scheduler_type="linear", max_grad_norm=config.max_grad_norm or 0.0,
        seed=config.seed, completion_only_loss=True, report_to="none", save_strategy="no",
        logging_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, **extra,
    )


def run_trl(tokenizer, train, test, config: SFTConfig, steps: int, cpu_fit: bool = True) -> Run:
    """The same training through trl.SFTTrainer on a fresh tiny policy (side effects recorded, then undone)."""
    import trl
    from datasets import Dataset

    template = EditTemplate()
    policy = PolicyWithValue.tiny(tokenizer, seed=0)
    use_cache = policy.model.config.use_cache
    with tempfile.TemporaryDirectory() as tmp:
        setup = time.perf_counter()
        rows = [{"prompt": template.context(t), "completion": template.completion(t.target)} for t in train]
        dataset = Dataset.from_list(rows)
        trainer = trl.SFTTrainer(model=policy.model, args=trl_args(config, steps, tmp, cpu_fit),
                                 train_dataset=dataset, processing_class=tokenizer)
        setup = time.perf_counter() - setup
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        written = sorted(str(p.relative_to(tmp)) for p in Path(tmp).rglob("*"))
    model = policy.model
    effects = []
    if "forward" in vars(model):
        effects.append("forward monkey-patched (fused LM head)")
        del model.forward  # undo, so later deep copies (the KL reference) get their own forward
    if getattr(model, "is_gradient_checkpointing", False):
        effects.append("gradient checkpointing left on")
        model.gradient_checkpointing_disable()
    if model.config.use_cache != use_cache:
        effects.append(f"config.use_cache {use_cache} -> {model.config.use_cache}")
        model.config.use_cache = use_cache
    loss = completion_loss(policy, tokenizer, test)
    notes = f"files written: {written or 'none'}; left on the model: {', '.join(effects) or 'nothing'}"
    name = "TRL (bf16=False, no checkpointing)" if cpu_fit else "TRL defaults (bf16 autocast, checkpointing)"
    return Run(name, loss, wall, cpu, steps, setup_s=setup, notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating loop/TRL runs; medians are reported")
    parser.add_argument("--max-steps", type=int, default=None, help="override SFTConfig.max_steps (default: epochs)")
    parser.add_argument("--skip-trl", action="store_true", help="only time the promptgym loop")
    parser.add_argument("--trl-defaults-steps", type=int, default=20,
                        help="steps to time with TRL's own defaults (bf16, checkpointing); 0 skips")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    tokenizer = default_tokenizer()
    train, test = load_tasks("demo", "train"), load_tasks("demo", "test")
    config = SFTConfig() if args.max_steps is None else SFTConfig(max_steps=args.max_steps)
    steps = config.total_steps(len(train))
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, "
          f"{len(train)} train / {len(test)} held-out tasks, {steps} steps")
    print(f"SFTConfig: {dataclasses.asdict(config)}")

    loops, trls = [], []
    before = None
    trl_import = None
    for _ in range(args.repeats):
        run, before = run_loop(tokenizer, train, test, config)
        loops.append(run)
        if not args.skip_trl:
            if trl_import is None:
                start = time.perf_counter()
                import trl

                trl.SFTTrainer, trl.SFTConfig  # noqa: B018  (trl imports lazily: touch what we use)
                trl_import = time.perf_counter() - start
            trls.append(run_trl(tokenizer, train, test, copy.deepcopy(config), steps))

    print(f"\nheld-out loss before: {before:.3f} nats/token (ln vocab = {torch.log(torch.tensor(len(tokenizer))):.3f})")
    report(loops)
    if trls:
        print(f"TRL import (trl.SFTTrainer, trl.SFTConfig, first use in this process): {trl_import:.1f}s")
        report(trls)
        ratio = statistics.median(t.train_cpu_s for t in trls) / statistics.median(r.train_cpu_s for r in loops)
        print(f"TRL / loop CPU seconds for the same {steps} steps: {ratio:.1f}x")
    if not args.skip_trl and args.trl_defaults_steps > 0:
        defaults = run_trl(tokenizer, train, test, copy.deepcopy(config), args.trl_defaults_steps, cpu_fit=False)
        per_step = defaults.train_cpu_s / defaults.steps
        print(f"{defaults.name}: {per_step * 1000:.0f} ms CPU/step ({defaults.train_wall_s / defaults.steps * 1000:.0f}"
              f" ms wall/step) over {defaults.steps} steps; {defaults.notes}")


def report(runs: list[Run]) -> None:
    """Print medians over `runs` of one kind."""
    last = runs[-1]
    wall = statistics.median(r.train_wall_s for r in runs)
    cpu = statistics.median(r.train_cpu_s for r in runs)
    print(f"{last.name}: held-out after {last.loss_after:.3f}, train wall {wall:.1f}s, train CPU {cpu:.1f}s "
          f"({cpu / last.steps * 1000:.0f} ms CPU/step), other {statistics.median(r.setup_s for r in runs):.1f}s "
          f"(setup/eval) [{len(runs)} run(s)]; {last.notes}")


if __name__ == "__main__":
    main()
