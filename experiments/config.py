"""Experiment configs: validated dataclasses, bundled YAML presets, dotted command-line overrides.

    config = load_config("tiny", ["ppo.learning_rate=1e-5", "reward.weights.pickscore=0", "train.num_updates=3"])
    save_config(config, "runs/demo/config.yaml")           # the fully resolved config, every value written out
    assert load_config("runs/demo/config.yaml") == config   # and it loads back exactly
    print(config_yaml(config))                             # the same, each key with its doc (`promptgym config show`)

`load_config(name_or_path)` takes a preset name (`list_presets()`: the YAML files in
`promptgym/experiments/configs/`) or a path to a YAML file. A file may start from another with
`base: <preset name or path>` and then give only what differs (mappings are merged key by key; other values,
lists included, are replaced). Keys a file leaves out keep the dataclass defaults. Override values are parsed
as YAML (`null`, `true`, `3`, `1e-5`, `[a, b]`, `{k: v}`), with YAML 1.2's floats: `1e-5` is a number, not the
string PyYAML's YAML 1.1 rules make of it. A bad key or value raises `ConfigError` naming the dotted key, the
value and what is allowed.

Every section is a `promptgym.agents.validation.config_dataclass`: a standard dataclass that pydantic v2 checks in
strict mode, each field's type, range (`Field(ge=1)`) and doc (`Field(description=...)`) written once, on the
field. Why pydantic and not OmegaConf (measured on this schema, `/tmp`-style prototype of both): pydantic's strict
dataclasses rejected all 18 wrong values we test (`'3'` for an int, `1` for a bool, NaN, out-of-range numbers,
`[1]` for a list of strings) and keep `dataclasses.replace`/`fields`; OmegaConf 2.4 accepted 9 of them (it
converts strings and ints, has no range checks at all and no `Literal`). What OmegaConf adds (merging, dotlists)
is the ~40 lines of `_deep_merge`/`_set_dotted` below, which also keep this module's did-you-mean messages.

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
import inspect
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field

from promptgym.agents.ppo import PPOConfig
from promptgym.agents.sft import SFTConfig
from promptgym.agents.validation import (
    ConfigError,
    bounds,
    config_dataclass,
    field_docs,
    rename_owner,
    unknown_key_message,
)
from promptgym.experiments import DEFAULT_CONFIG

__all__ = [
    "ConfigError", "DataConfig", "EnvConfig", "ExperimentConfig", "LoggingConfig", "PolicyConfig", "RewardConfig",
    "SFTStageConfig", "TrainConfig", "apply_overrides", "config_from_dict", "config_to_dict", "config_yaml",
    "list_presets", "load_config", "parse_override", "preset_layer", "save_config",
]  # fmt: skip

PRESET_PACKAGE = "promptgym.experiments"
PRESET_DIR = "configs"
YAML_SUFFIXES = (".yaml", ".yml")
SEEDED_SECTIONS = ("policy", "sft", "ppo")  # sections whose `seed` is the run seed (not written in YAML)
RUN_SEED_DOC = "the run seed (set from the top-level `seed`; not a YAML key)"


# --------------------------------------------------------------------------------------------- sections
@config_dataclass(name="data")
class DataConfig:
    """Where tasks come from (a `promptgym.envs.load_tasks` spec and its splits) and how many are tracked."""

    tasks: Annotated[str, Field(min_length=1, description=(
        'load_tasks spec: "demo", a .jsonl/.csv path, or "hf:<dataset id or dir>"'
    ))] = "demo"
    train_split: Annotated[str, Field(min_length=1, description="split SFT and PPO train on")] = "train"
    sft_share: Annotated[float, Field(gt=0, le=1, description=(
        "share of train_split's sources SFT trains on (by a hash of the source); below 1, PPO trains on the other "
        "sources, which SFT never saw; 1: both train on all of train_split"
    ))] = 1.0
    control_dropout: Annotated[float | None, Field(ge=0, le=1, description=(
        "control prefixes (promptgym.envs.controls): each SFT task gets a random control tag and the matching "
        "target with probability 1 - this (prefix dropout); null: no control prefixes"
    ))] = None
    eval_split: Annotated[str, Field(min_length=1, description=(
        "held-out split: SFT held-out loss, evaluation, samples.jsonl"
    ))] = "test"
    conversations: Annotated[str, Field(min_length=1, description=(
        'load_conversations spec of the chat env (env.kind: chat) and of sft.chat_turns: "demo" or a .jsonl '
        "path; its train_split / eval_split are used as the tasks' are"
    ))] = "demo"
    num_eval_tasks: Annotated[int, Field(ge=1, description=(
        "how many tasks of eval_split form the fixed set whose edits go to samples.jsonl and the image grid at "
        "every evaluation"
    ))] = 8


@config_dataclass(name="env")
class EnvConfig:
    """The env PPO trains on (single-turn edits or multi-turn conversations) and its sizes: tokens the policy may
    write, and the longest allowed encoded context."""

    kind: Annotated[Literal["edit", "chat"], Field(description=(
        "edit: one edit per episode (PromptEditVectorEnv on data.tasks); chat: a conversation of turns per episode "
        "(PromptChatVectorEnv on data.conversations, turns synchronised, GAE across the conversation)"
    ))] = "edit"
    max_new_tokens: Annotated[int, Field(ge=1, description=(
        "tokens the policy may write per episode (it ends at EOS or here)"
    ))] = 32
    max_context_tokens: Annotated[int, Field(ge=1, description=(
        "longest allowed encoded context (the template around source and instruction; for chat, the history "
        "too, oldest turns dropped to fit), in tokens"
    ))] = 64


@config_dataclass(name="reward")
class RewardConfig:
    """Arguments of `promptgym.rewards.build_reward` (see `build_kwargs`)."""

    preset: Annotated[str, Field(description=(
        "build_reward preset (promptgym.rewards.presets.PRESETS): tiny | synth | synth-gold | surrogate | diffchat-sd15"
    ))] = "tiny"
    weights: Annotated[dict[str, float], Field(description=(
        "per-term weights, filled in from the preset's (1.0 each; surrogate: 0.7, 0.3, 1.0) so the resolved config "
        "shows all"
    ))] = field(default_factory=dict)
    renderer: Annotated[dict[str, Any], Field(description=(
        "keyword overrides for the renderer (tiny: RENDER_SETTINGS; real: also from_pretrained kwargs), "
        "e.g. {num_inference_steps: 2, images_per_prompt: 1}"
    ))] = field(default_factory=dict)
    integrity: Annotated[dict[str, Any], Field(description=(
        "keyword overrides for ContentIntegrityScorer (threshold, mode, forbidden_penalty, edit_weight)"
    ))] = field(default_factory=dict)
    delta: Annotated[bool | list[str] | None, Field(description=(
        "terms scored as deltas against the source render (true: all, or a list of terms); null: the preset's"
    ))] = None
    normalize: Annotated[bool | list[str] | None, Field(description=(
        "terms running-normalised (true: all, or a list of terms); null: the preset's"
    ))] = None
    on_error: Annotated[Literal["raise", "zero"], Field(description=(
        "a failed render: raise (stop), or zero (score it 0)"
    ))] = "raise"
    seed: Annotated[int, Field(description=(
        "seeds the tiny reward models and the render noise: the environment, not the run (see the module doc)"
    ))] = 0
    device: Annotated[str | None, Field(description='where real reward models run, e.g. "cuda"; null: the CPU')] = None
    monitors: Annotated[bool | Literal["eval"], Field(description=(
        "the gold monitors of the synth-world presets: true (every reward call, training included), eval (only "
        "the evaluations: the fixed test tasks during training, promptgym eval, the bench's; surrogate then "
        "renders nothing in training) or false (no gold columns)"
    ))] = True
    score_table: Annotated[str | None, Field(description=(
        "precomputed source scores of the image terms (promptgym.rewards.score_table): auto (synth: the shipped "
        "table of the demo tasks' sources; used where the render settings and weights match), a path, or null "
        "(render every source)"
    ))] = "auto"

    def __post_init__(self) -> None:
        from promptgym.rewards.integrity import ContentIntegrityScorer
        from promptgym.rewards.presets import DEFAULT_WEIGHTS, PRESETS, SYNTH_OPTIONAL_WEIGHTS, default_weights

        if self.preset not in PRESETS:
            raise ConfigError(f"reward.preset={self.preset!r}: expected one of {list(PRESETS)}")
        terms = default_weights(self.preset)
        # synth-gold: the proxy terms are monitors (or, the optional ones, off), weight 0 only
        monitors = DEFAULT_WEIGHTS | SYNTH_OPTIONAL_WEIGHTS if self.preset == "synth-gold" else {}
        for name, weight in self.weights.items():
            if name in monitors and weight == 0:
                continue
            if name in monitors:
                raise ConfigError(f"reward.weights.{name}={weight}: in synth-gold the proxy terms are monitors; "
                                  f"give them weight 0 (the terms are {list(terms)})")
            if name not in terms:
                raise ConfigError(unknown_key_message(f"reward.weights.{name}", name, terms, "reward.weights"))
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
            "monitors": self.monitors is not False,
            "score_table": self.score_table,
        }


@config_dataclass(name="policy")
class PolicyConfig:
    """The policy LM: a random tiny BLOOM (`PolicyWithValue.tiny`) or a pretrained causal LM."""

    name_or_path: Annotated[str, Field(min_length=1, description=(
        '"tiny" (a random tiny BLOOM of the sizes below, seeded by the run seed), or a hub id / local directory '
        "for PolicyWithValue.from_pretrained"
    ))] = "tiny"
    hidden_size: Annotated[int, Field(ge=1, description=(
        "tiny BLOOM hidden size, a multiple of num_heads (ignored for a pretrained policy)"
    ))] = 64
    num_layers: Annotated[int, Field(ge=1, description="tiny BLOOM layers (ignored for a pretrained policy)")] = 2
    num_heads: Annotated[int, Field(ge=1, description=(
        "tiny BLOOM attention heads (ignored for a pretrained policy)"
    ))] = 4
    device: Annotated[str | None, Field(description='where the policy runs, e.g. "cuda"; null: the CPU')] = None
    dtype: Annotated[Literal["float32", "float16", "bfloat16"] | None, Field(description=(
        "weights' dtype of a pretrained policy; null: as saved"
    ))] = None
    seed: Annotated[int, Field(description=RUN_SEED_DOC)] = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"policy.hidden_size={self.hidden_size} is not divisible by policy.num_heads={self.num_heads}; "
                "expected a multiple of num_heads"
            )


@config_dataclass(name="sft")
class SFTStageConfig(SFTConfig):
    """The SFT warm start: `enabled` plus every `promptgym.agents.SFTConfig` field (this *is* an `SFTConfig`, so
    it can be passed to `sft_warm_start` as it is). Trains on `data.train_split`, held-out loss on `eval_split`."""

    enabled: Annotated[bool, Field(description="run the SFT warm start before PPO")] = True
    chat_turns: Annotated[bool, Field(description=(
        "also fine-tune on every turn of data.conversations (the SFT share of train_split's sources) along its "
        "reference path, in the chat context (history + edit) the chat env shows"
    ))] = False


@config_dataclass(name="train")
class TrainConfig:
    """The PPO loop: updates, and how often to evaluate the fixed tasks and checkpoint."""

    num_updates: Annotated[int, Field(ge=1, description="PPO updates")] = 60
    eval_every: Annotated[int, Field(ge=1, description=(
        "evaluate every this many updates (and always before the first and after the last)"
    ))] = 10
    checkpoint_every: Annotated[int, Field(ge=1, description=(
        "checkpoint every this many updates (and always after the last, and on Ctrl-C)"
    ))] = 20
    keep_last: Annotated[int | None, Field(ge=1, description=(
        "checkpoints kept on disk (older ones pruned); null keeps all"
    ))] = 3


@config_dataclass(name="logging")
class LoggingConfig:
    """What a run writes besides config, metrics.jsonl, samples.jsonl, checkpoints and summary.md."""

    tensorboard: Annotated[bool, Field(description="TensorBoard event files")] = True
    plots: Annotated[bool, Field(description="plots/ (training curves, image grids) at the end of the run")] = True
    progress: Annotated[bool, Field(description="progress bars on the terminal")] = True


@config_dataclass(name="")
class ExperimentConfig:
    """Everything one `promptgym train` run needs."""

    name: Annotated[str, Field(min_length=1, description=(
        "names the run (a preset's or file's name unless the file sets one)"
    ))] = "experiment"
    seed: Annotated[int, Field(description=(
        "the run seed: tiny policy weights, SFT data order, PPO sampling (not the reward's: reward.seed)"
    ))] = 0
    data: DataConfig = field(default_factory=DataConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        # the run seed, copied into the seeded sections; new objects, so a config made by dataclasses.replace
        # never changes the sections of the config it came from
        for name in SEEDED_SECTIONS:
            if getattr(self, name).seed != self.seed:
                setattr(self, name, dataclasses.replace(getattr(self, name), seed=self.seed))


SECTIONS: dict[str, type] = {
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
    for name, cls in SECTIONS.items():
        section = getattr(config, name)
        out[name] = {key: _plain(getattr(section, key)) for key in _section_keys(name, cls)}
    return out


def config_from_dict(values: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from plain values (missing keys keep their defaults); errors name the key."""
    _check_mapping("config", values)
    top = ["name", "seed", *SECTIONS]
    for key in values:
        if key not in top:
            hint = " ('base' is only read by load_config, from a file)" if key == "base" else ""
            raise ConfigError(unknown_key_message(str(key), key, top, "the config") + hint)
    kwargs = {key: values[key] for key in ("name", "seed") if key in values}
    for name, cls in SECTIONS.items():
        if name in values:
            kwargs[name] = _build_section(name, cls, values[name])
    return ExperimentConfig(**kwargs)


