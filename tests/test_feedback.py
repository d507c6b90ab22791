"""The feedback-trained reward model (Lee et al. 2023): model, losses against a reference, labels file, simulated
feedback, fitting, the scorer, the synth preset term and the shipped build."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random

import numpy as np
import pytest
import torch
from image_helpers import make_tokenizer

from promptgym.rewards import CompositeReward, EditResult, EditTask, Scorer, check_scorer
from promptgym.rewards.feedback import (
    FeedbackData,
    FeedbackRewardModel,
    FrozenCLIP,
    LearnedRewardScorer,
    agreement,
    best_threshold,
    feedback_loss,
    fit_feedback_model,
    prompt_classification_loss,
    roc_auc,
)
from promptgym.rewards.feedback_data import (
    FeedbackRow,
    apply_label_noise,
    one_attribute_changes,
    perturbed_prompts,
    read_feedback_labels,
    simulate_feedback,
    write_feedback_labels,
)
from promptgym.rewards.gold import SceneJudge, scene_labels
from promptgym.rewards.image_scorers import PickScoreScorer
from promptgym.rewards.render import DiffusersRenderer
from promptgym.rewards.scene import HELD_OUT_PAIRS, Scene, describe, parse_scene
from promptgym.rewards.scene_render import SceneRenderer
from promptgym.rewards.world import synth_path

# ------------------------------------------------------------------------------------------- model and losses


def test_model_maps_embedding_pairs_to_one_score_each_and_normalises_its_inputs():
    model = FeedbackRewardModel(embedding_dim=8, hidden_dims=(16, 4)).eval()
    x, z = torch.randn(5, 8), torch.randn(5, 8)
    scores = model(x, z)
    assert scores.shape == (5,) and scores.dtype == torch.float32
    assert torch.allclose(model(3 * x, 0.5 * z), scores, atol=1e-6)  # L2-normalised inside: scale does not matter
    assert model(x[:0], z[:0]).shape == (0,)
    with pytest.raises(ValueError, match=r"same shape \[\.\.\., 8\]"):
        model(torch.randn(5, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="embedding_dim must be a positive int"):
        FeedbackRewardModel(embedding_dim=0)


def reference_classification_loss(true, perturbed, mask):
    """-log softmax of the true score among itself and the real perturbations, averaged over rows that have any."""
    losses = []
    for i in range(len(true)):
        logits = [float(true[i])] + [float(perturbed[i, j]) for j in range(perturbed.shape[1]) if mask[i, j]]
        if len(logits) > 1:
            losses.append(-(logits[0] - math.log(sum(math.exp(v) for v in logits))))
    return sum(losses) / len(losses) if losses else 0.0


def test_prompt_classification_loss_matches_a_reference_with_partial_and_empty_rows():
    gen = torch.Generator().manual_seed(0)
    true, perturbed = torch.randn(6, generator=gen), torch.randn(6, 3, generator=gen) * 2
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    loss = prompt_classification_loss(true, perturbed, mask)
    assert loss.item() == pytest.approx(reference_classification_loss(true, perturbed, mask), rel=1e-5)
    # a perturbation left out of the mask does not change the loss, whatever its score
    assert prompt_classification_loss(true, perturbed.masked_fill(~mask, 1e4), mask).item() == pytest.approx(loss.item())


def test_prompt_classification_loss_without_any_perturbation_is_zero_and_differentiable():
    true = torch.randn(4, requires_grad=True)
    loss = prompt_classification_loss(true, torch.randn(4, 2), torch.zeros(4, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(true.grad, torch.zeros(4))


def test_feedback_loss_is_mse_plus_the_weighted_aux_over_positive_rows():
    gen = torch.Generator().manual_seed(1)
    scores, perturbed = torch.randn(5, generator=gen), torch.randn(5, 2, generator=gen)
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [0, 0], [1, 1]], dtype=torch.bool)
    mse = sum((float(s) - float(y)) ** 2 for s, y in zip(scores, labels)) / 5
    aux = reference_classification_loss(scores, perturbed, mask & labels.bool()[:, None])  # rows 0 and 2 only
    out = feedback_loss(scores, labels, perturbed, mask, aux_weight=0.7)
    assert out.mse.item() == pytest.approx(mse, rel=1e-5) and out.aux.item() == pytest.approx(aux, rel=1e-5)
    assert out.total.item() == pytest.approx(mse + 0.7 * aux, rel=1e-5)
    pure = feedback_loss(scores, labels, None, None, aux_weight=0.0)
    assert pure.total.item() == pytest.approx(mse, rel=1e-6) and pure.aux.item() == 0.0
    with pytest.raises(ValueError, match="needs perturbed_scores"):
        feedback_loss(scores, labels, None, None, aux_weight=0.5)


def toy_data(n=96, d=8, p=3, seed=0) -> FeedbackData:
    """Embeddings where label 1 means the text embedding is close to the image's (a rule the MLP can learn)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, d, generator=gen)
    labels = (torch.rand(n, generator=gen) < 0.5).float()
    texts = torch.where(labels[:, None] > 0, images + 0.3 * torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen))
    perturbed = images[:, None] + 1.0 * torch.randn(n, p, d, generator=gen)
    mask = torch.rand(n, p, generator=gen) < 0.8
    return FeedbackData(images, texts, labels, perturbed, mask)


