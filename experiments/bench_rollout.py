"""Benchmark: tokens/s of the rollout collector against a bare KV-cached loop, `generate()` and a no-cache loop.

    python -m promptgym.experiments.bench_rollout [--batch 32] [--new-tokens 32] [--rounds 5] [--quick]
                                                  [--threads 1] [--typical-mass P] [--seed 0] [--policy DIR]
                                                  [--clock cpu|wall] [--samples-per-task 4]

All four variants run in one process on the same tiny policy (`PolicyWithValue.tiny(default_tokenizer(), 0)`)
and the same context batch: the templated contexts of demo tasks, left-padded as the env pads them (the env's
`reset(seed=--seed)` picks the tasks). As the default run collects (`ppo.samples_per_task: 4`), each of
batch / `--samples-per-task` tasks is sampled `--samples-per-task` times; the collector encodes a context its rows
share once (`distinct_contexts`, in its prefill and in the reference pass), while the bare, `generate` and naive
loops encode every row's (`--samples-per-task 1`: a batch of distinct tasks, as the figures before 2026-12-02
were taken). Every variant produces batch x new_tokens tokens per run:

1. collector: `RolloutCollector.collect(reference=False)`: sampling with the value head, env stepping and the
   final `ContentIntegrityScorer` reward (no rendering). The KL reference model's teacher-forced pass, which
   `PPOAgent.collect` runs after it, is timed alone and printed beside it (no baseline does that work);
2. bare loop: prefill + (new_tokens - 1) single-token cached forwards + the collector's own sampler
   (`sample_restricted`, inverse CDF); no env, no value head, no bookkeeping: the limit for this policy;
3. generate: `model.generate(do_sample=True, min_new_tokens=max_new_tokens=new_tokens)`, no top-k/top-p;
4. naive: re-encodes the whole sequence every step (no KV cache), same sampler as the bare loop.

Every episode must run all `new_tokens` steps, so that every variant does the same work. `generate` has
`min_new_tokens`, but the collector takes no logits processor and an env episode ends at EOS, so EOS is
blocked inside the model instead: all variants use a copy of the tiny policy whose `lm_head` adds a bias of
-1e4 to the EOS logit (probability exactly 0 in float32; every other logit unchanged). Counting only the tokens
before EOS would not do: a finished row still costs a forward in every later step. The collector's token count
(`batch.mask.sum()`) is checked to equal batch x new_tokens, the tokens/run column.

Rounds are interleaved (round r runs every variant once, then the reference pass alone) so that load from
other processes on a shared machine hits all variants alike; each variant is warmed up once first and re-seeded
before every round. Each run is timed in CPU time of this process (`time.process_time`, `--clock cpu`, the default
since 2026-12-01): with one thread that is the work a variant does, which other jobs on a shared machine disturb far
less than wall time (`--clock wall`, how the figures before that date were taken; with three jobs on the 2-core
machine a wall-time run read 0.67x where CPU-time runs of the same code read 0.79-0.88x).

Printed: median tokens/s of each variant; whether the variants sampled the same tokens (collector, bare loop and
naive loop must: same model, contexts, seed and sampler; `generate` uses `torch.multinomial`, so its tokens differ);
the reference pass's cost; and the ratios against the learning issue's targets (collector >= 0.9x bare loop and
>= 0.8x with the reference pass added to its time, >= 1.0x generate, >= 5x naive), each the median of per-round
ratios.

The tiny model's steps are small ([32, 1, 64] activations): intra-op threads buy nothing there, and on a machine
whose cores other processes share they stall each other (on the 2-core dev machine, 2 threads ran every variant
3-10x slower than 1). So the benchmark runs on one thread unless `--threads` says otherwise (`--threads 0`:
torch's default); the first line printed gives both counts. Compare only runs made with the same thread count.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from promptgym.agents.policy import PolicyWithValue, cache_argument, output_cache
from promptgym.agents.rollout import RolloutBatch, RolloutCollector, reference_logprobs
from promptgym.agents.sampling import sample_restricted
from promptgym.envs import PromptEditVectorEnv, default_tokenizer
from promptgym.rewards import ContentIntegrityScorer

EOS_BIAS = -1e4  # exp(-1e4) underflows to exactly 0 in float32: EOS is never sampled
TARGETS = {"bare loop": 0.9, "generate": 1.0, "naive": 5.0}  # collector / variant must reach these
TARGETS_WITH_REFERENCE = {"bare loop": 0.8}  # ... and these with the KL reference pass added to the collector


@dataclass
class Bench:
    """What every variant shares: the EOS-blocked policy, the env and its contexts[B, C] (left-padded)."""

    policy: PolicyWithValue
    env: PromptEditVectorEnv
    input_ids: torch.Tensor  # [B, C] long
    attention_mask: torch.Tensor  # [B, C] long
    new_tokens: int
    seed: int
    typical_mass: float | None = None  # the collector's action-space correction (None: plain sampling)
    options: dict | None = None  # the collector's reset options: each sub-env's task (None: the reset's own draw)

    @property
    def model(self) -> nn.Module:
        return self.policy.model


def eos_blocked(policy: PolicyWithValue, eos_id: int) -> PolicyWithValue:
    """A copy of `policy` whose LM head adds `EOS_BIAS` to the EOS logit, so every episode runs to the end."""
    policy = copy.deepcopy(policy)
    old = policy.model.lm_head
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    head.weight = old.weight  # the same (tied) parameter: logits change only at EOS
    with torch.no_grad():
        head.bias.zero_()
        head.bias[eos_id] = EOS_BIAS
    policy.model.lm_head = head
    return policy


def make_bench(batch: int, new_tokens: int, seed: int = 0, typical_mass: float | None = None,
               policy_path: str | None = None, samples_per_task: int = 1) -> Bench:
    """The tiny policy, or the saved one at `policy_path` (EOS blocked), an env of `batch` sub-envs on
    batch / `samples_per_task` demo tasks (each `samples_per_task` times in a row) and its reset contexts."""
    if samples_per_task < 1 or batch % samples_per_task:
        raise ValueError(f"samples_per_task={samples_per_task} must be >= 1 and divide batch={batch}")
    tokenizer = default_tokenizer()
    base = PolicyWithValue.tiny(tokenizer, seed=0) if policy_path is None else PolicyWithValue.from_pretrained(
        policy_path)
    policy = eos_blocked(base, tokenizer.eos_token_id).eval()
    env = PromptEditVectorEnv(
        batch,
        tokenizer=tokenizer,
        reward=ContentIntegrityScorer(),
        max_new_tokens=new_tokens,
        autoreset_mode="disabled",
    )
    env.reset(seed=seed)
    options = {"tasks": [task for task in env.tasks[: batch // samples_per_task] for _ in range(samples_per_task)]}
    obs, _ = env.reset(seed=seed, options=options)
    columns = env.episodes.max_context_tokens
    ids = torch.from_numpy(obs["input_ids"][:, :columns])
    mask = torch.from_numpy(obs["attention_mask"][:, :columns]).long()
    first = int(mask.any(0).nonzero()[0])  # drop the columns that are padding in every row, as the collector does
    return Bench(policy, env, ids[:, first:], mask[:, first:], new_tokens, seed, typical_mass, options)


# ------------------------------------------------------------------------------------------------ variants
def collect(bench: Bench, reference: bool = False) -> RolloutBatch:
    """One `RolloutCollector.collect` with a freshly seeded generator (the reference pass only if asked)."""
    generator = torch.Generator().manual_seed(bench.seed)
    collector = RolloutCollector(bench.policy, bench.env, bench.typical_mass, generator)
    return collector.collect(seed=bench.seed, reference=reference, options=bench.options)


def run_collector(bench: Bench) -> torch.Tensor:
    """The collector's actions[B, T]; raises if any episode ended before `new_tokens` (`batch.mask` not all True)."""
    batch = collect(bench)
    if not batch.mask.all() or batch.actions.shape[1] != bench.new_tokens:
        raise RuntimeError(
            f"the collector generated {int(batch.mask.sum())} tokens, expected batch x new_tokens = "
            f"{bench.input_ids.shape[0] * bench.new_tokens}: some episode ended early although EOS is blocked"
        )
    return batch.actions


