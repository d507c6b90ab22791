"""Gold metrics of the synth world: measured on the image itself, never learned from the proxy reward models.

- `gold_content(images, scenes, judge)`: the fraction of a target scene's content attributes (`ATTRIBUTES`:
  subject, count, colour, accessory, background, weather, style) that the `SceneJudge` reads correctly off each
  image, averaged over the K images of a prompt. The judge is a small CNN trained on `SceneRenderer` renders with
  known labels (`promptgym world build --stages judge`); a task without a known target scene scores NaN.
- `gold_aesthetic(images)`: a fixed function of image statistics with an interior optimum (documented at
  `GOLD_AESTHETIC`): four "in moderation" terms, each a Gaussian bump around a target value, minus penalties for
  blown-out/crushed pixels and for amplified noise. One or two well-chosen quality modifiers raise it (soft
  lighting for a dark scene, vibrant colours for a washed-out one, depth of field to isolate the subject);
  stacking them clips pixels and amplifies grain, so "add every modifier" scores below the plain render.
- `text_content(prompts, scenes)`: the same fraction read off the prompt's words (`parse_scene`) instead of its
  render: what the policy wrote, without the renderer and judge between. The `synth` rewards report it as
  `gold/text_content` beside `gold/content`.
- `attribute_misses(prompts, sources, scenes)`: where `text_content` falls short, per attribute, split by whether
  the instruction kept the attribute (a copying error) or changed it (an edit not done, or done wrong).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from promptgym.rewards.base import EditResult, check_scores
from promptgym.rewards.image_scorers import check_images
from promptgym.rewards.scene import ATTRIBUTES, Scene, attribute_values, parse_scene, target_scene

__all__ = [
    "GOLD_AESTHETIC",
    "GoldAestheticScorer",
    "GoldContentScorer",
    "GoldTextContentScorer",
    "NOT_DRAWN",
    "SceneJudge",
    "aesthetic_statistics",
    "attribute_misses",
    "drawn_labels",
    "gold_aesthetic",
    "gold_content",
    "scene_labels",
    "target_scene",
    "text_content",
]

# gold_aesthetic = mean of the four bumps exp(-((stat - target) / width)^2 / 2)
#                  - clipped_weight * clipped fraction - noise_weight * max(noise - noise_free, 0)
# Targets were set once (2026-11-29) from the statistics of plain renders of random scenes so that the average plain
# render scores ~0.48, the best single modifier per scene ~0.72, the best subset ~0.82 (1-2 modifiers for 3 scenes in 4)
# and all five modifiers ~0.34.
GOLD_AESTHETIC = {
    "exposure": (0.50, 0.175),  # mean luminance
    "contrast": (0.14, 0.06),  # standard deviation of luminance
    "colourfulness": (0.25, 0.15),  # Hasler & Suesstrunk (2003) colourfulness, on [0, 1] pixels
    "focus": (0.41, 0.14),  # share of Laplacian energy in the top 1/8 of pixels (subject isolation)
    "clipped_weight": 1.3,  # fraction of pixels with a channel < 0.02 or > 0.98
    "noise_weight": 0.05,
    "noise_free": 0.18,  # median |Laplacian| of luminance (x4 stencil): grain and halo amplified by processing
}
_LUMA = (0.299, 0.587, 0.114)


STATISTICS = ("exposure", "contrast", "colourfulness", "focus", "clipped", "noise")  # of `aesthetic_statistics`


def aesthetic_statistics(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image statistics `gold_aesthetic` uses, for `images[..., 3, H, W]` in [0, 1]; each `[...]`."""
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"images must have shape [..., 3, H, W], got {tuple(images.shape)}")
    x = images.float()
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    if x.shape[0] == 0:  # no images: empty statistics (torch's reductions warn on an empty batch)
        return {name: torch.zeros(lead) for name in STATISTICS}
    lum = torch.einsum("nchw,c->nhw", x, torch.tensor(_LUMA))
    rg = x[:, 0] - x[:, 1]
    yb = 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
    flat = lambda t: t.flatten(1)  # noqa: E731
    colourfulness = torch.sqrt(flat(rg).var(1, unbiased=False) + flat(yb).var(1, unbiased=False)) + 0.3 * torch.sqrt(
        flat(rg).mean(1) ** 2 + flat(yb).mean(1) ** 2
    )
    lap = (4 * lum[:, 1:-1, 1:-1] - lum[:, :-2, 1:-1] - lum[:, 2:, 1:-1] - lum[:, 1:-1, :-2] - lum[:, 1:-1, 2:]).abs()
    energy = flat(lap).sort(dim=1, descending=True).values
    top = energy[:, : energy.shape[1] // 8].sum(1)
    stats = {
        "exposure": flat(lum).mean(1),
        "contrast": flat(lum).std(1, unbiased=False),
        "colourfulness": colourfulness,
        "focus": top / (energy.sum(1) + 1e-6),
        "clipped": ((x < 0.02) | (x > 0.98)).any(1).flatten(1).float().mean(1),
        "noise": flat(lap).median(1).values,
    }
    return {name: stats[name].reshape(lead) for name in STATISTICS}


def gold_aesthetic(images: torch.Tensor) -> torch.Tensor:
    """Gold aesthetic score `[N]` (float32, at most 1, negative when heavily clipped) of `images[N, K, 3, H, W]`,
    the mean over the K images of each prompt."""
    check_images(images)
    stats = aesthetic_statistics(images)
    bumps = [torch.exp(-0.5 * ((stats[name] - mu) / width) ** 2) for name, (mu, width) in
             ((n, GOLD_AESTHETIC[n]) for n in ("exposure", "contrast", "colourfulness", "focus"))]
    score = torch.stack(bumps).mean(0) - GOLD_AESTHETIC["clipped_weight"] * stats["clipped"] - GOLD_AESTHETIC[
        "noise_weight"
    ] * torch.clamp(stats["noise"] - GOLD_AESTHETIC["noise_free"], min=0)
    return score.mean(1).float()


# ------------------------------------------------------------------------------------------------ the judge


def scene_labels(scene: Scene) -> dict[str, int]:
    """Class index of each content attribute of `scene` (the judge's targets)."""
    values = attribute_values()
    return {name: values[name].index(getattr(scene, name)) for name in ATTRIBUTES}


NOT_DRAWN = -100  # the label of an attribute a picture cannot show (cross_entropy's default ignore_index)


def drawn_labels(scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    """`{attribute: LongTensor[len(scenes)]}` of class indices, `NOT_DRAWN` where the scene does not draw the
    attribute (`Scene.drawn_attributes`): what the judge is trained on and scored against."""
    labels = [scene_labels(s) for s in scenes]
    drawn = [s.drawn_attributes() for s in scenes]
    return {name: torch.tensor([lab[name] if name in d else NOT_DRAWN for lab, d in zip(labels, drawn)], dtype=torch.long)
            for name in ATTRIBUTES}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
    )


class SceneJudge(nn.Module, PyTorchModelHubMixin):
    """A CNN that reads every content attribute of a scene off a 32x32 render: one classification head each.

    `forward(images[M, 3, H, W] in [0, 1]) -> {attribute: logits[M, n_values]}`, values in `attribute_values()`
    order (None first where allowed). Saved and loaded with `save_pretrained` / `from_pretrained`.
    """

    def __init__(self, width: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(3, width), nn.MaxPool2d(2), _block(width, 2 * width), nn.MaxPool2d(2),
            _block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(4 * width * 16, hidden), nn.ReLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, len(values)) for name, values in attribute_values().items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images * 2 - 1)
        return {name: head(features) for name, head in self.heads.items()}

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Predicted class index per attribute, `{attribute: LongTensor[M]}`, for `images[M, 3, H, W]` (eval mode)."""
        was_training = self.training
        self.eval()
        outputs: dict[str, list[torch.Tensor]] = {name: [] for name in self.heads}
        for chunk in images.float().split(batch_size):
            for name, logits in self(chunk).items():
                outputs[name].append(logits.argmax(-1))
        self.train(was_training)
        return {name: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long) for name, parts in outputs.items()}


def gold_content(images: torch.Tensor, scenes: Sequence[Scene | None], judge: SceneJudge) -> torch.Tensor:
    """Fraction of each scene's drawn content attributes (`Scene.drawn_attributes`) the judge reads off its images,
    `[N]` float32, mean over K.

    `images[N, K, 3, H, W]`; `scenes[i]` is the target scene of row i, or None (no known target): NaN."""
    check_images(images, len(scenes))
    n, k = images.shape[:2]
    out = torch.full((n,), math.nan)
    rows = [i for i, scene in enumerate(scenes) if scene is not None]
    if not rows:
        return out
    read = judge.read(images[rows].flatten(0, 1))
    correct, counted = torch.zeros(len(rows), k), torch.zeros(len(rows), 1)
    for name, labels in drawn_labels([scenes[i] for i in rows]).items():
        drawn = (labels != NOT_DRAWN).float()[:, None]
        correct += (read[name].reshape(len(rows), k) == labels[:, None]).float() * drawn
        counted += drawn
    out[rows] = (correct / counted).mean(1)
    return out


class GoldContentScorer:
    """`gold/content` of edited prompts: render each with `renderer`, read the target scene's attributes with the
    judge. NaN for tasks without a target. A monitor beside the proxy reward, not a reward (unless the user asks)."""

    name = "gold/content"

    def __init__(self, judge: SceneJudge, renderer: object) -> None:
        self.judge = judge.eval()
        self.renderer = renderer

    @classmethod
    def from_pretrained(cls, path: str | Path, renderer: object) -> GoldContentScorer:
        return cls(SceneJudge.from_pretrained(str(path)), renderer)

    def __call__(self, results: Sequence[EditResult]) -> torch.Tensor:
        images = self.renderer.render([r.prompt for r in results])
        scores = gold_content(images, [target_scene(r.task) for r in results], self.judge)
        return check_scores(self.name, scores, len(results))


def text_content(prompts: Sequence[str], scenes: Sequence[Scene | None]) -> torch.Tensor:
    """Fraction of each target scene's drawn attributes (`Scene.drawn_attributes`) that the prompt itself asks for
    (its `parse_scene`), `[N]` float32; NaN where the scene is None (no known target).

    What `gold_content` would be with a perfect renderer and judge: no render, no model. Beside `gold/content` it
    tells what the policy wrote from what the renderer drew (a prompt can lose gold content by writing the wrong
    colour, or by adding words the renderer draws less legibly)."""
    if len(prompts) != len(scenes):
        raise ValueError(f"{len(prompts)} prompts and {len(scenes)} scenes; expected one target scene per prompt")
    out = torch.full((len(prompts),), math.nan)
    for i, (prompt, scene) in enumerate(zip(prompts, scenes)):
        if scene is None:
            continue
        asked, wanted, drawn = scene_labels(parse_scene(prompt).scene), scene_labels(scene), scene.drawn_attributes()
        out[i] = sum(asked[name] == wanted[name] for name in drawn) / len(drawn)
    return out


def attribute_misses(prompts: Sequence[str], sources: Sequence[str], scenes: Sequence[Scene | None]
                     ) -> dict[str, torch.Tensor]:
    """Which target attributes each prompt gets wrong, by kind: `{f"{attribute}/{kind}": float32 [N]}` for every
    attribute of `ATTRIBUTES` and kind "kept" (the source asks for the target's value: the instruction kept it) or
    "edited" (the source asks for another value: the instruction changed it). An entry is 1 where the prompt asks
    for another value than the target scene's (`parse_scene`), 0 where it asks for that value, and NaN where the
    attribute is of the other kind, not drawn in the target scene (`Scene.drawn_attributes`), or the scene is None.

    Over the drawn attributes of a prompt, the misses of both kinds add up to `(1 - text_content) * len(drawn)`.
    Read the "kept" misses as copying errors and the "edited" ones as instructed edits not done (or done wrong)."""
    if not len(prompts) == len(sources) == len(scenes):
        raise ValueError(f"{len(prompts)} prompts, {len(sources)} sources and {len(scenes)} scenes; expected one "
                         "source and one target scene per prompt")
    out = {f"{name}/{kind}": torch.full((len(prompts),), math.nan) for name in ATTRIBUTES for kind in ("kept", "edited")}
    for i, (prompt, source, scene) in enumerate(zip(prompts, sources, scenes)):
        if scene is None:
            continue
        asked, wanted = scene_labels(parse_scene(prompt).scene), scene_labels(scene)
        before = scene_labels(parse_scene(source).scene)
        for name in scene.drawn_attributes():
            kind = "kept" if before[name] == wanted[name] else "edited"
            out[f"{name}/{kind}"][i] = float(asked[name] != wanted[name])
    return out


class GoldTextContentScorer:
    """`gold/text_content` of edited prompts: `text_content` against the task's target scene (no render). NaN for
    tasks without a target; a monitor beside `gold/content`."""

    name = "gold/text_content"

    def __call__(self, results: Sequence[EditResult]) -> torch.Tensor:
        scores = text_content([r.prompt for r in results], [target_scene(r.task) for r in results])
        return check_scores(self.name, scores, len(results))


class GoldAestheticScorer:
    """`gold/aesthetic` of edited prompts: render each with `renderer` and apply `gold_aesthetic`."""

    name = "gold/aesthetic"

    def __init__(self, renderer: object) -> None:
        self.renderer = renderer

    def __call__(self, results: Sequence[EditResult]) -> torch.Tensor:
        return check_scores(self.name, gold_aesthetic(self.renderer.render([r.prompt for r in results])), len(results))