def _build_section(name: str, cls: type, values: Any) -> Any:
    if values is None:
        values = {}
    allowed = _section_keys(name, cls)
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name}={values!r}: expected a mapping with keys {allowed}")
    for key, value in values.items():
        dotted = f"{name}.{key}"
        if name in SEEDED_SECTIONS and key == "seed":
            raise ConfigError(f"{dotted}={value!r}: {name}.seed is the run seed; set the top-level 'seed' instead")
        if key not in allowed:
            raise ConfigError(unknown_key_message(dotted, key, allowed, repr(name)))
    try:
        return cls(**values)
    except ConfigError as error:  # e.g. "PPOConfig.n_epochs=0: ..." -> "ppo.n_epochs=0: ..."
        raise ConfigError(rename_owner(str(error), cls, name)) from None


def _section_keys(name: str, cls: type) -> list[str]:
    """The YAML keys of a section, in the order files list them (`sft.enabled` first)."""
    keys = [f.name for f in dataclasses.fields(cls)]
    if name in SEEDED_SECTIONS:
        keys.remove("seed")
    if name == "sft":
        keys.insert(0, keys.pop(keys.index("enabled")))
    return keys


# ------------------------------------------------------------------------------------------- load / save

def list_presets() -> list[str]:
    """Names of the bundled presets (YAML files in promptgym/experiments/configs/)."""
    folder = importlib.resources.files(PRESET_PACKAGE) / PRESET_DIR
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_config(
    name_or_path: str | os.PathLike = DEFAULT_CONFIG,
    overrides: Sequence[str] = (),
    layer: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """A preset name or YAML path, its `base` chain merged under it, then `layer` (a mapping of sections, merged as
    a YAML file's own keys are over its base), then `overrides` ("section.key=value")."""
    if isinstance(overrides, str):
        raise ConfigError(f"overrides={overrides!r}: expected a list of 'key=value' strings, not one string")
    values, default_name = _load_layers(name_or_path, chain=())
    if "name" not in values:  # a preset's own name, never one inherited from its base
        values["name"] = default_name
    if layer is not None:
        _check_mapping("layer", layer)
        values = _deep_merge(values, _plain(layer))
    for override in overrides:
        key, value = parse_override(override)
        _set_dotted(values, key, value, override)
    return config_from_dict(values)


def preset_layer(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The keys a preset or YAML file sets itself, without its `base` chain and its `name` (e.g. the `ppo` section
    that makes the `ppo+adm` ablation), to lay over another config with `load_config(..., layer=...)`."""
    text, where, _, _ = _read_source(name_or_path, chain=())
    values = yaml.load(text, Loader=_Loader) or {}
    _check_mapping(f"config {where!r}", values)
    return {key: value for key, value in values.items() if key not in ("base", "name")}


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


def config_yaml(config: ExperimentConfig, width: int = 116) -> str:
    """The fully resolved config as YAML with each key's doc (and range) as a comment (`promptgym config show`).

    It loads back as the same config: `load_config(path_of_this_text) == config` (for the same `name`).
    """
    column = 30  # where the comments start, as in the bundled presets

    def commented(text: str, doc: str) -> list[str]:
        if not doc:
            return [text]
        pad = max(column, len(text) + 1)
        wrapped = textwrap.wrap(doc, max(40, width - pad - 2))
        return [f"{text:<{pad}}# {wrapped[0]}", *(f"{'':<{pad}}# {more}" for more in wrapped[1:])]

    def entry(indent: str, key: str, value: Any) -> str:
        flow = yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False, allow_unicode=True, width=1e9)
        return indent + flow.strip()[1:-1]  # one "key: value" line; mappings and lists in flow style

    values = config_to_dict(config)
    docs = field_docs(ExperimentConfig)
    lines = [f"# promptgym config {config.name!r}, fully resolved; each key's doc (and range) follows it"]
    for key in ("name", "seed"):
        lines += commented(entry("", key, values[key]), docs[key])
    for name, cls in SECTIONS.items():
        lines += ["", *commented(f"{name}:", _first_paragraph(cls.__doc__))]
        section_docs = field_docs(cls)
        for key, value in values[name].items():
            doc = section_docs[key] + (f"; range {bounds(cls, key).removeprefix('in ')}" if bounds(cls, key) else "")
            lines += commented(entry("  ", key, value), doc)
    return "\n".join(lines) + "\n"


def _first_paragraph(doc: str | None) -> str:
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


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


# ---------------------------------------------------------------------------------------------- helpers
def _plain(value: Any) -> Any:
    """A YAML-safe copy (dicts and lists copied, so the dump never aliases the config)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_mapping(where: str, values: Any) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} is {values!r}; expected a mapping of sections (data, env, policy, ...)")
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(f"{where} has the key {key!r}; expected string keys")


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads exponent floats without a dot (`1e-5`), as YAML 1.2 does."""


_Loader.add_implicit_resolver(  # copies SafeLoader's resolver table first: the global SafeLoader is untouched
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)