@torch.no_grad()
def run_bare_loop(bench: Bench) -> torch.Tensor:
    """Prefill, then one cached single-token forward per step, sampling like the collector; tokens[B, T]."""
    generator = torch.Generator().manual_seed(bench.seed)
    model, mask = bench.model, bench.attention_mask
    out = model(input_ids=bench.input_ids, attention_mask=mask, use_cache=True)
    tokens = []
    for t in range(bench.new_tokens):
        tokens.append(sample_restricted(out.logits[:, -1].float(), None, generator)[0].unsqueeze(1))  # [B, 1]
        if t == bench.new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(tokens[-1])], dim=1)
        cache = {cache_argument(model): output_cache(out)}
        out = model(input_ids=tokens[-1], attention_mask=mask, use_cache=True, **cache)
    return torch.cat(tokens, dim=1)


@torch.no_grad()
def run_generate(bench: Bench) -> torch.Tensor:
    """`model.generate` with plain multinomial sampling (no top-k/top-p), exactly `new_tokens` tokens[B, T]."""
    torch.manual_seed(bench.seed)
    out = bench.model.generate(
        input_ids=bench.input_ids,
        attention_mask=bench.attention_mask,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
        max_new_tokens=bench.new_tokens,
        min_new_tokens=bench.new_tokens,
        pad_token_id=bench.env.episodes.pad_id,
        eos_token_id=bench.env.episodes.eos_id,
    )
    return out[:, bench.input_ids.shape[1] :]


