"""Evaluation: metric functions against hand computations, bootstrap CIs, pinned-task sampling, the tiny stack."""

from __future__ import annotations

import csv
import json
import math
import zlib

import numpy as np
import pytest
import torch
from diversity_reference import reference_distinct, reference_pairwise_distance
from PIL import Image

from promptgym.agents import PolicyWithValue, save_checkpoint
from promptgym.envs import EditTask, EditTemplate, default_tokenizer, load_tasks
from promptgym.experiments.diversity import DIVERSITY_METRICS, distinct_scenes
from promptgym.experiments.evaluate import (
    evaluate_policy,
    evaluate_run,
    expansion_tasks,
    format_eval_table,
    paired_changes_of,
    paired_tables,
    sample_edits,
    step_seed,
    write_eval,
)
from promptgym.experiments.plots import plot_quality_diversity
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
        "distinct_1",
        "distinct_2",
        "distinct_prompts",
        "distinct_scenes",
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
    csv_path, md_path, samples_path, tasks_path, plot_path = write_eval(result, tmp_path / "eval", "test")
    assert (csv_path.name, md_path.name, samples_path.name, tasks_path.name, plot_path.name) == (
        "eval_test.csv",
        "eval_test.md",
        "eval_test_samples.jsonl",
        "eval_test_tasks.csv",
        "quality_diversity_test.png",
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


# ============================================================================================== diversity of samples
@pytest.fixture(scope="module")
def two_steps(policy, tok, tasks, reward):
    return evaluate_policy(policy, tok, tasks, reward, HashEmbedder(), samples_per_task=3, max_new_tokens=8, seed=3,
                           steps=2)


def _prompts(result, step):
    return [s["prompt"] for s in result.samples if s["step"] == step]


def test_eval_diversity_rows_equal_recomputation_from_the_samples(two_steps, tasks):
    for step in (1, 2):
        prompts = _prompts(two_steps, step)
        per_task = [prompts[3 * t : 3 * t + 3] for t in range(len(tasks))]
        vectors = HashEmbedder().embed(prompts).numpy()
        expected = {
            "distinct_1": [reference_distinct(p, 1) for p in per_task],
            "distinct_2": [reference_distinct(p, 2) for p in per_task],
            "distinct_prompts": [len({" ".join(x.lower().split()) for x in p}) for p in per_task],
            "distinct_scenes": [distinct_scenes(p) for p in per_task],
            "diversity": [reference_pairwise_distance(vectors[3 * t : 3 * t + 3]) for t in range(len(tasks))],
        }
        records = [r for r in two_steps.tasks if r["step"] == step]
        assert [r["task_id"] for r in records] == [t.id for t in tasks]
        for name, values in expected.items():
            np.testing.assert_allclose([r[name] for r in records], values, atol=1e-6, err_msg=name)
            finite = [v for v in values if math.isfinite(v)]
            assert two_steps[name, step].value == pytest.approx(np.mean(finite), abs=1e-6)
            assert two_steps[name, step].n == len(finite) and two_steps[name, step].step == step


def test_one_sample_per_task_gives_nan_diversity_with_a_note(policy, tok, tasks):
    res = evaluate_policy(policy, tok, tasks, ContentIntegrityScorer(), HashEmbedder(), samples_per_task=1,
                          max_new_tokens=6)
    for name in DIVERSITY_METRICS:
        assert math.isnan(res[name].value) and res[name].n == 0
    assert any("distinct_scenes are NaN" in note and "samples_per_task >= 2" in note for note in res.notes)
    assert math.isfinite(res["reward"].value)


def test_a_task_whose_samples_have_no_bigram_is_left_out_with_a_note(tok, tasks):
    """A policy that ends every episode at once writes empty prompts: distinct-n undefined, not a crash."""
    policy = PolicyWithValue.tiny(tok, seed=0)

    def only_eos(module, inputs, logits):  # the LM head's output: every token but EOS impossible
        return torch.full_like(logits, -1e9).index_fill(-1, torch.tensor([tok.eos_token_id]), 0.0)

    policy.model.get_output_embeddings().register_forward_hook(only_eos)
    res = evaluate_policy(policy, tok, tasks, ContentIntegrityScorer(), HashEmbedder(), samples_per_task=2,
                          max_new_tokens=4, typical_mass=None)
    assert {s["prompt"] for s in res.samples} == {""}
    assert math.isnan(res["distinct_1"].value) and res["distinct_1"].n == 0
    assert res["distinct_scenes"].value == 1.0 and res["diversity"].value == pytest.approx(0.0, abs=1e-7)
    assert any("distinct_2 is NaN for 3 of 3 tasks" in note for note in res.notes)


# ============================================================================================== multi-step
def test_step_two_edits_step_ones_outputs(two_steps, policy, tok, tasks, reward):
    first, second = two_steps.samples[:9], two_steps.samples[9:]
    assert [s["step"] for s in first] == [1] * 9 and [s["step"] for s in second] == [2] * 9
    assert [s["step_source"] for s in first] == [t.source for t in tasks for _ in range(3)]
    assert [s["step_source"] for s in second] == [s["prompt"] for s in first]  # chain k continues sample k
    # Independently: the step-2 tasks written by hand (source = step 1's prompt, instruction and target kept)
    chain = [EditTask(s["prompt"], t.instruction, t.target, t.id) for s, t in zip(first, [t for t in tasks for _ in "abc"])]
    assert chain == expansion_tasks([t for t in tasks for _ in range(3)], [s["prompt"] for s in first])
    _, again, _, _ = sample_edits(policy, tok, chain, ContentIntegrityScorer(), 1, 8, step_seed(3, 2), None)
    assert again == [s["prompt"] for s in second]
    _, from_sources, _, _ = sample_edits(policy, tok, [t for t in tasks for _ in range(3)], ContentIntegrityScorer(), 1,
                                         8, step_seed(3, 2), None)
    assert from_sources != again  # the context matters: step 2 really read step 1's prompts
    # step 1 of a two-step evaluation is the one-step evaluation
    one = evaluate_policy(policy, tok, tasks, reward, HashEmbedder(), samples_per_task=3, max_new_tokens=8, seed=3)
    assert _prompts(one, 1) == _prompts(two_steps, 1) and one.rows() == [r for r in two_steps.rows() if r["step"] == 1]


def test_every_step_is_scored_against_the_original_task(two_steps, tasks, reward):
    second = two_steps.samples[9:]
    originals = [t for t in tasks for _ in range(3)]
    assert [s["source"] for s in second] == [t.source for t in originals]
    integrity = ContentIntegrityScorer()
    assert [s["integrity_ratio"] for s in second] == [
        integrity.details(EditResult(t, s["prompt"])).ratio for t, s in zip(originals, second)
    ]
    rescored = reward([EditResult(t, s["prompt"]) for t, s in zip(originals, second)])
    np.testing.assert_allclose([s["reward"] for s in second], rescored.total.numpy(), atol=1e-5)
    np.testing.assert_allclose([s["source_reward"] for s in second], [s["source_reward"] for s in two_steps.samples[:9]])
    assert two_steps["reward", 2].value == pytest.approx(np.mean([s["reward"] for s in second]), abs=1e-5)


def test_multi_step_tables_and_files(two_steps, tmp_path):
    assert two_steps.steps == 2 and two_steps.settings["steps"] == 2
    assert ("reward", 2) in two_steps and ("reward", 3) not in two_steps and "reward" in two_steps
    with pytest.raises(KeyError, match="at step 3"):
        two_steps["reward", 3]
    text = format_eval_table(two_steps)
    assert "2 expansion steps" in text and "step 1 [CI]" in text and "step 2 [CI]" in text
    paths = write_eval(two_steps, tmp_path, "test")
    names = [p.name for p in paths]
    assert names == ["eval_test.csv", "eval_test.md", "eval_test_samples.jsonl", "eval_test_tasks.csv",
                     "quality_diversity_test.png"]
    with (tmp_path / "eval_test.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["metric"], int(r["step"])) for r in rows] == [(m.name, m.step) for m in two_steps.metrics]
    md = (tmp_path / "eval_test.md").read_text()
    assert "| metric | step 1 [95% CI] | step 2 [95% CI] | what |" in md
    with (tmp_path / "eval_test_tasks.csv").open() as f:
        tasks_rows = list(csv.DictReader(f))
    assert len(tasks_rows) == 6 and [float(r["diversity"]) for r in tasks_rows] == pytest.approx(
        [r["diversity"] for r in two_steps.tasks])
    Image.open(tmp_path / "quality_diversity_test.png").verify()


def test_a_later_step_widens_the_context_it_needs(policy, tok, tasks):
    template = EditTemplate()
    needed = max(len(tok(template.context(t))["input_ids"]) for t in tasks)
    res = evaluate_policy(policy, tok, tasks, ContentIntegrityScorer(), None, samples_per_task=2, max_new_tokens=24,
                          steps=2, max_context_tokens=needed)
    chain = expansion_tasks([t for t in tasks for _ in range(2)], _prompts(res, 1))
    longest = max(len(tok(template.context(t))["input_ids"]) for t in chain)
    assert longest > needed  # the case under test happened
    assert any(f"step 2: contexts widened from max_context_tokens={needed} to {longest}" in n for n in res.notes)
    assert len(_prompts(res, 2)) == 6


def test_step_seed_and_bad_steps(policy, tok, tasks):
    assert step_seed(7, 1) == 7 and step_seed(7, 2) != step_seed(7, 3) != 7 and step_seed(7, 2) == step_seed(7, 2)
    with pytest.raises(ValueError, match="steps=0"):
        evaluate_policy(policy, tok, tasks, ContentIntegrityScorer(), None, steps=0)
    with pytest.raises(ValueError, match="2 tasks and 1 prompts"):
        expansion_tasks(tasks[:2], ["a"])


# ============================================================================================== paired, plot
def test_paired_tables_pair_diversity_per_task(two_steps, policy, tok, tasks, reward):
    other = evaluate_policy(PolicyWithValue.tiny(tok, seed=1), tok, tasks, reward, HashEmbedder(), samples_per_task=3,
                            max_new_tokens=8, seed=3, steps=2)
    for step in (1, 2):
        changes = {c.name: c for c in paired_changes_of(two_steps, other, step)}
        assert {"reward", "integrity_ratio", *DIVERSITY_METRICS} <= set(changes)
        for name in DIVERSITY_METRICS:
            before = {r["task_id"]: r[name] for r in two_steps.tasks if r["step"] == step}
            after = {r["task_id"]: r[name] for r in other.tasks if r["step"] == step}
            diffs = [after[t] - before[t] for t in before if math.isfinite(after[t] - before[t])]
            assert changes[name].change == pytest.approx(np.mean(diffs), abs=1e-9) and changes[name].n == len(diffs)
        reward_change = np.mean([a["reward"] - b["reward"] for a, b in zip(other.samples, two_steps.samples)
                                 if a["step"] == step])
        assert changes["reward"].change == pytest.approx(reward_change, abs=1e-5)
    text = paired_tables(two_steps, other, "seed0", "seed1")
    assert "## step 1" in text and "## step 2" in text and text.count("| distinct_scenes |") == 2
    same = paired_tables(two_steps, two_steps, "a", "b")
    assert "| diversity |" in same and "+0.000 [+0.000, +0.000]" in same


def test_plot_quality_diversity(two_steps, tmp_path):
    records = [r for r in two_steps.tasks if r["step"] == 1]
    path = plot_quality_diversity({"a": records, "b": [dict(r, diversity=r["diversity"] + 0.1) for r in records]},
                                  tmp_path / "qd.png")
    assert Image.open(path).size[0] > 300
    plot_quality_diversity({"two steps": two_steps.tasks}, tmp_path / "steps.png")  # one series per step
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_quality_diversity({}, tmp_path / "x.png")
    nan = [dict(r, diversity=math.nan, distinct_1=math.nan) for r in records]
    with pytest.raises(ValueError, match="no task record has a finite diversity or distinct_1"):
        plot_quality_diversity({"a": nan}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no quality metric"):
        plot_quality_diversity({"a": [{"task_id": "t", "diversity": 0.2}]}, tmp_path / "x.png")


def test_evaluate_policy_splits_text_misses_into_kept_and_edited_attributes(policy, tok, tasks):
    """With the synth world's text monitor, each attribute gets a `text_missed/<attribute>/<kept|edited>` row: the
    per-task share of samples asking for another value than the target's, averaged over the tasks that have it."""
    import dataclasses

    from promptgym.rewards import CompositeReward
    from promptgym.rewards.gold import GoldTextContentScorer
    from promptgym.rewards.scene import ATTRIBUTES, parse_scene

    mixed = [*tasks, dataclasses.replace(tasks[0], target=None, id="no-target")]
    reward = CompositeReward({"integrity": (ContentIntegrityScorer(), 1.0)},
                             monitors={"gold/text_content": GoldTextContentScorer()})
    res = evaluate_policy(policy, tok, mixed, reward, None, samples_per_task=3, max_new_tokens=12)
    by_task: dict[str, list[str]] = {}
    for sample in res.samples:
        by_task.setdefault(sample["task_id"], []).append(sample["prompt"])
    expected: dict[str, list[float]] = {}  # by hand: per task, the share of its samples that miss
    for task in mixed[:-1]:
        wanted, before = parse_scene(task.target).scene, parse_scene(task.source).scene
        assert wanted.subject is not None  # every attribute is drawn
        for name in ATTRIBUTES:
            kind = "kept" if getattr(before, name) == getattr(wanted, name) else "edited"
            asked = [getattr(parse_scene(p).scene, name) for p in by_task[task.id]]
            expected.setdefault(f"text_missed/{name}/{kind}", []).append(
                np.mean([a != getattr(wanted, name) for a in asked]))
    rows = {m.name for m in res.metrics if m.name.startswith("text_missed/")}
    assert rows == set(expected)  # only the attribute-kinds some task has
    for name, shares in expected.items():
        assert res[name].value == pytest.approx(np.mean(shares)) and res[name].n == len(shares)  # no-target left out
    assert "text_missed/subject/kept" in rows or "text_missed/subject/edited" in rows
    other = evaluate_policy(policy, tok, mixed, reward, None, samples_per_task=3, max_new_tokens=12, seed=1)
    changes = {c.name: c for c in paired_changes_of(res, other) if c.name.startswith("text_missed/")}
    assert set(changes) == rows  # --against pairs them per task, like the diversity metrics
    for name, change in changes.items():
        assert change.n == res[name].n and change.before == pytest.approx(res[name].value)
        assert change.after == pytest.approx(other[name].value) and change.change == pytest.approx(
            other[name].value - res[name].value)