def test_fit_is_deterministic_learns_the_rule_and_aux_weight_zero_ignores_perturbations():
    data = toy_data()
    first, history = fit_feedback_model(data, aux_weight=0.5, epochs=30, batch_size=32, seed=3, progress=False)
    again, _ = fit_feedback_model(data, aux_weight=0.5, epochs=30, batch_size=32, seed=3, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert history[-1]["mse"] < history[0]["mse"] and len(history) == 30
    with torch.no_grad():
        assert roc_auc(first(data.image_embeds, data.text_embeds).numpy(), data.labels.numpy()) > 0.95
    # aux weight 0 is pure MSE: the perturbations (or their absence) change nothing
    plain, _ = fit_feedback_model(data, aux_weight=0.0, epochs=3, batch_size=32, seed=3, progress=False)
    stripped = dataclasses.replace(data, perturbed_mask=torch.zeros_like(data.perturbed_mask),
                                   perturbed_embeds=torch.zeros_like(data.perturbed_embeds))
    plain_too, _ = fit_feedback_model(stripped, aux_weight=0.0, epochs=3, batch_size=32, seed=3, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), plain_too.state_dict().values()))
    with_aux, _ = fit_feedback_model(data, aux_weight=0.5, epochs=3, batch_size=32, seed=3, progress=False)
    assert not torch.equal(with_aux.mlp[0].weight, plain.mlp[0].weight)
    with pytest.raises(ValueError, match="aux_weight must be"):
        fit_feedback_model(data, aux_weight=-1.0, epochs=1)


def test_feedback_data_rejects_inconsistent_shapes():
    data = toy_data(n=4)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        dataclasses.replace(data, labels=torch.zeros(3))


def test_save_and_load_round_trip(tmp_path):
    model = FeedbackRewardModel(embedding_dim=8, hidden_dims=(12,), dropout=0.0, clip="some/clip").eval()
    model.save_pretrained(tmp_path / "m")
    loaded = FeedbackRewardModel.from_pretrained(str(tmp_path / "m")).eval()
    assert (loaded.embedding_dim, loaded.clip, len(loaded.mlp)) == (8, "some/clip", len(model.mlp))
    x, z = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.equal(loaded(x, z), model(x, z))


# ------------------------------------------------------------------------------------------- metrics


def test_roc_auc_counts_ordered_pairs_and_ties_half():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 40).astype(float), rng.random(40) < 0.4
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p in scores[labels] for q in scores[~labels]]
    assert roc_auc(scores, labels) == pytest.approx(sum(pairs) / len(pairs))
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_best_threshold_reaches_the_best_agreement_over_every_cut():
    rng = np.random.default_rng(1)
    scores, labels = rng.normal(size=50), rng.random(50) < 0.5
    cut = best_threshold(scores, labels)
    brute = max(agreement(scores, labels, t) for t in [-np.inf, *scores, np.inf])
    assert agreement(scores, labels, cut) == pytest.approx(brute)
    assert agreement([0.2, 0.8], [0, 1], 0.5) == 1.0


# ------------------------------------------------------------------------------------------- the labels file


def write_lines(path, *objects):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects), encoding="utf-8")
    return path


