"""The `promptgym` command line.

    promptgym train [--config synth|NAME|PATH] [--out DIR] [--overwrite] [--set key=value ...] | --resume DIR
    promptgym eval RUN_DIR [--split test] [--samples 4] [--max-tasks N] [--checkpoint C] [--against start]
                   [--steps S]
    promptgym edit --prompt TEXT --instruction TEXT [--run RUN_DIR (default: the newest under runs/)] [-n 4]
                   [--render OUT.png]
    promptgym chat [--run RUN_DIR (default: the newest under runs/)] [--prompt TEXT] [--render DIR] [--input FILE]
    promptgym render --prompt TEXT [--preset synth|scene|tiny|diffchat-sd15] --out FILE.png
    promptgym world build --out DIR [--stages data,judge,sd,clip,aesthetic] [--scale 1.0] [--seed 0]
    promptgym reward fit-surrogate --out DIR [--prompts 2400] [--seed 0] [--pairs FILE]
    promptgym reward simulate-feedback --out LABELS.jsonl [--n 2000] [--noise 0.0] [--seed 0] [--held-out exclude|only]
    promptgym reward fit-feedback --labels LABELS.jsonl --out DIR [--aux-weight 0.5] [--perturbations 3] [--seed 0]
    promptgym reward build-score-table --out PATH [--config synth] [--splits train,test] [--add]
    promptgym bench [--config synth] [--variants sft,ppo,grpo,...,surrogate,oracle] [--seeds 5] [--budget 1024] [--resume] [--out DIR]
    promptgym bench --merge DIR [DIR ...] --out DIR
    promptgym demo [--policy target|source|random] [--episodes N]
    promptgym config show [synth|NAME|PATH] [--set key=value ...]

`train` runs SFT then DiffChat PPO into a run directory; `eval` scores a run's policy on test tasks (quality, and
with 2+ samples per task their diversity: distinct-1/2, mean pairwise MiniLM distance, distinct prompts and scenes,
plotted against quality in RUN/eval/quality_diversity_SPLIT.png; `--steps S` re-edits each output S-1 more times);
`edit` is the user-facing feature (edited prompts for one prompt and instruction); `chat` refines one prompt over
several turns; `render` renders a prompt; `demo` plays
a few episodes with a scripted policy; `config show` prints a config fully resolved, each key with its doc.

A user's mistake (a bad argument, a missing or damaged file, a run directory in use) is one line on stderr,
`promptgym COMMAND: error: ...`, and exit code 2; `--debug` shows the traceback instead. Other exceptions are bugs and keep
their traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from promptgym.experiments import BENCH_CONFIG, DEFAULT_CONFIG

POLICIES = ("target", "source", "random")
CONTROL_NAMES = ("keep", "detail", "lighting", "vivid")  # promptgym.envs.controls.CONTROLS (not imported: torch-free)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage itself is what --help is for); exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a user's mistake (reported in one line, exit code 2), not a bug."""
    from promptgym.experiments.config import ConfigError
    from promptgym.experiments.rundir import RunLockedError

    return (ConfigError, RunLockedError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            IsADirectoryError, PermissionError)  # UnicodeDecodeError and damaged files are ValueErrors


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)  # --debug after the command too (SUPPRESS keeps the global one)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error instead of one line")
    parser = OneLineParser(prog="promptgym", description="Prompt-editing RL environments and agents.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train", parents=[debug],
        help="SFT warm start then PPO; writes a run directory",
        epilog="data-parallel: accelerate launch --multi_gpu --num_processes N -m promptgym.experiments train [ARGS] "
        "(ppo.n_episodes is the global batch; on CPUs the processes use gloo)",
    )
    train.add_argument("--config", default=DEFAULT_CONFIG,
                       help=f"a preset name ({DEFAULT_CONFIG}, tiny, synth-gold, ppo, ...; default: {DEFAULT_CONFIG}) or a YAML path")
    train.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, e.g. --set ppo.learning_rate=1e-4 (repeatable)")
    train.add_argument("--resume", default=None, metavar="DIR",
                       help="continue the run in DIR from its latest intact checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="delete the run already in --out and start again (default: refuse)")
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "eval", parents=[debug], help="evaluate a run's latest policy on test tasks",
        description="Score a run's policy on test tasks: every reward term, gold (synth), integrity, semantic "
        "consistency and win rates, with 95% bootstrap CIs over tasks. With --samples >= 2 also the diversity of "
        "each task's samples: distinct_1/distinct_2 (distinct / total word n-grams), diversity (mean pairwise cosine "
        "distance of their all-MiniLM-L6-v2 embeddings), distinct_prompts (how many differ) and distinct_scenes "
        "(different scenes their words ask for); "
        "per-task values -> RUN/eval/eval_SPLIT_tasks.csv, quality against diversity -> "
        "RUN/eval/quality_diversity_SPLIT.png.",
    )
    evaluate.add_argument("run_dir", help="a run directory written by promptgym train")
    evaluate.add_argument("--split", default="test", help="task split to evaluate on (default: test)")
    evaluate.add_argument("--samples", type=_positive_int, default=4, help="edited prompts per task (default: 4)")
    evaluate.add_argument("--max-tasks", type=_positive_int, default=None, help="evaluate only the first N tasks")
    evaluate.add_argument("--seed", type=int, default=0, help="sampling seed")
    evaluate.add_argument("--checkpoint", default=None,
                          help="checkpoint to evaluate: a name under RUN/checkpoints, a path, or 'start' (the policy "
                          "after SFT); default: the latest")
    evaluate.add_argument("--against", default=None, metavar="CHECKPOINT",
                          help="also evaluate this checkpoint (e.g. 'start') on the same tasks and seed and print the "
                          "paired per-task change of every metric, diversity included, with its bootstrap CI "
                          "(-> eval/paired_SPLIT.md; the quality-diversity plot then shows both)")
    evaluate.add_argument("--steps", type=_positive_int, default=1,
                          help="multi-step expansion (Prompt Expansion): step s edits each sample's step s-1 prompt "
                          "again with the same instruction (target unchanged); metrics per step, each against the "
                          "original task (default: 1)")
    evaluate.set_defaults(handler=run_eval)

    edit = commands.add_parser("edit", parents=[debug], help="print N edited prompts for a prompt and an instruction")
    edit.add_argument("--prompt", required=True, help="the text-to-image prompt to edit")
    edit.add_argument("--instruction", required=True, help='how to edit it, e.g. "make it night time"')
    edit.add_argument("--run", default=None,
                      help="run directory whose latest policy edits (default: the newest run under runs/)")
    edit.add_argument("-n", type=_positive_int, default=4, help="number of edited prompts (default: 4)")
    edit.add_argument("--render", default=None, metavar="OUT.png", help="save the source and edited renders here")
    edit.add_argument("--seed", type=int, default=0, help="sampling seed")
    edit.add_argument("--control", default=None, choices=CONTROL_NAMES,
                      help="control prefix: the kind of rewrite (for a run trained with data.control_dropout)")
    edit.set_defaults(handler=run_edit)

    chat = commands.add_parser("chat", parents=[debug],
                               help="refine a prompt over several turns with a run's policy (interactive)",
                               epilog="commands during the session: undo, reset, history, help, quit")
    chat.add_argument("--run", default=None,
                      help="run directory whose latest policy edits (default: the newest run under runs/)")
    chat.add_argument("--prompt", default=None, help="the starting prompt (default: the first line you type)")
    chat.add_argument("--render", default=None, metavar="DIR",
                      help="save each turn's source and edit renders as DIR/turn_NN.png and print the reward's scores")
    chat.add_argument("--input", default=None, metavar="FILE",
                      help="read the lines from FILE instead of the terminal (stdin is read the same way when piped)")
    chat.add_argument("--seed", type=int, default=0, help="sampling seed")
    chat.add_argument("--control", default=None, choices=CONTROL_NAMES,
                      help="control prefix put on every instruction (for a run trained with data.control_dropout)")
    chat.set_defaults(handler=run_chat)

    render = commands.add_parser("render", parents=[debug], help="render a prompt with a preset's renderer")
    render.add_argument("--prompt", required=True, help="the prompt to render")
    render.add_argument("--preset", default="synth", choices=("synth", "scene", "tiny", "diffchat-sd15"),
                        help="synth (the world's trained SD; the default), scene (the world's exact procedural "
                        "renderer), tiny (random tiny SD) or diffchat-sd15")
    render.add_argument("--out", required=True, metavar="FILE.png", help="where to save the image(s)")
    render.set_defaults(handler=run_render)

    bench = commands.add_parser("bench", parents=[debug],
                                help="train PPO variants and baselines for the same reward-call budget")
    bench.add_argument("--config", default=BENCH_CONFIG,
                       help=f"base config of every variant: a preset name or a YAML path (default: {BENCH_CONFIG})")
    bench.add_argument("--variants", default="sft,ppo,ppo+adm,ppo+neg,ppo+civalue,diffchat,sb3-ppo,grpo,rloo,rwr,"
                       "surrogate,oracle",
                       help="comma-separated variants (default: all; sft = the SFT start without RL, the reference; "
                       "surrogate = PPO on the text-only surrogate reward, oracle = PPO on the gold reward: synth "
                       "configs only)")
    bench.add_argument("--seeds", type=_positive_int, default=5, help="seeds per variant (default: 5)")
    bench.add_argument("--budget", type=_positive_int, default=1024, help="reward calls per run (default: 1024)")
    bench.add_argument("--resume", action="store_true",
                       help="keep the runs OUT/bench.json already has (same settings) and run only the rest")
    bench.add_argument("--reward", choices=("config", "integrity"), default="config",
                       help="config: the config's reward (default); integrity: content-integrity ratio only (faster)")
    bench.add_argument("--eval-episodes", type=_positive_int, default=64,
                       help="fresh eval-split episodes of the final score (default: 64)")
    bench.add_argument("--out", default="runs/bench", help="output directory (default: runs/bench)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override applied to every variant, e.g. --set sft.max_steps=50 (repeatable)")
    bench.add_argument("--threads", type=int, default=1,
                       help="torch.set_num_threads (default 1: tiny models on a shared CPU; 0 keeps torch's default)")
    bench.add_argument("--merge", nargs="+", metavar="DIR",
                       help="train nothing: merge these benches' runs (same settings; a later DIR replaces an earlier "
                       "one's runs of the same variant and seed) into --out and rewrite its tables and plots")
    bench.set_defaults(handler=run_bench)

    world = commands.add_parser("world", parents=[debug], help="the synth world: build (train) its models")
    world_commands = world.add_subparsers(dest="world_command", required=True, metavar="WORLD_COMMAND")
    build = world_commands.add_parser("build", help="train the synth world's judge, SD, CLIP and aesthetic MLP",
                                      add_help=False)
    build.add_argument("build_args", nargs=argparse.REMAINDER, help="see promptgym world build --help")

    reward = commands.add_parser("reward", parents=[debug], help="reward models: fit them, simulate feedback")
    reward_commands = reward.add_subparsers(dest="reward_command", required=True, metavar="REWARD_COMMAND")
    for name, summary in (
        ("fit-surrogate", "fit the text-only surrogate rewards (aes_rm, ps_rm) to the synth image scores"),
        ("simulate-feedback", "label synth renders with the gold judge (a labels file)"),
        ("fit-feedback", "train the feedback reward model (Lee et al. 2023) on a labels file"),
        ("build-score-table", "precompute the image terms' scores of a task set's sources (no source renders)"),
    ):
        sub = reward_commands.add_parser(name, help=summary, add_help=False)
        sub.add_argument("reward_args", nargs=argparse.REMAINDER, help=f"see promptgym reward {name} --help")

    demo = commands.add_parser("demo", parents=[debug],
                               help="play a few episodes with a scripted policy and print the rewards")
    demo.add_argument("--policy", choices=POLICIES, default="target", help="what the policy types (default: target)")
    demo.add_argument("--episodes", type=_positive_int, default=5, help="number of episodes (default: 5)")
    demo.add_argument("--split", choices=("train", "test"), default="test", help="demo split to draw tasks from")
    demo.add_argument("--tasks", default="demo", help="task spec for load_tasks: 'demo', a .jsonl/.csv path or 'hf:<id>'")
    demo.add_argument("--seed", type=int, default=0, help="seed of the first episode (episode i uses seed+i)")
    demo.set_defaults(handler=run_demo)

    config = commands.add_parser("config", parents=[debug], help="inspect experiment configs")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="CONFIG_COMMAND")
    show = config_commands.add_parser("show", parents=[debug],
                                      help="print a config fully resolved, as YAML with each key's doc")
    show.add_argument("config", nargs="?", default=DEFAULT_CONFIG, metavar="PRESET_OR_PATH",
                      help=f"a preset name ({DEFAULT_CONFIG}, tiny, diffchat-sd15, ppo, ...; default: {DEFAULT_CONFIG}) or a YAML path")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="dotted override, e.g. --set ppo.learning_rate=1e-4 (repeatable)")
    show.set_defaults(handler=run_config_show)
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
    from promptgym.experiments.bench import display_components

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
            component_names = display_components(components)
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


