"""`make export`: a study's trials as a CSV file, one row per trial.

The columns: `number` and `state` from Optuna, one `params_<name>` column per parameter (named
and ordered as Optuna's `study.trials_dataframe()` names them), the final value of every metric
of `METRICS` and both iterations-to-target values from the trial's MLflow run, and the run's id.
A cell is empty where the trial has no such parameter, no run, or a run without that metric (a
network that never reached the target logs no iterations_to_target). The runs are read in one
search over the study's experiment, not one request per trial.
"""

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import optuna

from harness.core.config import ConfigError
from harness.core.train import CONVERGENCE, METRICS
from harness.study.storage import PARENT_RUN_ATTR, RUN_ID_ATTR
from harness.tracking.store_check import STUDY_TAG, local_path, present
from harness.tracking.tracker import Tracker

@dataclass
class Table:
    header: list[str]
    rows: list[list[object]]
    runs_missing: int
    """trials whose MLflow run is not in the tracking store (their metric cells are empty)"""


def check_out(out: Path) -> None:
    """Before anything is read: OUT is a .csv file's name (a forgotten OUT would otherwise make the
    experiment file the output). Its folder is made when missing."""
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"OUT: '{out}' is not a .csv file's name")
    if out.is_dir():
        raise ConfigError(f"OUT: '{out}' is a folder")


def tracker_for(uri: str) -> Tracker:
    """The tracking store holding the study's runs; a local one that is not there is not created."""
    path = local_path(uri)
    if path is not None and not present(path):
        raise ConfigError(f"MLFLOW_TRACKING_URI: {uri} does not exist, so it holds none of the study's runs "
                          "(set it to the store the sweep logged to)")
    return Tracker(uri)


def tag_filter(study_name: str) -> str:
    """MLflow's filter for the study's runs; MLflow's filters cannot quote a name that holds both
    kinds of quotes, so such a name gets none (the runs are matched by their tag afterwards)."""
    quote = next((q for q in ("'", '"') if q not in study_name), None)
    return f"tags.`{STUDY_TAG}` = {quote}{study_name}{quote}" if quote else ""


def study_experiment(study: optuna.Study, tracker: Tracker, run_ids: list[str]) -> str | None:
    """The study's MLflow experiment: its parent run's, else its first trial run's."""
    for run_id in (study.user_attrs.get(PARENT_RUN_ATTR), *run_ids[:1]):
        if run_id:
            if tracker.run_exists(run_id):  # else removed from the store (or in another store); other errors raise
                return tracker.get_run(run_id).info.experiment_id
    return None


def final_metrics(study: optuna.Study, tracker: Tracker, run_ids: list[str]) -> dict[str, dict[str, float]]:
    """run id -> the latest value of each of its metrics, for the study's runs."""
    experiment_id = study_experiment(study, tracker, run_ids)
    if experiment_id is None:
        return {}
    return {run.info.run_id: run.data.metrics for run in tracker.all_runs(experiment_id, tag_filter(study.study_name))
            if run.data.tags.get(STUDY_TAG) == study.study_name}


def count(value: float | None) -> int | str:
    """An iteration count as a whole number; nothing where the run did not log it."""
    return "" if value is None or not math.isfinite(value) else int(value)


def trial_table(study: optuna.Study, tracker: Tracker) -> Table:
    trials = study.get_trials(deepcopy=False)
    params = sorted({name for trial in trials for name in trial.params})
    run_ids = [trial.user_attrs.get(RUN_ID_ATTR) for trial in trials]
    metrics = final_metrics(study, tracker, [r for r in run_ids if r])
    header = ["number", "state", *(f"params_{name}" for name in params), *METRICS, *CONVERGENCE, "mlflow_run_id"]
    rows = []
    for trial, run_id in zip(trials, run_ids):
        logged = metrics.get(run_id, {})
        rows.append([trial.number, trial.state.name, *(trial.params.get(name, "") for name in params),
                     *(logged.get(name, "") for name in METRICS), *(count(logged.get(name)) for name in CONVERGENCE),
                     run_id or ""])
    return Table(header, rows, sum(1 for r in run_ids if r and r not in metrics))


def write_csv(table: Table, out: Path) -> None:
    """Write to a file beside OUT, then rename it: a Ctrl-C never leaves half a file at OUT."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"OUT: cannot make the folder {out.parent}: {e.strerror}") from None
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        with open(partial, "x", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(table.header)
            writer.writerows(table.rows)
        os.replace(partial, out)
    except OSError as e:
        raise ConfigError(f"OUT: cannot write {out}: {e.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)
