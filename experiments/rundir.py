"""The run directory: where a training run keeps everything needed to judge and resume it.

    RUN/config.yaml        the fully resolved config
    RUN/metrics.jsonl      one line per PPO update: every metric and reward component
    RUN/samples.jsonl      one line per (evaluation, fixed test task): edited prompt and reward components
    RUN/tb/                TensorBoard events
    RUN/sft_policy/        the policy after SFT: the KL reference, rebuilt from here on resume
    RUN/checkpoints/       agent checkpoints (`step_000010/`, `latest`)
    RUN/plots/             reward_components.png, kl_entropy.png, image_grid.png
    RUN/summary.md         what the run did and how it ended
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class RunDir:
    """Paths of a run directory and its append-only JSONL logs."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.samples = self.root / "samples.jsonl"
        self.tensorboard = self.root / "tb"
        self.sft_policy = self.root / "sft_policy"
        self.checkpoints = self.root / "checkpoints"
        self.plots = self.root / "plots"
        self.summary = self.root / "summary.md"
        self.eval = self.root / "eval"

    def create(self) -> RunDir:
        for path in (self.root, self.checkpoints, self.plots):
            path.mkdir(parents=True, exist_ok=True)
        return self

    def append_jsonl(self, path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows as JSON lines (non-finite floats written as null), flushed to disk at once."""
        with path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(_finite(row), sort_keys=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, path: Path, update: int) -> int:
        """Drop the lines whose `update` is greater than `update` (written after the checkpoint we resume from).

        Returns how many lines were dropped, so a resumed run continues its logs with no gap and no repeat.
        """
        if not path.exists():
            return 0
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if json.loads(line).get("update", 0) <= update]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        return len(lines) - len(kept)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a JSON-lines file; a missing file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is this a promptgym run directory?")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
