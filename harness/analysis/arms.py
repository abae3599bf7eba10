"""Seed scans side by side: arms, each a config trained over the same seeds.

A seed-scan file with `[[seeds.arm]]` tables compares configs: each arm is the file's top-level
keys plus its own, trained over the seeds of `[seeds]` as one batch. An arm's `lr` may be a list:
every lr of it is trained over the same seeds (one batch of seeds x lrs) and the arm is reported
at its best lr, the one at which the most seeds held the target (`best_lr`).

This module reads and checks such a file and measures what an arm's batch gave; arms_run.py
trains the arms and logs them (one parent run, a child run per arm), arms_report.py puts them
side by side (a table, three figures, report.md).
"""

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness.analysis import seed_scan
from harness.analysis.seed_scan import SeedScan
from harness.core import config
from harness.core.config import ConfigError, TrainConfig
from harness.trainers.batched import BatchResult

ARM_REFUSED = {  # keys an arm cannot set, and why
    "experiment": "every arm logs under the file's experiment; set it at the top of the file",
    "run_name": "the arms' runs are named by their labels; set run_name at the top of the file",
    "seed": "every arm trains the seeds of [seeds] (count and first)",
}


@dataclass
class Arm:
    label: str
    base: TrainConfig
    """the arm's config; its lr is the first of `lrs`"""
    lrs: list[float]
    """the learning rates trained over the seeds; the arm is reported at the best of them"""


@dataclass
class ArmScan:
    base: TrainConfig
    """the file's top-level keys (and --set): the experiment, the run name"""
    arms: list[Arm]
    count: int
    first: int

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first, self.first + self.count))


@dataclass
class LrOutcome:
    """One lr of an arm over all the seeds."""
    scan: SeedScan
    """the arm's config at this lr, and the seeds"""
    batch: BatchResult
    """this lr's models only"""
    rows: list[dict]
    """one per seed (seed_scan.per_seed_rows)"""
    summary: dict[str, float] = field(default_factory=dict)

    @property
    def lr(self) -> float:
        return self.scan.base.lr


@dataclass
class ArmResult:
    arm: Arm
    by_lr: list[LrOutcome]
    chosen: LrOutcome
    """the best lr's (`best_lr`)"""
    train_seconds: float
    median_seed: int
    """the seed in the middle when the seeds are ordered by iterations_to_target_held"""
    boundary: Image.Image | None
    """the median seed's decision boundary at its last step (None: it diverged at step 0)"""
    boundary_matches: bool
    """the median seed trained again gave the curve it has in the batch"""
    device: str = "cpu"
    """where it trained (the resolved device)"""
    run_id: str | None = None
    """its child run, once logged"""


def has_arms(values: dict[str, Any]) -> bool:
    """Whether a seed-scan file's values (config.read_toml) compare arms (`[[seeds.arm]]`)."""
    return isinstance(values.get("seeds"), dict) and "arm" in values["seeds"]


def load_arm(where: str, values: dict[str, Any], arm: Any, overrides: dict[str, Any]) -> Arm:
    """One `[[seeds.arm]]` table on top of the file's values; --set has the last word."""
    if not isinstance(arm, dict):
        raise ConfigError(f"{where}: expected a table with a label and config keys, got {arm!r}")
    arm = dict(arm)
    label = arm.pop("label", None)
    if not isinstance(label, str) or not label.strip():
        raise ConfigError(f"{where}.label: expected a non-empty name for the arm, got {label!r}")
    for key in arm:
        if key in ARM_REFUSED:
            raise ConfigError(f"{where}.{key}: not in an arm: {ARM_REFUSED[key]}")
    merged = {**values, **arm, **overrides}
    lr = merged.pop("lr", TrainConfig.lr)
    lrs = lr if isinstance(lr, list) else [lr]
    if not lrs:
        raise ConfigError(f"{where}.lr: expected a number or a non-empty list of numbers, got []")
    configs = []
    for value in lrs:
        try:
            configs.append(config.build({**merged, "lr": value}))
        except ConfigError as e:  # config's own message, placed in the arm
            raise ConfigError(f"{where}.{e}") from None
    lrs = [c.lr for c in configs]
    if len(set(lrs)) != len(lrs):
        raise ConfigError(f"{where}.lr: each learning rate once, got {lr!r}")
    return Arm(label.strip(), configs[0], lrs)


