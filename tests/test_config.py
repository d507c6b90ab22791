"""Experiment configs: presets, base inheritance, dotted overrides, every validation error, save/load round trip,
field docs and `promptgym config show`."""

import dataclasses
import re
from pathlib import Path

import annotated_types
import pytest
import yaml

from promptgym.agents import PPOConfig, SFTConfig
from promptgym.agents.validation import allowed, field_docs
from promptgym.experiments.cli import main
from promptgym.experiments.config import (
    SECTIONS,
    SEEDED_SECTIONS,
    ConfigError,
    ExperimentConfig,
    SFTStageConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_yaml,
    list_presets,
    load_config,
    parse_override,
    save_config,
)

PRESETS = ["tiny", "diffchat-sd15", "ppo", "ppo+adm", "ppo+neg", "ppo+civalue", "diffchat", "synth", "synth-gold",
           "surrogate", "chat"]
ABLATIONS = ["ppo", "ppo+adm", "ppo+neg", "ppo+civalue", "diffchat"]
DIFFCHAT_KNOBS = ("typical_mass", "negative_fraction", "integrity_value_coef")
PRESET_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"


# ------------------------------------------------------------------------------------------------ presets
def test_list_presets_names_every_bundled_file():
    assert sorted(list_presets()) == sorted(PRESETS)
    assert sorted(list_presets()) == sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_parses_and_is_named_after_itself(name):
    config = load_config(name)
    assert isinstance(config, ExperimentConfig)
    assert config.name == name
    assert isinstance(config.ppo, PPOConfig) and isinstance(config.sft, SFTConfig)
    assert config.ppo.seed == config.seed == config.sft.seed == config.policy.seed


def test_default_is_the_synth_config_on_the_surrogate_reward_for_256_updates():
    default = load_config()
    assert default == load_config("surrogate") and default.reward.preset == "surrogate"
    synth = load_config("synth")
    # gold in the evaluations only, 8,192 reward calls (README, learning item 19); otherwise the synth config
    assert (default.reward.monitors, default.train.num_updates) == ("eval", 256)
    # an added keyword counted 4 times and self-imitation of each group's more faithful samples (README, item 23)
    assert default.reward.integrity == {"mode": "ratio", "edit_weight": 4}
    assert (default.ppo.sil_coef, default.ppo.sil_score) == (4.0, "integrity")
    assert dataclasses.replace(default, name="synth", reward=synth.reward, train=synth.train,
                               ppo=dataclasses.replace(default.ppo, sil_coef=0.0)) == synth
    assert dataclasses.replace(default.reward, preset="synth", monitors=True, weights=synth.reward.weights,
                               integrity=synth.reward.integrity) == synth.reward


def test_synth_is_the_image_reward_on_tinys_settings():
    default = load_config("synth")
    assert default.reward.preset == "synth"
    tiny = load_config("tiny")
    assert (default.policy.num_layers, default.sft.num_epochs) == (4, 20.0)  # a start that can copy (README)
    assert default.data.sft_share == 0.5  # SFT and PPO on different sources (README)
    assert (default.reward.normalize, default.reward.integrity, default.reward.weights["integrity"]) == (
        True, {"mode": "ratio"}, 4.0)  # what kept gold content; weight 4 with groups (README, item 17)
    assert default.train.num_updates == 32  # the bench's 1,024 reward calls (README, items 10 and 12)
    # of DiffChat's refinements only the integrity-aware value (README, item 12), a third of tiny's learning rate
    # (item 14), 4 samples a task with the leave-one-out baseline (item 17); the rest of PPO is tiny's
    assert default.ppo == dataclasses.replace(tiny.ppo, typical_mass=None, negative_fraction=0.0, learning_rate=1e-4,
                                              samples_per_task=4)
    assert default.ppo.group_baseline
    assert default.ppo.integrity_value_coef > 0
    same = {"name": "tiny", "reward": tiny.reward, "policy": tiny.policy, "sft": tiny.sft, "data": tiny.data,
            "train": tiny.train, "ppo": tiny.ppo}
    assert dataclasses.replace(default, **same) == tiny


