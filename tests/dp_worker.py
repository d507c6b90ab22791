"""A PPO run in one process of a (possibly) data-parallel group, for tests/test_distributed.py.

`run_agent(rank, world, ...)` joins a gloo group of `world` processes (file rendezvous), trains a seeded tiny
policy for a few updates (on single edits, or with `chat` on conversations) with the content-integrity reward (or,
with `length_reward`, the prompt's length) and saves its metrics and its weights after every update
to `out/rank<rank>.pt`. With world=1 it is the single-process reference.
"""

import os
from pathlib import Path

import torch

TASKS = 16


class PromptLength:
    """A reward that differs between samples of one task (integrity is 0 on every sample of the untrained policy)."""

    name = "length"

    def __call__(self, results) -> torch.Tensor:
        return torch.tensor([len(result.prompt) / 16 for result in results], dtype=torch.float32)


def run_agent(rank: int, world: int, init_file: str, out: str, config_kwargs: dict, updates: int,
              chat: bool = False, length_reward: bool = False) -> None:
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from promptgym.agents import DataParallel, PolicyWithValue, PPOAgent, PPOConfig
    from promptgym.envs import (
        PromptChatVectorEnv,
        PromptEditVectorEnv,
        default_tokenizer,
        load_conversations,
        load_tasks,
    )
    from promptgym.rewards import ContentIntegrityScorer

    tokenizer = default_tokenizer()
    policy = PolicyWithValue.tiny(tokenizer, seed=0)
    config = PPOConfig(**config_kwargs)
    reward = PromptLength() if length_reward else ContentIntegrityScorer(mode="ratio")
    common = dict(tokenizer=tokenizer, reward=reward, max_new_tokens=16,
                  autoreset_mode="disabled")
    if chat:  # conversations of 2-4 turns: the processes' shards differ in rows and turns
        env = PromptChatVectorEnv(config.n_episodes // world, load_conversations("demo", "train")[:TASKS],
                                  max_context_tokens=96, sync_turns=True, **common)
    else:
        env = PromptEditVectorEnv(config.n_episodes // world, tasks=load_tasks("demo", "train")[:TASKS], **common)
    # Adam's eps at CleanRL's 1e-5, not torch's 1e-8: a minibatch whose advantages whiten to 0 has a gradient of
    # ~1e-4 made of float noise, and with eps 1e-8 Adam's first step turns that noise into a step of +-lr on every
    # weight, a different one in the single process (seen on one CPU: weights 0.4 apart after one step)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, eps=1e-5)
    agent = PPOAgent(policy, env, config, optimizer=optimizer, parallel=DataParallel(rank, world))
    history, states = [], []
    for _ in range(updates):
        history.append(agent.step())
        states.append({k: v.detach().clone() for k, v in policy.state_dict().items()})
    torch.save({"history": history, "states": states}, Path(out) / f"rank{rank}.pt")
    if world > 1:  # leave the group as `promptgym train` does, then skip the interpreter's teardown: a spawned
        # process finalising with gloo's threads alive can abort in C++ (pytorch/pytorch#179291; seen once in CI)
        DataParallel(rank, world).close()
        os._exit(0)
