"""A reward model trained on binary feedback (Lee et al. 2023, "Aligning text-to-image models using human feedback").

`FeedbackRewardModel` is r(x, z): an MLP on a frozen CLIP's L2-normalised image embedding x and text embedding z
(and their elementwise product, which makes the cosine a linear feature), one scalar out. It is trained on labels
y in {0, 1} ("does this image show this prompt?", `promptgym.rewards.feedback_data`) with

    loss = MSE(r(x, z), y) + aux_weight * CE([r(x, z), r(x, z'_1), ..., r(x, z'_k)], index 0)

where z'_j are perturbed prompts (one attribute of z's scene changed) and the reward scores are the logits of the
auxiliary prompt classification, as in the paper. The auxiliary term is taken over the rows labelled 1 only: an image
that does not show its prompt has no true prompt to pick, and for a mismatched render one of the perturbations may
be exactly what it shows. `aux_weight=0` is the paper's ablation (pure MSE).

`LearnedRewardScorer` is the `Scorer`: it renders the *edited prompt* with the shared renderer and scores
r(render, edited prompt), the mean over the K renders: "does the image show what the prompt says?" (the text
PickScore sees by default too). Renders and scores are shared and cached like the other image scorers'.

The model's config records the CLIP's embedding size and identity (`clip`: a hub id or directory, or "synth" for the
synth world's CLIP wherever the world lives); loading it with a CLIP of another embedding size is a ValueError naming
both sizes. The shipped model (`promptgym/rewards/data/synth/feedback`) was built by

    promptgym reward simulate-feedback --out runs/feedback/labels.jsonl --n 3000 --seed 0 \\
        && promptgym reward fit-feedback --labels runs/feedback/labels.jsonl --out rewards/data/synth/feedback --seed 0

and is the reward term `feedback` of `build_reward("synth", weights={"feedback": 1.0})` (off by default).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from tqdm.auto import tqdm

from promptgym.rewards.base import EditResult, check_scores
from promptgym.rewards.image_scorers import (
    ScoreCache,
    _check_renderer,
    _check_texts,
    check_images,
    image_embeddings,
    text_embeddings,
)

__all__ = [
    "FeedbackData",
    "FeedbackLoss",
    "FeedbackRewardModel",
    "FrozenCLIP",
    "LearnedRewardScorer",
    "agreement",
    "best_threshold",
    "feedback_loss",
    "fit_feedback_model",
    "prompt_classification_loss",
    "roc_auc",
]

SYNTH_CLIP = "synth"  # `clip` value meaning the synth world's CLIP (`synth_path("clip")`)


class FeedbackRewardModel(nn.Module, PyTorchModelHubMixin):
    """r(x, z): an MLP on `[x, z, x * z]` of L2-normalised CLIP image and text embeddings -> one score per pair.

    `forward(image_embeds[M, D], text_embeds[M, D]) -> scores[M]`; the embeddings are normalised here, so raw
    projected CLIP embeddings may be passed. Saved and loaded with `save_pretrained` / `from_pretrained`; the config
    records `embedding_dim` (D) and `clip` (which CLIP made the embeddings).
    """

    def __init__(self, embedding_dim: int = 64, hidden_dims: Sequence[int] = (256, 64), dropout: float = 0.1,
                 clip: str = SYNTH_CLIP) -> None:
        super().__init__()
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
        self.embedding_dim = embedding_dim
        self.clip = str(clip)
        layers: list[nn.Module] = []
        width = 3 * embedding_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, int(hidden)), nn.GELU(), nn.Dropout(dropout)]
            width = int(hidden)
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        if image_embeds.shape != text_embeds.shape or image_embeds.shape[-1] != self.embedding_dim:
            raise ValueError(f"image_embeds {tuple(image_embeds.shape)} and text_embeds {tuple(text_embeds.shape)} "
                             f"must have the same shape [..., {self.embedding_dim}]")
        x = nn.functional.normalize(image_embeds.float(), dim=-1)
        z = nn.functional.normalize(text_embeds.float(), dim=-1)
        return self.mlp(torch.cat([x, z, x * z], dim=-1)).squeeze(-1)

    def check_clip(self, clip_dim: int, clip_name: str) -> None:
        """ValueError when a CLIP embedding to `clip_dim` cannot feed this model."""
        if clip_dim != self.embedding_dim:
            raise ValueError(f"the feedback reward model takes {self.embedding_dim}-d CLIP embeddings (it was trained "
                             f"with CLIP {self.clip!r}), but CLIP {clip_name!r} embeds to {clip_dim}-d")


class FrozenCLIP:
    """A CLIP model and its processor, frozen, that embeds images and texts (projected, not normalised)."""

    def __init__(self, model: nn.Module, processor: Any, name: str = "") -> None:
        if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
            raise TypeError(f"processor must have .tokenizer and .image_processor (a CLIPProcessor), "
                            f"got {type(processor).__name__}")
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.name = name

    @classmethod
    def from_pretrained(cls, clip: str | Path = SYNTH_CLIP) -> FrozenCLIP:
        """`CLIPModel` + `CLIPProcessor` from a hub id or directory; "synth" is the synth world's CLIP."""
        from transformers import AutoProcessor, CLIPModel

        from promptgym.rewards.render import explain_missing_checkpoint
        from promptgym.rewards.world import synth_path

        path = synth_path("clip") if str(clip) == SYNTH_CLIP else clip
        with explain_missing_checkpoint(path, "CLIP (feedback reward)"):
            model = CLIPModel.from_pretrained(str(path))
            processor = AutoProcessor.from_pretrained(str(path))
        return cls(model, processor, name=str(clip))

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[torch.Tensor] | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Image embeddings `[M, D]` (float32, CPU) of M images `[3, H, W]` in [0, 1] (sizes may differ: the
        processor resizes each)."""
        image_processor = self.processor.image_processor
        out = [torch.zeros(0, self.embedding_dim)]
        for start in range(0, len(images), batch_size):
            chunk = [image.float().cpu() for image in images[start : start + batch_size]]
            pixels = image_processor(images=chunk, do_rescale=False, return_tensors="pt")["pixel_values"]
            out.append(image_embeddings(self.model, pixels).float().cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        """Text embeddings `[M, D]` (float32, CPU); texts are truncated to the CLIP's context length."""
        texts = _check_texts(texts)
        out = [torch.zeros(0, self.embedding_dim)]
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            out.append(text_embeddings(self.model, self.processor.tokenizer, chunk).float().cpu())
        return torch.cat(out)


