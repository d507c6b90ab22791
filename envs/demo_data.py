"""Deterministic generator of the bundled demo edit-task set (`envs/data/demo_{train,test}.jsonl`).

The tasks are written in the synth world's scene grammar (`promptgym.rewards.scene`): every source and target
is `describe(scene)` of a world `Scene`, so `parse_scene(target)` gives back exactly the target scene with no
unparsed word, and `SceneRenderer` draws every word of it. A source is a scene without quality modifiers
(count x colour x subject [x accessory] x background [x time/weather] [x style]), e.g. "two red dogs with hats
in a park at sunset, watercolor". Each source gets three edits of different kinds (`KINDS`):

- colour, add, count, background, remove, style, time, replace: the target is the edited scene plus 1-2
  random quality modifiers, the way an InstructPE target reads;
- beautify ("make it more beautiful", "improve the image quality", ...): the target keeps the source's content
  exactly and adds the subset of at most two `MODIFIERS` that maximises the world's `gold_aesthetic` of
  `SceneRenderer(size=32, images_per_prompt=2, seed=0)` renders (`beautify_modifiers`). Sources that no
  modifier subset improves are not used for beautify edits.

Whole sources are held out for the test split, so no test source occurs in train. Only `random.Random(seed)` is
used, over tuples and lists (never sets), so the output is the same on every run and Python version.

    python -m promptgym.envs.demo_data            # rewrite envs/data/demo_train.jsonl and demo_test.jsonl
    python -m promptgym.envs.demo_data --check    # exit 1 unless the bundled files equal a fresh generation
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from promptgym.rewards.scene import (
    ACCESSORIES,
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    GRAMMAR_WORDS,
    MODIFIERS,
    STYLES,
    SUBJECTS,
    WEATHERS,
    Scene,
    describe,
    parse_scene,
    with_article,
)

if TYPE_CHECKING:
    from promptgym.rewards.scene_render import SceneRenderer

__all__ = [
    "ACCESSORIES",
    "BACKGROUNDS",
    "BEAUTIFY_CANDIDATES",
    "COLOURS",
    "COUNTS",
    "EDITS",
    "GRAMMAR_WORDS",
    "INSTRUCTION_WORDS",
    "KINDS",
    "MODIFIERS",
    "STYLES",
    "SUBJECTS",
    "TIMES",
    "VOCABULARY",
    "WEATHERS",
    "Scene",
    "beautify_modifiers",
    "describe",
    "generate_demo",
    "main",
    "parse_scene",
]

# Instruction kinds. Source i takes the three cyclically consecutive kinds starting at i % len(KINDS). The order
# matters: "add" (needs a source without accessory) and "remove" (needs one) are four and five places apart on
# the cycle, so no window of three holds both and every source can take its three kinds.
KINDS = ("colour", "add", "count", "background", "beautify", "remove", "style", "time", "replace")

# The vocabulary is the world's (`promptgym.rewards.scene`), re-exported here; TIMES is the old name of WEATHERS
# ((keyword, phrase); time of day and weather are one attribute).
TIMES = WEATHERS
MASS_STYLES = ("pixel art", "anime")  # styles an instruction names without "a"/"an"
WEARABLES = ("hat", "crown")  # accessories one "puts on" a subject
# Every word an instruction uses besides the vocabulary (verbs, function words, "color", "weather", the words of
# beautify requests), sorted: e.g. for a keyword extractor's stop list.
INSTRUCTION_WORDS = (
    "a", "add", "an", "at", "background", "be", "beautiful", "better", "change", "color", "day", "delete",
    "enhance", "for", "from", "get", "give", "image", "improve", "in", "include", "instead", "into", "it", "look",
    "make", "more", "move", "number", "of", "on", "picture", "prettier", "put", "quality", "remove", "replace",
    "rid", "scene", "setting", "should", "show", "style", "swap", "the", "there", "time", "to", "turn", "weather",
    "with", "without",
)
# Every single word of every attribute value (subjects, colours, counts, backgrounds, styles, time/weather
# keywords, accessories; not modifiers), sorted: e.g. a keyword corrupter's replacement vocabulary.
VOCABULARY = tuple(sorted({
    word
    for value in (*(w for pair in SUBJECTS for w in pair), *COLOURS, *COUNTS, *(b for _, b in BACKGROUNDS),
                  *STYLES, *(w for w, _ in WEATHERS), *(w for pair in ACCESSORIES for w in pair))
    for word in value.split()
}))
# The modifier subsets a beautify target may add, in tie-break order: single modifiers first, then pairs, each in
# `MODIFIERS` order.
BEAUTIFY_CANDIDATES = (*((m,) for m in MODIFIERS), *itertools.combinations(MODIFIERS, 2))

N_SOURCES = 900  # x 3 edits = 2700 rows
EDITS_PER_SOURCE = 3
MAX_DRAWS = 1000  # random scenes tried per source before giving up (a few percent are rejected)
TEST_EVERY = 10  # sources 0, 10, 20, ... are held out: 90 sources, 270 rows, 30 per kind (10 and 9 are coprime)

_SUBJECT_PLURAL = dict(SUBJECTS)
_ACCESSORY_PLURAL = dict(ACCESSORIES)
_PREPOSITION = {noun: preposition for preposition, noun in BACKGROUNDS}
_WEATHER_PHRASE = dict(WEATHERS)


def _ref(scene: Scene) -> str:
    """The subject as an instruction names it: "dog" for one, "dogs" for several."""
    assert scene.subject is not None
    return scene.subject if scene.count == 1 else _SUBJECT_PLURAL[scene.subject]


def _accessory_phrase(scene: Scene, accessory: str) -> str:
    """ "a hat", or "hats" when several subjects each have one (as `describe` writes it)."""
    return _ACCESSORY_PLURAL[accessory] if scene.count > 1 else with_article(accessory)


def _style_phrase(style: str) -> str:
    return style if style in MASS_STYLES else with_article(style)


# Each edit returns (instruction, edited scene); templates that name an old value need one in the source.
def _edit_colour(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    new, ref = rng.choice([c for c in COLOURS if c != s.colour]), _ref(s)
    options = [f"make the {ref} {new}", f"change the color of the {ref} to {new}", f"turn the {ref} {new}"]
    if s.colour:
        new_ref = f"{new} {ref}" if s.count > 1 else with_article(f"{new} {ref}")
        options += [f"change the {s.colour} {ref} to {new_ref}", f"make the {ref} {new} instead of {s.colour}"]
    return rng.choice(options), dataclasses.replace(s, colour=new)


def _edit_count(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    new = rng.choice([n for n in range(2, len(COUNTS) + 1) if n != s.count])  # never to one: "a" is no keyword
    assert s.subject is not None
    word, plural, old = COUNTS[new - 1], _SUBJECT_PLURAL[s.subject], COUNTS[s.count - 1]
    options = [f"make it {word} {plural}", f"change the number of {plural} to {word}",
               f"show {word} {plural} instead of {old}", f"there should be {word} {plural}"]
    return rng.choice(options), dataclasses.replace(s, count=new)


def _edit_background(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    assert s.background is not None, "a background edit needs a source with a background"
    new = rng.choice([b for _, b in BACKGROUNDS if b != s.background])
    ref, place, old = _ref(s), with_article(new), s.background
    options = [f"change the background to {place}", f"move the {ref} to {place}", f"replace the {old} with {place}",
               f"put the {ref} {_PREPOSITION[new]} {place}", f"change the setting from {with_article(old)} to {place}"]
    return rng.choice(options), dataclasses.replace(s, background=new)


def _edit_add(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    assert s.accessory is None, "an add edit needs a source without an accessory"
    accessory, ref = rng.choice([a for a, _ in ACCESSORIES]), _ref(s)
    thing = _accessory_phrase(s, accessory)
    options = [f"add {thing}", f"include {thing}", f"give the {ref} {thing}"]
    if accessory in WEARABLES:
        options.append(f"put {thing} on the {ref}")
    return rng.choice(options), dataclasses.replace(s, accessory=accessory)


def _edit_remove(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    assert s.accessory is not None, "a remove edit needs a source with an accessory"
    thing = _ACCESSORY_PLURAL[s.accessory] if s.count > 1 else s.accessory
    options = [f"remove the {thing}", f"without the {thing}", f"get rid of the {thing}", f"delete the {thing}"]
    return rng.choice(options), dataclasses.replace(s, accessory=None)


def _edit_style(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    new = rng.choice([x for x in STYLES if x != s.style])
    options = [f"make it {_style_phrase(new)}", f"change the style to {new}", f"turn it into {_style_phrase(new)}"]
    if s.style:
        options.append(f"make it {_style_phrase(new)} instead of {_style_phrase(s.style)}")
    return rng.choice(options), dataclasses.replace(s, style=new)


def _edit_time(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    new = rng.choice([w for w, _ in WEATHERS if w != s.weather])
    # the keyword is in both the instruction and the target phrase
    if _WEATHER_PHRASE[new].endswith("weather"):
        options = [f"make it {new}", f"change the weather to {new}", f"make the scene {new}"]
    else:
        options = [f"make it {new}", f"change the time of day to {new}", f"show it {_WEATHER_PHRASE[new]}"]
    if s.weather:
        options.append(f"make it {new} instead of {s.weather}")
    return rng.choice(options), dataclasses.replace(s, weather=new)


def _edit_replace(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    new = rng.choice([x for x, _ in SUBJECTS if x != s.subject])
    old, other = (_ref(s), with_article(new)) if s.count == 1 else (_ref(s), _SUBJECT_PLURAL[new])
    options = [f"replace the {old} with {other}", f"change the {old} to {other}", f"swap the {old} for {other}",
               f"turn the {old} into {other}"]
    return rng.choice(options), dataclasses.replace(s, subject=new)


BEAUTIFY_INSTRUCTIONS = (
    "make it more beautiful", "make it look better", "improve the image quality", "make it prettier",
    "enhance the picture", "make the picture more beautiful", "improve the picture", "enhance the image",
    "make the image look better", "improve the quality of the image",
)


def _edit_beautify(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    """Same content; the modifiers are filled in by `beautify_modifiers` (the caller's job: they are searched)."""
    return rng.choice(BEAUTIFY_INSTRUCTIONS), s


EDITS = {"colour": _edit_colour, "count": _edit_count, "background": _edit_background, "add": _edit_add,
         "remove": _edit_remove, "style": _edit_style, "time": _edit_time, "replace": _edit_replace,
         "beautify": _edit_beautify}


@functools.lru_cache(maxsize=1)
def _renderer() -> SceneRenderer:
    """The world renderer beautify targets are searched with (imported lazily: only beautify needs torch)."""
    from promptgym.rewards.scene_render import SceneRenderer

    return SceneRenderer(size=32, images_per_prompt=2, seed=0, cache_size=0)


@functools.lru_cache(maxsize=8192)
def beautify_modifiers(scene: Scene) -> tuple[tuple[str, ...], float]:
    """(best modifier subset, its gain) for a scene without modifiers.

    Renders the scene and the scene with each of `BEAUTIFY_CANDIDATES` (all subsets of one or two `MODIFIERS`)
    in one batch with `SceneRenderer(size=32, images_per_prompt=2, seed=0)` and returns the subset of highest
    `gold_aesthetic` (the first in candidate order on a tie) and its score minus the plain scene's.
    """
    from promptgym.rewards.gold import gold_aesthetic

    if scene.modifiers:
        raise ValueError(f"beautify_modifiers needs a scene without modifiers, got {scene.modifiers}")
    prompts = [describe(dataclasses.replace(scene, modifiers=m)) for m in ((), *BEAUTIFY_CANDIDATES)]
    scores = gold_aesthetic(_renderer().render(prompts)).tolist()
    best = max(range(len(BEAUTIFY_CANDIDATES)), key=lambda j: (scores[j + 1], -j))
    return BEAUTIFY_CANDIDATES[best], scores[best + 1] - scores[0]


def _random_scene(rng: random.Random, kinds: tuple[str, ...]) -> Scene:
    """A random source scene (no modifiers) that all of `kinds` can edit: an accessory for "remove", none for
    "add"; colour in ~80%, time/weather in ~50%, style in ~70% of sources; a background always."""
    if "remove" in kinds:
        has_accessory = True
    elif "add" in kinds:
        has_accessory = False
    else:
        has_accessory = rng.random() < 0.3
    return Scene(
        subject=rng.choice([s for s, _ in SUBJECTS]),
        count=rng.choice(range(1, len(COUNTS) + 1)),
        colour=rng.choice(COLOURS) if rng.random() < 0.8 else None,
        accessory=rng.choice([a for a, _ in ACCESSORIES]) if has_accessory else None,
        background=rng.choice([b for _, b in BACKGROUNDS]),
        weather=rng.choice([w for w, _ in WEATHERS]) if rng.random() < 0.5 else None,
        style=rng.choice(STYLES) if rng.random() < 0.7 else None,
    )


def _finish_instruction(rng: random.Random, text: str) -> str:
    """Vary surface form: sometimes capitalised, sometimes ending with a period."""
    if rng.random() < 0.25:
        text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.3 else text


def source_kinds(i: int) -> tuple[str, ...]:
    """The kinds of edit source `i` gets: `EDITS_PER_SOURCE` cyclically consecutive `KINDS` from i % len(KINDS)."""
    return tuple(KINDS[(i + j) % len(KINDS)] for j in range(EDITS_PER_SOURCE))


def generate_demo(seed: int = 0) -> dict[str, list[dict]]:
    """The demo set as {"train": rows, "test": rows}; each row has id, source, instruction, target, kind."""
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    seen: set[Scene] = set()  # membership only; never iterated
    for i in range(N_SOURCES):
        kinds = source_kinds(i)
        for _ in range(MAX_DRAWS):
            scene = _random_scene(rng, kinds)
            # a beautify source must be one that some modifier subset improves
            if scene not in seen and ("beautify" not in kinds or beautify_modifiers(scene)[1] > 0):
                break
        else:
            raise RuntimeError(f"no new source scene for kinds {kinds} in {MAX_DRAWS} draws (source {i}, seed {seed})")
        seen.add(scene)
        source = describe(scene)
        split = "test" if i % TEST_EVERY == 0 else "train"
        for kind in kinds:
            instruction, edited = EDITS[kind](rng, scene)
            if kind == "beautify":
                modifiers = beautify_modifiers(scene)[0]
            else:
                modifiers = tuple(rng.sample(MODIFIERS, rng.choice((1, 2))))
            target = describe(dataclasses.replace(edited, modifiers=modifiers))
            splits[split].append({"source": source, "instruction": _finish_instruction(rng, instruction),
                                  "target": target, "kind": kind})
    for split, rows in splits.items():
        rng.shuffle(rows)
        splits[split] = [{"id": f"demo-{split}-{n:05d}", **row} for n, row in enumerate(rows)]
    return splits


def to_jsonl(rows: list[dict]) -> str:
    """One JSON object per line, keys in row order, UTF-8 text kept as is."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) demo_train.jsonl and demo_test.jsonl."""
    parser = argparse.ArgumentParser(prog="python -m promptgym.envs.demo_data", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data",
                        help="directory for demo_train.jsonl and demo_test.jsonl (default: the bundled envs/data)")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 unless the files in --out equal a fresh generation")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (the bundled files use 0)")
    args = parser.parse_args(argv)
    return write_splits(generate_demo(args.seed), args.out, "demo_{split}.jsonl", args.check,
                        "python -m promptgym.envs.demo_data", "demo files")


def write_splits(splits: dict[str, list[dict]], out: Path, name: str, check: bool, command: str, what: str) -> int:
    """Write each split's rows to `out/name.format(split=...)` as JSON lines, or with `check` write nothing and
    return 1 (naming the stale files and `command`) unless the files equal them; 0 otherwise."""
    stale = []
    for split, rows in splits.items():
        path = out / name.format(split=split)
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != to_jsonl(rows):
                stale.append(str(path))
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(to_jsonl(rows), encoding="utf-8")
            print(f"wrote {len(rows)} rows to {path}")
    if stale:
        print(f"out of date (rerun `{command}`): {', '.join(stale)}", file=sys.stderr)
        return 1
    if check:
        print(f"{what} match a fresh generation")
    return 0

if __name__ == "__main__":
    sys.exit(main())
