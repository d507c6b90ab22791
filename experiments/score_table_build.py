"""`promptgym reward build-score-table`: precompute the source scores of a config's image terms on its task set.

    promptgym reward build-score-table --out PATH [--config synth] [--splits train,test] [--set key=value ...] [--add]

Renders and scores every distinct source prompt of the config's tasks (`data.tasks`, the given splits) with each
image term of the config's reward, exactly as its delta reward scores a source, and writes a `ScoreTable`
(`promptgym.rewards.score_table`). The shipped one, `promptgym/rewards/data/synth/source_scores.json`, is built by

    promptgym reward build-score-table --out promptgym/rewards/data/synth/source_scores.json

and `reward.score_table: auto` (the default) serves it to every synth run whose render settings and weights match;
`--add` adds to an existing table (e.g. the scores of other render settings), keeping its entries.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promptgym.envs import load_tasks
from promptgym.experiments.config import ConfigError, load_config
from promptgym.rewards import build_reward
from promptgym.rewards.score_table import ScoreTable, build_score_table, term_signature


def build_table(config_name: str, overrides: Sequence[str], out: Path, splits: Sequence[str] | None = None,
                add: bool = False, progress: bool = True) -> dict[str, Any]:
    """Build (or with `add`, extend) the table at `out`; returns what it wrote (`about`)."""
    config = load_config(config_name, list(overrides))
    splits = list(dict.fromkeys(splits or ["train", config.data.eval_split, "test"]))
    tasks = [task for split in splits for task in load_tasks(config.data.tasks, split=split)]
    kwargs = config.reward.build_kwargs() | {"score_table": None}  # render every source, whatever is shipped
    if kwargs["preset"] == "tiny":
        raise ValueError("the tiny preset's models are random and rebuilt per run: a score table is for a world's "
                         "trained models (use --config synth)")
    reward = build_reward(**kwargs)
    table = ScoreTable.load(out) if add and out.exists() else ScoreTable()
    start = time.perf_counter()
    build_score_table(reward, tasks, table, progress=progress)
    terms = {name: term_signature(scorer) for name, (scorer, _) in reward.terms.items()}
    terms = {name: signature for name, signature in terms.items() if signature is not None}
    if not terms:
        raise ValueError(f"reward preset {kwargs['preset']!r} has no image term to tabulate")
    table.about = {
        "command": "promptgym reward build-score-table " + " ".join(
            [f"--config {config_name}", *[f"--set {o}" for o in overrides], f"--splits {','.join(splits)}"]),
        "tasks": str(config.data.tasks), "splits": splits,
        "sources": len({task.source for task in tasks}), "terms": terms, "entries": len(table),
        "seconds": round(time.perf_counter() - start, 1),
    }
    table.save(out)
    return table.about


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promptgym reward build-score-table", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="the table file (the shipped one: promptgym/rewards/data/synth/source_scores.json)")
    parser.add_argument("--config", default="synth", help="experiment config whose reward and tasks to tabulate")
    parser.add_argument("--splits", default=None,
                        help="comma-separated task splits (default: train, the config's eval split, test)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as in promptgym train (e.g. reward.renderer.num_inference_steps=4)")
    parser.add_argument("--add", action="store_true", help="add to the table at --out instead of replacing it")
    args = parser.parse_args(argv)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    try:
        about = build_table(args.config, args.overrides, args.out, splits, add=args.add)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(json.dumps(about, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
