"""The `promptgym` command line.

    promptgym demo [--policy target|source|random] [--episodes N] [--split train|test] [--seed S]

`demo` plays a few episodes of the default environment with a scripted or random policy and prints each
task, the edited prompt and the reward components as a table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

POLICIES = ("target", "source", "random")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptgym", description="Prompt-editing RL environments and agents.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="play a few episodes with a scripted policy and print the rewards")
    demo.add_argument("--policy", choices=POLICIES, default="target", help="what the policy types (default: target)")
    demo.add_argument("--episodes", type=_positive_int, default=5, help="number of episodes (default: 5)")
    demo.add_argument("--split", choices=("train", "test"), default="test", help="demo split to draw tasks from")
    demo.add_argument("--tasks", default="demo", help="task spec for load_tasks: 'demo', a .jsonl/.csv path or 'hf:<id>'")
    demo.add_argument("--seed", type=int, default=0, help="seed of the first episode (episode i uses seed+i)")
    demo.set_defaults(run=run_demo)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from promptgym.agents.scripted import RandomPolicy, TypistPolicy, run_episode
    from promptgym.envs import PromptEditEnv, load_tasks

    env = PromptEditEnv(tasks=load_tasks(args.tasks, split=args.split))
    policy = RandomPolicy(env, seed=args.seed) if args.policy == "random" else TypistPolicy(env, args.policy)
    table = Table(title=f"{args.episodes} episodes, policy={args.policy}, tasks={args.tasks}:{args.split}")
    for column in ("source", "instruction", "edited prompt", "tokens", "reward"):
        table.add_column(column, overflow="fold")
    component_names: list[str] = []
    for episode in range(args.episodes):
        reward, info = run_episode(env, policy, seed=args.seed + episode)
        components = info["reward_components"]
        if not component_names:
            component_names = _display_components(components)
            for name in component_names:
                table.add_column(name.replace("/delta", " Δ"), justify="right")
        task = env.task
        table.add_row(
            task.source,
            task.instruction,
            info["prompt"],
            str(info["num_tokens"]),
            f"{reward:.3f}",
            *(f"{components[name]:.3f}" for name in component_names),
        )
    Console(width=max(160, Console().width)).print(table)
    return 0


def _display_components(components: dict[str, float]) -> list[str]:
    """One column per reward term: its delta when the term is scored in delta mode, else its raw score."""
    terms = [name for name in components if "/" not in name]
    return [f"{name}/delta" if f"{name}/delta" in components else name for name in terms]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
