"""`promptgym world build`: a few steps of every stage rebuild loadable models; the shipped world matches its record."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from promptgym.envs import load_tasks
from promptgym.experiments import world_build
from promptgym.experiments.world_build import STAGES, file_hashes
from promptgym.rewards import EditResult, build_reward
from promptgym.rewards.world import SYNTH_ENV, synth_path

pytestmark = pytest.mark.slow  # subprocesses / training runs: `pytest -m "not slow"` skips them


@pytest.fixture(scope="module")
def smoke_world(tmp_path_factory) -> Path:
    """Every stage at 1/500 of its budget (a few steps each), 1 thread."""
    out = tmp_path_factory.mktemp("world")
    assert world_build.main(["--out", str(out), "--scale", "0.002", "--threads", "1"]) == 0
    return out


def test_every_stage_writes_a_loadable_model(smoke_world, monkeypatch):
    record = json.loads((smoke_world / "build.json").read_text())
    assert set(record["stages"]) == set(STAGES)
    assert record["files"] == file_hashes(smoke_world)
    assert all(not name.startswith("_work") for name in record["files"])
    monkeypatch.setenv(SYNTH_ENV, str(smoke_world))
    reward = build_reward("synth")
    tasks = load_tasks("demo", "test")[:3]
    out = reward([EditResult(t, t.target) for t in tasks] + [EditResult(tasks[0], "")])
    assert set(out.components) >= {"aesthetic", "pickscore", "integrity", "gold/content", "gold/aesthetic"}
    assert torch.isfinite(out.total).all() and out.total.shape == (4,)
    assert all(0 <= v <= 1 for v in out.components["gold/content"].tolist())
    oracle = build_reward("synth-gold")
    assert set(oracle.terms) == {"gold/content", "gold/aesthetic"}
    assert set(oracle.monitors) == {"aesthetic", "pickscore", "integrity", "gold/text_content"}  # the proxy beside
    switched = build_reward("synth-gold", weights={"integrity": 0.0}, integrity={"mode": "ratio"})  # from synth
    assert set(switched.terms) == {"gold/content", "gold/aesthetic"} and switched.monitors["integrity"].mode == "ratio"
    with pytest.raises(ValueError, match="proxy terms a weight"):
        build_reward("synth-gold", weights={"integrity": 2.0})


def test_the_build_is_deterministic_and_resumes(smoke_world, tmp_path):
    """A second build of the judge with the same seed, interrupted after its checkpoint, gives the same weights."""
    out = tmp_path / "again"
    config = world_build.BuildConfig(threads=1, scale=0.002, checkpoint_every=2)
    world_build.build_world(out, ["judge"], config)
    first = hashlib.sha256((out / "judge" / "model.safetensors").read_bytes()).hexdigest()
    assert first == hashlib.sha256((smoke_world / "judge" / "model.safetensors").read_bytes()).hexdigest()
    assert (out / "_work" / "judge.pt").exists()  # the checkpoint a rerun resumes from
    world_build.build_world(out, ["judge"], config)  # resumes at the last step: nothing left to train
    assert hashlib.sha256((out / "judge" / "model.safetensors").read_bytes()).hexdigest() == first


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        world_build.main(["--out", str(tmp_path), "--stages", "judge,unicorn"])
    assert "unknown stages ['unicorn']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        world_build.main(["--out", str(tmp_path), "--scale", "0"])
    with pytest.raises(SystemExit):
        world_build.main(["--out", str(tmp_path), "--set", "unet_steps=lots"])
    assert "--set 'unet_steps=lots': expected BUDGET=N" in capsys.readouterr().err


def test_missing_world_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv(SYNTH_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="promptgym world build"):
        synth_path("sd")


def test_shipped_world_matches_its_recorded_hashes():
    root = synth_path()
    record = json.loads((root / "build.json").read_text())
    assert record["files"], "the shipped world records no files"
    for name, digest in record["files"].items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    total = sum((root / name).stat().st_size for name in record["files"])
    assert total <= 40 * 2**20, f"shipped world is {total / 2**20:.1f} MiB; the budget is 40 MiB"
    assert math.isclose(record["stages"]["sd"]["config"]["scale"], 1.0)


def test_shipped_world_loads_and_scores_demo_targets():
    tasks = load_tasks("demo", "test")[:2]
    out = build_reward("synth")([EditResult(t, t.target) for t in tasks])
    assert torch.isfinite(out.total).all()
    assert all(0 <= v <= 1 for v in out.components["gold/content"].tolist())


def test_promptgym_world_build_command_takes_its_own_arguments(capsys):
    from promptgym.experiments import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["world", "build", "--help"])
    assert stopped.value.code == 0 and "--stages" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        cli.main(["world", "build", "--out", "x", "--stages", "nope"])
    assert stopped.value.code == 2 and "unknown stages ['nope']" in capsys.readouterr().err


def test_judge_labels_ignore_what_a_scene_without_subject_cannot_show():
    from promptgym.rewards.gold import drawn_labels
    from promptgym.rewards.scene import Scene

    scenes = [Scene(subject="dog", count=2, colour="red"), Scene(subject=None, count=3, colour="blue", weather="night")]
    targets = drawn_labels(scenes)
    assert targets["count"].tolist() == [1, -100] and targets["colour"].tolist() == [1, -100]
    assert targets["accessory"].tolist() == [0, -100] and targets["weather"].tolist() == [0, 2]


def test_judge_accuracy_counts_each_attribute_over_the_scenes_that_draw_it():
    from promptgym.rewards.gold import SceneJudge, scene_labels
    from promptgym.rewards.scene import ATTRIBUTES, Scene

    scenes = [Scene(subject="dog", colour="red"), Scene(subject="cat", colour="blue"), Scene(subject=None, colour="red")]
    read_as = [scenes[0], Scene(subject="cat", colour="green"), Scene(subject=None, colour=None, weather="night")]

    class Fixed(SceneJudge):
        def read(self, images, batch_size=512):
            return {name: torch.tensor([scene_labels(s)[name] for s in read_as]) for name in ATTRIBUTES}

    acc = world_build.judge_accuracy(Fixed(width=4, hidden=8), torch.rand(3, 3, 32, 32), scenes)
    assert acc["colour"] == 0.5  # the scene without a subject does not count: 1 of 2
    assert acc["weather"] == pytest.approx(2 / 3) and acc["subject"] == 1.0
    assert acc["all"] == pytest.approx(1 / 3)


def test_speckle_is_sparse_zero_mean_and_seeded():
    import numpy as np

    shape = torch.Size((64, 3, 32, 32))
    first = world_build.speckle_noise(shape, np.random.default_rng(0))
    assert torch.equal(first, world_build.speckle_noise(shape, np.random.default_rng(0)))
    touched = (first != 0).any(1).float().mean((1, 2))
    assert 0 < (touched > 0).float().mean() < 1  # about half the images get speckle
    assert touched.max() <= 0.2 and abs(float(first.mean())) < 0.01
    images = torch.full((4, 3, 32, 32), 0.5)
    plain = world_build.augment(images, np.random.default_rng(1))
    assert plain.shape == images.shape and 0 <= plain.min() and plain.max() <= 1
