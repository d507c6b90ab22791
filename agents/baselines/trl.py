"""TRL's GRPO and RLOO on the caller's (SFT'd) policy LM, held to a budget of reward calls.

`run_trl` trains with TRL's `GRPOTrainer` / `RLOOTrainer`, the reward reaching TRL through
`promptgym.rewards.as_trl_reward_func`. The trainer loads its own copy of the LM from a temporary directory, so the
caller's policy is never modified (TRL mirrors the pad token into the model config, may disable dropout, and RLOO
builds its KL reference from the model's path).

The reward calls are counted by a `CountingReward` around the caller's reward: one reward call of
`generation_batch_size` completions per generation batch, as many batches as reach the budget; the learning curve has
one point per batch. The global RNG states (TRL seeds `random`, numpy and torch globally) are restored afterwards and
nothing is written outside a temporary (or the given) directory.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from promptgym.agents.baselines.common import (
    RunResult,
    as_tasks,
    check_positive_int,
    check_seed,
    preserved_global_rngs,
    run_result,
)
from promptgym.agents.baselines.evaluate import evaluate_lm
from promptgym.agents.policy import PolicyWithValue
from promptgym.envs import EditTask, EditTemplate, PromptEditVectorEnv, tasks_to_dataset
from promptgym.envs.prompt_edit import EditEpisodes
from promptgym.rewards import CompositeReward, CountingReward, Scorer, as_trl_reward_func

TRL_ALGORITHMS = ("grpo", "rloo")


def _trainer_class(algorithm: str):
    """TRL's trainer for `algorithm`, with the usage-telemetry ping off (a benchmark run must not call out)."""
    import trl

    base = {"grpo": trl.GRPOTrainer, "rloo": trl.RLOOTrainer}[algorithm]
    return type(f"Offline{base.__name__}", (base,), {"_send_telemetry": lambda self: None})


def _trl_config(algorithm: str, overrides: Mapping[str, Any]):
    import trl

    config_cls = {"grpo": trl.GRPOConfig, "rloo": trl.RLOOConfig}[algorithm]
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"config_overrides has unknown {config_cls.__name__} field(s) {unknown}")
    return config_cls(**overrides)


