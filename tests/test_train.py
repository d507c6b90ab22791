"""`promptgym train` end to end on a seconds-sized config: artifacts, resume, eval, edit, render."""

import json
import math
import signal

import pytest
import torch
from PIL import Image

from promptgym.experiments.cli import main
from promptgym.experiments.config import load_config
from promptgym.experiments.train import Trainer, train

pytestmark = pytest.mark.slow  # subprocesses / training runs: `pytest -m "not slow"` skips them

SMALL = [
    "sft.max_steps=30",
    "ppo.n_episodes=4",
    "ppo.batch_size=2",
    "ppo.n_epochs=1",
    "train.num_updates=3",
    "train.eval_every=2",
    "train.checkpoint_every=2",
    "data.num_eval_tasks=2",
    "env.max_new_tokens=12",
    "reward.renderer={images_per_prompt: 1}",
    "logging.progress=false",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(load_config("tiny", SMALL), out)
    assert not result.interrupted
    return out


def test_train_writes_every_artifact(run_dir):
    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "summary.md"):
        assert (run_dir / name).is_file(), name
    for name in ("reward_components.png", "kl_entropy.png", "image_grid.png", "evaluations.png"):
        Image.open(run_dir / "plots" / name).verify()
    assert any((run_dir / "tb").iterdir())
    assert (run_dir / "checkpoints" / "latest").read_text().strip().endswith("step_000003")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in metrics] == [1, 2, 3]
    assert all("env/reward_mean" in m and "env/integrity" in m and "objective/kl" in m for m in metrics)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["update"] for s in samples}) == [0, 2, 3] and len(samples) == 6
    assert {"source", "instruction", "prompt", "reward", "components"} <= set(samples[0])
    assert load_config(run_dir / "config.yaml").train.num_updates == 3
    assert "finished after 3 of 3 updates" in (run_dir / "summary.md").read_text()


def test_gold_only_in_the_evaluations_with_monitors_eval(tmp_path):
    """`reward.monitors=eval`: training episodes are scored without the gold monitors (the surrogate renders
    nothing), the fixed test tasks' evaluations with them, so the summary still says whether gold followed."""
    result = train(load_config("surrogate", [*SMALL, "reward.monitors=eval", "train.num_updates=2"]), tmp_path)
    assert not result.interrupted
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics and not any("gold/" in key for row in metrics for key in row)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["update"] for s in samples}) == [0, 2]
    assert all({"gold/content", "gold/aesthetic", "gold/text_content"} <= set(s["components"]) for s in samples)
    summary = (tmp_path / "summary.md").read_text()
    assert "| gold/content |" in summary and "--samples 2 --against start` pairs the start" in summary
    Image.open(tmp_path / "plots" / "image_grid.png").verify()  # drawn with the gold monitors' renderer
    Image.open(tmp_path / "plots" / "evaluations.png").verify()  # gold over evaluations, none in metrics.jsonl