def run_config_show(args: argparse.Namespace) -> int:
    from promptgym.experiments.config import config_yaml, load_config

    print(config_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from promptgym.experiments.config import load_config
    from promptgym.experiments.rundir import RunDir
    from promptgym.experiments.train import train

    if args.resume:
        if args.out is not None or args.overwrite:
            raise ValueError("--resume DIR continues the run in DIR; it takes neither --out nor --overwrite")
        config = load_config(RunDir(args.resume).config, args.overrides)
        out = args.resume
    else:
        config = load_config(args.config, args.overrides)
        out = args.out or f"runs/{config.name}"
    result = train(config, out, resume=bool(args.resume), overwrite=args.overwrite)
    if not result.is_main:  # another process of a data-parallel run: the main one reports
        return 130 if result.interrupted else 0
    print(f"run directory: {result.run_dir} (summary.md, plots/, metrics.jsonl, checkpoints/)")
    if result.interrupted:
        print(f"interrupted; continue with: promptgym train --resume {result.run_dir}")
        return 130
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from promptgym.envs import load_tasks
    from promptgym.experiments.evaluate import evaluate_run, format_eval_table
    from promptgym.experiments.rundir import load_run_config

    tasks = None
    if args.max_tasks is not None:
        config = load_run_config(args.run_dir)
        tasks = load_tasks(config.data.tasks, split=args.split)[: args.max_tasks]
    result = evaluate_run(args.run_dir, args.split, samples_per_task=args.samples, seed=args.seed, tasks=tasks,
                          checkpoint=args.checkpoint, steps=args.steps)
    print(format_eval_table(result))
    print(f"written to {args.run_dir}/eval/: eval_{args.split}.csv, .md, _samples.jsonl, _tasks.csv"
          + (f", quality_diversity_{args.split}.png" if args.samples >= 2 else ""))
    if args.against is not None:
        print(write_paired(args, result, tasks))
    return 0


def write_paired(args: argparse.Namespace, result, tasks) -> str:
    """`eval --against`: evaluate the other checkpoint like `result` and write the paired table; returns its text."""
    from pathlib import Path

    from promptgym.experiments.evaluate import evaluate_run, paired_tables, write_samples, write_task_records
    from promptgym.experiments.plots import plot_quality_diversity

    against = evaluate_run(args.run_dir, args.split, samples_per_task=args.samples, seed=args.seed, tasks=tasks,
                           checkpoint=args.against, write=False, steps=args.steps)
    after = args.checkpoint or "latest"
    table = paired_tables(against, result, args.against, after)
    steps = f", {args.steps} expansion steps" if args.steps > 1 else ""
    heading = (f"# {args.run_dir}: {args.against} vs {after} on {args.split}, {result.settings['num_tasks']} tasks x "
               f"{args.samples} samples{steps}, seed {args.seed}\n\n")
    path = Path(args.run_dir) / "eval" / f"paired_{args.split}.md"
    path.write_text(heading + table)
    name = Path(args.against).name
    samples = write_samples(against.samples, path.parent / f"{name}_{args.split}_samples.jsonl")
    task_values = write_task_records(against.tasks, path.parent / f"{name}_{args.split}_tasks.csv")
    written = f"{path} ({args.against}'s samples: {samples.name}, per-task values: {task_values.name})"
    if args.samples >= 2:
        plot = plot_quality_diversity({args.against: against.tasks, after: result.tasks},
                                      path.parent / f"quality_diversity_{args.split}.png",
                                      title=heading[2:].strip())
        written += f" and {plot}"
    return f"{heading}{table}\nwritten to {written}"


def run_edit(args: argparse.Namespace) -> int:
    from promptgym.experiments.edit import edit_prompt

    if not args.prompt.strip() or not args.instruction.strip():
        raise ValueError(f"--prompt {args.prompt!r} and --instruction {args.instruction!r} must both be non-empty")
    from promptgym.envs.controls import with_control

    edits = edit_prompt(args.prompt, with_control(args.instruction, args.control), run_dir=_run_or_newest(args.run),
                        n=args.n, seed=args.seed, render=args.render)
    for i, edited in enumerate(edits, 1):
        print(f"{i}. {edited}")
    if args.render:
        print(f"renders saved to {args.render}")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from pathlib import Path

    from promptgym.experiments.chat import chat

    if args.render is not None and Path(args.render).is_file():
        raise NotADirectoryError(f"--render {args.render!r} is a file; expected a directory for the turn renders")
    if args.input is not None and not Path(args.input).is_file():
        raise FileNotFoundError(f"--input {args.input!r}: no such file")
    return chat(_run_or_newest(args.run), prompt=args.prompt, render=args.render, input_file=args.input,
                seed=args.seed, control=args.control)


def _run_or_newest(run: str | None) -> str:
    """`run`, or the newest run under runs/ (said on stderr), or an error saying how to get one."""
    from promptgym.experiments.rundir import newest_run, say

    if run is not None:
        return run
    run = newest_run("runs")
    if run is None:
        raise FileNotFoundError(
            "no trained run to edit with: none under runs/; train one with `promptgym train` "
            "(about 4 minutes on a CPU), or pass --run DIR"
        )
    say(f"editing with the newest run, {run} (pass --run DIR to choose another)")
    return run


def run_render(args: argparse.Namespace) -> int:
    from promptgym.experiments.edit import render_prompt

    path = render_prompt(args.prompt, args.out, preset=args.preset)
    print(f"saved {path}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from promptgym.experiments import bench

    if args.merge:
        result = bench.merge_benches(args.merge, args.out)
        bench.print_table(result, bench.summary_rows(result))
        print(f"merged {len(args.merge)} benches into {args.out}: " + ", ".join(path.name for path in result.files))
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    variants = bench.parse_variants(args.variants)  # a ValueError is the user's: one line, exit code 2
    result = bench.run_bench(variants, args.seeds, args.budget, args.out, args.overrides, args.reward,
                             args.eval_episodes, config=args.config, resume=args.resume)
    bench.print_table(result, bench.summary_rows(result))
    print(f"written to {args.out}: " + ", ".join(path.name for path in result.files))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["world", "build"]:  # its own parser takes every argument (argparse.REMAINDER drops a leading --help)
        from promptgym.experiments import world_build

        return world_build.main(argv[2:])
    if argv[:2] == ["reward", "fit-surrogate"]:  # likewise
        from promptgym.experiments import surrogate_fit

        return surrogate_fit.main(argv[2:])
    if argv[:2] == ["reward", "build-score-table"]:  # likewise
        from promptgym.experiments import score_table_build

        return score_table_build.main(argv[2:])
    if argv[:1] == ["reward"] and argv[1:2] in (["simulate-feedback"], ["fit-feedback"]):  # their own parsers too
        from promptgym.experiments import feedback

        return feedback.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except user_errors() as error:  # a user's mistake: the message, not a traceback
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"promptgym {args.command}: error: {message}", file=sys.stderr)  # as argparse names its errors
        return 2


if __name__ == "__main__":
    sys.exit(main())
