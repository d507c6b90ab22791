"""Control prefixes: tags, target rewriting, SFT augmentation with prefix dropout, and the config switch."""

import random

import pytest

from promptgym.envs import EditTask, load_tasks
from promptgym.envs.controls import CONTROLS, control_target, control_tasks, split_control, with_control
from promptgym.experiments.builders import stage_tasks
from promptgym.experiments.config import load_config
from promptgym.rewards.scene import MODIFIERS, parse_scene

TASK = EditTask("a red dog in a park", "make the dog blue", "a blue dog in a park, highly detailed", "t1")


def test_tags_are_the_first_word_and_round_trip():
    assert with_control("make the dog blue", "lighting") == "<lighting> make the dog blue"
    assert with_control("<keep> make the dog blue", "vivid") == "<vivid> make the dog blue"  # replaced, not stacked
    assert with_control("<keep> make it blue", None) == "make it blue"
    assert split_control("<detail> add a hat") == ("detail", "add a hat")
    assert split_control("<unknown> add a hat") == (None, "<unknown> add a hat")
    with pytest.raises(ValueError, match="control='shiny'"):
        with_control("add a hat", "shiny")


def test_control_families_are_world_modifiers():
    assert set(m for family in CONTROLS.values() for m in family) <= set(MODIFIERS)
    assert CONTROLS["keep"] == ()


@pytest.mark.parametrize("control", list(CONTROLS))
def test_control_target_keeps_the_content_and_swaps_the_modifiers(control):
    for seed in range(20):
        target = control_target(TASK.target, control, random.Random(seed))
        scene = parse_scene(target).scene
        before = parse_scene(TASK.target).scene
        assert scene.content() == before.content()
        assert set(scene.modifiers) <= set(CONTROLS[control]) and (bool(scene.modifiers) == bool(CONTROLS[control]))


def test_control_target_refuses_a_prompt_outside_the_world():
    with pytest.raises(ValueError, match="not a synth-world prompt"):
        control_target("a photo of a spaceship, trending on artstation", "detail", random.Random(0))


def test_control_tasks_apply_prefix_dropout_and_keep_order():
    tasks = [t for t in load_tasks("demo", "train")[:400] if t.target]
    out = control_tasks(tasks, dropout=0.5, seed=1)
    assert len(out) == len(tasks) and [t.source for t in out] == [t.source for t in tasks]
    tagged = [t for t in out if split_control(t.instruction)[0] is not None]
    assert 0.4 < len(tagged) / len(out) < 0.6  # about 1 - dropout
    for task, original in zip(out, tasks):
        control, rest = split_control(task.instruction)
        if control is None:
            assert task == original
        else:
            assert rest == original.instruction.strip() and task.id == f"{original.id}@{control}"
            assert set(parse_scene(task.target).scene.modifiers) <= set(CONTROLS[control])
    assert control_tasks(tasks, 0.5, seed=1) == out and control_tasks(tasks, 0.5, seed=2) != out
    assert control_tasks(tasks, 1.0) == tasks  # dropout 1: no prefixes
    assert all(split_control(t.instruction)[0] for t in control_tasks(tasks, 0.0))
    with pytest.raises(ValueError, match="dropout"):
        control_tasks(tasks, 1.5)


def test_tasks_outside_the_world_are_kept_unchanged():
    odd = EditTask("a spaceship", "make it red", "a red spaceship over mars", "odd")
    assert control_tasks([odd, TASK], dropout=0.0)[0] == odd


def test_the_config_switch_prefixes_only_the_sft_tasks():
    config = load_config("synth", ["data.control_dropout=0.5"])
    sft, ppo = stage_tasks(config)
    assert any(split_control(t.instruction)[0] for t in sft)
    assert not any(split_control(t.instruction)[0] for t in ppo)
    plain_sft, _ = stage_tasks(load_config("synth"))
    assert not any(split_control(t.instruction)[0] for t in plain_sft)


def test_adherence_needs_a_world_prompt_with_exactly_the_family():
    from promptgym.experiments.bench_controls import adherence

    assert adherence("a blue dog in a park", "keep") == 1.0
    assert adherence("a blue dog in a park, soft lighting", "keep") == 0.0
    assert adherence("a blue dog in a park, soft lighting, dramatic shadows", "lighting") == 1.0
    assert adherence("a blue dog in a park, soft lighting, highly detailed", "lighting") == 0.0
    assert adherence("a blue dog in a park", "detail") == 0.0  # detail asks for some modifier
    assert adherence("zzz qqq", "keep") == 0.0  # garbage follows no control
    assert adherence("a blue dog in a park", None) != adherence("a blue dog in a park", None)  # NaN