def test_tiny_lists_every_key_so_it_documents_the_schema():
    raw = yaml.safe_load((PRESET_DIR / "tiny.yaml").read_text())
    resolved = config_to_dict(load_config("tiny"))
    resolved.pop("name")  # the preset's name comes from its file name
    assert list(raw) == list(resolved)
    for section, values in resolved.items():
        if isinstance(values, dict):
            assert list(raw[section]) == list(values), section


def test_tiny_is_the_full_diffchat_stack_on_the_offline_models():
    config = load_config("tiny")
    assert config.policy.name_or_path == "tiny" and config.reward.preset == "tiny"
    assert config.data.tasks == "demo" and config.sft.enabled
    assert config.ppo.typical_mass == 0.9
    assert config.ppo.negative_fraction == 0.25
    assert config.ppo.integrity_value_coef == 0.5


def test_diffchat_sd15_uses_the_real_checkpoints_on_a_gpu():
    config = load_config("diffchat-sd15")
    assert config.policy.name_or_path == "alibaba-pai/pai-bloom-1b1-text2prompt-sd"
    assert config.reward.preset == "diffchat-sd15"
    assert config.reward.device == "cuda" and config.policy.device == "cuda"
    tiny = load_config("tiny")
    assert config.logging == tiny.logging  # inherited from its base
    assert config.ppo.gamma == tiny.ppo.gamma


def test_ablation_presets_differ_exactly_in_the_diffchat_knobs():
    configs = {name: load_config(name) for name in ABLATIONS}
    knobs = {name: tuple(getattr(c.ppo, k) for k in DIFFCHAT_KNOBS) for name, c in configs.items()}
    on = knobs["diffchat"]
    off = (None, 0.0, 0.0)
    assert all(a != b for a, b in zip(on, off))
    assert knobs == {
        "ppo": off,
        "ppo+adm": (on[0], 0.0, 0.0),
        "ppo+neg": (None, on[1], 0.0),
        "ppo+civalue": (None, 0.0, on[2]),
        "diffchat": on,
    }
    reference = config_to_dict(configs["diffchat"])
    for name, config in configs.items():
        values = config_to_dict(config)
        assert values.pop("name") == name
        expected = {**reference, "ppo": reference["ppo"] | {k: getattr(config.ppo, k) for k in DIFFCHAT_KNOBS}}
        expected.pop("name")
        assert values == expected, name  # nothing but the three knobs differs


def test_diffchat_preset_equals_tiny_apart_from_its_name():
    assert dataclasses.replace(load_config("diffchat"), name="tiny") == load_config("tiny")


# ---------------------------------------------------------------------------------------------- overrides
@pytest.mark.parametrize(
    "override, get, expected",
    [
        ("ppo.learning_rate=1e-5", lambda c: c.ppo.learning_rate, 1e-5),  # YAML 1.1 would read a string
        ("ppo.learning_rate=2", lambda c: c.ppo.learning_rate, 2.0),  # an int widens to float
        ("train.num_updates=3", lambda c: c.train.num_updates, 3),
        (
            "reward.weights.pickscore=0",
            lambda c: c.reward.weights,
            {"aesthetic": 1.0, "pickscore": 0.0, "integrity": 1.0},
        ),
        ("ppo.target_kl=0.02", lambda c: c.ppo.target_kl, 0.02),
        ("ppo.typical_mass=null", lambda c: c.ppo.typical_mass, None),
        ("sft.enabled=false", lambda c: c.sft.enabled, False),
        ("logging.progress=False", lambda c: c.logging.progress, False),
        ("reward.delta=[aesthetic, integrity]", lambda c: c.reward.delta, ["aesthetic", "integrity"]),
        ("reward.delta=true", lambda c: c.reward.delta, True),
        ("reward.renderer={height: 16, width: 16}", lambda c: c.reward.renderer, {"height": 16, "width": 16}),
        ("reward.integrity.mode=ratio", lambda c: c.reward.integrity, {"mode": "ratio"}),
        ("data.tasks=hf:some/dataset", lambda c: c.data.tasks, "hf:some/dataset"),
        ("data.tasks=tasks=v2.jsonl", lambda c: c.data.tasks, "tasks=v2.jsonl"),  # split at the first '='
        ("ppo.kl_estimator=k3", lambda c: c.ppo.kl_estimator, "k3"),
        ("train.keep_last=null", lambda c: c.train.keep_last, None),
        ("name=my-run", lambda c: c.name, "my-run"),
        (" ppo.n_epochs = 2", lambda c: c.ppo.n_epochs, 2),
    ],
)
def test_override_of_each_value_type(override, get, expected):
    value = get(load_config("tiny", [override]))
    assert value == expected and type(value) is type(expected)


