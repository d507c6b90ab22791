"""Text-only surrogate rewards: the scorers, `build_reward("surrogate")`, and `promptgym reward fit-surrogate`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from promptgym.envs import load_tasks
from promptgym.experiments import surrogate_fit
from promptgym.rewards import CompositeReward, EditResult, EditTask, build_reward, clear_reward_caches, reward_stats
from promptgym.rewards.presets import SURROGATE_WEIGHTS
from promptgym.rewards.semantic import encode_texts, load_sentence_transformer
from promptgym.rewards.surrogate import SentenceEmbedder, SurrogateHead, SurrogateScorer, surrogate_path
from promptgym.rewards.world import SYNTH_ENV, synth_path

TASKS = [
    EditTask("a dog on a beach", "make it night time", "a dog on a beach at night, soft lighting", "t0"),
    EditTask("two red cats in a park", "turn it into anime", "two red cats in a park, anime", "t1"),
]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder.from_pretrained()


@pytest.fixture(scope="module")
def encoder():
    return load_sentence_transformer()


@pytest.fixture(scope="module")
def surrogate() -> CompositeReward:
    return build_reward("surrogate", monitors=False)


def random_head(pair: bool, dim: int = 384, seed: int = 0, **kwargs) -> SurrogateHead:
    torch.manual_seed(seed)
    return SurrogateHead(dim, pair, hidden_size=16, target="pickscore" if pair else "aesthetic", **kwargs).eval()


def results() -> list[EditResult]:
    return [EditResult(TASKS[0], TASKS[0].target), EditResult(TASKS[1], "two red cats in a park, anime, vibrant colors"),
            EditResult(TASKS[0], "")]


# ------------------------------------------------------------------------------------------------ scorers


@pytest.mark.parametrize("pair", [False, True])
def test_scorer_scores_are_float32_one_per_result_and_empty_is_empty(embedder, pair):
    scorer = SurrogateScorer(random_head(pair), embedder)
    scores = scorer(results())
    assert scores.dtype == torch.float32 and scores.shape == (3,) and torch.isfinite(scores).all()
    empty = scorer([])
    assert empty.dtype == torch.float32 and empty.shape == (0,)
    assert scorer.name == ("pickscore" if pair else "aesthetic")


def test_scores_equal_the_head_on_independently_computed_embeddings(embedder, encoder):
    head = random_head(True, target_mean=40.0, target_std=2.0)
    prompts, sources = [r.prompt for r in results()], [r.task.source for r in results()]
    p, s = encode_texts(encoder, prompts), encode_texts(encoder, sources)
    features = torch.cat([p, s, (p - s).abs(), p * s], dim=-1)
    expected = head.net(features).squeeze(-1) * 2.0 + 40.0
    assert torch.allclose(SurrogateScorer(head, embedder).score_texts(prompts, sources), expected, atol=1e-5)


def test_pair_head_reads_the_source(embedder):
    scorer = SurrogateScorer(random_head(True), embedder)
    same_prompt = [EditResult(TASKS[0], "a cat"), EditResult(TASKS[1], "a cat")]
    first, second = scorer(same_prompt).tolist()
    assert first != second  # same prompt, other source
    with pytest.raises(ValueError, match="reads \\(source, prompt\\) pairs: pass 1 sources, got None"):
        scorer.score_texts(["a cat"])
    with pytest.raises(ValueError, match=r"shape \[N, 384\], got \(2, 5\)"):
        scorer.head(torch.zeros(2, 5), torch.zeros(2, 5))


def test_embedder_cache_hits_and_its_state_round_trips(encoder):
    embedder = SentenceEmbedder(encoder, cache_size=8)
    first = embedder.embed(["a dog", "a cat", "a dog"])
    assert (embedder.hits, embedder.misses) == (1, 2)
    assert torch.equal(embedder.embed(["a cat"])[0], first[1]) and embedder.hits == 2
    state = embedder.cache_state()
    fresh = SentenceEmbedder(encoder, cache_size=8)
    fresh.load_cache_state(state)
    assert torch.equal(fresh.embed(["a dog", "a cat"]), first[:2]) and fresh.misses == 2 and fresh.hits == 4
    assert torch.allclose(first, encode_texts(encoder, ["a dog", "a cat", "a dog"]), atol=1e-6)
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match="sequence of str"):
        embedder.embed("a dog")


def test_head_saves_and_loads_with_from_pretrained(tmp_path, embedder):
    head = random_head(True, target_mean=1.5, target_std=0.5)
    head.save_pretrained(tmp_path / "ps")
    loaded = SurrogateScorer.from_pretrained(tmp_path / "ps", embedder=embedder)
    assert (loaded.head.pair, loaded.head.target_mean, loaded.head.target_std) == (True, 1.5, 0.5)
    assert torch.equal(loaded(results()), SurrogateScorer(head, embedder)(results()))


def test_a_head_fitted_on_another_embedding_size_says_so(tmp_path, embedder):
    random_head(False, dim=8).save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="fitted on 8-d sentence embeddings .* the embedder gives 384-d"):
        SurrogateScorer.from_pretrained(tmp_path / "small", embedder=embedder)
    with pytest.raises(FileNotFoundError, match="not a surrogate head directory"):
        SurrogateScorer.from_pretrained(tmp_path / "nothing", embedder=embedder)


# ------------------------------------------------------------------------------------------------ preset


def test_surrogate_preset_terms_weights_delta_and_gold_monitors():
    reward = build_reward("surrogate")
    assert {name: weight for name, (_, weight) in reward.terms.items()} == SURROGATE_WEIGHTS
    assert SURROGATE_WEIGHTS == {"aesthetic": 0.7, "pickscore": 0.3, "integrity": 1.0}
    assert isinstance(reward.terms["aesthetic"][0], SurrogateScorer) and not reward.terms["aesthetic"][0].head.pair
    assert isinstance(reward.terms["pickscore"][0], SurrogateScorer)  # reads the prompt: see the fit's eval.json
    assert reward.terms["pickscore"][0].head.target == "pickscore" and not reward.terms["pickscore"][0].head.pair
    assert reward.terms["aesthetic"][0].embedder is reward.terms["pickscore"][0].embedder  # embedded once
    assert reward.delta == {"aesthetic", "pickscore"}
    assert set(reward.monitors) == {"gold/content", "gold/aesthetic", "gold/text_content"}
    out = reward(results())
    assert {"aesthetic/delta", "pickscore/delta", "integrity", "gold/content", "gold/aesthetic"} <= set(out.components)
    assert all(0 <= v <= 1 for v in out.components["gold/content"].tolist())
    renderer = reward.monitors["gold/aesthetic"].renderer  # the only renderer: the gold monitors'
    assert renderer.cache_info().currsize == 3 * renderer.images_per_prompt  # edited prompts only, no source
    clear_reward_caches(reward)
    assert renderer.cache_info().currsize == 0 and len(reward.terms["aesthetic"][0].embedder.cache_state()["keys"]) == 0


def test_surrogate_without_monitors_renders_nothing(surrogate):
    assert surrogate.monitors == {}
    assert not any(hasattr(scorer, "renderer") for scorer, _ in surrogate.terms.values())


def test_surrogate_total_is_the_independently_computed_weighted_delta_sum(surrogate, encoder):
    batch = results()
    out = surrogate(batch)
    heads = {t: SurrogateHead.from_pretrained(str(surrogate_path(t))).eval() for t in ("aesthetic", "pickscore")}
    prompts, sources = [r.prompt for r in batch], [r.task.source for r in batch]
    p, s = encode_texts(encoder, prompts), encode_texts(encoder, sources)
    with torch.no_grad():  # both shipped heads read the prompt alone
        aes = heads["aesthetic"](p) - heads["aesthetic"](s)
        ps = heads["pickscore"](p) - heads["pickscore"](s)
    integrity = out.components["integrity"]
    assert torch.allclose(out.components["aesthetic/delta"], aes, atol=1e-4)
    assert torch.allclose(out.components["pickscore/delta"], ps, atol=1e-4)
    assert torch.allclose(out.total, 0.7 * aes + 0.3 * ps + integrity, atol=1e-4)
    assert out.components["aesthetic/delta"][0] != 0 and out.components["pickscore/delta"][0] != 0


def test_surrogate_state_holds_the_embedding_cache_and_counts_it(surrogate, tmp_path):
    from promptgym.agents.checkpoint import _read_pair, _write_pair

    surrogate(results())
    state = surrogate.state_dict()
    assert "aesthetic/embeddings" in state["caches"] and "pickscore/embeddings" not in state["caches"]  # shared
    stats = reward_stats(surrogate)
    assert stats["embed/cache_hits"] > 0 and stats["embed/cache_misses"] > 0
    _write_pair(tmp_path, "trainer_state", {"reward": state})  # as a checkpoint stores it: JSON + safetensors
    state = _read_pair(tmp_path, "trainer_state", "cpu", "trainer state")["reward"]
    again = build_reward("surrogate", monitors=False)
    again.load_state_dict(state)
    assert again.terms["aesthetic"][0].embedder.misses == surrogate.terms["aesthetic"][0].embedder.misses
    assert torch.equal(again(results()).total, surrogate(results()).total)


def test_surrogate_weights_override_and_config():
    from promptgym.experiments.config import load_config

    reward = build_reward("surrogate", weights={"pickscore": 0.0}, monitors=False)
    assert set(reward.terms) == {"aesthetic", "integrity"}
    config = load_config("surrogate")
    assert config.reward.preset == "surrogate" and config.reward.monitors
    assert config.reward.weights == {"aesthetic": 0.7, "pickscore": 0.3, "integrity": 4.0}  # synth's integrity
    # the default run's: an added keyword counted 4 times, self-imitation at weight 4 (README, learning item 23)
    assert config.reward.normalize is True and config.reward.integrity == {"mode": "ratio", "edit_weight": 4}
    synth = load_config("synth")
    assert config.policy == synth.policy and config.ppo == dataclasses.replace(synth.ppo, sil_coef=4.0)


def test_bench_variants_build_on_the_surrogate_config():
    from promptgym.experiments import bench

    base = bench.variant_config("sft", 0, config="surrogate")
    variants = {name: bench.variant_config(name, 0, config="surrogate") for name in ("diffchat", "oracle")}
    bench._check_shared(base, variants)  # one SFT start and one (surrogate) reward; the oracle rewards gold
    assert variants["diffchat"].reward == base.reward and base.reward.preset == "surrogate"
    assert variants["oracle"].reward.preset == "synth-gold"


def test_missing_surrogate_names_the_fit_command(tmp_path, monkeypatch):
    monkeypatch.setenv(SYNTH_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="promptgym reward fit-surrogate --out"):
        surrogate_path("aesthetic")


# ------------------------------------------------------------------------------------------------ fit


def fake_pairs(path: Path, n: int = 30) -> Path:
    """A small pairs file of planned pairs with made-up scores (no render): a score that depends on the text."""
    rows = surrogate_fit.plan_pairs(n, seed=0, held_out=0.3)
    with path.open("w") as file:
        for row in rows:
            commas = row["prompt"].count(",")
            file.write(json.dumps({**row, "aesthetic": 0.1 * commas, "pickscore": 40.0 - len(row["prompt"]) / 20,
                                   "gold_aesthetic": 0.5 - 0.05 * commas}) + "\n")
    return path


def test_plan_is_deterministic_distinct_and_holds_out_test_sources():
    plan = surrogate_fit.plan_pairs(120, seed=3)
    assert plan == surrogate_fit.plan_pairs(120, seed=3) and plan != surrogate_fit.plan_pairs(120, seed=4)
    assert len(plan) == 120 and len({(r["source"], r["prompt"]) for r in plan}) == 120
    held = [r for r in plan if r["split"] == "held_out"]
    assert len(held) == 24 and all(r["task"].startswith("demo-test") for r in held)
    test_sources = {t.source for t in load_tasks("demo", "test")}
    assert not any(r["source"] in test_sources for r in plan if r["split"] == "train")
    sources = {r["source"] for r in plan if r["prompt"] == r["source"]}
    assert {r["source"] for r in plan} <= sources  # every source is scored itself (the delta's baseline)
    assert {r["kind"] for r in plan} >= {"source", "target", "modifiers"}


def test_fit_is_deterministic_and_loads_back(tmp_path):
    pairs = fake_pairs(tmp_path / "pairs.jsonl")
    cfg = surrogate_fit.FitConfig(steps=5)
    first = surrogate_fit.fit_surrogate(tmp_path / "a", cfg, pairs)
    surrogate_fit.fit_surrogate(tmp_path / "b", cfg, pairs)
    for target in ("aesthetic", "pickscore"):
        digests = {hashlib.sha256((tmp_path / run / target / "model.safetensors").read_bytes()).hexdigest()
                   for run in ("a", "b")}
        assert len(digests) == 1, target
        scorer = SurrogateScorer.from_pretrained(tmp_path / "a" / target)
        assert scorer.head.target == target and scorer(results()).shape == (3,)
    record = json.loads((tmp_path / "a" / "build.json").read_text())
    assert record["pairs"]["sha256"] == hashlib.sha256(pairs.read_bytes()).hexdigest()
    assert record["files"] == surrogate_fit.file_hashes(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["held_out"] == first["held_out"]
    other = surrogate_fit.fit_surrogate(tmp_path / "c", surrogate_fit.FitConfig(steps=5, seed=1), pairs)
    assert other["held_out"]["aesthetic"]["rmse"] != first["held_out"]["aesthetic"]["rmse"]


def test_evaluate_matches_scipy_on_the_delta_pairs():
    from scipy.stats import spearmanr

    rows = [{"source": "s", "prompt": "s", "aesthetic": 1.0, "pickscore": 5.0, "gold_aesthetic": 0.1}]
    rows += [{"source": "s", "prompt": f"p{i}", "aesthetic": 1.0 + i, "pickscore": 5.0 - i, "gold_aesthetic": 0.1 * i}
             for i in range(1, 6)]
    guess = {"aesthetic": np.array([0.0, 3.0, 1.0, 2.0, 5.0, 4.0]), "pickscore": np.array([0.0, 5, 4, 3, 2, 1.0])}
    report = surrogate_fit.evaluate(rows, guess)
    image = np.array([r["aesthetic"] for r in rows])
    assert math.isclose(report["aesthetic"]["spearman"], spearmanr(guess["aesthetic"], image).statistic)
    assert math.isclose(report["aesthetic"]["spearman_delta"],
                        spearmanr(guess["aesthetic"][1:] - 0.0, image[1:] - 1.0).statistic)
    assert report["pickscore"]["spearman_delta"] == pytest.approx(1.0) and report["delta_rows"] == 5
    assert report["gold_aesthetic"]["image_spearman_delta"] == pytest.approx(1.0)


@pytest.mark.parametrize(("line", "message"), [
    ({"split": "train", "source": "a", "prompt": "b", "aesthetic": 1.0}, r"line 2 lacks \['pickscore'\]"),
    ({"split": "train", "source": "a", "prompt": "b", "aesthetic": "high", "pickscore": 1.0},
     r"line 2: aesthetic='high'; expected a finite number"),
    ({"split": "train", "source": "a", "prompt": "b", "aesthetic": 1.0, "pickscore": float("nan")},
     r"line 2: pickscore=nan; expected a finite number"),
    ({"split": "dev", "source": "a", "prompt": "b", "aesthetic": 1.0, "pickscore": 1.0}, r"line 2: split='dev'"),
    ({"split": "train", "source": None, "prompt": "b", "aesthetic": 1.0, "pickscore": 1.0},
     r"line 2: source=None; expected a string"),
])
def test_bad_pairs_file_names_file_and_line(tmp_path, line, message):
    good = {"split": "train", "source": "a", "prompt": "a", "aesthetic": 1.0, "pickscore": 2.0}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=f"{path}: " + message):
        surrogate_fit.read_pairs(path)


def test_command_line_errors_are_one_line(tmp_path, capsys):
    from promptgym.experiments import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["reward", "fit-surrogate", "--help"])
    assert stopped.value.code == 0 and "--pairs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        cli.main(["reward", "fit-surrogate", "--out", str(tmp_path), "--pairs", str(tmp_path / "none.jsonl")])
    assert stopped.value.code == 2 and "none.jsonl does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["reward", "fit-surrogate", "--out", str(tmp_path), "--steps", "0"])
    assert "--steps must be a positive int" in capsys.readouterr().err


@pytest.mark.slow  # renders with the synth SD
def test_a_collection_resumes_and_refuses_another_plan(tmp_path):
    plan = surrogate_fit.plan_pairs(6, seed=0, held_out=0.5)
    path = tmp_path / "pairs.jsonl"
    rows = surrogate_fit.collect_pairs(plan[:2], path)
    assert len(surrogate_fit.read_pairs(path)) == 2
    rows = surrogate_fit.collect_pairs(plan, path)  # renders only the 4 missing
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in plan] and len(surrogate_fit.read_pairs(path)) == 6
    with pytest.raises(ValueError, match="line 1 is not the pair this fit plans"):
        surrogate_fit.collect_pairs(surrogate_fit.plan_pairs(6, seed=1, held_out=0.5), path)


# ------------------------------------------------------------------------------------------------ the shipped build


@pytest.mark.slow  # renders with the synth SD
def test_rebuild_a_few_steps_of_the_shipped_build_and_score_with_it(tmp_path, monkeypatch):
    """The shipped command at a smoke budget: 12 rendered pairs, 3 steps; the collected scores are the image
    reward's own, and `build_reward("surrogate")` loads the result from a world directory that holds it."""
    out = tmp_path / "world" / "surrogate"
    assert surrogate_fit.main(["--out", str(out), "--prompts", "12", "--steps", "3"]) == 0
    rows = surrogate_fit.read_pairs(out / "pairs.jsonl")
    tasks = {t.id: t for t in load_tasks("demo", "train") + load_tasks("demo", "test")}
    image = build_reward("synth", monitors=False, delta=False)(
        [EditResult(tasks[r["task"]], r["prompt"]) for r in rows])
    for term in ("aesthetic", "pickscore"):
        assert np.allclose([r[term] for r in rows], image.components[term].numpy(), atol=1e-3), term
    for name in ("sd", "clip", "aesthetic", "judge", "build.json"):
        (tmp_path / "world" / name).symlink_to(synth_path(name))
    monkeypatch.setenv(SYNTH_ENV, str(tmp_path / "world"))
    out_reward = build_reward("surrogate")(results())
    assert torch.isfinite(out_reward.total).all() and out_reward.total.shape == (3,)


