"""`promptgym world build`: train the synth world's models from the procedural renderer, deterministically.

Stages, in order (each writes a directory that loads with the ordinary `from_pretrained`):

| stage | what | loads with |
|---|---|---|
| `data` | renders the training sets with `SceneRenderer` (held-out subject-colour pairs excluded), cached as .npz | - |
| `judge` | `SceneJudge`, a CNN that reads every content attribute off a render (the gold-content judge) | `SceneJudge.from_pretrained` |
| `sd` | a tiny Stable Diffusion: BPE tokenizer, `CLIPTextModel`, `AutoencoderKL` (32 px -> 16x16x4), `UNet2DConditionModel`, DDIM; v-prediction, cosine schedule, 10% caption dropout, EMA | `DiffusersRenderer.from_pretrained` |
| `clip` | a tiny `CLIPModel` trained contrastively on (render, caption) with one-attribute hard negatives | `PickScoreScorer.from_pretrained` |
| `aesthetic` | a LAION-format MLP on the CLIP's image embeddings, fitted to `gold_aesthetic` of a limited labelled set | `AestheticScorer.from_pretrained` |

Every stage is seeded from `--seed` and its own name, runs on `--threads` CPU threads, checkpoints every few
hundred steps under `OUT/_work/`, and resumes from there when rerun (`--fresh` starts over). `--scale` multiplies
every stage's step and data budget (the test suite rebuilds with `--scale 0.002`).

    python -m promptgym.experiments.world_build --out DIR [--stages judge,sd] [--scale 1.0] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from promptgym.rewards.render import quiet_torchvision_fallback
from promptgym.rewards.scene import Scene, describe, sample_scene
from promptgym.rewards.scene_render import draw_scene

STAGES = ("data", "judge", "sd", "clip", "aesthetic")
IMAGE_SIZE = 32


@dataclasses.dataclass
class BuildConfig:
    """Budgets of one build; `scale` multiplies every `*_steps` and `*_images` field."""

    seed: int = 0
    threads: int = 2
    scale: float = 1.0
    data_images: int = 120_000
    judge_steps: int = 3000
    judge_batch: int = 128
    vae_steps: int = 1500
    vae_batch: int = 64
    unet_steps: int = 2500
    unet_batch: int = 64
    clip_steps: int = 2500
    clip_batch: int = 128
    aesthetic_images: int = 3000
    aesthetic_steps: int = 3000
    checkpoint_every: int = 500

    def scaled(self, name: str) -> int:
        return max(2, int(round(getattr(self, name) * self.scale)))


# ------------------------------------------------------------------------------------------- plumbing


def stage_seed(seed: int, stage: str) -> int:
    """A seed for `stage` derived from the build seed (stable across Python versions)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stage}".encode()).digest()[:4], "little")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and random inside the block and restore their states after it."""
    state = (random.getstate(), np.random.get_state())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