def png(path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(path)
    return path


def test_a_labels_file_reads_image_and_seed_rows(tmp_path):
    png(tmp_path / "img" / "a.png")
    labels = write_lines(
        tmp_path / "labels.jsonl",
        {"prompt": "a red dog", "image": "img/a.png", "label": 1, "id": "r1"},
        "",
        {"prompt": "a red dog", "seed": 4, "render_prompt": "a blue dog", "label": 0, "meta": {"gold_label": 0}},
        {"prompt": "a red dog", "seed": 4, "label": 1.0},
    )
    rows = read_feedback_labels(labels)
    assert [r.label for r in rows] == [1, 0, 1] and rows[0].image == (tmp_path / "img" / "a.png").resolve()
    assert (rows[1].rendered, rows[2].rendered) == ("a blue dog", "a red dog")  # render_prompt defaults to the prompt
    assert rows[1].where == f"{labels}:3" and rows[1].meta == {"gold_label": 0}
    copy = write_feedback_labels(rows, tmp_path / "copy" / "labels.jsonl")
    assert json.loads(copy.read_text().split("\n")[0])["image"] == "../img/a.png"  # relative to the new file
    assert [(r.prompt, r.label, r.image, r.seed, r.rendered) for r in read_feedback_labels(copy)] == [
        (r.prompt, r.label, r.image, r.seed, r.rendered) for r in rows]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"prompt": "a cat", "image": "missing.png", "label": 1}, r"line 2: image 'missing.png' not found"),
        ({"prompt": "a cat", "seed": 1, "label": 2}, "line 2: label must be 0 or 1, got 2"),
        ({"prompt": "a cat", "seed": 1, "label": True}, "line 2: label must be 0 or 1, got True"),
        ({"prompt": "a dog", "seed": 0, "label": 0}, "line 2 is a duplicate of line 1 \\(same prompt and image\\)"),
        ('{"prompt": "a cat", "seed": 1,', "line 2 is not valid JSON"),
        ({"prompt": "a cat", "seed": 1, "image": "x.png", "label": 0}, "line 2: expected exactly one of image"),
        ({"prompt": "a cat", "label": 0}, "line 2: expected exactly one of image"),
        ({"prompt": "a cat", "seed": -3, "label": 0}, "line 2: seed must be an int >= 0, got -3"),
        ({"prompt": "", "seed": 1, "label": 0}, "line 2: prompt must be a non-empty string"),
        ({"prompt": "a cat", "seed": 1, "label": 0, "rater": "x"}, r"line 2: unknown fields \['rater'\]"),
    ],
)
def test_bad_rows_are_errors_naming_file_and_line(tmp_path, bad, message):
    labels = write_lines(tmp_path / "labels.jsonl", {"prompt": "a dog", "seed": 0, "label": 1}, bad)
    with pytest.raises(ValueError, match=f"^{str(labels)}: {message}"):
        read_feedback_labels(labels)


def test_an_empty_or_missing_labels_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="holds no labelled rows"):
        read_feedback_labels(write_lines(tmp_path / "empty.jsonl", ""))
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        read_feedback_labels(tmp_path / "nope.jsonl")


def test_an_unreadable_image_is_named_with_its_line(tmp_path):
    from promptgym.rewards.feedback_data import render_feedback_images

    (tmp_path / "bad.png").write_bytes(b"not a png")
    labels = write_lines(tmp_path / "labels.jsonl", {"prompt": "a dog", "image": "bad.png", "label": 1})
    with pytest.raises(ValueError, match=f"{labels}:1: cannot read image"):
        render_feedback_images(read_feedback_labels(labels), renderer=None)


# ------------------------------------------------------------------------------------------- perturbed prompts


def changed_attributes(a: Scene, b: Scene) -> list[str]:
    la, lb = scene_labels(a), scene_labels(b)
    return [name for name in la if la[name] != lb[name]]


def test_perturbed_prompts_change_exactly_one_attribute_and_are_distinct():
    prompt = "two red dogs with hats in a park at sunset, watercolor, vibrant colors"
    perturbed = perturbed_prompts(prompt, 5, random.Random(0))
    assert len(perturbed) == len(set(perturbed)) == 5 and prompt not in perturbed
    for text in perturbed:
        parsed = parse_scene(text)
        assert parsed.unparsed == () and len(changed_attributes(parse_scene(prompt).scene, parsed.scene)) == 1
        assert parsed.scene.modifiers == ("vibrant colors",)
    assert perturbed == perturbed_prompts(prompt, 5, random.Random(0))  # seeded
    every = perturbed_prompts(prompt, 1000, random.Random(0))
    assert len(every) == len(one_attribute_changes(parse_scene(prompt).scene))  # capped at what exists


