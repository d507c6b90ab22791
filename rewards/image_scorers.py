"""Image scorers on Stable Diffusion renders: LAION aesthetic score and PickScore.

Each scorer separates scoring from rendering:

- `score_images(images[N, K, 3, H, W], texts) -> Tensor[N]` is a pure function of its inputs (fixed images in,
  scores out), which is what reward-shaping unit tests need;
- `__call__(results)` renders the edited prompts with the scorer's `renderer` and calls `score_images`.

Renders are shared by handing the *same* `DiffusersRenderer` to every image scorer: the first scorer of a batch
renders it, the others find the images in the renderer's cache / last-batch memo, so one batch costs one render.

Images are preprocessed with the models' own image processors (`CLIPImageProcessor`: resize, centre crop,
normalise); the renders are already floats in [0, 1], so the processors get `do_rescale=False` and are not
rescaled by 1/255 a second time. Where a processor leaves an image's size as it is (the synth world's 32 x 32 renders
and processors), `preprocess_images` takes a batched tensor path instead of the processor's per-image one, after
checking on probe images that it gives exactly the processor's pixels (see `preprocess_images`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from promptgym.rewards.base import EditResult, check_scores
from promptgym.rewards.cache import LRU
from promptgym.rewards.render import DiffusersRenderer, clip_style_tokenizer, explain_missing_checkpoint

__all__ = [
    "LAION_AESTHETIC_KEYS",
    "TINY_VISION_INITIALIZER_FACTOR",
    "AestheticMLP",
    "AestheticScorer",
    "PickScoreScorer",
    "check_images",
    "image_embeddings",
    "load_aesthetic_mlp",
    "preprocess_images",
    "text_embeddings",
]

LAION_AESTHETIC_KEYS = tuple(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))


# ---------------------------------------------------------------------- shared image plumbing


def check_images(images: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Validate renders: a float tensor `[N, K, 3, H, W]` with finite values in [0, 1] (`N == n` when given)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [N, K, 3, H, W], got {type(images).__name__}")
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"images must have shape [N, K, 3, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a float tensor with values in [0, 1], got dtype {images.dtype}")
    if n is not None and images.shape[0] != n:
        raise ValueError(f"images has N={images.shape[0]} rows but {n} texts were given")
    if images.numel():
        low, high = float(images.min()), float(images.max())
        if not (0.0 <= low and high <= 1.0):  # also False for NaN
            raise ValueError(f"images must have finite values in [0, 1], got min {low} and max {high}")
    return images


def _processor_pixels(image_processor: Any, images: torch.Tensor) -> torch.Tensor:
    return image_processor(images=list(images), do_rescale=False, return_tensors="pt")["pixel_values"]


def _normalized(image_processor: Any, images: torch.Tensor) -> torch.Tensor:
    if not getattr(image_processor, "do_normalize", False):
        return images
    mean = torch.tensor(image_processor.image_mean, dtype=images.dtype).view(-1, 1, 1)
    std = torch.tensor(image_processor.image_std, dtype=images.dtype).view(-1, 1, 1)
    return (images - mean) / std


# What a processor that keeps the image size may do to the pixels before normalising: the PIL backend converts a
# float image to 8 bits (floor(255 x)) as any real render saved as an image is; a tensor backend keeps the floats.
_SAME_SIZE_FORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "8-bit": lambda images: torch.floor(images * 255) / 255,
    "float": lambda images: images,
}
_PROBES = 2  # probe images per check
_SAME_SIZE_FORM: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # processor -> {(H, W, config): form}


def _same_size_form(image_processor: Any, height: int, width: int) -> str | None:
    """The `_SAME_SIZE_FORMS` entry that reproduces `image_processor` exactly on `height x width` images, or None
    (it resizes, crops, or does something else): decided once per processor, size and processor configuration, on
    seeded random probe images, so the batched path never changes a score."""
    key = (height, width, repr(sorted(image_processor.to_dict().items())))
    try:
        known = _SAME_SIZE_FORM.setdefault(image_processor, {})
    except TypeError:  # a processor that cannot be weakly referenced or hashed: always its own path
        return None
    if key not in known:
        generator = torch.Generator().manual_seed(0)
        probes = torch.rand(_PROBES, 3, height, width, generator=generator)
        reference = _processor_pixels(image_processor, probes)
        known[key] = next((name for name, form in _SAME_SIZE_FORMS.items()
                           if torch.equal(_normalized(image_processor, form(probes)), reference)), None)
    return known[key]


def preprocess_images(processor: Any, images: torch.Tensor) -> torch.Tensor:
    """`pixel_values[M, 3, h, w]` from `images[M, 3, H, W]` in [0, 1] via the model's image processor.

    `processor` is an image processor or a processor with an `.image_processor` (e.g. `CLIPProcessor`).
    `do_rescale=False`: the images are already in [0, 1] and must not be divided by 255 again.

    The processor works image by image (through PIL with transformers' default backend: ~0.3 ms per 32 x 32 image,
    about a fifth of the synth world's CLIP forward). When it keeps the image size (resize and centre crop to H x W),
    the same pixels come from one batched tensor operation (8-bit conversion where the processor does it, then its
    normalisation), 10-40x faster; that path is used only after `_same_size_form` found it bit-identical to the
    processor on probe images, so scores never depend on which path ran.
    """
    image_processor = getattr(processor, "image_processor", processor)
    images = images.float().cpu()
    if images.ndim == 4 and images.shape[0] > 0:
        form = _same_size_form(image_processor, int(images.shape[-2]), int(images.shape[-1]))
        if form is not None:
            return _normalized(image_processor, _SAME_SIZE_FORMS[form](images))
    return _processor_pixels(image_processor, images)


def _pooled(output: Any, embeds_field: str) -> torch.Tensor:
    """The projected embedding from a transformers output: a tensor (transformers 4), a model output's
    `pooler_output` (transformers 5 `get_*_features`) or `<embeds_field>` (`*ModelWithProjection`)."""
    if isinstance(output, torch.Tensor):
        return output
    value = getattr(output, embeds_field, None)
    if value is None:
        value = getattr(output, "pooler_output", None)
    if value is None:
        raise TypeError(f"cannot find {embeds_field} or pooler_output in {type(output).__name__}")
    return value


def _module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


def image_embeddings(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected (not normalised) CLIP image embeddings `[M, D]` of a `CLIPModel` or `CLIPVisionModelWithProjection`."""
    device, dtype = _module_device_dtype(model)
    pixel_values = pixel_values.to(device=device, dtype=dtype)
    if hasattr(model, "get_image_features"):
        return _pooled(model.get_image_features(pixel_values=pixel_values), "image_embeds")
    return _pooled(model(pixel_values=pixel_values), "image_embeds")


def text_embeddings(model: nn.Module, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Projected (not normalised) CLIP text embeddings `[N, D]`; texts are truncated to the model's context length."""
    device, _ = _module_device_dtype(model)
    max_length = int(model.config.text_config.max_position_embeddings)
    tokens = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    tokens = {name: tokens[name].to(device) for name in ("input_ids", "attention_mask") if name in tokens}
    return _pooled(model.get_text_features(**tokens), "text_embeds")


def _check_texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a sequence of str, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(text).__name__}: {text!r:.80}")
    return list(texts)


def _tiny_clip_image_processor(image_size: int) -> Any:
    """A CLIP image processor for tiny models: resize the short side to `image_size`, centre crop, CLIP mean/std.

    transformers >= 5 names the PIL backend `CLIPImageProcessorPil` (the classic processor; `CLIPImageProcessor`
    needs torchvision there and falls back to it with a warning); older versions only have `CLIPImageProcessor`.
    Both save as `"CLIPImageProcessor"`, so saved tiny processors load with `AutoImageProcessor` anywhere.
    """
    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers < 5
        from transformers import CLIPImageProcessor as ImageProcessor

    return ImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


# CLIP's default init (initializer_factor=1) scales residual branches by 1/sqrt(2 * layers) so that a deep *trained*
# tower starts near the identity; a random 2-layer tower then returns almost its constant class token for every
# image (cosine ~0.99 between embeddings of different renders, and the aesthetic score is a constant). With factor 4
# the attention logits have std (4/2)^2 = 4 (sharp, image-dependent attention) and the residual branches outweigh the
# class token, so different renders embed with cosine ~0.6 and independent noise images with ~0.3.
TINY_VISION_INITIALIZER_FACTOR = 4.0


def _tiny_vision_config(image_size: int) -> dict[str, Any]:
    return dict(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        initializer_factor=TINY_VISION_INITIALIZER_FACTOR,
    )


def _check_renderer(renderer: DiffusersRenderer | None, owner: str) -> DiffusersRenderer:
    if renderer is None:
        raise ValueError(
            f"{owner} has no renderer: construct it with renderer=DiffusersRenderer(...) to score EditResults, "
            f"or call score_images(images, texts) on images you already have"
        )
    return renderer


class ScoreCache:
    """LRU of image-scorer scores keyed by (renderer fingerprint, prompt, text).

    A render is a pure function of (prompt, k, renderer config), so its score is too while the scorer's weights
    stay fixed: a prompt scored before (in delta mode, every task's source prompt) costs neither a render nor a
    forward. Call `clear()` after changing a scorer's weights in place; `size=0` disables the cache.

    `pin(entries)` adds scores computed elsewhere (a `ScoreTable`'s: a task set's source prompts) outside the LRU
    bound; they are looked up first, counted in `pinned_hits`, and emptied by `clear()` like the rest.
    """

    def __init__(self, size: int = 4096) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"score_cache_size must be an int >= 0 (0 disables the cache), got {size!r}")
        self.size = size
        self._scores = LRU(size)  # (renderer fingerprint, prompt, text) -> score
        self._pinned: dict[tuple[str, str, str], float] = {}  # the same keys, from a ScoreTable: never evicted
        self.hits = 0
        self.misses = 0
        self.pinned_hits = 0

    def clear(self) -> None:
        self._scores.clear()
        self._pinned.clear()

    def pin(self, entries: Mapping[tuple[str, str, str], float]) -> None:
        """Add precomputed scores keyed `(renderer fingerprint, prompt, text)`, kept beside the LRU until `clear()`."""
        self._pinned.update({tuple(key): float(value) for key, value in entries.items()})

    @property
    def pinned(self) -> int:
        """How many pinned scores there are."""
        return len(self._pinned)

    def scores(
        self,
        renderer: DiffusersRenderer,
        prompts: Sequence[str],
        texts: Sequence[str],
        score_images: Callable[[torch.Tensor, list[str]], torch.Tensor],
    ) -> torch.Tensor:
        """Scores `[N]`: cached ones looked up, the others rendered and scored in one batch."""
        fingerprint = renderer.fingerprint()
        keys = [(fingerprint, prompt, text) for prompt, text in zip(prompts, texts, strict=True)]
        known = {key: self._pinned[key] for key in dict.fromkeys(keys) if key in self._pinned}
        self.pinned_hits += sum(key in known for key in keys)
        known |= {key: self._scores[key] for key in dict.fromkeys(keys) if key not in known and key in self._scores}
        missing = [key for key in dict.fromkeys(keys) if key not in known]  # new scores may evict (read them first)
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            images = renderer.render([key[1] for key in missing])
            fresh = score_images(images, [key[2] for key in missing]).tolist()
            for key, value in zip(missing, fresh, strict=True):
                known[key] = value
                self._store(key, value)
        return torch.tensor([known[key] for key in keys], dtype=torch.float32)

    def _store(self, key: tuple[str, str, str], value: float) -> None:
        self._scores.put(key, value)  # evicts the least recently used score beyond size

    def state(self) -> dict[str, Any]:
        """Entries (in recency order) and counters, exactly, for checkpoints; `load_state` restores them."""
        items = self._scores.items()
        return {"keys": [list(key) for key, _ in items], "values": [value for _, value in items],
                "hits": self.hits, "misses": self.misses, "pinned_hits": self.pinned_hits}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `state` saved (the pinned scores are not state: they come from the table, re-attached)."""
        self._scores.load((tuple(key), float(value)) for key, value in zip(state["keys"], state["values"], strict=True))
        self.hits, self.misses = int(state["hits"]), int(state["misses"])
        self.pinned_hits = int(state.get("pinned_hits", 0))


# ---------------------------------------------------------------------- aesthetic


def _load_clip_vision_tower(clip: str | Path, torch_dtype: torch.dtype | None = None) -> nn.Module:
    """`CLIPVisionModelWithProjection` from a vision-only or a full CLIP checkpoint (the text tower is not loaded).

    The text-tower weights of a full checkpoint are expected leftovers, so transformers' load report is muted;
    any missing or mismatched vision weight raises instead of being silently re-initialised.
    """
    import logging

    from transformers import AutoConfig, CLIPConfig, CLIPVisionModelWithProjection

    kwargs: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}
    config = AutoConfig.from_pretrained(str(clip))
    if isinstance(config, CLIPConfig):
        kwargs["config"] = config.vision_config
        kwargs["config"].projection_dim = config.projection_dim
    report_logger = logging.getLogger("transformers.modeling_utils")

    def errors_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    report_logger.addFilter(errors_only)  # a filter, not setLevel: the logger's level changes transformers' checks
    try:
        model, info = CLIPVisionModelWithProjection.from_pretrained(str(clip), output_loading_info=True, **kwargs)
    finally:
        report_logger.removeFilter(errors_only)
    bad = sorted(info["missing_keys"]) + sorted(str(key) for key in info["mismatched_keys"])
    if bad:
        raise ValueError(f"CLIP checkpoint {str(clip)!r} lacks or mismatches vision weights: {bad[:10]}")
    return model


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic predictor head: Linear d->1024->128->64->16->1, dropout between, no activations.

    State-dict keys `layers.0/2/4/6/7.{weight,bias}`, exactly those of `sac+logos+ava1-l14-linearMSE.pth`.
    """

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.layers = nn.Sequential(
            nn.Linear(self.input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Scores `[M, 1]` from (L2-normalised) image embeddings `[M, input_size]`."""
        return self.layers(embeddings)


def _variance_preserving_init_(mlp: AestheticMLP) -> AestheticMLP:
    """Re-initialise a (linear, activation-free) aesthetic MLP so a random unit-norm embedding scores ~N(0, 1).

    Layer 0 gets weights N(0, 1) (its input is a unit-norm vector, so each output then has unit variance), every later
    layer LeCun N(0, 1/fan_in) (keeps unit variance), all biases 0. PyTorch's default init instead shrinks the variance
    3x per layer (243x over five) and leaves a bias-dominated, nearly constant score.
    """
    with torch.no_grad():
        for i, layer in enumerate(module for module in mlp.layers if isinstance(module, nn.Linear)):
            nn.init.normal_(layer.weight, std=1.0 if i == 0 else layer.in_features**-0.5)
            nn.init.zeros_(layer.bias)
    return mlp


def _resolve_file(path_or_hub_file: str | Path) -> Path:
    """A local file, or `<owner>/<repo>/<filename>` on the Hugging Face hub (downloaded or taken from the cache)."""
    path = Path(path_or_hub_file).expanduser()
    if path.is_file():
        return path
    parts = str(path_or_hub_file).split("/")
    if len(parts) < 3 or path.is_absolute() or str(path_or_hub_file).startswith("."):
        raise FileNotFoundError(
            f"aesthetic MLP {str(path_or_hub_file)!r} is not a file; pass a local .pth path or a hub file as "
            f"'<owner>/<repo>/<filename>'"
        )
    from huggingface_hub import hf_hub_download

    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    with explain_missing_checkpoint(repo_id, "aesthetic MLP", filename=filename):
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))


def load_aesthetic_mlp(path_or_hub_file: str | Path) -> AestheticMLP:
    """Load a LAION-format aesthetic MLP state dict (a `.pth` via `torch.load(weights_only=True)`, or a
    `.safetensors` file with the same keys); the input size comes from `layers.0`."""
    path = _resolve_file(path_or_hub_file)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or set(state) != set(LAION_AESTHETIC_KEYS):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{path} is not a LAION aesthetic MLP state dict: expected keys {list(LAION_AESTHETIC_KEYS)}, got {got}"
        )
    mlp = AestheticMLP(input_size=state["layers.0.weight"].shape[1])
    mlp.load_state_dict(state)
    return mlp.eval()


class AestheticScorer:
    """Mean over the K renders of `mlp(normalize(clip_image_embedding(image)))`: the LAION aesthetic score.

    Attributes: `clip` (a `CLIPVisionModelWithProjection` or `CLIPModel`), `processor` (its image processor),
    `mlp` (an `AestheticMLP` whose input size is the CLIP projection size), `renderer` (shared, may be None).
    Real scores are on the LAION 1-10 scale; tiny-model scores only exercise the pipeline.
    """

    def __init__(
        self,
        clip: nn.Module,
        processor: Any,
        mlp: nn.Module,
        renderer: DiffusersRenderer | None = None,
        name: str = "aesthetic",
        score_cache_size: int = 4096,
    ) -> None:
        self.clip = clip.eval()
        self.processor = processor
        self.mlp = mlp.eval()
        self.renderer = renderer
        self.name = name
        self.score_cache = ScoreCache(score_cache_size)

    @classmethod
    def from_pretrained(
        cls,
        clip: str | Path = "openai/clip-vit-large-patch14",
        mlp: str | Path = "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth",
        *,
        renderer: DiffusersRenderer | None = None,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        name: str = "aesthetic",
    ) -> AestheticScorer:
        """CLIP vision tower + projection and its image processor from `clip` (hub id or directory), and the LAION
        MLP from `mlp` (a local `.pth` in the original `sac+logos+ava1-l14-linearMSE.pth` format, or a hub file
        `<owner>/<repo>/<filename>`; the default is TRL's hub copy of that file)."""
        from transformers import AutoImageProcessor

        with explain_missing_checkpoint(clip, "CLIP (aesthetic)"):
            model = _load_clip_vision_tower(clip, torch_dtype)
            processor = AutoImageProcessor.from_pretrained(str(clip))
        head = load_aesthetic_mlp(mlp)
        embed_dim = int(model.config.projection_dim)
        if head.input_size != embed_dim:
            raise ValueError(
                f"aesthetic MLP {mlp!r} takes {head.input_size}-d inputs but CLIP {clip!r} embeds to {embed_dim}-d"
            )
        head = head.to(dtype=next(model.parameters()).dtype)
        if device is not None:
            model, head = model.to(device), head.to(device)
        return cls(model, processor, head, renderer=renderer, name=name)

    @classmethod
    def tiny(
        cls, seed: int = 0, *, image_size: int = 32, renderer: DiffusersRenderer | None = None, name: str = "aesthetic"
    ) -> AestheticScorer:
        """A tiny randomly initialised CLIP vision tower (32-d projection), its image processor and MLP, seeded.

        The tower uses `TINY_VISION_INITIALIZER_FACTOR` and the MLP `_variance_preserving_init_`, so different renders
        get different embeddings and scores spread by ~0.1-0.5 around a mean of order 1 (with default inits every
        render scored the same to 1e-5). The scores exercise the pipeline and say nothing about image quality.
        """
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPVisionModelWithProjection(
                CLIPVisionConfig(**_tiny_vision_config(image_size), projection_dim=32)
            )
            head = _variance_preserving_init_(AestheticMLP(input_size=32))
        return cls(model, _tiny_clip_image_processor(image_size), head, renderer=renderer, name=name)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image embeddings `[N, K, D]` of `images[N, K, 3, H, W]`."""
        check_images(images)
        n, k = images.shape[:2]
        self.clip.eval()
        embeds = image_embeddings(self.clip, preprocess_images(self.processor, images.flatten(0, 1)))
        return nn.functional.normalize(embeds.float(), dim=-1).reshape(n, k, -1)

    @torch.inference_mode()
    def score_images(self, images: torch.Tensor, texts: Sequence[str] | None = None) -> torch.Tensor:
        """Aesthetic scores `[N]` (float32, CPU): the MLP on normalised embeddings, mean over K. `texts` is unused."""
        if texts is not None:
            check_images(images, len(_check_texts(texts)))
        embeds = self.embed(images)
        if embeds.shape[0] == 0:
            return torch.zeros(0, dtype=torch.float32)
        self.mlp.eval()
        head_dtype = next(self.mlp.parameters()).dtype
        scores = self.mlp(embeds.flatten(0, 1).to(head_dtype)).reshape(embeds.shape[:2])
        return scores.float().mean(dim=1).cpu()

    def texts_for(self, results: Sequence[EditResult]) -> list[str]:
        """The text of each result's score-cache key: none (an aesthetic score depends on the images only)."""
        return [""] * len(results)

    @torch.inference_mode()
    def __call__(self, results: Sequence[EditResult]) -> torch.Tensor:
        """Scores `[N]` of the edited prompts' renders (rendered or taken from the caches, see `ScoreCache`)."""
        renderer = _check_renderer(self.renderer, type(self).__name__)
        prompts = [result.prompt for result in results]
        scores = self.score_cache.scores(renderer, prompts, self.texts_for(results),
                                         lambda images, _: self.score_images(images))
        return check_scores(self.name, scores, len(results))


# ---------------------------------------------------------------------- PickScore

TextField = Literal["prompt", "source", "intent"]


class PickScoreScorer:
    """PickScore: `logit_scale.exp() * cos(text embedding, image embedding)`, mean over the K renders.

    `text` chooses what the images are compared with: `"prompt"` (the edited prompt, default), `"source"` (the
    original prompt), or `"intent"` (`source + " " + instruction`). Attributes: `model` (a `CLIPModel`),
    `processor` (a `CLIPProcessor`: tokenizer + image processor), `renderer` (shared, may be None).
    """

    TEXT_FIELDS = ("prompt", "source", "intent")

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        renderer: DiffusersRenderer | None = None,
        text: TextField = "prompt",
        name: str = "pickscore",
        score_cache_size: int = 4096,
    ) -> None:
        if text not in self.TEXT_FIELDS:
            raise ValueError(f"text must be one of {self.TEXT_FIELDS}, got {text!r}")
        if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
            raise TypeError(
                f"processor must have .tokenizer and .image_processor (a CLIPProcessor), got {type(processor).__name__}"
            )
        self.model = model.eval()
        self.processor = processor
        self.renderer = renderer
        self.text = text
        self.name = name
        self.score_cache = ScoreCache(score_cache_size)

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = "yuvalkirstain/PickScore_v1",
        processor: str | Path = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        *,
        renderer: DiffusersRenderer | None = None,
        text: TextField = "prompt",
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        name: str = "pickscore",
    ) -> PickScoreScorer:
        """The PickScore CLIP model and the processor it was trained with (hub ids or local directories)."""
        from transformers import AutoProcessor, CLIPModel

        kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
        with explain_missing_checkpoint(model, "PickScore model"):
            clip = CLIPModel.from_pretrained(str(model), **kwargs)
        with explain_missing_checkpoint(processor, "PickScore processor"):
            clip_processor = AutoProcessor.from_pretrained(str(processor))
        if device is not None:
            clip = clip.to(device)
        return cls(clip, clip_processor, renderer=renderer, text=text, name=name)

    @classmethod
    def tiny(
        cls,
        tokenizer: Any,
        seed: int = 0,
        *,
        image_size: int = 32,
        renderer: DiffusersRenderer | None = None,
        text: TextField = "prompt",
        name: str = "pickscore",
    ) -> PickScoreScorer:
        """A tiny randomly initialised `CLIPModel` (32-d) whose text vocabulary is `tokenizer`'s, seeded.

        The processor gets `clip_style_tokenizer(tokenizer)`, a copy that wraps texts as `<bos> ... <eos>` and pads on
        the right like CLIP's tokenizer, so the text tower pools at the eos token; the caller's tokenizer is not
        modified. (If the eos id is 2, transformers' CLIP uses its legacy argmax-id pooling instead.) The vision
        tower is initialised like `AestheticScorer.tiny`'s (`TINY_VISION_INITIALIZER_FACTOR`), so scores respond to
        the image as well as to the text.
        """
        from transformers import CLIPConfig, CLIPModel, CLIPProcessor

        clip_tokenizer = clip_style_tokenizer(tokenizer, model_max_length=77)
        text_config = dict(
            vocab_size=len(clip_tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=clip_tokenizer.model_max_length,
            pad_token_id=clip_tokenizer.pad_token_id,
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
        )
        config = CLIPConfig(text_config=text_config, vision_config=_tiny_vision_config(image_size), projection_dim=32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(config)
        processor = CLIPProcessor(image_processor=_tiny_clip_image_processor(image_size), tokenizer=clip_tokenizer)
        return cls(model, processor, renderer=renderer, text=text, name=name)

    def texts_for(self, results: Sequence[EditResult]) -> list[str]:
        """The text each result's renders are compared with, per `self.text`."""
        if self.text == "prompt":
            return [result.prompt for result in results]
        if self.text == "source":
            return [result.task.source for result in results]
        return [f"{result.task.source} {result.task.instruction}" for result in results]

    @torch.inference_mode()
    def score_images(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """PickScores `[N]` (float32, CPU) of `images[N, K, 3, H, W]` against `texts[N]`, mean over K."""
        texts = _check_texts(texts)
        check_images(images, len(texts))
        n, k = images.shape[:2]
        if n == 0:
            return torch.zeros(0, dtype=torch.float32)
        self.model.eval()
        pixel_values = preprocess_images(self.processor, images.flatten(0, 1))
        image_embeds = nn.functional.normalize(image_embeddings(self.model, pixel_values).float(), dim=-1)
        text_embeds = nn.functional.normalize(
            text_embeddings(self.model, self.processor.tokenizer, texts).float(), dim=-1
        )
        cosine = torch.einsum("nd,nkd->nk", text_embeds, image_embeds.reshape(n, k, -1))
        return (self.model.logit_scale.exp().float() * cosine).mean(dim=1).cpu()

    @torch.inference_mode()
    def __call__(self, results: Sequence[EditResult]) -> torch.Tensor:
        """Scores `[N]` of the edited prompts' renders against `texts_for(results)` (cached, see `ScoreCache`)."""
        renderer = _check_renderer(self.renderer, type(self).__name__)
        prompts = [result.prompt for result in results]
        scores = self.score_cache.scores(renderer, prompts, self.texts_for(results), self.score_images)
        return check_scores(self.name, scores, len(results))
