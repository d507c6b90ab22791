"""`DiffusersRenderer`: prompts -> images `[N, K, 3, H, W]` in [0, 1] through any diffusers text-to-image pipeline.

Rendering is the most expensive step of the reward loop, so the renderer

- batches (pairs of (prompt, k) go through the pipeline in chunks of `batch_size` images),
- uses **common random numbers**: image `k` of *every* prompt starts from the same initial latents, drawn from a
  CPU `torch.Generator` seeded from `(seed, k)` only, so a source prompt and its edit are rendered from the same
  noise and their score difference is not drowned in sampling noise (stochastic samplers get a per-image generator
  seeded the same way, so their step noise is shared too);
- caches images in a bounded LRU keyed by `(prompt, k, renderer config fingerprint)`: a repeated prompt costs no
  render, and only uncached `(prompt, k)` pairs reach the pipeline;
- remembers the most recent batch, so several image scorers that share one renderer trigger one render per batch
  whatever `cache_size` is (see `DiffusersRenderer.render`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from promptgym.rewards.cache import LRU

__all__ = [
    "CachedRenderer",
    "DiffusersRenderer",
    "RenderCacheInfo",
    "build_tiny_sd_pipeline",
    "clip_style_tokenizer",
    "derive_seed",
    "explain_missing_checkpoint",
    "quiet_torchvision_fallback",
]


class RenderCacheInfo(NamedTuple):
    """Render cache statistics, counted in images ((prompt, k) pairs), like `functools.lru_cache`'s."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


def derive_seed(seed: int, *stream: int) -> int:
    """A well-mixed 64-bit seed from `(seed, *stream)`; distinct tuples give independent generators."""
    entropy = [int(seed) % 2**64, *(int(s) % 2**64 for s in stream)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


def _looks_like_path(name: str) -> bool:
    """True for names that can only be a local path (a hub id is `name` or `owner/name`)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _in_hub_cache(repo_id: str) -> bool:
    """True when the Hugging Face cache holds (part of) the model repo `repo_id`."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return (Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")).exists()


@contextlib.contextmanager
def explain_missing_checkpoint(checkpoint: str | Path, what: str, filename: str | None = None) -> Iterator[None]:
    """Re-raise a failed load as an `OSError` naming `checkpoint` and how to fetch it (`huggingface-cli download`).

    Only failures for checkpoints that are neither an existing local path nor in the hub cache are rewritten; any
    other failure (a broken local or cached checkpoint) keeps its original error. `filename` names a single file
    of the hub repo `checkpoint`.
    """
    try:
        yield
    except (OSError, ValueError) as err:
        name = str(checkpoint)
        if Path(name).expanduser().exists() or (not _looks_like_path(name) and _in_hub_cache(name)):
            raise
        cause = f"{type(err).__name__}: {err}"
        if _looks_like_path(name):
            raise OSError(f"could not load the {what} checkpoint {name!r}: no such local path. ({cause})") from err
        target = f"{name} {filename}" if filename else name
        raise OSError(
            f"could not load the {what} checkpoint {name!r}{f' (file {filename!r})' if filename else ''}: it is not "
            f"a local path and is not in the Hugging Face cache, or the hub is unreachable (HF_HUB_OFFLINE=1 uses "
            f"only cached files). Fetch it on a machine with network access with `huggingface-cli download "
            f"{target}` (`hf download {target}` with huggingface_hub >= 1.0), or pass a local path. ({cause})"
        ) from err


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def clip_style_tokenizer(tokenizer: Any, model_max_length: int = 77) -> Any:
    """A copy of a fast `tokenizer` that encodes like CLIP's: `<bos> text <eos>`, padded on the right, 77 tokens.

    CLIP text towers are causal and pool at the eos; Stable Diffusion feeds *every* position of the padded sequence
    to the UNet, so right padding matters: pads after the text attend to it and carry the prompt, whereas a
    left-padded prompt (the policy tokenizer's convention) would start with dozens of prompt-independent positions.
    The caller's tokenizer is not modified.
    """
    from tokenizers import processors

    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TypeError(
            f"tokenizer must be a fast (tokenizers-backed) tokenizer with .backend_tokenizer, got {type(tokenizer).__name__}"
        )
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        if getattr(tokenizer, attr, None) is None:
            raise ValueError(f"tokenizer must define {attr} (the tiny CLIP text encoder config needs it), got None")
    tokenizer = copy.deepcopy(tokenizer)
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = _check_positive_int("model_max_length", model_max_length)
    return tokenizer


