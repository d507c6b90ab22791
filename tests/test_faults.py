"""Runs that survive crashes and misuse: one writer per run directory, damage that names itself and is survived
(checksums, fallback to an intact checkpoint, a torn last log line), and user mistakes as one line with exit code 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from promptgym.agents.checkpoint import (
    CheckpointDamagedError,
    latest_checkpoint,
    latest_intact_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
    verify_checksums,
    write_checksums,
)
from promptgym.agents.policy import PolicyWithValue
from promptgym.envs import default_tokenizer, load_tasks
from promptgym.experiments.cli import main
from promptgym.experiments.config import load_config, save_config
from promptgym.experiments.rundir import RunDir, RunLockedError, intact_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptgym.experiments", *args], cwd=cwd or REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _hold_lock(run: Path) -> subprocess.Popen:
    """A process that holds `run`'s lock until killed (it prints 'locked' once it does)."""
    code = textwrap.dedent(f"""
        import time
        from promptgym.experiments.rundir import RunDir
        with RunDir({str(run)!r}).lock():
            print("locked", flush=True)
            time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _flip_byte(path: Path, offset_from_end: int = 16) -> None:
    """Damage a file's data without changing its size (what a size check cannot see)."""
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"promptgym \w+: error: ", lines[0]), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------ one writer per run
@pytest.mark.slow
def test_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        with pytest.raises(RunLockedError, match=f"in use by PID {holder.pid} on host"):
            with RunDir(run).lock():
                pass
        # the CLI refuses before any model is built: one line, exit code 2, the holder's PID
        assert main(["train", "--out", str(run), "--set", "logging.progress=false"]) == 2
        assert f"PID {holder.pid}" in _one_error_line(capsys.readouterr().err)
        assert sorted(p.name for p in run.iterdir()) == [".lock", ".lock.owner"]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((run / ".lock.owner").read_text())["pid"] == holder.pid  # it died without cleaning up
    with RunDir(run).lock():
        assert json.loads((run / ".lock.owner").read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"taking over a stale lock of PID {holder.pid}" in err and "no longer running" in err
    assert not (run / ".lock.owner").exists()  # released cleanly: the next writer hears nothing
    with RunDir(run).lock():
        pass
    assert capsys.readouterr().err == ""


def test_existing_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.create()
    save_config(load_config("tiny"), run.config)
    (run.root / "notes.txt").write_text("mine")
    (run.checkpoints / "step_000002").mkdir()
    assert main(["train", "--out", str(run.root)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    run.check_out(resume=True)
    run.check_out(overwrite=True)
    with pytest.raises(ValueError, match="give one of them"):
        run.check_out(resume=True, overwrite=True)
    run.clear()  # what --overwrite does under the lock: the run's files go, the user's stay
    assert sorted(p.name for p in run.root.iterdir()) == ["notes.txt"]
    run.check_out()


# ------------------------------------------------------------------------------------- torn logs
def test_torn_last_line_is_repaired_and_damage_elsewhere_is_named(tmp_path, capsys):
    run = RunDir(tmp_path)
    run.append_jsonl(run.metrics, [{"update": 1, "x": 1.0}, {"update": 2, "x": 2.0}])
    intact = run.metrics.read_bytes()
    with run.metrics.open("ab") as f:
        f.write(b'{"update": 3, "x": 3.')  # killed mid-write
    assert run.repair_torn_tail(run.metrics)
    assert run.metrics.read_bytes() == intact
    assert "dropped its torn last line 3" in capsys.readouterr().err
    assert not run.repair_torn_tail(run.metrics) and capsys.readouterr().err == ""
    with run.metrics.open("ab") as f:
        f.write(b'{"update": 3, "x": 3.0}')  # complete but without its newline: gets one, so appends stay lines
    assert not run.repair_torn_tail(run.metrics)
    assert run.metrics.read_bytes().endswith(b'3.0}\n')
    run.metrics.write_bytes(intact.replace(b'"x": 1.0}', b'"x": 1.'))  # damage in the middle: not a crash's trace
    assert not run.repair_torn_tail(run.metrics)
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 1 is not valid JSON"):
        run.truncate_after(run.metrics, 1)


def test_truncate_after_keeps_lines_byte_for_byte(tmp_path):
    run = RunDir(tmp_path)
    run.append_jsonl(run.samples, [{"update": u, "prompt": "a\u2028b"} for u in (0, 2, 4)])
    before = run.samples.read_text(encoding="utf-8").split("\n")
    assert run.truncate_after(run.samples, 2) == 1
    assert run.samples.read_text(encoding="utf-8").split("\n") == [*before[:2], ""]


# ----------------------------------------------------------------------------------------- damaged files
@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def _tiny(tok) -> PolicyWithValue:
    return PolicyWithValue.tiny(tok, seed=0, hidden_size=32, num_layers=1, num_heads=2)


def test_damaged_checkpoint_is_named_and_the_previous_one_used(tok, tmp_path, capsys):
    policy = _tiny(tok)
    first = save_checkpoint(tmp_path / "step_000002", policy=policy, counters={"updates": 2})
    second = save_checkpoint(tmp_path / "step_000004", policy=policy, counters={"updates": 4})
    assert set(json.loads((second / "meta.json").read_text())["sha256"]) >= {"policy/model.safetensors", "rng.json"}
    weights = second / "policy" / "model.safetensors"
    _flip_byte(weights)  # same size: only the checksum sees it
    with pytest.raises(CheckpointDamagedError, match=f"{weights} is damaged: its sha256"):
        verify_checkpoint(second)
    with pytest.raises(CheckpointDamagedError, match=str(weights)):
        load_checkpoint(second, policy=_tiny(tok))
    assert latest_checkpoint(tmp_path) == second
    found, skipped = latest_intact_checkpoint(tmp_path)
    assert found == first and [path for path, _ in skipped] == [second]
    assert intact_checkpoint(tmp_path, move_damaged=True) == first
    err = capsys.readouterr().err
    assert f"skipped checkpoint {second}" in err and "model.safetensors is damaged" in err and "using step_000002" in err
    assert not second.exists() and latest_checkpoint(tmp_path) == first  # moved aside: the resumed run saves anew
    assert load_checkpoint(first, policy=_tiny(tok)).counters == {"updates": 2}


def test_unreadable_checkpoint_files_are_named(tok, tmp_path):
    path = save_checkpoint(tmp_path / "ck", policy=_tiny(tok), counters={"updates": 1})
    meta = json.loads((path / "meta.json").read_text())
    del meta["sha256"]  # a checkpoint written before checksums: the loaders still name the file they cannot read
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "rng.safetensors").write_bytes(b"\xff" * (path / "rng.safetensors").stat().st_size)
    with pytest.raises(CheckpointDamagedError, match=r"rng\.safetensors is damaged: not a readable safetensors"):
        load_checkpoint(path)
    (path / "meta.json").write_text('{"files": {')
    with pytest.raises(CheckpointDamagedError, match=r"meta\.json is damaged: not valid JSON"):
        verify_checkpoint(path)
    _, skipped = latest_intact_checkpoint(tmp_path)
    assert [p for p, _ in skipped] == [path]


def test_damaged_sft_policy_is_named(tok, tmp_path):
    directory = tmp_path / "sft_policy"
    _tiny(tok).save_pretrained(directory)
    assert not verify_checksums(directory)  # none written: nothing to check (runs from before checksums)
    write_checksums(directory)
    assert verify_checksums(directory)
    weights = directory / "model.safetensors"
    _flip_byte(weights)
    with pytest.raises(CheckpointDamagedError, match=f"{weights} is damaged"):
        verify_checksums(directory)
    header = bytearray(weights.read_bytes())
    header[8:16] = b"\xff" * 8  # the JSON header no longer parses
    weights.write_bytes(bytes(header))
    with pytest.raises(ValueError, match=f"{weights} is damaged and cannot be loaded"):
        PolicyWithValue.from_pretrained(directory)


def test_task_file_with_bad_encoding_names_file_and_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b'{"source": "a", "instruction": "b"}\n{"source": "caf\xe9", "instruction": "b"}\n')
    with pytest.raises(ValueError, match=r"tasks\.jsonl: line 2 is not valid UTF-8 \(byte 0xe9 at column 16\)"):
        load_tasks(path)


# --------------------------------------------------------------------------------------- user mistakes
@pytest.fixture
def run_with_config(tmp_path):
    run = RunDir(tmp_path / "run").create()
    save_config(load_config("tiny"), run.config)
    return run.root


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["edit", "--prompt", "", "--instruction", "make it night"], "must both be non-empty"),
        (["eval", "{run}", "--split", "bogus"], "split='bogus'"),
        (["train", "--out", "{file}/run"], "which is a file"),
        (["train", "--out", "{file}"], "is a file"),
        (["train", "--resume", "{run}", "--overwrite"], "neither --out nor --overwrite"),
        (["render", "--prompt", "a dog", "--out", "{dir}"], "is a directory"),
        (["render", "--prompt", "a dog", "--out", "{dir}/dog.txt"], "extension '.txt'"),
        (["edit", "--prompt", "a dog", "--instruction", "x", "--run", "{run}", "--render", "{file}/x.png"], "a file"),
        (["train", "--set", "data.tasks={dir}/tasks.jsonl", "--out", "{dir}/new"], "line 1 is not valid UTF-8"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_code_2(argv, expected, run_with_config, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_dir" / "tasks.jsonl").write_bytes(b'{"source": "caf\xe9", "instruction": "b"}\n')
    names = {"run": run_with_config, "file": tmp_path / "a_file", "dir": tmp_path / "a_dir"}
    before = sorted(tmp_path.rglob("*"))
    assert main([arg.format(**names) for arg in argv]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)
    assert sorted(tmp_path.rglob("*")) == before  # nothing was created before the inputs were checked


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="must both be non-empty"):
        main(["--debug", "edit", "--prompt", "", "--instruction", "x"])
    with pytest.raises(ValueError, match="must both be non-empty"):
        main(["edit", "--prompt", "", "--instruction", "x", "--debug"])
    from promptgym.experiments import edit

    monkeypatch.setattr(edit, "render_prompt", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # not a user's mistake: the traceback stays
        main(["render", "--prompt", "a dog", "--out", str(tmp_path / "x.png")])


def test_edit_without_a_run_uses_the_newest_or_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["edit", "--prompt", "a dog", "--instruction", "make it night"]) == 2
    assert "promptgym train" in _one_error_line(capsys.readouterr().err)
    from promptgym.experiments import edit

    for name, age in (("old", 100), ("new", 10)):
        latest = tmp_path / "runs" / name / "checkpoints" / "latest"
        latest.parent.mkdir(parents=True)
        latest.write_text("step_000001\n")
        os.utime(latest, (time.time() - age, time.time() - age))
    used = []
    monkeypatch.setattr(edit, "edit_prompt", lambda *a, run_dir, **k: used.append(run_dir) or ["an edit"])
    assert main(["edit", "--prompt", "a dog", "--instruction", "make it night"]) == 0
    assert used == [Path("runs/new")]
    assert "editing with the newest run, runs/new" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_mistakes_in_a_subprocess(tmp_path):
    for args, expected in (
        (["edit", "--prompt", "", "--instruction", "x"], "must both be non-empty"),
        (["render", "--prompt", "a dog", "--out", str(tmp_path)], "is a directory"),
    ):
        done = _cli(*args, cwd=tmp_path, timeout=300)
        assert done.returncode == 2, done.stderr
        assert expected in _one_error_line(done.stderr)


# --------------------------------------------------------------------------------- kill -9, then --resume
FAST = [
    "train.num_updates=6", "train.checkpoint_every=2", "train.eval_every=2", "sft.max_steps=5",
    "ppo.n_episodes=8", "ppo.batch_size=4", "ppo.n_epochs=1", "data.num_eval_tasks=2", "env.max_new_tokens=12",
    "reward.renderer={images_per_prompt: 1}", "logging.progress=false", "logging.plots=false",
]  # the synth config's image reward, gold monitors included: 16 prompts a call render in 2 batches whose
# make-up the caches decide, so an exact resume needs the checkpointed caches (CompositeReward.state_dict)


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not (k.startswith("time/") or k == "wall_time_s")} for row in rows]


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_metrics(tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "config.yaml").write_text("stale: from an older run\n")
    (reference / "notes.txt").write_text("mine")
    done = _cli("train", "--config", "synth", "--out", str(reference), "--overwrite", *_sets(FAST))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (reference / "notes.txt").read_text() == "mine" and not (reference / ".lock.owner").exists()

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "promptgym.experiments", "train", "--config", "synth", "--out", str(killed),
               *_sets(FAST)]
    process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if (killed / "metrics.jsonl").exists() and len((killed / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "checkpoints" / "step_000002").is_dir()
    assert json.loads((killed / ".lock.owner").read_text())["pid"] == process.pid  # the killed holder's trace
    with (killed / "metrics.jsonl").open("a") as f:
        f.write('{"update": 99, "env/rew')  # as if the kill had torn a line

    again = _cli("train", "--out", str(killed), *_sets(FAST))  # not without --resume
    assert again.returncode == 2 and "--resume" in _one_error_line(again.stderr)
    resumed = _cli("train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"stale lock of PID {process.pid}" in resumed.stderr and "dropped its torn last line" in resumed.stderr
    expected = _without_timing(_rows(reference / "metrics.jsonl"))
    assert [row["update"] for row in expected] == [1, 2, 3, 4, 5, 6]
    assert _without_timing(_rows(killed / "metrics.jsonl")) == expected
    assert _rows(killed / "samples.jsonl") == _rows(reference / "samples.jsonl")
