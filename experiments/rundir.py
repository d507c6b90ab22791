"""The run directory: where a training run keeps everything needed to judge and resume it.

    RUN/config.yaml        the fully resolved config
    RUN/metrics.jsonl      one line per PPO update: every metric and reward component
    RUN/samples.jsonl      one line per (evaluation, fixed test task): edited prompt and reward components
    RUN/tb/                TensorBoard events
    RUN/sft_policy/        the policy after SFT: the KL reference, rebuilt from here on resume
    RUN/checkpoints/       agent checkpoints (`step_000010/`, `latest`)
    RUN/plots/             reward_components.png, kl_entropy.png, image_grid.png, evaluations.png
    RUN/summary.md         what the run did and how it ended
    RUN/.lock, .lock.owner one writer at a time: `RunDir.lock()`; the owner file names the holder's PID and host

`RunDir` names the paths, guards them with a lock, checks an `--out` before anything is written, and appends to
the logs (repairing a last line torn by a kill); `load_run_config`, `run_policy_dir`, `load_run_tokenizer` and
`load_run_policy` read a finished (or running) run back.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from promptgym.agents import PolicyWithValue
from promptgym.agents.checkpoint import POLICY_DIR, latest_intact_checkpoint
from promptgym.experiments.builders import build_tokenizer
from promptgym.experiments.config import load_config
from promptgym.rewards.jsonl import jsonl_objects, read_jsonl

RUN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl", "summary.md")  # any of these: the directory holds a run
RUN_DIRS = ("tb", "sft_policy", "checkpoints", "plots", "eval")


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock (the message names its PID and host)."""


def say(message: str) -> None:
    """A one-line notice on stderr (what was repaired, skipped or taken over), apart from the run's output."""
    print(f"promptgym: {message}", file=sys.stderr, flush=True)


