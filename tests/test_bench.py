"""`promptgym bench`: a two-variant, one-seed, tiny-budget run through the CLI writes its table, plot and raw
numbers, respects the budget and starts every LM variant from the same SFT'd policy; the summary statistics are
checked against an independent bootstrap."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import matplotlib.image
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("trl")

from promptgym.agents import sft_warm_start  # noqa: E402
from promptgym.agents.baselines import RunResult  # noqa: E402
from promptgym.envs import load_tasks  # noqa: E402
from promptgym.experiments import bench  # noqa: E402
from promptgym.experiments.builders import build_policy, build_tokenizer, seed_everything  # noqa: E402
from promptgym.experiments.cli import main  # noqa: E402
from promptgym.experiments.stats import bootstrap_ci  # noqa: E402

pytestmark = pytest.mark.slow  # subprocesses / training runs: `pytest -m "not slow"` skips them

OVERRIDES = ["sft.max_steps=10", "sft.batch_size=8", "ppo.n_episodes=8", "ppo.batch_size=4", "ppo.n_epochs=1"]
BUDGET = 16
BATCH = 8  # ppo.n_episodes: every variant's batch of reward calls


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--config", "tiny", "--variants", "sft,ppo,grpo,rwr", "--seeds", "1", "--budget", str(BUDGET),
            "--reward", "integrity", "--eval-episodes", "8", "--out", str(out)]
    for override in OVERRIDES:
        argv += ["--set", override]
    assert main(argv) == 0
    return out


def test_bench_writes_table_csv_json_and_plot(bench_dir):
    for name in ("bench.md", "bench.csv", "bench.json", "curves.png"):
        assert (bench_dir / name).stat().st_size > 0, name
    md = (bench_dir / "bench.md").read_text()
    assert all(f"| {name} | SFT | 1 |" in md for name in ("sft", "ppo", "grpo", "rwr"))
    assert "proxy reward vs SFT" in md and "KL to start" in md
    rows = list(csv.DictReader((bench_dir / "bench.csv").open()))
    assert [row["variant"] for row in rows] == ["sft", "ppo", "grpo", "rwr"]
    raw = json.loads((bench_dir / "bench.json").read_text())
    assert raw["budget"] == BUDGET and raw["reward"] == "integrity" and raw["seeds"] == [0]
    sft = raw["runs"][0]
    run_keys = ["variant", "seed", "curve", "curve_components", "eval_reward", "eval_components", "eval_kl",
                "reward_calls", "budget", "wall_time_s", "start", "start_sha256", "info"]
    assert all(list(run) == run_keys for run in raw["runs"])  # a run's entry: these columns, in this order
    assert sft["variant"] == "sft" and sft["reward_calls"] == 0 and sft["curve"] == []
    for run in raw["runs"][1:]:  # the integrity reward renders nothing: CPU time, no image count
        assert run["info"]["cpu_time_s"] > 0 and "images_rendered" not in run["info"], run["variant"]
    assert sft["eval_kl"] == pytest.approx(0.0, abs=1e-6)  # the start against itself
    assert all(run["eval_kl"] is not None for run in raw["runs"])  # every LM variant has its KL to the start
    for row, run in zip(rows[1:], raw["runs"][1:]):  # one seed: the change vs SFT is the plain difference
        assert float(row["reward_vs_sft"]) == pytest.approx(run["eval_reward"] - sft["eval_reward"])
    for row, run in zip(rows, raw["runs"]):
        # one seed: the table's mean is that run's eval reward; the integrity-only reward has one component = total
        assert float(row["reward"]) == pytest.approx(run["eval_reward"])
        assert set(run["eval_components"]) == {"integrity"}
        assert run["eval_components"]["integrity"] == pytest.approx(run["eval_reward"])
        assert 0.0 <= run["eval_reward"] <= 1.0


def test_bench_respects_the_budget_and_logs_curves_in_reward_calls(bench_dir):
    raw = json.loads((bench_dir / "bench.json").read_text())
    for run in raw["runs"][1:]:  # after the sft reference, which makes no reward call
        assert BUDGET <= run["reward_calls"] < BUDGET + BATCH, run["variant"]
        xs = [x for x, _ in run["curve"]]
        assert xs == sorted(xs) and xs[-1] == run["reward_calls"]
        assert all(math.isfinite(y) for _, y in run["curve"])
        assert len(run["curve_components"]) == len(run["curve"])  # one component mean per curve point
        assert all("integrity" in c for c in run["curve_components"])
        for clock in ("cpu_s", "wall_s"):  # training time so far at each point: positive, never decreasing
            times = [c[clock] for c in run["curve_components"]]
            assert times[0] > 0 and times == sorted(times), (run["variant"], clock)


def test_lm_variants_share_one_sft_start_equal_to_an_independent_sft(bench_dir):
    raw = json.loads((bench_dir / "bench.json").read_text())
    starts = {run["variant"]: run["start_sha256"] for run in raw["runs"]}
    assert starts["ppo"] == starts["grpo"] == starts["rwr"] == starts["sft"] is not None
    # recompute the seed-0 SFT start independently: same hash; an untrained policy has a different one
    config = bench.variant_config("ppo", 0, OVERRIDES, "integrity", config="tiny")
    seed_everything(0)
    tokenizer = build_tokenizer(config)
    policy = build_policy(config, tokenizer)
    untrained = bench.weights_sha256(policy)
    train = [t for t in load_tasks(config.data.tasks, config.data.train_split) if t.target is not None]
    held_out = [t for t in load_tasks(config.data.tasks, config.data.eval_split) if t.target is not None][:256]
    sft_warm_start(policy, tokenizer, train, held_out, config=config.sft, progress=False)
    assert bench.weights_sha256(policy) == starts["ppo"]
    assert untrained != starts["ppo"]


def _run(variant, seed, reward, calls=16, gold=0.5, kl=1.0):
    components = {"integrity": reward, "x/y": 1.0, "gold/content": gold}
    return RunResult(variant, seed, [(8, reward / 2), (calls, reward)], reward, components, calls, 16, 2.0 + seed,
                     "scratch" if variant == "sb3-ppo" else "sft",
                     curve_components=[{"gold/content": gold, "kl": kl / 2}, {"gold/content": gold, "kl": kl}],
                     eval_kl=None if variant == "sb3-ppo" else kl)


def _reference_iqm(values):
    """Mean of the middle 50%: drop floor(n/4) from each end of the sorted values."""
    values, cut = sorted(values), int(0.25 * len(values))
    return float(np.mean(values[cut:len(values) - cut]))


def _reference_iqm_ci(values, n_resamples=2000, seed=0):
    """Bootstrap of the IQM over runs, one resample at a time (one task: stratified = plain resampling of runs)."""
    rng = np.random.default_rng(seed)
    stats = [_reference_iqm(np.asarray(values)[rng.integers(0, len(values), size=(len(values), 1))][:, 0])
             for _ in range(n_resamples)]
    return tuple(np.quantile(stats, [0.025, 0.975]))


def test_summary_rows_are_iqms_with_an_independent_stratified_bootstrap_and_write_bench(tmp_path):
    rewards = {"ppo": [0.1, 0.4, 0.3, 0.9, -2.0], "sb3-ppo": [0.0, 0.05, 0.02, 0.01, 0.03]}
    runs = [_run(v, s, r, calls=16 + s) for v, values in rewards.items() for s, r in enumerate(values)]
    result = bench.BenchResult(runs, ["ppo", "sb3-ppo"], [0, 1, 2, 3, 4], 16, "integrity", [], 8, config="tiny")
    rows = bench.summary_rows(result)
    for row, (variant, values) in zip(rows, rewards.items()):
        assert row["variant"] == variant
        assert row["reward"] == pytest.approx(_reference_iqm(values))  # ppo: the outlying -2.0 and 0.9 are cut
        assert (row["reward_ci_low"], row["reward_ci_high"]) == pytest.approx(_reference_iqm_ci(values))
        assert row["integrity"] == pytest.approx(_reference_iqm(values))
        assert row["gold/content"] == pytest.approx(0.5)
        assert "x/y" not in row  # sub-components ("term/source") stay in bench.json, out of the table
        assert row["wall_time_s"] == pytest.approx(4.0)
        assert (row["reward_calls_min"], row["reward_calls_max"]) == (16, 20)
    assert rows[0]["reward"] == pytest.approx(np.mean([0.1, 0.4, 0.3]))
    assert rows[0]["kl"] == pytest.approx(1.0) and math.isnan(rows[1]["kl"])  # SB3 has no LM: no KL
    files = bench.write_bench(result, tmp_path)
    assert [f.name for f in files] == ["bench.md", "bench.csv", "bench.json", "curves.png", "gold_vs_kl.png"]
    md = (tmp_path / "bench.md").read_text()
    assert "scratch (no LM)" in md and "16–20" in md and "interquartile mean" in md


def test_change_vs_sft_and_refinements_vs_ppo_are_paired_by_seed():
    runs = [_run("sft", 0, 0.5), _run("sft", 1, 0.2), _run("ppo", 1, 0.4, gold=0.6), _run("ppo", 0, 0.6, gold=0.4),
            _run("sb3-ppo", 0, 0.1), _run("diffchat", 0, 0.9, gold=0.5), _run("diffchat", 1, 0.3, gold=0.9)]
    result = bench.BenchResult(runs, ["sft", "ppo", "diffchat", "sb3-ppo"], [0, 1], 16, "integrity", [], 8)
    rows = {r["variant"]: r for r in bench.summary_rows(result)}
    low, high = bootstrap_ci([0.6 - 0.5, 0.4 - 0.2], np.mean, 0.95, 2000, 0)  # per seed: +0.1 and +0.2
    assert rows["ppo"]["reward_vs_sft"] == pytest.approx(0.15)
    assert (rows["ppo"]["reward_vs_sft_ci_low"], rows["ppo"]["reward_vs_sft_ci_high"]) == pytest.approx((low, high))
    assert math.isnan(rows["sft"]["reward_vs_sft"]) and math.isnan(rows["sb3-ppo"]["reward_vs_sft"])  # not paired
    (refinement,) = bench.refinement_rows(result)
    assert refinement["variant"] == "diffchat" and refinement["seeds"] == 2
    assert refinement["reward"] == pytest.approx(np.mean([0.9 - 0.6, 0.3 - 0.4]))  # seed 0: +0.3, seed 1: -0.1
    assert refinement["gold/content"] == pytest.approx(np.mean([0.5 - 0.4, 0.9 - 0.6]))
    assert refinement["kl"] == pytest.approx(0.0)
    assert bench.refinement_rows(bench.BenchResult(runs[:2] + runs[5:], ["sft", "diffchat"], [0, 1], 16,
                                                   "integrity", [], 8)) == []  # no plain ppo: nothing to pair


def _timed(variant, seed, aesthetic, proxy, seconds):
    """A run whose curve has per-point CPU times, gold aesthetic and the unnormalised proxy."""
    curve = [(32 * (i + 1), 0.0) for i in range(len(seconds))]
    parts = [{"gold/aesthetic": a, "reward/unnormalized": p, "cpu_s": t, "wall_s": t}
             for a, p, t in zip(aesthetic, proxy, seconds)]
    return RunResult(variant, seed, curve, 0.0, {}, curve[-1][0], 128, seconds[-1], "sft", curve_components=parts)


def test_bench_md_has_the_speed_per_result_against_grpo(tmp_path):
    runs = [_timed("grpo", 0, [0.1, 0.2, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4], [10, 20, 30, 40]),
            _timed("ppo", 0, [0.5] * 4, [0.0, 0.1, 0.2, 0.2], [15, 30, 45, 60]),
            _timed("oracle", 0, [0.2] * 4, [9.0] * 4, [15, 30, 45, 60])]
    result = bench.BenchResult(runs, ["ppo", "grpo", "oracle"], [0], 128, "config", [], 8, config="tiny")
    speed = {(row["metric"], row["variant"]): row for row in bench.bench_speed_rows(result)}
    # grpo's final trailing mean (4 points) is 0.3 aesthetic, reached at its 4th point (40 s); ppo is there at 15 s
    assert speed["gold/aesthetic", "ppo"]["speed"] == [40 / 15] and speed["gold/aesthetic", "grpo"]["speed"] == [1.0]
    assert speed["gold/aesthetic", "oracle"]["speed"] == [0.0]  # never reaches 0.3
    # proxy level 0.25: ppo's trailing means end at 0.125: not reached; the oracle's proxy is another reward's
    assert speed["reward/unnormalized", "ppo"]["speed"] == [0.0] and ("reward/unnormalized", "oracle") not in speed
    files = bench.write_bench(result, tmp_path)
    assert files[-1].name == "speed.png" and matplotlib.image.imread(files[-1]).ndim == 3  # a readable image
    assert set(bench._speed_panels(result, ["ppo", "grpo", "oracle"])) == {"gold aesthetic (training episodes)",
                                                                           "proxy reward (training episodes)"}
    assert "oracle" not in bench._speed_panels(result, ["oracle"]).get("proxy reward (training episodes)", {})
    md = (tmp_path / "bench.md").read_text()
    assert "## Speed per result against `grpo`" in md
    assert "| gold aesthetic | ppo | 1/1 | 15 | 2.67 | 0: 2.67 |" in md
    assert "| proxy reward | ppo | 0/1 | n/a | 0.00 | 0: 0.00 |" in md
    raw = json.loads((tmp_path / "bench.json").read_text())
    assert [row["variant"] for row in raw["speed_vs_grpo"]] == ["grpo", "ppo", "oracle", "grpo", "ppo"]


def test_resume_keeps_finished_runs_and_refuses_other_settings(tmp_path, monkeypatch):
    runs = [_run("sft", 0, 0.5), _run("ppo", 0, 0.6)]
    done = bench.BenchResult(runs, ["sft", "ppo"], [0], 16, "integrity", [], 8, config="tiny")
    bench.write_bench(done, tmp_path)
    settings, loaded = bench.load_bench(tmp_path)
    assert settings == done.settings() and [r.to_dict() for r in loaded] == [r.to_dict() for r in runs]
    ran = []
    monkeypatch.setattr(bench, "_seed_context", lambda *args: bench.SeedContext(None, None, None, [], 8))
    monkeypatch.setattr(bench, "_run_variant", lambda variant, config, ctx, budget: ran.append(variant) or _run(
        variant, config.seed, 0.7))
    result = bench.run_bench(["sft", "ppo", "grpo"], seeds=1, budget=16, out=tmp_path, reward="integrity",
                             eval_episodes=8, progress=False, config="tiny", resume=True)
    assert ran == ["grpo"]  # sft and ppo of seed 0 came from bench.json
    assert [r.variant for r in result.runs] == ["sft", "ppo", "grpo"]
    assert [r.variant for r in bench.load_bench(tmp_path)[1]] == ["sft", "ppo", "grpo"]
    with pytest.raises(ValueError, match="other settings.*budget"):
        bench.run_bench(["sft"], seeds=1, budget=32, out=tmp_path, reward="integrity", eval_episodes=8,
                        progress=False, config="tiny", resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        bench.run_bench(["sft"], seeds=1, budget=16, out=tmp_path / "new", resume=True, config="tiny")


def test_resume_refuses_a_seed_whose_sft_start_changed(tmp_path, monkeypatch):
    start = torch.nn.Linear(2, 2)
    finished = dataclasses.replace(_run("ppo", 0, 0.6), start_sha256=bench.weights_sha256(start))
    bench.write_bench(bench.BenchResult([finished], ["ppo", "grpo"], [0], 16, "integrity", [], 8, config="tiny"),
                      tmp_path)
    monkeypatch.setattr(bench, "_run_variant", lambda variant, config, ctx, budget: _run(variant, config.seed, 0.7))
    same = bench.SeedContext(None, start, None, [], 8)
    monkeypatch.setattr(bench, "_seed_context", lambda *args: same)
    result = bench.run_bench(["ppo", "grpo"], seeds=1, budget=16, out=tmp_path, reward="integrity", eval_episodes=8,
                             progress=False, config="tiny", resume=True)
    assert [r.variant for r in result.runs] == ["ppo", "grpo"]  # the same start: grpo ran beside the finished ppo
    other = torch.nn.Linear(2, 2)  # e.g. SFT rerun with another torch thread count
    monkeypatch.setattr(bench, "_seed_context", lambda *args: bench.SeedContext(None, other, None, [], 8))
    with pytest.raises(ValueError, match="seed 0's SFT start now has weights .*--threads"):
        bench.run_bench(["ppo", "grpo", "rloo"], seeds=1, budget=16, out=tmp_path, reward="integrity",
                        eval_episodes=8, progress=False, config="tiny", resume=True)


def test_variant_configs_lay_the_ablation_and_the_oracle_over_the_base_config():
    base = bench.variant_config("sft", 3, ["ppo.learning_rate=0.001"], config="synth")
    plain = bench.variant_config("ppo", 3, ["ppo.learning_rate=0.001"], config="synth")
    oracle = bench.variant_config("oracle", 3, ["ppo.learning_rate=0.001"], config="synth")
    assert plain.policy == base.policy and plain.sft == base.sft and plain.reward == base.reward  # synth's, not tiny's
    assert (plain.ppo.typical_mass, plain.ppo.negative_fraction, plain.ppo.integrity_value_coef) == (None, 0.0, 0.0)
    assert plain.ppo.learning_rate == 0.001 and plain.seed == 3  # the user's overrides still apply
    assert oracle.reward.preset == "synth-gold" and oracle.ppo == base.ppo and oracle.sft == base.sft
    bench._check_shared(base, {"ppo": plain, "oracle": oracle})  # the oracle may differ in its reward
    with pytest.raises(ValueError, match="oracle.*preset is 'synth'"):
        bench.variant_config("oracle", 0, config="tiny")
    with pytest.raises(ValueError, match="oracle.*--reward integrity"):
        bench.variant_config("oracle", 0, reward="integrity", config="synth")


def test_the_surrogate_row_trains_synth_ppo_on_the_text_only_reward_without_monitors():
    base = bench.variant_config("sft", 1, ["ppo.n_epochs=2"], config="synth")
    row = bench.variant_config("surrogate", 1, ["ppo.n_epochs=2"], config="synth")
    assert row.reward.preset == "surrogate" and row.reward.monitors is False  # no render in training
    assert row.reward.weights == {"aesthetic": 0.7, "pickscore": 0.3, "integrity": 4.0}  # synth's integrity weight
    assert (row.reward.integrity, row.reward.normalize) == (base.reward.integrity, base.reward.normalize)
    assert row.ppo == base.ppo and row.policy == base.policy and row.sft == base.sft and row.seed == 1
    bench._check_shared(base, {"surrogate": row})  # differs from the base only in its training reward
    with pytest.raises(ValueError, match="'surrogate' variant trains on the text-only surrogate.*got preset 'tiny'"):
        bench.variant_config("surrogate", 0, config="tiny")


def test_a_bench_checks_every_variant_before_it_starts(tmp_path):
    with pytest.raises(ValueError, match="'surrogate' variant .*got preset 'tiny'"):
        bench.run_bench(["sft", "surrogate"], seeds=1, budget=8, out=tmp_path / "out", config="tiny", progress=False)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_the_cli_default_runs_every_variant():
    from promptgym.experiments.cli import build_parser

    args = build_parser().parse_args(["bench"])
    assert bench.parse_variants(args.variants) == list(bench.VARIANTS)


def test_bad_variants_and_mismatched_configs_are_clear_errors():
    assert bench.parse_variants("ppo, grpo") == ["ppo", "grpo"]
    with pytest.raises(ValueError, match="unknown \\['ppo\\+foo'\\]"):
        bench.parse_variants("ppo,ppo+foo")
    with pytest.raises(ValueError, match="twice"):
        bench.parse_variants("ppo,ppo")
    with pytest.raises(ValueError, match="reward='images'"):
        bench.variant_config("ppo", 0, [], "images")
    a = bench.variant_config("ppo", 0, config="tiny")
    b = bench.variant_config("diffchat", 0, ["sft.max_steps=3"], config="tiny")
    with pytest.raises(ValueError, match="'diffchat' has a different 'sft' section"):
        bench._check_shared(a, {"diffchat": b})
    bench._check_shared(a, {"diffchat": bench.variant_config("diffchat", 0, config="tiny")})  # differ only in ppo
    with pytest.raises(ValueError, match="budget=0"):
        bench.run_bench(["ppo"], seeds=1, budget=0)
    with pytest.raises(ValueError, match="bench_chat"):
        bench.run_bench(["ppo"], seeds=1, budget=16, config="chat")


def test_cli_rejects_unknown_variant(capsys):
    assert main(["bench", "--variants", "ppo,nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_a_surrogate_row_trains_without_renders_and_is_scored_with_gold(tmp_path):
    small = ["sft.max_steps=2", "ppo.n_episodes=4", "ppo.batch_size=4", "ppo.n_epochs=1", "policy.num_layers=1"]
    result = bench.run_bench(["surrogate"], seeds=1, budget=8, out=tmp_path, overrides=small, eval_episodes=4,
                             progress=False, config="synth")
    (run,) = result.runs
    assert run.info["training_reward"] == "surrogate" and run.reward_calls >= 8
    assert not any(k.startswith("gold/") for point in run.curve_components for k in point)  # monitors off in training
    assert {"gold/content", "gold/aesthetic"} <= set(run.eval_components)  # scored by synth's reward, with gold
    assert "surrogate` trains on the text-only surrogate reward" in (tmp_path / "bench.md").read_text()


def test_training_cost_counts_cpu_seconds_and_the_rewards_renders():
    import time

    from promptgym.rewards import EditTask, build_reward
    from promptgym.rewards.base import EditResult

    reward = build_reward("tiny")
    start = time.process_time()
    task = EditTask("a cat", "make it red", target="a red cat")
    reward([EditResult(task, "a red cat"), EditResult(task, "a red cat, vivid")])
    cost = bench._training_cost(start, reward)
    renderer = reward.terms["aesthetic"][0].renderer
    assert cost["images_rendered"] == renderer.images_rendered == 3 * renderer.images_per_prompt  # 2 edits + source
    assert cost["cpu_time_s"] > 0
    assert set(bench._training_cost(start, object())) == {"cpu_time_s"}  # a reward that is not a CompositeReward


def _bench_dir(path, runs, budget=16, overrides=()):
    variants = [v for v in bench.VARIANTS if any(r.variant == v for r in runs)]
    seeds = sorted({r.seed for r in runs})
    bench.write_bench(bench.BenchResult(runs, variants, seeds, budget, "integrity", list(overrides), 8, config="tiny"),
                      path)
    return path


def test_merge_joins_seeds_run_apart_and_a_later_bench_replaces_a_seed_whole(tmp_path):
    start, other = "a" * 64, "b" * 64
    seed0 = [dataclasses.replace(_run(v, 0, 0.5), start_sha256=start) for v in ("sft", "ppo")]
    seed1 = [dataclasses.replace(_run(v, 1, 0.6), start_sha256=other) for v in ("sft", "ppo", "grpo")]
    rerun0 = [dataclasses.replace(_run(v, 0, 0.9), start_sha256=other) for v in ("sft", "ppo")]
    a, c = (_bench_dir(tmp_path / n, r) for n, r in (("a", seed0), ("c", rerun0)))
    b = _bench_dir(tmp_path / "b", seed1, overrides=["seed=1"])  # `--set seed=1 --seeds 1`: its seed only
    merged = bench.merge_benches([a, b], tmp_path / "ab")
    assert [(r.variant, r.seed) for r in merged.runs] == [("sft", 0), ("sft", 1), ("ppo", 0), ("ppo", 1), ("grpo", 1)]
    assert merged.seeds == [0, 1] and (tmp_path / "ab" / "bench.md").is_file()
    assert bench.load_bench(tmp_path / "ab")[0] == bench.load_bench(a)[0]  # the sources' settings, resumable
    replaced = bench.merge_benches([a, b, c], tmp_path / "abc")  # c reran seed 0 whole: its runs win
    assert [r.eval_reward for r in replaced.of("ppo")] == [0.9, 0.6]
    partial = _bench_dir(tmp_path / "d", rerun0[1:])  # seed 0's ppo alone, from another start: a mixed seed
    with pytest.raises(ValueError, match="merged seed 0 has runs from 2 different SFT starts"):
        bench.merge_benches([a, partial], tmp_path / "bad")
    longer = _bench_dir(tmp_path / "e", seed1, budget=32)
    with pytest.raises(ValueError, match="other settings.*budget"):
        bench.merge_benches([a, longer], tmp_path / "bad")
    tuned = _bench_dir(tmp_path / "f", seed1, overrides=["seed=1", "ppo.kl_coef=0.1"])
    with pytest.raises(ValueError, match="other settings.*overrides"):
        bench.merge_benches([a, tuned], tmp_path / "bad")


def test_cli_merges_benches_and_names_a_missing_one(tmp_path, capsys):
    a = _bench_dir(tmp_path / "a", [_run("sft", 0, 0.5), _run("ppo", 0, 0.6)])
    b = _bench_dir(tmp_path / "b", [_run("sft", 1, 0.5), _run("ppo", 1, 0.7)])
    assert main(["bench", "--merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 0
    assert "merged 2 benches" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "bench.json").read_text())["seeds"] == [0, 1]
    assert main(["bench", "--merge", str(tmp_path / "nope"), "--out", str(tmp_path / "m2")]) == 2
    assert "no bench.json" in capsys.readouterr().err
