"""Where the synth world's trained models live, and how the synth preset renders with them.

The models are built by `promptgym world build` (see `promptgym.experiments.world_build`) and shipped inside
the package under `promptgym/rewards/data/synth/`: `sd/` (a `StableDiffusionPipeline` directory), `clip/` (a
`CLIPModel` + `CLIPProcessor`), `aesthetic/aesthetic-model.safetensors` (a LAION-format MLP on that CLIP's image
embeddings), `judge/` (the gold-content `SceneJudge`) and `build.json` (the build command, its seed, budgets,
timings and the sha256 of every file).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["SYNTH_ENV", "SYNTH_RENDER_SETTINGS", "synth_path"]

SYNTH_ENV = "PROMPTGYM_SYNTH_DIR"  # overrides the shipped directory (e.g. a fresh build)
SYNTH_RENDER_SETTINGS = {"num_inference_steps": 10, "guidance_scale": 3.0, "height": 32, "width": 32,
                         "images_per_prompt": 2, "batch_size": 32}


def synth_path(*parts: str) -> Path:
    """A path inside the synth world's model directory: `$PROMPTGYM_SYNTH_DIR` if set, else the shipped one.

    Raises FileNotFoundError naming the path and the build command when it does not exist."""
    override = os.environ.get(SYNTH_ENV)
    root = Path(override) if override else Path(str(resources.files("promptgym.rewards") / "data" / "synth"))
    path = root.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"synth world model {str(path)!r} not found. Build the world with `promptgym world build --out {root}` "
            f"(or point ${SYNTH_ENV} at a built directory)."
        )
    return path
