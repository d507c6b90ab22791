"""Plots: valid, sensibly sized PNGs from synthetic run data; clear errors on bad input; the math behind them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from promptgym.experiments.plots import (
    _common_grid,
    _seed_curves,
    plot_image_grid,
    plot_learning_curves,
    plot_training,
    read_metrics,
    reward_component_keys,
    rolling_mean,
)


def write_metrics(path, n=30, drop_kl_every=0):
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for u in range(1, n + 1):
            record = {
                "update": u,
                "episodes": 8 * u,
                "reward_calls": 8 * u,
                "env/reward_mean": 0.1 * u + rng.normal(),
                "env/reward_std": 0.3,
                "env/aesthetic": 5 + rng.normal(),
                "env/aesthetic/source": 5.0,
                "env/aesthetic/delta": rng.normal(),
                "env/integrity": float(u % 2),
                "objective/kl": 0.01 * u,
                "objective/kl_coef": 0.1,
                "objective/entropy": 3 - 0.01 * u,
                "ppo/approx_kl": 0.01,
                "ppo/clipfrac": 0.1,
            }
            if drop_kl_every and u % drop_kl_every == 0:
                record["objective/kl"] = None  # RunDir writes non-finite floats as null
                del record["ppo/clipfrac"]
            f.write(json.dumps(record) + "\n")
    return path


def assert_png(path, min_width=400, min_height=250):
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        image.load()  # decodes: a truncated file would raise here
    assert width >= min_width and height >= min_height, (width, height)
    return width, height


def test_plot_training_writes_two_readable_pngs(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.jsonl", drop_kl_every=4)
    paths = plot_training(metrics, tmp_path / "plots")
    assert [p.name for p in paths] == ["reward_components.png", "kl_entropy.png"]
    for path in paths:
        assert path.parent == tmp_path / "plots"
        assert_png(path, min_width=800, min_height=350)


def test_reward_component_keys_reward_first_and_no_std():
    records = [{"env/aesthetic": 1.0, "env/reward_std": 0.1, "objective/kl": 0.0}, {"env/reward_mean": 2.0, "env/x": 1}]
    assert reward_component_keys(records) == ["env/reward_mean", "env/aesthetic", "env/x"]


def test_rolling_mean_matches_hand_computation():
    values = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
    np.testing.assert_allclose(rolling_mean(values, 2), [1.0, 2.0, 4.0, 6.0, 8.0])
    np.testing.assert_allclose(rolling_mean(values, 3), [1.0, 2.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(rolling_mean(values, 1), values)
    np.testing.assert_allclose(rolling_mean(values, 99), np.cumsum(values) / np.arange(1, 6))
    with pytest.raises(ValueError, match="window=0"):
        rolling_mean(values, 0)


def test_plot_training_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        plot_training(tmp_path / "missing.jsonl", tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no records"):
        plot_training(empty, tmp_path)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"update": 1, "env/reward_mean": 1.0}\n{"update": 2, \n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_metrics(broken)
    no_env = tmp_path / "no_env.jsonl"
    no_env.write_text('{"update": 1, "objective/kl": 0.1}\n')
    with pytest.raises(ValueError, match="no finite 'env/...' values"):
        plot_training(no_env, tmp_path)
    no_kl = tmp_path / "no_kl.jsonl"
    no_kl.write_text('{"update": 1, "env/reward_mean": 0.1}\n')
    with pytest.raises(ValueError, match="objective/kl"):
        plot_training(no_kl, tmp_path)
    with pytest.raises(ValueError, match="window=0"):
        plot_training(write_metrics(tmp_path / "m.jsonl", n=3), tmp_path, window=0)


def checkerboard(n, size=4):
    """`n` images [3, size, size]: pure red / pure blue checkerboards."""
    red = (torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 == 0
    image = torch.stack([red.float(), torch.zeros(size, size), (~red).float()])
    return image.expand(n, 3, size, size).clone()


def test_image_grid_upscales_tiny_renders_visibly(tmp_path):
    rows = [
        (
            "a cat on a sofa",
            "a cat on a sofa at night, moonlight, cinematic lighting, highly detailed",
            "make it night",
        ),
        ("a forest", "", "add a river"),
    ]
    path = plot_image_grid(rows, checkerboard(2), torch.rand(2, 3, 4, 4), tmp_path / "grid.png")
    assert path == tmp_path / "grid.png"
    assert_png(path, min_width=500, min_height=600)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    pure_red = ((pixels[..., 0] == 255) & (pixels[..., 1] == 0) & (pixels[..., 2] == 0)).sum()
    # 2 source images x 8 red pixels each: upscaled nearest they cover thousands of screen pixels, unblended
    assert pure_red > 2 * 8 * 20 * 20


def test_image_grid_rejects_bad_input(tmp_path):
    rows = [("a", "b", "c")]
    good = torch.rand(1, 3, 8, 8)
    out = tmp_path / "g.png"
    with pytest.raises(ValueError, match=r"images_before has shape \(1, 2, 3, 8, 8\); expected \[N, 3, H, W\]"):
        plot_image_grid(rows, torch.rand(1, 2, 3, 8, 8), good, out)
    with pytest.raises(ValueError, match="images_after has values in"):
        plot_image_grid(rows, good, good * 2 + 0.5, out)
    with pytest.raises(ValueError, match="NaN"):
        plot_image_grid(rows, good, torch.full_like(good, float("nan")), out)
    with pytest.raises(ValueError, match="rows has 2 entries"):
        plot_image_grid(rows * 2, good, good, out)
    with pytest.raises(ValueError, match=r"rows\[0\]"):
        plot_image_grid([("a", "b")], good, good, out)
    with pytest.raises(ValueError, match="rows is empty"):
        plot_image_grid([], good[:0], good[:0], out)
    with pytest.raises(TypeError, match="images_before is ndarray"):
        plot_image_grid(rows, good.numpy(), good, out)
    assert not out.exists()


def test_learning_curves_png_for_per_seed_and_single_curves(tmp_path):
    curves = {
        "ppo": [[(0, 0.0), (10, 1.0), (20, 2.0)], [(0, 1.0), (12, 2.0), (20, 3.0)]],
        "diffchat": [(0, 0.5), (10, 1.5), (20, 2.5)],  # one seed, given as a bare curve
    }
    path = plot_learning_curves(curves, tmp_path / "curves.png")
    assert_png(path, min_width=600, min_height=400)
    path = plot_learning_curves(curves, tmp_path / "curves_std.png", band="std")
    assert_png(path, min_width=600, min_height=400)


def test_seed_curves_are_averaged_on_a_common_grid():
    seeds = _seed_curves("v", [[(0, 0.0), (10, 10.0), (20, 20.0)], [(20, 0.0), (5, 0.0), (15, 0.0)]])
    grid, ys = _common_grid("v", seeds)
    np.testing.assert_array_equal(grid, [5, 10, 15, 20])  # union of x within the range both seeds cover
    np.testing.assert_allclose(ys[0], [5, 10, 15, 20])  # seed 0 linearly interpolated
    np.testing.assert_allclose(ys[1], [0, 0, 0, 0])  # seed 1 sorted by x first


def test_learning_curves_reject_bad_input(tmp_path):
    out = tmp_path / "c.png"
    with pytest.raises(ValueError, match="band='iqr'"):
        plot_learning_curves({"a": [(0, 1), (1, 2)]}, out, band="iqr")
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_learning_curves({}, out)
    with pytest.raises(ValueError, match=r"curves\['a'\]"):
        plot_learning_curves({"a": []}, out)
    with pytest.raises(ValueError, match="do not overlap"):
        plot_learning_curves({"a": [[(0, 1), (1, 2)], [(5, 1), (6, 2)]]}, out)
    with pytest.raises(ValueError, match="NaN or inf"):
        plot_learning_curves({"a": [(0, 1), (1, float("nan"))]}, out)
    with pytest.raises(ValueError, match=r"has point \('x', 1\)"):
        plot_learning_curves({"a": [[(0, 1), ("x", 1)]]}, out)
    assert not out.exists()


def test_plot_training_adds_gold_vs_proxy_when_gold_metrics_are_logged(tmp_path):
    rows = [{"update": u, "env/reward_mean": 0.1 * u, "objective/kl": 0.5 * u, "env/gold/content": 0.8 - 0.01 * u,
             "env/gold/aesthetic": 0.5 + 0.002 * u if u % 3 else float("nan")} for u in range(1, 25)]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    paths = plot_training(metrics, tmp_path / "plots")
    assert [p.name for p in paths] == ["reward_components.png", "kl_entropy.png", "gold_vs_proxy.png"]
    assert_png(paths[-1], min_width=1000, min_height=300)



def test_the_proxy_compared_across_updates_is_the_unnormalised_sum_where_logged():
    from promptgym.experiments.plots import proxy_key

    plain = [{"update": u, "env/reward_mean": 0.1 * u} for u in (1, 2)]
    assert proxy_key(plain) == "env/reward_mean"  # an unnormalised reward is its own sum
    normalised = [{**row, "env/reward/unnormalized": 3.0 + row["update"]} for row in plain]
    assert proxy_key(normalised) == "env/reward/unnormalized"
    assert proxy_key([{**row, "env/reward/unnormalized": float("nan")} for row in plain]) == "env/reward_mean"


def test_curve_panels_with_ci_bands_and_gold_vs_kl(tmp_path):
    from promptgym.experiments.plots import bootstrap_mean_band, plot_curve_panels, plot_gold_vs_kl

    curves = {"ppo": [[(0, 0.0), (10, 1.0)], [(0, 1.0), (10, 2.0)], [(0, 0.5), (10, 1.5)]], "grpo": [(0, 0.2), (10, 0.4)]}
    path = plot_curve_panels({"reward": curves, "gold/content": curves}, tmp_path / "curves.png", band="ci")
    assert_png(path, min_width=900, min_height=400)
    ys = np.array([[0.0, 1.0], [1.0, 2.0], [0.5, 1.5]])
    low, high = bootstrap_mean_band(ys)
    assert (low <= ys.mean(0)).all() and (ys.mean(0) <= high).all() and (low >= ys.min(0)).all()
    np.testing.assert_allclose(bootstrap_mean_band(np.ones((4, 3))), (np.ones(3), np.ones(3)))
    finals = {"sft": [(0.0, {"gold/content": 0.9, "gold/aesthetic": 0.5})],
              "ppo": [(2.0, {"gold/content": 0.8, "gold/aesthetic": 0.7}), (3.0, {"gold/content": 0.7})]}
    trajectories = {"ppo": [[(0.5, {"gold/content": 0.9}), (2.0, {"gold/content": 0.8})]]}
    path = plot_gold_vs_kl(finals, tmp_path / "gold_vs_kl.png", trajectories=trajectories)
    assert_png(path, min_width=900, min_height=400)
    with pytest.raises(ValueError, match="finals is empty"):
        plot_gold_vs_kl({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_curve_panels({}, tmp_path / "x.png")


def test_variant_styles_stay_distinct_past_ten_and_match_across_plots(tmp_path):
    from promptgym.experiments.plots import _variant_styles, plot_curve_panels, plot_gold_vs_kl, variant_style

    styles = [variant_style(i) for i in range(12)]
    assert len(set(styles)) == 12  # the bench's twelve variants: colour, marker and line style never all repeat
    assert styles[0] == ("C0", "o", "-") and styles[10] == ("C0", "s", "--")
    with pytest.raises(ValueError, match="i=-1"):
        variant_style(-1)
    order = ["sft", "ppo", "grpo"]
    # a plot without the sft row (the learning curves) still gives ppo and grpo the styles the gold-vs-KL plot does
    assert _variant_styles(["grpo", "ppo"], order) == {"grpo": variant_style(2), "ppo": variant_style(1)}
    assert _variant_styles(["new", "ppo"], order) == {"new": variant_style(3), "ppo": variant_style(1)}
    curves = {"ppo": [[(0, 0.0), (5, 1.0), (10, 0.0)]], "grpo": [(0, 0.2), (10, 0.4)]}
    assert_png(plot_curve_panels({"reward": curves}, tmp_path / "c.png", order=order, smooth=3), min_width=500)
    finals = {"sft": [(0.0, {"gold/content": 0.9})], "ppo": [(2.0, {"gold/content": 0.8})]}
    trajectories = {"ppo": [[(0.5, {"gold/content": 0.9}), (2.0, {"gold/content": 0.8})]]}
    assert_png(plot_gold_vs_kl(finals, tmp_path / "k.png", trajectories=trajectories, order=order, smooth=2),
               min_width=500)
    with pytest.raises(ValueError, match="window=0"):
        plot_gold_vs_kl(finals, tmp_path / "k.png", trajectories=trajectories, smooth=0)


def _sample(update, task, reward, **components):
    return {"update": update, "task_id": task, "reward": reward, "components": components}


def test_evaluation_changes_pair_each_evaluation_with_the_first_by_task():
    from promptgym.experiments.plots import evaluation_changes

    samples = [_sample(0, "a", 1.0, **{"reward/unnormalized": 2.0, "gold/content": 0.5, "aesthetic/source": 9.0}),
               _sample(0, "b", 3.0, **{"reward/unnormalized": 4.0, "gold/content": 0.7, "aesthetic/source": 9.0}),
               _sample(5, "a", 2.0, **{"reward/unnormalized": 3.0, "gold/content": 0.4, "aesthetic/source": 9.0}),
               _sample(5, "b", 3.0, **{"reward/unnormalized": 6.0, "gold/content": float("nan"), "aesthetic/source": 9.0}),
               _sample(9, "b", 1.0, **{"reward/unnormalized": 1.0, "gold/content": 0.9, "aesthetic/source": 9.0})]
    changes = evaluation_changes(samples)
    # the unnormalised sum stands for the proxy (a normalised total moves with its statistics); gold terms follow
    assert list(changes) == ["reward/unnormalized", "gold/content"]
    proxy = changes["reward/unnormalized"]
    assert [u for u, _ in proxy] == [0, 5, 9]
    assert [c.change for _, c in proxy] == pytest.approx([0.0, (1.0 + 2.0) / 2, -3.0])  # per task, vs update 0
    assert [c.n for _, c in proxy] == [2, 2, 1]  # task a is missing at update 9
    gold = changes["gold/content"]
    assert [(u, c.n) for u, c in gold] == [(0, 2), (5, 1), (9, 1)]  # a NaN leaves that task out of that point
    assert gold[1][1].change == pytest.approx(-0.1) and gold[2][1].change == pytest.approx(0.2)
    low, high = proxy[1][1].low, proxy[1][1].high
    assert low <= proxy[1][1].change <= high and low < high  # a bootstrap CI over the two tasks


def test_evaluation_changes_without_an_unnormalised_sum_use_the_reward_and_need_two_evaluations():
    from promptgym.experiments.plots import evaluation_changes

    plain = [_sample(0, "a", 1.0), _sample(0, "b", 2.0), _sample(4, "a", 1.5), _sample(4, "b", 2.5)]
    changes = evaluation_changes(plain)
    assert list(changes) == ["reward"]
    assert changes["reward"][1][1].change == pytest.approx(0.5)
    assert evaluation_changes(plain[:2]) == {}  # one evaluation: nothing to compare
    assert evaluation_changes([]) == {}


def test_plot_evaluations_draws_one_panel_per_metric(tmp_path):
    from promptgym.experiments.plots import plot_evaluations

    rng = np.random.default_rng(0)
    samples = [_sample(u, f"t{i}", float(rng.normal(u / 10)),
                       **{"reward/unnormalized": float(rng.normal(u / 10)), "gold/content": float(rng.uniform()),
                          "gold/aesthetic": float(rng.normal(u / 20))})
               for u in (0, 8, 16, 24) for i in range(8)]
    path = plot_evaluations(samples, tmp_path / "evaluations.png")
    assert path == tmp_path / "evaluations.png"
    assert_png(path, min_width=1000, min_height=300)
    with pytest.raises(ValueError, match="two evaluations"):
        plot_evaluations(samples[:8], tmp_path / "one.png")
    assert not (tmp_path / "one.png").exists()
