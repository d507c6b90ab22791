"""`promptgym edit` and `promptgym render`: the user-facing features, as functions.

`edit_prompt` samples N edited prompts for one (prompt, instruction) from a trained run's policy and can save
the renders of the source and each edit; `render_prompt` renders one prompt with a preset's renderer.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from promptgym.agents import PolicyWithValue
from promptgym.agents.rollout import sample_episodes
from promptgym.envs import EditTask, EditTemplate, PromptEditVectorEnv, default_tokenizer
from promptgym.experiments.plots import plot_image_grid
from promptgym.experiments.rundir import load_run_policy
from promptgym.rewards import ContentIntegrityScorer, DiffusersRenderer
from promptgym.rewards.presets import preset_renderer

MIN_SAVED_SIDE = 256  # tiny 32x32 renders are upscaled (nearest neighbour) so a person can see them


def edit_prompt(
    prompt: str,
    instruction: str,
    run_dir: str | os.PathLike | None = None,
    n: int = 4,
    seed: int = 0,
    render: str | os.PathLike | None = None,
) -> list[str]:
    """`n` edited prompts for `prompt` under `instruction`, sampled from the run's latest policy.

    Without `run_dir` an untrained tiny policy is used (its edits are noise: train first). With `render`, the
    source and every edit are rendered with the run's renderer (without a run: the synth world's) into one PNG.
    """
    if not prompt.strip() or not instruction.strip():
        raise ValueError(f"prompt={prompt!r} and instruction={instruction!r} must both be non-empty")
    if render is not None:
        from matplotlib.backend_bases import FigureCanvasBase

        check_image_path(render, "render", FigureCanvasBase.get_supported_filetypes())
    task = EditTask(prompt.strip(), instruction.strip(), id="cli")
    if run_dir is None:
        warnings.warn("no run given: editing with an untrained tiny policy; train one with `promptgym train`", stacklevel=2)
        tokenizer, config = default_tokenizer(), None
        policy = PolicyWithValue.tiny(tokenizer, seed=seed)
    else:
        policy, tokenizer, config, _ = load_run_policy(run_dir)
    env = PromptEditVectorEnv(
        n,
        tasks=[task],
        tokenizer=tokenizer,
        reward=ContentIntegrityScorer(),
        max_new_tokens=config.env.max_new_tokens if config else 48,
        max_context_tokens=max(config.env.max_context_tokens if config else 64, _context_length(tokenizer, task)),
        autoreset_mode="disabled",
    )
    typical_mass = config.ppo.typical_mass if config else None
    edits = sample_episodes(policy, env, seed, [task] * n, typical_mass).prompts
    if render is not None:
        renderer = _run_renderer(config, tokenizer)
        _save_edit_grid(renderer, task, edits, Path(render))
    return edits


def _context_length(tokenizer, task: EditTask) -> int:
    return len(tokenizer(EditTemplate().context(task))["input_ids"])


def _run_renderer(config, tokenizer) -> DiffusersRenderer:
    if config is None:
        return preset_renderer("synth")
    return preset_renderer(config.reward.preset, tokenizer=tokenizer, seed=config.reward.seed,
                           settings=config.reward.renderer, device=config.reward.device)


def _save_edit_grid(renderer: DiffusersRenderer, task: EditTask, edits: list[str], path: Path) -> Path:
    images = renderer.render([task.source, *edits])[:, 0]
    rows = [(task.source, edit, f"edit {i + 1}: {task.instruction}") for i, edit in enumerate(edits)]
    before = images[:1].expand(len(edits), -1, -1, -1)
    return plot_image_grid(rows, before, images[1:], path)


def check_image_path(path: str | os.PathLike, argument: str, formats) -> None:
    """Refuse, before any work, an image path that cannot be written: a directory, a path under a file, or a
    file name whose extension is not one of `formats` (e.g. {"png", "jpg"})."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{argument}={str(path)!r} is a directory; expected an image file, e.g. {path / 'out.png'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{argument}={str(path)!r} is under {parent}, which is a file")
            break
    if path.suffix.lower().lstrip(".") not in formats:
        raise ValueError(
            f"{argument}={str(path)!r} has extension {path.suffix!r}; expected an image file name such as "
            f"{path.with_suffix('.png').name} (.jpg, .webp, ... work too)"
        )


def render_prompt(prompt: str, out: str | os.PathLike, preset: str = "synth") -> Path:
    """Render `prompt` with the preset's renderer and save its K images side by side as a PNG."""
    if not prompt.strip():
        raise ValueError("prompt is empty; expected the text to render")
    check_image_path(out, "out", {ext.lstrip(".") for ext in Image.registered_extensions()})
    device = "cuda" if preset == "diffchat-sd15" and torch.cuda.is_available() else None
    renderer = preset_renderer(preset, tokenizer=default_tokenizer() if preset == "tiny" else None, device=device)
    images = renderer.render([prompt])[0]  # [K, 3, H, W] in [0, 1]
    strip = torch.cat(list(images), dim=-1)  # [3, H, K*W]
    array = (strip.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array)
    scale = max(1, MIN_SAVED_SIDE // image.height)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