def test_overrides_apply_in_order_and_leave_the_rest():
    config = load_config("tiny", ["ppo.n_epochs=2", "ppo.n_epochs=3"])
    tiny = load_config("tiny")
    assert config.ppo.n_epochs == 3
    assert dataclasses.replace(config.ppo, n_epochs=tiny.ppo.n_epochs) == tiny.ppo


def test_seed_is_the_run_seed_of_policy_sft_and_ppo_but_not_of_the_reward():
    config = load_config("tiny", ["seed=7"])
    assert (config.seed, config.policy.seed, config.sft.seed, config.ppo.seed) == (7, 7, 7, 7)
    assert config.reward.seed == 0
    again = apply_overrides(config, ["seed=3"])
    assert (again.seed, again.policy.seed, again.sft.seed, again.ppo.seed) == (3, 3, 3, 3) and config.ppo.seed == 7
    replaced = dataclasses.replace(config, seed=5)
    assert (replaced.policy.seed, replaced.ppo.seed) == (5, 5)
    assert (config.policy.seed, config.ppo.seed) == (7, 7)  # new section objects, not the shared ones mutated


def test_parse_override_parses_yaml_values():
    assert parse_override("a.b=1e-3") == ("a.b", 1e-3)
    assert parse_override("a=") == ("a", None)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a='1'") == ("a", "1")
    assert yaml.safe_load("1e-3") == "1e-3"  # the global SafeLoader was left alone


# ------------------------------------------------------------------------------------------------- errors
def error_of(overrides, name="tiny") -> str:
    with pytest.raises(ConfigError) as info:
        load_config(name, overrides)
    return str(info.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("ppo.n_epochs=four", "ppo.n_epochs='four': expected an integer"),
        ("ppo.n_epochs=2.5", "ppo.n_epochs=2.5: expected an integer"),
        ("ppo.learning_rate=fast", "ppo.learning_rate='fast': expected a number"),
        ("ppo.normalize_advantage=1", "ppo.normalize_advantage=1: expected true or false"),
        ("ppo.clip_range_vf=abc", "ppo.clip_range_vf='abc': expected a number > 0 or null"),
        ("ppo.kl_estimator=k4", "ppo.kl_estimator='k4': expected one of ['k1', 'k2', 'k3']"),
        ("policy.dtype=fp8", "policy.dtype='fp8': expected one of ['float32', 'float16', 'bfloat16'] or null"),
        (
            "reward.weights={aesthetic: high}",
            "reward.weights={'aesthetic': 'high'}: expected a mapping from strings to numbers",
        ),
        ("reward.delta=[1]", "reward.delta=[1]: expected true or false, a list of strings or null"),
        ("data.tasks=null", "data.tasks=None: expected a non-empty string"),
        ("sft.enabled=maybe", "sft.enabled='maybe': expected true or false"),
        ("reward.monitors=sometimes", "reward.monitors='sometimes': expected true or false or one of ['eval']"),
        ("seed=1.5", "seed=1.5: expected an integer"),
        ("name=3", "name=3: expected a non-empty string"),
        ("ppo=3", "ppo=3: expected a mapping with keys ['learning_rate'"),
    ],
)
def test_wrong_type_names_key_value_and_expected_type(override, message):
    assert message in error_of([override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("ppo.n_epochs=0", "ppo.n_epochs=0: expected an integer >= 1"),
        ("ppo.learning_rate=-1", "ppo.learning_rate=-1: expected a number > 0"),
        ("ppo.gamma=1.5", "ppo.gamma=1.5: expected a number in [0, 1]"),
        ("ppo.corruption_rate=0", "ppo.corruption_rate=0: expected a number in (0, 1]"),
        ("ppo.ent_coef=.nan", "ppo.ent_coef=nan: expected a number"),
        ("ppo.batch_size=64", "ppo.batch_size=64 exceeds n_episodes=32"),
        ("sft.learning_rate=0", "sft.learning_rate=0: expected a number > 0"),
        ("sft.max_steps=0", "sft.max_steps=0: expected an integer >= 1 or null"),
        ("sft.warmup_ratio=1", "sft.warmup_ratio=1: expected a number in [0, 1)"),
        ("train.num_updates=0", "train.num_updates=0: expected an integer >= 1"),
        ("train.keep_last=0", "train.keep_last=0: expected an integer >= 1 or null"),
        ("data.num_eval_tasks=-2", "data.num_eval_tasks=-2: expected an integer >= 1"),
        ("env.max_new_tokens=0", "env.max_new_tokens=0: expected an integer >= 1"),
        ("data.tasks=''", "data.tasks='': expected a non-empty string"),
        ("policy.num_heads=3", "policy.hidden_size=64 is not divisible by policy.num_heads=3"),
        ("reward.preset=sdxl", "reward.preset='sdxl': expected one of ['tiny', 'synth', 'synth-gold', 'surrogate', 'diffchat-sd15']"),
        ("reward.weights={aesthetic: 0, pickscore: 0, integrity: 0}", "expected at least one non-zero weight"),
        ("reward.delta=[aesthetics]", "reward.delta=['aesthetics']: 'aesthetics' is not a term"),
        ("reward.integrity.threshold=2", "reward.integrity={'threshold': 2}: ContentIntegrityScorer: threshold=2"),
        ("reward.integrity.mood=binary", "reward.integrity={'mood': 'binary'}:"),
    ],
)
def test_out_of_range_is_reraised_with_the_dotted_key(override, message):
    assert message in error_of([override])


