"""`SceneRenderer`: the synth world's exact, procedural renderer (prompt -> parsed `Scene` -> picture).

It is a renderer like `DiffusersRenderer` (same `render(prompts) -> [N, K, 3, H, W]`, LRU cache, common random
numbers: image k of every prompt uses the layout, texture and weather randomness of `(seed, k)` only), and it
makes the training data of every model of the synth world. Every word of the vocabulary is visible:

| attribute | drawn as |
|---|---|
| subject | a distinct glyph with a dark outline: dog filled square, cat triangle, rabbit plus, owl ring, turtle dome, robot hollow square, frog diamond, butterfly bow tie |
| count | 1-3 instances in fixed layouts, jittered by `(seed, k)` |
| colour | the glyph's fill; no colour asked for draws it grey |
| accessory | on every instance: hat (dark, brim and crown), crown (gold, three points), balloon (orange, on a string), umbrella (cyan dome) |
| background | park, beach, forest, desert, kitchen, cave as layouts of sky, ground and texture; none is a plain light backdrop |
| weather | sunset warm gradient, night dark blue with stars, rainy streaks, snowy flakes, foggy haze |
| style | watercolor (soft, paper), pixel art (2x2 blocks, posterised), mosaic (posterised, dark grout lines every 4 px), anime (ink outlines, flat vivid colour) |
| modifiers | image transforms, applied in a fixed order: depth of field (background blur), highly detailed (unsharp mask), vibrant colors (saturation), soft lighting (lifted shadows, lower contrast), dramatic shadows (contrast, vignette) |

Drawing is numpy on the CPU: shapes at twice the resolution averaged down (anti-aliased), then weather, style
and modifiers at the output size. Words the grammar does not know are ignored by the drawing and reported by
`unparsed(prompt)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from promptgym.rewards.render import CachedRenderer, derive_seed
from promptgym.rewards.scene import Scene, parse_scene

__all__ = ["SceneRenderer", "draw_scene", "gaussian_kernel"]

RGB = tuple[float, float, float]
PALETTE: dict[str | None, RGB] = {
    "red": (0.9, 0.1, 0.1), "blue": (0.15, 0.3, 0.95), "green": (0.1, 0.8, 0.2), "yellow": (1.0, 0.9, 0.1),
    "purple": (0.6, 0.2, 0.8), "pink": (1.0, 0.55, 0.75), "white": (0.97, 0.97, 0.97), "black": (0.08, 0.08, 0.08),
    None: (0.55, 0.55, 0.55),
}
GLYPH_HALF = 0.17  # half the glyph side, as a fraction of the image side
LAYOUTS = {1: ((0.5, 0.6),), 2: ((0.28, 0.62), (0.72, 0.62)), 3: ((0.22, 0.74), (0.78, 0.74), (0.5, 0.42))}
JITTER = (0.05, 0.04)  # (x, y), fraction of the image side
SUPERSAMPLE = 2


# ---------------------------------------------------------------------------------------------- shapes


def _glyph(subject: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of `subject`'s glyph on coordinates in its unit box ([-1, 1]^2, y pointing down)."""
    ax, ay, r = np.abs(x), np.abs(y), np.hypot(x, y)
    box = np.maximum(ax, ay)
    if subject == "dog":
        return box <= 0.8
    if subject == "cat":
        return (y <= 0.8) & (ax <= (y + 0.95) * 0.5)
    if subject == "rabbit":
        return ((ax <= 0.3) & (ay <= 0.95)) | ((ay <= 0.3) & (ax <= 0.95))
    if subject == "owl":
        return (r <= 0.95) & (r >= 0.5)
    if subject == "turtle":
        return (r <= 0.95) & (y <= 0.3)
    if subject == "robot":
        return (box <= 0.9) & (box >= 0.5)
    if subject == "frog":
        return ax + ay <= 0.95
    if subject == "butterfly":
        return (ay <= ax * 0.95) & (ax <= 0.95)
    raise ValueError(f"unknown subject {subject!r}")


