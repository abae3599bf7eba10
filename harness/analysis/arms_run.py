"""A seed scan with arms, trained and logged: `run_arms`.

Each arm trains as one batch (its seeds x its learning rates), then its median seed at its best
lr once more, alone, for the decision boundary. MLflow gets one parent run for the file (tag
`scan = arms`, the report under `report/`) and one child run per arm, laid out as `make seeds`
lays out a scan (tag `scan = seeds`: per-step percentiles, `seeds.csv`, `histories.npz`), so
`make compare RUN=<child run id>` reports on one arm.
"""

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from harness.analysis import arms_report
from harness.analysis.arms import (Arm, ArmResult, ArmScan, LrOutcome, best_lr, columns, median_seed, run_label,
                                   status_text, summarize, varying_keys)
from harness.analysis.seed_scan import SeedScan, histogram_figure, log_percentiles, per_seed_rows, save_histories
from harness.core.config import ConfigError, flatten
from harness.experiment import run_params
from harness.core.train import METRICS
from harness.progress import Quiet, Status
from harness.tracking.tracker import RunLogger, Tracker


@dataclass
class ArmsOutcome:
    run_id: str | None
    """the parent run (None: not tracked)"""
    table: list[dict]
    """one row per arm (arms_report.table)"""
    folder: Path
    """the report: report.md, report.html, arms.csv, lrs.csv and the figures"""
    arms: list[ArmResult]


def train_arm(arm: Arm, scan: ArmScan, workspace) -> ArmResult:
    """Every lr of the arm over every seed as one batch; then the median seed at the best lr
    trained again, alone, for its final decision boundary. Alone it goes through the same
    trainer as in the batch (experiment.train_together), so the boundary is the one of the
    network whose numbers the table gives: on the CPU, the C kernel's, step for step."""
    from harness.experiment import draw, train_together
    from harness.trainers.batched import train_batch

    cfgs = [replace(arm.base, lr=lr, seed=seed) for lr in arm.lrs for seed in scan.seeds]
    start = time.perf_counter()
    batch = train_batch(cfgs, workspace.data, workspace.device)
    train_seconds = time.perf_counter() - start
    by_lr = []
    for j, lr in enumerate(arm.lrs):
        lr_scan = SeedScan(replace(arm.base, lr=lr, seed=scan.first), scan.count, scan.first)
        part = columns(batch, slice(j * scan.count, (j + 1) * scan.count))
        rows = per_seed_rows(lr_scan, part)
        by_lr.append(LrOutcome(lr_scan, part, rows, summarize(part, rows)))
    chosen = best_lr(by_lr)

    middle = median_seed(chosen.rows)
    k = chosen.scan.seeds.index(middle["seed"])
    cfg = replace(chosen.scan.base, seed=middle["seed"], plot_every=chosen.scan.base.iterations)  # step 0 and the last
    alone, drawn = train_together([cfg], workspace)
    images = draw(workspace, drawn[0], cfg.activation)
    matches = all(np.allclose(alone.history[m][:, 0], chosen.batch.history[m][:, k], rtol=1e-5, atol=1e-5, equal_nan=True)
                  for m in METRICS)
    return ArmResult(arm, by_lr, chosen, train_seconds, middle["seed"], images[-1][1] if images else None, matches,
                     str(workspace.device))


def train_arms(scan: ArmScan, status: Status | None = None) -> list[ArmResult]:
    """Each arm in turn, in its own workspace (arms may differ in their data or device). Every
    arm's trainer is checked first: a config no trainer covers stops before anything trains."""
    from harness.core.runtime import resolve_device
    from harness.experiment import Workspace
    from harness.trainers.registry import choose

    status = status or Quiet()
    for i, arm in enumerate(scan.arms, 1):
        try:
            choose([replace(arm.base, lr=lr) for lr in arm.lrs], resolve_device(arm.base.device), drawing=False)
        except ConfigError as e:
            raise ConfigError(f"seeds.arm[{i}].{e}") from None
    results, workspace = [], None
    for i, arm in enumerate(scan.arms, 1):
        status.set(status_text(i, scan, arm))
        workspace = Workspace.for_config(arm.base, reuse=workspace)
        results.append(train_arm(arm, scan, workspace))
    return results


