"""Evaluation: metric functions against hand computations, bootstrap CIs, pinned-task sampling, the tiny stack."""

from __future__ import annotations

import csv
import json
import math
import zlib

import numpy as np
import pytest
import torch

from promptgym.agents import PolicyWithValue, save_checkpoint
from promptgym.envs import default_tokenizer, load_tasks
from promptgym.experiments.evaluate import evaluate_policy, evaluate_run, format_eval_table, write_eval
from promptgym.experiments.rundir import run_policy_dir
from promptgym.experiments.stats import bootstrap_ci, diversity, mean_ci, task_diversities, win_indicators, win_rate
from promptgym.rewards import ContentIntegrityScorer, EditResult, build_reward
from promptgym.rewards.semantic import intent_text


# ============================================================================================== win rate
def test_win_rate_counts_ties_half():
    edited, source = [3.0, 1.0, 2.0, 5.0], [1.0, 1.0, 3.0, 4.0]
    np.testing.assert_array_equal(win_indicators(edited, source), [1.0, 0.5, 0.0, 1.0])
    assert win_rate(edited, source) == pytest.approx(2.5 / 4)
    assert win_rate(torch.tensor([1.0]), torch.tensor([1.001])) == 0.0
    assert win_rate([1.0], [1.0 + 1e-9], atol=1e-6) == 0.5


def test_win_rate_bad_input():
    with pytest.raises(ValueError, match="one source per edit"):
        win_rate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        win_rate([], [])
    with pytest.raises(ValueError, match=r"source_scores\[1\]=nan"):
        win_rate([1.0, 2.0], [1.0, float("nan")])
    with pytest.raises(ValueError, match="atol=-1"):
        win_rate([1.0], [1.0], atol=-1)


# ============================================================================================== diversity
def test_diversity_identical_zero_orthogonal_one():
    same = torch.tensor([[1.0, 2.0, 3.0]]).repeat(4, 1)
    assert diversity([same]) == pytest.approx(0.0, abs=1e-12)
    assert diversity([torch.eye(3)]) == pytest.approx(1.0)
    assert diversity([torch.eye(3) * torch.tensor([[1.0], [5.0], [0.1]])]) == pytest.approx(1.0)  # scale-free


def test_diversity_hand_computation_and_small_tasks():
    # angles 0, 90, 180 degrees: distances 1 (0-90), 2 (0-180), 1 (90-180) -> mean 4/3
    fan = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    single = torch.tensor([[1.0, 1.0]])
    np.testing.assert_allclose(task_diversities([fan, single, torch.eye(2)]), [4 / 3, np.nan, 1.0])
    assert diversity([fan, single, torch.eye(2)]) == pytest.approx((4 / 3 + 1.0) / 2)  # the single task is skipped


def test_diversity_all_single_is_nan_with_warning():
    with pytest.warns(RuntimeWarning, match="no task has 2 or more samples"):
        assert math.isnan(diversity([torch.ones(1, 3), torch.ones(1, 3)]))


def test_diversity_bad_input():
    with pytest.raises(ValueError, match=r"embeddings_per_task\[1\] has a zero"):
        diversity([torch.eye(2), torch.tensor([[0.0, 0.0], [1.0, 0.0]])])
    with pytest.raises(ValueError, match=r"embeddings_per_task\[0\] is \(3,\)"):
        diversity([torch.ones(3)])


# ============================================================================================== bootstrap
def test_bootstrap_ci_contains_mean_narrows_and_is_seeded():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    low_s, high_s = bootstrap_ci(small, seed=1)
    low_l, high_l = bootstrap_ci(large, seed=1)
    assert low_s < small.mean() < high_s and low_l < large.mean() < high_l
    assert (high_l - low_l) < (high_s - low_s) / 5  # ~sqrt(100) = 10x narrower
    assert bootstrap_ci(small, seed=1) == (low_s, high_s)
    assert bootstrap_ci(small, seed=np.random.default_rng(1)) == (low_s, high_s)
    assert bootstrap_ci(small, seed=2) != (low_s, high_s)


def test_bootstrap_ci_matches_normal_theory_for_the_mean():
    values = np.random.default_rng(3).normal(size=400)
    low, high = bootstrap_ci(values, n_resamples=4000, seed=0)
    half = 1.959964 * values.std(ddof=0) / math.sqrt(len(values))  # CLT: mean +- z * sigma / sqrt(n)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(values.mean(), abs=0.2 * half)