def test_restricted_old_logprob_needs_the_typical_set():
    assert load_config("tiny", ["ppo.old_logprob=restricted"]).ppo.old_logprob == "restricted"  # tiny has one
    assert "ppo.old_logprob='restricted' needs typical_mass" in error_of(["ppo.old_logprob=restricted"], "ppo")


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "ppo.learning_rat=1",
            "unknown key 'ppo.learning_rat'; did you mean 'ppo.learning_rate'? valid keys of 'ppo': ",
        ),
        (
            "ppx.clip_range=1",
            "unknown key 'ppx'; did you mean 'ppo'? valid keys of the config: ['name', 'seed', 'data'",
        ),
        ("trian.num_updates=1", "unknown key 'trian'; did you mean 'train'?"),
        ("sft.enable=false", "unknown key 'sft.enable'; did you mean 'sft.enabled'?"),
        ("reward.weights.pick=0", "unknown key 'reward.weights.pick'; did you mean 'reward.weights.pickscore'?"),
        ("reward.weights.zzz=0", "unknown key 'reward.weights.zzz'; valid keys of reward.weights: ['aesthetic', "),
        ("ppo.seed=3", "ppo.seed=3: ppo.seed is the run seed; set the top-level 'seed' instead"),
        ("sft.seed=3", "sft.seed=3: sft.seed is the run seed"),
        ("policy.seed=3", "policy.seed=3: policy.seed is the run seed"),
        ("base=ppo", "unknown key 'base'"),
    ],
)
def test_unknown_key_lists_valid_keys_and_suggests_the_closest(override, message):
    assert message in error_of([override])


def test_unknown_key_lists_every_valid_key_of_the_section():
    message = error_of(["ppo.learning_rat=1"])
    listed = re.search(r"valid keys of 'ppo': (\[.*\])", message).group(1)
    expected = [f.name for f in dataclasses.fields(PPOConfig) if f.name != "seed"]
    assert listed == repr(expected)


@pytest.mark.parametrize(
    "override, message",
    [
        ("ppo.learning_rate", "override 'ppo.learning_rate': expected 'key=value'"),
        ("=3", "override '=3': the key '' is empty"),
        ("ppo..clip_range=3", "the key 'ppo..clip_range' is empty or has an empty part"),
        ("ppo.clip_range=[1", "override 'ppo.clip_range=[1': the value '[1' is not valid YAML"),
        ("ppo.clip_range.low=0.1", "override 'ppo.clip_range.low=0.1': ppo.clip_range=0.2 is not a mapping"),
    ],
)
def test_malformed_override(override, message):
    assert message in error_of([override])