def seed_params(scan: ArmScan) -> dict[str, object]:
    return {"seed": f"{scan.first}..{scan.first + scan.count - 1}", "seeds.count": scan.count, "seeds.first": scan.first}


def parent_params(scan: ArmScan) -> dict[str, object]:
    """The keys every arm shares, what varies between them, and the seeds."""
    varies = varying_keys(scan.arms)
    shared = {k: v for k, v in flatten(scan.arms[0].base).items() if k not in varies and k != "seed"}
    return {**shared, **seed_params(scan), "arms": ", ".join(a.label for a in scan.arms),
            "arms.vary": ", ".join(varies) or "nothing"}


def log_arm(result: ArmResult, scan: ArmScan, logger: RunLogger) -> None:
    """An arm's child run, as `make seeds` logs a scan, at the arm's best lr; `lrs.csv` has every lr."""
    chosen = result.chosen
    log_percentiles(logger, chosen.batch)
    logger.log_metrics({**chosen.summary, "train_seconds": result.train_seconds})
    logger.set_tags({"reached_target_seeds": chosen.summary["reached"], "held_target_seeds": chosen.summary["held"],
                     "mlflow.note.content": arms_report.arm_description(result, scan)})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        logger.log_artifact(arms_report.write_csv(tmp / "seeds.csv", chosen.rows))
        logger.log_artifact(arms_report.write_csv(tmp / "lrs.csv", arms_report.lr_rows(result)))
        logger.log_artifact(save_histories(tmp / "histories.npz", scan.seeds, chosen.batch))
        histogram_figure(chosen.scan, chosen.rows).savefig(tmp / "iterations_to_target_histogram.png", bbox_inches="tight")
        logger.log_artifact(tmp / "iterations_to_target_histogram.png", "figures")
        if result.boundary is not None:
            result.boundary.save(tmp / "boundary_median_seed.png")
            logger.log_artifact(tmp / "boundary_median_seed.png", "figures")


def run_arms(scan: ArmScan, tracker: Tracker | None, status: Status | None = None,
             out: str | Path | None = None) -> ArmsOutcome:
    """Train every arm, log the parent run and a child run per arm (none with `tracker=None`),
    and write the report into `out` (default: mlruns/reports/<the parent run's name>/), logged
    to the parent run under `report/`. Runs end FINISHED, or FAILED (KILLED on Ctrl-C)."""
    status = status or Quiet()
    results = train_arms(scan, status)
    name = run_label(scan)
    folder = Path(out) if out else arms_report.default_folder(tracker, name)
    if tracker is None:
        status.set("writing the report")
        arms_report.write(scan, results, folder, None)
        return ArmsOutcome(None, arms_report.table(results), folder, results)

    with tracker.run(scan.base.experiment, name, params=parent_params(scan), tags={"scan": "arms"}) as parent:
        for result in results:
            status.set(f"logging arm '{result.arm.label}'")
            cfg = result.chosen.scan.base
            params = {**run_params(cfg, result.device), **seed_params(scan), "arm": result.arm.label,
                      "arm.lrs": ", ".join(f"{lr:g}" for lr in result.arm.lrs)}
            with tracker.run(scan.base.experiment, result.arm.label, params=params, parent_run_id=parent.run_id,
                             tags={"scan": "seeds", "arm": result.arm.label, "trainer": result.chosen.batch.trainer}) as child:
                log_arm(result, scan, child)
            result.run_id = child.run_id
        status.set("writing the report")
        files = arms_report.write(scan, results, folder, parent.run_id)
        for path in files:
            parent.log_artifact(path, "report")
            if path.suffix == ".png":  # also as a step image: the run's Model metrics tab shows it first
                parent.log_image(Image.open(path).convert("RGB"), key=path.stem, step=0)
        parent.set_tags({"trainer": ", ".join(sorted({r.chosen.batch.trainer for r in results})),
                         "mlflow.note.content": arms_report.description(scan, results, parent.run_id)})
    return ArmsOutcome(parent.run_id, arms_report.table(results), folder, results)