def _accessory(accessory: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, RGB]:
    """Mask and colour of `accessory` on the glyph's unit box (the glyph's top edge is y = -1)."""
    if accessory == "hat":
        brim = (np.abs(x) <= 0.95) & (y >= -1.15) & (y <= -0.95)
        top = (np.abs(x) <= 0.55) & (y >= -1.75) & (y < -1.15)
        return brim | top, (0.18, 0.1, 0.06)
    if accessory == "crown":
        band = (np.abs(x) <= 0.75) & (y >= -1.35) & (y <= -0.95)
        points = np.zeros_like(band)
        for px in (-0.6, 0.0, 0.6):
            points |= (y >= -1.9) & (y < -1.35) & (np.abs(x - px) <= 0.22 * (y + 1.95) / 0.6)
        return band | points, (1.0, 0.78, 0.1)
    if accessory == "balloon":
        ball = np.hypot(x - 1.0, y + 1.55) <= 0.5
        t = np.clip((y + 1.05) / 0.85, 0.0, 1.0)  # string from the ball down to the glyph's right shoulder
        string = (y >= -1.05) & (y <= -0.2) & (np.abs(x - (1.0 - 0.35 * t)) <= 0.09)
        return ball | string, (1.0, 0.55, 0.1)
    if accessory == "umbrella":
        canopy = (np.hypot(x, y + 1.1) <= 0.95) & (y <= -1.1)
        handle = (np.abs(x) <= 0.09) & (y > -1.1) & (y <= -0.95)
        return canopy | handle, (0.15, 0.8, 0.85)
    raise ValueError(f"unknown accessory {accessory!r}")


