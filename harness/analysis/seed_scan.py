"""`make seeds`: one learning rate, many seeds, trained at once and logged as one MLflow run.

Everything but the seed is fixed, so the spread of the curves is the effect of the
initialization alone. The run holds per-step percentiles across seeds, the per-seed table and
two figures: the fan of loss curves and the histogram of iterations_to_target.
"""

import csv
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from harness.core import config
from harness.trainers.batched import BatchResult, train_batch
from harness.core.config import ConfigError, TrainConfig
from harness.experiment import Workspace, run_params
from harness.tracking.tracker import Tracker
from harness.core.train import METRICS

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
    if not isinstance(table, dict):
        raise ConfigError("seeds: expected a table [seeds] with count and first")
    values.pop("sweep", None)  # a sweep file can be scanned too; its search space is ignored
    values.update(config.parse_override(o) for o in overrides)
    base = config.build(values)
    unknown = set(table) - {"count", "first"}
    if unknown:
        raise ConfigError(f"seeds.{sorted(unknown)[0]}: unknown key; allowed: count, first")
    count = table.get("count", 1000) if count is None else count
    first = table.get("first", 0)
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
    rows = []
    for k, seed in enumerate(scan.seeds):
        result = batch.result(k, scan.base.target_accuracy)
        rows.append({"seed": seed, "iterations_to_target": result.iterations_to_target,
                     "diverged": result.diverged, **{f"final_{m}": v for m, v in result.final.items()}})
    return rows


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
    ax.set_title(f"train loss of {scan.count} seeds at lr {scan.base.lr}")
    ax.legend()
    return fig


def histogram_figure(scan: SeedScan, reached: list[int]) -> Figure:
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    if reached:
        ax.hist(reached, bins=min(40, max(5, len(set(reached)))), color="tab:green")
    ax.set_xlabel(f"iterations to {scan.base.target_accuracy:.0%} train accuracy")
    ax.set_ylabel("seeds")
    ax.set_title(f"{len(reached)} of {scan.count} seeds reached the target")
    return fig


def run_scan(scan: SeedScan, tracker: Tracker) -> tuple[str, dict]:
    """Train every seed at once, log one run; returns its id and the summary numbers."""
    workspace = Workspace.for_config(scan.base)
    cfgs = [replace(scan.base, seed=seed) for seed in scan.seeds]
    name = scan.base.run_name or f"{scan.base.experiment}__{scan.count}seeds__{time.strftime('%Y%m%d-%H%M%S')}"
    params = {**run_params(scan.base, workspace.device), "seed": f"{scan.first}..{scan.first + scan.count - 1}",
              "seeds.count": scan.count, "seeds.first": scan.first}
    with tracker.run(scan.base.experiment, name, params=params, tags={"scan": "seeds"}) as logger:
        start = time.perf_counter()
        batch = train_batch(cfgs, workspace.data, workspace.device)
        train_seconds = time.perf_counter() - start

        bands = {m: percentiles(batch.history[m]) for m in METRICS}
        for step in range(batch.history["train_loss"].shape[0]):
            logger.log_metrics({f"{m}_{p}": bands[m][p][step] for m in METRICS for p in PERCENTILES
                                if np.isfinite(bands[m][p][step])}, step=step)

        rows = per_seed_rows(scan, batch)
        reached = [r["iterations_to_target"] for r in rows if r["iterations_to_target"] is not None]
        summary = {"reached": len(reached), "diverged": int(batch.diverged.sum()), "train_seconds": train_seconds,
                   **({f"iterations_to_target_{k}": v for k, v in spread(reached).items()} if reached else {})}
        logger.log_metrics(summary)
        logger.set_tags({"reached_target_seeds": len(reached), "trainer": batch.trainer})

        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "seeds.csv"
            with open(table, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            logger.log_artifact(table)
            # every seed's curves, for `make compare` (NaN past a seed's last step)
            np.savez_compressed(Path(tmp) / "histories.npz", seed=np.array(scan.seeds),
                                **{m: batch.history[m].astype(np.float32) for m in METRICS})
            logger.log_artifact(Path(tmp) / "histories.npz")
            for file_name, fig in (("loss_fan.png", fan_figure(scan, batch, bands["train_loss"])),
                                   ("iterations_to_target_hist.png", histogram_figure(scan, reached))):
                fig.savefig(Path(tmp) / file_name, bbox_inches="tight")
                logger.log_artifact(Path(tmp) / file_name, "figures")
    return logger.run_id, summary