@torch.no_grad()
def run_naive(bench: Bench) -> torch.Tensor:
    """Re-encode the whole sequence (context + tokens so far) every step, without a KV cache; tokens[B, T]."""
    generator = torch.Generator().manual_seed(bench.seed)
    ids, mask = bench.input_ids, bench.attention_mask
    for _ in range(bench.new_tokens):
        logits = bench.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1].float()
        action = sample_restricted(logits.float(), None, generator)[0].unsqueeze(1)
        ids = torch.cat([ids, action], dim=1)
        mask = torch.cat([mask, torch.ones_like(action)], dim=1)
    return ids[:, bench.input_ids.shape[1] :]


VARIANTS: dict[str, Callable[[Bench], torch.Tensor]] = {
    "collector": run_collector,
    "bare loop": run_bare_loop,
    "generate": run_generate,
    "naive": run_naive,
}


# ------------------------------------------------------------------------------------------------- driver
@dataclass
class Result:
    """Medians over the timed rounds. A ratio is the median of its per-round ratios: the variants of one round run
    back to back, so a per-round ratio cancels load that drifts between rounds on a shared machine."""

    rates: dict[str, float]  # tokens/s of each variant
    ratios: dict[str, float]  # collector / variant, per round
    ratios_with_reference: dict[str, float]  # the same with the reference pass's time added to the collector's
    reference_seconds: float  # the KL reference model's teacher-forced pass over a collected batch
    samples: dict[str, torch.Tensor]  # tokens[B, T] each variant sampled in its warm-up run


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def measure(bench: Bench, rounds: int, clock: str = "cpu") -> Result:
    """Warm every variant up once, then time `rounds` interleaved rounds (each variant once, then the reference pass)
    with `CLOCKS[clock]`."""
    now = CLOCKS[clock]
    samples = {name: run(bench) for name, run in VARIANTS.items()}  # warm-up (and the reference copy)
    batch = collect(bench)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    reference: list[float] = []
    for _ in range(rounds):
        for name, run in VARIANTS.items():
            start = now()
            run(bench)
            seconds[name].append(now() - start)
        start = now()
        reference_logprobs(bench.policy, batch)
        reference.append(now() - start)
    collector = seconds["collector"]
    with_reference = [c + r for c, r in zip(collector, reference)]
    return Result(
        rates={name: statistics.median(samples[name].numel() / x for x in s) for name, s in seconds.items()},
        ratios={name: statistics.median(x / c for x, c in zip(seconds[name], collector)) for name in TARGETS},
        ratios_with_reference={
            name: statistics.median(x / c for x, c in zip(seconds[name], with_reference)) for name in TARGETS
        },
        reference_seconds=statistics.median(reference),
        samples=samples,
    )


