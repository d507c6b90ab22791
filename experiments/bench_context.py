"""Benchmark: contexts a task's samples share, encoded once (`distinct_contexts`) against once per row.

    python -m promptgym.experiments.bench_context [--config surrogate] [--policy DIR] [--rounds 7] [--threads 1]
                                                  [--seed 0]

With `ppo.samples_per_task` k > 1 (the default run: k = 4) each task's context appears in k rows of an update's
batch. The collector's prefill and the KL reference pass encode each distinct context once and copy its key/value
cache to the rows that share it (`RolloutCollector._prefill`, `reference_action_logits`); "every row" is the same
code with `distinct_contexts` answering None, i.e. what ran before 2026-12-02. One update's batch is collected from
the config's env shape (`ppo.n_episodes` sub-envs on n_episodes / k demo train tasks, `env.max_new_tokens`) with the
config's random tiny policy or the saved one at `--policy` (e.g. RUN/sft_policy: a trained start writes episodes of
realistic length), and two passes are timed on it:

1. prefill: the policy's cached forward over the batch's contexts (the collector's first step);
2. reference pass: `reference_logprobs`, the KL reference model's teacher-forced pass over the batch.

PPO's minibatches do not share contexts: a random minibatch of 16 of the 32 episodes holds about 7.6 distinct
contexts, and the extra forward call that sharing costs ate the saving (a version that shared them measured 1.02x
on the PPO epochs, 2026-12-02; a minibatch of 4 whole groups 1.24x, which would need group-aligned minibatches).

Rounds are interleaved (each round times every pass both ways, alternating which goes first) and each pass is timed
in CPU time of this process, which other jobs on a shared machine disturb far less than wall time. Printed: median CPU
ms of each and the ratio every row / shared (> 1: sharing is cheaper), with the largest difference of the outputs
(rounding only). Compare runs made with the same thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from promptgym.agents import rollout
from promptgym.agents.policy import PolicyWithValue
from promptgym.agents.rollout import RolloutBatch, RolloutCollector, reference_logprobs
from promptgym.envs import PromptEditVectorEnv, default_tokenizer
from promptgym.experiments.config import ExperimentConfig, load_config
from promptgym.rewards import ContentIntegrityScorer

PASSES = ("prefill", "reference pass")
VARIANTS = ("every row", "shared")


@contextlib.contextmanager
def sharing(variant: str) -> Iterator[None]:
    """Run the block with contexts shared ("shared", the library's behaviour) or encoded per row ("every row")."""
    if variant == "shared":
        yield
        return
    original = rollout.distinct_contexts
    rollout.distinct_contexts = lambda input_ids, attention_mask: None
    try:
        yield
    finally:
        rollout.distinct_contexts = original


def make_batch(config: ExperimentConfig, policy: PolicyWithValue, seed: int) -> tuple[RolloutCollector, RolloutBatch]:
    """A collector on the config's env shape and one update's batch of it: n_episodes / k tasks, k samples each."""
    ppo, k = config.ppo, config.ppo.samples_per_task or 1
    env = PromptEditVectorEnv(
        ppo.n_episodes, tokenizer=default_tokenizer(), reward=ContentIntegrityScorer(),
        max_new_tokens=config.env.max_new_tokens, autoreset_mode="disabled",
    )
    env.reset(seed=seed)
    options = {"tasks": [task for task in env.tasks[: ppo.n_episodes // k] for _ in range(k)]}
    collector = RolloutCollector(policy, env, generator=torch.Generator().manual_seed(seed))
    return collector, collector.collect(seed=seed, options=options)


def make_passes(collector: RolloutCollector, batch: RolloutBatch) -> dict[str, Callable[[], torch.Tensor]]:
    """The timed passes; each returns a tensor (its output) for the rounding check."""
    context = batch.input_ids[:, : batch.context_length], batch.attention_mask[:, : batch.context_length]

    @torch.no_grad()
    def prefill() -> torch.Tensor:
        return collector._prefill(*context).logits[:, -1]

    def reference() -> torch.Tensor:
        return reference_logprobs(collector.policy, batch)

    return {"prefill": prefill, "reference pass": reference}


def measure(passes: dict[str, Callable[[], torch.Tensor]], rounds: int) -> tuple[dict[str, dict[str, float]], float]:
    """Median CPU ms of every (variant, pass) over interleaved rounds after one warm-up of each, and the largest
    difference between the two variants' outputs."""
    outputs = {}
    for variant in VARIANTS:
        with sharing(variant):
            outputs[variant] = [passes[name]() for name in PASSES]
    diff = max(float((a - b).abs().max()) for a, b in zip(*outputs.values()))
    times: dict[str, dict[str, list[float]]] = {v: {p: [] for p in PASSES} for v in VARIANTS}
    for r in range(rounds):
        for name in PASSES:
            for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                with sharing(variant):
                    start = time.process_time()
                    passes[name]()
                    times[variant][name].append(1000 * (time.process_time() - start))
    return {v: {p: statistics.median(ts) for p, ts in by_pass.items()} for v, by_pass in times.items()}, diff


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark, print the table and return the median CPU ms of every (variant, pass)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="surrogate", help="config whose policy, env and PPO shape to use "
                        "(default: surrogate, the default run's)")
    parser.add_argument("--policy", default=None, metavar="DIR",
                        help="a saved policy (e.g. RUN/sft_policy) instead of the config's random tiny one")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians are printed (default: 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1; 0: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="the tasks and the sampling")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads < 0:
        parser.error(f"--threads={args.threads}; expected a positive integer, or 0 for torch's default")
    config = load_config(args.config)
    k = config.ppo.samples_per_task or 1
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    c = config.policy
    policy = (PolicyWithValue.tiny(default_tokenizer(), 0, c.hidden_size, c.num_layers, c.num_heads)
              if args.policy is None else PolicyWithValue.from_pretrained(args.policy))
    collector, batch = make_batch(config, policy, args.seed)
    medians, diff = measure(make_passes(collector, batch), args.rounds)
    print(f"{args.config}: {len(batch)} episodes = {len(batch) // k} tasks x {k} samples, context "
          f"{batch.context_length} columns, {int(batch.mask.sum())} written tokens (at most {batch.actions.shape[1]} a "
          f"row); torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, {args.rounds} interleaved rounds; "
          f"largest output difference {diff:.1e}")
    print(f"{'pass':<15} {'every row CPU ms':>17} {'shared CPU ms':>14} {'every row / shared':>19}")
    for name in PASSES:
        alone, shared = medians["every row"][name], medians["shared"][name]
        print(f"{name:<15} {alone:>17.1f} {shared:>14.1f} {alone / shared:>18.2f}x")
    return medians


if __name__ == "__main__":
    main()
