"""Everything a run is built from, made from its `ExperimentConfig`: the seeds, the tokenizer, the policy, the
reward, the data-parallel group and the vector env. `train`, `evaluate`, `edit` and `bench` all build here, so a
run, its evaluation and a benchmark row see the same objects for the same config.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from promptgym.agents import DataParallel, PolicyWithValue, chat_examples
from promptgym.agents.sft import ContextExample
from promptgym.envs import (
    ChatTemplate,
    Conversation,
    EditTask,
    PromptChatVectorEnv,
    PromptEditVectorEnv,
    default_tokenizer,
    load_conversations,
    load_tasks,
    split_by_source,
)
from promptgym.envs.chat import ChatEpisodes
from promptgym.envs.controls import control_tasks
from promptgym.rewards import CompositeReward, Scorer, build_reward


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stage_tasks(config) -> tuple[list[EditTask], list[EditTask]]:
    """`(sft_tasks, ppo_tasks)` of `data.train_split`: the same tasks, or with `data.sft_share < 1` SFT on that
    share of the sources and PPO on the rest. SFT gets only tasks with a target, with control prefixes when
    `data.control_dropout` is set."""
    tasks = load_tasks(config.data.tasks, split=config.data.train_split)
    share = config.data.sft_share
    sft, rest = split_by_source(tasks, share) if share < 1 else (tasks, tasks)
    if not rest or not [t for t in sft if t.target is not None]:
        raise ValueError(f"data.sft_share={share} leaves {len(sft)} SFT and {len(rest)} PPO tasks of the "
                         f"{len(tasks)} in {config.data.train_split!r}; expected some of each")
    sft = [t for t in sft if t.target is not None]
    if config.data.control_dropout is not None:
        sft = control_tasks(sft, config.data.control_dropout, seed=config.seed)
    return sft, rest


def stage_conversations(config) -> tuple[list[Conversation], list[Conversation]]:
    """`(sft_conversations, ppo_conversations)` of `data.conversations`' `data.train_split`, split by `data.sft_share`
    on their sources exactly as `stage_tasks` splits the tasks (the same, below 1 disjoint, sources)."""
    conversations = load_conversations(config.data.conversations, split=config.data.train_split)
    share = config.data.sft_share
    sft, rest = split_by_source(conversations, share) if share < 1 else (conversations, conversations)
    if not sft or not rest:
        raise ValueError(f"data.sft_share={share} leaves {len(sft)} SFT and {len(rest)} PPO conversations of the "
                         f"{len(conversations)} in {config.data.train_split!r}; expected some of each")
    return sft, rest


def sft_examples(config, tokenizer) -> list[EditTask | ContextExample]:
    """What the SFT warm start trains on: the SFT tasks (`stage_tasks`), plus with `sft.chat_turns` every turn of
    the SFT conversations in its chat context along the reference path (`chat_examples`)."""
    tasks: list[EditTask | ContextExample] = list(stage_tasks(config)[0])
    if not config.sft.chat_turns:
        return tasks
    conversations = stage_conversations(config)[0]
    chats = ChatEpisodes(conversations, tokenizer, ChatTemplate(), config.env.max_new_tokens,
                         config.env.max_context_tokens)
    return tasks + chat_examples(chats, conversations)


def build_tokenizer(config) -> Any:
    """The policy's tokenizer: the embedded default for the tiny policy, else the checkpoint's own."""
    if config.policy.name_or_path == "tiny":
        return default_tokenizer()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.policy.name_or_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_parallel(config) -> DataParallel:
    """The launcher's process group when run under `accelerate launch`/`torchrun`; else one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DataParallel()
    return DataParallel.from_environment(cpu=not str(config.policy.device or "cpu").startswith("cuda"))


def policy_device(config, parallel: DataParallel) -> torch.device:
    """`policy.device`, with each data-parallel process on its own GPU (`cuda:<local rank>`) when it is CUDA."""
    device = torch.device(config.policy.device or "cpu")
    if device.type == "cuda" and parallel.enabled:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def build_policy(config, tokenizer, device: torch.device | str | None = None) -> PolicyWithValue:
    """The policy `config.policy` names: the seeded tiny policy, or a checkpoint's `from_pretrained`."""
    p = config.policy
    if p.name_or_path == "tiny":
        policy = PolicyWithValue.tiny(
            tokenizer, seed=p.seed, hidden_size=p.hidden_size, num_layers=p.num_layers, num_heads=p.num_heads
        )
    else:
        dtype = getattr(torch, p.dtype) if p.dtype else None
        policy = PolicyWithValue.from_pretrained(p.name_or_path, **({"dtype": dtype} if dtype else {}))
    device = device or p.device
    return policy.to(device) if device else policy


def build_run_reward(config, tokenizer) -> CompositeReward:
    """The run's reward: `build_reward` with the config's reward section (the tiny stack uses the policy tokenizer)."""
    kwargs = config.reward.build_kwargs()
    return build_reward(tokenizer=tokenizer if kwargs["preset"] == "tiny" else None, **kwargs)


def build_vector_env(
    config,
    tasks: Sequence[EditTask],
    tokenizer: Any,
    reward: CompositeReward | Scorer,
    num_envs: int | None = None,
    **overrides: Any,
) -> PromptEditVectorEnv:
    """A `PromptEditVectorEnv` with the config's sizes and one episode per sub-env (`autoreset_mode="disabled"`):
    `num_envs` sub-envs (default one per task) drawing from `tasks`. `overrides` go to the env as they are."""
    kwargs = dict(
        max_new_tokens=config.env.max_new_tokens,
        max_context_tokens=config.env.max_context_tokens,
        autoreset_mode="disabled",
    )
    return PromptEditVectorEnv(
        len(tasks) if num_envs is None else num_envs,
        tasks=list(tasks),
        tokenizer=tokenizer,
        reward=reward,
        **{**kwargs, **overrides},
    )


def build_chat_env(
    config,
    conversations: Sequence[Conversation],
    tokenizer: Any,
    reward: CompositeReward | Scorer,
    num_envs: int | None = None,
    **overrides: Any,
) -> PromptChatVectorEnv:
    """A `PromptChatVectorEnv` with the config's sizes, one conversation per sub-env and synchronous turns (what
    `ChatRolloutCollector` needs): `num_envs` sub-envs (default one per conversation) drawing from
    `conversations`. `overrides` go to the env as they are."""
    kwargs = dict(max_new_tokens=config.env.max_new_tokens, max_context_tokens=config.env.max_context_tokens,
                  autoreset_mode="disabled", sync_turns=True)
    return PromptChatVectorEnv(len(conversations) if num_envs is None else num_envs, list(conversations),
                               tokenizer, reward, **{**kwargs, **overrides})


def build_training_env(config, tokenizer: Any, reward: CompositeReward | Scorer,
                       num_envs: int) -> PromptEditVectorEnv | PromptChatVectorEnv:
    """The env PPO trains on: `env.kind` "edit", the PPO tasks (`stage_tasks`); "chat", the PPO conversations
    (`stage_conversations`); `num_envs` sub-envs, one episode each."""
    if config.env.kind == "chat":
        return build_chat_env(config, stage_conversations(config)[1], tokenizer, reward, num_envs)
    return build_vector_env(config, stage_tasks(config)[1], tokenizer, reward, num_envs)
