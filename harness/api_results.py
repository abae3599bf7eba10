"""What the Python API's functions return (harness/api.py): small dataclasses over the curves,
the iterations-to-target figures and the MLflow run ids. Nothing heavy is imported here, so
that `import harness` stays quick for the command line."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.config import TrainConfig


@dataclass
class TrainRun:
    """One trained network (`train`)."""
    config: TrainConfig
    history: dict[str, list[float]]
    """every metric (train_loss, train_accuracy, val_loss, val_accuracy) at steps 0..last_step"""
    iterations_to_target: int | None
    """the first step whose train_accuracy reached target_accuracy; None if none did"""
    iterations_to_target_held: int | None
    """the first step from which it stayed there for hold_steps steps; None if none did"""
    diverged: bool
    """the loss became non-finite at last_step, where training stopped"""
    boundaries: dict[int, Any]
    """step -> the decision-boundary image (a PIL image) at steps 0, plot_every, ... and the
    last; empty where a kernel trainer trained (its images are in MLflow only) or boundaries=False"""
    trainer: str
    """the trainer that ran: torch (the lecture's loop), fused_cpu or triton"""
    device: str
    run_id: str | None = None
    """the MLflow run; None without tracking"""
    link: str | None = None
    """the run's page in the MLflow UI (`make ui` serves a local store's); None without tracking"""

    @classmethod
    def of(cls, cfg: TrainConfig, result, images: dict, trainer: str, device, run_id: str | None,
           link: str | None) -> "TrainRun":
        """From a harness.core.train.TrainResult."""
        return cls(cfg, result.history, result.iterations_to_target, result.iterations_to_target_held,
                   result.diverged, images, trainer, str(device), run_id, link)

    @property
    def last_step(self) -> int:
        return len(self.history["train_loss"]) - 1

    @property
    def final(self) -> dict[str, float]:
        """Each metric at the last step."""
        return {name: values[-1] for name, values in self.history.items()}


@dataclass
class SeedScanResult:
    """Many seeds trained at once, everything else fixed (`seed_scan`)."""
    config: TrainConfig
    """everything but the seed (its `seed` is not used)"""
    seeds: list[int]
    table: Any
    """a pandas DataFrame, one row per seed: seed, iterations_to_target, iterations_to_target_held
    (integers, <NA> where not reached), diverged, final_<metric> for each metric"""
    history: dict[str, Any]
    """metric -> numpy array (steps, seeds); NaN past a seed's last step (it diverged)"""
    summary: dict[str, float]
    """reached, held, diverged (counts of seeds); <iterations_to_target(_held)>_min, _p10,
    _median, _p90, _max; train_seconds"""
    trainer: str
    """the trainer that trained the seeds together: fused_cpu, triton or torch"""
    run_id: str | None = None
    """the scan's one MLflow run; None without tracking"""
    link: str | None = None

    @classmethod
    def of(cls, scan, trained, run_id: str | None, link: str | None) -> "SeedScanResult":
        """From a harness.analysis.seed_scan.SeedScan and its TrainedScan."""
        import pandas as pd

        table = pd.DataFrame(trained.rows).astype({"iterations_to_target": "Int64", "iterations_to_target_held": "Int64"})
        return cls(scan.base, scan.seeds, table, dict(trained.batch.history), trained.summary,
                   trained.batch.trainer, run_id, link)


@dataclass
class SweepResult:
    """An Optuna study after a sweep (`sweep`)."""
    study_name: str
    objectives: list[str]
    directions: list[str]
    """minimize or maximize, one per objective"""
    counts: dict[str, int]
    """trials in each state: COMPLETE, PRUNED, FAIL, RUNNING, WAITING"""
    best: list[Any]
    """the best trials (Optuna FrozenTrials): the top 5 by value, or the Pareto front"""
    curves: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    """trial number -> its history, as TrainRun.history: for a sweep without tracking (with
    tracking the curves are in each trial's run)"""
    run_id: str | None = None
    """the study's parent MLflow run; None without tracking"""
    link: str | None = None
    summary: Any = None
    """what `make sweep` prints from (harness.study.summary.SweepSummary); None without tracking"""
    storage: str | None = None
    """the Optuna storage the study is in; None: in memory (`study`)"""
    in_memory: Any = field(default=None, repr=False)

    @property
    def best_params(self) -> dict[str, Any]:
        """The best trial's parameters (the first of the Pareto front with several objectives)."""
        return dict(self.best[0].params) if self.best else {}

    @property
    def best_values(self) -> list[float]:
        """The best trial's objective values, one per objective."""
        return list(self.best[0].values) if self.best else []

    @property
    def study(self):
        """The optuna.Study, read from its storage with tracking (nothing is created)."""
        if self.in_memory is None:
            from harness.study.storage import read_study

            self.in_memory = read_study(self.study_name, self.storage)
        return self.in_memory

    @classmethod
    def of_summary(cls, summary, storage: str) -> "SweepResult":
        """From what run_sweep returns."""
        return cls(summary.study_name, summary.objectives, summary.directions, summary.counts, summary.best,
                   run_id=summary.parent_run_id, link=summary.run_link, summary=summary, storage=storage)

    @classmethod
    def of_study(cls, study, objectives: list[str], curves: dict) -> "SweepResult":
        """From a study in memory and its trials' curves."""
        from harness.study.summary import STATES, best_trials

        trials = study.get_trials(deepcopy=False)
        counts = {s: sum(1 for t in trials if t.state.name == s) for s in STATES}
        return cls(study.study_name, objectives, [d.name.lower() for d in study.directions], counts,
                   best_trials(study), curves, in_memory=study)


@dataclass
class CompareResult:
    """The report of `compare`."""
    comparison: Any
    """the numbers (harness.analysis.compare.Comparison): learning-rate bands, their spreads"""
    report: Path
    """the report's HTML file (report.md and the figures beside it)"""
    notes: list[str]
    """what the command prints under the table (a scan's retrained boundaries checked)"""
    logged: str | None
    """the report's artifact folder in the run; None where the store is read-only"""
    gifs: tuple[int, int] | None
    """for a study: trial runs given a boundary.gif now, and those that had one"""
    run_id: str
    """the run the report is logged to: the study's parent run, or the scan's run"""
    link: str
