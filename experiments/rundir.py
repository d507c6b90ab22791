"""The run directory: where a training run keeps everything needed to judge and resume it.

    RUN/config.yaml        the fully resolved config
    RUN/metrics.jsonl      one line per PPO update: every metric and reward component
    RUN/samples.jsonl      one line per (evaluation, fixed test task): edited prompt and reward components
    RUN/tb/                TensorBoard events
    RUN/sft_policy/        the policy after SFT: the KL reference, rebuilt from here on resume
    RUN/checkpoints/       agent checkpoints (`step_000010/`, `latest`)
    RUN/plots/             reward_components.png, kl_entropy.png, image_grid.png
    RUN/summary.md         what the run did and how it ended

`RunDir` names the paths and appends to the logs; `load_run_config`, `run_policy_dir`, `load_run_tokenizer` and
`load_run_policy` read a finished (or running) run back.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from promptgym.agents import PolicyWithValue, latest_checkpoint
from promptgym.agents.checkpoint import POLICY_DIR
from promptgym.experiments.builders import build_tokenizer
from promptgym.experiments.config import load_config
from promptgym.rewards.jsonl import read_jsonl


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


def read_run_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a run's JSON-lines log; a missing file or a damaged line is an error naming it."""
    return read_jsonl(path, missing_hint="is this a promptgym run directory?")


# ------------------------------------------------------------------------------- reading a finished run
def load_run_config(run_dir: str | os.PathLike) -> Any:
    """The fully resolved `ExperimentConfig` a run wrote to `run_dir/config.yaml`."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {str(run_dir)!r} a promptgym run directory?")
    return load_config(path)


def run_policy_dir(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> Path:
    """The policy directory of `checkpoint` (a path or a name under `run_dir/checkpoints`), default the latest."""
    checkpoints = Path(run_dir) / "checkpoints"
    if checkpoint is None:
        found = latest_checkpoint(checkpoints)
        if found is None:
            raise FileNotFoundError(f"no checkpoint under {checkpoints}; train first or pass checkpoint=")
    else:
        found = Path(checkpoint) if Path(checkpoint).is_dir() else checkpoints / str(checkpoint)
    policy_dir = found / POLICY_DIR
    if not policy_dir.is_dir():
        raise FileNotFoundError(
            f"checkpoint {str(found)!r} has no {POLICY_DIR}/ directory (not a promptgym checkpoint)"
        )
    return policy_dir


def _has_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file()


def load_run_tokenizer(run_dir: str | os.PathLike, policy_dir: str | os.PathLike, config: Any) -> Any:
    """The run's tokenizer: saved with the checkpoint, else with the SFT policy, else rebuilt from the config."""
    for directory in (Path(policy_dir), Path(run_dir) / "sft_policy"):
        if _has_tokenizer(directory):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(directory)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            return tokenizer
    return build_tokenizer(config)


def load_run_policy(
    run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None, config: Any = None
) -> tuple[PolicyWithValue, Any, Any, Path]:
    """(policy, tokenizer, config, policy directory) of a run's checkpoint (default: the latest).

    `config` replaces the run's own `config.yaml`; the policy goes to `config.policy.device`. A tokenizer with more
    tokens than the policy has embeddings is an error: they do not belong together.
    """
    config = load_run_config(run_dir) if config is None else config
    policy_dir = run_policy_dir(run_dir, checkpoint)
    tokenizer = load_run_tokenizer(run_dir, policy_dir, config)
    policy = PolicyWithValue.from_pretrained(policy_dir)
    if config.policy.device:
        policy = policy.to(config.policy.device)
    vocab = policy.model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ValueError(
            f"the run's tokenizer has {len(tokenizer)} tokens but the policy in {policy_dir} has {vocab} embeddings; "
            "they do not belong together"
        )
    return policy, tokenizer, config, policy_dir


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
