"""The figures of the comparison report: curves by band, the spread of iterations_to_target,
parameter importances, and the small-multiples grids of decision boundaries."""

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib import cm, colors
from matplotlib.figure import Figure
from PIL import Image

from harness.analysis.compare import Band, Comparison
from harness.analysis.report import band_name


MOST_CURVES = 150  # per panel: more lines only pile up; the p10-p90 band shows the rest


def held_colours(c: Comparison):
    """Colour by iterations_to_target_held: what differs between the curves, unlike the seed number."""
    held = [curve.iterations_to_target_held for b in c.bands for curve in b.curves
            if curve.iterations_to_target_held is not None]
    low, high = (min(held), max(held)) if held else (0, 1)
    return cm.ScalarMappable(norm=colors.Normalize(low, high if high > low else low + 1), cmap="viridis")


def curves_figure(c: Comparison) -> Figure:
    n = len(c.bands)
    fig = Figure(figsize=(4 * n + 1.5, 7), dpi=100, layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    mapper = held_colours(c)
    for j, band in enumerate(c.bands):
        order = sorted(band.curves, key=lambda cv: (cv.iterations_to_target_held is None,
                                                    cv.iterations_to_target_held or 0, cv.seed))
        shown = spaced(order, MOST_CURVES)
        many = len(shown) > 50
        for curve in reversed(shown):  # the fastest on top
            held = curve.iterations_to_target_held
            style = {"color": mapper.to_rgba(held) if held is not None else "lightgrey",
                     "alpha": 0.35 if many else 0.85, "linewidth": 0.6 if many else 1.2}
            axes[0, j].plot(curve.history["train_loss"], **style)
            axes[1, j].plot(curve.history["train_accuracy"], **style)
        if len(band.curves) >= 10:
            for row, metric in enumerate(("train_loss", "train_accuracy")):
                low, mid, high = percentile_curves(band, metric)
                axes[row, j].fill_between(np.arange(len(mid)), low, high, color="black", alpha=0.12, label="p10-p90")
                axes[row, j].plot(mid, color="black", linewidth=1.5, label="median")
        drawn = f"{len(shown)} of {len(band.curves)} networks drawn" if len(shown) < len(band.curves) else \
            f"{len(band.curves)} networks"
        axes[0, j].set_title(f"{band_name(c, band)}: {drawn}")
        axes[0, j].set_yscale("log")
        axes[1, j].axhline(c.target_accuracy, color="black", linestyle="--", linewidth=0.8)
        axes[1, j].set_xlabel("step (SGD updates)")
    axes[0, 0].set_ylabel("train_loss")
    axes[1, 0].set_ylabel("train_accuracy")
    banded = [j for j, band in enumerate(c.bands) if len(band.curves) >= 10]
    if banded:
        axes[0, banded[0]].legend(loc="upper right", fontsize=8)
    fig.colorbar(mapper, ax=axes, shrink=0.8,
                 label=f"iterations to {c.target_accuracy:.0%} train accuracy, held {c.hold_steps} steps (grey: never)")
    return fig


def percentile_curves(band: Band, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p10, median and p90 across the band's networks at each step (those still measuring)."""
    steps = max(len(curve.history[metric]) for curve in band.curves)
    stacked = np.full((steps, len(band.curves)), np.nan)
    for k, curve in enumerate(band.curves):
        stacked[:len(curve.history[metric]), k] = curve.history[metric]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step no network measured
        return tuple(np.nanpercentile(stacked, [10, 50, 90], axis=1))


def spread_figure(c: Comparison) -> Figure:
    fig = Figure(figsize=(max(5, 1.6 * len(c.bands) + 2), 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # jitter only
    for j, band in enumerate(c.bands):
        values = [curve.iterations_to_target_held for curve in band.curves if curve.iterations_to_target_held is not None]
        if values:
            ax.scatter(j + rng.uniform(-0.2, 0.2, len(values)), values, s=8, alpha=0.5, color="tab:blue")
        if band.iterations_to_target_held:
            s = band.iterations_to_target_held
            ax.plot([j - 0.3, j + 0.3], [s.median] * 2, color="tab:orange", linewidth=2.5, zorder=3)
            ax.vlines(j, s.p10, s.p90, color="tab:orange", linewidth=4, zorder=3)
    if not any(band.held for band in c.bands):
        ax.text(0.5, 0.5, "no network held the target", transform=ax.transAxes, ha="center", va="center")
    ax.set_xticks(range(len(c.bands)), [f"{band_name(c, b)}\n{b.held}/{len(b.curves)} held it" for b in c.bands])
    ax.set_ylabel(f"iterations to {c.target_accuracy:.0%} train accuracy,\nheld {c.hold_steps} steps")
    ax.set_title("spread across seeds\n(orange: median and p10-p90)")
    return fig


def importance_figure(c: Comparison) -> Figure | None:
    if isinstance(c.importances, str) or not any(c.importances.values()):
        return None
    params = sorted({p for values in c.importances.values() for p in values})
    fig = Figure(figsize=(6, 1 + 0.6 * len(params)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / len(c.importances)
    for i, (evaluator, values) in enumerate(c.importances.items()):
        ax.barh(np.arange(len(params)) + i * height, [values.get(p, 0.0) for p in params], height, label=evaluator)
    ax.set_yticks(np.arange(len(params)) + height * (len(c.importances) - 1) / 2, params)
    ax.set_xlabel(f"importance for {c.objective or 'the objective'}")
    ax.legend()
    return fig


def grid_figure(tiles: list[tuple[str, Image.Image | None]], title: str) -> Figure:
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    fig = Figure(figsize=(3 * cols, 3.2 * rows + 0.4), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, image) in zip(axes.flat, tiles):
        if image is None:
            ax.text(0.5, 0.5, "no image\nat this step", ha="center", va="center")
        else:
            ax.imshow(image.convert("RGB"))
        ax.set_title(label, fontsize=9)
    fig.suptitle(title)
    return fig


def spaced(items: list, most: int) -> list:
    """At most `most` items, evenly spaced, first and last included."""
    if len(items) <= most:
        return items
    return [items[round(i * (len(items) - 1) / (most - 1))] for i in range(most)] if most > 1 else items[:1]


def study_grids(c: Comparison, tracker, tmp: Path) -> list[tuple[str, Figure]]:
    """For each band with two or more trials: their logged boundaries side by side, every band
    at the same step (so that the grids compare)."""
    shown = {j: spaced([curve for curve in band.curves if curve.images], c.options.max_tiles)
             for j, band in enumerate(c.bands)}
    shown = {j: curves for j, curves in shown.items() if len(curves) >= 2}
    step = c.options.step
    if step is None and shown:  # the last step every finished trial shown has an image for
        every = [curve for curves in shown.values() for curve in curves]
        finished = [curve for curve in every if curve.finished] or every
        step = max(set.intersection(*(set(curve.images) for curve in finished)), default=None)
    if step is None:
        return []
    grids = []
    for j, curves in shown.items():
        band, tiles = c.bands[j], []
        for curve in curves:
            path = curve.images.get(step)
            image = Image.open(tracker.download(curve.run_id, path, tmp)) if path else None
            tiles.append((f"seed {curve.seed} (lr {curve.lr:.3g}, {curve.label})", image))
        grids.append((f"boundaries_lr{band.low:.3g}-{band.high:.3g}_step{step}.png",
                      grid_figure(tiles, f"decision boundary at step {step}, lr {band.label}, one tile per seed")))
    return grids


def scan_grid(c: Comparison) -> tuple[tuple[str, Figure] | None, str]:
    """The scan logs no per-seed images: retrain the shown seeds (training is deterministic)
    up to the step and render them; the retrained curves are checked against the logged ones."""
    from harness.trainers.batched import train_batch
    from harness.render.boundary import title_text
    from harness.experiment import Workspace

    band = c.bands[0]
    order = sorted(band.curves, key=lambda cv: (cv.iterations_to_target_held is None,
                                                cv.iterations_to_target_held or 0, cv.seed))
    shown = spaced(order, c.options.max_tiles)
    finished = [curve for curve in shown if curve.finished] or shown
    step = min(curve.last_step for curve in finished) if c.options.step is None else c.options.step
    workspace = Workspace.for_config(c.base)
    # whichever trainer the scan named: this one draws, on this machine (the curves are checked below)
    cfgs = [replace(c.base, seed=curve.seed, iterations=max(step, 1), plot_every=max(step, 1), trainer="auto")
            for curve in shown]
    images: dict[int, Image.Image] = {}

    def draw(at, params, models, metrics):
        if at == step:
            regions = workspace.renderer.predict_regions_batched(params, models, c.base.activation)
            for j, m in enumerate(models.tolist()):
                images[m] = workspace.renderer.compose(regions[j], title_text(at, float(metrics[0, j]), float(metrics[1, j])))

    batch = train_batch(cfgs, workspace.data, workspace.device, draw)
    logged = np.stack([curve.history["train_loss"][:step + 1] for curve in shown], axis=1)
    again = batch.history["train_loss"][:step + 1]
    difference = float(np.nanmax(np.abs(again - logged) / np.maximum(np.abs(logged), 1e-12)))
    check = (f"retrained curves match the logged ones (max relative difference {difference:.1e})" if difference <= 1e-4
             else f"warning: retrained curves differ from the logged ones by up to {difference:.1e} "
                  "(another torch version or device?); the boundaries are indicative")
    tiles = [(f"seed {curve.seed}: " + (f"held the target from step {curve.iterations_to_target_held}"
                                        if curve.iterations_to_target_held is not None else "never held the target"),
              images.get(k)) for k, curve in enumerate(shown)]
    title = f"decision boundary at step {step}, lr {c.base.lr:g}, seeds from fastest to slowest"
    return (f"boundaries_step{step}.png", grid_figure(tiles, title)), check