def test_bootstrap_ci_other_stat_constant_and_errors():
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    low, high = bootstrap_ci([1.0, 2.0, 3.0, 100.0], stat=np.median, n_resamples=500)
    assert 1.0 <= low <= high <= 100.0
    low90, high90 = bootstrap_ci(np.arange(50.0), confidence=0.5)
    low99, high99 = bootstrap_ci(np.arange(50.0), confidence=0.99)
    assert low99 < low90 < high90 < high99
    assert mean_ci([1.0, 2.0, 6.0])[0] == pytest.approx(3.0)
    for kwargs, message in [
        ({"values": []}, "empty"),
        ({"values": [1.0], "confidence": 1.0}, "confidence=1.0"),
        ({"values": [1.0], "n_resamples": 0}, "n_resamples=0"),
        ({"values": [[1.0]]}, "1-D"),
        ({"values": [float("inf")]}, r"values\[0\]=inf"),
    ]:
        with pytest.raises(ValueError, match=message):
            bootstrap_ci(**kwargs)


# ============================================================================================== the tiny stack
class HashEmbedder:
    """A deterministic stand-in for SemanticConsistencyScorer: character-trigram hashing into 64 dims."""

    name = "trigram"

    def embed(self, texts):
        out = torch.zeros(len(texts), 64)
        for i, text in enumerate(texts):
            padded = f"  {text} "
            for j in range(len(padded) - 2):
                out[i, zlib.crc32(padded[j : j + 3].encode()) % 64] += 1.0
        return torch.nn.functional.normalize(out, dim=1)

    def __call__(self, results):
        a = self.embed([intent_text(r.task) for r in results])
        b = self.embed([r.prompt for r in results])
        return (a * b).sum(1)


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def policy(tok):
    return PolicyWithValue.tiny(tok, seed=0)


@pytest.fixture(scope="module")
def tasks():
    return load_tasks("demo", split="test")[:3]


@pytest.fixture(scope="module")
def reward(tok):
    return build_reward("tiny", tokenizer=tok, renderer={"images_per_prompt": 1})


@pytest.fixture(scope="module")
def result(policy, tok, tasks, reward):
    return evaluate_policy(policy, tok, tasks, reward, HashEmbedder(), samples_per_task=2, max_new_tokens=10, seed=0)


def test_evaluate_policy_metrics_are_finite_and_complete(result):
    names = [m.name for m in result.metrics]
    assert names == [
        "reward",
        "aesthetic",
        "aesthetic_gain",
        "pickscore",
        "pickscore_gain",
        "integrity_pass_rate",
        "integrity_ratio",
        "semantic_consistency",
        "prompt_words",
        "diversity",
        "win_rate_reward",
        "win_rate_aesthetic",
        "win_rate_pickscore",
        "win_rate_integrity",
    ]
    for m in result.metrics:
        assert all(math.isfinite(x) for x in (m.value, m.low, m.high)), m
        assert m.low - 1e-9 <= m.value <= m.high + 1e-9, m
        assert m.n == 3
    assert not result.notes
    assert len(result.samples) == 6
    assert 0.0 <= result["win_rate_reward"].value <= 1.0


def test_evaluate_policy_metrics_equal_recomputation_from_samples(result, tasks, reward):
    samples = result.samples
    assert [s["task_id"] for s in samples] == [t.id for t in tasks for _ in range(2)]  # task-major, pinned
    rewards = np.array([s["reward"] for s in samples])
    sources = np.array([s["source_reward"] for s in samples])
    assert result["reward"].value == pytest.approx(rewards.mean(), abs=1e-6)
    assert result["win_rate_reward"].value == pytest.approx(win_rate(rewards, sources))
    # independent scoring of the source prompts: same numbers as the evaluation used
    source_out = reward([EditResult(t, t.source) for t in tasks])
    np.testing.assert_allclose(sources[::2], source_out.total.numpy(), atol=1e-5)
    # integrity from a fresh scorer
    scorer = ContentIntegrityScorer()
    passed = [scorer.details(EditResult(task, s["prompt"])).passed for task, s in zip(np.repeat(tasks, 2), samples)]
    assert result["integrity_pass_rate"].value == pytest.approx(np.mean(passed))
    assert result["prompt_words"].value == pytest.approx(np.mean([len(s["prompt"].split()) for s in samples]))
    embeddings = HashEmbedder().embed([s["prompt"] for s in samples])
    expected = diversity([embeddings[0:2], embeddings[2:4], embeddings[4:6]])
    assert result["diversity"].value == pytest.approx(expected, abs=1e-6)
    gains = [s["components"]["aesthetic"] - s["components"]["aesthetic/source"] for s in samples]
    assert result["aesthetic_gain"].value == pytest.approx(np.mean(gains), abs=1e-5)


