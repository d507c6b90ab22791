"""Experiment configs: typed dataclasses, bundled YAML presets, dotted command-line overrides.

    config = load_config("tiny", ["ppo.learning_rate=1e-5", "reward.weights.pickscore=0", "train.num_updates=3"])
    save_config(config, "runs/demo/config.yaml")           # the fully resolved config, every value written out
    assert load_config("runs/demo/config.yaml") == config   # and it loads back exactly

`load_config(name_or_path)` takes a preset name (`list_presets()`: the YAML files in
`promptgym/experiments/configs/`) or a path to a YAML file. A file may start from another with
`base: <preset name or path>` and then give only what differs (mappings are merged key by key; other values,
lists included, are replaced). Keys a file leaves out keep the dataclass defaults. Override values are parsed
as YAML (`null`, `true`, `3`, `1e-5`, `[a, b]`, `{k: v}`), with YAML 1.2's floats: `1e-5` is a number, not the
string PyYAML's YAML 1.1 rules make of it. A bad key or value raises `ConfigError` naming the dotted key, the
value and what is allowed.

The `ppo` and `sft` sections are the agents' own `PPOConfig` and `SFTConfig` (plus `enabled`), so their range
checks live in one place. The top-level `seed` is the run seed: it seeds the tiny policy's weights, the SFT data
order and PPO's sampling (`policy.seed`, `sft.seed` and `ppo.seed` always equal it and are not YAML keys).
`reward.seed` is separate: it fixes the environment (the tiny reward models' weights and the render noise), so the
seeds of a benchmark are all scored by one reward function.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from promptgym.agents.ppo import PPOConfig
from promptgym.agents.sft import SFTConfig

PRESET_PACKAGE = "promptgym.experiments"
PRESET_DIR = "configs"
YAML_SUFFIXES = (".yaml", ".yml")
SEEDED_SECTIONS = ("policy", "sft", "ppo")  # sections whose `seed` is the run seed (not written in YAML)


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the dotted key, the value and what is allowed."""


# --------------------------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    """Where tasks come from (`promptgym.envs.load_tasks` spec and splits) and how many are tracked.

    num_eval_tasks: how many tasks of `eval_split` form the fixed set whose edits go to samples.jsonl and the
        image grid at every evaluation.
    """

    SECTION: ClassVar[str] = "data"
    tasks: str = "demo"
    train_split: str = "train"
    eval_split: str = "test"
    num_eval_tasks: int = 8

    def __post_init__(self) -> None:
        for name in ("tasks", "train_split", "eval_split"):
            _check_nonempty(self, name)
        _check_int_at_least(self, "num_eval_tasks", 1)


@dataclass
class EnvConfig:
    """`PromptEditVectorEnv` sizes: tokens the policy may write, and the longest allowed encoded context."""

    SECTION: ClassVar[str] = "env"
    max_new_tokens: int = 32
    max_context_tokens: int = 64

    def __post_init__(self) -> None:
        _check_int_at_least(self, "max_new_tokens", 1)
        _check_int_at_least(self, "max_context_tokens", 1)


@dataclass
class RewardConfig:
    """Arguments of `promptgym.rewards.build_reward` (see `build_kwargs`).

    weights: per-term weights, filled in from the preset's defaults (1 : 1 : 1) so the resolved config shows all.
    renderer: keyword overrides for the renderer (tiny: `RENDER_SETTINGS`; real: also `from_pretrained` kwargs).
    integrity: keyword overrides for `ContentIntegrityScorer` (`threshold`, `mode`, `forbidden_penalty`).
    delta, normalize: which terms are scored as deltas against the source / running-normalised (null: preset's).
    seed: seeds the tiny reward models and the render noise (the environment, not the run: see the module doc).
    device: where real reward models run ("cuda"); null: the CPU.
    """

    SECTION: ClassVar[str] = "reward"
    preset: str = "tiny"
    weights: dict[str, float] = field(default_factory=dict)
    renderer: dict[str, Any] = field(default_factory=dict)
    integrity: dict[str, Any] = field(default_factory=dict)
    delta: bool | list[str] | None = None
    normalize: bool | list[str] | None = None
    on_error: Literal["raise", "zero"] = "raise"
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        from promptgym.rewards.integrity import ContentIntegrityScorer
        from promptgym.rewards.presets import PRESETS, default_weights

        if self.preset not in PRESETS:
            raise ConfigError(f"reward.preset={self.preset!r}: expected one of {list(PRESETS)}")
        terms = default_weights(self.preset)
        for name, weight in self.weights.items():
            if name not in terms:
                raise ConfigError(_unknown_message(f"reward.weights.{name}", name, terms, "reward.weights"))
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ConfigError(f"reward.weights.{name}={weight!r}: expected a finite number")
        self.weights = {name: float(w) for name, w in (terms | self.weights).items()}
        if not any(self.weights.values()):
            raise ConfigError(f"reward.weights={self.weights}: expected at least one non-zero weight")
        for name in ("delta", "normalize"):
            listed = getattr(self, name)
            if isinstance(listed, list):
                for term in listed:
                    if term not in terms:
                        raise ConfigError(
                            f"reward.{name}={listed!r}: {term!r} is not a term; terms are {list(terms)}"
                        )
        try:
            ContentIntegrityScorer(**self.integrity)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"reward.integrity={self.integrity!r}: {error}") from None
        _check_int_at_least(self, "seed", None)

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `build_reward` (add `tokenizer=` for the tiny preset)."""
        return {
            "preset": self.preset,
            "weights": dict(self.weights),
            "renderer": dict(self.renderer),
            "integrity": dict(self.integrity),
            "delta": self.delta,
            "normalize": self.normalize,
            "on_error": self.on_error,
            "seed": self.seed,
            "device": self.device,
        }


@dataclass
class PolicyConfig:
    """The policy LM: "tiny" (a random tiny BLOOM built by `PolicyWithValue.tiny` with the sizes below, seeded by
    the run seed) or a hub id / local directory for `PolicyWithValue.from_pretrained` (sizes ignored).

    device: where the policy runs (null: the CPU). dtype: weights' dtype for a pretrained policy (null: as saved).
    seed: the run seed (set from `ExperimentConfig.seed`; not a YAML key).
    """

    SECTION: ClassVar[str] = "policy"
    name_or_path: str = "tiny"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    device: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_nonempty(self, "name_or_path")
        for name in ("hidden_size", "num_layers", "num_heads"):
            _check_int_at_least(self, name, 1)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"policy.hidden_size={self.hidden_size} is not divisible by policy.num_heads={self.num_heads}; "
                "expected a multiple of num_heads"
            )
        _check_int_at_least(self, "seed", None)


