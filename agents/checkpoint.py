"""Checkpoints that resume a training run exactly: policy, value head, optimizer, KL controller, reward stats, RNGs.

Safetensors + JSON only (nothing pickled), one directory per checkpoint:

    step_000100/
      meta.json               format version, promptgym version, creation time, {file: size} and {file: sha256}
                              of every file (verified on load: a damaged file is an error naming it)
      policy/                 PolicyWithValue.save_pretrained (+ tokenizer): plain AutoModelForCausalLM loads it
      optimizer.safetensors   every tensor of optimizer.state_dict(), keyed "state.{param_index}.{name}"
      optimizer.json          the rest of that state dict (param_groups, float steps); tensors as {"__tensor__": key}
      trainer_state.json      counters, extra, KL controller and reward-normalisation state
      rng.safetensors         torch CPU (and CUDA) generator states, named torch.Generators
      rng.json                numpy and Python global RNGs, named numpy/Python generators
    latest                    a one-line file naming the newest checkpoint directory

A checkpoint is written into a hidden sibling `.tmp-<name>-<random>`, fsynced, then renamed into place, so a
crash never leaves a half-written checkpoint under its final name (hidden directories are never loaded).
Damage after that (a bad disk, a truncated copy) is caught by the checksums: `latest_intact_checkpoint` skips a
damaged checkpoint and names it, so a run resumes from the newest one that is whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from promptgym.agents.policy import CRITIC_DIR, VALUE_HEAD_FILE, PolicyWithValue

FORMAT_VERSION = 1  # meta.json's "sha256" was added without a bump: checkpoints without it are checked by size only
META_FILE, POLICY_DIR, LATEST_FILE = "meta.json", "policy", "latest"
CHECKSUM_FILE = "checksums.json"  # the sha256 of every file of a model directory written outside a checkpoint
Generator = np.random.Generator | torch.Generator | random.Random


class CheckpointDamagedError(ValueError):
    """A checkpoint (or a checksummed model directory) whose files are missing, truncated or altered."""


class Stateful(Protocol):
    """Anything with JSON-able `state_dict()`/`load_state_dict()`: KL controllers, `CompositeReward`."""

    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class CheckpointState:
    """What `load_checkpoint` read besides the objects it restored in place."""

    path: Path
    policy_path: Path  # a transformers model directory: AutoModelForCausalLM / PolicyWithValue.from_pretrained
    counters: dict[str, int | float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    rng_restored: bool = False


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    policy: PolicyWithValue,
    optimizer: torch.optim.Optimizer | None = None,
    kl_controller: Stateful | None = None,
    reward: Stateful | None = None,
    counters: Mapping[str, int | float] | None = None,
    extra: Mapping[str, Any] | None = None,
    rng: bool = True,
    generators: Mapping[str, Generator] | None = None,
    tokenizer=None,
    keep_last: int | None = None,
) -> Path:
    """Atomically write a checkpoint to `directory` (replacing one of that name), point `latest` at it, prune."""
    final = Path(directory)
    if final.name in ("", LATEST_FILE) or final.name.startswith("."):
        raise ValueError(f"directory={str(final)!r}; expected a name that is not {LATEST_FILE!r} and not hidden")
    if generators and not rng:
        raise ValueError("generators were given with rng=False; pass rng=True to save their states")
    if keep_last is not None:
        _check_keep_last(keep_last)
    counters = dict(counters or {})
    for name, value in counters.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"counters[{name!r}]={value!r}; expected str keys and int or float values")
    rng_state = _rng_state(generators or {}) if rng else None  # first, before anything could draw
    trainer_state = {
        "counters": counters,
        "extra": dict(extra or {}),
        "kl_controller": None if kl_controller is None else kl_controller.state_dict(),
        "reward": None if reward is None else reward.state_dict(),
    }
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        policy.save_pretrained(tmp / POLICY_DIR)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / POLICY_DIR)
        if optimizer is not None:
            _write_pair(tmp, "optimizer", optimizer.state_dict())
        _write_pair(tmp, "trainer_state", trainer_state)
        if rng_state is not None:
            _write_pair(tmp, "rng", rng_state)
        files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        meta = {
            "format_version": FORMAT_VERSION,
            "promptgym_version": _promptgym_version(),
            "created": datetime.now(timezone.utc).isoformat(),
            "created_ns": time.time_ns(),
            "files": files,
            "sha256": file_digests(tmp),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        _fsync_tree(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomic(final.parent / LATEST_FILE, final.name + "\n")
    if keep_last is not None:
        prune_checkpoints(final.parent, keep_last)
    return final


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    policy: PolicyWithValue | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    kl_controller: Stateful | None = None,
    reward: Stateful | None = None,
    generators: Mapping[str, Generator] | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> CheckpointState:
    """Restore the given objects in place from a checkpoint (and the global RNGs); return counters and extra."""
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    meta = _read_meta(path)
    if policy is not None:
        _load_policy_weights(policy, path / POLICY_DIR)
    if optimizer is not None:
        optimizer.load_state_dict(_read_pair(path, "optimizer", str(map_location), what="optimizer"))
    trainer = _read_pair(path, "trainer_state", "cpu", what="trainer state")
    for what, obj in (("kl_controller", kl_controller), ("reward", reward)):
        if obj is not None:
            if trainer[what] is None:
                raise ValueError(f"{what} was given but checkpoint {str(path)!r} was saved without one")
            obj.load_state_dict(trainer[what])
    rng_restored = False
    if restore_rng and ((path / "rng.json").is_file() or generators):
        _restore_rng(_read_pair(path, "rng", "cpu", what="RNG state"), generators or {}, path)
        rng_restored = True
    return CheckpointState(path, path / POLICY_DIR, trainer["counters"], trainer["extra"], meta, rng_restored)


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints directly under `run_dir`, oldest first (hidden `.tmp-*`/`.old-*` dirs are skipped)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: (_created_ns(p), p.name))


def _created_ns(path: Path) -> int:
    """When the checkpoint was written (0 when its meta.json is unreadable: `verify_checkpoint` reports that)."""
    try:
        return int(json.loads((path / META_FILE).read_text()).get("created_ns", 0))
    except (ValueError, TypeError, AttributeError):
        return 0


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint the `latest` file in `run_dir` names, else the newest complete one, else None."""
    pointer = Path(run_dir) / LATEST_FILE
    if pointer.is_file():
        candidate = Path(run_dir) / pointer.read_text().strip()
        if candidate.name and not candidate.name.startswith(".") and (candidate / META_FILE).is_file():
            return candidate
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def latest_intact_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint in `run_dir` whose files match their checksums, and the newer ones skipped with why.

    Candidates are the one `latest` names, then the others newest first; each is verified (`verify_checkpoint`).
    Returns (None, skipped) when no checkpoint is intact.
    """
    latest = latest_checkpoint(run_dir)
    candidates = ([latest] if latest is not None else []) + [p for p in reversed(list_checkpoints(run_dir)) if p != latest]
    skipped = []
    for path in candidates:
        try:
            verify_checkpoint(path)
        except (CheckpointDamagedError, FileNotFoundError) as error:
            skipped.append((path, str(error)))
            continue
        return path, skipped
    return None, skipped


def verify_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Check a checkpoint's meta.json and every file's size and sha256; return the meta (raise naming the file)."""
    return _read_meta(Path(directory))