def run_trl(
    algorithm: str,
    policy: PolicyWithValue | nn.Module,
    tokenizer: Any,
    tasks: Sequence[EditTask] | str | os.PathLike,
    reward: CompositeReward | Scorer,
    budget_reward_calls: int,
    seed: int = 0,
    *,
    batch_size: int = 32,
    num_generations: int = 4,
    max_new_tokens: int = 48,
    max_context_tokens: int = 64,
    learning_rate: float = 1e-4,
    beta: float | None = None,
    num_iterations: int = 1,
    template: EditTemplate | None = None,
    output_dir: str | os.PathLike | None = None,
    use_cpu: bool = True,
    config_overrides: Mapping[str, Any] | None = None,
    progress: bool = False,
    final_episodes: int = 64,
    eval_tasks: Sequence[EditTask] | str | os.PathLike | None = None,
    eval_episodes: int = 64,
    eval_seed: int = 12345,
) -> RunResult:
    """Train a copy of `policy`'s LM with TRL's GRPO or RLOO until the reward has scored `budget_reward_calls`
    completions; the caller's `policy` is left untouched.

    Each generation batch is `batch_size` completions (`batch_size / num_generations` prompts, `num_generations`
    completions each, sampled at temperature 1 from the full distribution as our collector does), scored in one
    reward call and used for `num_iterations` optimizer steps. `beta` is the KL coefficient (None: TRL's default,
    0 for GRPO and 0.05 for RLOO). The learning rate is constant, as in our PPO. `config_overrides` set any other
    `GRPOConfig`/`RLOOConfig` field. Single process only. Files go under `output_dir` (default: a temporary
    directory, removed afterwards).
    """
    if algorithm not in TRL_ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r}; expected one of {list(TRL_ALGORITHMS)}")
    budget = check_positive_int("budget_reward_calls", budget_reward_calls)
    seed = check_seed(seed)
    batch_size = check_positive_int("batch_size", batch_size)
    num_generations = check_positive_int("num_generations", num_generations)
    num_iterations = check_positive_int("num_iterations", num_iterations)
    final_episodes = check_positive_int("final_episodes", final_episodes)
    if num_generations < 2 or batch_size % num_generations:
        raise ValueError(
            f"batch_size={batch_size}, num_generations={num_generations}; expected num_generations >= 2 dividing "
            "batch_size (each prompt gets num_generations completions, compared with each other)"
        )
    model = policy.model if isinstance(policy, PolicyWithValue) else policy
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"policy={type(policy).__name__}; expected a PolicyWithValue or a transformers causal LM")
    tasks = as_tasks(tasks)
    template = template or EditTemplate()
    # The same context check as the env (a context longer than max_context_tokens is an error, never clipped).
    EditEpisodes(tasks, tokenizer, template, max_new_tokens, max_context_tokens)
    counter = CountingReward(reward)
    reward_func = as_trl_reward_func(counter)
    prompts_per_batch = batch_size // num_generations
    # TRL's sampler draws each batch's prompts without replacement: repeat a short task list to fill one batch.
    dataset = tasks_to_dataset(tasks * math.ceil(prompts_per_batch / len(tasks)), template=template)

    with preserved_global_rngs(), _working_dir(output_dir) as work, _transformers_progress_bars(progress):
        start = time.perf_counter()
        model.save_pretrained(work / "policy")  # TRL trains (and RLOO references) its own copy
        settings = dict(
            output_dir=str(work / "trainer"),
            max_steps=1,  # set below, from the resolved generation batch
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=1,
            steps_per_generation=1,
            num_generations=num_generations,
            num_iterations=num_iterations,
            max_completion_length=max_new_tokens,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            learning_rate=learning_rate,
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=use_cpu,
            bf16=False,
            fp16=False,
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
            disable_tqdm=not progress,
        )
        # TRL turns activation checkpointing on by default (pointless for small models); transformers 5 renamed it.
        settings[_checkpointing_flag(algorithm)] = False
        if beta is not None:
            settings["beta"] = beta
        config = _trl_config(algorithm, settings | dict(config_overrides or {}))
        # One generation batch (generation_batch_size completions, one reward call) feeds
        # steps_per_generation * num_iterations micro-steps, i.e. that / gradient_accumulation_steps optimizer steps.
        micro_steps = config.steps_per_generation * config.num_iterations
        if micro_steps % config.gradient_accumulation_steps:
            raise ValueError(
                f"steps_per_generation * num_iterations = {micro_steps} is not a multiple of "
                f"gradient_accumulation_steps={config.gradient_accumulation_steps}; a reward budget needs whole "
                "generation batches per optimizer step"
            )
        generations = math.ceil(budget / config.generation_batch_size)
        config.max_steps = generations * micro_steps // config.gradient_accumulation_steps
        trainer = _trainer_class(algorithm)(
            model=str(work / "policy"),
            reward_funcs=[reward_func],
            args=config,
            train_dataset=dataset,
            processing_class=copy.deepcopy(tokenizer),
        )
        if not progress:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        trainer.train()
        wall_time_s = time.perf_counter() - start
        expected = generations * config.generation_batch_size
        if counter.reward_calls != expected or counter.num_batches != generations:
            raise RuntimeError(
                f"TRL {algorithm} scored {counter.reward_calls} completions in {counter.num_batches} reward calls; "
                f"expected {expected} in {generations} (generation_batch_size={config.generation_batch_size})"
            )
        trained = trainer.accelerator.unwrap_model(trainer.model)
        curve, seen = [], 0
        for size in counter.batch_sizes:  # one point per generation batch (one reward call each)
            curve.append((seen + size, float(np.mean(counter.totals[seen : seen + size]))))
            seen += size
        logs = [entry for entry in trainer.state.log_history if "loss" in entry or "reward" in entry]
        info = {
            "algorithm": f"trl-{algorithm}",
            "trl_version": _trl_version(),
            "optimizer_steps": int(trainer.state.global_step),
            "generation_batches": generations,
            "generation_batch_size": int(config.generation_batch_size),
            "num_generations": num_generations,
            "num_iterations": num_iterations,
            "learning_rate": learning_rate,
            "beta": float(config.beta),
            "max_new_tokens": max_new_tokens,
            "last_log": logs[-1] if logs else {},
        }
        result = run_result(
            f"trl-{algorithm}", counter, curve, budget, seed, wall_time_s, final_episodes, "policy", info, trained
        )
        if eval_tasks is not None:
            eval_env = PromptEditVectorEnv(
                check_positive_int("eval_episodes", eval_episodes),
                tasks=as_tasks(eval_tasks, "eval_tasks"),
                tokenizer=tokenizer,
                reward=reward,
                template=template,
                max_new_tokens=max_new_tokens,
                max_context_tokens=max_context_tokens,
                autoreset_mode="disabled",
            )
            # Our collector runs on the CPU: a model trained on an accelerator is moved there for the evaluation.
            result.eval_reward, result.eval_components = evaluate_lm(trained.to("cpu"), eval_env, eval_seed)
    return result


@contextmanager
def _working_dir(output_dir: str | os.PathLike | None) -> Iterator[Path]:
    if output_dir is not None:
        path = Path(output_dir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="promptgym-trl-") as tmp:
        yield Path(tmp)


def _checkpointing_flag(algorithm: str) -> str:
    import trl

    config_cls = {"grpo": trl.GRPOConfig, "rloo": trl.RLOOConfig}[algorithm]
    names = {f.name for f in dataclasses.fields(config_cls)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


@contextmanager
def _transformers_progress_bars(enabled: bool) -> Iterator[None]:
    """Show transformers' save/load progress bars only when `enabled`; restore the global setting after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _trl_version() -> str:
    import trl

    return str(trl.__version__)