def test_prompts_the_grammar_does_not_write_have_no_perturbations():
    rng = random.Random(0)
    assert perturbed_prompts("a red dog on a skateboard", 3, rng) == []  # "skateboard" would vanish
    assert perturbed_prompts("in a park at night", 3, rng) == []  # no subject
    assert perturbed_prompts("a red dog", 0, rng) == []


def test_perturbations_never_introduce_a_held_out_pair():
    subject, colour = HELD_OUT_PAIRS[0]
    scene = Scene(subject=subject, colour="black" if colour != "black" else "white")
    assert all((s.subject, s.colour) not in HELD_OUT_PAIRS for s in one_attribute_changes(scene))
    held = Scene(subject=subject, colour=colour)  # already held out: its other changes may keep the pair
    assert any((s.subject, s.colour) == (subject, colour) for s in one_attribute_changes(held))
    assert one_attribute_changes(Scene()) == []


# ------------------------------------------------------------------------------------------- simulated feedback


def test_label_noise_flips_the_expected_share():
    labels = [i % 2 for i in range(20000)]
    noisy = apply_label_noise(labels, 0.2, random.Random(0))
    flipped = sum(a != b for a, b in zip(labels, noisy)) / len(labels)
    assert abs(flipped - 0.2) < 4 * math.sqrt(0.2 * 0.8 / len(labels))
    assert apply_label_noise(labels, 0.0, random.Random(0)) == labels
    assert apply_label_noise(labels[:10], 1.0, random.Random(0)) == [1 - y for y in labels[:10]]
    with pytest.raises(ValueError, match="noise must be a probability"):
        apply_label_noise(labels, 1.5, random.Random(0))


@pytest.fixture(scope="module")
def judge():
    return SceneJudge.from_pretrained(str(synth_path("judge"))).eval()


def test_simulated_feedback_is_seeded_labelled_by_gold_and_noise_flips_only_labels(judge):
    renderer = SceneRenderer(images_per_prompt=1)  # the world's exact renderer: fast, and gold reads it well
    clean = simulate_feedback(300, renderer=renderer, judge=judge, seed=5, progress=False).rows
    again = simulate_feedback(300, renderer=renderer, judge=judge, seed=5, progress=False).rows
    assert clean == again
    noisy = simulate_feedback(300, renderer=renderer, judge=judge, seed=5, noise=0.3, progress=False).rows
    assert [(r.prompt, r.seed, r.rendered) for r in noisy] == [(r.prompt, r.seed, r.rendered) for r in clean]
    gold = [r.meta["gold_label"] for r in clean]
    assert [r.label for r in clean] == gold
    assert [r.label for r in noisy] == apply_label_noise(gold, 0.3, random.Random("5/label-noise"))
    flipped = np.mean([a.label != b.label for a, b in zip(noisy, clean)])
    assert abs(flipped - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 300)
    # what was rendered decides the gold label: exact renders of the caption match, mismatched ones do not
    caption = [r.meta["gold_label"] for r in clean if r.meta["rendered"] == "caption"]
    mismatch = [r.meta["gold_label"] for r in clean if r.meta["rendered"] == "mismatch"]
    assert 100 < len(caption) < 200 and np.mean(caption) > 0.8 and np.mean(mismatch) < 0.15
    for row in clean:
        if row.meta["rendered"] == "mismatch":
            assert len(changed_attributes(parse_scene(row.prompt).scene, parse_scene(row.rendered).scene)) == 1
        assert (parse_scene(row.prompt).scene.subject, parse_scene(row.prompt).scene.colour) not in HELD_OUT_PAIRS
    unseen = simulate_feedback(20, renderer=renderer, judge=judge, seed=5, held_out="only", progress=False).rows
    assert all((parse_scene(r.prompt).scene.subject, parse_scene(r.prompt).scene.colour) in HELD_OUT_PAIRS for r in unseen)


def test_a_seed_row_is_the_renderers_image_of_that_index():
    renderer = SceneRenderer(images_per_prompt=4)
    prompt = "a red dog in a park"
    assert torch.equal(renderer.render_pairs([(prompt, 3), (prompt, 0)]), renderer.render([prompt])[0, [3, 0]])
    tiny = DiffusersRenderer.tiny(make_tokenizer(), images_per_prompt=3)
    assert torch.allclose(tiny.render_pairs([("a cat", 2)])[0], tiny.render(["a cat"])[0, 2], atol=1e-5)
    assert tiny.render_pairs([]).shape == (0, 3, 32, 32)


# ------------------------------------------------------------------------------------------- the scorer