# ------------------------------------------------------------------------------------------- losses


class FeedbackLoss(NamedTuple):
    total: torch.Tensor
    mse: torch.Tensor
    aux: torch.Tensor


def prompt_classification_loss(true_scores: torch.Tensor, perturbed_scores: torch.Tensor,
                               perturbed_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of picking the true prompt (index 0) among `[true_scores[B], perturbed_scores[B, P]]`, the
    scores used as logits; `perturbed_mask[B, P]` marks the real perturbations (others are left out of the softmax),
    and rows without any are left out of the mean. 0 (still on the graph) when no row has a perturbation."""
    rows = perturbed_mask.any(dim=1)
    if not bool(rows.any()):
        return true_scores.sum() * 0.0
    logits = torch.cat([true_scores[:, None], perturbed_scores.masked_fill(~perturbed_mask, -math.inf)], dim=1)
    target = torch.zeros(int(rows.sum()), dtype=torch.long, device=logits.device)
    return nn.functional.cross_entropy(logits[rows], target)


def feedback_loss(scores: torch.Tensor, labels: torch.Tensor, perturbed_scores: torch.Tensor | None,
                  perturbed_mask: torch.Tensor | None, aux_weight: float) -> FeedbackLoss:
    """MSE(scores[B], labels[B]) + aux_weight * `prompt_classification_loss` over the rows labelled 1.

    With `aux_weight == 0` the total is the MSE alone and the perturbations are not needed (None)."""
    mse = nn.functional.mse_loss(scores, labels.float())
    if aux_weight == 0 or perturbed_scores is None or perturbed_mask is None:
        if aux_weight != 0:
            raise ValueError(f"aux_weight={aux_weight} needs perturbed_scores and perturbed_mask")
        return FeedbackLoss(mse, mse, torch.zeros((), device=scores.device))
    mask = perturbed_mask & (labels > 0.5)[:, None]
    aux = prompt_classification_loss(scores, perturbed_scores, mask)
    return FeedbackLoss(mse + aux_weight * aux, mse, aux)


# ------------------------------------------------------------------------------------------- training


@dataclasses.dataclass
class FeedbackData:
    """Training tensors: `image_embeds[N, D]`, `text_embeds[N, D]`, `labels[N]` in {0, 1}, and the perturbed
    prompts' embeddings `perturbed_embeds[N, P, D]` with `perturbed_mask[N, P]` (False: no such perturbation)."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    labels: torch.Tensor
    perturbed_embeds: torch.Tensor
    perturbed_mask: torch.Tensor

    def __post_init__(self) -> None:
        n, d = self.image_embeds.shape
        p = self.perturbed_mask.shape[1] if self.perturbed_mask.ndim == 2 else -1
        if (self.text_embeds.shape != (n, d) or self.labels.shape != (n,) or self.perturbed_mask.shape != (n, p)
                or self.perturbed_embeds.shape != (n, p, d)):
            raise ValueError(
                f"inconsistent shapes: image_embeds {tuple(self.image_embeds.shape)}, text_embeds "
                f"{tuple(self.text_embeds.shape)}, labels {tuple(self.labels.shape)}, perturbed_embeds "
                f"{tuple(self.perturbed_embeds.shape)}, perturbed_mask {tuple(self.perturbed_mask.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> FeedbackData:
        return FeedbackData(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    def with_labels(self, labels: Sequence[int] | torch.Tensor) -> FeedbackData:
        return dataclasses.replace(self, labels=torch.as_tensor(labels, dtype=torch.float32))


def batch_loss(model: FeedbackRewardModel, batch: FeedbackData, aux_weight: float) -> FeedbackLoss:
    """`feedback_loss` of `model` on one batch (the perturbed prompts are scored only when `aux_weight != 0`)."""
    scores = model(batch.image_embeds, batch.text_embeds)
    if aux_weight == 0:
        return feedback_loss(scores, batch.labels, None, None, 0.0)
    b, p, d = batch.perturbed_embeds.shape
    images = batch.image_embeds[:, None].expand(b, p, d)
    perturbed = model(images.reshape(b * p, d), batch.perturbed_embeds.reshape(b * p, d)).reshape(b, p)
    return feedback_loss(scores, batch.labels, perturbed, batch.perturbed_mask, aux_weight)


def fit_feedback_model(data: FeedbackData, *, aux_weight: float = 0.5, epochs: int = 40, batch_size: int = 128,
                       lr: float = 1e-3, weight_decay: float = 1e-4, hidden_dims: Sequence[int] = (256, 64),
                       dropout: float = 0.1, clip: str = SYNTH_CLIP, seed: int = 0,
                       progress: bool = True) -> tuple[FeedbackRewardModel, list[dict[str, float]]]:
    """Train a `FeedbackRewardModel` on `data` with AdamW and a one-cycle schedule (10% warm-up, cosine decay); deterministic for a
    seed (initialisation, dropout and batch order). Returns the model (eval mode) and the mean losses per epoch."""
    if not math.isfinite(aux_weight) or aux_weight < 0:
        raise ValueError(f"aux_weight must be a finite number >= 0, got {aux_weight}")
    if epochs < 1 or batch_size < 1 or len(data) == 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and data; got {epochs}, {batch_size}, {len(data)} rows")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeedbackRewardModel(int(data.image_embeds.shape[1]), tuple(int(h) for h in hidden_dims), dropout, clip)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps = epochs * math.ceil(len(data) / batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
        order = torch.Generator().manual_seed(seed)
        history = []
        model.train()
        for epoch in tqdm(range(epochs), desc="fit feedback reward", disable=not progress, mininterval=2.0,
                          dynamic_ncols=True):
            sums = np.zeros(3)
            for index in torch.randperm(len(data), generator=order).split(batch_size):
                loss = batch_loss(model, data.subset(index), aux_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.total.backward()
                optimizer.step()
                schedule.step()
                sums += np.array([v.item() for v in loss]) * len(index)
            history.append({"epoch": epoch + 1, **dict(zip(FeedbackLoss._fields, (sums / len(data)).tolist()))})
    return model.eval(), history


# ------------------------------------------------------------------------------------------- metrics


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n1 n0), ties count half); NaN when a class is missing."""
    from scipy.stats import mannwhitneyu

    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    positive, negative = scores[labels], scores[~labels]
    if not len(positive) or not len(negative):
        return math.nan
    return float(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def agreement(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float) -> float:
    """Share of rows where `score >= threshold` equals the label."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    return float(np.mean((scores >= threshold) == labels)) if len(labels) else math.nan


def best_threshold(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The threshold with the highest `agreement` on (scores, labels): a midpoint between adjacent distinct scores
    (or just below/above them all); the lowest such threshold on ties."""
    values = np.unique(np.asarray(scores, dtype=float))
    if not len(values):
        raise ValueError("best_threshold needs at least one score")
    candidates = np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]])
    accuracy = [agreement(scores, labels, t) for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


# ------------------------------------------------------------------------------------------- the scorer


class LearnedRewardScorer:
    """Scorer: r(render, edited prompt) of a `FeedbackRewardModel`, mean over the K renders of each edited prompt.

    Attributes: `model`, `clip` (a `FrozenCLIP` of the model's embedding size), `renderer` (shared, may be None:
    `score_images` works without it). Scores are cached by (renderer config, prompt) like `PickScoreScorer`'s.
    """

    def __init__(self, model: FeedbackRewardModel, clip: FrozenCLIP, renderer: Any = None, name: str = "feedback",
                 score_cache_size: int = 4096) -> None:
        model.check_clip(clip.embedding_dim, clip.name)
        self.model = model.eval()
        self.clip = clip
        self.renderer = renderer
        self.name = name
        self.score_cache = ScoreCache(score_cache_size)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, clip: str | Path | FrozenCLIP | None = None, renderer: Any = None,
                        name: str = "feedback") -> LearnedRewardScorer:
        """The model from `path` (hub id or directory) and the CLIP its config names (or `clip`: an id, a
        directory or a `FrozenCLIP`); a CLIP of another embedding size is a ValueError naming both sizes."""
        from promptgym.rewards.render import explain_missing_checkpoint

        with explain_missing_checkpoint(path, "feedback reward model"):
            model = FeedbackRewardModel.from_pretrained(str(path))
        if not isinstance(clip, FrozenCLIP):
            clip = FrozenCLIP.from_pretrained(model.clip if clip is None else clip)
        return cls(model, clip, renderer=renderer, name=name)

    @torch.inference_mode()
    def score_images(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Rewards `[N]` (float32, CPU) of `images[N, K, 3, H, W]` against `texts[N]`, the mean over K."""
        check_images(images, len(_check_texts(texts)))
        if images.shape[0] == 0:  # no rows: nothing to embed
            return torch.zeros(0, dtype=torch.float32)
        n, k = images.shape[:2]
        image_embeds = self.clip.embed_images(images.flatten(0, 1))
        text_embeds = self.clip.embed_texts(list(texts)).repeat_interleave(k, dim=0)
        self.model.eval()
        return self.model(image_embeds, text_embeds).reshape(n, k).mean(dim=1).float().cpu()

    @torch.inference_mode()
    def __call__(self, results: Sequence[EditResult]) -> torch.Tensor:
        """Rewards `[N]` of the edited prompts' renders against the edited prompts (cached, see `ScoreCache`)."""
        renderer = _check_renderer(self.renderer, type(self).__name__)
        prompts = [result.prompt for result in results]
        scores = self.score_cache.scores(renderer, prompts, prompts, self.score_images)
        return check_scores(self.name, scores, len(results))