def load(source: str | Path | dict[str, Any], overrides: list[str] = (), count: int | None = None) -> ArmScan:
    """A seed-scan file with arms (or its values, as config.read_toml gives them), checked
    whole before anything runs: a bad key or value is a ConfigError naming it
    (`seeds.arm[2].lr: ...`; arms are counted from 1, in the file's order). `--set` overrides
    apply to every arm, after the arm's own keys."""
    values = copy.deepcopy(source) if isinstance(source, dict) else config.read_toml(source)
    table = values.pop("seeds", None)
    if not isinstance(table, dict):
        raise ConfigError("seeds: expected a table [seeds] with count, first and [[seeds.arm]] tables")
    values.pop("sweep", None)  # a sweep file can be scanned too; its search space is ignored
    unknown = set(table) - {"count", "first", "arm"}
    if unknown:
        raise ConfigError(f"seeds.{sorted(unknown)[0]}: unknown key; allowed: count, first, arm")
    set_values = dict(config.parse_override(o) for o in overrides)
    top = seed_scan.make({**values, **set_values}, {k: v for k, v in table.items() if k != "arm"}, count)
    tables = table.get("arm")
    if not isinstance(tables, list) or not tables:
        raise ConfigError("seeds.arm: expected one or more [[seeds.arm]] tables, each with a label "
                          f"and config keys, got {tables!r}")
    arms = [load_arm(f"seeds.arm[{i}]", values, arm, set_values) for i, arm in enumerate(tables, 1)]
    labels = [a.label for a in arms]
    for i, label in enumerate(labels, 1):
        if labels.index(label) != i - 1:
            raise ConfigError(f"seeds.arm[{i}].label: {label!r} names arm {labels.index(label) + 1} already; "
                              "each arm needs its own label")
    return ArmScan(top.base, arms, top.count, top.first)


def columns(batch: BatchResult, cols: slice) -> BatchResult:
    """Some models of a batch, as a batch of their own."""
    return BatchResult({m: h[:, cols] for m, h in batch.history.items()}, batch.last_step[cols],
                       batch.diverged[cols], batch.trainer)


def summarize(batch: BatchResult, rows: list[dict]) -> dict[str, float]:
    """What a seed scan's run holds once (seed_scan.run_scan), and the final train and
    validation accuracy across the seeds (p10, median, p90; NaN for a diverged seed's loss
    does not enter)."""
    summary = seed_scan.summarize(batch, rows)
    for metric in ("train_accuracy", "val_accuracy"):
        finals = np.array([r[f"final_{metric}"] for r in rows], dtype=float)
        finals = finals[np.isfinite(finals)]
        if len(finals):
            summary.update({f"final_{metric}_p10": np.percentile(finals, 10), f"final_{metric}_median": np.median(finals),
                            f"final_{metric}_p90": np.percentile(finals, 90)})
    return summary


def best_lr(outcomes: list[LrOutcome]) -> LrOutcome:
    """The lr at which the most seeds held the target; among equals, the lowest median
    iterations_to_target_held, then the highest median final train accuracy, then the lowest lr."""
    def rank(o: LrOutcome):
        s = o.summary
        return (-s["held"], s.get("iterations_to_target_held_median", math.inf),
                -s.get("final_train_accuracy_median", -math.inf), o.lr)
    return min(outcomes, key=rank)


def median_seed(rows: list[dict]) -> dict:
    """The seed in the middle (the lower middle of an even count) when the seeds are ordered by
    iterations_to_target_held, those that never held it last; ties by the higher final train
    accuracy, then the lower seed."""
    def order(r: dict):
        held = r["iterations_to_target_held"]
        accuracy = r["final_train_accuracy"]
        return (held is None, held or 0, -accuracy if math.isfinite(accuracy) else math.inf, r["seed"])
    return sorted(rows, key=order)[(len(rows) - 1) // 2]


def varying_keys(arms: list[Arm]) -> list[str]:
    """The config keys on which the arms differ (lr only where an arm has one lr)."""
    values = [{**config.flatten(a.base), "lr": str(a.lrs) if len(a.lrs) > 1 else str(a.lrs[0])} for a in arms]
    return [k for k in values[0] if k not in ("seed", "run_name") and len({v[k] for v in values}) > 1]


def status_text(i: int, scan: ArmScan, arm: Arm) -> str:
    lrs = f" x {len(arm.lrs)} learning rates" if len(arm.lrs) > 1 else ""
    return f"arm {i}/{len(scan.arms)} '{arm.label}': training {scan.count} seeds{lrs} together"


def run_label(scan: ArmScan) -> str:
    return scan.base.run_name or (f"{scan.base.experiment}__{len(scan.arms)}arms_{scan.count}seeds__"
                                  f"{time.strftime('%Y%m%d-%H%M%S')}")

