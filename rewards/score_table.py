"""`ScoreTable`: precomputed image-term scores of fixed prompts (a task set's source prompts), so that a delta
reward stops rendering its sources.

In delta mode every image term scores the unedited source prompt beside each edit (`CompositeReward`), so a run on
the synth world renders each task's source once more than its edits: about a fifth of a PPO run's renders. A
source's score is a pure function of the prompt, the text it is compared with, the renderer's configuration, the
images per prompt and the scorer's weights, and a benchmark's task set is fixed: so are its source scores. The
score caches already spare a second render of a source within a run; a table spares the first, in every run and
every bench variant (the bench empties the caches between variants so that none profits from another's renders;
the table is the same for all).

A table holds, per *term signature* (`term_signature`: a hash of the scorer's class, text mode and weights, and
of the renderer's configuration, its weights digest included and its local path excluded, and images per prompt),
scores keyed `(prompt, text)`. `attach(reward)` pins into each image term's `ScoreCache` the entries of that term's
live signature: a table built for other render settings, other weights or another world is simply not used (the
count of pinned entries says so), and `clear_reward_caches` re-attaches the reward's table after emptying the
caches, recomputing the signatures, so weights changed in place drop it.

    table = build_score_table(reward, tasks)          # renders and scores each task's source once per image term
    table.save("source_scores.json")
    ScoreTable.load("source_scores.json").attach(reward)

Scores served from a table equal the live ones up to float rounding (a batch of other composition), not bit for
bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from promptgym.rewards.base import EditResult
from promptgym.rewards.composite import unwrap
from promptgym.rewards.render import pipeline_weights_digest

FORMAT = "promptgym-score-table/1"


def _image_processor_settings(scorer: Any) -> dict[str, Any]:
    processor = getattr(scorer, "processor", None)
    image_processor = getattr(processor, "image_processor", processor)
    to_dict = getattr(image_processor, "to_dict", None)
    return json.loads(json.dumps(to_dict(), default=repr)) if callable(to_dict) else {}


def _scorer_weights_digest(scorer: Any) -> str:
    """The digest of the scorer's models (its `torch.nn.Module` attributes) and its processor's tokenizer."""
    components = {name: value for name, value in vars(scorer).items() if isinstance(value, torch.nn.Module)}
    tokenizer = getattr(getattr(scorer, "processor", None), "tokenizer", None)
    if tokenizer is not None:
        components["tokenizer"] = tokenizer
    return pipeline_weights_digest(SimpleNamespace(components=components))


def term_signature(scorer: Any) -> str | None:
    """A hash of everything a cached image score of `scorer` depends on besides (prompt, text), the same on any
    machine for the same weights and settings; None for a scorer without a renderer and a score cache."""
    renderer = getattr(scorer, "renderer", None)
    if renderer is None or getattr(scorer, "score_cache", None) is None or not hasattr(scorer, "texts_for"):
        return None
    blob = {
        "scorer": type(scorer).__name__,
        "text": getattr(scorer, "text", None),
        "weights": _scorer_weights_digest(scorer),
        "image_processor": _image_processor_settings(scorer),
        "renderer": {k: v for k, v in renderer.config().items() if k != "name_or_path"},
        "images_per_prompt": renderer.images_per_prompt,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=repr).encode("utf-8")).hexdigest()[:32]


def _image_terms(reward: Any) -> dict[str, tuple[Any, str]]:
    """{term name: (scorer, signature)} of the reward's terms that a table can serve."""
    terms = {}
    for name, (scorer, _) in reward.terms.items():
        signature = term_signature(scorer)
        if signature is not None:
            terms[name] = (scorer, signature)
    return terms


class ScoreTable:
    """Scores keyed `(prompt, text)` per term signature; see the module doc."""

    def __init__(self, tables: Mapping[str, Mapping[tuple[str, str], float]] | None = None,
                 about: Mapping[str, Any] | None = None) -> None:
        self.tables: dict[str, dict[tuple[str, str], float]] = {
            signature: {(str(p), str(t)): float(v) for (p, t), v in entries.items()}
            for signature, entries in (tables or {}).items()
        }
        self.about = dict(about or {})  # how the table was built (for the reader; never used to match)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.tables.values())

    def __repr__(self) -> str:
        return f"ScoreTable({len(self.tables)} signature(s), {len(self)} score(s))"

    def update(self, signature: str, entries: Mapping[tuple[str, str], float]) -> None:
        self.tables.setdefault(signature, {}).update({(str(p), str(t)): float(v) for (p, t), v in entries.items()})

    def attach(self, reward: Any) -> dict[str, int]:
        """Pin the entries of each image term's live signature into its score cache and remember the table on the
        reward (so `clear_reward_caches` re-attaches it); returns {term: scores pinned} (0: the table does not fit
        that term's settings or weights)."""
        pinned = {}
        for name, (scorer, signature) in _image_terms(reward).items():
            entries = self.tables.get(signature, {})
            fingerprint = scorer.renderer.fingerprint()
            scorer.score_cache.pin({(fingerprint, prompt, text): v for (prompt, text), v in entries.items()})
            pinned[name] = len(entries)
        unwrap(reward).score_table = self  # on the reward itself, not on a wrapper (e.g. a CountingReward)
        return pinned

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "about": self.about,
                "tables": {signature: [[prompt, text, value] for (prompt, text), value in sorted(entries.items())]
                           for signature, entries in sorted(self.tables.items())}}
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ScoreTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no score table at {str(path)!r} (build one with `promptgym reward "
                                    "build-score-table`)")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a score table of format {FORMAT!r} (format: {data.get('format')!r})")
        return cls({signature: {(p, t): v for p, t, v in rows} for signature, rows in data["tables"].items()},
                   data.get("about"))


def build_score_table(reward: Any, tasks: Sequence[Any], table: ScoreTable | None = None,
                      batch_size: int = 64, progress: bool = False) -> ScoreTable:
    """Score every task's source prompt with each image term of `reward` exactly as the delta reward scores it
    (`EditResult(task, task.source)`, so a term comparing with the instruction gets its text too), rendering it,
    and add the scores under the terms' live signatures to `table` (a new one by default). The terms score each
    batch in turn, so they share its render (the renderer's last-batch memo) as in a reward call."""
    table = table if table is not None else ScoreTable()
    terms = _image_terms(reward)
    results = list({tuple((r.prompt, *(s.texts_for([r])[0] for s, _ in terms.values()))): r
                    for r in (EditResult(task, task.source) for task in tasks)}.values())  # distinct for every term
    chunks = range(0, len(results), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"score table ({', '.join(terms)})", unit="batch")
    for start in chunks:
        batch = results[start : start + batch_size]
        for scorer, signature in terms.values():
            scores = scorer(batch).tolist()
            table.update(signature, {(r.prompt, text): value for r, text, value
                                     in zip(batch, scorer.texts_for(batch), scores, strict=True)})
    return table
