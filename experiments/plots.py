"""Plots of a run: reward components and KL/entropy over updates, a before/after image grid, learning curves,
and the quality-diversity scatter of an evaluation.

Pure functions: each reads its inputs (a run's `metrics.jsonl`, tensors, curve data), writes one PNG and returns
its path. Matplotlib runs on the non-interactive Agg backend (no display needed, never `plt.show`).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # explicit: plots are files, never windows (headless CI, servers)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from promptgym.experiments.stats import PairedChange, paired_changes  # noqa: E402
from promptgym.rewards.composite import UNNORMALIZED_COMPONENT  # noqa: E402
from promptgym.rewards.jsonl import read_jsonl  # noqa: E402

__all__ = [
    "KL_ENTROPY_KEYS",
    "bootstrap_mean_band",
    "evaluation_changes",
    "plot_curve_panels",
    "plot_evaluations",
    "plot_gold_vs_kl",
    "plot_gold_vs_proxy",
    "plot_image_grid",
    "plot_learning_curves",
    "plot_quality_diversity",
    "plot_training",
    "read_metrics",
    "reward_component_keys",
    "rolling_mean",
]

KL_ENTROPY_KEYS = ("objective/kl", "objective/kl_coef", "objective/entropy", "ppo/approx_kl", "ppo/clipfrac")
REWARD_KEY = "env/reward_mean"
UNNORMALIZED_KEY = f"env/{UNNORMALIZED_COMPONENT}"
GOLD_KEYS = ("env/gold/content", "env/gold/aesthetic")
DPI = 110
_CAPTION_WIDTH = 38  # characters per caption line under a grid image


# ---------------------------------------------------------------------------------------------- reading
def read_metrics(metrics_jsonl_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's `metrics.jsonl`; raises on a missing file, a bad line or no records."""
    path = Path(metrics_jsonl_path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics_jsonl_path={str(path)!r} does not exist; expected a run's metrics.jsonl")
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"metrics_jsonl_path={str(path)!r} has no records; expected one JSON object per PPO update")
    return records


def proxy_key(records: Sequence[Mapping[str, Any]]) -> str:
    """The metrics key of the proxy reward to compare across updates: the unnormalised weighted sum where the reward
    normalises its terms (a normalised total moves with its running statistics), else the reward itself."""
    return UNNORMALIZED_KEY if len(_series(records, UNNORMALIZED_KEY)[0]) else REWARD_KEY


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of `key` over updates: x is the record's `update` (else its 1-based line), missing/null/NaN skipped."""
    xs, ys = [], []
    for i, record in enumerate(records):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        update = record.get("update", i + 1)
        xs.append(float(update) if isinstance(update, (int, float)) else float(i + 1))
        ys.append(float(value))
    return np.asarray(xs), np.asarray(ys)