def test_evaluate_policy_is_seeded_and_leaves_reward_state_alone(policy, tok, tasks):
    reward = build_reward("tiny", tokenizer=tok, weights={"aesthetic": 0.0, "pickscore": 0.0}, normalize=True)
    before = reward.state_dict()
    kwargs = dict(samples_per_task=2, max_new_tokens=8)
    a = evaluate_policy(policy, tok, tasks, reward, HashEmbedder(), seed=5, **kwargs)
    assert reward.state_dict() == before
    b = evaluate_policy(policy, tok, tasks, reward, HashEmbedder(), seed=5, **kwargs)
    c = evaluate_policy(policy, tok, tasks, reward, HashEmbedder(), seed=6, **kwargs)
    assert [s["prompt"] for s in a.samples] == [s["prompt"] for s in b.samples]
    assert [s["prompt"] for s in a.samples] != [s["prompt"] for s in c.samples]
    assert a.rows() == b.rows()


def test_evaluate_policy_without_semantic_scorer_or_second_sample(policy, tok, tasks):
    reward = ContentIntegrityScorer()
    res = evaluate_policy(policy, tok, tasks, reward, None, samples_per_task=2, max_new_tokens=6)
    assert math.isnan(res["semantic_consistency"].value) and math.isnan(res["diversity"].value)
    assert res["semantic_consistency"].n == 0 and any("semantic_scorer" in note for note in res.notes)
    assert math.isfinite(res["win_rate_integrity"].value)
    res = evaluate_policy(policy, tok, tasks, reward, HashEmbedder(), samples_per_task=1, max_new_tokens=6)
    assert math.isnan(res["diversity"].value) and any("samples_per_task >= 2" in note for note in res.notes)
    assert math.isfinite(res["semantic_consistency"].value)
    with pytest.raises(ValueError, match="samples_per_task=0"):
        evaluate_policy(policy, tok, tasks, reward, None, samples_per_task=0)
    with pytest.raises(ValueError, match="tasks is empty"):
        evaluate_policy(policy, tok, [], reward, None)


def test_write_eval_csv_and_markdown_parse_back(result, tmp_path):
    csv_path, md_path, samples_path = write_eval(result, tmp_path / "eval", "test")
    assert (csv_path.name, md_path.name, samples_path.name) == (
        "eval_test.csv",
        "eval_test.md",
        "eval_test_samples.jsonl",
    )
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["metric"] for r in rows] == [m.name for m in result.metrics]
    for row, m in zip(rows, result.metrics):
        assert float(row["value"]) == m.value and float(row["ci_low"]) == m.low and float(row["ci_high"]) == m.high
        assert int(row["n_tasks"]) == m.n
    table = [line for line in md_path.read_text().splitlines() if line.startswith("| ")]
    header, body = table[0], table[1:]
    assert header.split("|")[1].strip() == "metric"
    assert len(body) == len(result.metrics)
    for line, m in zip(body, result.metrics):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == m.name and float(cells[1]) == pytest.approx(m.value, rel=1e-3, abs=1e-12)
    samples = [json.loads(line) for line in samples_path.read_text().splitlines()]
    assert samples == json.loads(json.dumps(result.samples))
    text = format_eval_table(result)
    assert "win_rate_reward" in text and "diversity" in text
    with pytest.raises(ValueError, match="split='a/b'"):
        write_eval(result, tmp_path, "a/b")