def test_overrides_must_be_a_list_not_one_string():
    assert "expected a list of 'key=value' strings" in error_of("ppo.n_epochs=2")


def test_unknown_preset_lists_presets_and_suggests():
    message = error_of([], name="tinny")
    assert "unknown config preset 'tinny'; did you mean 'tiny'?" in message
    assert str(sorted(PRESETS)) in message


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=re.escape(f"config file not found: {str(missing)!r}")):
        load_config(str(missing))


# ------------------------------------------------------------------------------------------ files and base
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_file_with_base_preset_overrides_only_what_it_sets(tmp_path):
    path = write(
        tmp_path / "mine.yaml", "base: ppo+adm\nppo:\n  learning_rate: 1e-4\nreward:\n  weights: {pickscore: 0}\n"
    )
    config = load_config(str(path))
    base = load_config("ppo+adm")
    assert config.name == "mine"  # the file's stem, not the base's name
    assert config.ppo == dataclasses.replace(base.ppo, learning_rate=1e-4)
    assert config.reward.weights == {"aesthetic": 1.0, "pickscore": 0.0, "integrity": 1.0}  # merged key by key
    assert dataclasses.replace(config, name=base.name, ppo=base.ppo, reward=base.reward) == base


def test_base_chain_through_relative_file_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    write(
        tmp_path / "sub" / "a.yaml",
        "base: tiny\nname: a-run\ntrain: {num_updates: 5}\nreward: {renderer: {height: 16}}\n",
    )
    path = write(tmp_path / "b.yaml", "base: sub/a.yaml\ntrain: {eval_every: 2}\nreward: {renderer: {width: 16}}\n")
    config = load_config(str(path), ["train.checkpoint_every=4"])
    assert config.name == "b"  # a base's name is never inherited
    assert (config.train.num_updates, config.train.eval_every, config.train.checkpoint_every) == (5, 2, 4)
    assert config.reward.renderer == {"height": 16, "width": 16}
    assert load_config(str(tmp_path / "sub" / "a.yaml")).name == "a-run"


def test_lists_are_replaced_not_merged(tmp_path):
    write(tmp_path / "a.yaml", "reward: {delta: [aesthetic, pickscore]}\n")
    path = write(tmp_path / "b.yaml", "base: a.yaml\nreward: {delta: [integrity]}\n")
    assert load_config(str(path)).reward.delta == ["integrity"]


def test_partial_file_without_base_keeps_the_dataclass_defaults(tmp_path):
    path = write(tmp_path / "small.yml", "train:\n  num_updates: 2\n")
    config = load_config(str(path))
    assert config == ExperimentConfig(name="small", train=dataclasses.replace(ExperimentConfig().train, num_updates=2))


def test_empty_file_is_the_defaults(tmp_path):
    assert load_config(str(write(tmp_path / "empty.yaml", ""))) == ExperimentConfig(name="empty")


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself: base chain .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(str(tmp_path / "a.yaml"))


def test_unknown_base_preset_names_the_file(tmp_path):
    path = write(tmp_path / "a.yaml", "base: tinyy\n")
    with pytest.raises(
        ConfigError, match=r"unknown config preset 'tinyy' \(the base of .*a.yaml'\); did you mean 'tiny'"
    ):
        load_config(str(path))


@pytest.mark.parametrize(
    "text, message",
    [
        ("- 1\n- 2\n", "is [1, 2]; expected a mapping of sections"),
        ("ppo: [\n", "is not valid YAML"),
        ("base: 3\n", "base=3 in"),
        ("1: 2\n", "has the key 1; expected string keys"),
    ],
)
def test_malformed_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(str(write(tmp_path / "bad.yaml", text)))


