"""`make seeds`: one learning rate, many seeds, trained at once and logged as one MLflow run.

Everything but the seed is fixed, so the spread of the curves is the effect of the
initialization alone. The run holds per-step percentiles across seeds, the per-seed table and
two figures (the fan of loss curves, the histogram of both iterations-to-target values), also
logged as step images so that the run's Model metrics tab shows them.
"""

import csv
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from harness.core import config
from harness.trainers.batched import BatchResult, train_batch
from harness.core.config import ConfigError, TrainConfig, target_text
from harness.experiment import Workspace, run_params
from harness.progress import Quiet, Status
from harness.tracking.tracker import Tracker
from harness.core.train import CONVERGENCE, METRICS, steps_to_target

PERCENTILES = {"p10": 10, "median": 50, "p90": 90}


@dataclass
class SeedScan:
    base: TrainConfig
    """everything but the seed"""
    count: int
    """how many seeds"""
    first: int
    """the seeds are first, first + 1, ..., first + count - 1"""

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first, self.first + self.count))


def load(path: str | Path | None, overrides: list[str] = (), count: int | None = None) -> SeedScan:
    values = config.read_toml(path) if path else {}
    table = values.pop("seeds", {})
    values.pop("sweep", None)  # a sweep file can be scanned too; its search space is ignored
    values.update(config.parse_override(o) for o in overrides)
    return make(values, table, count)