def test_shipped_surrogate_matches_its_record_and_world():
    root = surrogate_path()
    record = json.loads((root / "build.json").read_text())
    assert record["files"] == surrogate_fit.file_hashes(root)
    assert sum((root / name).stat().st_size for name in record["files"]) <= 2 * 2**20  # < 2 MiB
    assert record["world_sha256"] == surrogate_fit.world_digest(synth_path())  # fitted to the shipped world's scores
    assert record["command"].startswith("promptgym reward fit-surrogate --out")
    assert record["pairs"]["rows"] == len(surrogate_fit.read_pairs(root / "pairs.jsonl"))


def test_shipped_eval_is_what_the_shipped_heads_give_on_the_held_out_pairs(embedder):
    root = surrogate_path()
    held = [r for r in surrogate_fit.read_pairs(root / "pairs.jsonl") if r["split"] == "held_out"]
    predicted = {}
    for target in ("aesthetic", "pickscore"):
        scorer = SurrogateScorer.from_pretrained(root / target, embedder=embedder)
        predicted[target] = scorer.score_texts([r["prompt"] for r in held], [r["source"] for r in held]).numpy()
    report = surrogate_fit.evaluate(held, predicted)
    shipped = json.loads((root / "eval.json").read_text())["held_out"]
    for target in ("aesthetic", "pickscore"):
        assert report[target]["spearman"] == pytest.approx(shipped[target]["spearman"], abs=2e-3)
        assert report[target]["spearman_delta"] == pytest.approx(shipped[target]["spearman_delta"], abs=2e-3)
    assert report["reward_delta"]["spearman_vs_image_same_weights"] > 0.5  # the surrogate ranks edits as the image does