@pytest.fixture(scope="module")
def tiny_stack():
    """A tiny random 32-d CLIP and renderer, and a feedback model of that size (the pipeline, not the scores)."""
    tokenizer = make_tokenizer()
    pick = PickScoreScorer.tiny(tokenizer, seed=0)
    clip = FrozenCLIP(pick.model, pick.processor, name="tiny")
    renderer = DiffusersRenderer.tiny(tokenizer, seed=0, images_per_prompt=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FeedbackRewardModel(embedding_dim=32, hidden_dims=(16,), clip="tiny")
    return clip, renderer, model


def test_the_scorer_scores_renders_of_the_edited_prompt_inside_a_composite_reward(tiny_stack):
    clip, renderer, model = tiny_stack
    scorer = LearnedRewardScorer(model, clip, renderer=renderer)
    assert isinstance(scorer, Scorer)
    tasks = [EditTask("a photo of a cat", "make it night time"), EditTask("a red car in the snow", "add a castle")]
    results = [EditResult(tasks[0], "a photo of a cat at night"), EditResult(tasks[1], "a red car with a castle")]
    reward = CompositeReward({"feedback": (scorer, 2.0)}, delta=["feedback"])
    out = reward(results)
    images = renderer.render([r.prompt for r in results])  # an independent recomputation of r(render, edited prompt)
    with torch.no_grad():
        expected = torch.stack([model(clip.embed_images(images[i]), clip.embed_texts([r.prompt] * 2)).mean()
                                for i, r in enumerate(results)])
        source = torch.stack([model(clip.embed_images(renderer.render([t.source])[0]), clip.embed_texts([t.source] * 2)).mean()
                              for t in tasks])
    assert torch.allclose(out.components["feedback"], expected, atol=1e-5)
    assert torch.allclose(out.total, 2.0 * (expected - source), atol=1e-5)
    check_scorer(scorer, results)


def test_a_clip_of_another_embedding_size_is_refused_naming_both(tiny_stack, tmp_path):
    clip, _, _ = tiny_stack
    model = FeedbackRewardModel(embedding_dim=64, clip="synth")
    with pytest.raises(ValueError, match=r"takes 64-d CLIP embeddings .* CLIP 'tiny' embeds to 32-d"):
        LearnedRewardScorer(model, clip)
    model.save_pretrained(tmp_path / "m")
    clip.model.save_pretrained(tmp_path / "clip")
    clip.processor.save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match=r"takes 64-d .* embeds to 32-d"):
        LearnedRewardScorer.from_pretrained(tmp_path / "m", clip=tmp_path / "clip")


def test_the_synth_preset_takes_the_feedback_term_with_gold_beside_it():
    from promptgym.experiments.config import ConfigError, RewardConfig
    from promptgym.rewards import build_reward

    reward = build_reward("synth", weights={"feedback": 1.0, "aesthetic": 0.0}, renderer={"images_per_prompt": 1})
    assert set(reward.terms) == {"pickscore", "integrity", "feedback"} and "feedback" in reward.delta
    assert {"gold/content", "gold/aesthetic", "gold/text_content"} <= set(reward.monitors)
    assert isinstance(reward.terms["feedback"][0], LearnedRewardScorer)
    assert "feedback" not in build_reward("synth").terms  # opt-in
    with pytest.raises(ValueError, match=r"unknown terms \['feedback'\].*feedback is a synth term"):
        build_reward("tiny", weights={"feedback": 1.0})
    assert RewardConfig(preset="synth", weights={"feedback": 1.0}).weights["feedback"] == 1.0
    assert RewardConfig(preset="synth").weights["feedback"] == 0.0
    switched = RewardConfig(preset="synth-gold", weights={"feedback": 0.0})  # a synth config switched to the oracle
    assert switched.weights == {"gold/content": 1.0, "gold/aesthetic": 1.0, "feedback": 0.0}
    with pytest.raises(ConfigError, match="reward.weights.feedback"):
        RewardConfig(preset="tiny", weights={"feedback": 1.0})
    with pytest.raises(ValueError, match="proxy terms a weight"):
        build_reward("synth-gold", weights={"feedback": 1.0})


def test_the_shipped_model_matches_the_synth_clip_and_its_record():
    path = synth_path("feedback")
    config = json.loads((path / "config.json").read_text())
    assert config["clip"] == "synth"
    assert config["embedding_dim"] == json.loads((synth_path("clip") / "config.json").read_text())["projection_dim"]
    assert sum(f.stat().st_size for f in path.iterdir()) < 2 * 2**20
    record = json.loads((path / "eval.json").read_text())
    assert record["command"].startswith("promptgym reward fit-feedback") and record["settings"]["seed"] == 0
    assert record["validation"]["model_vs_gold"]["accuracy"] > record["validation"]["clip_vs_gold"]["accuracy"] - 0.05