class Checkpointer:
    """Save/restore a training loop's state (`{name: object with state_dict}` + step) under `path` atomically."""

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, every

    def restore(self, parts: dict[str, Any]) -> int:
        if not self.path.exists():
            return 0
        state = torch.load(self.path, weights_only=False)
        for name, part in parts.items():
            part.load_state_dict(state[name])
        torch.set_rng_state(state["torch_rng"])
        return int(state["step"])

    def maybe_save(self, parts: dict[str, Any], step: int, total: int) -> None:
        if step % self.every and step != total:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({**{n: p.state_dict() for n, p in parts.items()}, "step": step, "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(self.path)


class RNGState:
    """Adapts a `numpy.random.Generator` or `random.Random` to the `state_dict` protocol, so a resumed loop draws
    exactly the numbers the uninterrupted one would have."""

    def __init__(self, rng: np.random.Generator | random.Random) -> None:
        self.rng = rng

    def state_dict(self) -> dict:
        rng = self.rng
        return {"state": rng.bit_generator.state if isinstance(rng, np.random.Generator) else rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        if isinstance(self.rng, np.random.Generator):
            self.rng.bit_generator.state = state["state"]
        else:
            self.rng.setstate(state["state"])


def progress(total: int, start: int, desc: str) -> tqdm:
    return tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, mininterval=2.0, file=sys.stderr)


def run_steps(desc: str, steps: int, parts: dict[str, Any], ckpt: Checkpointer, loss_at, *,
              clip_params: Sequence[nn.Parameter] | None = None, after_step=None) -> None:
    """The loop every stage shares: resume from `ckpt`, then per step `loss_at()` -> backward -> (clip the gradient
    norm at 1) -> `parts["optimizer"]` and `parts["schedule"]` step -> `after_step()` -> progress -> checkpoint."""
    optimizer, schedule = parts["optimizer"], parts["schedule"]
    start = ckpt.restore(parts)
    bar = progress(steps, start, desc)
    for step in range(start + 1, steps + 1):
        loss = loss_at()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_params is not None:
            nn.utils.clip_grad_norm_(clip_params, 1.0)
        optimizer.step()
        schedule.step()
        if after_step is not None:
            after_step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        ckpt.maybe_save(parts, step, steps)
    bar.close()


# ------------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class WorldData:
    """Rendered training data: images uint8 `[N, 3, 32, 32]`, their scenes and captions."""

    images: np.ndarray
    scenes: list[Scene]
    captions: list[str]

    def batch(self, index: np.ndarray) -> torch.Tensor:
        """Images `[B, 3, 32, 32]` float32 in [0, 1]."""
        return torch.from_numpy(self.images[index]).float() / 255.0


def caption(scene: Scene, rng: random.Random) -> str:
    """The scene's prompt with its modifiers in a random order (word order of modifiers does not matter)."""
    mods = list(scene.modifiers)
    rng.shuffle(mods)
    return describe(dataclasses.replace(scene, modifiers=tuple(mods)))


def render_world_data(n: int, seed: int, *, subject: bool = True, held_out: str = "exclude", desc: str = "render") -> WorldData:
    """`n` random scenes of `sample_scene`, each drawn with a random image index k (its layout and texture)."""
    rng = random.Random(seed)
    scenes, captions, images = [], [], np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i in tqdm(range(n), desc=desc, mininterval=2.0, file=sys.stderr, dynamic_ncols=True):
        scene = sample_scene(rng, subject=subject, held_out=held_out)
        image = draw_scene(scene, k=rng.randrange(1 << 20), seed=seed, size=IMAGE_SIZE)
        images[i] = np.round(image.transpose(2, 0, 1) * 255).astype(np.uint8)
        scenes.append(scene)
        captions.append(caption(scene, rng) if scene.subject else "")
    return WorldData(images, scenes, captions)


def load_or_render(work: Path, name: str, n: int, seed: int, **kwargs: Any) -> WorldData:
    """`render_world_data`, cached as `work/name.npz` (+ scenes as JSON) so later stages and resumes reuse it."""
    path = work / f"{name}-{n}-{seed}.npz"
    if path.exists():
        blob = np.load(path, allow_pickle=False)
        meta = json.loads(str(blob["meta"]))
        scenes = [Scene(**{**s, "modifiers": tuple(s["modifiers"])}) for s in meta["scenes"]]
        return WorldData(blob["images"], scenes, meta["captions"])
    data = render_world_data(n, seed, desc=f"render {name}", **kwargs)
    work.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"scenes": [dataclasses.asdict(s) for s in data.scenes], "captions": data.captions})
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=data.images, meta=np.array(meta))
    tmp.replace(path)
    return data


# ------------------------------------------------------------------------------------------- stable diffusion


def build_world_tokenizer(captions: Sequence[str], vocab_size: int = 512, model_max_length: int = 48) -> Any:
    """A byte-level BPE trained on world captions, encoding CLIP-style (`<s> text </s>`, right padding)."""
    from promptgym.envs.tokenizer import train_tokenizer
    from promptgym.rewards.render import clip_style_tokenizer

    corpus = sorted(set(captions))
    return clip_style_tokenizer(train_tokenizer(corpus, vocab_size=vocab_size), model_max_length=model_max_length)


