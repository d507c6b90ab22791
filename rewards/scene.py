"""The synth world's scene grammar: the vocabulary, `Scene`, `describe(scene)` and `parse_scene(prompt)`.

A scene is what a prompt of the demo grammar asks for: a subject drawn `count` times in a colour, optionally
with an accessory, on a background, optionally at a time of day or in some weather, optionally in a style, and
with quality modifiers that the world's renderer applies as image transforms. Every word of this vocabulary
changes the picture in a way the world's judge can read at 32x32 (see `SceneRenderer`); the vocabulary is kept
that small on purpose.

    >>> describe(Scene("dog", 2, "red", "hat", "park", "sunset", "watercolor", ("vibrant colors",)))
    'two red dogs with hats in a park at sunset, watercolor, vibrant colors'
    >>> parse_scene("two red dogs with hats in a park at sunset, watercolor, vibrant colors").scene.count
    2

`parse_scene` reads any text: words of the vocabulary fill the scene, grammar words ("a", "with", "in", ...)
are skipped, and everything else, including a second value for an attribute already set, is reported in
`ParsedScene.unparsed`, never guessed.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from typing import NamedTuple

__all__ = [
    "ACCESSORIES",
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLOURS",
    "COUNTS",
    "GRAMMAR_WORDS",
    "HELD_OUT_PAIRS",
    "MODIFIERS",
    "STYLES",
    "SUBJECT_ATTRIBUTES",
    "SUBJECTS",
    "WEATHERS",
    "ParsedScene",
    "Scene",
    "attribute_values",
    "describe",
    "parse_scene",
    "sample_scene",
    "with_article",
]

# (singular, plural); plurals lemmatise back to the singular with simplemma.
SUBJECTS = (("dog", "dogs"), ("cat", "cats"), ("rabbit", "rabbits"), ("owl", "owls"), ("turtle", "turtles"),
            ("robot", "robots"), ("frog", "frogs"), ("butterfly", "butterflies"))
COUNTS = ("one", "two", "three")  # one is written "a"/"an"
COLOURS = ("red", "blue", "green", "yellow", "purple", "pink", "white", "black")
ACCESSORIES = (("hat", "hats"), ("crown", "crowns"), ("balloon", "balloons"), ("umbrella", "umbrellas"))
BACKGROUNDS = (("in", "park"), ("on", "beach"), ("in", "forest"), ("in", "desert"), ("in", "kitchen"),
               ("in", "cave"))  # (preposition, noun)
WEATHERS = (("sunset", "at sunset"), ("night", "at night"), ("rainy", "in rainy weather"),
            ("snowy", "in snowy weather"), ("foggy", "in foggy weather"))  # time of day and weather: one attribute
STYLES = ("watercolor", "pixel art", "mosaic", "anime")
MODIFIERS = ("highly detailed", "vibrant colors", "soft lighting", "dramatic shadows", "depth of field")
# Words a prompt may contain that carry no attribute.
GRAMMAR_WORDS = ("a", "an", "and", "at", "by", "in", "of", "on", "the", "with", "weather")

# The content attributes a judge reads off an image (modifiers are not content: they change how it looks).
ATTRIBUTES = ("subject", "count", "colour", "accessory", "background", "weather", "style")
# The attributes that only exist on a subject: invisible in a scene without one.
SUBJECT_ATTRIBUTES = ("count", "colour", "accessory")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One picture of the world. None means "not asked for": no subject, the default (grey) colour, no
    accessory, a plain backdrop, daylight, no style. `modifiers` are quality modifiers in prompt order."""

    subject: str | None = None
    count: int = 1
    colour: str | None = None
    accessory: str | None = None
    background: str | None = None
    weather: str | None = None
    style: str | None = None
    modifiers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, allowed in _ATTRIBUTE_VALUES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"Scene.{name}={value!r}; expected one of {list(allowed)}")
        bad = [m for m in self.modifiers if m not in MODIFIERS]
        if bad or len(set(self.modifiers)) != len(self.modifiers) or not isinstance(self.modifiers, tuple):
            raise ValueError(f"Scene.modifiers={self.modifiers!r}; expected a tuple of distinct items of {list(MODIFIERS)}")

    def content(self) -> dict[str, object]:
        """The content attributes (`ATTRIBUTES`) as a dict: what `gold_content` compares."""
        return {name: getattr(self, name) for name in ATTRIBUTES}

    def drawn_attributes(self) -> tuple[str, ...]:
        """The content attributes a picture of this scene shows: all of `ATTRIBUTES`, except that a scene without
        a subject has no count, colour or accessory to draw (the judge is neither trained nor scored on them)."""
        if self.subject is not None:
            return ATTRIBUTES
        return tuple(name for name in ATTRIBUTES if name not in SUBJECT_ATTRIBUTES)