# ------------------------------------------------------------------------------------------- CLI and the build


def test_the_reward_commands_take_their_own_arguments(tmp_path, capsys):
    from promptgym.experiments import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["reward", "fit-feedback", "--help"])
    assert stopped.value.code == 0 and "--aux-weight" in capsys.readouterr().out
    labels = write_lines(tmp_path / "l.jsonl", {"prompt": "a dog", "seed": 0, "label": 3})
    with pytest.raises(SystemExit) as stopped:
        cli.main(["reward", "fit-feedback", "--labels", str(labels), "--out", str(tmp_path / "m")])
    assert stopped.value.code == 2 and f"{labels}: line 1: label must be 0 or 1, got 3" in capsys.readouterr().err


@pytest.mark.slow
def test_a_few_steps_of_the_shipped_build_rebuild_a_loadable_deterministic_model(tmp_path, monkeypatch):
    """The shipped build's two commands at a tiny scale: simulate (seed rows, and PNG rows), fit twice (same bytes),
    load with from_pretrained, score as a Scorer."""
    from promptgym.experiments import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["reward", "simulate-feedback", "--out", "labels.jsonl", "--n", "12", "--seed", "0"]) == 0
    fit = ["reward", "fit-feedback", "--labels", "labels.jsonl", "--epochs", "2", "--val-share", "0.25", "--seed", "0"]
    assert cli.main([*fit, "--out", "model"]) == 0
    assert (tmp_path / "labels.jsonl.embeddings.pt").exists()
    assert cli.main([*fit, "--out", "again", "--no-cache"]) == 0
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "model" / "model.safetensors") == digest(tmp_path / "again" / "model.safetensors")
    record = json.loads((tmp_path / "model" / "eval.json").read_text())
    assert record["labels"]["rows"] == 12 and set(record["validation"]) >= {"model_vs_gold", "clip_vs_gold"}
    scorer = LearnedRewardScorer.from_pretrained(tmp_path / "model", renderer=SceneRenderer(images_per_prompt=1))
    task = EditTask("a dog", "make it red")
    assert scorer([EditResult(task, "a red dog"), EditResult(task, "a red dog at night")]).shape == (2,)
    # the PNG form (real feedback): image rows train the same way
    assert cli.main(["reward", "simulate-feedback", "--out", "png.jsonl", "--n", "6", "--images", "pngs"]) == 0
    rows = read_feedback_labels(tmp_path / "png.jsonl")
    assert all(isinstance(r, FeedbackRow) and r.image is not None and r.image.exists() for r in rows)
    assert cli.main(["reward", "fit-feedback", "--labels", "png.jsonl", "--out", "png-model", "--epochs", "1",
                     "--val-share", "0"]) == 0
    assert FeedbackRewardModel.from_pretrained(str(tmp_path / "png-model")).embedding_dim == 64


@pytest.mark.slow
def test_the_shipped_model_scores_demo_edits_as_a_synth_reward_term():
    from promptgym.envs import load_tasks
    from promptgym.rewards import build_reward

    tasks = load_tasks("demo", "test")[:3]
    reward = build_reward("synth", weights={"feedback": 1.0})
    out = reward([EditResult(t, t.target) for t in tasks] + [EditResult(tasks[0], "")])
    assert torch.isfinite(out.components["feedback"]).all() and torch.isfinite(out.total).all()
    assert all(0 <= v <= 1 for v in out.components["gold/content"].tolist()[:3])
    # on the world's own captions the shipped model prefers the caption a render was made from over its perturbations
    scorer, rng = reward.terms["feedback"][0], random.Random(0)
    scenes = [parse_scene(t.target).scene for t in load_tasks("demo", "test")[:16]]
    captions = [describe(scene) for scene in scenes if scene.subject is not None]
    images = scorer.renderer.render(captions)
    wins = []
    for caption, image in zip(captions, images):
        wrong = perturbed_prompts(caption, 3, rng)
        scores = scorer.score_images(image[None].expand(1 + len(wrong), -1, -1, -1, -1), [caption, *wrong])
        wins.append(bool(scores[0] > scores[1:].max()))
    assert np.mean(wins) > 0.5
