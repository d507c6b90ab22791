"""Deterministic generator of the bundled demo conversations (`envs/data/demo_chat_{train,test}.jsonl`).

A conversation is one starting prompt and a chain of 2-4 consecutive edits, each applied to the scene the
previous one produced, with the scene known after every turn (DiffChat's multi-turn use: a user refining one
image). Like the single-turn demo set (`promptgym.envs.demo_data`) it is written in the synth world's grammar:

- the source is `describe(scene)` of a random scene without quality modifiers (`demo_data`'s source
  distribution), never one that is a source of the single-turn demo set, so a policy trained on those never saw
  a conversation's start;
- turn k's instruction is one of `demo_data.EDITS` (not beautify, whose target needs a render search; no kind
  twice in a row), applicable to the scene after turn k-1 (add needs no accessory, remove needs one);
- turn k's target is `describe` of the edited scene plus the quality modifiers the first turn added (1-2 random
  `MODIFIERS`; later turns keep them), so every turn's target scene is exact: `parse_scene(target).scene`.

Row format: {"id", "source", "turns": [{"instruction", "target", "kind"}, ...]}. Whole conversations go to the
test split by index (every `TEST_EVERY`-th), so no test source occurs in train.

    python -m promptgym.envs.demo_chat            # rewrite envs/data/demo_chat_train.jsonl and demo_chat_test.jsonl
    python -m promptgym.envs.demo_chat --check    # exit 1 unless the bundled files equal a fresh generation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path

from promptgym.envs.demo_data import EDITS, MODIFIERS, TEST_EVERY, _finish_instruction, _random_scene, write_splits
from promptgym.rewards.scene import Scene, describe

CHAT_KINDS = ("colour", "add", "count", "background", "remove", "style", "time", "replace")
N_CONVERSATIONS = 600  # 540 train, 60 test
TURNS = (2, 3, 4)
MAX_DRAWS = 1000
DATA_DIR = Path(__file__).parent / "data"


def applicable_kinds(scene: Scene, previous: str | None) -> list[str]:
    """The chat edit kinds that apply to `scene`, without repeating `previous`."""
    blocked = {previous, "add" if scene.accessory is not None else "remove"}
    if scene.background is None:
        blocked.add("background")
    return [kind for kind in CHAT_KINDS if kind not in blocked]


def single_turn_sources(data_dir: Path = DATA_DIR) -> frozenset[str]:
    """Every source prompt of the bundled single-turn demo set (train and test)."""
    sources = set()
    for split in ("train", "test"):
        with (data_dir / f"demo_{split}.jsonl").open(encoding="utf-8") as f:
            sources.update(json.loads(line)["source"] for line in f if line.strip())
    return frozenset(sources)


def generate_conversation(rng: random.Random, scene: Scene) -> list[dict]:
    """The turns of one conversation starting at `scene` (no modifiers): 2-4 chained edits."""
    modifiers = tuple(rng.sample(MODIFIERS, rng.choice((1, 2))))
    turns, kind = [], None
    for _ in range(rng.choice(TURNS)):
        kind = rng.choice(applicable_kinds(scene, kind))
        instruction, scene = EDITS[kind](rng, scene)
        target = describe(dataclasses.replace(scene, modifiers=modifiers))
        turns.append({"instruction": _finish_instruction(rng, instruction), "target": target, "kind": kind})
    return turns


def generate_chats(seed: int = 0, exclude: frozenset[str] = frozenset()) -> dict[str, list[dict]]:
    """The demo conversations as {"train": rows, "test": rows}; sources in `exclude` are never used."""
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    seen: set[str] = set()  # membership only; never iterated
    for i in range(N_CONVERSATIONS):
        for _ in range(MAX_DRAWS):
            scene = _random_scene(rng, ())
            source = describe(scene)
            if source not in seen and source not in exclude:
                break
        else:
            raise RuntimeError(f"no new source scene in {MAX_DRAWS} draws (conversation {i}, seed {seed})")
        seen.add(source)
        split = "test" if i % TEST_EVERY == 0 else "train"
        splits[split].append({"source": source, "turns": generate_conversation(rng, scene)})
    return {split: [{"id": f"chat-{split}-{n:05d}", **row} for n, row in enumerate(rows)]
            for split, rows in splits.items()}


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) demo_chat_train.jsonl and demo_chat_test.jsonl."""
    parser = argparse.ArgumentParser(prog="python -m promptgym.envs.demo_chat", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR,
                        help="directory for demo_chat_{train,test}.jsonl (default: the bundled envs/data)")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 unless the files in --out equal a fresh generation")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (the bundled files use 0)")
    args = parser.parse_args(argv)
    return write_splits(generate_chats(args.seed, single_turn_sources()), args.out, "demo_chat_{split}.jsonl",
                        args.check, "python -m promptgym.envs.demo_chat", "demo conversation files")

if __name__ == "__main__":
    sys.exit(main())