# ------------------------------------------------------------------------------------------ save and load
@pytest.mark.parametrize("name", PRESETS)
def test_save_load_round_trip_is_exact(tmp_path, name):
    config = load_config(
        name,
        [
            "seed=11",
            "ppo.learning_rate=1.5e-5",
            "reward.delta=[gold/aesthetic]" if name == "synth-gold" else "reward.delta=[aesthetic]",
            "reward.renderer={height: 16}",
            "sft.max_steps=7",
        ],
    )
    path = save_config(config, tmp_path / "run" / "config.yaml")
    again = load_config(str(path))
    assert again == config
    assert config_to_dict(again) == config_to_dict(config)
    assert save_config(again, tmp_path / "again.yaml").read_text() == path.read_text()


def test_saved_file_is_fully_resolved(tmp_path):
    path = save_config(load_config("ppo"), tmp_path / "config.yaml")
    raw = yaml.safe_load(path.read_text())
    assert "base" not in raw and raw["name"] == "ppo"
    assert set(raw["ppo"]) == {f.name for f in dataclasses.fields(PPOConfig)} - {"seed"}
    assert raw["ppo"]["typical_mass"] is None and raw["ppo"]["kl_coef"] == load_config("tiny").ppo.kl_coef


def test_dict_round_trip_and_copies():
    config = load_config("diffchat-sd15")
    values = config_to_dict(config)
    assert config_from_dict(values) == config
    values["reward"]["weights"]["pickscore"] = 5.0
    assert config.reward.weights["pickscore"] == 1.0  # the dict is a copy


def test_sft_section_is_an_sft_config_for_sft_warm_start():
    sft = load_config("tiny", ["sft.max_steps=3"]).sft
    assert isinstance(sft, SFTStageConfig) and isinstance(sft, SFTConfig)
    assert sft.total_steps(100) == 3


def test_monitors_eval_builds_the_monitors_for_the_evaluations():
    assert load_config("surrogate", ["reward.monitors=eval"]).reward.build_kwargs()["monitors"] is True
    assert load_config("surrogate", ["reward.monitors=false"]).reward.build_kwargs()["monitors"] is False


def test_reward_build_kwargs_match_build_reward_signature():
    import inspect

    from promptgym.rewards import build_reward

    kwargs = load_config("tiny").reward.build_kwargs()
    parameters = inspect.signature(build_reward).parameters
    assert set(kwargs) == set(parameters) - {"tokenizer"}


# ------------------------------------------------------------------------------ one range style, docs, show
def bounded_fields() -> list[tuple[str, str, type, object]]:
    """(section, key, section class, a value just outside the range) for every range-checked key of the config."""
    cases = []
    for section, cls in SECTIONS.items():
        for key, info in cls.__pydantic_fields__.items():
            if key == "seed" and section in SEEDED_SECTIONS:
                continue
            for c in info.metadata:
                for kind, outside in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
                    if hasattr(c, kind) and isinstance(c, annotated_types.BaseMetadata):
                        cases.append((section, key, cls, getattr(c, kind) + outside))
    return cases


def test_every_range_error_names_the_dotted_key_the_value_and_the_range():
    cases = bounded_fields()
    assert len(cases) >= 30  # every section's ranges are Field constraints, not hand-written checks
    for section, key, cls, value in cases:
        message = error_of([f"{section}.{key}={value}"])
        assert message == f"{section}.{key}={value!r}: expected {allowed(cls, key)}", message
        assert re.search(r"(>=?|<=?|in [\[(]).*\d", message), message  # the range itself is spelled out


def test_agent_configs_raise_the_same_one_line_errors_with_their_class_name():
    with pytest.raises(ConfigError, match=re.escape("PPOConfig.gamma=1.5: expected a number in [0, 1]")):
        PPOConfig(gamma=1.5)
    with pytest.raises(ConfigError, match=re.escape("SFTConfig.max_steps=0: expected an integer >= 1 or null")):
        SFTConfig(max_steps=0)
    with pytest.raises(ConfigError, match=re.escape("PPOConfig.n_epochs='2': expected an integer >= 1")):
        PPOConfig(n_epochs="2")  # strict: no string-to-number conversion
    with pytest.raises(ConfigError, match=re.escape("unknown key 'PPOConfig.lr'; valid keys of PPOConfig: [")):
        PPOConfig(lr=1e-3)
    with pytest.raises(ConfigError, match=re.escape("train.keep_last=0: expected an integer >= 1 or null")):
        dataclasses.replace(TrainConfig(), keep_last=0)  # replace validates too
    assert PPOConfig(learning_rate=1).learning_rate == 1.0 and type(PPOConfig(learning_rate=1).learning_rate) is float


