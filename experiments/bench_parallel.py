"""Data-parallel training speed: `promptgym train` in one process vs under `accelerate launch` with N processes.

    python -m promptgym.experiments.bench_parallel [--processes 2] [--updates 10] [--rounds 3] [--set k=v ...]

Every round runs the same config (default: the `tiny` preset, `train.num_updates=--updates`, no plots) three
ways, one after the other, in fresh subprocesses: one process with one torch thread, one process with N torch
threads (torch's own intra-op parallelism on the same cores), and N data-parallel processes with one thread
each (`accelerate launch --multi_gpu --num_processes N`; gloo on CPUs). The global batch (`ppo.n_episodes`) is
the same in all three, so they do the same work per update. Printed: the median over rounds of the PPO seconds
per update (from `metrics.jsonl`: the last row's `wall_time_s` over the update count, so SFT, start-up and the
final plots are excluded) and the ratios to the one-thread run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from promptgym.rewards.jsonl import read_jsonl

MODES = ("1 process x 1 thread", "1 process x N threads", "N processes x 1 thread")


def seconds_per_update(run_dir: Path) -> float:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return rows[-1]["wall_time_s"] / rows[-1]["update"]


def command(
    mode: str, processes: int, out: Path, config: str, overrides: list[str]
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one run of `mode`."""
    args = ["--config", config, "--out", str(out), *(arg for item in overrides for arg in ("--set", item))]
    threads = processes if mode == MODES[1] else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    if mode == MODES[2]:
        launcher = shutil.which("accelerate")
        if launcher is None:
            raise SystemExit("accelerate is not on PATH (pip install accelerate)")
        return [
            launcher, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            "-m", "promptgym.experiments", "train", *args,
        ], env  # fmt: skip
    return [sys.executable, "-m", "promptgym.experiments", "train", *args], env


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="data-parallel processes (default 2)")
    parser.add_argument("--updates", type=int, default=10, help="PPO updates per run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three runs (default 3)")
    parser.add_argument("--config", default="tiny", help="preset or YAML path (default tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.processes < 2 or args.updates < 1 or args.rounds < 1:
        parser.error("--processes must be >= 2, --updates and --rounds >= 1")
    overrides = [
        f"train.num_updates={args.updates}",
        "logging.progress=false",
        "logging.plots=false",
        *args.overrides,
    ]
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, mode in enumerate(MODES):
                out = Path(tmp) / f"round{r}_mode{i}"
                cmd, env = command(mode, args.processes, out, args.config, overrides)
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
                times[mode].append(seconds_per_update(out))
                print(f"round {r + 1}: {mode.replace('N', str(args.processes))}: {times[mode][-1]:.2f} s/update")
    base = statistics.median(times[MODES[0]])
    print(f"\nmedian PPO seconds per update over {args.rounds} rounds, {args.updates} updates each:")
    for mode in MODES:
        median = statistics.median(times[mode])
        print(f"  {mode.replace('N', str(args.processes)):<26} {median:6.2f} s   speed-up x{base / median:.2f}")
    return times


if __name__ == "__main__":
    main()