@contextlib.contextmanager
def quiet_torchvision_fallback() -> Iterator[None]:
    """Mute transformers' "`XImageProcessor` requires torchvision (not installed); falling back to `XImageProcessorPil`".

    diffusers' pipeline modules import `CLIPImageProcessor` and `SiglipImageProcessor` by their base names, which
    transformers >= 5 resolves, without torchvision, to the PIL backends (the classic processors) with that warning
    on every process. Only that one message is filtered, and only while the block runs (wrap the diffusers imports).
    """
    import logging

    def not_the_fallback_notice(record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back to" not in record.getMessage()

    logger = logging.getLogger("transformers.utils.import_utils")
    logger.addFilter(not_the_fallback_notice)
    try:
        yield
    finally:
        logger.removeFilter(not_the_fallback_notice)


def _lecun_normal_(layer: torch.nn.Linear | torch.nn.Conv2d) -> None:
    """Variance-preserving (LeCun) init in place: weight ~ N(0, 1/fan_in), bias (if any) zero.

    PyTorch's default `Linear`/`Conv2d` init has variance `1/(3 fan_in)`, which shrinks a signal's variance 3x.
    """
    fan_in = layer.weight[0].numel()
    torch.nn.init.normal_(layer.weight, std=fan_in**-0.5)
    if layer.bias is not None:
        torch.nn.init.zeros_(layer.bias)


def build_tiny_sd_pipeline(tokenizer: Any, seed: int = 0, image_size: int = 32) -> Any:
    """A tiny randomly initialised Stable Diffusion pipeline (real architectures), seeded, fast on two CPU cores.

    Parts: a 1-layer `CLIPTextModel` whose vocabulary and special-token ids match `tokenizer`; a 2-block
    `UNet2DConditionModel` (16/32 channels, cross-attention); a 3-block `AutoencoderKL` (latents are 1/4 of the image
    side); a deterministic `DDIMScheduler` (eta=0) with Stable Diffusion's beta schedule. The pipeline's tokenizer is
    `clip_style_tokenizer(tokenizer)` (a copy; the caller's tokenizer is not modified). The global torch RNG is left
    untouched. The images are structured noise: they exercise the pipeline and say nothing about image quality.

    With every weight at its default random init the renders are nearly prompt-blind (pixel std across prompts
    ~0.001 for images of std 0.15, against ~0.11 across noise seeds). Five documented choices make the prompt
    matter as much as the noise while staying a real Stable Diffusion pipeline:

    1. CLIP-style tokenization (`<bos> text <eos>`, right padding; see `clip_style_tokenizer`) as SD's tokenizer
       does; a left-padded prompt starts with dozens of prompt-independent positions that dilute cross-attention.
    2. `prediction_type="v_prediction"` (Stable Diffusion 2.x's parameterisation, supported by every SD scheduler).
       A random UNet's output is uncorrelated with the noise, so under epsilon prediction the sampler's x0 estimate
       `(x_t - sqrt(1 - abar) eps) / sqrt(abar)` is the initial noise amplified by `1 / sqrt(abar)` (~4 at the first
       of 4 DDIM steps), drowning the prompt; under v prediction, `x0 = sqrt(abar) x_t - sqrt(1 - abar) v`, the
       UNet output itself carries the image estimate at high noise and classifier-free guidance scales the prompt.
    3. Cross-attention `to_v` and `to_out` are LeCun-normal (variance `1/fan_in`, zero bias) instead of PyTorch's
       default (variance `1/(3 fan_in)`), so the prompt's only path into the UNet keeps its variance instead of
       losing 9x of it.
    4. The VAE decoder's `conv_out` is LeCun-normal too, so decoded images span more of [-1, 1] (pixel std ~0.24
       in [0, 1] instead of ~0.15) instead of shrinking every difference 3x at the last layer.
    5. `vae.config.scaling_factor = 1.0`: SD's 0.18215 whitens the latents of a *trained* VAE; a random VAE's
       latents are not calibrated to it, and dividing by it only inflates the decoder input.

    Measured on the first 32 bundled demo targets with the env's tokenizer (seeds 0-5, K=2, 32x32, 4 steps): mean
    per-pixel std across prompts 0.07-0.14 (default inits: 0.0014), against 0.14-0.18 across the K noise seeds.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    with quiet_torchvision_fallback():
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    image_size = _check_positive_int("image_size", image_size)
    if image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8 (VAE /4 then UNet /2), got {image_size}")
    tokenizer = clip_style_tokenizer(tokenizer, model_max_length=77)
    channels = 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=tokenizer.model_max_length,
                projection_dim=32,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(channels,) * 3,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=image_size,
            scaling_factor=1.0,
        )
        unet = UNet2DConditionModel(
            sample_size=image_size // 4,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(channels, 2 * channels),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=2,
            norm_num_groups=8,
        )
        with torch.no_grad():
            for name, module in unet.named_modules():
                if name.endswith("attn2"):  # cross-attention: the prompt's only way into the UNet
                    _lecun_normal_(module.to_v)
                    _lecun_normal_(module.to_out[0])
            _lecun_normal_(vae.decoder.conv_out)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


RENDER_SETTINGS = (
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
    "images_per_prompt",
    "seed",
    "cache_size",
    "batch_size",
    "call_kwargs",
)
TINY_SETTINGS = {"num_inference_steps": 4, "guidance_scale": 7.5, "height": 32, "width": 32, "images_per_prompt": 2}


def pipeline_weights_digest(pipeline: Any) -> str:
    """blake2b over the name, dtype, shape and bytes of every tensor of the pipeline's modules (its `components`)
    and the vocabulary of its tokenizers: equal for equal weights, in any process."""
    digest = hashlib.blake2b(digest_size=16)
    components = getattr(pipeline, "components", None) or {"model": pipeline}
    for name in sorted(components):
        component = components[name]
        if isinstance(component, torch.nn.Module):
            for key, tensor in sorted(component.state_dict().items()):
                digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                if tensor.device.type != "meta":
                    digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif hasattr(component, "get_vocab"):
            digest.update(json.dumps(sorted(component.get_vocab().items())).encode())
    return digest.hexdigest()


def _pack_images(items: Sequence[tuple[tuple[str, int, str], torch.Tensor]]) -> dict[str, Any]:
    """Cache entries as one stacked tensor plus their keys (one tensor file entry, not one per image)."""
    items = list(items)
    images = torch.stack([image for _, image in items]) if items else torch.zeros(0)
    return {"keys": [list(key) for key, _ in items], "images": images}


def _unpack_images(packed: Mapping[str, Any]) -> list[tuple[tuple[str, int, str], torch.Tensor]]:
    images = packed["images"]
    return [((str(p), int(k), str(f)), images[i].clone()) for i, (p, k, f) in enumerate(packed["keys"])]


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise logger `name`'s level for the duration (restored after, also on error)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)


class CachedRenderer:
    """Base of promptgym's renderers: prompts -> images `[N, K, 3, H, W]`, batched, LRU-cached, common random numbers.

    A subclass draws `(prompt, k)` pairs in `_render_pairs` (image k of every prompt from the randomness of
    `(seed, k)` only) and describes everything else that changes an image in `config()`; this class owns the
    cache (keyed by `(prompt, k, fingerprint)`), the last-batch memo, chunking and the counters.
    """

    def __init__(
        self,
        height: int,
        width: int,
        images_per_prompt: int = 1,
        seed: int = 0,
        cache_size: int = 1024,
        batch_size: int = 8,
    ) -> None:
        self.height = _check_positive_int("height", height)
        self.width = _check_positive_int("width", width)
        self.images_per_prompt = _check_positive_int("images_per_prompt", images_per_prompt)
        self.seed = int(seed)
        if isinstance(cache_size, bool) or not isinstance(cache_size, (int, np.integer)) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0 (0 disables the cache), got {cache_size!r}")
        self.cache_size = int(cache_size)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self._cache = LRU(self.cache_size)  # (prompt, k, fingerprint) -> image [3, H, W]
        self._last_batch: dict[tuple[str, int, str], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.pipeline_calls = 0
        self.images_rendered = 0
        self.prompts_truncated = 0
        self.render_seconds = 0.0  # wall time spent in render() (a profile, not state: never checkpointed)

    def config(self) -> dict[str, Any]:
        """Everything that changes an image besides (prompt, k)."""
        raise NotImplementedError

    def _render_pairs(self, pairs: Sequence[tuple[str, int]]) -> torch.Tensor:
        """Draw `(prompt, k)` pairs -> `[B, 3, H, W]` float32 CPU in [0, 1]."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A short hash of `config()`; part of every cache key, so changing a setting never serves stale images."""
        blob = json.dumps(self.config(), sort_keys=True, default=repr)
        return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]

    def cache_info(self) -> RenderCacheInfo:
        """Hits, misses (in images), the cache bound and the number of cached images."""
        return RenderCacheInfo(self.hits, self.misses, self.cache_size, len(self._cache))

    def clear_cache(self) -> None:
        """Empty the cache and the last-batch memo and reset all counters (call it after changing weights in place)."""
        self._cache.clear()
        self._last_batch = {}
        self.hits = self.misses = self.pipeline_calls = self.images_rendered = self.prompts_truncated = 0
        self._digest = None  # weights may have changed in place

    def _lookup(self, key: tuple[str, int, str]) -> torch.Tensor | None:
        image = self._cache.get(key)  # a hit makes the key the most recently used
        return image if image is not None else self._last_batch.get(key)

    def _store(self, key: tuple[str, int, str], image: torch.Tensor) -> None:
        self._cache.put(key, image)  # evicts the least recently used image beyond cache_size

    COUNTERS = ("hits", "misses", "pipeline_calls", "images_rendered", "prompts_truncated")

    def cache_state(self) -> dict[str, Any]:
        """The cache, the last-batch memo and the counters, exactly (for checkpoints): a renderer restored with
        `load_cache_state` renders and counts from then on as this one would. Images are kept as float32."""
        return {
            "cache": _pack_images(self._cache.items()),
            "last_batch": _pack_images(self._last_batch.items()),
            "counters": {name: int(getattr(self, name)) for name in self.COUNTERS},
        }

    def load_cache_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `cache_state` saved (entries of other renderer settings are kept; they never match)."""
        self._cache.load(_unpack_images(state["cache"]))
        self._last_batch = dict(_unpack_images(state["last_batch"]))
        for name in self.COUNTERS:
            setattr(self, name, int(state["counters"].get(name, 0)))

    def render(self, prompts: Sequence[str]) -> torch.Tensor:
        """Images `[N, K, 3, H, W]` (float32, CPU, in [0, 1]) for `prompts`; image k of each uses noise (seed, k).

        Cached (prompt, k) pairs cost nothing; the rest go through the pipeline in chunks of `batch_size`, each
        distinct pair once. The latest call's images are also kept (outside the LRU bound), so scorers that share
        this renderer and render the same batch one after another cause exactly one render. Images are ordinary
        (non-inference) tensors even when called under `torch.inference_mode()`, so cached renders can later feed
        a model that is being trained.
        """
        start = time.perf_counter()
        try:
            with torch.inference_mode(False), torch.no_grad():
                return self._render(prompts)
        finally:
            self.render_seconds += time.perf_counter() - start

    def render_pairs(self, pairs: Sequence[tuple[str, int]]) -> torch.Tensor:
        """Images `[B, 3, H, W]` (float32, CPU, in [0, 1]) of `(prompt, k)` pairs, any k >= 0: pair (p, k) is exactly
        image k of `render([p])` with `images_per_prompt > k`. Uncached, in chunks of `batch_size`: for data
        generation, where each image is drawn once (e.g. a feedback label's render, identified by its noise index)."""
        chunks = []
        with torch.inference_mode(False), torch.no_grad():
            for start in range(0, len(pairs), self.batch_size):
                chunk = [(str(prompt), int(k)) for prompt, k in pairs[start : start + self.batch_size]]
                chunks.append(self._render_pairs(chunk))
                self.images_rendered += len(chunk)
        return torch.cat(chunks) if chunks else torch.zeros((0, 3, self.height, self.width), dtype=torch.float32)

    def _render(self, prompts: Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise TypeError(f"prompts must be a sequence of str, got {type(prompts).__name__}: {prompts!r:.80}")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompts[{i}] must be a str, got {type(prompt).__name__}: {prompt!r:.80}")
        fingerprint = self.fingerprint()
        keys = [(prompt, k, fingerprint) for prompt in prompts for k in range(self.images_per_prompt)]
        found: dict[tuple[str, int, str], torch.Tensor] = {}
        todo: dict[tuple[str, int, str], None] = {}  # ordered set of distinct uncached keys
        for key in keys:
            if key in found or key in todo:
                self.hits += 1  # a repeat within this batch is rendered once
                continue
            image = self._lookup(key)
            if image is None:
                self.misses += 1
                todo[key] = None
            else:
                self.hits += 1
                found[key] = image
        todo_keys = list(todo)
        for start in range(0, len(todo_keys), self.batch_size):
            chunk = todo_keys[start : start + self.batch_size]
            images = self._render_pairs([(prompt, k) for prompt, k, _ in chunk])
            self.images_rendered += len(chunk)
            for key, image in zip(chunk, images):
                image = image.clone()
                found[key] = image
                self._store(key, image)
        self._last_batch = {key: found[key] for key in keys}
        height, width = self.height, self.width
        if not keys:
            return torch.zeros((0, self.images_per_prompt, 3, height, width), dtype=torch.float32)
        return torch.stack([found[key] for key in keys]).reshape(len(prompts), self.images_per_prompt, 3, height, width)

class DiffusersRenderer(CachedRenderer):
    """Renders prompts with a diffusers text-to-image pipeline: batched, common random numbers, LRU-cached.

    Args:
        pipeline: any diffusers text-to-image pipeline whose `__call__` takes `prompt`, `num_inference_steps`,
            `guidance_scale`, `height`, `width`, `generator`, `latents`, `output_type` (SD 1.x/2.x, SDXL, ...).
        num_inference_steps, guidance_scale, height, width: passed to every pipeline call.
        images_per_prompt: K, the images rendered per prompt (image k always uses the noise of index k).
        seed: the renderer seed; image k's noise is derived from `(seed, k)` only.
        cache_size: the most images ((prompt, k) pairs) the LRU cache keeps; 0 disables it. Memory is
            `cache_size * 3 * height * width * 4` bytes (float32 on CPU).
        batch_size: the most images per pipeline call.
        call_kwargs: extra keyword arguments for every pipeline call (e.g. `negative_prompt`); part of the config
            fingerprint, so changing them invalidates cached images.
    """

    def __init__(
        self,
        pipeline: Any,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        height: int = 512,
        width: int = 512,
        images_per_prompt: int = 1,
        seed: int = 0,
        cache_size: int = 1024,
        batch_size: int = 8,
        call_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(pipeline):
            raise TypeError(f"pipeline must be a callable diffusers pipeline, got {type(pipeline).__name__}")
        super().__init__(height, width, images_per_prompt, seed, cache_size, batch_size)
        self.pipeline = pipeline
        self._digest: tuple[Any, str] | None = None  # (pipeline object, its weights digest)
        self.num_inference_steps = _check_positive_int("num_inference_steps", num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.call_kwargs = dict(call_kwargs or {})
        reserved = {"prompt", "latents", "generator", "output_type", "num_images_per_prompt"} & set(self.call_kwargs)
        if reserved:
            raise ValueError(f"call_kwargs must not set {sorted(reserved)}: the renderer sets them itself")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str | Path,
        *,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> DiffusersRenderer:
        """Load a pipeline with `DiffusionPipeline.from_pretrained` (hub id or local directory) and wrap it.

        `kwargs` that name a renderer setting (`RENDER_SETTINGS`: steps, guidance, size, K, seed, cache and batch
        sizes, call kwargs) configure the renderer; the rest go to `from_pretrained` (`variant`, `revision`,
        `local_files_only`, ...). The safety checker is not loaded (it would blank images and cost memory) and
        the progress bar is off. A checkpoint that is neither local nor cached fails fast, naming the checkpoint
        and the `huggingface-cli download` command.
        """
        from diffusers import DiffusionPipeline

        settings = {name: kwargs.pop(name) for name in RENDER_SETTINGS if name in kwargs}
        load_kwargs = {"safety_checker": None, "requires_safety_checker": False} | kwargs
        if torch_dtype is not None:
            load_kwargs["torch_dtype"] = torch_dtype
        with quiet_torchvision_fallback(), explain_missing_checkpoint(id_or_path, "diffusers pipeline"):
            pipeline = DiffusionPipeline.from_pretrained(str(id_or_path), **load_kwargs)  # imports the pipeline class
        if device is not None:
            pipeline = pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline, **settings)

    @classmethod
    def tiny(cls, tokenizer: Any, seed: int = 0, **settings: Any) -> DiffusersRenderer:
        """The offline default: `build_tiny_sd_pipeline(tokenizer, seed)` rendered with `TINY_SETTINGS`
        (32x32, 4 DDIM steps, K=2) unless `settings` override them.

        `seed` seeds both the random weights and the render noise. `height`/`width` must be multiples of 8.
        """
        unknown = sorted(set(settings) - set(RENDER_SETTINGS))
        if unknown:
            raise TypeError(f"unknown renderer settings {unknown}; expected some of {list(RENDER_SETTINGS)}")
        settings = TINY_SETTINGS | settings
        if settings["height"] % 8 or settings["width"] % 8:
            raise ValueError(
                f"tiny renderer height and width must be multiples of 8, got {settings['height']}x{settings['width']}"
            )
        pipeline = build_tiny_sd_pipeline(tokenizer, seed=seed, image_size=max(settings["height"], settings["width"]))
        return cls(pipeline, seed=seed, **settings)

    # ------------------------------------------------------------------ config, noise, cache

    def config(self) -> dict[str, Any]:
        """Everything that changes an image besides (prompt, k): pipeline, scheduler and call settings."""
        pipeline = self.pipeline
        scheduler = getattr(pipeline, "scheduler", None)
        return {
            "pipeline": type(pipeline).__name__,
            "name_or_path": str(getattr(pipeline, "name_or_path", "") or ""),
            "weights": self.weights_digest(),  # another pipeline (or a reloaded one) never serves stale images
            "dtype": str(getattr(pipeline, "dtype", "")),
            "scheduler": type(scheduler).__name__,
            # diffusers' own "_" keys are bookkeeping (`_use_default_values` lists a set, in a per-process order)
            "scheduler_config": {k: v for k, v in dict(getattr(scheduler, "config", {}) or {}).items()
                                 if not k.startswith("_")},
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "seed": self.seed,
            "call_kwargs": self.call_kwargs,
        }

    def weights_digest(self) -> str:
        """A hash of every weight and the tokenizer's vocabulary of the pipeline, computed once per pipeline object
        (`clear_cache()` after changing weights in place recomputes it). The same weights give the same digest in
        any process, so a checkpoint's cached renders stay valid after resume."""
        if self._digest is None or self._digest[0] is not self.pipeline:
            self._digest = (self.pipeline, pipeline_weights_digest(self.pipeline))
        return self._digest[1]

    def latent_shape(self) -> tuple[int, int, int] | None:
        """Shape `(C, h, w)` of one image's initial latents for UNet pipelines (SD 1.x/2.x, SDXL); None otherwise."""
        unet = getattr(self.pipeline, "unet", None)
        scale = getattr(self.pipeline, "vae_scale_factor", None)
        if unet is None or scale is None:
            return None
        if self.height % scale or self.width % scale:
            raise ValueError(
                f"height and width must be multiples of the VAE scale factor {scale}, got {self.height}x{self.width}"
            )
        return (int(unet.config.in_channels), self.height // scale, self.width // scale)

    def initial_latents(self, k: int) -> torch.Tensor | None:
        """Unscaled initial latents `[C, h, w]` (float32, CPU) of image `k`: a function of `(seed, k)` only."""
        shape = self.latent_shape()
        if shape is None:
            return None
        generator = torch.Generator(device="cpu").manual_seed(derive_seed(self.seed, k, 0))
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def step_generator(self, k: int) -> torch.Generator:
        """A fresh CPU generator for image `k`'s sampler noise (stochastic schedulers), seeded from `(seed, k)`."""
        return torch.Generator(device="cpu").manual_seed(derive_seed(self.seed, k, 1))

    # ------------------------------------------------------------------ rendering

    def _count_truncated(self, prompts: Sequence[str]) -> None:
        """Count the prompts longer than the text encoder takes (the pipeline truncates them, and diffusers logs
        every one); say so once per renderer, with the count kept in `prompts_truncated`."""
        tokenizer = getattr(self.pipeline, "tokenizer", None)
        limit = getattr(tokenizer, "model_max_length", None)
        if tokenizer is None or not isinstance(limit, int) or limit > 100_000:
            return
        long = sum(len(ids) > limit for ids in tokenizer(list(prompts), truncation=False, verbose=False)["input_ids"])
        if long and not self.prompts_truncated:
            warnings.warn(
                f"{long} of {len(prompts)} prompts are longer than the text encoder's {limit} tokens and are truncated "
                f"by the pipeline; later ones are only counted ({type(self).__name__}.prompts_truncated)",
                UserWarning,
                stacklevel=5,
            )
        self.prompts_truncated += long

    def _render_pairs(self, pairs: Sequence[tuple[str, int]]) -> torch.Tensor:
        """Render `(prompt, k)` pairs in one pipeline call -> `[B, 3, H, W]` float32 CPU in [0, 1]."""
        pipeline = self.pipeline
        kwargs: dict[str, Any] = dict(self.call_kwargs)
        if self.latent_shape() is not None:
            latents = torch.stack([self.initial_latents(k) for _, k in pairs])
            kwargs["latents"] = latents.to(device=pipeline.unet.device, dtype=pipeline.unet.dtype)
        self._count_truncated([prompt for prompt, _ in pairs])
        with _quiet_logger(type(pipeline).__module__):  # diffusers logs each truncated prompt: counted above
            images = pipeline(
                prompt=[prompt for prompt, _ in pairs],
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                height=self.height,
                width=self.width,
                num_images_per_prompt=1,
                generator=[self.step_generator(k) for _, k in pairs],
                output_type="pt",
                **kwargs,
            ).images
        self.pipeline_calls += 1
        if not isinstance(images, torch.Tensor) or images.shape != (len(pairs), 3, self.height, self.width):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise RuntimeError(
                f"pipeline {type(pipeline).__name__} returned {got} for output_type='pt', "
                f"expected a tensor of shape {(len(pairs), 3, self.height, self.width)}"
            )
        return images.detach().to(device="cpu", dtype=torch.float32)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.pipeline).__name__}, steps={self.num_inference_steps}, "
            f"guidance_scale={self.guidance_scale}, size={self.height}x{self.width}, K={self.images_per_prompt}, "
            f"seed={self.seed}, cache={self.cache_info()})"
        )
