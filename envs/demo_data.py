"""Deterministic generator of the bundled demo edit-task set (`envs/data/demo_{train,test}.jsonl`).

Sources are compositional text-to-image prompts (count x colour x subject [x accessory] x background
[x time/weather] [x style]), e.g. "two red dogs with hats in a park at sunset, watercolor". Each source gets
three edits of different kinds; a target is the source with the edit applied plus 1-3 descriptive
modifiers, the way an InstructPE target reads. Whole sources are held out for the test split, so no test
source occurs in train. Only `random.Random(seed)` is used, over tuples and lists (never sets), so the
output is the same on every run and Python version.

    python -m promptgym.envs.demo_data            # rewrite envs/data/demo_train.jsonl and demo_test.jsonl
    python -m promptgym.envs.demo_data --check    # exit 1 unless the bundled files equal a fresh generation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path

# Instruction kinds. The order matters: three cyclically consecutive kinds never hold both "add" (source
# without accessory) and "remove" (source with one), so every source can take three kinds.
KINDS = ("colour", "add", "count", "background", "remove", "style", "time", "replace")

# Vocabulary. Words are chosen to be unambiguous for a keyword matcher: no subject, accessory or
# background is also a colour, style, time or modifier word, and no content word occurs in two lists.
SUBJECTS = (  # (singular, plural); irregular plurals lemmatise back to the singular with simplemma
    ("dog", "dogs"), ("cat", "cats"), ("horse", "horses"), ("rabbit", "rabbits"), ("mouse", "mice"),
    ("wolf", "wolves"), ("fox", "foxes"), ("sheep", "sheep"), ("goose", "geese"), ("owl", "owls"),
    ("elephant", "elephants"), ("giraffe", "giraffes"), ("penguin", "penguins"), ("turtle", "turtles"),
    ("parrot", "parrots"), ("deer", "deer"), ("butterfly", "butterflies"), ("frog", "frogs"),
    ("squirrel", "squirrels"), ("hedgehog", "hedgehogs"), ("robot", "robots"), ("lion", "lions"),
    ("tiger", "tigers"), ("zebra", "zebras"), ("koala", "koalas"), ("octopus", "octopuses"),
    ("dragon", "dragons"), ("dinosaur", "dinosaurs"), ("kitten", "kittens"), ("puppy", "puppies"),
)
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "purple", "pink", "brown", "grey")
COUNTS = ("one", "two", "three", "four", "five")  # "one" is written "a"/"an" in prompts
BACKGROUNDS = (  # (preposition, noun)
    ("in", "park"), ("on", "beach"), ("in", "forest"), ("in", "desert"), ("on", "mountain"),
    ("in", "kitchen"), ("in", "garden"), ("in", "library"), ("on", "farm"), ("in", "meadow"),
    ("in", "cave"), ("on", "rooftop"), ("by", "lake"), ("by", "river"), ("in", "castle"), ("in", "museum"),
)
STYLES = (
    "watercolor", "oil painting", "pixel art", "pencil sketch", "charcoal drawing", "anime", "claymation",
    "stained glass", "vector illustration", "woodcut print", "mosaic",
)
MASS_STYLES = ("pixel art", "anime", "claymation", "stained glass")  # styles read without "a"/"an"
TIMES = (  # (keyword, phrase); time of day and weather are one category
    ("sunset", "at sunset"), ("night", "at night"), ("dawn", "at dawn"), ("noon", "at noon"),
    ("dusk", "at dusk"), ("rainy", "in rainy weather"), ("snowy", "in snowy weather"),
    ("foggy", "in foggy weather"), ("stormy", "in stormy weather"),
)
ACCESSORIES = (  # (singular, plural)
    ("hat", "hats"), ("scarf", "scarves"), ("crown", "crowns"), ("helmet", "helmets"), ("cape", "capes"),
    ("backpack", "backpacks"), ("collar", "collars"), ("necklace", "necklaces"), ("sweater", "sweaters"),
    ("balloon", "balloons"), ("umbrella", "umbrellas"), ("kite", "kites"), ("lantern", "lanterns"),
    ("flower", "flowers"), ("guitar", "guitars"),
)
WEARABLES = ("hat", "scarf", "crown", "helmet", "cape", "backpack", "collar", "necklace", "sweater")
MODIFIERS = (
    "highly detailed", "soft lighting", "8k", "sharp focus", "cinematic composition", "vibrant colors",
    "trending on artstation", "depth of field", "masterpiece", "award winning", "ultra realistic", "bokeh",
    "dramatic shadows", "intricate textures",
)
# Every word an instruction uses besides the vocabulary above (verbs, function words, "color", "weather"),
# e.g. for a keyword extractor's stop list.
INSTRUCTION_WORDS = (
    "a", "add", "an", "at", "background", "be", "by", "change", "color", "day", "delete", "for", "from", "get",
    "give", "in", "include", "instead", "into", "it", "make", "move", "number", "of", "on", "put", "remove",
    "replace", "rid", "scene", "setting", "should", "show", "style", "swap", "the", "there", "time", "to",
    "turn", "weather", "with", "without",
)
# Every single word of every attribute value (subjects, colours, counts, backgrounds, styles, time/weather
# keywords, accessories; not modifiers), sorted: e.g. a keyword corrupter's replacement vocabulary.
VOCABULARY = tuple(sorted({
    word
    for value in (*(w for pair in SUBJECTS for w in pair), *COLOURS, *COUNTS, *(b[1] for b in BACKGROUNDS),
                  *STYLES, *(t[0] for t in TIMES), *(w for pair in ACCESSORIES for w in pair))
    for word in value.split()
}))

N_SOURCES = 880  # x 3 edits = 2640 rows
EDITS_PER_SOURCE = 3
TEST_EVERY = 11  # sources 0, 11, 22, ... are held out: 80 sources, 240 rows, 30 per kind


@dataclasses.dataclass(frozen=True)
class Scene:
    """The parts of one prompt; `render` writes it as text."""

    count: int
    colour: str | None
    subject: tuple[str, str]
    accessory: tuple[str, str] | None
    accessory_colour: str | None
    background: tuple[str, str]
    time: tuple[str, str] | None
    style: str | None


def article(word: str) -> str:
    """The indefinite article for `word` ("an owl", "a dog"); the vocabulary has no silent h or "uni"."""
    return "an" if word[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def _ref(scene: Scene) -> str:
    """The subject as an instruction names it: "dog" for one, "dogs" for several."""
    return scene.subject[0] if scene.count == 1 else scene.subject[1]


def _accessory_phrase(scene: Scene, accessory: tuple[str, str], colour: str | None) -> str:
    """ "a hat", "a red balloon", or "hats" when several subjects each wear one."""
    several = scene.count > 1 and accessory[0] in WEARABLES
    noun = " ".join(w for w in (colour, accessory[1] if several else accessory[0]) if w)
    return noun if several else _with_article(noun)


def _style_phrase(style: str) -> str:
    return style if style in MASS_STYLES else _with_article(style)


def render(scene: Scene) -> str:
    """The prompt text of `scene`, e.g. "two red dogs with hats in a park at sunset, watercolor"."""
    noun = " ".join(w for w in (scene.colour, _ref(scene)) if w)
    text = _with_article(noun) if scene.count == 1 else f"{COUNTS[scene.count - 1]} {noun}"
    if scene.accessory:
        text += " with " + _accessory_phrase(scene, scene.accessory, scene.accessory_colour)
    text += f" {scene.background[0]} {_with_article(scene.background[1])}"
    if scene.time:
        text += " " + scene.time[1]
    if scene.style:
        text += ", " + scene.style
    return text


# Each edit returns (instruction, edited scene); templates that name an old value need one in the source.
def _edit_colour(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    new, ref = rng.choice([c for c in COLOURS if c != s.colour]), _ref(s)
    options = [f"make the {ref} {new}", f"change the color of the {ref} to {new}", f"turn the {ref} {new}"]
    if s.colour:
        new_ref = f"{new} {ref}" if s.count > 1 else _with_article(f"{new} {ref}")
        options += [f"change the {s.colour} {ref} to {new_ref}", f"make the {ref} {new} instead of {s.colour}"]
    return rng.choice(options), dataclasses.replace(s, colour=new)


def _edit_count(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    new = rng.choice([n for n in range(2, len(COUNTS) + 1) if n != s.count])  # never to one: "a" is no keyword
    word, plural, old = COUNTS[new - 1], s.subject[1], COUNTS[s.count - 1]
    options = [f"make it {word} {plural}", f"change the number of {plural} to {word}",
               f"show {word} {plural} instead of {old}", f"there should be {word} {plural}"]
    return rng.choice(options), dataclasses.replace(s, count=new)


def _edit_background(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    new = rng.choice([b for b in BACKGROUNDS if b != s.background])
    ref, place, old = _ref(s), _with_article(new[1]), s.background[1]
    options = [f"change the background to {place}", f"move the {ref} to {place}", f"replace the {old} with {place}",
               f"put the {ref} {new[0]} {place}", f"change the setting from {_with_article(old)} to {place}"]
    return rng.choice(options), dataclasses.replace(s, background=new)


def _edit_add(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    accessory, ref = rng.choice(ACCESSORIES), _ref(s)
    forms = ["add", "include"] + (["put", "give"] if accessory[0] in WEARABLES else [])
    form = rng.choice(forms)
    colour = rng.choice([c for c in COLOURS if c != s.colour]) if form == "include" else None
    thing = _accessory_phrase(s, accessory, colour)
    instruction = {"add": f"add {thing}", "include": f"include {thing}", "put": f"put {thing} on the {ref}",
                   "give": f"give the {ref} {thing}"}[form]
    return instruction, dataclasses.replace(s, accessory=accessory, accessory_colour=colour)


def _edit_remove(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    assert s.accessory is not None, "a remove edit needs a source with an accessory"
    several = s.count > 1 and s.accessory[0] in WEARABLES
    thing = s.accessory[1] if several else s.accessory[0]
    options = [f"remove the {thing}", f"without the {thing}", f"get rid of the {thing}", f"delete the {thing}"]
    return rng.choice(options), dataclasses.replace(s, accessory=None, accessory_colour=None)


def _edit_style(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    new = rng.choice([x for x in STYLES if x != s.style])
    options = [f"make it {_style_phrase(new)}", f"change the style to {new}", f"turn it into {_style_phrase(new)}"]
    if s.style:
        options.append(f"make it {_style_phrase(new)} instead of {_style_phrase(s.style)}")
    return rng.choice(options), dataclasses.replace(s, style=new)


def _edit_time(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    new = rng.choice([t for t in TIMES if t != s.time])
    word = new[0]  # the keyword is in both the instruction and the target phrase
    if new[1].endswith("weather"):
        options = [f"make it {word}", f"change the weather to {word}", f"make the scene {word}"]
    else:
        options = [f"make it {word}", f"change the time of day to {word}", f"show it {new[1]}"]
    if s.time:
        options.append(f"make it {word} instead of {s.time[0]}")
    return rng.choice(options), dataclasses.replace(s, time=new)


def _edit_replace(rng: random.Random, s: Scene) -> tuple[str, Scene]:
    new = rng.choice([x for x in SUBJECTS if x != s.subject])
    old, other = (s.subject[0], _with_article(new[0])) if s.count == 1 else (s.subject[1], new[1])
    options = [f"replace the {old} with {other}", f"change the {old} to {other}", f"swap the {old} for {other}",
               f"turn the {old} into {other}"]
    return rng.choice(options), dataclasses.replace(s, subject=new)


EDITS = {"colour": _edit_colour, "count": _edit_count, "background": _edit_background, "add": _edit_add,
         "remove": _edit_remove, "style": _edit_style, "time": _edit_time, "replace": _edit_replace}


def _random_scene(rng: random.Random, kinds: tuple[str, ...]) -> Scene:
    """A random source scene that all of `kinds` can edit (an accessory for "remove", none for "add")."""
    if "remove" in kinds:
        has_accessory = True
    elif "add" in kinds:
        has_accessory = False
    else:
        has_accessory = rng.random() < 0.3
    return Scene(
        count=rng.choice((1, 2, 3, 4, 5)),
        colour=rng.choice(COLOURS) if rng.random() < 0.8 else None,
        subject=rng.choice(SUBJECTS),
        accessory=rng.choice(ACCESSORIES) if has_accessory else None,
        accessory_colour=None,
        background=rng.choice(BACKGROUNDS),
        time=rng.choice(TIMES) if rng.random() < 0.5 else None,
        style=rng.choice(STYLES) if rng.random() < 0.7 else None,
    )


def _finish_instruction(rng: random.Random, text: str) -> str:
    """Vary surface form: sometimes capitalised, sometimes ending with a period."""
    if rng.random() < 0.25:
        text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.3 else text


def generate_demo(seed: int = 0) -> dict[str, list[dict]]:
    """The demo set as {"train": rows, "test": rows}; each row has id, source, instruction, target, kind."""
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    seen: set[str] = set()  # membership only; never iterated
    for i in range(N_SOURCES):
        kinds = tuple(KINDS[(EDITS_PER_SOURCE * i + j) % len(KINDS)] for j in range(EDITS_PER_SOURCE))
        scene = _random_scene(rng, kinds)
        while render(scene) in seen:
            scene = _random_scene(rng, kinds)
        source = render(scene)
        seen.add(source)
        split = "test" if i % TEST_EVERY == 0 else "train"
        for kind in kinds:
            instruction, edited = EDITS[kind](rng, scene)
            modifiers = rng.sample(MODIFIERS, rng.choice((1, 2, 3)))
            target = ", ".join([render(edited), *modifiers])
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
    splits = generate_demo(args.seed)
    stale = []
    for split, rows in splits.items():
        path = args.out / f"demo_{split}.jsonl"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != to_jsonl(rows):
                stale.append(str(path))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(to_jsonl(rows), encoding="utf-8")
            print(f"wrote {len(rows)} rows to {path}")
    if stale:
        print(f"out of date (rerun `python -m promptgym.envs.demo_data`): {', '.join(stale)}", file=sys.stderr)
        return 1
    if args.check:
        print("demo files match a fresh generation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