def test_eval_against_the_start_pairs_each_task_with_itself(run_dir, capsys):
    import shutil

    from promptgym.experiments.evaluate import evaluate_run
    from promptgym.experiments.stats import paired_changes

    start = evaluate_run(run_dir, samples_per_task=2, checkpoint="start", write=False, tasks=_eval_tasks(run_dir, 3))
    again = evaluate_run(run_dir, samples_per_task=2, checkpoint="start", write=False, tasks=_eval_tasks(run_dir, 3))
    changes = {c.name: c for c in paired_changes(start.samples, again.samples)}
    assert {"reward", "integrity", "integrity_ratio"} <= set(changes)
    assert all(c.change == c.low == c.high == 0 and c.n == 3 for c in changes.values())  # same policy, same seed
    assert main(["eval", str(run_dir), "--samples", "2", "--max-tasks", "3", "--against", "start"]) == 0
    out = capsys.readouterr().out
    assert "start vs latest on test, 3 tasks x 2 samples" in out and "| integrity_ratio |" in out
    assert "| distinct_1 |" in out and "| diversity |" in out  # paired per task
    Image.open(run_dir / "eval" / "quality_diversity_test.png").verify()
    assert (run_dir / "eval" / "paired_test.md").read_text().startswith(f"# {run_dir}: start vs latest")
    kept = [json.loads(line) for line in (run_dir / "eval" / "start_test_samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in kept] == [r["prompt"] for r in start.samples]  # the start's samples are kept
    moved = run_dir.parent / "no_start"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("sft_policy"))
    assert main(["eval", str(moved), "--max-tasks", "1", "--checkpoint", "start"]) == 2
    assert "sft_policy holds no policy" in capsys.readouterr().err


def _eval_tasks(run_dir, n):
    from promptgym.envs import load_tasks

    return load_tasks(load_config(run_dir / "config.yaml").data.tasks, split="test")[:n]


def test_resume_continues_without_gap_or_repeat(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    # pretend the process died after logging update 3 but the only checkpoint is step 2
    shutil.rmtree(copy / "checkpoints" / "step_000003")
    (copy / "checkpoints" / "latest").write_text("step_000002\n")
    config = load_config(copy / "config.yaml", ["train.num_updates=4"])
    result = train(config, copy, resume=True)
    updates = [json.loads(line)["update"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert updates == [1, 2, 3, 4] and len(result.history) == 2


def _interrupt_during_update(trainer, monkeypatch, update: int, times: int) -> None:
    """Press Ctrl-C `times` times in the middle of update `update` (after its rollout has started)."""
    original = trainer.agent.step
    calls = []

    def step():
        calls.append(1)
        if len(calls) == update:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
        return original()

    monkeypatch.setattr(trainer.agent, "step", step)


def test_ctrl_c_finishes_the_update_and_checkpoints_what_an_uninterrupted_run_has(tmp_path, monkeypatch):
    config = load_config("tiny", [*SMALL, "train.checkpoint_every=100", "logging.plots=false"])
    trainer = Trainer(config, tmp_path / "interrupted")
    _interrupt_during_update(trainer, monkeypatch, update=2, times=1)
    result = trainer.run_updates()
    assert result.interrupted and [row["update"] for row in result.history] == [1, 2]
    assert (tmp_path / "interrupted" / "checkpoints" / "latest").read_text().strip() == "step_000002"
    assert "interrupted" in (tmp_path / "interrupted" / "summary.md").read_text()

    resumed = Trainer(config, tmp_path / "interrupted", resume=True).run_updates()
    straight = train(config, tmp_path / "straight")
    timing = ("time/", "wall_time")
    for a, b in zip(straight.history, result.history + resumed.history, strict=True):
        assert {k: v for k, v in a.items() if not k.startswith(timing)} == {
            k: v for k, v in b.items() if not k.startswith(timing)
        }


def test_a_second_ctrl_c_stops_at_once_without_checkpointing_the_half_done_update(tmp_path, monkeypatch):
    trainer = Trainer(load_config("tiny", [*SMALL, "train.checkpoint_every=1", "logging.plots=false"]), tmp_path)
    _interrupt_during_update(trainer, monkeypatch, update=2, times=2)
    result = trainer.run_updates()
    assert result.interrupted and [row["update"] for row in result.history] == [1]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000001"
    assert not (tmp_path / "checkpoints" / "step_000002").exists()


def test_eval_edit_render_on_the_run(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--samples", "2", "--max-tasks", "3", "--steps", "2"]) == 0
    assert (run_dir / "eval" / "eval_test.csv").is_file() and (run_dir / "eval" / "eval_test.md").is_file()
    printed = capsys.readouterr().out
    assert "2 expansion steps" in printed and "step 2 [CI]" in printed and "distinct_scenes" in printed
    out = tmp_path / "edits.png"
    args = ["edit", "--prompt", "a red dog in a park", "--instruction", "make the dog blue", "--run", str(run_dir)]
    assert main([*args, "-n", "3", "--render", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1. " in printed and "3. " in printed
    Image.open(out).verify()
    render = tmp_path / "render.png"
    assert main(["render", "--prompt", "a red dog", "--out", str(render)]) == 0
    assert Image.open(render).size[1] >= 256


def test_chat_on_the_run_renders_and_scores_each_turn(run_dir, tmp_path, capsys):
    script = tmp_path / "session.txt"
    script.write_text("make the dog blue\nadd a hat\nundo\nhistory\n")
    renders = tmp_path / "turns"
    args = ["chat", "--run", str(run_dir), "--prompt", "a red dog in a park", "--input", str(script)]
    assert main([*args, "--render", str(renders)]) == 0
    printed = capsys.readouterr().out
    assert "start: a red dog in a park" in printed and "1. " in printed and "back to: " in printed
    assert "render: " in printed and "integrity" in printed  # each turn's scores
    assert sorted(p.name for p in renders.iterdir()) == ["turn_01.png", "turn_02.png"]
    Image.open(renders / "turn_01.png").verify()


def test_cli_config_errors_name_the_key(capsys):
    assert main(["train", "--set", "ppo.lerning_rate=1"]) == 2
    assert "lerning_rate" in capsys.readouterr().err
    assert main(["eval", "/nonexistent/run"]) == 2
    assert "/nonexistent/run" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_runs_on_the_gpu(tmp_path):
    """The policy, its rollouts and the PPO update run on `policy.device`; artifacts as on the CPU."""
    result = train(load_config("tiny", [*SMALL, "policy.device=cuda", "reward.device=cuda"]), tmp_path)
    assert not result.interrupted and len(result.history) == 3
    assert all(math.isfinite(row["env/reward_mean"]) for row in result.history)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip().endswith("step_000003")
    assert main(["eval", str(tmp_path), "--samples", "2", "--max-tasks", "3"]) == 0


def _gold_samples(reward_changes, content_changes, aesthetic_changes=None):
    rows = []
    for i, (dr, dc) in enumerate(zip(reward_changes, content_changes)):
        da = 0.0 if aesthetic_changes is None else aesthetic_changes[i]
        for update, sign in ((0, 0), (60, 1)):
            components = {"gold/content": 0.5 + sign * dc, "gold/aesthetic": 0.5 + sign * da, "integrity": 1.0}
            rows.append({"update": update, "task_id": f"t{i}", "reward": sign * dr, "components": components})
    return rows


def test_gold_verdict_reads_the_paired_cis():
    from promptgym.experiments.train import gold_verdict

    up, down, noise = [1.0, 1.2, 0.9, 1.1], [-0.2, -0.1, -0.3, -0.2], [0.1, -0.1, 0.2, -0.2]
    hacked = gold_verdict(_gold_samples(up, down, noise), 0, 60)
    assert "The proxy reward rose; gold/content fell; gold/aesthetic did not clearly move" in hacked
    assert "over-optimisation" in hacked and "4 tasks" in hacked
    assert gold_verdict(_gold_samples(up, [0.1, 0.2, 0.1, 0.3], up), 0, 60).endswith("gold followed the proxy.")
    assert gold_verdict(_gold_samples(up, noise, noise), 0, 60).endswith("gold did not clearly follow.")
    assert "nothing for gold to follow" in gold_verdict(_gold_samples(noise, down), 0, 60)
    no_gold = [{**r, "components": {"integrity": 1.0}} for r in _gold_samples(up, down)]
    assert gold_verdict(no_gold, 0, 60) is None  # the tiny stack has no gold: no sentence
    # a normalised reward: its total rose only with the statistics; the unnormalised sum is what is compared
    normalised = [{**r, "components": {**r["components"], "reward/unnormalized": -r["reward"]}}
                  for r in _gold_samples(up, down)]
    assert "The proxy reward (unnormalised) fell" in gold_verdict(normalised, 0, 60)


def test_before_after_table_pairs_each_task_with_itself():
    from promptgym.experiments.train import before_after_table

    def row(update, task, reward, integrity):
        return {"update": update, "task_id": task, "reward": reward, "components": {"integrity": integrity}}

    samples = [row(0, "a", 0.0, 0.0), row(0, "b", 1.0, 1.0), row(5, "b", 3.0, 1.0), row(5, "a", 1.0, 1.0)]
    lines = before_after_table(samples, 0, 5)
    assert lines[0].startswith("## Fixed test tasks: update 0 vs update 5 (2 tasks")
    reward, integrity = lines[4], lines[5]
    # per-task changes: reward +1 and +2 (mean +1.5, CI within [1, 2]); integrity +1 and 0
    assert reward.startswith("| reward | 0.500 | 2.000 | +1.500 [+1.000, +2.000]")
    assert integrity.startswith("| integrity | 0.500 | 1.000 | +0.500 [+0.000, +1.000]")


def test_training_trend_averages_the_first_and_last_updates_of_proxy_and_gold():
    from promptgym.experiments.train import training_trend

    def row(u, reward, unnormalized, content, aesthetic):
        return {"update": u, "env/reward_mean": reward, "env/reward/unnormalized": unnormalized,
                "env/gold/content": content, "env/gold/aesthetic": aesthetic}

    history = [row(u, -u, 1.0 + 0.1 * u, 0.9, 0.5 + 0.01 * u) for u in range(1, 33)]  # 32 updates: windows of 5
    line = training_trend(history)
    # by hand: updates 1-5 and 28-32; unnormalised proxy 1.3 -> 4.0, gold aesthetic 0.53 -> 0.80
    assert line == ("- training episodes, mean of updates 1-5 -> updates 28-32: proxy reward (unnormalised) 1.300 -> "
                    "4.000; gold/content 0.900 -> 0.900; gold/aesthetic 0.530 -> 0.800")
    assert "updates 1-2 -> updates 7-8" in training_trend(history[:8])  # a quarter of a short run
    tiny = [{"update": u, "env/reward_mean": float(u)} for u in (1, 2, 3)]  # no normalisation, no gold
    assert training_trend(tiny) == "- training episodes, mean of update 1 -> update 3: reward 1.000 -> 3.000"