def build_sd_components(tokenizer: Any) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Randomly initialised (text encoder, VAE, UNet) of the world's Stable Diffusion (seed the caller's RNG)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with quiet_torchvision_fallback():
        from diffusers import AutoencoderKL, UNet2DConditionModel

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, projection_dim=64, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4, layers_per_block=1,
        norm_num_groups=16, sample_size=IMAGE_SIZE, mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16,
    )
    return text_encoder, vae, unet


def world_schedulers() -> tuple[Any, Any]:
    """(training DDPM scheduler, sampling DDIM scheduler): v-prediction on a cosine schedule."""
    with quiet_torchvision_fallback():
        from diffusers import DDIMScheduler, DDPMScheduler

    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    sample = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                           clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing", steps_offset=1)
    return train, sample


def train_vae(vae: nn.Module, data: WorldData, cfg: BuildConfig, work: Path) -> nn.Module:
    """Fit the VAE to reconstruct renders (MSE + 1e-6 KL), then set its latent scaling factor to 1 / latent std."""
    steps, batch = cfg.scaled("vae_steps"), cfg.vae_batch
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = np.random.default_rng([stage_seed(cfg.seed, "vae"), 0])
    parts = {"vae": vae, "optimizer": optimizer, "schedule": schedule, "rng": RNGState(rng)}
    vae.train()

    def loss_at() -> torch.Tensor:
        x = data.batch(rng.integers(0, len(data.images), batch)) * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        return nn.functional.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()

    run_steps("vae", steps, parts, Checkpointer(work / "vae.pt", cfg.checkpoint_every), loss_at)
    vae.eval()
    with torch.no_grad():
        sample = data.batch(np.arange(min(2048, len(data.images)))) * 2 - 1
        latents = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in sample.split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def encode_latents(vae: nn.Module, data: WorldData, batch: int = 512) -> torch.Tensor:
    """Posterior means of every training image, scaled: `[N, 4, 16, 16]` (the UNet's data)."""
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(data.images), batch), desc="encode latents", mininterval=2.0, file=sys.stderr):
            x = data.batch(np.arange(start, min(start + batch, len(data.images)))) * 2 - 1
            out.append(vae.encode(x).latent_dist.mode() * vae.config.scaling_factor)
    return torch.cat(out)


