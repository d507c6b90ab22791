"""`promptgym bench`: PPO variants, baselines and an oracle trained for the same budget of reward calls, over seeds.

    promptgym bench [--config synth] [--variants sft,ppo,...,surrogate,oracle] [--seeds 5] [--budget 1024]
                    [--reward config|integrity] [--out runs/bench] [--resume] [--set key=value ...]

The rules that make the comparison fair:

- **Budget.** A *reward call* is one edited prompt scored (one finished episode; our PPO's keyword-corrupted
  negatives count too: `PPOAgent.num_reward_calls`). Every variant trains until it has used at least `budget`
  reward calls and stops at the first update / rollout / generation batch at or past it (so it uses between
  `budget` and `budget + batch - 1`; the table reports the calls actually used).
- **Start.** Per seed, SFT runs once and every language-model variant (our PPO variants, GRPO, RLOO, RWR, the
  surrogate row, the oracle) starts from a deep copy of that SFT'd policy. SB3 PPO has no language model: it starts
  from scratch (the table says so). The `sft` row is that start evaluated with no RL.
- **Config.** Every variant of a seed runs on `--config` (default: `synth`, the world's image reward) with the
  same `--set` overrides and seed. A PPO variant lays its ablation preset's `ppo` section over it (`ppo`: no
  DiffChat refinement; `ppo+adm`, `ppo+neg`, `ppo+civalue`: one each; `diffchat`: all three); the reference and
  the baselines use the config as it is (baselines: its env sizes, task splits, `ppo.n_episodes` as the batch,
  `ppo.learning_rate`, `ppo.kl_coef` as TRL's `beta`; `rwr`, reward-weighted likelihood on the policy's own
  samples (`promptgym.agents.rwr`, Lee et al. 2023), takes the same and `ppo.kl_coef` as its exact-KL anchor to the
  start). The `oracle` is the config's own PPO trained on the
  *gold* reward (`synth-gold`: gold content + gold aesthetic), the upper bound of what a proxy could give; the
  `surrogate` row is the config's own PPO trained on BeautifulPrompt's text-only surrogate reward (`surrogate`:
  MiniLM regressors of the image scores, no render in training, the gold monitors off); both need a synth-world
  config. Variants may differ in nothing else (checked).
- **Final score.** The same evaluation for every variant, not counted in the budget and always with the config's
  (proxy) reward, whose outputs carry the gold metrics on the synth world: `eval_episodes` fresh episodes on the
  eval split (`data.eval_split`), sampled with one seed from the full policy distribution at temperature 1, and,
  for a language model, their KL to the seed's SFT start (k1, nats per episode).
- **Aggregates.** Per variant and metric, the interquartile mean (IQM) over seeds with a 95% stratified-bootstrap
  CI (rliable's recipe, `stats.iqm_ci`); "vs SFT" is the mean over seeds of the per-seed change from the `sft`
  row, and each DiffChat refinement gets its per-seed paired change against plain `ppo` (mean [95% CI]).
- **Reward.** `--reward config` (default) is the config's reward; `--reward integrity` scores content integrity
  only, as a ratio (no renders, several times faster).

Outputs in OUT: `bench.md` and `bench.csv` (the tables), `bench.json` (every run's raw numbers: curves, eval
scores, KL, timings; rewritten after each run, so `--resume` continues an interrupted bench where it stopped),
`curves.png` (proxy reward and gold metrics against reward calls, mean over seeds with 95% CI bands) and
`gold_vs_kl.png` (each gold metric against the KL to the start: the over-optimisation picture). bench.md also
has the speed per result against `grpo` (`promptgym.experiments.speed`): the CPU seconds each variant's learning
curve took to reach GRPO's final gold aesthetic and proxy on the same seed; `speed.png` draws those curves against
training CPU seconds.

Seeds run in parallel as separate processes (`--set seed=S --seeds 1 --out DIR_S`, one per core) and are joined by
`promptgym bench --merge DIR_0 DIR_1 ... --out DIR` (`merge_benches`: same settings checked, one SFT start per seed).
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from promptgym.agents import PPOAgent, sft_warm_start
from promptgym.envs import load_tasks
from promptgym.experiments import BENCH_CONFIG
from promptgym.experiments.builders import (
    build_policy,
    build_run_reward,
    build_tokenizer,
    build_vector_env,
    seed_everything,
    stage_tasks,
)
from promptgym.experiments.config import load_config, preset_layer
from promptgym.experiments.plots import plot_curve_panels, plot_gold_vs_kl
from promptgym.experiments.speed import DEFAULT_METRICS as SPEED_METRICS
from promptgym.experiments.speed import elapsed, metric_curve, speed_rows
from promptgym.experiments.stats import iqm_ci, mean_ci
from promptgym.rewards import CompositeReward, clear_reward_caches, reward_stats
from promptgym.rewards.composite import UNNORMALIZED_COMPONENT

if TYPE_CHECKING:  # agents.baselines imports stable-baselines3 and trl (seconds): loaded when a run needs it
    from promptgym.agents.baselines import RunResult

REFERENCE = "sft"  # the shared SFT start itself, evaluated without any RL: what every LM variant has to beat
PPO_VARIANTS = ("ppo", "ppo+adm", "ppo+neg", "ppo+civalue", "diffchat")
PAIRED_BASE = "ppo"  # each DiffChat refinement is paired against plain PPO
REFINEMENTS = ("ppo+adm", "ppo+neg", "ppo+civalue", "diffchat")
BASELINES = ("sb3-ppo", "grpo", "rloo", "rwr")
ORACLE = "oracle"  # the config's PPO on the gold reward: the upper bound of a proxy
ORACLE_PRESET = "synth-gold"
SURROGATE = "surrogate"  # the config's PPO on BeautifulPrompt's text-only surrogate reward (no renders in training)
# Variants that train the config's PPO on another reward of the synth world: {variant: its build_reward preset, what
# it means}. They are scored like every variant, by the config's reward, whose outputs carry gold.
TRAINING_REWARDS = {ORACLE: (ORACLE_PRESET, "the synth world's gold metrics"),
                    SURROGATE: ("surrogate", "the text-only surrogate reward of the synth world")}
# What such a variant takes from its preset's config file: the reward it trains on (the default run's other settings
# in surrogate.yaml, its PPO knobs and its integrity's `edit_weight`, stay out: the row is the bench config's PPO).
TRAINING_REWARD_KEYS = ("preset", "weights")
ORACLE_PROXIES = ("synth", "surrogate")  # the synth-world proxy presets these variants can stand beside
VARIANTS = (REFERENCE,) + PPO_VARIANTS + BASELINES + (SURROGATE, ORACLE)
REWARDS = ("config", "integrity")
# --reward integrity: content integrity only, as a ratio (no image terms, so no renders)
INTEGRITY_OVERRIDES = (
    "reward.weights.aesthetic=0",
    "reward.weights.pickscore=0",
    "reward.integrity={mode: ratio}",
)
SHARED_SECTIONS = ("data", "env", "policy", "reward", "sft")  # must agree across variants of a seed
GOLD = ("gold/content", "gold/aesthetic")
COST_KEYS = ("cpu_time_s", "images_rendered")  # a run's training cost in its `info`, beside its wall time
EVAL_SEED = 12345
SPEED_REFERENCE = "grpo"  # speed per result is measured against TRL GRPO's (issue 11's yardstick)
SPEED_SMOOTH = 4  # curve points in the trailing mean whose first crossing of the reference's final level counts
# A run's entry in bench.json: these fields of its RunResult, in this order
RUN_FIELDS = ("variant", "seed", "curve", "curve_components", "eval_reward", "eval_components", "eval_kl",
              "reward_calls", "budget", "wall_time_s", "start", "start_sha256", "info")
# Settings a resumed bench must share with the runs it finds in bench.json
RESUME_KEYS = ("config", "budget", "reward", "overrides", "eval_episodes", "eval_seed")


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
    config: str = BENCH_CONFIG

    def of(self, variant: str) -> list[RunResult]:
        return [run for run in self.runs if run.variant == variant]

    def settings(self) -> dict[str, Any]:
        """What a resumed bench must match (see RESUME_KEYS)."""
        return {"config": self.config, "budget": self.budget, "reward": self.reward, "overrides": self.overrides,
                "eval_episodes": self.eval_episodes, "eval_seed": EVAL_SEED}


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


def variant_config(variant: str, seed: int | None, overrides: Sequence[str] = (), reward: str = "config",
                   config: str | os.PathLike = BENCH_CONFIG):
    """The config a variant runs with on `seed` (None: the config's): `config` with the variant's layer (a PPO
    variant's ablation `ppo` section; the training reward of the oracle and the surrogate row), then `overrides`
    and the reward choice. The `surrogate` row trains without the gold monitors (text-only, as that reward is
    meant to run); its final evaluation, like every row's, carries gold."""

    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}; expected one of {list(VARIANTS)}")
    if reward not in REWARDS:
        raise ValueError(f"reward={reward!r}; expected one of {list(REWARDS)}")
    extra = list(INTEGRITY_OVERRIDES) if reward == "integrity" else []
    settings = [*overrides, *extra, *([f"seed={seed}"] if seed is not None else [])]
    if variant in TRAINING_REWARDS:
        preset, meaning = TRAINING_REWARDS[variant]
        base = load_config(config, settings)
        if reward != "config" or base.reward.preset not in ORACLE_PROXIES:
            raise ValueError(
                f"the {variant!r} variant trains on {meaning}, so it needs a config whose reward preset is 'synth' "
                f"or 'surrogate' and --reward config; got preset {base.reward.preset!r} with --reward {reward}"
            )
        reward_layer = {k: v for k, v in preset_layer(preset).get("reward", {}).items() if k in TRAINING_REWARD_KEYS}
        if variant == SURROGATE:
            reward_layer["monitors"] = False
        layer = {"reward": reward_layer}
        return load_config(config, [*overrides, *([f"seed={seed}"] if seed is not None else [])], layer=layer)
    layer = {"ppo": preset_layer(variant)["ppo"]} if variant in PPO_VARIANTS else None
    return load_config(config, settings, layer=layer)


def _check_shared(base: Any, configs: dict[str, Any]) -> None:
    """The variants of a seed must agree with the seed's `base` config (the `sft` reference's) on everything but
    `ppo` (they share one SFT start and one reward); the oracle and the surrogate row differ in their training
    reward too."""
    for name, config in configs.items():
        for section in SHARED_SECTIONS:
            if name in TRAINING_REWARDS and section == "reward":
                continue
            if getattr(config, section) != getattr(base, section):
                raise ValueError(
                    f"variant {name!r} has a different {section!r} section than the base config; bench variants may "
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
@dataclass
class SeedContext:
    """What every variant of one seed shares: tokenizer, SFT start, rewards, eval tasks."""

    tokenizer: Any
    start: Any  # the SFT'd PolicyWithValue (None when only SB3 runs)
    reward: Any  # the config's reward: every variant's evaluation, and the training reward of all but TRAINING_REWARDS
    eval_tasks: list[Any]
    eval_episodes: int
    training_rewards: dict[str, Any] = field(default_factory=dict)  # {variant of TRAINING_REWARDS: its reward}


def _evaluate(config: Any, model: Any, ctx: SeedContext, eval_seed: int = EVAL_SEED) -> tuple[float, dict, float]:
    """The final score of a trained LM: eval reward, components and KL to the seed's start."""
    from promptgym.agents.baselines import evaluate_lm_with_kl

    env = build_vector_env(config, ctx.eval_tasks, ctx.tokenizer, ctx.reward, ctx.eval_episodes)
    return _stationary(*evaluate_lm_with_kl(model, env, eval_seed, ctx.start.model))


def _stationary(reward: float, components: dict[str, float], *rest: Any) -> tuple:
    """With a normalised reward, the eval reward is its unnormalised weighted sum (the normalised total depends on
    the statistics each variant's training left, so it would not compare across variants)."""
    return (components.get(UNNORMALIZED_COMPONENT, reward), components, *rest)


def run_ppo_variant(variant: str, config: Any, policy: Any, ctx: SeedContext, budget: int) -> RunResult:
    """Our PPO (`config.ppo`) on `policy` (trained in place) until `PPOAgent.num_reward_calls >= budget`; the
    oracle and the surrogate row train on their own reward (`TRAINING_REWARDS`) and are scored like every variant."""
    reward = ctx.training_rewards.get(variant, ctx.reward)
    env = build_vector_env(config, stage_tasks(config)[1], ctx.tokenizer, reward, config.ppo.n_episodes)
    info = {"ppo": dataclasses.asdict(config.ppo),
            **({"training_reward": TRAINING_REWARDS[variant][0]} if variant in TRAINING_REWARDS else {})}
    return _run_agent(variant, PPOAgent(policy, env, config.ppo), config, ctx, budget, info)


def rwr_config(config: Any) -> Any:
    """The `rwr` variant's settings: reward-weighted likelihood with the config's PPO batch, learning rate, KL
    coefficient (as the exact-KL anchor), minibatch size and seed, as the TRL rows take theirs."""
    from promptgym.agents.rwr import RWRConfig

    ppo = config.ppo
    return RWRConfig(n_episodes=ppo.n_episodes, learning_rate=ppo.learning_rate, kl_coef=ppo.kl_coef,
                     minibatch_size=ppo.batch_size, max_grad_norm=ppo.max_grad_norm, seed=config.seed)


def run_rwr_variant(config: Any, policy: Any, ctx: SeedContext, budget: int) -> RunResult:
    """Reward-weighted likelihood (`promptgym.agents.rwr`) on `policy` (trained in place) on the config's reward."""
    from promptgym.agents.rwr import RWRAgent

    settings = rwr_config(config)
    env = build_vector_env(config, stage_tasks(config)[1], ctx.tokenizer, ctx.reward, settings.n_episodes)
    return _run_agent("rwr", RWRAgent(policy, env, settings), config, ctx, budget,
                      {"rwr": dataclasses.asdict(settings)})


def _run_agent(variant: str, agent: Any, config: Any, ctx: SeedContext, budget: int, info: dict) -> RunResult:
    """`agent.step()` until `agent.num_reward_calls >= budget`, then the final evaluation; the curve has one point
    per update (reward calls so far, mean reward of its episodes), with each update's components and KL."""
    from promptgym.agents.baselines import RunResult

    start_sha = weights_sha256(agent.policy)
    curve: list[tuple[int, float]] = []
    components: list[dict[str, float]] = []
    last: dict[str, float] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    while agent.num_reward_calls < budget:
        last = agent.step()
        curve.append((agent.num_reward_calls, float(last["env/reward_mean"])))
        components.append({key[len("env/"):]: float(value) for key, value in last.items()
                           if key.startswith("env/") and key not in ("env/reward_mean", "env/reward_std")}
                          | {"kl": float(last["objective/kl"]), "wall_s": time.perf_counter() - start,
                             "cpu_s": time.process_time() - cpu_start})
    wall_time_s = time.perf_counter() - start
    cost = _training_cost(cpu_start, agent.env.reward)
    eval_reward, eval_components, eval_kl = _evaluate(config, agent.policy.model, ctx)
    info = {"updates": agent.num_updates, "episodes": agent.num_episodes, "last_kl": last.get("objective/kl"), **cost,
            **info}
    return RunResult(variant, config.seed, curve, eval_reward, eval_components, agent.num_reward_calls, budget,
                     wall_time_s, "sft", start_sha, info, curve_components=components, eval_kl=eval_kl)


def _training_cost(cpu_start: float, reward: Any) -> dict[str, float]:
    """What a run's training cost beside its wall time: the process's CPU seconds since `cpu_start` (all threads; on
    a shared machine a steadier measure than wall time) and the images its reward rendered (the caches, and so the
    counters, are cleared before every run; absent when the reward renders nothing)."""
    cost = {"cpu_time_s": time.process_time() - cpu_start}
    rendered = [v for k, v in reward_stats(reward).items() if k.endswith("images_rendered")] \
        if isinstance(reward, CompositeReward) else []
    if rendered:
        cost["images_rendered"] = float(sum(rendered))
    return cost


def run_reference(config: Any, policy: Any, ctx: SeedContext, budget: int) -> RunResult:
    """The `sft` row: the seed's SFT policy evaluated as every variant is, with no training (0 reward calls)."""
    from promptgym.agents.baselines import RunResult

    eval_reward, eval_components, eval_kl = _evaluate(config, policy.model, ctx)
    return RunResult(REFERENCE, config.seed, [], eval_reward, eval_components, 0, budget, 0.0, "sft",
                     weights_sha256(policy), {}, eval_kl=eval_kl)


def run_baseline(variant: str, config: Any, policy: Any, ctx: SeedContext, budget: int,
                 num_generations: int = 4) -> RunResult:
    """SB3 PPO (from scratch) or TRL GRPO / RLOO (on a copy of `policy`) with the config's env, tasks and sizes."""
    from promptgym.agents.baselines import run_sb3_ppo, run_trl

    tasks = stage_tasks(config)[1]
    common = dict(max_new_tokens=config.env.max_new_tokens, max_context_tokens=config.env.max_context_tokens)
    eval_kl = None
    if variant == "sb3-ppo":
        result = run_sb3_ppo(tasks, ctx.tokenizer, ctx.reward, budget, config.seed, n_envs=config.ppo.n_episodes,
                             eval_tasks=list(ctx.eval_tasks), eval_episodes=ctx.eval_episodes, eval_seed=EVAL_SEED,
                             **common)
        result.eval_reward, result.eval_components = _stationary(result.eval_reward, result.eval_components)
        start, start_sha = "scratch", None
    else:
        start, start_sha = "sft", weights_sha256(policy)
        cpu_start = time.process_time()
        result = run_trl(variant, policy, ctx.tokenizer, tasks, ctx.reward, budget, config.seed,
                         batch_size=config.ppo.n_episodes, num_generations=num_generations,
                         learning_rate=config.ppo.learning_rate, beta=config.ppo.kl_coef, **common)
        result.info.update(_training_cost(cpu_start, ctx.reward))
        result.eval_reward, result.eval_components, eval_kl = _evaluate(config, result.trained.to("cpu"), ctx)
    info = {k: v for k, v in result.info.items() if k != "last_log"}
    return dataclasses.replace(result, variant=variant, curve=[(int(x), float(y)) for x, y in result.curve],
                               eval_reward=float(result.eval_reward), eval_components=dict(result.eval_components),
                               eval_kl=eval_kl, budget=budget, start=start, start_sha256=start_sha, info=info,
                               trained=None)


def _seed_context(seed: int, base: Any, variants: Sequence[str], configs: dict[str, Any], eval_episodes: int,
                  result: BenchResult, bar: Any) -> SeedContext:
    """Tokenizer, SFT start, rewards and eval tasks of one seed, built from its `base` config (the `sft` row's);
    the training rewards of the oracle and the surrogate row from their own configs when they run."""
    seed_everything(seed)
    tokenizer = build_tokenizer(base)
    eval_tasks = load_tasks(base.data.tasks, split=base.data.eval_split)
    start_policy = None
    if any(v != "sb3-ppo" for v in variants):
        bar.set_postfix_str(f"seed {seed}: SFT")
        start_policy = build_policy(base, tokenizer)
        start = time.perf_counter()
        if base.sft.enabled:
            sft_warm_start(start_policy, tokenizer, stage_tasks(base)[0],
                           [t for t in eval_tasks if t.target is not None][:256], config=base.sft, progress=False)
        result.sft_wall_time_s[seed] = time.perf_counter() - start
    ctx = SeedContext(tokenizer, start_policy, build_run_reward(base, tokenizer), eval_tasks, eval_episodes)
    ctx.training_rewards = {v: build_run_reward(configs[v], tokenizer) for v in variants if v in TRAINING_REWARDS}
    return ctx


def _sft_starts(runs: Iterable[RunResult], seed: int) -> set[str]:
    """The weights fingerprints of the SFT starts `seed`'s language-model runs started from (older runs: none)."""
    return {run.start_sha256 for run in runs if run.seed == seed and run.start == "sft"} - {None}


def _check_resumed_start(seed: int, ctx: SeedContext, runs: Sequence[RunResult]) -> None:
    """A resumed seed's new runs must start from the SFT weights its finished runs started from: SFT is rerun on
    resume, and another torch thread count (or another version of the code) gives other weights, which would break
    the bench's one-start-per-seed rule without a trace."""
    if ctx.start is None:
        return
    sha = weights_sha256(ctx.start)
    earlier = sorted(_sft_starts(runs, seed) - {sha})
    if earlier:
        raise ValueError(
            f"--resume: seed {seed}'s SFT start now has weights {sha[:12]}, its finished runs started from "
            f"{[h[:12] for h in earlier]}; resume with the --threads and the code they ran with, or remove seed {seed}'s "
            "runs from bench.json to rerun them"
        )


def _run_variant(variant: str, config: Any, ctx: SeedContext, budget: int) -> RunResult:
    for reward in (ctx.reward, *ctx.training_rewards.values()):
        if reward is not None:
            clear_reward_caches(reward)  # no variant profits from renders cached by an earlier one
            if isinstance(reward, CompositeReward):
                reward.reset_stats()  # nor starts from the normalisation statistics an earlier one left
    seed_everything(config.seed)
    policy = copy.deepcopy(ctx.start) if ctx.start is not None and variant != "sb3-ppo" else None
    if variant == REFERENCE:
        return run_reference(config, policy, ctx, budget)
    if variant in PPO_VARIANTS or variant in TRAINING_REWARDS:
        return run_ppo_variant(variant, config, policy, ctx, budget)
    if variant == "rwr":
        return run_rwr_variant(config, policy, ctx, budget)
    return run_baseline(variant, config, policy, ctx, budget)


def load_bench(out: str | os.PathLike) -> tuple[dict[str, Any], list[RunResult]]:
    """The settings and runs a bench wrote to `out/bench.json` (for `--resume` and for reading results)."""
    from promptgym.agents.baselines import RunResult

    path = Path(out) / "bench.json"
    if not path.is_file():
        raise FileNotFoundError(f"no bench.json in {str(out)!r}; nothing to resume (run without --resume)")
    raw = json.loads(path.read_text(encoding="utf-8"))
    settings = {key: raw.get(key) for key in RESUME_KEYS}
    return settings, [RunResult.from_dict(run) for run in raw["runs"]]


def _resumed_runs(result: BenchResult, out: Path) -> list[RunResult]:
    settings, runs = load_bench(out)
    if settings != result.settings():
        differing = {k: (settings[k], result.settings()[k]) for k in RESUME_KEYS if settings[k] != result.settings()[k]}
        raise ValueError(f"--resume: {out}/bench.json was written with other settings {differing} "
                         "(found, asked); resume with the same ones or use another --out")
    raw = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    result.sft_wall_time_s.update({int(k): v for k, v in raw.get("sft_wall_time_s", {}).items()
                                   if int(k) in result.seeds})
    return [run for run in runs if run.variant in result.variants and run.seed in result.seeds]


def merge_benches(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> BenchResult:
    """The runs of several bench directories as one bench in `out` (tables and plots rewritten): how seeds run in
    parallel processes (`--set seed=S --seeds 1 --out DIR_S`, one per core) become one table. Every source must
    have the same settings (as `--resume` checks); a later source's run of a (variant, seed) replaces an earlier
    one's, and every language-model run of a seed must then start from the same SFT weights (checked: replace a
    seed whole, not in part)."""
    if not sources:
        raise ValueError("merge_benches needs at least one bench directory")
    loaded = [(Path(src), *load_bench(src)) for src in sources]
    for _, settings, _ in loaded:  # `--set seed=S` only chooses a bench's seeds: benches of other seeds still join
        overrides = [str(o) for o in settings["overrides"] or []]
        settings["overrides"] = [o for o in overrides if not "".join(o.split()).startswith("seed=")]
    first_path, first_settings, _ = loaded[0]
    for path, settings, _ in loaded[1:]:
        differing = {k: (first_settings[k], settings[k]) for k in RESUME_KEYS if settings[k] != first_settings[k]}
        if differing:
            raise ValueError(f"{path}/bench.json has other settings than {first_path}/bench.json: {differing}")
    runs: dict[tuple[str, int], RunResult] = {}
    sft_wall: dict[int, float] = {}
    for path, _, found in loaded:
        runs.update({(run.variant, run.seed): run for run in found})
        raw = json.loads((path / "bench.json").read_text(encoding="utf-8"))
        sft_wall.update({int(k): float(v) for k, v in raw.get("sft_wall_time_s", {}).items()})
    for seed in sorted({seed for _, seed in runs}):
        starts = _sft_starts(runs.values(), seed)
        if len(starts) > 1:
            raise ValueError(f"merged seed {seed} has runs from {len(starts)} different SFT starts "
                             f"{sorted(h[:12] for h in starts)}; replace a seed with all of its runs")
    variants = [v for v in VARIANTS if any(variant == v for variant, _ in runs)]
    seeds = sorted({seed for _, seed in runs})
    result = BenchResult(sorted(runs.values(), key=lambda r: (variants.index(r.variant), r.seed)), variants, seeds,
                         first_settings["budget"], first_settings["reward"], list(first_settings["overrides"]),
                         first_settings["eval_episodes"], sft_wall, config=first_settings["config"])
    result.files = write_bench(result, out)
    return result


def run_bench(
    variants: Sequence[str] = VARIANTS,
    seeds: int = 5,
    budget: int = 1024,
    out: str | os.PathLike = "runs/bench",
    overrides: Sequence[str] = (),
    reward: str = "config",
    eval_episodes: int = 64,
    progress: bool = True,
    on_run: Callable[[RunResult], Any] | None = None,
    config: str | os.PathLike = BENCH_CONFIG,
    resume: bool = False,
) -> BenchResult:
    """Train every variant on `seeds` seeds (config seed, +1, ...) for `budget` reward calls; write the tables,
    plots and raw numbers into `out` after every run (see the module doc). `resume` keeps the runs `out/bench.json`
    already has (same settings, checked) and runs the rest. `on_run(run)` is called after each new run."""

    variants = parse_variants(variants)
    for name, value in (("seeds", seeds), ("budget", budget), ("eval_episodes", eval_episodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}; expected a positive integer")
    first, *_ = [variant_config(v, None, overrides, reward, config) for v in variants]  # every variant's errors now
    if first.env.kind != "edit":
        raise ValueError(f"config {os.fspath(config)!r} trains on env.kind={first.env.kind!r}; promptgym bench compares "
                         "single-turn variants: compare chat training with python -m promptgym.experiments.bench_chat")
    first_seed = first.seed  # --set seed=S starts from S
    seed_list = [first_seed + i for i in range(seeds)]
    out = Path(out)
    result = BenchResult([], variants, seed_list, budget, reward, list(overrides), eval_episodes,
                         config=os.fspath(config))
    if resume:
        result.runs = _resumed_runs(result, out)
    out.mkdir(parents=True, exist_ok=True)
    done = {(run.variant, run.seed) for run in result.runs}
    bar = tqdm(total=len(variants) * len(seed_list), initial=len(done), desc="bench", unit="run",
               disable=not progress)
    try:
        for seed in seed_list:
            todo = [v for v in variants if (v, seed) not in done]
            if not todo:
                continue
            base = variant_config(REFERENCE, seed, overrides, reward, config)
            configs = {v: variant_config(v, seed, overrides, reward, config) for v in variants}
            _check_shared(base, configs)
            ctx = _seed_context(seed, base, todo, configs, eval_episodes, result, bar)
            _check_resumed_start(seed, ctx, result.runs)
            for variant in todo:
                bar.set_postfix_str(f"seed {seed}: {variant}")
                run = _run_variant(variant, configs[variant], ctx, budget)
                result.runs.append(run)
                result.files = write_bench(result, out)
                if on_run is not None:
                    on_run(run)
                bar.update(1)
                kl = "" if run.eval_kl is None else f", KL {run.eval_kl:.2f}"
                gold = "".join(f", {k} {run.eval_components[k]:.3f}" for k in GOLD if k in run.eval_components)
                bar.write(f"{variant:>12} seed {seed}: eval reward {run.eval_reward:.3f}{gold}{kl}, "
                          f"{run.reward_calls} reward calls, {run.wall_time_s:.0f} s")
    finally:
        bar.close()
    result.runs.sort(key=lambda run: (variants.index(run.variant), run.seed))
    result.files = write_bench(result, out)
    return result


# -------------------------------------------------------------------------------------------------- table
def display_components(names: Sequence[str]) -> list[str]:
    """One column per reward term: its delta when the term is scored in delta mode (what the total adds up), and
    the gold metrics (`gold/...`) of the synth world beside them."""
    names = list(names)
    terms = [n for n in names if "/" not in n or n.startswith("gold/")]
    gold = [n for n in GOLD if n in terms] + sorted(n for n in terms if n.startswith("gold/") and n not in GOLD)
    terms = [n for n in terms if not n.startswith("gold/")] + gold
    return [f"{n}/delta" if f"{n}/delta" in names else n for n in terms]


def _metric_values(runs: Sequence[RunResult], key: str) -> list[float]:
    if key == "reward":
        values = [r.eval_reward for r in runs]
    elif key == "kl":
        values = [r.eval_kl for r in runs]
    else:
        values = [r.eval_components.get(key) for r in runs]
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def summary_rows(result: BenchResult, n_resamples: int = 2000) -> list[dict[str, Any]]:
    """Per variant: IQM and 95% stratified-bootstrap CI over seeds of the eval reward, each component and the KL to
    the start; the mean change from the same seed's `sft` row; means of wall time and reward calls."""

    components = display_components(sorted({n for run in result.runs for n in run.eval_components}))
    rows = []
    for variant in result.variants:
        runs = result.of(variant)
        if not runs:
            continue
        row: dict[str, Any] = {"variant": variant, "start": runs[0].start, "seeds": len(runs)}
        for key in ["reward", *components, "kl"]:
            values = _metric_values(runs, key)
            value, low, high = iqm_ci(values, n_resamples=n_resamples) if values else (math.nan,) * 3
            row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"] = value, low, high
        for key in ["reward", *[k for k in GOLD if k in components]]:
            name = "reward_vs_sft" if key == "reward" else f"{key}_vs_sft"
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = _paired_change(result, runs, key, REFERENCE,
                                                                                     n_resamples)
        row["wall_time_s"] = float(np.mean([r.wall_time_s for r in runs]))
        for key in COST_KEYS:  # recorded since 2026-11-30: n/a for the runs of older benches
            values = [float(r.info[key]) for r in runs if key in r.info]
            row[key] = float(np.mean(values)) if values else math.nan
        row["reward_calls"] = float(np.mean([r.reward_calls for r in runs]))
        row["reward_calls_min"] = min(r.reward_calls for r in runs)
        row["reward_calls_max"] = max(r.reward_calls for r in runs)
        rows.append(row)
    return rows


def _paired_change(result: BenchResult, runs: list[RunResult], key: str, against: str,
                   n_resamples: int) -> tuple[float, float, float]:
    """Mean and 95% bootstrap CI over seeds of (a variant's eval `key` - the same seed's `against` run's), for a
    variant that starts from SFT; nan without such pairs (SB3, which does not start from SFT; `against` itself)."""

    other = {run.seed: _metric_values([run], key) for run in result.of(against)}
    changes = [_metric_values([run], key)[0] - other[run.seed][0] for run in runs
               if run.start == "sft" and other.get(run.seed) and _metric_values([run], key)]
    if not changes or all(run.variant == against for run in runs):
        return (math.nan,) * 3
    return mean_ci(changes, n_resamples=n_resamples)


def refinement_rows(result: BenchResult, n_resamples: int = 2000) -> list[dict[str, Any]]:
    """Per DiffChat refinement that ran beside plain `ppo`: its per-seed paired change against `ppo` in the eval
    reward, each gold metric and the KL (mean [95% CI] over the seeds both ran)."""
    if not result.of(PAIRED_BASE):
        return []
    keys = ["reward", *[k for k in GOLD if any(k in r.eval_components for r in result.runs)], "kl"]
    rows = []
    for variant in REFINEMENTS:
        runs = result.of(variant)
        if not runs:
            continue
        row: dict[str, Any] = {"variant": variant, "seeds": len({r.seed for r in runs} & {r.seed for r in
                                                                                           result.of(PAIRED_BASE)})}
        for key in keys:
            row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"] = _paired_change(result, runs, key, PAIRED_BASE,
                                                                                   n_resamples)
        rows.append(row)
    return rows


def _value_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys = list(rows[0]) if rows else []
    return [k for k in keys if k not in ("variant", "start", "seeds") and not k.endswith(("_ci_low", "_ci_high"))
            and not k.startswith(("wall_time", "reward_calls")) and k not in COST_KEYS and not k.endswith("_vs_sft")]


def _vs_sft_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys = [k for k in (list(rows[0]) if rows else []) if k.endswith("_vs_sft") and not k.endswith("_ci_low")]
    return [k for k in keys if any(math.isfinite(row[k]) for row in rows)]


def _signed_ci_text(row: dict[str, Any], key: str) -> str:
    if not math.isfinite(row[key]):
        return "—"
    return f"{row[key]:+.3f} [{row[f'{key}_ci_low']:+.3f}, {row[f'{key}_ci_high']:+.3f}]"


def _ci_text(row: dict[str, Any], key: str) -> str:
    if not math.isfinite(row[key]):
        return "n/a"
    return f"{row[key]:.3f} [{row[f'{key}_ci_low']:.3f}, {row[f'{key}_ci_high']:.3f}]"


START_TEXT = {"sft": "SFT", "scratch": "scratch (no LM)"}
COLUMN_TEXT = {"reward": "proxy reward", "kl": "KL to start", "gold/content": "gold content",
               "gold/aesthetic": "gold aesthetic", "gold/text_content": "gold text content", "reward/unnormalized": "proxy reward"}


def _column(key: str) -> str:
    if key.endswith("_vs_sft"):
        return f"{COLUMN_TEXT.get(key[:-len('_vs_sft')], key[:-len('_vs_sft')])} vs SFT"
    return COLUMN_TEXT.get(key, key)


def markdown_table(result: BenchResult, rows: list[dict[str, Any]],
                   refinements: list[dict[str, Any]] | None = None, speed: list[dict[str, Any]] | None = None) -> str:
    keys, paired = _value_keys(rows), _vs_sft_keys(rows)
    header = ["variant", "start", "seeds", *[_column(k) for k in keys], *[_column(k) for k in paired],
              "wall time (s)", "CPU time (s)", "images rendered", "reward calls"]
    lines = [
        "# promptgym bench",
        "",
        f"- config `{result.config}`; budget {result.budget} reward calls per run; seeds {result.seeds}; reward: "
        f"`{result.reward}`" + (" (content integrity ratio only)" if result.reward == "integrity" else
                                " (the config's reward)")
        + ("".join(f"; `{v}` trains on {TRAINING_REWARDS[v][1]} and is scored by the config's, as every variant"
                   for v in TRAINING_REWARDS if result.of(v))),
        f"- overrides: {result.overrides or 'none'}",
        f"- cells: interquartile mean over seeds [95% stratified-bootstrap CI] of the final evaluation: "
        f"{result.eval_episodes} fresh episodes on the eval split (seeded, not counted in the budget); proxy reward: "
        "the weighted sum of the terms, before normalisation when the config normalises (so it compares across "
        "variants; each variant also trains from fresh statistics); KL to start: nats per episode (k1) against the "
        "seed's SFT start",
        "- start: SFT = a copy of the seed's SFT'd policy (shared by every LM variant of the seed); scratch = SB3 "
        "PPO, which has no language model",
        "- wall time, CPU time (of the process, all threads: steadier than wall time on a shared machine), images "
        "rendered by the training reward: training only (mean over seeds; SFT and evaluation excluded)",
        *(["- vs SFT: the variant's eval minus the same seed's sft row, mean [95% bootstrap CI] over seeds"]
          if paired else []),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        calls = (f"{row['reward_calls']:.0f}" if row["reward_calls_min"] == row["reward_calls_max"]
                 else f"{row['reward_calls_min']}–{row['reward_calls_max']}")
        cells = [row["variant"], START_TEXT.get(row["start"], row["start"]), str(row["seeds"]),
                 *[_ci_text(row, k) for k in keys], *[_signed_ci_text(row, k) for k in paired],
                 f"{row['wall_time_s']:.1f}", *[_cost_text(row[k]) for k in COST_KEYS], calls]
        lines.append("| " + " | ".join(cells) + " |")
    if refinements:
        rkeys = [k for k in refinements[0] if k not in ("variant", "seeds") and not k.endswith(("_ci_low", "_ci_high"))]
        lines += ["", f"## DiffChat refinements against plain `{PAIRED_BASE}` (same seed and start; mean change "
                      "[95% bootstrap CI] over seeds)", "",
                  "| variant | seeds | " + " | ".join(f"Δ {_column(k)}" for k in rkeys) + " |",
                  "|" + "---|" * (len(rkeys) + 2)]
        for row in refinements:
            lines.append(f"| {row['variant']} | {row['seeds']} | "
                         + " | ".join(_signed_ci_text(row, k) for k in rkeys) + " |")
    if speed:
        lines += ["", *speed_markdown(speed)]
    if result.reward == "config" and load_config(result.config, list(result.overrides)).reward.preset == "tiny":
        lines += ["", "On the tiny stack the image terms come from random tiny models: they exercise the pipeline "
                      "and say nothing about image quality."]
    return "\n".join(lines) + "\n"


def bench_speed_rows(result: BenchResult) -> list[dict[str, Any]]:
    """Speed per result against `SPEED_REFERENCE` (`promptgym.experiments.speed`): per variant and seed, the CPU
    seconds of training until its learning curve reached the reference's final level of gold aesthetic and of the
    proxy (the proxy not for the rows trained on another reward); [] when the reference did not run."""
    return speed_rows(result.runs, SPEED_REFERENCE, SPEED_METRICS, smooth=SPEED_SMOOTH, clock="cpu_s",
                      skip={"reward/unnormalized": list(TRAINING_REWARDS)})


def speed_markdown(speed: list[dict[str, Any]]) -> list[str]:
    """The bench.md section of `bench_speed_rows`."""
    lines = [f"## Speed per result against `{SPEED_REFERENCE}`", "",
             f"CPU seconds of training until the trailing mean of {SPEED_SMOOTH} learning-curve points (training "
             f"samples) first reached `{SPEED_REFERENCE}`'s final trailing mean on the same seed; speed = "
             f"`{SPEED_REFERENCE}`'s time to that level / the variant's (above 1: there sooner; 0: not within the "
             "budget), median over seeds. *: some times spread linearly over reward calls from the run's total "
             "(runs recorded before per-point times). The curves are of training episodes, so they include each "
             "variant's sampler: a variant whose samples start above the reference's final level (our PPO's "
             "typical set on the proxy) reaches it at once; `speed.png` shows the curves.", "",
             "| metric | variant | reached / seeds | CPU s to the level (median) | speed (median) | speed per seed |",
             "|---|---|---|---|---|---|"]
    for row in speed:
        time_text = "n/a" if row["median_time"] is None else f"{row['median_time']:.0f}"
        per_seed = ", ".join(f"{s}: {v:.2f}" for s, v in zip(row["seeds"], row["speed"], strict=True))
        lines.append(f"| {_column(row['metric'])} | {row['variant']}{'*' if row['estimated'] else ''} | "
                     f"{row['reached']}/{len(row['seeds'])} | {time_text} | {row['median_speed']:.2f} | {per_seed} |")
    return lines


def _cost_text(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def print_table(result: BenchResult, rows: list[dict[str, Any]]) -> None:
    """The summary as a rich table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    keys, paired = _value_keys(rows), _vs_sft_keys(rows)
    table = Table(title=f"bench on {result.config}: {result.budget} reward calls, {len(result.seeds)} seed(s), "
                        f"reward={result.reward}; IQM [95% CI] over seeds")
    for column in ["variant", "start", *[_column(k) for k in keys], *[_column(k) for k in paired], "wall s",
                   "reward calls"]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["variant"], START_TEXT.get(row["start"], row["start"]), *[_ci_text(row, k) for k in keys],
                      *[_signed_ci_text(row, k) for k in paired], f"{row['wall_time_s']:.1f}",
                      f"{row['reward_calls']:.0f}")
    Console(width=max(160, Console().width)).print(table)


def write_bench(result: BenchResult, out: str | os.PathLike) -> list[Path]:
    """bench.md, bench.csv, bench.json, curves.png and gold_vs_kl.png (when there is something to plot) in `out`."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(result)
    refinements = refinement_rows(result)
    md = out / "bench.md"
    speed = bench_speed_rows(result)
    md.write_text(markdown_table(result, rows, refinements, speed), encoding="utf-8")
    csv_path = out / "bench.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["variant"])
        writer.writeheader()
        writer.writerows(rows)
    raw = {
        "variants": result.variants,
        "seeds": result.seeds,
        **result.settings(),
        "sft_wall_time_s": {str(k): v for k, v in result.sft_wall_time_s.items()},
        "summary": rows,
        "refinements_vs_ppo": refinements,
        f"speed_vs_{SPEED_REFERENCE}": speed,
        "runs": [run.to_dict(RUN_FIELDS) for run in result.runs],
    }
    json_path = out / "bench.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2, default=_json_default), encoding="utf-8")
    tmp.replace(json_path)  # atomic: an interrupted bench leaves a readable bench.json to resume from
    return [md, csv_path, json_path, *write_plots(result, out)]


def write_plots(result: BenchResult, out: Path) -> list[Path]:
    """`curves.png` (reward and gold against reward calls) and `gold_vs_kl.png`, for the variants that have them."""
    trained = [v for v in result.variants if v != REFERENCE and result.of(v)]
    files = []
    if trained:
        metrics = ["reward", *[k for k in GOLD if any(k in c for r in result.runs for c in r.curve_components)]]
        panels = {}
        for metric in metrics:
            label = "training reward (the variant's own)" if metric == "reward" else f"{metric} (training episodes)"
            panels[label] = {v: [_curve(run, metric) for run in result.of(v)] for v in trained}
            panels[label] = {v: c for v, c in panels[label].items() if all(c)}
        panels = {k: v for k, v in panels.items() if v}
        if panels:
            files.append(plot_curve_panels(panels, out / "curves.png", band="ci", order=result.variants, smooth=3,
                                           title=f"bench on {result.config}, {result.budget} reward calls"))
    finals = {v: [(r.eval_kl, r.eval_components) for r in result.of(v) if r.eval_kl is not None]
              for v in result.variants}
    finals = {v: p for v, p in finals.items() if p}
    if finals and any(k in c for p in finals.values() for _, c in p for k in GOLD):
        trajectories = {v: [[(c["kl"], c) for c in r.curve_components if "kl" in c] for r in result.of(v)]
                        for v in finals}
        files.append(plot_gold_vs_kl(finals, out / "gold_vs_kl.png", metrics=GOLD, trajectories=trajectories,
                                     order=result.variants))
    if (speed := _speed_panels(result, trained)):
        files.append(plot_curve_panels(speed, out / "speed.png", band="ci", order=result.variants,
                                       smooth=SPEED_SMOOTH, xlabel="training CPU seconds",
                                       title=f"bench on {result.config}: the learning curves against CPU time"))
    return files


def _speed_panels(result: BenchResult, trained: Sequence[str]) -> dict[str, dict[str, list]]:
    """The `speed.png` panels: gold aesthetic and the proxy of the training episodes against training CPU seconds,
    for the variants whose every run recorded per-update times (the proxy not for rows trained on another reward)."""
    panels: dict[str, dict[str, list]] = {}
    for metric in SPEED_METRICS:
        label = f"{_column(metric)} (training episodes)"
        for variant in trained:
            runs = result.of(variant)
            if metric == "reward/unnormalized" and variant in TRAINING_REWARDS:
                continue
            if all(_measured_times(r) and metric_curve(r, metric) is not None for r in runs):
                panels.setdefault(label, {})[variant] = [[(c["cpu_s"], c[metric]) for c in r.curve_components]
                                                         for r in runs]
    return panels


def _measured_times(run: RunResult) -> bool:
    """Whether every curve point of `run` carries its own training CPU time (not spread linearly from a total)."""
    times, estimated = elapsed(run, "cpu_s")
    return bool(times) and not estimated


def _curve(run: RunResult, metric: str) -> list[tuple[float, float]]:
    if metric == "reward":
        return [(float(x), float(y)) for x, y in run.curve]
    return [(float(x), float(c[metric])) for (x, _), c in zip(run.curve, run.curve_components) if metric in c]


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)