def file_digests(root: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256 hex} of every file under `root` (except a checksums.json), sorted by path."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): _sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != CHECKSUM_FILE
    }


def write_checksums(directory: str | os.PathLike) -> Path:
    """Record the sha256 of every file of a model directory in its checksums.json (for `verify_checksums`)."""
    path = Path(directory) / CHECKSUM_FILE
    _write_atomic(path, json.dumps({"sha256": file_digests(directory)}, indent=1))
    return path


def verify_checksums(directory: str | os.PathLike) -> bool:
    """Check the files of `directory` against its checksums.json; False when it has none, raise naming a bad file."""
    directory = Path(directory)
    if not (directory / CHECKSUM_FILE).is_file():
        return False
    recorded = _read_json(directory / CHECKSUM_FILE).get("sha256", {})
    _check_digests(directory, recorded)
    return True


def _check_digests(directory: Path, recorded: Mapping[str, str]) -> None:
    for name, digest in recorded.items():
        file = directory / name
        if not file.is_file():
            raise CheckpointDamagedError(f"{file} is missing (its checksum is recorded, so it was saved)")
        actual = _sha256(file)
        if actual != digest:
            raise CheckpointDamagedError(
                f"{file} is damaged: its sha256 is {actual[:12]}..., {digest[:12]}... was recorded when it was saved"
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    """A JSON file's content; unreadable JSON is a CheckpointDamagedError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointDamagedError(f"{path} is damaged: not valid JSON ({error})") from None


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file`, with a damaged file's error naming it."""
    try:
        return load_file(path, device=device)
    except SafetensorError as error:
        raise CheckpointDamagedError(f"{path} is damaged: not a readable safetensors file ({error})") from None


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints in `run_dir` (never the `latest` one); return the deleted."""
    _check_keep_last(keep_last)
    latest = latest_checkpoint(run_dir)
    doomed = [p for p in list_checkpoints(run_dir)[:-keep_last] if p != latest]
    for path in doomed:  # rename away first: a crash mid-delete leaves a hidden dir, not a half checkpoint
        trash = path.parent / f".old-{path.name}-{uuid.uuid4().hex[:8]}"
        os.replace(path, trash)
        shutil.rmtree(trash)
    return doomed


def _check_keep_last(keep_last: int) -> None:
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last={keep_last!r}; expected None or an int >= 1")


# ---------------------------------------------------------------- tensors + JSON without pickle
def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of `obj`: tensors move to `tensors[key]`; tuples, int-keyed dicts, arrays are tagged."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    sub = (lambda k: f"{key}.{k}") if key else str
    if isinstance(obj, (tuple, list)):
        items = [_encode(v, sub(i), tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, Mapping) and all(isinstance(k, str) for k in obj):
        return {k: _encode(v, sub(k), tensors) for k, v in obj.items()}
    if isinstance(obj, Mapping) and all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
        return {"__intkeys__": {str(k): _encode(v, sub(k), tensors) for k, v in obj.items()}}
    raise TypeError(
        f"cannot store {key or 'value'}={obj!r} of type {type(obj).__name__} in a checkpoint; "
        "expected tensors, arrays, numbers, strings, None, lists, tuples or dicts with str/int keys"
    )


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `_encode`."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__intkeys__" in obj:
        return {int(k): _decode(v, tensors) for k, v in obj["__intkeys__"].items()}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _write_pair(folder: Path, name: str, obj: Any) -> None:
    """Write `obj` as `name.json`, plus `name.safetensors` when it holds tensors."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(obj, "", tensors)
    if tensors:
        save_file(tensors, folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps(encoded, indent=1))


def _read_pair(folder: Path, name: str, device: str, what: str) -> Any:
    if not (folder / f"{name}.json").is_file():
        raise ValueError(f"{what} was requested but checkpoint {str(folder)!r} has no {name}.json")
    tensor_file = folder / f"{name}.safetensors"
    tensors = load_tensors(tensor_file, device=device) if tensor_file.is_file() else {}
    return _decode(_read_json(folder / f"{name}.json"), tensors)


# ---------------------------------------------------------------- pieces
def _rng_state(generators: Mapping[str, Generator]) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    state["generators"] = {
        name: {"kind": _kind(name, gen), "state": _get_state(gen)} for name, gen in generators.items()
    }
    return state


def _kind(name: str, gen: Generator) -> str:
    for kind, cls in (("numpy", np.random.Generator), ("torch", torch.Generator), ("python", random.Random)):
        if isinstance(gen, cls):
            return kind
    raise TypeError(
        f"generators[{name!r}] is a {type(gen).__name__}; expected a numpy.random.Generator, "
        "torch.Generator or random.Random"
    )


def _get_state(gen: Generator) -> Any:
    if isinstance(gen, np.random.Generator):
        return gen.bit_generator.state
    return gen.get_state() if isinstance(gen, torch.Generator) else gen.getstate()


def _restore_rng(state: dict[str, Any], generators: Mapping[str, Generator], path: Path) -> None:
    saved = state["generators"]
    for name, gen in generators.items():  # check everything before changing anything
        kind = _kind(name, gen)
        if name not in saved or saved[name]["kind"] != kind:
            kinds = {n: s["kind"] for n, s in saved.items()}
            raise ValueError(f"generators[{name!r}] ({kind}) is not in checkpoint {str(path)!r}, which saved {kinds}")
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    for name, gen in generators.items():
        if isinstance(gen, np.random.Generator):
            gen.bit_generator.state = saved[name]["state"]
        elif isinstance(gen, torch.Generator):
            gen.set_state(saved[name]["state"])
        else:
            gen.setstate(saved[name]["state"])


def _load_policy_weights(policy: PolicyWithValue, policy_dir: Path) -> None:
    """Copy the saved LM, value head and critic tensors into `policy`, checking names and shapes first."""
    tensors = {}
    for prefix, folder in (("model.", policy_dir), ("critic.", policy_dir / CRITIC_DIR)):
        for file in sorted(folder.glob("model*.safetensors")):
            tensors.update({prefix + k: v for k, v in load_tensors(file).items()})
    tensors.update({"value_head." + k: v for k, v in load_tensors(policy_dir / VALUE_HEAD_FILE).items()})
    target = policy.state_dict(keep_vars=True)
    unexpected = sorted(set(tensors) - set(target))
    loaded_storage = {target[k].data_ptr() for k in tensors if k in target}
    missing = sorted(k for k in target if k not in tensors and target[k].data_ptr() not in loaded_storage)  # tied
    if unexpected or missing:
        raise ValueError(
            f"checkpoint {str(policy_dir)!r} does not match the policy: tensors only in the checkpoint "
            f"{unexpected[:5]}, only in the policy {missing[:5]} (a different architecture or critic?)"
        )
    for key, value in tensors.items():
        if value.shape != target[key].shape:
            raise ValueError(
                f"checkpoint tensor {key!r} has shape {tuple(value.shape)} but the policy's "
                f"has shape {tuple(target[key].shape)}"
            )
    with torch.no_grad():
        for key, value in tensors.items():
            target[key].copy_(value)


def _read_meta(path: Path) -> dict[str, Any]:
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a complete promptgym checkpoint: it has no {META_FILE}")
    meta = _read_json(path / META_FILE)
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise CheckpointDamagedError(f"{path / META_FILE} is damaged: expected an object with a 'files' table")
    found = meta.get("format_version")
    if not isinstance(found, int) or found > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has format_version={found!r}; this promptgym "
            f"({_promptgym_version()}) reads format versions <= {FORMAT_VERSION}; upgrade promptgym"
        )
    for name, size in meta["files"].items():
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual != size:
            raise CheckpointDamagedError(
                f"checkpoint {str(path)!r} is damaged: {name} has {actual} bytes, meta.json says {size}"
            )
    _check_digests(path, meta.get("sha256", {}))
    return meta


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` is renamed away first and deleted after."""
    if not final.exists():
        os.replace(tmp, final)
    else:
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        shutil.rmtree(old)
    _fsync(final.parent)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _fsync(path: Path) -> None:
    """Flush a file or directory entry to disk (POSIX)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _promptgym_version() -> str:
    try:
        return version("promptgym")
    except PackageNotFoundError:
        return "unknown"