def attribute_values() -> dict[str, tuple]:
    """Every value each content attribute can take, None (not asked for) first where allowed."""
    return {
        "subject": (None, *(s for s, _ in SUBJECTS)),
        "count": tuple(range(1, len(COUNTS) + 1)),
        "colour": (None, *COLOURS),
        "accessory": (None, *(a for a, _ in ACCESSORIES)),
        "background": (None, *(b for _, b in BACKGROUNDS)),
        "weather": (None, *(w for w, _ in WEATHERS)),
        "style": (None, *STYLES),
    }


_ATTRIBUTE_VALUES = attribute_values()  # what Scene checks against (built once: every parse makes a Scene)


def with_article(phrase: str) -> str:
    """ "an owl", "a dog": the indefinite article for the world's words (none starts with a silent h or "uni")."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def describe(scene: Scene) -> str:
    """The prompt of `scene` in the demo grammar, e.g. "two red dogs with hats in a park at sunset, anime"."""
    if scene.subject is None:
        raise ValueError("describe() needs a scene with a subject")
    plural = dict(SUBJECTS)[scene.subject]
    noun = " ".join(w for w in (scene.colour, plural if scene.count > 1 else scene.subject) if w)
    text = with_article(noun) if scene.count == 1 else f"{COUNTS[scene.count - 1]} {noun}"
    if scene.accessory:
        text += " with " + (dict(ACCESSORIES)[scene.accessory] if scene.count > 1 else with_article(scene.accessory))
    if scene.background:
        text += f" {dict((b, p) for p, b in BACKGROUNDS)[scene.background]} {with_article(scene.background)}"
    if scene.weather:
        text += " " + dict(WEATHERS)[scene.weather]
    return ", ".join([text, *([scene.style] if scene.style else []), *scene.modifiers])


class ParsedScene(NamedTuple):
    """`parse_scene`'s answer: the scene and the words it could not place (unknown, or a second value)."""

    scene: Scene
    unparsed: tuple[str, ...]


def _lexicon() -> dict[tuple[str, ...], tuple[str, object]]:
    """Phrase (as a word tuple) -> (field, value)."""
    entries: dict[tuple[str, ...], tuple[str, object]] = {}
    for singular, plural in SUBJECTS:
        entries[(singular,)] = ("subject", singular)
        entries[(plural,)] = ("subject+", singular)
    for n, word in enumerate(COUNTS, start=1):
        entries[(word,)] = ("count", n)
    for word in ("a", "an"):
        entries[(word,)] = ("article", 1)
    entries |= {(c,): ("colour", c) for c in COLOURS}
    for singular, plural in ACCESSORIES:
        entries[(singular,)] = entries[(plural,)] = ("accessory", singular)
    entries |= {(b,): ("background", b) for _, b in BACKGROUNDS}
    entries |= {(w,): ("weather", w) for w, _ in WEATHERS}
    entries |= {tuple(s.split()): ("style", s) for s in STYLES}
    entries |= {tuple(m.split()): ("modifiers", m) for m in MODIFIERS}
    return entries


_LEXICON = _lexicon()
# First word -> the lengths of the lexicon's phrases starting with it, longest first: the parser tries only those
# (a word that starts no phrase is looked up nowhere).
_PHRASE_SIZES = {first: tuple(sorted({len(p) for p in _LEXICON if p[0] == first}, reverse=True))
                 for first in {p[0] for p in _LEXICON}}
_WORD = re.compile(r"[a-z0-9']+")