class RunDir:
    """Paths of a run directory, its lock and its append-only JSONL logs."""

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
        self.lock_file = self.root / ".lock"
        self.lock_owner = self.root / ".lock.owner"

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

        Returns how many lines were dropped, so a resumed run continues its logs with no gap and no repeat. A line
        that is not a JSON object is an error naming the file and line (`repair_torn_tail` first drops a torn last
        line).
        """
        if not path.exists():
            return 0
        rows = jsonl_objects(path.read_text(encoding="utf-8"), str(path))
        lines = path.read_text(encoding="utf-8").split("\n")
        kept = [lines[number - 1] for number, row in rows if row.get("update", 0) <= update]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        return len(rows) - len(kept)

    def repair_torn_tail(self, path: Path) -> bool:
        """Drop a last line that is not valid JSON (a write cut short by a kill) and say so; True if it did.

        Only the last line can be torn by a crash: damage anywhere else stays an error naming the file and line.
        A valid last line without its newline gets one, so the next append starts a line of its own.
        """
        if not path.is_file():
            return False
        data = path.read_bytes()
        body, _, last = data.rstrip(b"\n").rpartition(b"\n")
        try:
            json.loads(last.decode("utf-8"))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError (a multi-byte character cut in two)
            number = body.count(b"\n") + 2 if body else 1
            _write_bytes_synced(path, body + b"\n" if body else b"")
            say(f"{path}: dropped its torn last line {number} ({len(last)} bytes of unfinished JSON, the trace of "
                "a process killed while writing it)")
            return True
        if last and not data.endswith(b"\n"):
            _write_bytes_synced(path, data + b"\n")
        return False

    # -- one writer at a time
    def holds_run(self) -> bool:
        """True if the directory already holds (part of) a run: its config, logs or checkpoints."""
        return any((self.root / name).exists() for name in RUN_FILES) or any(self.checkpoints.glob("*"))

    def check_out(self, resume: bool = False, overwrite: bool = False) -> None:
        """Validate `--out` before anything is written: a directory (or a path under one) that can hold a new run.

        Raises NotADirectoryError (the path or one of its parents is a file), FileExistsError (it holds a run and
        neither `resume` nor `overwrite` is given), FileNotFoundError (`resume` of a directory without a run) or
        ValueError (both `resume` and `overwrite`).
        """
        if resume and overwrite:
            raise ValueError("--resume continues a run and --overwrite deletes it; give one of them")
        for path in (self.root, *self.root.parents):
            if path.exists():
                if not path.is_dir():
                    what = "is a file" if path == self.root else f"is under {path}, which is a file"
                    raise NotADirectoryError(f"run directory {self.root} {what}; choose another --out")
                break
        if resume and not self.config.is_file():
            raise FileNotFoundError(f"{self.config} does not exist; is {str(self.root)!r} a promptgym run directory?")
        if not resume and not overwrite and self.holds_run():
            raise FileExistsError(
                f"{self.root} already holds a run; continue it with `promptgym train --resume {self.root}` "
                "or start it again with --overwrite"
            )

    def clear(self) -> None:
        """Delete the run's own files and folders (`--overwrite`); anything else in the directory stays."""
        for name in RUN_FILES:
            (self.root / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            if (self.root / name).is_dir():
                trash = self.root / f".old-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(self.root / name, trash)  # out of the way at once; a crash leaves a hidden folder
                shutil.rmtree(trash)

    @contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the run directory's lock (`RUN/.lock`, a `filelock.FileLock`) while writing it.

        A second writer gets a RunLockedError naming the holder's PID and host (from `RUN/.lock.owner`). The lock
        is the operating system's (flock): it dies with its process, so the owner file of a killed process is
        stale; it is reported and taken over.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.lock_file, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            owner = self._owner()
            if owner is None or _alive(owner):
                raise RunLockedError(
                    f"{self.root} is in use by {self._owner_text(owner)}; wait for it to finish or choose another "
                    "directory"
                ) from None
            # a lock file that outlived its process (filelock falls back to one where flock is missing): break it
            self.lock_file.unlink(missing_ok=True)
            lock.acquire()
        try:
            previous = self._owner()
            if previous is not None:
                say(f"{self.root}: taking over a stale lock of {self._owner_text(previous)}, which "
                    f"{'is no longer running' if not _alive(previous) else 'no longer holds it'}")
            _write_bytes_synced(self.lock_owner, json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": " ".join(sys.argv)}).encode("utf-8"))
            yield self
        finally:
            self.lock_owner.unlink(missing_ok=True)
            lock.release()

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.lock_owner.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _owner_text(self, owner: dict[str, Any] | None = None) -> str:
        owner = self._owner() if owner is None else owner
        if owner is None:
            return "another process (its PID is not recorded yet)"
        return f"PID {owner.get('pid')} on host {owner.get('host')} (since {owner.get('since')}: {owner.get('command')})"


def _alive(owner: Mapping[str, Any]) -> bool:
    """Whether the owner's process still runs (assumed so when it is on another host)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner.get("pid")), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


def _write_bytes_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def newest_run(root: str | os.PathLike = "runs") -> Path | None:
    """The run directory under `root` with the most recent checkpoint (None if there is none)."""
    root = Path(root)
    pointers = [p for p in root.glob("*/checkpoints/latest") if p.is_file()] if root.is_dir() else []
    return max(pointers, key=lambda p: p.stat().st_mtime).parents[1] if pointers else None


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


START = "start"  # the checkpoint name of a run's starting policy (after SFT, before PPO): RUN/sft_policy


def run_policy_dir(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> Path:
    """The policy directory of `checkpoint` (a path or a name under `run_dir/checkpoints`, or `"start"`: the policy
    PPO started from, `RUN/sft_policy`), default the latest."""
    if checkpoint == START:
        start = Path(run_dir) / "sft_policy"
        if not (start / "config.json").is_file():
            raise FileNotFoundError(f"{start} holds no policy; is {run_dir} a run directory written by promptgym train?")
        return start
    checkpoints = Path(run_dir) / "checkpoints"
    if checkpoint is None:
        found = intact_checkpoint(checkpoints)
        if found is None:
            raise FileNotFoundError(f"no intact checkpoint under {checkpoints}; train first or pass checkpoint=")
    else:
        found = Path(checkpoint) if Path(checkpoint).is_dir() else checkpoints / str(checkpoint)
    policy_dir = found / POLICY_DIR
    if not policy_dir.is_dir():
        raise FileNotFoundError(
            f"checkpoint {str(found)!r} has no {POLICY_DIR}/ directory (not a promptgym checkpoint)"
        )
    return policy_dir


def intact_checkpoint(checkpoints: Path, move_damaged: bool = False) -> Path | None:
    """The newest checkpoint that matches its checksums; each newer damaged one is named on stderr (and, with
    `move_damaged`, renamed to a hidden `.damaged-<name>` so that the resumed run can save under its name)."""
    found, skipped = latest_intact_checkpoint(checkpoints)
    for path, reason in skipped:
        instead = f"using {found.name} instead" if found is not None else "no intact checkpoint is left"
        say(f"skipped checkpoint {path}: {reason}; {instead}")
        if move_damaged:
            aside = path.parent / f".damaged-{path.name}-{uuid.uuid4().hex[:8]}"
            os.replace(path, aside)
            say(f"moved the damaged checkpoint to {aside} (delete it once inspected)")
    return found


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