def train_unet(unet: nn.Module, text_encoder: nn.Module, tokenizer: Any, encode, captions: Sequence[str],
               cfg: BuildConfig, work: Path) -> tuple[nn.Module, nn.Module]:
    """Train the UNet and the text encoder jointly (v-prediction, min-SNR-5 weights, 10% empty captions); EMA 0.998.

    `encode()` gives the training latents `[N, 4, 16, 16]` (called only if steps remain). Returns EMA copies."""
    with quiet_torchvision_fallback():
        from diffusers.training_utils import EMAModel, compute_snr

    scheduler, _ = world_schedulers()
    steps, batch = cfg.scaled("unet_steps"), cfg.unet_batch
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=6e-4, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 500) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    ema_unet = EMAModel(unet.parameters(), decay=0.998)
    ema_text = EMAModel(text_encoder.parameters(), decay=0.998)
    rng = np.random.default_rng([stage_seed(cfg.seed, "unet"), 0])
    parts = {"unet": unet, "text": text_encoder, "optimizer": optimizer, "schedule": schedule, "ema_unet": ema_unet,
             "ema_text": ema_text, "rng": RNGState(rng)}
    unet.train()
    text_encoder.train()

    latents: torch.Tensor | None = None

    def loss_at() -> torch.Tensor:
        nonlocal latents
        latents = encode() if latents is None else latents
        index = rng.integers(0, len(latents), batch)
        texts = ["" if rng.random() < 0.1 else captions[i] for i in index]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        x0 = latents[index]
        noise = torch.randn_like(x0)
        t = torch.from_numpy(rng.integers(0, scheduler.config.num_train_timesteps, batch)).long()
        xt = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        snr = compute_snr(scheduler, t)
        weights = torch.clamp(snr, max=5.0) / (snr + 1)
        return (weights * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()

    def update_ema() -> None:
        ema_unet.step(unet.parameters())
        ema_text.step(text_encoder.parameters())

    run_steps("sd unet", steps, parts, Checkpointer(work / "unet.pt", cfg.checkpoint_every), loss_at,
              clip_params=params, after_step=update_ema)
    unet, text_encoder = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_unet.copy_to(unet.parameters())
    ema_text.copy_to(text_encoder.parameters())
    return unet, text_encoder


def build_sd(data: WorldData, cfg: BuildConfig, out: Path, work: Path) -> Path:
    """The `sd` stage: tokenizer, VAE, UNet + text encoder -> `out/sd` (a `StableDiffusionPipeline` directory)."""
    with quiet_torchvision_fallback():
        from diffusers import StableDiffusionPipeline

    tokenizer = build_world_tokenizer(data.captions)
    with seeded(stage_seed(cfg.seed, "sd-init")):
        text_encoder, vae, unet = build_sd_components(tokenizer)
    vae_path = work / "vae-final"
    if vae_path.exists():
        vae = type(vae).from_pretrained(vae_path)
    else:
        with seeded(stage_seed(cfg.seed, "vae")):
            vae = train_vae(vae, data, cfg, work)
        vae.save_pretrained(vae_path)
    vae.eval()
    with seeded(stage_seed(cfg.seed, "unet")):
        unet, text_encoder = train_unet(unet, text_encoder, tokenizer, lambda: encode_latents(vae, data), data.captions, cfg, work)
    _, sampler = world_schedulers()
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sampler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(out / "sd", safe_serialization=True, variant=None)
    return out / "sd"


# ------------------------------------------------------------------------------------------- judge


def augment(images: torch.Tensor, rng: np.random.Generator, speckle: bool = False) -> torch.Tensor:
    """Make a model robust to a generator's imperfections: blur half the batch (sigma 0.3-1.0 px), add pixel
    noise (sigma up to 0.04) and a brightness change of up to 8%. `speckle` (the judge's) also adds, on a random
    half of the images, a sparse zero-mean colour speckle like a few-step sampler's leftover noise (3-15% of the
    pixels, sigma 0.05-0.2), so that residual noise is not read as snowflakes (which are pure white)."""
    from promptgym.rewards.scene_render import gaussian_kernel

    n = images.shape[0]
    sigma = float(rng.uniform(0.3, 1.0))
    kernel = torch.from_numpy(gaussian_kernel(sigma)).float()
    r = (len(kernel) - 1) // 2
    half = images[: n // 2]
    padded = nn.functional.pad(half, (r, r, r, r), mode="replicate")
    blurred = nn.functional.conv2d(padded.flatten(0, 1)[:, None], kernel[None, None, None, :])
    blurred = nn.functional.conv2d(blurred, kernel[None, None, :, None]).reshape(half.shape)
    images = torch.cat([blurred, images[n // 2 :]])
    noise = torch.from_numpy(rng.standard_normal(images.shape).astype(np.float32)) * float(rng.uniform(0, 0.04))
    gain = torch.from_numpy(rng.uniform(0.92, 1.08, (n, 1, 1, 1)).astype(np.float32))
    images = images * gain + noise
    if speckle:
        images = images + speckle_noise(images.shape, rng)
    return images.clamp(0, 1)


def speckle_noise(shape: torch.Size, rng: np.random.Generator) -> torch.Tensor:
    """Sparse colour noise for a random half of the images of `shape` [B, 3, H, W] (zero elsewhere)."""
    n, _, h, w = shape
    density = rng.uniform(0.03, 0.15, (n, 1, 1, 1))
    sigma = rng.uniform(0.05, 0.2, (n, 1, 1, 1)) * (rng.random((n, 1, 1, 1)) < 0.5)
    mask = rng.random((n, 1, h, w)) < density
    return torch.from_numpy((rng.standard_normal(shape) * sigma * mask).astype(np.float32))


def judge_accuracy(judge: nn.Module, images: torch.Tensor, scenes: Sequence[Scene]) -> dict[str, float]:
    """Per-attribute accuracy of `judge` on `images[M, 3, H, W]` with known `scenes`, over the scenes that draw the
    attribute (`Scene.drawn_attributes`), plus `all` (every drawn attribute of an image right)."""
    from promptgym.rewards.gold import NOT_DRAWN, drawn_labels

    read = judge.read(images)
    targets = drawn_labels(scenes)
    drawn = {name: t != NOT_DRAWN for name, t in targets.items()}
    right = {name: (read[name] == t) | ~drawn[name] for name, t in targets.items()}
    acc = {name: float(right[name][drawn[name]].float().mean()) for name in targets}
    acc["all"] = float(torch.stack(list(right.values())).all(0).float().mean())
    return acc


def build_judge(cfg: BuildConfig, out: Path, work: Path) -> dict[str, float]:
    """The `judge` stage: train `SceneJudge` on renders of every scene (held-out pairs and no-subject scenes
    included), with `augment`; report its accuracy on fresh renders. Writes `out/judge`."""
    from promptgym.rewards.gold import SceneJudge, drawn_labels
    from promptgym.rewards.scene import ATTRIBUTES

    data = load_or_render(work, "judge", cfg.scaled("data_images") // 2, stage_seed(cfg.seed, "judge-data"),
                          subject=False, held_out="any")
    labels = drawn_labels(data.scenes)
    with seeded(stage_seed(cfg.seed, "judge")):
        judge = SceneJudge()
        steps, batch = cfg.scaled("judge_steps"), cfg.judge_batch
        optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
        rng = np.random.default_rng([stage_seed(cfg.seed, "judge"), 0])
        parts = {"judge": judge, "optimizer": optimizer, "schedule": schedule, "rng": RNGState(rng)}
        judge.train()

        def loss_at() -> torch.Tensor:
            index = rng.integers(0, len(data.images), batch)
            logits = judge(augment(data.batch(index), rng, speckle=True))
            return sum(nn.functional.cross_entropy(logits[name], labels[name][index]) for name in ATTRIBUTES)

        run_steps("judge", steps, parts, Checkpointer(work / "judge.pt", cfg.checkpoint_every), loss_at)
    judge.eval()
    test = render_world_data(max(200, cfg.scaled("data_images") // 60), stage_seed(cfg.seed, "judge-test"),
                             subject=False, held_out="any", desc="render judge test")
    accuracy = judge_accuracy(judge, test.batch(np.arange(len(test.images))), test.scenes)
    judge.save_pretrained(out / "judge")
    (out / "judge" / "eval.json").write_text(json.dumps({"held_out_procedural_accuracy": accuracy}, indent=2) + "\n")
    print("judge accuracy on fresh procedural renders:", json.dumps(accuracy), file=sys.stderr)
    return accuracy


# ------------------------------------------------------------------------------------------- clip and aesthetic

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor's defaults
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def perturb_scene(scene: Scene, rng: random.Random) -> Scene:
    """`scene` with exactly one content attribute changed to another value (the subject stays a subject)."""
    from promptgym.rewards.scene import ATTRIBUTES, attribute_values

    name = rng.choice(ATTRIBUTES)
    options = [v for v in attribute_values()[name] if v != getattr(scene, name) and not (name == "subject" and v is None)]
    return dataclasses.replace(scene, **{name: rng.choice(options)})


def build_clip_model(tokenizer: Any) -> nn.Module:
    """A randomly initialised tiny `CLIPModel` for 32 px images (ViT, patch 4) and `tokenizer`'s vocabulary."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = dict(image_size=IMAGE_SIZE, patch_size=4, hidden_size=96, intermediate_size=192, num_hidden_layers=4,
                  num_attention_heads=4)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """CLIP-normalised pixel values of `images[M, 3, 32, 32]` in [0, 1] (what the saved image processor produces)."""
    return (images - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def build_clip(data: WorldData, cfg: BuildConfig, out: Path, work: Path) -> Path:
    """The `clip` stage: contrastive training on (render, caption) with one hard negative caption per image (the
    same scene with one attribute changed), renders augmented like the judge's. Writes `out/clip` (model +
    `CLIPProcessor`)."""
    from transformers import CLIPProcessor

    from promptgym.rewards.image_scorers import _tiny_clip_image_processor, image_embeddings, text_embeddings

    tokenizer = build_world_tokenizer(data.captions)
    with seeded(stage_seed(cfg.seed, "clip")):
        model = build_clip_model(tokenizer)
        steps, batch = cfg.scaled("clip_steps"), cfg.clip_batch
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
        rng = np.random.default_rng([stage_seed(cfg.seed, "clip"), 0])
        text_rng = random.Random(stage_seed(cfg.seed, "clip"))
        parts = {"clip": model, "optimizer": optimizer, "schedule": schedule, "rng": RNGState(rng), "text_rng": RNGState(text_rng)}
        model.train()

        def loss_at() -> torch.Tensor:
            index = rng.integers(0, len(data.images), batch)
            negatives = [caption(perturb_scene(data.scenes[i], text_rng), text_rng) for i in index]
            texts = [data.captions[i] for i in index] + negatives
            pixels = clip_pixels(augment(data.batch(index), rng))
            image = nn.functional.normalize(image_embeddings(model, pixels), dim=-1)
            text = nn.functional.normalize(text_embeddings(model, tokenizer, texts), dim=-1)
            logits = model.logit_scale.exp() * image @ text.T  # [B, 2B]: each image against every caption and negative
            labels = torch.arange(batch)
            return (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits[:, :batch].T, labels)) / 2

        def clamp_temperature() -> None:
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))

        run_steps("clip", steps, parts, Checkpointer(work / "clip.pt", cfg.checkpoint_every), loss_at,
                  after_step=clamp_temperature)
    model.eval()
    processor = CLIPProcessor(image_processor=_tiny_clip_image_processor(IMAGE_SIZE), tokenizer=tokenizer)
    model.save_pretrained(out / "clip")
    processor.save_pretrained(out / "clip")
    return out / "clip"


def build_aesthetic(cfg: BuildConfig, out: Path, work: Path) -> dict[str, float]:
    """The `aesthetic` stage: a LAION-format `AestheticMLP` on the trained CLIP's L2-normalised image embeddings,
    fitted (MSE) to `gold_aesthetic` of a limited labelled set of renders; Spearman on fresh renders reported.
    Writes `out/aesthetic/aesthetic-model.safetensors`."""
    from safetensors.torch import save_file
    from scipy.stats import spearmanr
    from transformers import CLIPModel

    from promptgym.rewards.gold import gold_aesthetic
    from promptgym.rewards.image_scorers import AestheticMLP, image_embeddings

    clip = CLIPModel.from_pretrained(out / "clip").eval()
    n = cfg.scaled("aesthetic_images")
    train = render_world_data(n, stage_seed(cfg.seed, "aesthetic-data"), desc="render aesthetic labels")
    test = render_world_data(max(200, n // 3), stage_seed(cfg.seed, "aesthetic-test"), desc="render aesthetic test")

    def features(data: WorldData) -> tuple[torch.Tensor, torch.Tensor]:
        images = data.batch(np.arange(len(data.images)))
        with torch.no_grad():
            embeds = torch.cat([image_embeddings(clip, clip_pixels(c)) for c in images.split(512)])
        return nn.functional.normalize(embeds, dim=-1), gold_aesthetic(images[:, None])

    (x, y), (x_test, y_test) = features(train), features(test)
    with seeded(stage_seed(cfg.seed, "aesthetic")):
        mlp = AestheticMLP(input_size=x.shape[1])
        optimizer = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=1e-3)
        steps = cfg.scaled("aesthetic_steps")
        rng = np.random.default_rng(stage_seed(cfg.seed, "aesthetic"))
        mlp.train()
        for _ in tqdm(range(steps), desc="aesthetic mlp", mininterval=2.0, file=sys.stderr):
            index = torch.from_numpy(rng.integers(0, len(x), 256))
            loss = nn.functional.mse_loss(mlp(x[index]).squeeze(-1), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    mlp.eval()
    with torch.no_grad():
        predicted = mlp(x_test).squeeze(-1)
    report = {"spearman_held_out": float(spearmanr(predicted.numpy(), y_test.numpy()).statistic),
              "labelled_images": n, "test_images": len(y_test)}
    (out / "aesthetic").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, out / "aesthetic" / "aesthetic-model.safetensors")
    (out / "aesthetic" / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    print("aesthetic proxy:", json.dumps(report), file=sys.stderr)
    return report


# ------------------------------------------------------------------------------------------- driver


def build_world(out: Path, stages: Sequence[str] = STAGES, cfg: BuildConfig | None = None, fresh: bool = False,
                command: str = "") -> dict:
    """Run `stages` into `out`; returns the build record also written to `out/build.json`."""
    cfg = cfg or BuildConfig()
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; expected some of {list(STAGES)}")
    out = Path(out)
    work = out / "_work"
    if fresh and work.exists():
        import shutil

        shutil.rmtree(work)
    torch.set_num_threads(cfg.threads)
    record_path = out / "build.json"
    data = None
    for stage in STAGES:
        if stage not in stages:
            continue
        started = time.perf_counter()
        if stage in ("data", "sd", "clip") and data is None:
            data = load_or_render(work, "train", cfg.scaled("data_images"), stage_seed(cfg.seed, "data"))
        if stage == "sd":
            build_sd(data, cfg, out, work)
        elif stage == "judge":
            build_judge(cfg, out, work)
        elif stage == "clip":
            build_clip(data, cfg, out, work)
        elif stage == "aesthetic":
            build_aesthetic(cfg, out, work)
        out.mkdir(parents=True, exist_ok=True)
        record = json.loads(record_path.read_text()) if record_path.exists() else {"stages": {}}  # re-read: stages may run in parallel
        record["stages"][stage] = {
            "command": command,
            "seconds": round(time.perf_counter() - started, 1),
            "config": dataclasses.asdict(cfg),
        }
        record["files"] = file_hashes(out)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    return json.loads(record_path.read_text()) if record_path.exists() else {}


def file_hashes(out: Path) -> dict[str, str]:
    """sha256 of every built file under `out` (relative POSIX paths); checkpoints, build.json and logs (`*.log`, e.g.
    a `nohup ... > OUT/sd.log` of the build itself) excluded."""
    return {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file() and "_work" not in path.relative_to(out).parts and path.name != "build.json"
        and path.suffix != ".log"
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promptgym world build", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (the shipped models live in promptgym/rewards/data/synth)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step and data budget (e.g. 0.002 for a smoke build)")
    parser.add_argument("--fresh", action="store_true", help="discard checkpoints and cached data under OUT/_work")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="BUDGET=N",
                        help="override one budget of BuildConfig, e.g. --set unet_steps=6000 (repeatable)")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale must be > 0, got {args.scale}")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    budgets = {f.name for f in dataclasses.fields(BuildConfig)} - {"seed", "threads", "scale"}
    overrides = {}
    for item in args.overrides:
        name, _, value = item.partition("=")
        if name not in budgets or not value.isdigit() or int(value) < 1:
            parser.error(f"--set {item!r}: expected BUDGET=N with N a positive int and BUDGET one of {sorted(budgets)}")
        overrides[name] = int(value)
    try:
        command = "promptgym world build " + " ".join(sys.argv[1:] if argv is None else argv)
        config = BuildConfig(seed=args.seed, threads=args.threads, scale=args.scale, **overrides)
        build_world(args.out, stages, config, fresh=args.fresh, command=command)
    except ValueError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
