"""Benchmark: the cost of one `PromptEditEnv.step` (and `PromptChatEnv.step`) against CartPole-v1's, and
vector-env throughput of both.

    python -m promptgym.experiments.bench_env [--steps 20000] [--rounds 5] [--num-envs 64]

Both single envs are built with `gymnasium.make` (same wrapper stack) and timed in the same run, one step at
a time, on steps that do not end the episode (so no reward is computed for ours). Printed: the median
per-step time of each over `--rounds` rounds and their ratio (target: ours within 5x of CartPole). The vector
env is then stepped with random non-EOS tokens and the render-free content-integrity reward, which it computes
for every episode truncated at `max_new_tokens` (one batched call per 48 steps); printed as steps/s (env steps,
i.e. tokens, per second). The multi-turn chat env (`promptgym/PromptChat-v0`) is measured the same way beside it,
and the ratio printed: a chat turn that ends also builds the next turn's context (history + instruction,
tokenised). Rendering rewards cost far more per episode: `bench_reward` measures those.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np

from promptgym.envs import CHAT_ENV_ID, ENV_ID, PromptChatVectorEnv, PromptEditVectorEnv
from promptgym.rewards import ContentIntegrityScorer


def time_single_steps(env: gym.Env, actions: np.ndarray, ends_episode) -> list[float]:
    """Seconds per step for each action, timing only steps that do not end the episode."""
    times: list[float] = []
    env.reset(seed=0)
    for action in actions:
        start = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        elapsed = time.perf_counter() - start
        if terminated or truncated:
            env.reset()
        elif not ends_episode(action):
            times.append(elapsed)
    return times


def median_step_seconds(env_id: str, actions: np.ndarray, rounds: int, ends_episode, **kwargs) -> float:
    env = gym.make(env_id, **kwargs)
    time_single_steps(env, actions[:200], ends_episode)  # warm-up
    return statistics.median(statistics.median(time_single_steps(env, actions, ends_episode)) for _ in range(rounds))


def vector_steps_per_second(num_envs: int, steps: int, rounds: int, env_class: type = PromptEditVectorEnv) -> float:
    vec = env_class(num_envs, reward=ContentIntegrityScorer())
    rng = np.random.default_rng(0)
    eos = vec.tokenizer.eos_token_id
    actions = rng.integers(3, vec.single_action_space.n, size=(steps, num_envs))
    assert not (actions == eos).any()
    rates = []
    for _ in range(rounds):
        vec.reset(seed=0)
        start = time.perf_counter()
        for row in actions:
            vec.step(row)
        rates.append(steps * num_envs / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000, help="timed steps per round per env")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported")
    parser.add_argument("--num-envs", type=int, default=64, help="sub-environments of the vector env")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    probe = gym.make(ENV_ID, reward=ContentIntegrityScorer()).unwrapped
    eos = probe.tokenizer.eos_token_id
    token_actions = rng.integers(3, probe.action_space.n, size=args.steps)
    cartpole_actions = rng.integers(0, 2, size=args.steps)
    ours = median_step_seconds(ENV_ID, token_actions, args.rounds, lambda a: a == eos, max_new_tokens=48)  # default reward
    chat = median_step_seconds(CHAT_ENV_ID, token_actions, args.rounds, lambda a: a == eos,
                               reward=ContentIntegrityScorer())
    cartpole = median_step_seconds("CartPole-v1", cartpole_actions, args.rounds, lambda a: False)
    print(f"PromptEdit-v0 step : {ours * 1e6:8.2f} us (median of {args.rounds} rounds x {args.steps} steps)")
    print(f"PromptChat-v0 step : {chat * 1e6:8.2f} us ({chat / ours:.2f}x PromptEdit)")
    print(f"CartPole-v1 step   : {cartpole * 1e6:8.2f} us")
    print(f"ratio PromptEdit / CartPole: {ours / cartpole:.2f}x (target <= 5x)")
    vector_steps = max(200, args.steps // args.num_envs)
    rate = vector_steps_per_second(args.num_envs, vector_steps, args.rounds)
    chat_rate = vector_steps_per_second(args.num_envs, vector_steps, args.rounds, PromptChatVectorEnv)
    print(f"vector env, {args.num_envs} envs: {rate:,.0f} steps/s (tokens/s, content-integrity reward calls included)")
    print(f"chat vector env, {args.num_envs} envs: {chat_rate:,.0f} steps/s ({chat_rate / rate:.2f}x the single-turn "
          "vector env; turn ends rebuild contexts)")

if __name__ == "__main__":
    main()