@dataclass
class SFTStageConfig(SFTConfig):
    """The SFT warm start: `enabled` plus every `promptgym.agents.SFTConfig` field (this *is* an `SFTConfig`, so
    it can be passed to `sft_warm_start` as it is). Trains on `data.train_split`, held-out loss on `eval_split`."""

    enabled: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"sft.enabled={self.enabled!r}: expected true or false")


@dataclass
class TrainConfig:
    """The PPO loop: updates, and how often to evaluate the fixed tasks and checkpoint.

    eval_every: evaluate every this many updates (and always before the first and after the last).
    checkpoint_every: checkpoint every this many updates (and always after the last, and on Ctrl-C).
    keep_last: checkpoints kept on disk (older ones pruned); null keeps all.
    """

    SECTION: ClassVar[str] = "train"
    num_updates: int = 60
    eval_every: int = 10
    checkpoint_every: int = 20
    keep_last: int | None = 3

    def __post_init__(self) -> None:
        for name in ("num_updates", "eval_every", "checkpoint_every"):
            _check_int_at_least(self, name, 1)
        if self.keep_last is not None:
            _check_int_at_least(self, "keep_last", 1, "null or ")


@dataclass
class LoggingConfig:
    """What a run writes besides config, metrics.jsonl, samples.jsonl, checkpoints and summary.md."""

    SECTION: ClassVar[str] = "logging"
    tensorboard: bool = True
    plots: bool = True
    progress: bool = True


@dataclass
class ExperimentConfig:
    """Everything one `promptgym train` run needs. `seed` is the run seed (see the module doc); `name` names the
    run (a preset's name unless the file sets one)."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name={self.name!r}: expected a non-empty string")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed={self.seed!r}: expected an integer")
        for section in dataclasses.fields(self):
            expected = _SECTION_TYPES.get(section.name)
            if expected is not None and not isinstance(getattr(self, section.name), expected):
                value = getattr(self, section.name)
                raise ConfigError(f"{section.name}={value!r}: expected a {expected.__name__}")
        # the run seed, copied into the seeded sections; new objects, so a config made by dataclasses.replace
        # never changes the sections of the config it came from
        for name in SEEDED_SECTIONS:
            if getattr(self, name).seed != self.seed:
                setattr(self, name, dataclasses.replace(getattr(self, name), seed=self.seed))


_SECTION_TYPES: dict[str, type] = {
    "data": DataConfig,
    "env": EnvConfig,
    "policy": PolicyConfig,
    "reward": RewardConfig,
    "sft": SFTStageConfig,
    "ppo": PPOConfig,
    "train": TrainConfig,
    "logging": LoggingConfig,
}


# ----------------------------------------------------------------------------------------- dict <-> config
def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as plain YAML-ready values, in field order (the sections' run seeds left out: they are `seed`)."""
    out: dict[str, Any] = {"name": config.name, "seed": config.seed}
    for name, cls in _SECTION_TYPES.items():
        section = getattr(config, name)
        values = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(cls)}
        if name in SEEDED_SECTIONS:
            values.pop("seed")
        if name == "sft":
            values = {"enabled": values.pop("enabled"), **values}
        out[name] = values
    return out


