"""A sweep's trials: each one an Optuna trial and a nested MLflow run.

The objective is Optuna's usual shape: suggest the parameters, call the same training code as
`make train`, report intermediate values, return one number (or one per objective). Workers,
in this process or in others, claim trials from the shared study until the budget is spent.
"""

import os
import socket
import sys
import time
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from harness import study_storage
from harness.batched import train_batch
from harness.boundary import title_text
from harness.config import TrainConfig
from harness.errors import ServiceError
from harness.experiment import Workspace, run_training, start_trained_run
from harness.study_config import PRUNERS, Sweep, SweepConfig
from harness.study_storage import RUN_ID_ATTR
from harness.tracking import RunLogger, Tracker
from harness.train import Callbacks, TrainResult


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
    """Report the objective every `every` steps; ask to stop when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str | None, every: int):
        self.trial, self.metric, self.every = trial, metric, every

    def on_step(self, step: int, metrics: dict[str, float]) -> bool:
        if self.metric is None or step % self.every or step == 0:
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
    target: int
    sampler_seed: int
    wait_for_others: bool = False
    """with a total budget: stay until no trial runs anywhere, to retry those of workers that die"""
    workers: int = 1
    """worker processes on this machine sharing the study: the budget's last batches are split between them"""


def state_of(result: TrainResult) -> str:
    return "PRUNED" if result.diverged or result.stopped_early else "COMPLETE"


def tell(trial: optuna.Trial, job: Job, result: TrainResult) -> None:
    # skip_if_finished: a trial whose heartbeats stalled may have been failed (and retried)
    # by another worker meanwhile; its retry stands, this result is dropped
    if state_of(result) == "PRUNED":
        trial.set_user_attr("diverged", result.diverged)
        trial.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        trial.set_user_attr("reached_target", result.iterations_to_target is not None)
        trial.study.tell(trial, objective_values(job.sweep, result), skip_if_finished=True)


def fail(trial: optuna.Trial, tracker: Tracker, run_id: str | None) -> None:
    """The trial raised: its run is already closed (FAILED, or KILLED on Ctrl-C)."""
    if run_id:
        tracker.set_tags(run_id, {"optuna.trial_state": "FAILED"})
    trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def suggest_config(trial: optuna.Trial, job: Job) -> TrainConfig:
    values = {name: param.suggest(trial) for name, param in job.sweep.settings.space.items()}
    trial.set_user_attr("sampler_seed", job.sampler_seed)
    trial.set_user_attr("worker", worker_name())
    return job.sweep.trial_config(values)


def trial_run(job: Job, trial: optuna.Trial, run_ids: list[str]) -> dict[str, object]:
    """How a trial's MLflow run is named, nested, tagged and linked back to the trial, for both
    `run_training` and `start_trained_run`; the run's id is appended to `run_ids`."""
    def on_start(run_id: str) -> None:
        run_ids.append(run_id)
        trial.set_user_attr(RUN_ID_ATTR, run_id)

    return {"run_name": f"trial-{trial.number}", "parent_run_id": job.parent_run_id,
            "tags": {"optuna.study_name": job.study_name, "optuna.trial_number": trial.number,
                     "worker": worker_name()},
            "on_start": on_start, "end_tags": lambda result: {"optuna.trial_state": state_of(result)}}


def run_trial(trial: optuna.Trial, job: Job, tracker: Tracker, workspace: Workspace | None) -> Workspace:
    """Train one trial as a child run of the study's parent run, and tell Optuna how it went."""
    run_ids = []
    try:
        cfg = suggest_config(trial, job)
        workspace = Workspace.for_config(cfg, reuse=workspace)
        outcome = run_training(
            cfg, tracker, workspace,
            callbacks=ReportToTrial(trial, intermediate_metric(job.sweep.settings), cfg.plot_every),
            **trial_run(job, trial, run_ids))
    except ServiceError:
        raise  # the tracking server is gone: the trial is left to the heartbeat check, as a dead worker's
    except BaseException:
        fail(trial, tracker, run_ids[0] if run_ids else None)
        raise
    tell(trial, job, outcome.result)
    return workspace


