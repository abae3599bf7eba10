"""A sweep's trial: an Optuna trial and a nested MLflow run.

The objective is Optuna's usual shape: suggest the parameters, train, report intermediate
values, return one number (or one per objective). `Job` is what a worker runs by; `tell` and
`fail` end a trial on both sides. The worker loop is harness/study/worker.py.
"""

import os
import socket
import sys
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from harness.study import storage as study_storage
from harness.core.config import TrainConfig
from harness.errors import ServiceError
from harness.experiment import RunSpec, Workspace, run_training
from harness.study.config import Sweep, SweepConfig
from harness.tracking.store_check import store_fault
from harness.study.optuna_fast import record_trial
from harness.study.storage import FAILURE_ATTR, RUN_ID_ATTR
from harness.tracking.tracker import Tracker
from harness.core.train import CONVERGENCE, Callbacks, TrainResult


def objective_values(sweep: Sweep, result: TrainResult) -> list[float]:
    """One number per objective; an unreached target counts as one step past the longest run."""
    values = []
    for name in sweep.settings.objectives:
        if name in CONVERGENCE:
            reached = getattr(result, name)
            values.append(float(reached if reached is not None else sweep.max_iterations + 1))
        else:
            values.append(result.final[name])
    return values


class ReportToTrial(Callbacks):
    """Report the objective every `every` steps; ask to stop when the pruner says so.

    With no pruner to ask (`deferred`), the values are kept in `values` and written with the
    trial's other records in one transaction when it is told (`optuna_fast.record_trial`)."""

    def __init__(self, trial: optuna.Trial, metric: str | None, every: int, deferred: bool = False):
        self.trial, self.metric, self.every, self.deferred = trial, metric, every, deferred
        self.values: dict[int, float] = {}

    @classmethod
    def for_job(cls, trial: optuna.Trial, job: "Job", cfg: TrainConfig) -> "ReportToTrial":
        settings = job.sweep.settings
        return cls(trial, intermediate_metric(settings), cfg.plot_every, deferred=settings.pruner == "none")

    def on_step(self, step: int, metrics: dict[str, float]) -> bool:
        if self.metric is None or step % self.every or step == 0:
            return False
        if self.deferred:
            self.values.setdefault(step, metrics[self.metric])  # as trial.report: the first value stands
            return False
        self.trial.report(metrics[self.metric], step)
        return self.trial.should_prune()


def intermediate_metric(settings: SweepConfig) -> str | None:
    """What the trial reports along the way: the objective, or val_loss; None when multi-objective."""
    if len(settings.objectives) > 1:
        return None
    return settings.objective if settings.objective not in CONVERGENCE else "val_loss"


@dataclass
class Job:
    """Everything a worker needs; picklable, so worker processes get the same job."""
    sweep: Sweep
    study_name: str
    storage_url: str
    tracking_uri: str
    parent_run_id: str
    budget: study_storage.Budget
    sampler_seed: int
    wait_for_others: bool = False
    """with a total budget: stay until no trial runs anywhere, to retry those of workers that die"""
    workers: int = 1
    """worker processes on this machine sharing the study: the budget's last batches are split between them"""


def state_of(result: TrainResult) -> str:
    return "PRUNED" if result.diverged or result.stopped_early else "COMPLETE"


def tell(trial: optuna.Trial, job: Job, result: TrainResult, reports: dict[int, float]) -> None:
    """`reports`: the intermediate values not yet written (ReportToTrial's `values`)."""
    # skip_if_finished: a trial whose heartbeats stalled may have been failed (and retried)
    # by another worker meanwhile; its retry stands, this result is dropped
    pruned = state_of(result) == "PRUNED"
    attrs = {"diverged": result.diverged} if pruned else {"reached_target": result.iterations_to_target is not None}
    try:
        record_trial(trial, reports, attrs)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    if pruned:
        trial.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        trial.study.tell(trial, objective_values(job.sweep, result), skip_if_finished=True)


def fail(trial: optuna.Trial, tracker: Tracker, run_id: str | None, reports: dict[int, float] | None = None) -> None:
    """The trial raised: its run is already closed (FAILED, or KILLED on Ctrl-C). The values it
    reported before are kept, as `trial.report` would have, with the error (`failure_attrs`)."""
    if run_id:
        tracker.set_tags(run_id, {"optuna.trial_state": "FAILED"})
    keep_reports(trial, reports, failure_attrs())
    trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def failure_attrs() -> dict[str, str]:
    """The exception being handled, as the failed trial's `failure` user attribute (the sweep's
    last line names the first one when no trial completed)."""
    error = sys.exc_info()[1]
    if error is None:
        return {}
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return {FAILURE_ATTR: text[:500]}


def keep_reports(trial: optuna.Trial, reports: dict[int, float] | None, attrs: dict | None = None) -> None:
    """A trial that will not be told normally keeps the values it reported, as with `trial.report`."""
    if not reports and not attrs:
        return
    try:
        record_trial(trial, reports or {}, attrs or {})
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # another worker failed it meanwhile (its heartbeats stalled): its retry stands
    except Exception as e:  # the trial ends all the same
        if store_fault(e):
            return  # the sweep stops with one line about the store
        print(f"trial {trial.number}: its intermediate values were not written: {e}", file=sys.stderr)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def suggest_config(trial: optuna.Trial, job: Job) -> TrainConfig:
    values = {name: param.suggest(trial) for name, param in job.sweep.settings.space.items()}
    return job.sweep.trial_config(values)


def trial_run(job: Job, trial: optuna.Trial, run_ids: list[str], **tags) -> RunSpec:
    """How a trial's MLflow run is named, nested, tagged and linked back to the trial, for both
    `run_training` and `start_trained_run`; the run's id is appended to `run_ids`."""
    def on_start(run_id: str) -> None:
        run_ids.append(run_id)
        trial.set_user_attr(RUN_ID_ATTR, run_id)

    return RunSpec(run_name=f"trial-{trial.number}", parent_run_id=job.parent_run_id,
                   tags={"optuna.study_name": job.study_name, "optuna.trial_number": trial.number,
                         "worker": worker_name(), **tags},
                   on_start=on_start, end_tags=lambda result: {"optuna.trial_state": state_of(result)})


def run_trial(trial: optuna.Trial, cfg: TrainConfig, job: Job, tracker: Tracker, workspace: Workspace) -> None:
    """Train one trial in the lecture's loop, as a child run of the study's parent run that
    fills as it trains, and tell Optuna how it went."""
    run_ids, reports = [], ReportToTrial.for_job(trial, job, cfg)
    try:
        outcome = run_training(cfg, tracker, workspace, trial_run(job, trial, run_ids), callbacks=reports)
    except ServiceError:
        keep_reports(trial, reports.values)
        raise  # the tracking server is gone: the trial is left to the heartbeat check, as a dead worker's
    except BaseException:
        fail(trial, tracker, run_ids[0] if run_ids else None, reports.values)
        raise
    tell(trial, job, outcome.result, reports.values)