def reward_component_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """`env/reward_mean` first, then every other `env/<component>` key in first-seen order (not `reward_std`)."""
    seen: dict[str, None] = {}
    for record in records:
        for key in record:
            if key.startswith("env/") and key != "env/reward_std":
                seen.setdefault(key, None)
    keys = list(seen)
    return sorted(keys, key=lambda k: k != REWARD_KEY)  # stable: reward first, the rest as logged


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` values (fewer at the start), same length as `values`."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window={window!r}; expected a positive integer")
    values = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


VARIANT_MARKERS = ("o", "s", "^", "D")
VARIANT_LINESTYLES = ("-", "--", "-.", ":")


def variant_style(i: int) -> tuple[str, str, str]:
    """(colour, marker, linestyle) of the i-th variant of a plot: the ten `C0`-`C9` colours, then the same colours
    with another marker and line style, so eleven or more variants (the bench has twelve) stay distinguishable."""
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
        raise ValueError(f"i={i!r}; expected an integer >= 0")
    cycle = i // 10
    return f"C{i % 10}", VARIANT_MARKERS[cycle % len(VARIANT_MARKERS)], VARIANT_LINESTYLES[cycle % len(VARIANT_LINESTYLES)]


def _auto_window(n: int) -> int:
    return max(1, min(25, n // 8))


# ---------------------------------------------------------------------------------------------- training
def plot_training(
    metrics_jsonl_path: str | os.PathLike, out_dir: str | os.PathLike, window: int | None = None
) -> list[Path]:
    """Write `reward_components.png` and `kl_entropy.png` for a run's metrics, and `gold_vs_proxy.png` when the
    run logged gold metrics (the synth world); returns their paths.

    `window` is the rolling-mean window in updates (default: about an eighth of the run, at most 25).
    """
    records = read_metrics(metrics_jsonl_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    window = _auto_window(len(records)) if window is None else window
    rolling_mean(np.zeros(1), window)  # validates window before any drawing
    paths = [
        _plot_reward_components(records, out_dir / "reward_components.png", window, metrics_jsonl_path),
        _plot_kl_entropy(records, out_dir / "kl_entropy.png", window, metrics_jsonl_path),
    ]
    if any(len(_series(records, key)[0]) for key in GOLD_KEYS):
        paths.append(plot_gold_vs_proxy(records, out_dir / "gold_vs_proxy.png", window))
    return paths


def plot_gold_vs_proxy(records: Sequence[Mapping[str, Any]], path: Path, window: int) -> Path:
    """Proxy reward, gold content and gold aesthetic against the KL to the start policy (rolling means), one
    panel each, points coloured by update: over-optimisation shows as proxy rising while gold falls with KL."""
    keys = [key for key in (proxy_key(records), *GOLD_KEYS) if len(_series(records, key)[0])]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.7), squeeze=False, layout="constrained")
    fig.suptitle(f"Proxy reward and gold metrics against KL to the start policy (rolling mean, window={window})",
                 fontsize=11)
    kl_x, kl = _series(records, "objective/kl")
    kl_by_update = dict(zip(kl_x, rolling_mean(kl, window))) if len(kl) else {}
    for ax, key in zip(axes[0], keys):
        x, y = _series(records, key)
        keep = np.array([u in kl_by_update for u in x], dtype=bool)
        x, y = x[keep], rolling_mean(y, window)[keep]
        points = ax.scatter([kl_by_update[u] for u in x], y, c=x, cmap="viridis", s=14)
        ax.plot([kl_by_update[u] for u in x], y, color="grey", alpha=0.4, linewidth=0.8)
        titles = {REWARD_KEY: "proxy reward (what PPO maximises)",
                  UNNORMALIZED_KEY: "proxy reward, unnormalised (PPO maximises it normalised)"}
        ax.set_title(titles.get(key, key[len("env/"):]), fontsize=10)
        ax.set_xlabel("KL to the start policy (objective/kl)")
        ax.grid(alpha=0.3)
    fig.colorbar(points, ax=axes[0, -1], label="PPO update")
    return _save(fig, path)


def evaluation_changes(samples: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, PairedChange]]]:
    """For a run's `samples.jsonl` records (the fixed test tasks at every evaluation): each evaluation's paired
    per-task change from the first one, with its bootstrap CI over tasks, as `{metric: [(update, change), ...]}`.

    Metrics: the proxy (the unnormalised weighted sum where the reward logs it, else the reward) and every `gold/...`
    component, in first-seen order. Empty with fewer than two evaluations. This is where a run whose training
    episodes are not gold-scored (`reward.monitors: eval`) shows whether gold followed the proxy over updates."""
    updates = sorted({int(row["update"]) for row in samples})
    if len(updates) < 2:
        return {}
    components = dict.fromkeys(name for row in samples for name in row.get("components", {}))
    proxy = UNNORMALIZED_COMPONENT if UNNORMALIZED_COMPONENT in components else "reward"
    names = [proxy, *(name for name in components if name.startswith("gold/"))]
    first = [row for row in samples if row["update"] == updates[0]]
    changes: dict[str, list[tuple[int, PairedChange]]] = {name: [] for name in names}
    for update in updates:
        rows = [row for row in samples if row["update"] == update]
        for change in paired_changes(first, rows, names):
            changes[change.name].append((update, change))
    return {name: points for name, points in changes.items() if points}


def plot_evaluations(samples: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """`evaluation_changes` drawn: one panel per metric (the proxy, then each gold term), the mean per-task change
    from the first evaluation at every evaluation with its paired 95% CI as a band, and the number of tasks."""
    changes = evaluation_changes(samples)
    if not changes:
        raise ValueError("samples have fewer than two evaluations (distinct 'update' values); expected a run's "
                         "samples.jsonl after at least one evaluation past the start")
    n_tasks = max(point.n for points in changes.values() for _, point in points)
    first_update = min(int(row["update"]) for row in samples)
    fig, axes = _grid(len(changes), title=f"Fixed test tasks at each evaluation: change from update {first_update} "
                      f"({n_tasks} tasks, paired 95% bootstrap CI)", max_cols=4)
    for i, (ax, (name, points)) in enumerate(zip(axes, changes.items())):
        x = np.array([u for u, _ in points], dtype=float)
        mid, low, high = (np.array([getattr(c, key) for _, c in points]) for key in ("change", "low", "high"))
        ax.fill_between(x, low, high, color=f"C{i}", alpha=0.18, linewidth=0, label="95% CI")
        ax.plot(x, mid, color=f"C{i}", marker="o", markersize=4, label="mean change")
        ax.axhline(0.0, color="0.5", linewidth=0.8, linestyle=":")
        proxy = name in ("reward", UNNORMALIZED_COMPONENT)
        ax.set_title(f"proxy: {name}" if proxy else name, fontsize=10)
        ax.set_ylabel("change from the start")
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    return _save(fig, Path(path))


def _plot_reward_components(records, path: Path, window: int, source) -> Path:
    keys = reward_component_keys(records)
    panels = [k for k in keys if not (k.endswith("/source") and k[: -len("/source")] in keys)]  # drawn with parent
    panels = [k for k in panels if len(_series(records, k)[0])]
    if not panels:
        raise ValueError(
            f"metrics_jsonl_path={str(source)!r} has no finite 'env/...' values; expected {REWARD_KEY!r} "
            "and the reward components logged by PPOAgent.step()"
        )
    fig, axes = _grid(len(panels), title=f"Reward and its components over PPO updates (rolling mean, window={window})")
    for ax, key in zip(axes, panels):
        x, y = _series(records, key)
        label = "reward" if key == REWARD_KEY else "edited − source" if key.endswith("/delta") else "edited prompt"
        _raw_and_rolling(ax, x, y, window, color="C0", label=label)
        if key == REWARD_KEY:
            xs, std = _series(records, "env/reward_std")
            if len(xs) == len(x) and np.array_equal(xs, x):
                ax.fill_between(x, y - std, y + std, color="C0", alpha=0.12, linewidth=0, label="± std over episodes")
        if f"{key}/source" in keys:
            xs, ys = _series(records, f"{key}/source")
            _raw_and_rolling(ax, xs, ys, window, color="C1", label="source prompt", dashed=True)
        name = key[len("env/") :]
        ax.set_title("total reward" if key == REWARD_KEY else name.replace("/delta", " (edited − source)"))
        if key.endswith("/delta"):
            ax.axhline(0.0, color="0.5", linewidth=0.8, linestyle=":")
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    return _save(fig, path)


def _plot_kl_entropy(records, path: Path, window: int, source) -> Path:
    panels = [k for k in KL_ENTROPY_KEYS if len(_series(records, k)[0])]
    if not panels:
        raise ValueError(
            f"metrics_jsonl_path={str(source)!r} has none of {list(KL_ENTROPY_KEYS)}; expected the metrics of "
            "PPOAgent.step()"
        )
    titles = {
        "objective/kl": "KL(policy ‖ reference), per episode",
        "objective/kl_coef": "KL coefficient β",
        "objective/entropy": "policy entropy per token (nats)",
        "ppo/approx_kl": "approx. KL between PPO epochs",
        "ppo/clipfrac": "fraction of ratios clipped",
    }
    fig, axes = _grid(len(panels), title=f"KL, entropy and PPO diagnostics (rolling mean, window={window})")
    for i, (ax, key) in enumerate(zip(axes, panels)):
        x, y = _series(records, key)
        _raw_and_rolling(ax, x, y, window, color=f"C{i + 2}", label=key)
        ax.set_title(titles[key])
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    return _save(fig, path)


def _grid(n: int, title: str, max_cols: int = 3) -> tuple[Figure, list[Any]]:
    """A figure with `n` panels in up to `max_cols` columns (extra axes removed), labelled x = update."""
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows + 0.5), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.remove()
    for ax in flat[:n]:
        ax.set_xlabel("PPO update")
        ax.set_ylabel("value")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return fig, flat[:n]


def _raw_and_rolling(ax, x, y, window: int, color: str, label: str, dashed: bool = False) -> None:
    style = "--" if dashed else "-"
    ax.plot(x, y, style, color=color, alpha=0.3, linewidth=0.9, marker="." if len(x) < 40 else None, markersize=3)
    ax.plot(x, rolling_mean(y, window), style, color=color, linewidth=2.0, label=label)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- image grid
def plot_image_grid(
    rows: Sequence[tuple[str, str, str]],
    images_before: torch.Tensor,
    images_after: torch.Tensor,
    path: str | os.PathLike,
) -> Path:
    """Before/after grid: one row per task, source render | edited render, prompts wrapped under each image.

    `rows[i] = (source prompt, edited prompt, label)` (label: e.g. the instruction); `images_*[N, 3, H, W]` in
    [0, 1] (for a renderer's `[N, K, 3, H, W]` pass `images[:, 0]`). Tiny renders are upscaled with
    nearest-neighbour so their pixels stay visible.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty; expected one (source, edited prompt, label) per image")
    before = _check_images("images_before", images_before)
    after = _check_images("images_after", images_after)
    for i, row in enumerate(rows):
        if not (isinstance(row, (tuple, list)) and len(row) == 3 and all(isinstance(s, str) for s in row)):
            raise ValueError(f"rows[{i}]={row!r}; expected a (source, edited prompt, label) tuple of three str")
    if not (len(rows) == before.shape[0] == after.shape[0]):
        raise ValueError(
            f"rows has {len(rows)} entries, images_before {before.shape[0]} and images_after {after.shape[0]}; "
            "expected one image pair per row"
        )
    captions = [(_wrap(source), _wrap(edited)) for source, edited, _ in rows]
    lines = [max(a.count("\n"), b.count("\n")) + 1 for a, b in captions]
    heights = [2.4 + 0.16 * n + 0.35 for n in lines]  # image + caption lines + row label
    fig = plt.figure(figsize=(6.0, sum(heights) + 0.4), layout="constrained")
    fig.suptitle("Before / after: source prompt render vs edited prompt render", fontsize=11)
    subfigs = fig.subfigures(len(rows), 1, height_ratios=heights, squeeze=False)[:, 0]
    for i, (sub, (_, _, label)) in enumerate(zip(subfigs, rows)):
        sub.suptitle(textwrap.shorten(label, 70, placeholder="…"), fontsize=9, fontweight="bold")
        axes = sub.subplots(1, 2)
        for ax, image, caption, side in zip(axes, (before[i], after[i]), captions[i], ("source", "edited")):
            ax.imshow(_to_hwc(image), interpolation="nearest")  # nearest: 32x32 renders stay crisp blocks
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(side, fontsize=8, color="0.35")
            ax.set_xlabel(caption, fontsize=7.5, wrap=False)
    return _save(fig, Path(path))


def _check_images(name: str, images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} is {type(images).__name__}; expected a torch.Tensor [N, 3, H, W] in [0, 1]")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{name} has shape {tuple(images.shape)}; expected [N, 3, H, W] (for [N, K, 3, H, W] renders pass images[:, 0])"
        )
    images = images.detach().float().cpu()
    if images.numel() == 0:
        raise ValueError(f"{name} has shape {tuple(images.shape)}; expected at least one non-empty image")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or inf values; expected pixel values in [0, 1]")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{name} has values in [{low:.3g}, {high:.3g}]; expected [0, 1] (renderer output)")
    return images


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, _CAPTION_WIDTH)) if text.strip() else "(empty prompt)"


# ---------------------------------------------------------------------------------------------- curves
BANDS = ("minmax", "std", "ci", "none")
BAND_TEXT = {"minmax": "band: min–max over seeds", "std": "band: ± 1 std over seeds",
             "ci": "band: 95% bootstrap CI of the mean over seeds", "none": "no band"}


def plot_learning_curves(
    curves: Mapping[str, Sequence[Sequence[tuple[float, float]]] | Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    band: str = "minmax",
    xlabel: str = "reward calls",
    ylabel: str = "mean episode reward",
    title: str = "Learning curves (mean over seeds)",
) -> Path:
    """One line per variant: the mean over seeds of reward against reward calls, with a band across seeds.

    `curves[variant]` is a list of per-seed curves, each a list of `(x, y)` points (or a single curve of points).
    Seeds are linearly interpolated onto the union of their x values inside the range they all cover, so seeds
    logged at slightly different reward-call counts still average point by point. `band`: "minmax" (range over
    seeds), "std" (mean ± one std over seeds), "ci" (95% percentile-bootstrap CI of the mean over seeds) or "none".
    """
    return plot_curve_panels({ylabel: curves}, path, band, xlabel, title)


def plot_curve_panels(
    panels: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    band: str = "ci",
    xlabel: str = "reward calls",
    title: str = "Learning curves (mean over seeds)",
    order: Sequence[str] | None = None,
    smooth: int = 1,
) -> Path:
    """`plot_learning_curves` for several metrics side by side: `panels[ylabel][variant]` = per-seed curves; each
    variant keeps its colour in every panel (`variant_style` of its place in `order`, default the order of first
    appearance, so another plot given the same `order` matches), and the legend is in the first. `smooth` > 1 draws
    each seed's trailing mean over that many points before the mean over seeds."""
    if band not in BANDS:
        raise ValueError(f"band={band!r}; expected one of {list(BANDS)}")
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError(f"panels={panels!r:.80}; expected a non-empty mapping {{ylabel: {{variant: curves}}}}")
    for curves in panels.values():
        if not isinstance(curves, Mapping) or not curves:
            raise ValueError(f"curves={curves!r:.80}; expected a non-empty mapping {{variant: per-seed curves}}")
    styles = _variant_styles([v for curves in panels.values() for v in curves], order)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1.5, 4.4), layout="constrained",
                             squeeze=False)
    for ax, (ylabel, curves) in zip(axes[0], panels.items()):
        for variant, data in curves.items():
            color, _, linestyle = styles[variant]
            _draw_curve(ax, variant, data, band, color, linestyle, smooth)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best", framealpha=0.85)
    smoothing = f"; each seed's trailing mean over {smooth} points" if smooth > 1 else ""
    fig.suptitle(f"{title}; {BAND_TEXT[band]}{smoothing}", fontsize=10)
    return _save(fig, Path(path))


def _variant_styles(variants: Sequence[str], order: Sequence[str] | None) -> dict[str, tuple[str, str, str]]:
    """{variant: variant_style(its index in `order`)}; variants missing from `order` follow it in first-seen order."""
    ranked = list(dict.fromkeys([*(order or []), *variants]))
    return {variant: variant_style(ranked.index(variant)) for variant in dict.fromkeys(variants)}


def _draw_curve(ax: Any, variant: str, data: Any, band: str, color: str, linestyle: str = "-",
                smooth: int = 1) -> None:
    seeds = _seed_curves(variant, data)
    if smooth > 1:
        seeds = [(x, rolling_mean(y, smooth)) for x, y in seeds]
    grid, ys = _common_grid(variant, seeds)
    mean = ys.mean(0)
    ax.plot(grid, mean, color=color, linestyle=linestyle, linewidth=2.0,
            label=f"{variant} (n={len(seeds)} seed{'s' * (len(seeds) > 1)})")
    if band != "none" and len(seeds) > 1:
        low, high = {"minmax": lambda: (ys.min(0), ys.max(0)), "std": lambda: (mean - ys.std(0), mean + ys.std(0)),
                     "ci": lambda: bootstrap_mean_band(ys)}[band]()
        ax.fill_between(grid, low, high, color=color, alpha=0.18, linewidth=0)


def bootstrap_mean_band(ys: np.ndarray, confidence: float = 0.95, n_resamples: int = 1000,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile-bootstrap CI of the mean over seeds of `ys [seeds, points]` (seeds resampled whole)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, ys.shape[0], size=(n_resamples, ys.shape[0]))
    means = ys[rows].mean(1)
    alpha = (1.0 - confidence) / 2
    return np.quantile(means, alpha, axis=0), np.quantile(means, 1.0 - alpha, axis=0)


def plot_gold_vs_kl(
    finals: Mapping[str, Sequence[tuple[float, Mapping[str, float]]]],
    path: str | os.PathLike,
    metrics: Sequence[str] = ("gold/content", "gold/aesthetic"),
    trajectories: Mapping[str, Sequence[Sequence[tuple[float, Mapping[str, float]]]]] | None = None,
    title: str = "Gold against KL to the start",
    smooth: int = 5,
    order: Sequence[str] | None = None,
) -> Path:
    """Over-optimisation: one panel per gold metric against the KL to the start (nats per episode).

    `finals[variant]` = per-seed `(kl, {metric: value})` of the final evaluation (small dots; the large marker is
    their mean); `trajectories[variant]` = per-seed training curves of `(kl, {metric: value})` points, drawn as the
    mean over seeds point by point (seeds with fewer points are cut to the shortest), then a trailing mean over
    `smooth` updates of both coordinates (one update's 32 episodes are noisy; 1 draws them raw). A variant whose
    points have no KL (NaN) is left out of the plot. Styles follow `order` as in `plot_curve_panels`."""
    if not finals:
        raise ValueError("finals is empty; expected {variant: [(kl, {metric: value}), ...]}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.4 * len(metrics) + 1.5, 4.4), layout="constrained",
                             squeeze=False)
    styles = _variant_styles(list(finals), order)
    for ax, metric in zip(axes[0], metrics):
        for variant, points in finals.items():
            color, marker, linestyle = styles[variant]
            pts = np.array([(kl, values.get(metric, math.nan)) for kl, values in points], dtype=np.float64)
            pts = pts[np.isfinite(pts).all(1)] if len(pts) else pts
            if len(pts) == 0:
                continue
            ax.scatter(pts[:, 0], pts[:, 1], color=color, marker=marker, s=14, alpha=0.45, linewidths=0)
            ax.scatter([pts[:, 0].mean()], [pts[:, 1].mean()], color=color, marker=marker, s=70, edgecolors="black",
                       linewidths=0.6, label=variant, zorder=3)
            curve = _mean_trajectory((trajectories or {}).get(variant, []), metric)
            if curve is not None:
                smoothed = np.stack([rolling_mean(curve[:, 0], smooth), rolling_mean(curve[:, 1], smooth)], axis=1)
                ax.plot(smoothed[:, 0], smoothed[:, 1], color=color, linestyle=linestyle, linewidth=1.2, alpha=0.8)
        ax.set_xlabel("KL to the start (nats per episode)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best", framealpha=0.85)
    fig.suptitle(f"{title}: dots = seeds' final evaluations, large = their mean, lines = training episodes "
                 f"(mean over seeds{f', trailing mean over {smooth} updates' if smooth > 1 else ''})", fontsize=9)
    return _save(fig, Path(path))


def _mean_trajectory(seeds: Sequence[Sequence[tuple[float, Mapping[str, float]]]], metric: str) -> np.ndarray | None:
    rows = [np.array([(kl, values.get(metric, math.nan)) for kl, values in points], dtype=np.float64)
            for points in seeds if points]
    rows = [r for r in rows if len(r) and np.isfinite(r).all()]
    if not rows:
        return None
    shortest = min(len(r) for r in rows)
    return np.mean([r[:shortest] for r in rows], axis=0)


def _is_point(item: Any) -> bool:
    return (
        isinstance(item, (tuple, list))
        and len(item) == 2
        and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in item)
    )


def _seed_curves(variant: str, data: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-seed (x, y) arrays sorted by x; a bare list of points is one seed."""
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence) or not data:
        raise ValueError(
            f"curves[{variant!r}]={data!r:.80}; expected a non-empty list of per-seed [(x, y), ...] curves"
        )
    seeds = [data] if _is_point(data[0]) else list(data)
    out = []
    for s, points in enumerate(seeds):
        if isinstance(points, (str, bytes)) or not isinstance(points, Sequence) or not points:
            raise ValueError(f"curves[{variant!r}][{s}]={points!r:.80}; expected a non-empty list of (x, y) points")
        for point in points:
            if not _is_point(point):
                raise ValueError(f"curves[{variant!r}][{s}] has point {point!r}; expected (x, y) numbers")
        array = np.asarray(points, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"curves[{variant!r}][{s}] has NaN or inf values; expected finite (x, y) points")
        order = np.argsort(array[:, 0], kind="stable")
        out.append((array[order, 0], array[order, 1]))
    return out


def _common_grid(variant: str, seeds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """x grid shared by all seeds and the seeds' y values on it `[S, len(grid)]`."""
    start = max(x[0] for x, _ in seeds)
    stop = min(x[-1] for x, _ in seeds)
    if start > stop:
        spans = [(float(x[0]), float(x[-1])) for x, _ in seeds]
        raise ValueError(f"curves[{variant!r}]: the seeds' x ranges {spans} do not overlap; cannot average them")
    grid = np.unique(np.concatenate([x[(x >= start) & (x <= stop)] for x, _ in seeds]))
    return grid, np.stack([np.interp(grid, x, y) for x, y in seeds])


# ---------------------------------------------------------------------------------------------- quality-diversity
QUALITY_KEYS = (("reward/unnormalized", "reward"), ("gold/aesthetic",), ("gold/content",))  # first present of each
DIVERSITY_KEYS = ("diversity", "distinct_1")  # x axis: the first with a finite value
_AXIS_LABELS = {
    "reward": "proxy reward (total)",
    "reward/unnormalized": "proxy reward (weighted sum before normalisation)",
    "diversity": "diversity: mean pairwise cosine distance of a task's samples",
    "distinct_1": "distinct-1 of a task's samples",
}


def _column(records: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([float(record.get(key, math.nan)) for record in records], dtype=np.float64)


def _first_finite(series: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str]) -> str | None:
    for key in keys:
        if any(np.isfinite(_column(records, key)).any() for records in series.values()):
            return key
    return None


def _split_steps(records: Sequence[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    """Task records by expansion step (a record without `step` is step 1)."""
    out: dict[int, list[Mapping[str, Any]]] = {}
    for record in records:
        out.setdefault(int(record.get("step", 1)), []).append(record)
    return dict(sorted(out.items()))


_STEP_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_quality_diversity(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    x: str | None = None,
    qualities: Sequence[str] | None = None,
    title: str = "Quality against diversity",
) -> Path:
    """Per task, mean quality of its samples against their diversity: one panel per quality metric, one colour per
    series (e.g. checkpoint), small dots = tasks, the large marker = the series' mean with 95% bootstrap CIs.

    `series[label]` are an evaluation's per-task records (`EvalResult.tasks`: `{"task_id", "step", metric:
    value}`); the records of several expansion steps keep their series' colour, get a marker per step (circle,
    square, triangle, ...) and a dashed line through their means in step order. `x` defaults to `diversity` (mean
    pairwise embedding distance), else `distinct_1`; `qualities` to the proxy reward (`reward/unnormalized` where
    recorded, else `reward`), `gold/aesthetic` and `gold/content` where recorded. Tasks with a NaN coordinate
    (e.g. no target scene for gold content) are left out of that panel.
    """
    from promptgym.experiments.stats import mean_ci

    if not isinstance(series, Mapping) or not series or not all(series.values()):
        raise ValueError(f"series={series!r:.80}; expected a non-empty mapping {{label: non-empty task records}}")
    x = x or _first_finite(series, DIVERSITY_KEYS)
    if x is None:
        raise ValueError(f"no task record has a finite {' or '.join(DIVERSITY_KEYS)}; diversity needs 2+ samples per "
                         "task")
    if qualities is None:
        qualities = [key for keys in QUALITY_KEYS if (key := _first_finite(series, keys)) is not None]
    if not qualities:
        raise ValueError("no quality metric to plot; pass qualities=[...] naming keys of the task records")
    fig, axes = plt.subplots(1, len(qualities), figsize=(4.8 * len(qualities), 4.2), squeeze=False,
                             layout="constrained")
    for ax, quality in zip(axes[0], qualities):
        for i, (label, records) in enumerate(series.items()):
            steps = _split_steps(records)
            means = []
            for step, step_records in steps.items():
                xs, ys = _column(step_records, x), _column(step_records, quality)
                keep = np.isfinite(xs) & np.isfinite(ys)
                if not keep.any():
                    continue
                color, marker = f"C{i % 10}", _STEP_MARKERS[(step - 1) % len(_STEP_MARKERS)]
                ax.scatter(xs[keep], ys[keep], color=color, marker=marker, s=16, alpha=0.4, linewidths=0)
                (mx, xl, xh), (my, yl, yh) = mean_ci(xs[keep]), mean_ci(ys[keep])
                name = label if len(steps) == 1 else f"{label}, step {step}"
                ax.errorbar([mx], [my], xerr=[[mx - xl], [xh - mx]], yerr=[[my - yl], [yh - my]], color=color,
                            marker=marker, markersize=9, markeredgecolor="black", markeredgewidth=0.7, capsize=3,
                            linewidth=1.2, zorder=3, label=f"{name} (mean, n={int(keep.sum())} tasks)")
                means.append((mx, my))
            if len(means) > 1:  # the expansion steps' means in order
                ax.plot(*np.array(means).T, color=f"C{i % 10}", linewidth=1.0, linestyle="--", zorder=2)
        ax.set_xlabel(_AXIS_LABELS.get(x, x), fontsize=8)
        ax.set_ylabel(_AXIS_LABELS.get(quality, quality), fontsize=9)
        ax.set_title(quality, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best", framealpha=0.85)
    fig.suptitle(f"{title}\ndots = tasks (mean over their samples), large = mean over tasks with 95% bootstrap CIs",
                 fontsize=9)
    return _save(fig, Path(path))