def report(result: Result, bench: Bench, rounds: int, clock: str = "cpu") -> list[str]:
    """The printed table: tokens/s per variant, whether all sampled the same tokens, the reference pass's cost,
    then each ratio with its target (and with the reference pass added)."""
    rates, samples = result.rates, result.samples
    lines = [
        f"batch {bench.input_ids.shape[0]} x {bench.new_tokens} new tokens"
        f" | {bench.input_ids.shape[0] // samples_per_task(bench)} tasks x {samples_per_task(bench)} samples"
        f" | context {bench.input_ids.shape[1]} columns | typical_mass {bench.typical_mass} | median of {rounds} rounds"
        f" | {clock} time",
        f"{'variant':<10} {'tokens/s':>12} {'tokens/run':>11}",
    ]
    lines += [f"{name:<10} {rates[name]:>12,.0f} {samples[name].numel():>11d}" for name in VARIANTS]
    same = [f"{name} {'yes' if torch.equal(samples[name], samples['bare loop']) else 'no'}" for name in VARIANTS]
    lines.append("same tokens as the bare loop (same seed): " + ", ".join(same))
    collector_seconds = samples["collector"].numel() / rates["collector"]
    lines.append(
        f"KL reference pass (run by PPOAgent.collect after the collector): {result.reference_seconds * 1e3:.1f} ms"
        f" per run, {100 * result.reference_seconds / collector_seconds:.0f}% of the collector's time"
    )
    for name, target in TARGETS.items():
        ratio, with_reference = result.ratios[name], result.ratios_with_reference[name]
        line = f"collector / {name:<9}: {ratio:6.2f}x (target >= {target:g}x) {_verdict(ratio, target):<6} | "
        line += f"with the reference pass {with_reference:.2f}x"
        if name in TARGETS_WITH_REFERENCE:
            target = TARGETS_WITH_REFERENCE[name]
            line += f" (target >= {target:g}x) {_verdict(with_reference, target)}"
        lines.append(line)
    return lines


def _verdict(ratio: float, target: float) -> str:
    return "ok" if ratio >= target else "MISSED"


def samples_per_task(bench: Bench) -> int:
    """How many rows share each task's context (the bench's tasks come in equal runs)."""
    tasks = bench.env.tasks
    return len(tasks) // len({id(task) for task in tasks})


def main(argv: Sequence[str] | None = None) -> Result:
    """Run the benchmark, print the table, and return its numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="episodes per batch (default 32; --quick: 4)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per episode (default 32; --quick: 4)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds; medians are reported (default 5)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run; its numbers mean nothing")
    parser.add_argument("--seed", type=int, default=0, help="env reset and sampling seed of every round")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (default 1; 0 keeps torch's own default)"
    )
    parser.add_argument(
        "--typical-mass", type=float, default=None, help="the collector's typical_mass (default None: plain sampling)"
    )
    parser.add_argument(
        "--policy", default=None, metavar="DIR",
        help="a saved policy (e.g. RUN/sft_policy, which uses the default tokenizer) instead of the random tiny one: "
        "a trained policy's peaked distributions are what typical-set sampling sees in training",
    )
    parser.add_argument(
        "--samples-per-task", type=int, default=4,
        help="rows sharing each task's context, as `ppo.samples_per_task` (default 4, the default run's; 1: distinct "
        "tasks); must divide --batch",
    )
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu",
        help="time each run in CPU time of this process (default; steadier on a shared machine) or wall time",
    )
    args = parser.parse_args(argv)
    batch = args.batch if args.batch is not None else (4 if args.quick else 32)
    new_tokens = args.new_tokens if args.new_tokens is not None else (4 if args.quick else 32)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    for name, value in (("--batch", batch), ("--new-tokens", new_tokens), ("--rounds", rounds)):
        if value < 1:
            parser.error(f"{name}={value}; expected a positive integer")
    if args.threads < 0:
        parser.error(f"--threads={args.threads}; expected a positive integer, or 0 for torch's default")
    if args.typical_mass is not None and not 0.0 < args.typical_mass <= 1.0:
        parser.error(f"--typical-mass={args.typical_mass}; expected a number in (0, 1]")
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.samples_per_task < 1 or batch % args.samples_per_task:
        parser.error(f"--samples-per-task={args.samples_per_task}; expected a positive divisor of --batch={batch}")
    bench = make_bench(batch, new_tokens, args.seed, args.typical_mass, args.policy, args.samples_per_task)
    result = measure(bench, rounds, args.clock)
    print(f"torch threads: {torch.get_num_threads()} (torch's default on this machine: {default_threads})")
    for line in report(result, bench, rounds, args.clock):
        print(line)
    return result


if __name__ == "__main__":
    main()
