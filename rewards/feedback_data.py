"""Feedback labels for the reward model of Lee et al. (2023): the labels file, perturbed prompts, simulated feedback.

**The labels file** is JSON lines, one labelled image per line:

    {"prompt": "a red dog in a park", "image": "images/000001.png", "label": 1}
    {"prompt": "a red dog in a park", "seed": 17, "render_prompt": "a blue dog in a park", "label": 0}

- `prompt`: the text the label is about ("does this image show this prompt?");
- the image, one of: `image`, a PNG path relative to the labels file (real feedback on real renders), or `seed`, an
  int >= 0: the image is image `seed` of the synth renderer (renderer seed 0) for `render_prompt` (default: the
  prompt), i.e. `synth_renderer(0, {"images_per_prompt": seed + 1}).render([render_prompt])[0, seed]`, so renders
  are reproducible without writing PNGs (`seed` 0 and 1 are exactly the two renders the `synth` reward scores);
- `label`: 1 (the image shows the prompt) or 0;
- optional `id` (a str) and `meta` (an object, e.g. the simulator's gold label), carried along, never used to train.

A missing image, a label outside {0, 1}, a duplicate row (same prompt and image), an unknown field or a line that is
not JSON is a ValueError naming the file and the line.

**Perturbed prompts** (the auxiliary task): `perturbed_prompts(prompt, k, rng)` changes exactly one content attribute
of the prompt's scene (`parse_scene` then `describe`), k distinct ways. Only prompts that the scene grammar writes
exactly (`describe(parse_scene(p).scene) == p`) are perturbed: for any other text a rewrite would change more than one
attribute (the words the grammar does not know would vanish), so such a prompt has no perturbations and its row
trains the MSE term only. A perturbation never introduces a `HELD_OUT_PAIRS` subject-colour pair that the prompt does
not have, so training on `held_out="exclude"` feedback never shows the model the held-out combinations.

**Simulated feedback** (`simulate_feedback`): captions of random scenes (`sample_scene`, `describe`); each is rendered
either as written or, with probability `mismatch_share`, as a *mismatched* caption (one attribute changed), so both
labels occur. The label is the gold judge's: 1 when the `SceneJudge` reads every drawn content attribute of the
caption's scene off the render (`gold_content == 1`, `GOLD_MATCH`), else 0; a render of a mismatched caption drawn
faithfully reads 6 of 7 attributes right (0.857), so any threshold below 1 would call it a match. Each label is then
flipped with probability `noise` from a separate random stream, so the same seed gives the same images and captions at
every noise level.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from promptgym.rewards.jsonl import jsonl_objects
from promptgym.rewards.scene import HELD_OUT_PAIRS, Scene, attribute_values, describe, parse_scene, sample_scene

__all__ = [
    "GOLD_MATCH",
    "LABEL_FIELDS",
    "FeedbackRow",
    "SimulatedFeedback",
    "apply_label_noise",
    "load_feedback_image",
    "one_attribute_changes",
    "perturbed_prompts",
    "read_feedback_labels",
    "render_feedback_images",
    "simulate_feedback",
    "write_feedback_labels",
]

GOLD_MATCH = 1.0  # gold_content at or above which a render "shows" its caption: every drawn attribute read right
LABEL_FIELDS = ("prompt", "image", "seed", "render_prompt", "label", "id", "meta")


@dataclasses.dataclass(frozen=True)
class FeedbackRow:
    """One labelled image. Exactly one of `image` (an absolute PNG path) and `seed` (the synth renderer's noise index
    of a render of `render_prompt`, default the prompt) says which image; `where` is "file:line" for messages."""

    prompt: str
    label: int
    image: Path | None = None
    seed: int | None = None
    render_prompt: str | None = None
    id: str | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    where: str = ""

    def __post_init__(self) -> None:
        if (self.image is None) == (self.seed is None):
            raise ValueError(f"{self.where or 'FeedbackRow'}: expected exactly one of image and seed")
        if self.render_prompt is not None and self.seed is None:
            raise ValueError(f"{self.where or 'FeedbackRow'}: render_prompt goes with seed, not with an image file")

    @property
    def rendered(self) -> str | None:
        """The prompt the renderer drew (seed rows), None for an image file."""
        return None if self.seed is None else (self.render_prompt or self.prompt)

    def image_key(self) -> str:
        """Identifies the image: `seed:<seed>:<rendered prompt>` or `file:<path>` (duplicates, embedding caches)."""
        return f"file:{self.image}" if self.image is not None else f"seed:{self.seed}:{self.rendered}"

    def to_json(self, base: Path) -> dict[str, Any]:
        """The row as a labels-file object, an image path relative to `base` (the labels file's folder)."""
        row: dict[str, Any] = {"prompt": self.prompt}
        if self.image is not None:
            row["image"] = Path(os.path.relpath(self.image, base)).as_posix()
        else:
            row["seed"] = self.seed
            if self.render_prompt is not None and self.render_prompt != self.prompt:
                row["render_prompt"] = self.render_prompt
        row["label"] = self.label
        if self.id is not None:
            row["id"] = self.id
        if self.meta:
            row["meta"] = dict(self.meta)
        return row


# ------------------------------------------------------------------------------------------- the labels file


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _row_from_object(obj: dict[str, Any], base: Path, where: str) -> FeedbackRow:
    """Validate one labels-file object; every problem is a ValueError starting with `where` ("file: line n")."""
    unknown = sorted(set(obj) - set(LABEL_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}; expected {list(LABEL_FIELDS)}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: prompt must be a non-empty string, got {prompt!r:.80}")
    label = obj.get("label")
    if isinstance(label, bool) or not isinstance(label, (int, float)) or label not in (0, 1):
        raise ValueError(f"{where}: label must be 0 or 1, got {label!r:.80}")
    if ("image" in obj) == ("seed" in obj):
        raise ValueError(f"{where}: expected exactly one of image (a PNG path) and seed (a render's noise index)")
    image = seed = None
    if "image" in obj:
        if not isinstance(obj["image"], str) or not obj["image"]:
            raise ValueError(f"{where}: image must be a path string, got {obj['image']!r:.80}")
        image = (base / obj["image"]).resolve()
        if not image.is_file():
            raise ValueError(f"{where}: image {obj['image']!r} not found (looked for {image})")
        if "render_prompt" in obj:
            raise ValueError(f"{where}: render_prompt goes with seed, not with an image file")
    else:
        seed = obj["seed"]
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"{where}: seed must be an int >= 0, got {seed!r:.80}")
    render_prompt = obj.get("render_prompt")
    if render_prompt is not None and (not isinstance(render_prompt, str) or not render_prompt.strip()):
        raise ValueError(f"{where}: render_prompt must be a non-empty string, got {render_prompt!r:.80}")
    if not isinstance(obj.get("id", ""), str) or not isinstance(obj.get("meta", {}), dict):
        raise ValueError(f"{where}: id must be a string and meta an object")
    return FeedbackRow(prompt, int(label), image, seed, render_prompt, obj.get("id"), obj.get("meta", {}), where)


def read_feedback_labels(path: str | os.PathLike) -> list[FeedbackRow]:
    """The rows of a labels file (see the module doc), in order; bad content is a ValueError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    objects = jsonl_objects(path.read_text(encoding="utf-8"), str(path), expected="an object with prompt, label and "
                            "image or seed")
    rows: list[FeedbackRow] = []
    seen: dict[tuple[str, str], int] = {}
    for number, obj in objects:
        row = _row_from_object(obj, path.parent, f"{path}: line {number}")
        key = (row.prompt, row.image_key())
        if key in seen:
            raise ValueError(f"{path}: line {number} is a duplicate of line {seen[key]} (same prompt and image)")
        seen[key] = number
        rows.append(dataclasses.replace(row, where=f"{path}:{number}"))
    if not rows:
        raise ValueError(f"{path} holds no labelled rows")
    return rows


def write_feedback_labels(rows: Sequence[FeedbackRow], path: str | os.PathLike) -> Path:
    """Write `rows` as a labels file (image paths relative to its folder); returns the path."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row.to_json(path.parent.resolve())) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def load_feedback_image(path: Path, where: str = "") -> torch.Tensor:
    """An image file as `[3, H, W]` float32 in [0, 1] (RGB); an unreadable file is a ValueError naming `where`."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{where or path}: cannot read image {path}: {error}") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def render_feedback_images(rows: Sequence[FeedbackRow], renderer: Any, progress: bool = True) -> list[torch.Tensor]:
    """The image of each row, `[3, H, W]` in [0, 1]: files loaded, seed rows rendered in batches with
    `renderer.render_pairs` (image `seed` of the rendered prompt)."""
    images: list[torch.Tensor | None] = [None] * len(rows)
    seeded = [i for i, row in enumerate(rows) if row.seed is not None]
    for i, row in enumerate(rows):
        if row.image is not None:
            images[i] = load_feedback_image(row.image, row.where)
    if seeded and renderer is None:
        raise ValueError(f"{rows[seeded[0]].where}: a seed row needs a renderer (the synth renderer draws it)")
    step = max(1, int(getattr(renderer, "batch_size", 32)))
    for start in tqdm(range(0, len(seeded), step), desc="render feedback images", disable=not progress,
                      mininterval=2.0, dynamic_ncols=True):
        chunk = seeded[start : start + step]
        for i, image in zip(chunk, renderer.render_pairs([(rows[i].rendered, rows[i].seed) for i in chunk])):
            images[i] = image
    return images  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- perturbed prompts


def one_attribute_changes(scene: Scene) -> list[Scene]:
    """Every scene that differs from `scene` in exactly one content attribute (the subject stays a subject), without
    introducing a `HELD_OUT_PAIRS` subject-colour pair `scene` does not have. Subject-less scenes have none."""
    if scene.subject is None:
        return []
    held_out = (scene.subject, scene.colour) in HELD_OUT_PAIRS
    changes = []
    for name, values in attribute_values().items():
        for value in values:
            if value == getattr(scene, name) or (name == "subject" and value is None):
                continue
            changed = dataclasses.replace(scene, **{name: value})
            if held_out or (changed.subject, changed.colour) not in HELD_OUT_PAIRS:
                changes.append(changed)
    return changes


def perturbed_prompts(prompt: str, k: int, rng: random.Random) -> list[str]:
    """Up to `k` distinct prompts that each change one content attribute of `prompt`'s scene, drawn uniformly from
    `one_attribute_changes`; [] when the grammar does not write `prompt` exactly (see the module doc)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    parsed = parse_scene(prompt)
    if parsed.scene.subject is None or describe(parsed.scene) != prompt:
        return []
    changes = one_attribute_changes(parsed.scene)
    return [describe(scene) for scene in rng.sample(changes, min(k, len(changes)))]


# ------------------------------------------------------------------------------------------- simulated feedback


def apply_label_noise(labels: Sequence[int], noise: float, rng: random.Random) -> list[int]:
    """Each label flipped (0 <-> 1) independently with probability `noise`."""
    if not (0.0 <= noise <= 1.0) or math.isnan(noise):
        raise ValueError(f"noise must be a probability in [0, 1], got {noise}")
    return [1 - y if rng.random() < noise else y for y in labels]


class SimulatedFeedback(NamedTuple):
    """`simulate_feedback`'s answer: the labelled rows and their renders `images[N, 3, H, W]` (to write as PNGs)."""

    rows: list[FeedbackRow]
    images: torch.Tensor


def simulate_feedback(n: int, *, renderer: Any, judge: Any, seed: int = 0, noise: float = 0.0,
                      held_out: str = "exclude", mismatch_share: float = 0.5, progress: bool = True) -> SimulatedFeedback:
    """`n` labelled seed rows of synth feedback (module doc): captions of `sample_scene(held_out=held_out)` scenes,
    each rendered as written or mismatched (one attribute changed, with probability `mismatch_share`) by `renderer`
    at a random noise index, labelled by `judge` (`gold_content == GOLD_MATCH`) and flipped with probability `noise`.

    `meta` keeps the gold label, the gold content and what was rendered ("caption" or "mismatch")."""
    from promptgym.rewards.gold import gold_content

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= mismatch_share <= 1.0:
        raise ValueError(f"mismatch_share must be in [0, 1], got {mismatch_share}")
    rng = random.Random(seed)
    scenes, rows = [], []
    for _ in range(n):
        scene = sample_scene(rng, held_out=held_out)
        caption = describe(scene)
        mismatched = rng.random() < mismatch_share
        rendered = perturbed_prompts(caption, 1, rng)[0] if mismatched else caption
        scenes.append(scene)
        rows.append(FeedbackRow(caption, 0, seed=rng.randrange(2**31), render_prompt=rendered,
                                meta={"rendered": "mismatch" if mismatched else "caption"}))
    images = torch.stack(render_feedback_images(rows, renderer, progress=progress))
    content = gold_content(images[:, None], scenes, judge)
    gold = [int(value >= GOLD_MATCH - 1e-6) for value in content.tolist()]
    labels = apply_label_noise(gold, noise, random.Random(f"{seed}/label-noise"))
    rows = [dataclasses.replace(row, label=label, render_prompt=row.render_prompt if row.render_prompt != row.prompt
                                else None, meta={**row.meta, "gold_label": g, "gold_content": round(c, 4)})
            for row, label, g, c in zip(rows, labels, gold, content.tolist())]
    return SimulatedFeedback(rows, images)