def make(keys: dict, table: object = None, count: int | None = None, first: int | None = None) -> SeedScan:
    """The scan of the config `keys` build, over the seeds its [seeds] `table` names; `count` and
    `first`, where given, take the table's place."""
    table = {} if table is None else table
    if not isinstance(table, dict):
        raise ConfigError("seeds: expected a table [seeds] with count and first")
    base = config.build(keys)
    unknown = set(table) - {"count", "first"}
    if unknown:
        raise ConfigError(f"seeds.{sorted(unknown)[0]}: unknown key; allowed: count, first")
    count = table.get("count", 1000) if count is None else count
    first = table.get("first", 0) if first is None else first
    for key, value, low in (("count", count, 1), ("first", first, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"seeds.{key}: must be an integer >= {low}, got {value!r}")
    return SeedScan(base, count, first)


def percentiles(history: np.ndarray) -> dict[str, np.ndarray]:
    """Per-step percentiles across the seeds still measuring at that step."""
    with np.errstate(all="ignore"):
        finite = np.where(np.isfinite(history), history, np.nan)
        return {name: np.nanpercentile(finite, q, axis=1) for name, q in PERCENTILES.items()}


def per_seed_rows(scan: SeedScan, batch: BatchResult) -> list[dict]:
    first, held = steps_to_target(batch.history["train_accuracy"], scan.base)
    last = batch.last_step.astype(int)
    finals = {m: batch.history[m][last, np.arange(scan.count)] for m in METRICS}
    return [{"seed": seed, "iterations_to_target": first[k], "iterations_to_target_held": held[k],
             "diverged": bool(batch.diverged[k]), **{f"final_{m}": float(finals[m][k]) for m in METRICS}}
            for k, seed in enumerate(scan.seeds)]


def spread(values: list[int]) -> dict[str, float]:
    array = np.array(values, dtype=float)
    return {"min": array.min(), "p10": np.percentile(array, 10), "median": np.median(array),
            "p90": np.percentile(array, 90), "max": array.max()}


def fan_figure(scan: SeedScan, batch: BatchResult, bands: dict[str, np.ndarray]) -> Figure:
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    steps = np.arange(batch.history["train_loss"].shape[0])
    shown = batch.history["train_loss"][:, : min(scan.count, 300)]  # enough lines to see the fan
    ax.plot(steps, shown, color="tab:blue", alpha=0.08, linewidth=0.6)
    ax.fill_between(steps, bands["p10"], bands["p90"], color="tab:orange", alpha=0.25, label="p10-p90")
    ax.plot(steps, bands["median"], color="tab:orange", linewidth=2, label="median")
    ax.set_yscale("log")
    ax.set_xlabel("step (SGD updates)")
    ax.set_ylabel("train_loss")
    ax.set_title(f"train loss of {scan.count} seeds at lr {scan.base.lr:g}"
                 + (f" ({shown.shape[1]} drawn, p10-p90 of all)" if shown.shape[1] < scan.count else ""))
    ax.legend()
    return fig


def histogram_figure(scan: SeedScan, rows: list[dict]) -> Figure:
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    held = [r["iterations_to_target_held"] for r in rows if r["iterations_to_target_held"] is not None]
    first = [r["iterations_to_target"] for r in rows if r["iterations_to_target"] is not None]
    bins = np.histogram_bin_edges(first + held or [0], bins=min(40, max(5, len(set(first + held)))))
    if first:
        ax.hist(first, bins=bins, color="tab:green", alpha=0.45, label="first reached")
    if held:
        ax.hist(held, bins=bins, histtype="step", color="black", linewidth=1.5,
                label=f"held {scan.base.hold_steps} steps")
    if first or held:
        ax.legend()
    ax.set_xlabel(f"iterations to {target_text(scan.base)}")
    ax.set_ylabel("seeds")
    ax.set_title(f"{len(held)} of {scan.count} seeds held the target, {len(first)} reached it, at lr {scan.base.lr:g}")
    return fig


def description(scan: SeedScan, summary: dict) -> str:
    """The run's description (the `mlflow.note.content` tag, shown in Markdown on the run's
    Overview page, where its link opens): what it is and where its figures are."""
    base = scan.base
    return (f"**{scan.count} seeds at lr {base.lr:g}**, everything else fixed: the spread is the initialization's "
            f"alone. {summary['held']} of {scan.count} seeds reached {target_text(base)} and held it for "
            f"{base.hold_steps} steps; "
            f"{summary['reached']} reached it at least once.\n\n"
            "- **Model metrics**: the image cards `loss_fan` (the train loss of up to 300 seeds, and p10-p90 of all) and "
            "`iterations_to_target_histogram`; the charts `<metric>_p10`, `_median`, `_p90` across seeds at each step.\n"
            "- **Artifacts**: `figures/` (the same two figures), `seeds.csv` (one row per seed) and `histories.npz` "
            "(every seed's curves, which `make compare` reads).")


@dataclass
class TrainedScan:
    """Every seed trained: the curves, one row per seed, the spread across seeds."""
    batch: BatchResult
    rows: list[dict]
    """per_seed_rows"""
    summary: dict
    """how many seeds reached and held the target, diverged; each spread (`spread`); train_seconds"""


def train_scan(scan: SeedScan, workspace: Workspace) -> TrainedScan:
    """Train every seed at once and measure them; nothing is logged (`tracked_scan` logs it)."""
    cfgs = [replace(scan.base, seed=seed) for seed in scan.seeds]
    start = time.perf_counter()
    batch = train_batch(cfgs, workspace.data, workspace.device)
    train_seconds = time.perf_counter() - start
    rows = per_seed_rows(scan, batch)
    return TrainedScan(batch, rows, {**summarize(batch, rows), "train_seconds": train_seconds})


def summarize(batch: BatchResult, rows: list[dict]) -> dict:
    """How many seeds diverged, reached and held the target, and the spread of each
    iterations-to-target value across the seeds that have one."""
    summary = {"diverged": int(batch.diverged.sum())}
    for name, count in zip(CONVERGENCE, ("reached", "held")):
        values = [r[name] for r in rows if r[name] is not None]
        summary[count] = len(values)
        summary.update({f"{name}_{k}": v for k, v in spread(values).items()} if values else {})
    return summary


def log_percentiles(logger, batch: BatchResult) -> None:
    """Each metric's p10, median and p90 across the seeds, at every step (`<metric>_<p>`)."""
    bands = {m: percentiles(batch.history[m]) for m in METRICS}
    for step in range(batch.history["train_loss"].shape[0]):
        logger.log_metrics({f"{m}_{p}": bands[m][p][step] for m in METRICS for p in PERCENTILES
                            if np.isfinite(bands[m][p][step])}, step=step)


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Rows of the same keys as a CSV table with a header (seeds.csv: `per_seed_rows`)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_histories(path: Path, seeds: list[int], batch: BatchResult) -> Path:
    """Every seed's curves, for `make compare` (NaN past a seed's last step)."""
    np.savez_compressed(path, seed=np.array(seeds), **{m: batch.history[m].astype(np.float32) for m in METRICS})
    return path


def run_scan(scan: SeedScan, tracker: Tracker, status: Status | None = None) -> tuple[str, dict]:
    """Train every seed at once, log one run; returns its id and the summary numbers. `status`
    is told each phase (harness/progress.py)."""
    run_id, trained = tracked_scan(scan, tracker, status)
    return run_id, trained.summary


def tracked_scan(scan: SeedScan, tracker: Tracker, status: Status | None = None,
                 workspace: Workspace | None = None) -> tuple[str, TrainedScan]:
    """`run_scan`, returning everything trained: the run's id and the `TrainedScan`."""
    status = status or Quiet()
    workspace = workspace or Workspace.for_config(scan.base)
    name = scan.base.run_name or f"{scan.base.experiment}__{scan.count}seeds__{time.strftime('%Y%m%d-%H%M%S')}"
    params = {**run_params(scan.base, workspace.device), "seed": f"{scan.first}..{scan.first + scan.count - 1}",
              "seeds.count": scan.count, "seeds.first": scan.first}
    with tracker.run(scan.base.experiment, name, params=params, tags={"scan": "seeds"}) as logger:
        trained = train_scan(scan, workspace)
        batch, rows, summary = trained.batch, trained.rows, trained.summary

        status.set(f"logging the curves of {scan.count} seeds")
        log_percentiles(logger, batch)

        logger.log_metrics(summary)
        logger.set_tags({"reached_target_seeds": summary["reached"], "held_target_seeds": summary["held"],
                         "trainer": batch.trainer, "mlflow.note.content": description(scan, summary)})

        status.set("writing the per-seed table and the figures")
        with tempfile.TemporaryDirectory() as tmp:
            logger.log_artifact(write_csv(Path(tmp) / "seeds.csv", rows))
            logger.log_artifact(save_histories(Path(tmp) / "histories.npz", scan.seeds, batch))
            for name, fig in (("loss_fan", fan_figure(scan, batch, percentiles(batch.history["train_loss"]))),
                              ("iterations_to_target_histogram", histogram_figure(scan, rows))):
                fig.savefig(Path(tmp) / f"{name}.png", bbox_inches="tight")
                logger.log_artifact(Path(tmp) / f"{name}.png", "figures")
                # also as a step image: the run's Model metrics tab shows it first, beside its charts
                logger.log_image(Image.open(Path(tmp) / f"{name}.png").convert("RGB"), key=name, step=0)
    return logger.run_id, trained
