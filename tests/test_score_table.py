"""ScoreTable: precomputed source scores of the image terms, served exactly where the render settings and the
scorers' weights match, re-attached after the caches are emptied, dropped when the weights change; the shipped
synth table covers the demo tasks' sources and agrees with a fresh render."""

from __future__ import annotations

import json

import pytest
import torch

from promptgym.envs import load_tasks
from promptgym.experiments.cli import main
from promptgym.rewards import EditResult, build_reward, clear_reward_caches, reward_stats
from promptgym.rewards.presets import SYNTH_SCORE_TABLE
from promptgym.rewards.score_table import FORMAT, ScoreTable, build_score_table, term_signature
from promptgym.rewards.world import synth_path

SETTINGS = {"num_inference_steps": 2, "images_per_prompt": 2}


@pytest.fixture(scope="module")
def tasks():
    return load_tasks("demo", "test")[:12]


def tiny(score_table=None, **settings):
    return build_reward("tiny", renderer=SETTINGS | settings, score_table=score_table)


def edits(tasks):
    return [EditResult(task, f"{task.source}, {i} candles") for i, task in enumerate(tasks)]


@pytest.fixture(scope="module")
def table_path(tmp_path_factory, tasks):
    path = tmp_path_factory.mktemp("table") / "scores.json"
    build_score_table(tiny(), tasks).save(path)
    return path


def sources(tasks):
    return len({task.source for task in tasks})


def rendered(reward):
    return reward_stats(reward)["render/images_rendered"]


def test_a_table_serves_the_source_scores_without_rendering_them(tasks, table_path):
    live, served = tiny(), tiny(table_path)
    assert served.score_table is not None and live.score_table is None
    expected, got = live(edits(tasks)), served(edits(tasks))
    for term in ("aesthetic", "pickscore"):
        torch.testing.assert_close(got.components[f"{term}/source"], expected.components[f"{term}/source"],
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(got.components[term], expected.components[term], rtol=0, atol=1e-5)
        assert reward_stats(served)[f"score_cache/{term}_table_hits"] == len(tasks)
    torch.testing.assert_close(got.total, expected.total, rtol=0, atol=1e-4)
    assert rendered(live) - rendered(served) == 2 * sources(tasks)  # K=2 images of every source, spared


def test_a_table_of_other_settings_or_weights_is_not_used(tasks, table_path):
    table = ScoreTable.load(table_path)
    assert set(table.attach(tiny())) == {"aesthetic", "pickscore"}
    assert all(n == sources(tasks) for n in table.attach(tiny()).values())
    assert table.attach(tiny(num_inference_steps=3)) == {"aesthetic": 0, "pickscore": 0}  # other renders
    assert table.attach(tiny(images_per_prompt=1)) == {"aesthetic": 0, "pickscore": 0}
    other = build_reward("tiny", renderer=SETTINGS, seed=1)  # other weights and noise
    assert table.attach(other) == {"aesthetic": 0, "pickscore": 0}
    # a weights change in place is caught when the caches are cleared (as they must be after one)
    reward = tiny(table_path)
    scorer = reward.terms["aesthetic"][0]
    before = term_signature(scorer)
    with torch.no_grad():
        next(scorer.mlp.parameters()).add_(1.0)
    clear_reward_caches(reward)
    assert term_signature(scorer) != before
    assert scorer.score_cache.pinned == 0 and reward.terms["pickscore"][0].score_cache.pinned == sources(tasks)
    out = reward(edits(tasks))
    torch.testing.assert_close(out.components["aesthetic/source"], scorer([EditResult(t, t.source) for t in tasks]))


def test_clearing_the_caches_keeps_the_table(tasks, table_path):
    reward = tiny(table_path)
    reward(edits(tasks))
    clear_reward_caches(reward)  # as the bench does between variants
    assert reward.terms["aesthetic"][0].score_cache.pinned == sources(tasks)
    reward(edits(tasks))
    assert rendered(reward) == 2 * len(tasks)  # the edits only, again


def test_tables_save_load_and_refuse_other_files(tmp_path, table_path, tasks):
    table = ScoreTable.load(table_path)
    again = ScoreTable.load(table.save(tmp_path / "copy.json"))
    assert again.tables == table.tables and len(again) == len(table) == 2 * sources(tasks)
    assert repr(again) == f"ScoreTable(2 signature(s), {2 * sources(tasks)} score(s))"
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else", "tables": {}}))
    with pytest.raises(ValueError, match=FORMAT):
        ScoreTable.load(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="build-score-table"):
        ScoreTable.load(tmp_path / "missing.json")
    assert tiny("auto").score_table is None  # tiny has no shipped table: random models, rebuilt per run


def test_the_shipped_synth_table_covers_the_demo_sources_and_matches_a_fresh_render():
    reward = build_reward("synth")  # score_table="auto"
    sources = {t.source for split in ("train", "test") for t in load_tasks("demo", split)}
    for name in ("aesthetic", "pickscore"):
        assert reward.terms[name][0].score_cache.pinned == len(sources), (
            f"the shipped {SYNTH_SCORE_TABLE} does not match the synth {name} term: rebuild it with `promptgym "
            f"reward build-score-table --out {synth_path(SYNTH_SCORE_TABLE)}`")
    live = build_reward("synth", score_table=None)
    tasks = load_tasks("demo", "test")[::30][:4]
    got, expected = reward(edits(tasks)), live(edits(tasks))
    assert rendered(live) - rendered(reward) == 2 * len(tasks)
    for name in ("aesthetic", "pickscore"):
        torch.testing.assert_close(got.components[f"{name}/source"], expected.components[f"{name}/source"],
                                   rtol=0, atol=1e-3)


def test_the_cli_builds_a_table_for_a_config_and_refuses_the_tiny_stack(tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"source": f"a red fox in a forest, {style}", "instruction": "make it night"})
                             + "\n" for style in ("watercolor", "anime")))
    out = tmp_path / "table.json"
    argv = ["reward", "build-score-table", "--out", str(out), "--set", f"data.tasks={tasks}", "--splits", "train"]
    assert main(argv) == 0
    about = json.loads(out.read_text())["about"]
    assert about["sources"] == 2 and about["entries"] == 4 and set(about["terms"]) == {"aesthetic", "pickscore"}
    assert main([*argv, "--add"]) == 0 and len(ScoreTable.load(out)) == 4  # the same scores again: no new entries
    with pytest.raises(SystemExit):
        main(["reward", "build-score-table", "--out", str(out), "--config", "tiny"])
    assert "tiny preset" in capsys.readouterr().err