def parse_scene(prompt: str) -> ParsedScene:
    """The scene a prompt asks for, and the words it could not place.

    Phrases are matched longest first ("pixel art" before "art"). The first value of an attribute wins; a later,
    different value is reported as unparsed. The count is the number word ("two"), 1 for "a"/"an" or a singular
    subject; a plural subject without a number word ("dogs in a park") means two.
    Repeated modifiers count once. Results are cached (prompts repeat across a run's reward calls and monitors).
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}: {prompt!r:.80}")
    return _parse_scene(prompt)


@functools.lru_cache(maxsize=65536)
def _parse_scene(prompt: str) -> ParsedScene:
    words = _WORD.findall(prompt.lower())
    found: dict[str, object] = {}
    modifiers: list[str] = []
    unparsed: list[str] = []
    count_word: int | None = None
    plural_subject = False
    i = 0
    while i < len(words):
        for size in _PHRASE_SIZES.get(words[i], ()):
            entry = _LEXICON.get(tuple(words[i : i + size])) if i + size <= len(words) else None
            if entry is not None:
                break
        else:
            if words[i] not in GRAMMAR_WORDS:
                unparsed.append(words[i])
            i += 1
            continue
        phrase, (field, value) = " ".join(words[i : i + size]), entry
        i += size
        if field == "modifiers":
            if value not in modifiers:
                modifiers.append(value)
        elif field in ("count", "article"):
            if count_word is None and "subject" not in found:
                count_word = int(value)
            elif field == "count":
                unparsed.append(phrase)
        else:
            key = "subject" if field == "subject+" else field
            if key in found:  # a second subject, or a second, different value of an attribute
                if key == "subject" or found[key] != value:
                    unparsed.append(phrase)
                continue
            found[key] = value
            plural_subject = plural_subject or field == "subject+"
    if count_word is None:
        count_word = 2 if plural_subject else 1
    scene = Scene(count=count_word, modifiers=tuple(modifiers), **found)  # type: ignore[arg-type]
    return ParsedScene(scene, tuple(unparsed))


# Subject-colour pairs the world's trained models never see in training (one colour per subject), so that
# renders of them measure generalisation to unseen attribute combinations.
HELD_OUT_PAIRS = tuple((subject, COLOURS[(3 * i + 1) % len(COLOURS)]) for i, (subject, _) in enumerate(SUBJECTS))


def sample_scene(rng: random.Random, *, subject: bool = True, held_out: str = "exclude") -> Scene:
    """A random scene of the world's training distribution.

    Probabilities: colour 85%, accessory 50%, background 90%, weather 60%, style 60%, 0/1/2/3 modifiers with
    40/30/20/10%. `subject=False` gives a scene without subject 5% of the time (for the judge's "none" class).
    `held_out`: "exclude" never returns a `HELD_OUT_PAIRS` subject-colour pair, "only" always does, "any" ignores them.
    """
    if held_out not in ("exclude", "only", "any"):
        raise ValueError(f"held_out={held_out!r}; expected 'exclude', 'only' or 'any'")
    values = attribute_values()
    while True:
        scene = Scene(
            subject=None if not subject and rng.random() < 0.05 else rng.choice(values["subject"][1:]),
            count=rng.choice(values["count"]),
            colour=rng.choice(COLOURS) if rng.random() < 0.85 else None,
            accessory=rng.choice(values["accessory"][1:]) if rng.random() < 0.5 else None,
            background=rng.choice(values["background"][1:]) if rng.random() < 0.9 else None,
            weather=rng.choice(values["weather"][1:]) if rng.random() < 0.6 else None,
            style=rng.choice(STYLES) if rng.random() < 0.6 else None,
            modifiers=tuple(rng.sample(MODIFIERS, rng.choices((0, 1, 2, 3), weights=(4, 3, 2, 1))[0])),
        )
        pair = (scene.subject, scene.colour) in HELD_OUT_PAIRS
        if held_out == "any" or (held_out == "exclude") != pair:
            return scene


def target_scene(task: object) -> Scene | None:
    """The scene a task's target prompt asks for (`parse_scene(task.target).scene`), None without a target."""
    target = getattr(task, "target", None)
    return parse_scene(target).scene if target else None