def config_from_dict(values: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from plain values (missing keys keep their defaults); errors name the key."""
    _check_mapping("config", values)
    top = ["name", "seed", *_SECTION_TYPES]
    for key in values:
        if key not in top:
            hint = " ('base' is only read by load_config, from a file)" if key == "base" else ""
            raise ConfigError(_unknown_message(str(key), key, top, "the config") + hint)
    kwargs: dict[str, Any] = {}
    for key in ("name", "seed"):
        if key in values:
            kwargs[key] = _coerce(key, values[key], str if key == "name" else int)
    for name, cls in _SECTION_TYPES.items():
        if name in values:
            kwargs[name] = _build_section(name, cls, values[name])
    return ExperimentConfig(**kwargs)


def _build_section(name: str, cls: type, values: Any) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name}={values!r}: expected a mapping with keys {_section_keys(name, cls)}")
    hints = typing.get_type_hints(cls)
    allowed = _section_keys(name, cls)
    kwargs = {}
    for key, value in values.items():
        dotted = f"{name}.{key}"
        if name in SEEDED_SECTIONS and key == "seed":
            raise ConfigError(f"{dotted}={value!r}: {name}.seed is the run seed; set the top-level 'seed' instead")
        if key not in allowed:
            raise ConfigError(_unknown_message(dotted, key, allowed, repr(name)))
        kwargs[key] = _coerce(dotted, value, hints[key])
    try:
        if cls is PPOConfig:
            return PPOConfig.from_dict(kwargs)
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:  # the agents' validation: say it with the dotted key
        message = str(error)  # e.g. "PPOConfig.n_epochs=0; expected a positive integer" -> "ppo.n_epochs=0; ..."
        renamed = re.sub(r"\b(PPOConfig|SFTConfig)\.", f"{name}.", message)
        raise ConfigError(renamed if renamed != message else f"{name}: {message}") from None


def _section_keys(name: str, cls: type) -> list[str]:
    keys = [f.name for f in dataclasses.fields(cls)]
    if name in SEEDED_SECTIONS:
        keys.remove("seed")
    return keys


# ------------------------------------------------------------------------------------------- load / save
def list_presets() -> list[str]:
    """Names of the bundled presets (YAML files in promptgym/experiments/configs/)."""
    folder = importlib.resources.files(PRESET_PACKAGE) / PRESET_DIR
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_config(name_or_path: str | os.PathLike = "tiny", overrides: Sequence[str] = ()) -> ExperimentConfig:
    """A preset name or YAML path, its `base` chain merged under it, then `overrides` ("section.key=value")."""
    if isinstance(overrides, str):
        raise ConfigError(f"overrides={overrides!r}: expected a list of 'key=value' strings, not one string")
    values, default_name = _load_layers(name_or_path, chain=())
    if "name" not in values:  # a preset's own name, never one inherited from its base
        values["name"] = default_name
    for override in overrides:
        key, value = parse_override(override)
        _set_dotted(values, key, value, override)
    return config_from_dict(values)


def apply_overrides(config: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """A new config: `config` with dotted overrides applied (e.g. `["seed=1"]`, as `--set` does)."""
    values = config_to_dict(config)
    for override in overrides:
        key, value = parse_override(override)
        _set_dotted(values, key, value, override)
    return config_from_dict(values)


def save_config(config: ExperimentConfig, path: str | os.PathLike) -> Path:
    """Write the fully resolved config as YAML (atomically; parent folders made); `load_config(path)` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# promptgym experiment config, fully resolved: load_config(path) reproduces it exactly\n"
    text += yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True, default_flow_style=False)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def parse_override(text: str) -> tuple[str, Any]:
    """Split "a.b.c=value" into ("a.b.c", YAML-parsed value)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r}: expected 'key=value', e.g. 'ppo.learning_rate=1e-5'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"override {text!r}: the key {key!r} is empty or has an empty part; expected 'section.key=value'"
        )
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value {raw!r} is not valid YAML ({error})") from None
    return key, value


def _load_layers(name_or_path: str | os.PathLike, chain: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """The raw mapping of a preset/file with its `base` chain merged in, and the name it gives a run."""
    text, where, default_name, folder = _read_source(name_or_path, chain)
    if where in chain:
        raise ConfigError(f"config {where!r} inherits from itself: base chain {' -> '.join([*chain, where])}")
    try:
        values = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"config {where!r} is not valid YAML: {error}") from None
    values = {} if values is None else values
    _check_mapping(f"config {where!r}", values)
    values = dict(values)
    base = values.pop("base", None)
    if base is None:
        return values, default_name
    if not isinstance(base, str) or not base:
        raise ConfigError(f"base={base!r} in {where!r}: expected a preset name or a path to a YAML file")
    if folder is not None and _looks_like_path(base) and not Path(base).is_absolute():
        base = str(folder / base)  # a relative base path is relative to the file that names it
    merged, _ = _load_layers(base, (*chain, where))
    merged.pop("name", None)  # the run is named by the file asked for, not by its base
    return _deep_merge(merged, values), default_name


def _read_source(name_or_path: str | os.PathLike, chain: tuple[str, ...]) -> tuple[str, str, str, Path | None]:
    """(YAML text, where it came from, default run name, folder of a file or None for a preset)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ConfigError(f"config={name_or_path!r}: expected a preset name or a path to a YAML file")
    text_name = os.fspath(name_or_path)
    if _looks_like_path(text_name):
        path = Path(text_name)
        if not path.is_file():
            via = f" (the base of {chain[-1]!r})" if chain else ""
            raise FileNotFoundError(f"config file not found: {text_name!r}{via} (resolved to {str(path.resolve())!r})")
        return path.read_text(encoding="utf-8"), str(path), path.stem, path.parent
    presets = list_presets()
    if text_name not in presets:
        close = difflib.get_close_matches(text_name, presets, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        via = f" (the base of {chain[-1]!r})" if chain else ""
        raise ConfigError(
            f"unknown config preset {text_name!r}{via}; {hint}presets are {presets}, or give a path to a .yaml file"
        )
    resource = importlib.resources.files(PRESET_PACKAGE) / PRESET_DIR / f"{text_name}.yaml"
    return resource.read_text(encoding="utf-8"), f"preset:{text_name}", text_name, None


def _looks_like_path(text: str) -> bool:
    return text.endswith(YAML_SUFFIXES) or "/" in text or os.sep in text


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`: mappings merge key by key, everything else (lists included) is replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(values: dict[str, Any], key: str, value: Any, override: str) -> None:
    node = values
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise ConfigError(
                f"override {override!r}: {prefix}={child!r} is not a mapping, so it has no key {parts[i + 1]!r}"
            )
        node = child
    node[parts[-1]] = value


# ------------------------------------------------------------------------------------------ type checks
def _coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` checked against the type `hint` (ints widen to float for float fields); else a ConfigError."""
    ok, result = _match(value, hint)
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {_describe(hint)}")
    return result


def _match(value: Any, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True, value
    if hint is type(None):
        return value is None, value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            ok, result = _match(value, option)
            if ok:
                return True, result
        return False, value
    if origin is Literal:
        return value in typing.get_args(hint) and isinstance(value, str), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if hint is str:
        return isinstance(value, str), value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            return False, value
        items = [_match(v, item) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return False, value
        items = {k: _match(v, item) for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    raise TypeError(f"config field type {hint!r} is not supported")  # a programming error in this module


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(option) for option in typing.get_args(hint)]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])[2:]}s"
    if origin is dict:
        return (
            f"a mapping from strings to {_describe(typing.get_args(hint)[1]).removeprefix('a ').removeprefix('an ')}s"
        )
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
        Any: "any value",
    }.get(hint, repr(hint))


# ---------------------------------------------------------------------------------------------- helpers
def _plain(value: Any) -> Any:
    """A YAML-safe copy (dicts and lists copied, so the dump never aliases the config)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _unknown_message(dotted: str, key: Any, allowed: Any, where: str) -> str:
    """ "unknown key 'ppo.learning_rat'; did you mean 'ppo.learning_rate'? valid keys of 'ppo': [...]"."""
    allowed = list(allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    prefix = dotted[: len(dotted) - len(str(key))]
    hint = f"; did you mean {prefix + close[0]!r}?" if close else ";"
    return f"unknown key {dotted!r}{hint} valid keys of {where}: {allowed}"


def _check_mapping(where: str, values: Any) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} is {values!r}; expected a mapping of sections (data, env, policy, ...)")
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(f"{where} has the key {key!r}; expected string keys")


def _check_nonempty(section: Any, name: str) -> None:
    value = getattr(section, name)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{section.SECTION}.{name}={value!r}: expected a non-empty string")


def _check_int_at_least(section: Any, name: str, low: int | None, alternatives: str = "") -> None:
    value = getattr(section, name)
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        allowed = "an integer" if low is None else f"an integer >= {low}"
        raise ConfigError(f"{section.SECTION}.{name}={value!r}: expected {alternatives}{allowed}")


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads exponent floats without a dot (`1e-5`), as YAML 1.2 does."""


_Loader.add_implicit_resolver(  # copies SafeLoader's resolver table first: the global SafeLoader is untouched
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)