@pytest.mark.parametrize("section", ["", *SECTIONS])
def test_every_key_is_documented_on_its_field(section):
    cls = SECTIONS.get(section, ExperimentConfig)
    keys = ["name", "seed"] if not section else list(config_to_dict(ExperimentConfig())[section])
    docs = field_docs(cls)
    assert all(len(docs[key]) > 10 for key in keys), {key: docs[key] for key in keys}
    assert cls.__doc__.strip()  # the section's own doc heads it in `config show`


def test_tiny_file_values_are_the_resolved_values():
    raw = yaml.safe_load((PRESET_DIR / "tiny.yaml").read_text())
    resolved = config_to_dict(load_config("tiny"))
    raw["reward"].pop("weights"), resolved["reward"].pop("weights")  # {} in the file: the preset's, filled in
    assert {k: v for k, v in resolved.items() if k != "name"} == raw


@pytest.mark.parametrize("name", PRESETS)
def test_preset_round_trips_through_dict_and_the_documented_yaml(tmp_path, name):
    config = load_config(name)
    values = config_to_dict(config)
    assert config_from_dict(values) == config and config_to_dict(config_from_dict(values)) == values
    shown = write(tmp_path / "shown.yaml", config_yaml(config))
    assert load_config(str(shown)) == config


def test_config_show_prints_the_resolved_config_with_every_doc(capsys, tmp_path):
    assert main(["config", "show", "ppo+adm", "--set", "ppo.n_epochs=2", "--set", "seed=3"]) == 0
    out = capsys.readouterr().out
    expected = load_config("ppo+adm", ["ppo.n_epochs=2", "seed=3"])
    assert load_config(str(write(tmp_path / "out.yaml", out))) == expected
    assert "\n  n_epochs: 2 " in out and "\nseed: 3 " in out
    comments = " ".join(line.split("# ", 1)[1] for line in out.splitlines() if "# " in line)
    for section, cls in SECTIONS.items():
        docs = field_docs(cls)
        for key in config_to_dict(expected)[section]:
            assert docs[key] in comments, f"{section}.{key}"


def test_config_show_defaults_to_the_default_config_and_reports_a_bad_key(capsys):
    assert main(["config", "show"]) == 0
    assert capsys.readouterr().out == config_yaml(load_config("surrogate"))
    assert main(["config", "show", "--set", "ppo.learning_rat=1"]) == 2
    assert "promptgym config: error: unknown key 'ppo.learning_rat'; did you mean" in capsys.readouterr().err


def test_preset_layer_is_a_presets_own_keys_and_load_config_lays_it_over_a_base():
    from promptgym.experiments.config import preset_layer

    assert preset_layer("ppo+adm") == {"ppo": {"typical_mass": 0.9, "negative_fraction": 0.0,
                                                "integrity_value_coef": 0.0}}  # no `base`, nothing inherited
    config = load_config("synth", ["ppo.learning_rate=0.002"], layer=preset_layer("ppo+adm"))
    assert config.policy.num_layers == load_config("synth").policy.num_layers  # synth's policy, not tiny's
    assert (config.ppo.negative_fraction, config.ppo.learning_rate) == (0.0, 0.002)  # overrides come last
    assert config.name == "synth"
    with pytest.raises(ConfigError, match="layer"):
        load_config("synth", layer=["ppo"])


def test_sft_share_gives_sft_and_ppo_disjoint_sources():
    from promptgym.experiments.builders import stage_tasks

    sft, ppo = stage_tasks(load_config("tiny", ["data.sft_share=0.5"]))
    assert not {t.source for t in sft} & {t.source for t in ppo} and all(t.target is not None for t in sft)
    sft_all, ppo_all = stage_tasks(load_config("tiny"))
    assert len(ppo_all) == len(sft_all) + len([t for t in ppo_all if t.target is None])  # 1: the same tasks
    with pytest.raises(ConfigError, match="sft_share"):
        load_config("tiny", ["data.sft_share=0"])
