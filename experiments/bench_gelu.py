"""Benchmark: the policy's tanh-GELU as BLOOM ships it (`BloomGelu`) against torch's fused kernel (`nn.GELU`).

    python -m promptgym.experiments.bench_gelu [--config synth] [--batch 32] [--context 32] [--new-tokens 32]
                                               [--rounds 7] [--threads 1]

`PolicyWithValue` replaces BLOOM's Python tanh-GELU (eight element-wise ops forward, a custom autograd backward)
by `torch.nn.GELU(approximate="tanh")`, one fused torch kernel of the same function (`fuse_gelu_modules`). This
times both on the config's policy shape (`policy.num_layers` x `policy.hidden_size`, random weights, the default
tokenizer), on the three kinds of pass a PPO run makes:

1. reference: a teacher-forced forward without gradients over batch x (context + new tokens), the KL
   reference pass and the evaluation of old log-probs;
2. train step: forward and backward over the same batch (a PPO minibatch step, an SFT step);
3. decode: prefill + `new_tokens - 1` single-token KV-cached forwards (the rollout's sampling loop, argmax).

Rounds are interleaved (each round times every pass with both modules, alternating which goes first) so load from
other processes hits both alike, and each pass is timed in CPU time of this process (`time.process_time`), which a
busy machine disturbs far less than wall time (on the shared 2-core machine wall-time ratios of one run ranged
0.85-1.55x). Printed: median CPU ms of each, the ratio own / fused (>1: fused is cheaper), and the largest logit
difference between the two (rounding only). Compare runs made with the same thread count.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from transformers.models.bloom.modeling_bloom import BloomGelu

from promptgym.agents.policy import PolicyWithValue, cache_argument, output_cache
from promptgym.envs import default_tokenizer
from promptgym.experiments.config import load_config

PASSES = ("reference", "train step", "decode")


def policies(config: str) -> dict[str, PolicyWithValue]:
    """The config's tiny policy twice: with BLOOM's own `BloomGelu` modules and fused (the default)."""
    c = load_config(config).policy
    fused = PolicyWithValue.tiny(default_tokenizer(), 0, c.hidden_size, c.num_layers, c.num_heads)
    own = copy.deepcopy(fused)
    for layer in own.model.transformer.h:
        layer.mlp.gelu_impl = BloomGelu()
    return {"own": own, "fused": fused}


def make_passes(policy: PolicyWithValue, ids: torch.Tensor, new_tokens: int) -> dict[str, Callable[[], None]]:
    model, mask = policy.model, torch.ones_like(ids)

    @torch.no_grad()
    def reference() -> None:
        model(input_ids=ids, attention_mask=mask)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=mask).logits.logsumexp(-1).mean().backward()

    @torch.no_grad()
    def decode() -> None:
        context = ids[:, : ids.shape[1] - new_tokens]
        out = model(input_ids=context, attention_mask=torch.ones_like(context), use_cache=True)
        step_mask = torch.ones_like(context)
        for _ in range(new_tokens - 1):
            token = out.logits[:, -1:].argmax(-1)
            step_mask = torch.cat([step_mask, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=step_mask, use_cache=True,
                        **{cache_argument(model): output_cache(out)})

    return {"reference": reference, "train step": train_step, "decode": decode}


def measure(passes: dict[str, dict[str, Callable[[], None]]], rounds: int) -> dict[str, dict[str, float]]:
    """Median CPU ms of every (variant, pass) over interleaved rounds, after one warm-up call of each."""
    times: dict[str, dict[str, list[float]]] = {v: {p: [] for p in PASSES} for v in passes}
    for fns in passes.values():
        for fn in fns.values():
            fn()
    order = list(passes)
    for r in range(rounds):
        for name in PASSES:
            for variant in order if r % 2 == 0 else order[::-1]:
                start = time.process_time()
                passes[variant][name]()
                times[variant][name].append(1000 * (time.process_time() - start))
    return {v: {p: statistics.median(ts) for p, ts in by_pass.items()} for v, by_pass in times.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="synth", help="config whose policy shape to time (default: synth)")
    parser.add_argument("--batch", type=int, default=32, help="sequences per pass (default: 32, an update's episodes)")
    parser.add_argument("--context", type=int, default=32, help="context tokens (default: 32)")
    parser.add_argument("--new-tokens", type=int, default=32, help="generated tokens (default: 32)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians are printed (default: 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1; 0: torch's)")
    args = parser.parse_args(argv)
    for name in ("batch", "context", "new_tokens", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    models = policies(args.config)
    vocab = models["own"].config.vocab_size
    ids = torch.randint(3, vocab, (args.batch, args.context + args.new_tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (models["own"].model(input_ids=ids).logits - models["fused"].model(input_ids=ids).logits).abs().max()
    config = models["own"].config
    print(f"policy {config.n_layer} x {config.hidden_size} ({args.config}), batch {args.batch} x "
          f"({args.context} + {args.new_tokens}) tokens, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.2f}, {args.rounds} interleaved rounds; largest logit difference {diff:.1e}")
    medians = measure({v: make_passes(p, ids, args.new_tokens) for v, p in models.items()}, args.rounds)
    print(f"{'pass':<12} {'BloomGelu CPU ms':>17} {'fused CPU ms':>13} {'own / fused':>12}")
    for name in PASSES:
        own, fused = medians["own"][name], medians["fused"][name]
        print(f"{name:<12} {own:>17.1f} {fused:>13.1f} {own / fused:>11.2f}x")
    return medians


if __name__ == "__main__":
    main()
