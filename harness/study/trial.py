"""A sweep's trials: each one an Optuna trial and a nested MLflow run.

The objective is Optuna's usual shape: suggest the parameters, train, report intermediate
values, return one number (or one per objective). On the CPU the training is the compiled
kernel's, and its result is replayed step by step through the lecture loop's callbacks
(`run_trials`); elsewhere it is `make train`'s loop. Workers, in this process or in others,
claim trials from the shared study until the budget is spent.
"""

import os
import socket
import sys
import time
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from harness.study import storage as study_storage
from harness.core.config import TrainConfig
from harness.errors import ServiceError
from harness.experiment import RunSpec, Workspace, draw, run_training, start_trained_run, train_together
from harness.trainers.registry import choose
from harness.study.config import PRUNERS, Sweep, SweepConfig
from harness.tracking.store_check import store_fault, store_folders
from harness.study.storage import FAILURE_ATTR, RUN_ID_ATTR
from harness.tracking.tracker import RunLogger, Tracker
from harness.tracking.writer import WriterProcess
from harness.core.train import Callbacks, TrainResult


def make_sampler(settings: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar keeps parallel workers from proposing the same point
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    assert name in PRUNERS
    return {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
            "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
            "hyperband": optuna.pruners.HyperbandPruner}[name]()


def objective_values(sweep: Sweep, result: TrainResult) -> list[float]:
    """One number per objective; an unreached target counts as one step past the longest run."""
    values = []
    for name in sweep.settings.objectives:
        if name == "iterations_to_target":
            reached = result.iterations_to_target
            values.append(float(reached if reached is not None else sweep.max_iterations + 1))
        else:
            values.append(result.final[name])
    return values


class ReportToTrial(Callbacks):
    """Report the objective every `every` steps; ask to stop when the pruner says so.

    With no pruner to ask (`deferred`), the values are kept in `values` and written with the
    trial's other records in one transaction when it is told (`study_storage.record_trial`)."""

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
    return settings.objective if settings.objective != "iterations_to_target" else "val_loss"


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
        study_storage.record_trial(trial, reports, attrs)
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
        study_storage.record_trial(trial, reports or {}, attrs or {})
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


class OpenRuns:
    """Trials whose runs' writes are handed over to the writer but not yet in, oldest first.

    A run is closed (and its trial told) only once the next run is handed over, or when the
    worker stops: a writer process writes one run while this process trains, draws and replays
    the next, from one batch to the next too. `trial_done(number)` follows the trials told.
    """

    def __init__(self, job: Job, tracker: Tracker, trial_done=None):
        self.job, self.tracker, self.trial_done = job, tracker, trial_done
        self.runs: list[tuple[optuna.Trial, RunLogger, TrainResult, dict[int, float]]] = []
        self.told: set[int] = set()  # the numbers of the trials that ended here

    def trial_ids(self) -> list[int]:
        return [trial._trial_id for trial, *_ in self.runs]

    def beat(self, storage) -> None:
        """A heartbeat for each open trial now: its last one, from the claim before, may be
        nearly an interval old, and the next claim's first comes an interval later."""
        for trial_id in self.trial_ids():
            storage.record_heartbeat(trial_id)

    def add(self, trial: optuna.Trial, logger: RunLogger, result: TrainResult,
            reports: dict[int, float] | None = None) -> None:
        """The newest run is handed over: close the ones before it. `reports`: as for `tell`."""
        self.runs.append((trial, logger, result, reports or {}))
        while len(self.runs) > 1:
            self.close_first()

    def close_all(self) -> None:
        while self.runs:
            self.close_first()

    def close_first(self) -> None:
        """Close the oldest run and tell its trial; a write of it that failed fails it alone."""
        trial, logger, result, reports = self.runs.pop(0)
        try:
            self.tracker.close_run(logger, "FINISHED")
        except ServiceError:
            keep_reports(trial, reports)
            raise
        except BaseException as e:  # close_run ended the run FAILED (KILLED on Ctrl-C)
            fail(trial, self.tracker, logger.run_id, reports)
            self.done(trial)
            if not isinstance(e, Exception):
                raise
            print(f"trial {trial.number} failed: {type(e).__name__}: {e}", file=sys.stderr)
            return
        try:
            tell(trial, self.job, result, reports)
        except BaseException:  # not left RUNNING: no claim of this worker covers it any more
            trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        finally:
            self.done(trial)

    def kill_first(self) -> None:
        """The oldest run ends KILLED once its writes are in; its trial is failed."""
        trial, logger, _, reports = self.runs.pop(0)
        try:
            self.tracker.close_run(logger, "KILLED")
        except Exception:
            pass  # its writes failed too: it is closed all the same
        fail(trial, self.tracker, logger.run_id, reports)
        self.done(trial)

    def done(self, trial: optuna.Trial) -> None:
        self.told.add(trial.number)
        if self.trial_done:
            self.trial_done(trial.number)

    def end(self, error: BaseException) -> None:
        """An exception is on its way out: a run handed over before it (its trial trained to
        the end) is closed as it would have been, Ctrl-C or not. A Ctrl-C while they are
        closed ends the rest KILLED, their trials failed."""
        while self.runs:
            try:
                self.close_first()
            except KeyboardInterrupt:
                while self.runs:
                    self.kill_first()
                raise


def run_trials(trials: list[optuna.Trial], job: Job, tracker: Tracker, workspace: Workspace | None,
               open_runs: OpenRuns) -> Workspace:
    """Train the claimed trials, log each as a child run of the study's parent run, and tell
    Optuna how each went (through `open_runs`, once its writes are in).

    Trials train together, as one batched computation (harness/trainers/batched.py), then each run is
    logged by walking its steps again as the loop does (`replay`): the pruner is consulted at
    every report, and a pruned run ends where the loop would have stopped it. A lone trial that
    no compiled kernel trains (a GPU, several hidden layers) trains in the lecture's loop instead.
    """
    try:
        cfgs = [suggest_config(trial, job) for trial in trials]
        if len(trials) == 1:
            workspace = Workspace.for_config(cfgs[0], reuse=workspace)
            if choose(cfgs[:1], workspace.device, drawing=True).name == "torch":
                open_runs.close_all()
                run_trial(trials[0], cfgs[0], job, tracker, workspace)
                open_runs.done(trials[0])
                return workspace
        groups: dict[tuple, list[int]] = {}
        for i, cfg in enumerate(cfgs):  # trials that cannot share a batch train in separate ones
            groups.setdefault((str(cfg.hidden), cfg.trainer, *Workspace.data_key(cfg)), []).append(i)
        for indices in groups.values():
            workspace = Workspace.for_config(cfgs[indices[0]], reuse=workspace)
            batch, drawn = train_together([cfgs[i] for i in indices], workspace)
            for j, i in enumerate(indices):
                trial, cfg = trials[i], cfgs[i]
                if job.sweep.settings.pruner != "none":  # the pruner compares with the trials before
                    open_runs.close_all()
                run_ids, reports = [], ReportToTrial.for_job(trial, job, cfg)
                try:
                    # drawn here, not during training: while the writer writes the trial before
                    images, drawn[j] = draw(workspace, drawn[j]), []
                    logger, result = start_trained_run(
                        cfg, tracker, workspace.device, batch.result(j, cfg.target_accuracy), images,
                        trial_run(job, trial, run_ids, trainer=batch.trainer), callbacks=reports)
                except ServiceError:
                    keep_reports(trial, reports.values)
                    raise
                except BaseException:
                    fail(trial, tracker, run_ids[0] if run_ids else None, reports.values)
                    open_runs.done(trial)
                    raise
                open_runs.add(trial, logger, result, reports.values)
    except ServiceError:
        raise  # as in run_trial: the heartbeat check fails and retries the trials
    except BaseException as e:
        open_runs.end(e)
        for trial in trials:
            if trial.number not in open_runs.told:
                keep_reports(trial, None, failure_attrs())
                trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                open_runs.done(trial)
        raise
    return workspace


def load_study(job: Job, storage) -> optuna.Study:
    return optuna.load_study(study_name=job.study_name, storage=storage,
                             sampler=make_sampler(job.sweep.settings, job.sampler_seed),
                             pruner=make_pruner(job.sweep.settings.pruner))


def work(job: Job, on_trial_done=None, workspace: Workspace | None = None) -> None:
    """Claim and run trials until the budget is spent. A failing trial is FAILED and work goes on.
    `workspace`: one made beforehand (`prepare_workspace`), used where the trials' data match it."""
    # The network is tiny: torch's intra-op threads only fight the MLflow writes (and the other
    # workers) for the cores, which slows each step several times over.
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_storage.open_storage(job.storage_url, job.sweep.settings, job.tracking_uri)
    study = load_study(job, storage)
    # A lone worker on a local store hands its runs' writes to a writer process on the spare
    # core, and trains, draws and replays the next run meanwhile (`OpenRuns`). Several workers
    # already fill the cores: each keeps a writer thread.
    tracker = Tracker(job.tracking_uri, writer_process=job.workers == 1)
    try:
        claim_and_run(job, study, storage, tracker, OpenRuns(job, tracker, on_trial_done), workspace)
    finally:
        tracker.close()


def prepare_workspace(sweep: Sweep) -> Workspace | None:
    """The data and the renderer for the sweep's fixed settings, made by a worker process while
    the sweep's process opens the study; None where they cannot be (the trial says why)."""
    torch.set_num_threads(1)  # as in `work`
    try:
        return Workspace.for_config(sweep.base)
    except Exception:
        return None


def claim_and_run(job: Job, study: optuna.Study, storage, tracker: Tracker, open_runs: OpenRuns,
                  workspace: Workspace | None = None) -> None:
    batch_size = job.sweep.settings.batch_size
    try:
        while True:
            trials = study_storage.claim_trials(study, storage, job.budget, batch_size, job.workers,
                                                {"sampler_seed": job.sampler_seed, "worker": worker_name()})
            if not trials:
                open_runs.beat(storage)
                open_runs.close_all()
                if job.wait_for_others and study_storage.others_running(study):
                    time.sleep(job.sweep.settings.heartbeat_interval)  # a dead worker's trial comes back as a retry
                    continue
                return
            open_runs.beat(storage)
            beating = [t._trial_id for t in trials] + open_runs.trial_ids()
            with study_storage.heartbeat(storage, beating, job.sweep.settings.heartbeat_interval):
                try:
                    workspace = run_trials(trials, job, tracker, workspace, open_runs)
                    if not isinstance(tracker.writer, WriterProcess):
                        open_runs.close_all()  # a thread's writes do not run beside the next claim's
                except (KeyboardInterrupt, ServiceError):
                    raise
                except Exception as e:  # the trials are FAILED on both sides; the sweep goes on
                    if store_fault(e, store_folders(job.tracking_uri, job.storage_url)):
                        raise  # a full disk or a read-only store: every next trial would fail the same way
                    numbers = ", ".join(str(t.number) for t in trials)
                    print(f"trial {numbers} failed: {type(e).__name__}: {e}", file=sys.stderr)
    except ServiceError:
        raise  # nothing can be closed: the heartbeat check fails and retries the open trials
    except BaseException as e:  # Ctrl-C while claiming, a database gone: close what is open
        open_runs.end(e)
        raise