def _background(name: str | None, u: np.ndarray, v: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """`[S, S, 3]` backdrop on coordinates u (right), v (down) in [0, 1]; `texture` is `(seed, k)` noise."""
    def fill(colour: RGB) -> np.ndarray:
        return np.broadcast_to(np.asarray(colour, np.float32), (*u.shape, 3)).copy()

    def paint(image: np.ndarray, mask: np.ndarray, colour: RGB) -> None:
        image[mask] = colour

    sky = (0.55, 0.75, 0.95)
    if name is None:
        image = fill((0.82, 0.82, 0.8))
    elif name == "park":
        image = fill(sky)
        paint(image, v >= 0.45, (0.3, 0.65, 0.25))
        paint(image, (np.hypot(u - 0.15, v - 0.3) <= 0.12) | (np.hypot(u - 0.85, v - 0.28) <= 0.1), (0.15, 0.45, 0.15))
    elif name == "beach":
        image = fill(sky)
        paint(image, v >= 0.4, (0.15, 0.4, 0.75))
        paint(image, v >= 0.52 + 0.02 * np.sin(u * 25), (0.93, 0.85, 0.6))
    elif name == "forest":
        image = fill((0.1, 0.35, 0.15))
        paint(image, ((u * 6) % 1.0 < 0.22) & (v < 0.7), (0.35, 0.22, 0.1))
        paint(image, v >= 0.7, (0.25, 0.4, 0.15))
    elif name == "desert":
        image = fill((0.88, 0.86, 0.72))
        paint(image, v >= 0.45 - 0.06 * np.sin(u * 7), (0.9, 0.68, 0.33))
        paint(image, np.hypot(u - 0.8, v - 0.18) <= 0.08, (1.0, 0.95, 0.6))
    elif name == "kitchen":
        image = fill((0.92, 0.88, 0.75))
        checker = ((np.floor(u * 8) + np.floor(v * 8)) % 2 == 0) & (v >= 0.5)
        paint(image, v >= 0.5, (0.95, 0.95, 0.95))
        paint(image, checker, (0.3, 0.3, 0.35))
        paint(image, (v >= 0.12) & (v <= 0.3) & (np.abs(u - 0.5) <= 0.12), (0.5, 0.7, 0.9))  # window
    elif name == "cave":
        image = fill((0.24, 0.21, 0.19))
        stalactite = (v <= 0.25 * (1 - np.abs(((u * 5) % 1.0) - 0.5) * 2)) & (v >= 0)
        paint(image, stalactite, (0.45, 0.4, 0.35))
        paint(image, v >= 0.8, (0.33, 0.29, 0.26))
    else:
        raise ValueError(f"unknown background {name!r}")
    return image * (1.0 + 0.06 * texture[..., None])


# ---------------------------------------------------------------------------------------------- filters


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian kernel of radius ceil(2.5 sigma) (at least 1)."""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return kernel / kernel.sum()


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of `[H, W, C]` (or `[H, W]`) with edge padding."""
    kernel = gaussian_kernel(sigma)
    radius = (len(kernel) - 1) // 2
    for axis in (0, 1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(image, pad, mode="edge")
        n = image.shape[axis]
        image = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
    return image


def _luminance(image: np.ndarray) -> np.ndarray:
    return image @ np.asarray((0.299, 0.587, 0.114), np.float32)


def _saturate(image: np.ndarray, factor: float) -> np.ndarray:
    grey = _luminance(image)[..., None]
    return grey + factor * (image - grey)


def _blocks(image: np.ndarray, size: int) -> np.ndarray:
    """Mean over `size x size` blocks, repeated back to full size (sides must be multiples of `size`)."""
    h, w, c = image.shape
    means = image.reshape(h // size, size, w // size, size, c).mean(axis=(1, 3))
    return means.repeat(size, axis=0).repeat(size, axis=1)


def _edges(image: np.ndarray) -> np.ndarray:
    """Luminance gradient magnitude `[H, W]` by forward differences."""
    lum = _luminance(image)
    gx = np.abs(np.diff(lum, axis=1, append=lum[:, -1:]))
    gy = np.abs(np.diff(lum, axis=0, append=lum[-1:, :]))
    return np.maximum(gx, gy)


def _weather(image: np.ndarray, weather: str | None, u: np.ndarray, v: np.ndarray, rng_maps: dict) -> np.ndarray:
    if weather is None:
        return image
    if weather == "sunset":
        tint = np.stack([np.ones_like(v), 0.62 + 0.25 * v, 0.42 + 0.3 * v], axis=-1)
        return image * tint + 0.12 * (1 - v)[..., None] * np.asarray((1.0, 0.45, 0.1), np.float32)
    if weather == "night":
        image = image * np.asarray((0.3, 0.34, 0.55), np.float32)
        stars = (rng_maps["uniform"] > 0.96) & (v < 0.35)
        image[stars] = (0.95, 0.95, 0.8)
        return image
    if weather == "rainy":
        streaks = ((u * 32 + v * 16 + rng_maps["phase"]) % 4.0) < 0.8
        image = image * 0.8 + 0.04
        image[streaks] = 0.45 * image[streaks] + 0.55 * np.asarray((0.72, 0.78, 0.92), np.float32)
        return image
    if weather == "snowy":
        image = image * 0.88 + 0.1
        image[rng_maps["uniform2"] > 0.9] = (1.0, 1.0, 1.0)
        return image
    if weather == "foggy":
        return 0.42 * image + 0.58 * np.asarray((0.8, 0.8, 0.82), np.float32)
    raise ValueError(f"unknown weather {weather!r}")


def _style(image: np.ndarray, style: str | None, rng_maps: dict) -> np.ndarray:
    if style is None:
        return image
    if style == "watercolor":
        soft = _blur(image, 0.9)
        return 0.65 * soft + 0.35 * np.asarray((0.97, 0.95, 0.9), np.float32) + 0.03 * rng_maps["normal"][..., None]
    if style == "pixel art":
        return np.round(_blocks(image, 2) * 3) / 3
    if style == "mosaic":  # posterised tiles between dark grout lines; the shapes stay readable through the grid
        tiles = np.round(image * 3) / 3
        grout = np.arange(image.shape[0]) % 4 == 0
        tiles[grout, :, :] = 0.2
        tiles[:, grout, :] = 0.2
        return tiles
    if style == "anime":
        flat = np.clip(_saturate(np.round(image * 4) / 4, 1.35), 0, 1)
        flat[_edges(image) > 0.12] = (0.05, 0.05, 0.08)
        return flat
    raise ValueError(f"unknown style {style!r}")


def _modifiers(image: np.ndarray, modifiers: Sequence[str], subject_mask: np.ndarray, u, v) -> np.ndarray:
    """Apply the quality modifiers in a fixed order (the order in the prompt does not matter)."""
    mods = set(modifiers)
    if "depth of field" in mods:
        keep = np.clip(_blur(subject_mask.astype(np.float32), 0.7) * 1.5, 0, 1)[..., None]
        image = keep * image + (1 - keep) * _blur(image, 1.3)
    if "highly detailed" in mods:
        image = image + 1.2 * (image - _blur(image, 1.0))
    if "vibrant colors" in mods:
        image = _saturate(image, 1.7)
    if "soft lighting" in mods:
        image = np.clip(image, 0, 1) ** 0.7
        image = 0.5 + 0.8 * (image - 0.5) + 0.04
    if "dramatic shadows" in mods:
        mean = float(_luminance(image).mean())
        image = mean + 1.5 * (image - mean)
        image = image * (1 - 0.45 * ((u - 0.5) ** 2 + (v - 0.5) ** 2))[..., None]
    return image


# ---------------------------------------------------------------------------------------------- the scene


def _random_maps(seed: int, k: int, size: int) -> dict[str, Any]:
    """Every random number image k uses, drawn in a fixed order from `(seed, k)`: common to all prompts."""
    rng = np.random.default_rng(derive_seed(seed, k))
    return {
        "jitter": rng.uniform(-1, 1, size=(3, 2)).astype(np.float32),
        "texture": rng.standard_normal((size * SUPERSAMPLE, size * SUPERSAMPLE)).astype(np.float32),
        "uniform": rng.random((size, size)),
        "uniform2": rng.random((size, size)),
        "phase": float(rng.uniform(0, 4)),
        "normal": rng.standard_normal((size, size)).astype(np.float32),
        "grain": rng.standard_normal((size, size, 3)).astype(np.float32),
    }


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(centres, centres)  # u (x, right), v (y, down)


def draw_scene(scene: Scene, k: int = 0, seed: int = 0, size: int = 32) -> np.ndarray:
    """Image k of `scene`: float32 `[size, size, 3]` in [0, 1] (`size` a multiple of 4)."""
    if size % 4 or size < 8:
        raise ValueError(f"size must be a multiple of 4 and at least 8, got {size}")
    maps = _random_maps(seed, k, size)
    big = size * SUPERSAMPLE
    u, v = _grid(big)
    image = _background(scene.background, u, v, maps["texture"])
    subject_mask = np.zeros(u.shape, bool)
    if scene.subject is not None:
        for (cx, cy), (jx, jy) in zip(LAYOUTS[scene.count], maps["jitter"]):
            cx, cy = cx + JITTER[0] * jx, cy + JITTER[1] * jy
            x, y = (u - cx) / GLYPH_HALF, (v - cy) / GLYPH_HALF
            glyph = _glyph(scene.subject, x, y)
            outline = _glyph(scene.subject, x * 0.86, y * 0.86) & ~glyph  # a rim ~1 output pixel wide
            image[outline] = (0.06, 0.06, 0.06)
            image[glyph] = PALETTE[scene.colour]
            subject_mask |= glyph | outline
            if scene.accessory is not None:
                mask, colour = _accessory(scene.accessory, x, y)
                image[mask] = colour
                subject_mask |= mask
    image = image.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    subject_mask = subject_mask.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)) > 0.25
    u, v = _grid(size)
    image = _weather(image, scene.weather, u, v, maps)
    image = _style(np.clip(image, 0, 1), scene.style, maps)
    image = _modifiers(np.clip(image, 0, 1), scene.modifiers, subject_mask, u, v)
    image = image + 0.012 * maps["grain"]
    return np.clip(image, 0.0, 1.0).astype(np.float32)


class SceneRenderer(CachedRenderer):
    """Renders prompts of the synth world exactly (`parse_scene` then `draw_scene`), K images per prompt.

    Args:
        size: image side in pixels (a multiple of 4; the world's models are trained at 32).
        images_per_prompt: K; image k of every prompt shares the randomness of `(seed, k)`.
        seed, cache_size, batch_size: as for `DiffusersRenderer`.
    """

    def __init__(
        self, size: int = 32, images_per_prompt: int = 2, seed: int = 0, cache_size: int = 4096, batch_size: int = 64
    ) -> None:
        super().__init__(size, size, images_per_prompt, seed, cache_size, batch_size)
        if size % 4 or size < 8:
            raise ValueError(f"size must be a multiple of 4 and at least 8, got {size}")

    def config(self) -> dict[str, Any]:
        return {"renderer": type(self).__name__, "size": self.height, "seed": self.seed}

    @staticmethod
    def unparsed(prompt: str) -> tuple[str, ...]:
        """The words of `prompt` the scene grammar could not place (they are not drawn)."""
        return parse_scene(prompt).unparsed

    def _render_pairs(self, pairs: Sequence[tuple[str, int]]) -> torch.Tensor:
        images = [draw_scene(parse_scene(prompt).scene, k, self.seed, self.height) for prompt, k in pairs]
        self.pipeline_calls += 1
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.height}, K={self.images_per_prompt}, seed={self.seed}, cache={self.cache_info()})"