def run_trial_batch(trials: list[optuna.Trial], job: Job, tracker: Tracker, workspace: Workspace | None) -> Workspace:
    """Train several trials as one batched computation, then log and tell each as `run_trial` does.

    The whole batch trains to the end, so the pruner is not consulted (a diverged trial is
    still pruned); the intermediate values are reported afterwards, step by step. A trial's
    run is closed and the trial told only once the next trial's writes are handed over, so
    that a writer process writes one run while this process prepares the next.
    """
    told = set()
    open_runs: dict[int, RunLogger] = {}  # trial index -> its run, writes handed over, not yet closed
    results: dict[int, TrainResult] = {}

    def close_and_tell(i: int) -> None:
        logger = open_runs.pop(i)
        try:
            tracker.close_run(logger, "FINISHED")
        except ServiceError:
            raise
        except BaseException:
            told.add(i)
            fail(trials[i], tracker, logger.run_id)
            raise
        tell(trials[i], job, results[i])
        told.add(i)

    try:
        cfgs = [suggest_config(trial, job) for trial in trials]
        groups: dict[tuple, list[int]] = {}
        for i, cfg in enumerate(cfgs):  # trials that cannot share a batch train in separate ones
            groups.setdefault((str(cfg.hidden), *Workspace.data_key(cfg)), []).append(i)
        for indices in groups.values():
            workspace = Workspace.for_config(cfgs[indices[0]], reuse=workspace)
            images: dict[int, list] = {i: [] for i in indices}
            renderer = workspace.renderer

            def draw(step, params, models, metrics):  # one batched grid forward for the batch
                regions = renderer.predict_regions_batched(params, models)
                for j, m in enumerate(models.tolist()):
                    title = title_text(step, float(metrics[0, j]), float(metrics[1, j]))
                    images[indices[m]].append((step, renderer.compose(regions[j], title)))

            batch = train_batch([cfgs[i] for i in indices], workspace.data, workspace.device, draw)
            for j, i in enumerate(indices):
                trial, cfg = trials[i], cfgs[i]
                result = results[i] = batch.result(j, cfg.target_accuracy)
                metric = intermediate_metric(job.sweep.settings)
                if metric:
                    for step in range(cfg.plot_every, result.last_step + 1, cfg.plot_every):
                        trial.report(result.history[metric][step], step)
                run_ids = []
                try:
                    open_runs[i] = start_trained_run(cfg, tracker, workspace.device, result, images.pop(i),
                                                     **trial_run(job, trial, run_ids))
                except ServiceError:
                    raise
                except BaseException:
                    told.add(i)
                    fail(trial, tracker, run_ids[0] if run_ids else None)
                    raise
                for earlier in [k for k in open_runs if k != i]:
                    close_and_tell(earlier)
            for i in list(open_runs):
                close_and_tell(i)
    except ServiceError:
        raise  # as in run_trial: the heartbeat check fails and retries the batch's trials
    except BaseException as e:
        for i in list(open_runs):  # handed over, not yet closed
            if not isinstance(e, KeyboardInterrupt):
                try:  # a later trial failed, not this one: it ends as it would have
                    close_and_tell(i)
                except Exception:
                    pass  # its own writes failed: close_and_tell closed it FAILED and failed the trial
                continue
            logger = open_runs.pop(i)
            told.add(i)
            try:
                tracker.close_run(logger, "KILLED")
            except Exception:
                pass  # its writes failed too: it is closed all the same
            fail(trials[i], tracker, logger.run_id)
        for i, trial in enumerate(trials):
            if i not in told:
                trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    return workspace


def load_study(job: Job, storage) -> optuna.Study:
    return optuna.load_study(study_name=job.study_name, storage=storage,
                             sampler=make_sampler(job.sweep.settings, job.sampler_seed),
                             pruner=make_pruner(job.sweep.settings.pruner))


def work(job: Job, on_trial_done=None) -> None:
    """Claim and run trials until the budget is spent. A failing trial is FAILED and work goes on."""
    # The network is tiny: torch's intra-op threads only fight the MLflow writer thread (and
    # the other workers) for the cores, which slows each step several times over.
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_storage.open_storage(job.storage_url, job.sweep.settings, job.tracking_uri)
    study = load_study(job, storage)
    # A batch's runs are written all at once after training: a lone worker hands that to a writer
    # process on the spare core while it prepares the next run (1.4x faster, measured). Several
    # workers already fill the cores; one trial at a time, the writer thread already overlaps
    # the writes with training.
    tracker = Tracker(job.tracking_uri, writer_process=job.sweep.settings.batch_size > 1 and job.workers == 1)
    try:
        claim_and_run(job, study, storage, tracker, on_trial_done)
    finally:
        tracker.close()


def claim_and_run(job: Job, study: optuna.Study, storage, tracker: Tracker, on_trial_done) -> None:
    workspace = None
    batch_size = job.sweep.settings.batch_size
    while True:
        trials = study_storage.claim_trials(study, storage, job.target, batch_size, job.workers)
        if not trials:
            if job.wait_for_others and study_storage.others_running(study):
                time.sleep(job.sweep.settings.heartbeat_interval)  # a dead worker's trial comes back as a retry
                continue
            return
        with study_storage.heartbeat(storage, [t._trial_id for t in trials], job.sweep.settings.heartbeat_interval):
            try:
                if batch_size == 1:
                    workspace = run_trial(trials[0], job, tracker, workspace)
                else:
                    workspace = run_trial_batch(trials, job, tracker, workspace)
            except (KeyboardInterrupt, ServiceError):
                raise
            except Exception as e:  # the trial is FAILED on both sides; the sweep goes on
                numbers = ", ".join(str(t.number) for t in trials)
                print(f"trial {numbers} failed: {type(e).__name__}: {e}", file=sys.stderr)
        if on_trial_done:
            for trial in trials:
                on_trial_done(trial.number)