@pytest.mark.slow
def test_evaluate_run_reads_config_and_latest_checkpoint(policy, tok, tasks, reward, tmp_path):
    from promptgym.experiments.config import load_config, save_config

    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no intact checkpoint under"):
        run_policy_dir(run)
    with pytest.raises(FileNotFoundError, match="config.yaml does not exist"):
        evaluate_run(run)
    config = load_config("tiny", ["env.max_new_tokens=8"])
    save_config(config, run / "config.yaml")
    other = PolicyWithValue.tiny(tok, seed=1)
    save_checkpoint(run / "checkpoints" / "step_000001", policy=other, rng=False)
    save_checkpoint(run / "checkpoints" / "step_000002", policy=policy, rng=False)  # latest; no tokenizer saved
    res = evaluate_run(run, "test", tasks=tasks, semantic_scorer=HashEmbedder(), samples_per_task=2)  # config's reward
    assert "AestheticScorer" in res.settings["reward"] and "PickScoreScorer" in res.settings["reward"]
    assert res.settings["checkpoint"] == str(run / "checkpoints" / "step_000002")
    assert res.settings["max_new_tokens"] == 8 and res.settings["typical_mass"] == config.ppo.typical_mass
    assert (run / "eval" / "eval_test.csv").is_file() and (run / "eval" / "eval_test.md").is_file()
    direct = evaluate_policy(
        policy,
        tok,
        tasks,
        reward,
        HashEmbedder(),
        samples_per_task=2,
        max_new_tokens=8,
        typical_mass=config.ppo.typical_mass,
    )
    assert [s["prompt"] for s in res.samples] == [s["prompt"] for s in direct.samples]  # same weights, same seed
    earlier = evaluate_run(
        run,
        "test",
        checkpoint="step_000001",
        tasks=tasks,
        reward=reward,
        semantic_scorer=HashEmbedder(),
        samples_per_task=2,
        write=False,
    )
    assert [s["prompt"] for s in earlier.samples] != [s["prompt"] for s in res.samples]


def test_evaluate_policy_reports_monitors_and_explains_nan_gold(policy, tok, tasks):
    """A monitor (the synth world's gold metrics) gets its own rows; NaN for tasks without a target is explained."""
    import dataclasses

    from promptgym.rewards import CompositeReward

    class TargetLength:
        name = "gold/content"

        def __call__(self, results):
            return torch.tensor([len(r.task.target) / 100 if r.task.target else math.nan for r in results])

    mixed = [tasks[0], dataclasses.replace(tasks[1], target=None)]
    reward = CompositeReward({"integrity": (ContentIntegrityScorer(), 1.0)}, monitors={"gold/content": TargetLength()})
    res = evaluate_policy(policy, tok, mixed, reward, None, samples_per_task=2, max_new_tokens=6)
    assert res["gold/content"].value == pytest.approx(len(tasks[0].target) / 100)  # the NaN task is not counted as 0
    assert res["gold/content"].n == 1 and res["gold/content_gain"].value == pytest.approx(0.0)
    assert any("gold/content is NaN for 2 of 4 samples" in note for note in res.notes)


def test_iqm_is_the_mean_of_the_middle_half_and_its_ci_is_stratified_by_task():
    from promptgym.experiments.stats import iqm, iqm_ci

    assert iqm([5.0, 1.0, 3.0, 100.0, -50.0]) == pytest.approx(3.0)  # middle three of five: 1, 3, 5
    assert iqm([1.0, 2.0, 3.0]) == pytest.approx(2.0)  # floor(3/4) = 0 cut: the mean
    assert iqm_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)  # constant: degenerate interval
    # two tasks on very different scales: a stratified resample keeps one column of each, so every resample holds
    # 4 runs of task 0 (~0) and 4 of task 1 (~10); the IQM of 8 values cuts 2 from each end, so it stays near 5
    scores = np.array([[0.0, 10.0], [0.1, 10.1], [-0.1, 9.9], [0.05, 10.05]])
    value, low, high = iqm_ci(scores, n_resamples=500)
    assert value == pytest.approx(iqm(scores.ravel())) and 4.0 < low <= value <= high < 6.0
    rng = np.random.default_rng(0)  # an independent stratified bootstrap, one resample and one task at a time
    reference = []
    for _ in range(500):
        idx = rng.integers(0, 4, size=(4, 2))
        reference.append(iqm(scores[idx, np.arange(2)]))
    assert (low, high) == pytest.approx(tuple(np.quantile(reference, [0.025, 0.975])))
    for bad, match in (([], "non-empty"), ([1.0, float("nan")], "non-finite"), (np.ones((2, 2, 2)), "shape")):
        with pytest.raises(ValueError, match=match):
            iqm_ci(bad)
    with pytest.raises(ValueError, match="confidence"):
        iqm_ci([1.0, 2.0], confidence=1.5)
