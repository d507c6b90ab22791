"""The headroom tool: modifier sets, the per-task picks and paired changes against hand-computed values, and one
small end-to-end run on the synth stack."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from promptgym.experiments import headroom
from promptgym.rewards.scene import MODIFIERS


def record(task, content, aesthetic, proxy, modifiers=None):
    out = {"task_id": task, "reward": proxy + 100.0,  # the normalised total differs: the proxy is the unnormalised one
           "components": {"gold/content": content, "gold/aesthetic": aesthetic, "reward/unnormalized": proxy}}
    if modifiers is not None:
        out["modifiers"] = modifiers
    return out


def test_modifier_sets_count_and_order():
    sets = headroom.modifier_sets(2)
    assert len(sets) == 1 + len(MODIFIERS) + math.comb(len(MODIFIERS), 2)
    assert sets[0] == () and sets[1] == (MODIFIERS[0],)
    assert all(list(s) == sorted(s, key=MODIFIERS.index) for s in sets)
    with pytest.raises(ValueError, match="max_modifiers"):
        headroom.modifier_sets(len(MODIFIERS) + 1)


def test_picks_against_hand_computed_choices():
    samples = [record("a", 0.9, 0.4, 1.0), record("a", 0.7, 0.6, 3.0),  # task a: content 0.8, aesthetic 0.5, proxy 2
               record("b", 1.0, 0.2, 0.0)]
    candidates = [
        record("a", 0.85, 0.9, 0.5, []), record("a", 0.75, 0.95, 9.0, ["soft lighting"]),  # the best aesthetic drops content
        record("b", 0.9, 0.8, 5.0, []), record("b", 0.8, 0.9, 1.0, ["soft lighting"]),  # nothing keeps b's content 1.0
    ]
    base = headroom.task_means(samples)
    assert base["a"] == pytest.approx({"gold/content": 0.8, "gold/aesthetic": 0.5, "proxy": 2.0})
    chosen = headroom.picks(candidates, base)
    assert chosen[headroom.GOLD_PICK]["a"]["gold/aesthetic"] == 0.9  # content 0.85 >= 0.8; 0.75 is not
    assert chosen[headroom.GOLD_PICK]["b"]["gold/aesthetic"] == 0.9  # no candidate keeps 1.0: best of all
    assert chosen[headroom.PROXY_PICK]["a"]["proxy"] == 9.0 and chosen[headroom.PROXY_PICK]["b"]["proxy"] == 5.0
    assert set(chosen) == {headroom.GOLD_PICK, headroom.PROXY_PICK, "(none)", "soft lighting"}


def test_paired_change_is_the_mean_task_difference():
    samples = [record("a", 0.8, 0.5, 2.0), record("b", 0.9, 0.2, 0.0), record("c", 0.5, 0.5, 0.5)]
    choice = {"a": {"gold/content": 0.85}, "b": {"gold/content": 0.95}, "c": {"gold/content": math.nan}}
    mean, change, low, high, n = headroom.paired(choice, headroom.task_means(samples), "gold/content")
    assert n == 2 and mean == pytest.approx(0.9) and change == pytest.approx(0.05)
    assert low == pytest.approx(0.05) and high == pytest.approx(0.05)  # both differences are 0.05: no spread
    rows = headroom.headroom_rows(
        [record("a", 0.85, 0.9, 0.5, []), record("b", 0.95, 0.1, 1.0, [])], samples)
    assert [r["choice"] for r in rows] == [headroom.GOLD_PICK, headroom.PROXY_PICK, "(none)"]
    assert rows[2]["gold/aesthetic"]["change"] == pytest.approx(np.mean([0.9 - 0.5, 0.1 - 0.2]))


def test_paired_task_change_edge_cases():
    from promptgym.experiments.stats import paired_task_change

    assert paired_task_change("m", {"a": 1.0}, {"b": 2.0}) is None  # no shared task
    assert paired_task_change("m", {"a": math.nan}, {"a": 2.0}) is None
    one = paired_task_change("m", {"a": 1.0, "b": 3.0}, {"a": 1.5})
    assert (one.before, one.after, one.change, one.low, one.high, one.n) == (1.0, 1.5, 0.5, 0.5, 0.5, 1)
    assert headroom.paired({}, {}, "gold/content")[4] == 0


@pytest.mark.slow
def test_headroom_end_to_end_on_the_synth_stack(tmp_path):
    samples = [{"task_id": "t0", "source": "an owl in a desert, anime", "instruction": "replace the owl with a rabbit",
                "target": "a rabbit in a desert, anime, soft lighting", "prompt": "a cat in a desert, anime",
                "reward": 0.0, "components": {"gold/content": 0.5, "gold/aesthetic": 0.3, "reward/unnormalized": 0.0}},
               {"task_id": "t1", "source": "a dog", "instruction": "make it better", "target": None, "prompt": "a dog",
                "reward": 0.0, "components": {}}]  # no target scene: left out
    path = tmp_path / "eval" / "start_test_samples.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    report = headroom.main([str(path), "--max-modifiers", "1", "--config", "synth", "--threads", "1"])
    assert len(report["candidates"]) == 1 + len(MODIFIERS)
    assert {c["task_id"] for c in report["candidates"]} == {"t0"}
    assert all(c["prompt"].startswith("a rabbit in a desert, anime") for c in report["candidates"])
    for name in ("md", "jsonl", "png"):
        assert (path.parent / f"headroom_start_test.{name}").stat().st_size > 0
    gold = next(r for r in report["rows"] if r["choice"] == headroom.GOLD_PICK)
    assert gold["gold/content"]["tasks"] == 1 and 0 <= gold["gold/content"]["mean"] <= 1
    # the scored candidates pair with other samples of the same tasks without rendering again
    again = headroom.main([str(path), "--candidates", str(path.parent / "headroom_start_test.jsonl"),
                           "--out", str(tmp_path / "again")])
    assert again["rows"] == report["rows"]
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["headroom_start_test.md", "headroom_start_test.png"]
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({**samples[0], "task_id": "elsewhere"}) + "\n")
    with pytest.raises(SystemExit):
        headroom.main([str(other), "--candidates", str(path.parent / "headroom_start_test.jsonl")])
